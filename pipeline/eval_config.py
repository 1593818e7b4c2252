"""The Evaluator's TFMA configuration: segmentation metrics overall and per slice, and the gate.

TFMA feeds the raw eval examples through the model's ``transform_features`` signature to get the
labels and the slicing features, and scores the ``mask`` of ``serving_default``: the
post-processed answer services receive (:mod:`trainer.postprocess`), not a threshold of a
probability they never see.

Metrics (every one on every slice):

- ``example_count``;
- ``dice``: mean per-image Dice, :class:`trainer.dice.DiceCoefficient` (the one training reports);
- ``iou``, ``pixel_accuracy``: mean per-image IoU and pixel accuracy (:mod:`trainer.seg_metrics`);
- ``lv_area_error_px`` and, for images whose records carry ``pixel_spacing``,
  ``lv_area_error_mm2``: mean absolute LV area error (:mod:`trainer.area_metric`).

Slices: overall; ``patient_id`` (a raw feature, present in the generated data and in DICOM-derived
records); ``lv_size`` (``empty`` / ``small`` / ``mid`` / ``large`` by expert LV pixels,
:mod:`trainer.slices`, output by ``transform_features``).

The gate (the model is blessed only if every threshold holds):

- overall Dice >= ``min_dice`` (value threshold);
- overall Dice >= baseline Dice - ``max_dice_drop`` (change threshold against the latest blessed
  model);
- the slice gate, unless ``max_slice_dice_drop`` is None: on **each** ``lv_size`` bucket, Dice >=
  the baseline's Dice on that bucket - ``max_slice_dice_drop``. A model that raises the average
  by improving large basal slices while it breaks small apical ones is not pushed.

Both are TFMA ``per_slice_thresholds``: a ``MetricConfig.threshold`` would apply to *every*
slice (each patient and bucket would need Dice >= ``min_dice``). The slice gate names the
``lv_size`` feature, not its values, so it applies to whatever buckets the eval split has and
does not fail as a "missing slice" when one is absent (e.g. no empty slice). Patient slices are
reported, not gated (a patient's slices span all sizes; the buckets already say where it fails).

First run: there is no baseline, and TFX 1.16's Evaluator calls
``tfma.utils.update_eval_config_with_defaults(has_baseline=False, rubber_stamp=True)``, which
clears the change threshold of every threshold, per-slice ones included; the emptied per-slice
thresholds are then ignored, so the first model is judged on ``min_dice`` alone
(``tests/test_eval_slices.py`` runs the Evaluator executor without a baseline to check it).

Default tolerance (``configs.MAX_SLICE_DICE_DROP`` = 0.05), on by default: a bucket's Dice is the
mean of a few images (the default eval split has 13 large, 7 mid, 4 small and 2 empty slices),
so it moves with single images. Measured on the default data, three training seeds (42, 43, 44;
``lvseg run --seed``) gave bucket Dice within 0.006 of each other (small 0.959 / 0.963 / 0.962),
while a model that breaks apical slices loses tenths (``tests/test_eval_slices.py``: -0.14 on
small with +0.02 overall). 0.05 leaves room for the larger spread of small real eval splits (a
Sunnybrook fold has 18-20 slices, Dice 0.75-0.83) and still stops such a model. Retrains that are
worse overall never reach the slice gate: the overall change threshold (``max_dice_drop`` = 0)
refuses them first. The ``empty`` bucket is all or nothing per image (1 for an empty prediction,
~0 for any false LV), so any new false LV on an empty slice fails the gate whatever the
tolerance: intended, a false LV above the apex or below the base is the failure that bucket
exists to catch. The tolerance applies to all buckets alike.
"""
import json
from typing import List, Optional

import tensorflow_model_analysis as tfma

from pipeline import configs
from trainer import area_metric, dice, preprocessing, seg_metrics, signatures, slices

# A hair below the allowed drop, so an equal Dice (the same model evaluated again) passes: TFMA
# compares candidate - baseline against the bound.
_EQUAL_TOLERANCE = 1e-9

OVERALL = tfma.SlicingSpec()
BY_PATIENT = tfma.SlicingSpec(feature_keys=[slices.PATIENT_FEATURE])
BY_LV_SIZE = tfma.SlicingSpec(feature_keys=[slices.LV_SIZE_FEATURE])


def _dice_drop_threshold(max_drop: float) -> tfma.GenericChangeThreshold:
    return tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                       absolute={"value": -max_drop - _EQUAL_TOLERANCE})


def _metric(class_name: str, module: str = "", name: Optional[str] = None, **fields):
    return tfma.MetricConfig(class_name=class_name, module=module,
                             config=json.dumps({"name": name}) if name else "", **fields)


