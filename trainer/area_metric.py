"""LV area error: how far the predicted LV area is from the expert's, per image, in mm^2 and pixels.

A TFMA metric (``tfma.metrics.Metric`` with a Beam combiner), loaded by the Evaluator as
``MetricConfig(module='trainer.area_metric', class_name='LVAreaError')``. Per image::

    error_px  = | predicted LV pixels - expert LV pixels |
    error_mm2 = error_px * pixel_area_mm2          (only when the image's pixel spacing is known)

Results, each a mean over the images of the slice:

- ``lv_area_error_px``: over every image;
- ``lv_area_error_mm2``: over the images whose records carry ``pixel_spacing`` (real DICOM-derived
  data). **Absent** from a slice where no image has it (the generated data, the lab's records):
  no value rather than a made-up 0.

The pixel area comes from the model's ``transform_features`` signature
(:data:`trainer.signatures.PIXEL_AREA_FEATURE`, 0 = unknown), read through a
``StandardMetricInputsPreprocessor`` on TFMA's transformed features; a baseline model exported
before that feature existed simply has no mm^2 value. The predicted mask is the one Dice uses
(LV probability > 0.5, or the argmax of class scores). Area errors are not gated on.
"""
from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from trainer import dice, signatures
from dataset import records

METRIC_NAME = "lv_area_error"
MM2_SUFFIX = "_mm2"
PIXELS_SUFFIX = "_px"
AREA_ERROR_MM2 = METRIC_NAME + MM2_SUFFIX  # the names results carry with the default name
AREA_ERROR_PIXELS = METRIC_NAME + PIXELS_SUFFIX


class LVAreaError(metric_types.Metric):
    """Mean absolute LV area error per image: ``<name>_mm2`` (images with a known pixel spacing)
    and ``<name>_px`` (every image); see the module docstring."""

    def __init__(self, name: str = METRIC_NAME):
        super().__init__(_lv_area_error_computations, name=name)


def _lv_area_error_computations(
        name: str = METRIC_NAME,
        eval_config: Optional[config_pb2.EvalConfig] = None,
        model_names: Optional[List[str]] = None,
        output_names: Optional[List[str]] = None,
        example_weighted: bool = False) -> metric_types.MetricComputations:
    model_names = model_names or [""]
    output_names = output_names or [""]
    # One preprocessor for every model (TFMA merges preprocessors by name): the pixel area of
    # each model's transformed features, keyed by model name when there are several models.
    area_filter = {signatures.PIXEL_AREA_FEATURE: {}}
    named_models = [model for model in model_names if model]
    if named_models:
        area_filter = {model: area_filter for model in named_models}
    preprocessor = metric_types.StandardMetricInputsPreprocessor(
        include_filter={constants.TRANSFORMED_FEATURES_KEY: area_filter},
        include_default_inputs=True, name=f"{name}_pixel_area")
    computations = []
    for model_name in model_names:
        for output_name in output_names:
            keys = [metric_types.MetricKey(name=name + suffix, model_name=model_name,
                                           output_name=output_name,
                                           example_weighted=example_weighted)
                    for suffix in (MM2_SUFFIX, PIXELS_SUFFIX)]
            computations.append(metric_types.MetricComputation(
                keys=keys, preprocessors=[preprocessor],
                combiner=_AreaErrorCombiner(keys[0], keys[1], eval_config)))
    return computations


def predicted_lv_pixels(prediction: np.ndarray) -> int:
    """LV pixels of one prediction: class scores ``[H, W, 2]`` or LV probabilities ``[H, W]``."""
    prediction = np.asarray(prediction)
    if prediction.ndim >= 3 and prediction.shape[-1] == records.NUM_CLASSES:
        return int(np.count_nonzero(np.argmax(prediction, axis=-1) == 1))
    return int(np.count_nonzero(prediction > dice.LV_PROBABILITY_THRESHOLD))


def _pixel_area(element: metric_types.StandardMetricInputs, model_name: str) -> float:
    """mm^2 per pixel of the example, 0 if unknown (no spacing, or a model without the feature)."""
    transformed = element.get_by_key(constants.TRANSFORMED_FEATURES_KEY, model_name or None)
    if not isinstance(transformed, dict) or signatures.PIXEL_AREA_FEATURE not in transformed:
        return 0.0
    values = np.asarray(transformed[signatures.PIXEL_AREA_FEATURE], dtype=np.float64).reshape(-1)
    return float(values[0]) if values.size and np.isfinite(values[0]) else 0.0


class _Accumulator:
    __slots__ = ["pixels_sum", "images", "mm2_sum", "images_with_spacing"]

    def __init__(self):
        self.pixels_sum = 0.0
        self.images = 0
        self.mm2_sum = 0.0
        self.images_with_spacing = 0


class _AreaErrorCombiner(beam.CombineFn):
    def __init__(self, mm2_key: metric_types.MetricKey, pixels_key: metric_types.MetricKey,
                 eval_config: Optional[config_pb2.EvalConfig]):
        self._mm2_key = mm2_key
        self._pixels_key = pixels_key
        self._eval_config = eval_config

    def create_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def add_input(self, accumulator: _Accumulator,
                  element: metric_types.StandardMetricInputs) -> _Accumulator:
        label, prediction, _ = next(metric_util.to_label_prediction_example_weight(
            element, eval_config=self._eval_config, model_name=self._pixels_key.model_name,
            output_name=self._pixels_key.output_name, flatten=False, allow_none=True))
        if label is None or prediction is None or not np.size(label) or not np.size(prediction):
            return accumulator
        expert_px = int(np.count_nonzero(np.asarray(label) > 0))
        error_px = abs(predicted_lv_pixels(prediction) - expert_px)
        accumulator.pixels_sum += error_px
        accumulator.images += 1
        area = _pixel_area(element, self._pixels_key.model_name)
        if area > 0.0:
            accumulator.mm2_sum += error_px * area
            accumulator.images_with_spacing += 1
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result.pixels_sum += accumulator.pixels_sum
            result.images += accumulator.images
            result.mm2_sum += accumulator.mm2_sum
            result.images_with_spacing += accumulator.images_with_spacing
        return result

    def extract_output(self, accumulator: _Accumulator) -> Dict[metric_types.MetricKey, float]:
        output = {}
        if accumulator.images:
            output[self._pixels_key] = accumulator.pixels_sum / accumulator.images
        if accumulator.images_with_spacing:
            output[self._mm2_key] = accumulator.mm2_sum / accumulator.images_with_spacing
        return output