def build_eval_config(min_dice: float = configs.MIN_DICE,
                      max_dice_drop: float = configs.MAX_DICE_DROP,
                      max_slice_dice_drop: Optional[float] = configs.MAX_SLICE_DICE_DROP,
                      ) -> tfma.EvalConfig:
    """The EvalConfig of the module docstring; ``max_slice_dice_drop=None`` turns the slice gate
    off (overall thresholds only)."""
    if not 0.0 <= min_dice <= 1.0:
        raise ValueError(f"min_dice must be in [0, 1], got {min_dice}")
    if not 0.0 <= max_dice_drop:
        raise ValueError(f"max_dice_drop must be >= 0, got {max_dice_drop}")
    if max_slice_dice_drop is not None and not 0.0 <= max_slice_dice_drop:
        raise ValueError(f"max_slice_dice_drop must be >= 0 (or None: no slice gate), "
                         f"got {max_slice_dice_drop}")
    dice_thresholds = [tfma.PerSliceMetricThreshold(
        slicing_specs=[OVERALL],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_dice}),
            change_threshold=_dice_drop_threshold(max_dice_drop)))]
    if max_slice_dice_drop is not None:
        dice_thresholds.append(tfma.PerSliceMetricThreshold(
            slicing_specs=[BY_LV_SIZE],
            threshold=tfma.MetricThreshold(
                change_threshold=_dice_drop_threshold(max_slice_dice_drop))))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=signatures.SERVING_DEFAULT,
            preprocessing_function_names=[signatures.TRANSFORM_FEATURES],
            label_key=preprocessing.LABEL_FEATURE,
            prediction_key=signatures.MASK_OUTPUT)],
        slicing_specs=[OVERALL, BY_PATIENT, BY_LV_SIZE],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            _metric("ExampleCount"),
            _metric(configs.DICE_METRIC_CLASS, configs.DICE_METRIC_MODULE, dice.METRIC_NAME,
                    per_slice_thresholds=dice_thresholds),
            _metric(configs.IOU_METRIC_CLASS, configs.SEG_METRICS_MODULE,
                    seg_metrics.IOU_METRIC_NAME),
            _metric(configs.PIXEL_ACCURACY_METRIC_CLASS, configs.SEG_METRICS_MODULE,
                    seg_metrics.PIXEL_ACCURACY_METRIC_NAME),
            _metric(configs.AREA_METRIC_CLASS, configs.AREA_METRIC_MODULE,
                    area_metric.METRIC_NAME),
        ])])


def overall_dice_threshold(eval_config: tfma.EvalConfig) -> tfma.MetricThreshold:
    """The overall Dice threshold of a config built here (to read or edit ``min_dice`` in place,
    e.g. in a compiled Kubeflow package's eval_config); ValueError if there is none."""
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            if metric.class_name != configs.DICE_METRIC_CLASS:
                continue
            for per_slice in metric.per_slice_thresholds:
                if list(per_slice.slicing_specs) == [OVERALL]:
                    return per_slice.threshold
    raise ValueError("the eval_config has no overall Dice threshold")


def set_min_dice(eval_config: tfma.EvalConfig, min_dice: float) -> None:
    """Sets the overall Dice lower bound of ``eval_config`` in place."""
    overall_dice_threshold(eval_config).value_threshold.lower_bound.value = min_dice


def value_bounds(threshold: tfma.MetricThreshold) -> List[str]:
    """A threshold's bounds on the metric itself, in words: e.g. ``[">= 0.85"]``."""
    if not threshold.HasField("value_threshold"):
        return []
    value = threshold.value_threshold
    return ([f">= {value.lower_bound.value:g}"] if value.HasField("lower_bound") else []) + \
           ([f"<= {value.upper_bound.value:g}"] if value.HasField("upper_bound") else [])


def change_bounds(threshold: tfma.MetricThreshold) -> List[str]:
    """A threshold's bounds on candidate - baseline (absolute) or candidate / baseline - 1
    (relative), in words: e.g. ``[">= -0.05"]`` (rounded: the configs subtract 1e-9 so an equal
    value passes)."""
    if not threshold.HasField("change_threshold"):
        return []
    change = threshold.change_threshold
    sign = "<=" if change.direction == tfma.MetricDirection.LOWER_IS_BETTER else ">="
    texts = []
    if change.HasField("absolute"):
        texts.append(f"{sign} {round(change.absolute.value, 6):g}")
    if change.HasField("relative"):
        texts.append(f"{sign} {round(change.relative.value, 6):g} relative")
    return texts
