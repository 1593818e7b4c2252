"""Evaluation per slice: the segmentation metrics, the slicing features and the slice gate.

The gate is checked with TFX's own Evaluator executor (the code the pipeline runs, with its
baseline handling) on two tiny SavedModels that fake their predictions from the label they are
given, so their Dice per slice is known before TFMA runs:

- baseline: the expert mask eroded by one pixel, on every slice: decent everywhere;
- candidate: the exact mask, except on ``small`` (apical) slices, where it erodes by two pixels.
  Better overall, clearly worse on the small slices.
"""
import json
import os
import sys
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.metrics import metric_types

from pipeline import configs, eval_config, local_runner, run_summary
from trainer import area_metric, dice, preprocessing, seg_metrics, signatures, slices
from dataset import records

N = records.IMAGE_SIZE
# as `lvseg run` passes them (no TFX package built in a temp folder)
BEAM_ARGS = local_runner.direct_runner_dependency_args(configs.DEFAULT_BEAM_ARGS)
SPACING = (1.25, 1.25)  # mm: 1.5625 mm^2 per pixel
PIXEL_AREA = SPACING[0] * SPACING[1]


def _rect(rows, cols):
    mask = np.zeros((N, N), np.int64)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def _disc(radius):
    rows, cols = np.mgrid[0:N, 0:N]
    return ((rows - 128) ** 2 + (cols - 128) ** 2 <= radius ** 2).astype(np.uint8)


# --- the metrics on hand-made masks -------------------------------------------------------------

def test_iou_and_pixel_accuracy_on_half_overlapping_squares():
    label, pred = _rect((0, 40), (0, 40)), _rect((0, 40), (20, 60))  # 1600 px each, 800 shared
    iou = seg_metrics.iou_per_image(label[np.newaxis], pred[np.newaxis].astype(np.float32))
    assert float(iou[0]) == pytest.approx((800 + 1) / (2400 + 1))
    accuracy = seg_metrics.pixel_accuracy_per_image(label[np.newaxis],
                                                    pred[np.newaxis].astype(np.float32))
    assert float(accuracy[0]) == pytest.approx(1.0 - 1600 / (N * N))  # 800 missed + 800 false


def test_empty_masks_and_a_false_lv_on_an_empty_slice():
    empty = np.zeros((1, N, N), np.float32)
    false_lv = _rect((0, 10), (0, 10))[np.newaxis].astype(np.float32)
    assert float(seg_metrics.iou_per_image(empty, empty)[0]) == 1.0
    assert float(seg_metrics.pixel_accuracy_per_image(empty, empty)[0]) == 1.0
    assert float(seg_metrics.iou_per_image(empty, false_lv)[0]) == pytest.approx(1 / 101)
    assert float(seg_metrics.pixel_accuracy_per_image(empty, false_lv)[0]) == pytest.approx(
        1 - 100 / (N * N))


def test_keras_metrics_average_per_image_over_batches_and_share_the_dice_base():
    a, b = _rect((0, 40), (0, 40)), _rect((0, 40), (20, 60))
    def scores(mask):
        return np.stack([1.0 - mask, mask.astype(float)], axis=-1)[np.newaxis]
    iou, accuracy = seg_metrics.IntersectionOverUnion(), seg_metrics.PixelAccuracy()
    for metric in (iou, accuracy):
        assert isinstance(metric, dice.PerImageMean)
        metric.update_state(a[np.newaxis], scores(a))  # perfect
        metric.update_state(np.stack([a, a]), np.concatenate([scores(b), scores(b)]))
    assert float(iou.result()) == pytest.approx((1 + 2 * 801 / 2401) / 3, rel=1e-6)
    assert float(accuracy.result()) == pytest.approx((1 + 2 * (1 - 1600 / N ** 2)) / 3, rel=1e-6)
    assert iou.name == seg_metrics.IOU_METRIC_NAME
    assert accuracy.name == seg_metrics.PIXEL_ACCURACY_METRIC_NAME
    # TFMA rebuilds them from their config by module and class name
    for metric in (iou, accuracy, dice.DiceCoefficient()):
        clone = type(metric).from_config(metric.get_config())
        assert clone.name == metric.name
    # DiceCoefficient keeps its variable names (SavedModels compiled with it restore them)
    assert [v.name.split("/")[-1].split(":")[0] for v in dice.DiceCoefficient().variables] == [
        "dice_sum", "images"]


def _area_inputs(label, probabilities, pixel_area=None):
    transformed = {} if pixel_area is None else {
        signatures.PIXEL_AREA_FEATURE: np.array([pixel_area], np.float32)}
    return metric_types.StandardMetricInputs({
        tfma_constants.LABELS_KEY: label, tfma_constants.PREDICTIONS_KEY: probabilities,
        tfma_constants.EXAMPLE_WEIGHTS_KEY: None,
        tfma_constants.TRANSFORMED_FEATURES_KEY: transformed})


def _area_result(*inputs):
    [computation] = area_metric.LVAreaError().computations(model_names=[""])
    combiner = computation.combiner
    accumulator = combiner.create_accumulator()
    for item in inputs:
        accumulator = combiner.add_input(accumulator, item)
    return {key.name: value for key, value in combiner.extract_output(
        combiner.merge_accumulators([combiner.create_accumulator(), accumulator])).items()}


def test_area_error_in_mm2_counts_only_images_with_a_pixel_spacing():
    label = _rect((0, 40), (0, 40)).astype(np.float32)  # 1600 px
    under = (_rect((0, 30), (0, 40)) * 0.9).astype(np.float32)  # 1200 px above 0.5: 400 short
    over = (_rect((0, 40), (0, 42)) * 0.6).astype(np.float32)  # 1680 px: 80 too many
    result = _area_result(_area_inputs(label, under, PIXEL_AREA), _area_inputs(label, over))
    assert result[area_metric.AREA_ERROR_PIXELS] == pytest.approx((400 + 80) / 2)
    assert result[area_metric.AREA_ERROR_MM2] == pytest.approx(400 * PIXEL_AREA)
    # no image with a spacing (generated data): no mm^2 value at all, not a 0
    assert set(_area_result(_area_inputs(label, over, 0.0))) == {area_metric.AREA_ERROR_PIXELS}


def test_transform_features_slicing_helpers():
    labels = np.stack([np.zeros((N, N)), _disc(10), _disc(17), _disc(26)]).astype(np.int64)
    image = np.zeros((N, N))
    serialized = [records.encode_example("a", image, labels[0], pixel_spacing=(0.7, 1.5)),
                  records.encode_example("b", image, labels[1])]
    labelled_spec = {records.LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    raw, spacing = signatures.parse_labelled_examples(tf.constant(serialized), labelled_spec)
    assert set(raw) == {records.LABEL_KEY}
    np.testing.assert_allclose(signatures.pixel_area_mm2(spacing).numpy(), [0.7 * 1.5, 0.0])
    features = signatures.evaluation_features(labels, np.tile([[1.0, 2.0]], (4, 1)))
    assert [b.decode() for b in features[slices.LV_SIZE_FEATURE].numpy()] == [
        slices.EMPTY, slices.SMALL, slices.MID, slices.LARGE]
    np.testing.assert_allclose(features[signatures.PIXEL_AREA_FEATURE].numpy(), [2.0] * 4)


# --- the EvalConfig -----------------------------------------------------------------------------

def _dice_config(config):
    [metric] = [m for spec in config.metrics_specs for m in spec.metrics
                if m.class_name == configs.DICE_METRIC_CLASS]
    return metric


def test_eval_config_slices_metrics_and_gates():
    config = eval_config.build_eval_config(min_dice=0.9, max_dice_drop=0.01,
                                           max_slice_dice_drop=0.07)
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["patient_id"],
                                                                   ["lv_size"]]
    classes = {(m.module, m.class_name) for spec in config.metrics_specs for m in spec.metrics}
    assert classes == {("", "ExampleCount"), ("trainer.dice", "DiceCoefficient"),
                       ("trainer.seg_metrics", "IntersectionOverUnion"),
                       ("trainer.seg_metrics", "PixelAccuracy"),
                       ("trainer.area_metric", "LVAreaError")}
    metric = _dice_config(config)
    assert not metric.HasField("threshold")  # it would apply to every slice
    overall, per_bucket = metric.per_slice_thresholds
    assert list(overall.slicing_specs) == [tfma.SlicingSpec()]
    assert eval_config.overall_dice_threshold(config) == overall.threshold
    assert overall.threshold.value_threshold.lower_bound.value == 0.9
    assert overall.threshold.change_threshold.absolute.value == pytest.approx(-0.01)
    assert list(per_bucket.slicing_specs) == [tfma.SlicingSpec(feature_keys=["lv_size"])]
    assert not per_bucket.threshold.HasField("value_threshold")
    assert per_bucket.threshold.change_threshold.absolute.value == pytest.approx(-0.07)
    assert per_bucket.threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER

    without = _dice_config(eval_config.build_eval_config(max_slice_dice_drop=None))
    assert len(without.per_slice_thresholds) == 1
    default = _dice_config(eval_config.build_eval_config())
    assert default.per_slice_thresholds[1].threshold.change_threshold.absolute.value == \
        pytest.approx(-configs.MAX_SLICE_DICE_DROP)
    with pytest.raises(ValueError, match="max_slice_dice_drop"):
        eval_config.build_eval_config(max_slice_dice_drop=-0.1)
    edited = eval_config.build_eval_config()
    eval_config.set_min_dice(edited, 0.5)
    assert eval_config.overall_dice_threshold(edited).value_threshold.lower_bound.value == 0.5


def test_lvseg_run_options_of_the_slice_gate():
    from lvseg import cli
    from pipeline import options

    def slice_drop(*flags):
        args = cli.build_parser().parse_args(["run", *flags])
        return options.settings_from_args(args).max_slice_dice_drop
    assert slice_drop() == configs.MAX_SLICE_DICE_DROP
    assert slice_drop("--max-slice-dice-drop", "0.1") == 0.1
    assert slice_drop("--no-slice-gate") is None
    with pytest.raises(SystemExit):
        slice_drop("--no-slice-gate", "--max-slice-dice-drop", "0.1")


# --- the slice gate, through TFX's Evaluator executor -------------------------------------------

# (patient, radius) of each eval slice; radius 0 = no LV. Buckets: small < 500 px <= mid < 1500.
EVAL_SLICES = [("p1", 10), ("p1", 16), ("p1", 21), ("p1", 26), ("p1", 0),
               ("p2", 12), ("p2", 14), ("p2", 19), ("p2", 24), ("p2", 28)]
SPACED_PATIENT = "p1"  # its records carry pixel_spacing; p2's do not (like generated data)


def _erode(mask, pixels: int):
    """Erodes 0/1 masks [N, H, W] by ``pixels`` (square neighbourhood)."""
    if pixels == 0:
        return mask
    size = 2 * pixels + 1
    outside = tf.nn.max_pool2d((1.0 - mask)[..., tf.newaxis], size, 1, "SAME")[..., 0]
    return 1.0 - outside


class FakeSegmenter(tf.Module):
    """The real model's three signatures; the LV probabilities are the label of the example,
    eroded by ``small_erosion`` pixels on small-LV slices and ``erosion`` elsewhere."""

    def __init__(self, erosion: int, small_erosion: int):
        super().__init__()
        self._erosion, self._small_erosion = erosion, small_erosion
        label_spec = {records.LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES_INPUT)])
        def serve_examples(examples):
            label = preprocessing.decode_label(
                tf.io.parse_example(examples, label_spec)[records.LABEL_KEY])
            mask = tf.cast(label, tf.float32)
            small = tf.equal(slices.lv_size_bucket(label), slices.SMALL)
            probabilities = tf.where(small[:, tf.newaxis, tf.newaxis],
                                     _erode(mask, self._small_erosion), _erode(mask, self._erosion))
            return {signatures.PROBABILITIES_OUTPUT: probabilities,
                    signatures.MASK_OUTPUT: dice.lv_mask(probabilities)}

        @tf.function(input_signature=[tf.TensorSpec([None, N, N], tf.int64,
                                                    name=signatures.IMAGE_INPUT)])
        def serve_raw_image(image):
            probabilities = tf.zeros(tf.shape(image), tf.float32)
            return {signatures.PROBABILITIES_OUTPUT: probabilities,
                    signatures.MASK_OUTPUT: dice.lv_mask(probabilities)}

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES_INPUT)])
        def transform_features(examples):
            raw, spacing = signatures.parse_labelled_examples(examples, label_spec)
            label = preprocessing.decode_label(raw[records.LABEL_KEY])
            return {preprocessing.LABEL_FEATURE: label,
                    **signatures.evaluation_features(label, spacing)}

        self.signature_functions = {
            signatures.SERVING_DEFAULT: serve_examples,
            signatures.SERVING_RAW_IMAGE: serve_raw_image,
            signatures.TRANSFORM_FEATURES: transform_features}


def _save_model(root, name, erosion, small_erosion):
    """A Model artifact: the Trainer's layout, <uri>/Format-Serving/saved_model.pb."""
    from tfx.types import standard_artifacts
    module = FakeSegmenter(erosion, small_erosion)
    uri = os.path.join(root, name)
    tf.saved_model.save(module, os.path.join(uri, "Format-Serving"),
                        signatures={signature: function.get_concrete_function()
                                    for signature, function in module.signature_functions.items()})
    artifact = standard_artifacts.Model()
    artifact.uri = uri
    return artifact


def _write_examples(root):
    """An Examples artifact with an eval split, gzipped TFRecords as ExampleGen writes them."""
    from tfx.types import artifact_utils, standard_artifacts
    split_dir = os.path.join(root, "examples", "Split-eval")
    os.makedirs(split_dir)
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data_tfrecord-00000-of-00001.gz"),
                              options="GZIP") as writer:
        for index, (patient, radius) in enumerate(EVAL_SLICES):
            mask = _disc(radius) if radius else np.zeros((N, N), np.uint8)
            writer.write(records.encode_example(
                f"{patient}-s{index}", mask.astype(np.int64) * 500, mask, patient_id=patient,
                pixel_spacing=SPACING if patient == SPACED_PATIENT else None))
    artifact = standard_artifacts.Examples()
    artifact.uri = os.path.join(root, "examples")
    artifact.split_names = artifact_utils.encode_split_names(["eval"])
    return artifact


def _evaluate(root, name, examples, candidate, baseline, config):
    """Runs the Evaluator executor; returns (evaluation URI, blessed)."""
    from tfx.components.evaluator import executor as evaluator_executor
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri = os.path.join(root, name, "evaluation")
    blessing.uri = os.path.join(root, name, "blessing")
    for artifact in (evaluation, blessing):
        os.makedirs(artifact.uri)
    inputs = {"examples": [examples], "model": [candidate]}
    if baseline is not None:
        inputs["baseline_model"] = [baseline]
    executor = evaluator_executor.Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=BEAM_ARGS, tmp_dir=os.path.join(root, "tmp"), unique_id=name))
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # absl in Beam executors reads argv
        executor.Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]},
                    {"eval_config": proto_utils.proto_to_json(config),
                     "example_splits": json.dumps(["eval"])})
    blessed = os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    assert blessed != os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    return evaluation.uri, blessed


@pytest.fixture(scope="module")
def gate_setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slice_gate"))
    return dict(root=root, examples=_write_examples(root),
                baseline=_save_model(root, "baseline", erosion=1, small_erosion=1),
                candidate=_save_model(root, "candidate", erosion=0, small_erosion=2))


@pytest.fixture(scope="module")
def gated(gate_setup):
    """The candidate against the baseline, the slice gate on (default tolerance)."""
    return _evaluate(gate_setup["root"], "gated", gate_setup["examples"],
                     gate_setup["candidate"], gate_setup["baseline"],
                     eval_config.build_eval_config(min_dice=0.85, max_dice_drop=0.0))


def _rows(evaluation_uri):
    return {row["slice"]: row for row in run_summary.read_sliced_metrics(evaluation_uri)}


def test_candidate_is_better_overall_but_worse_on_small_slices(gated):
    rows = _rows(gated[0])
    overall, small = rows["overall"], rows["lv_size=small"]
    assert overall["metrics"]["dice"] > overall["baseline"]["dice"] + 0.01
    assert small["metrics"]["dice"] < small["baseline"]["dice"] - 0.1
    for bucket in ("mid", "large"):
        row = rows[f"lv_size={bucket}"]
        assert row["metrics"]["dice"] == pytest.approx(1.0)
        assert row["baseline"]["dice"] < 1.0
    assert rows["lv_size=empty"]["metrics"]["dice"] == pytest.approx(1.0)


def test_slice_gate_refuses_the_candidate_and_names_the_small_slice(gated):
    evaluation_uri, blessed = gated
    assert not blessed
    failures = run_summary.validation_failures(evaluation_uri)
    assert len(failures) == 1, failures
    assert failures[0].startswith("lv_size=small: dice changed by -0.")
    assert "allowed >= -0.05" in failures[0]


def test_sliced_metrics_cover_patients_buckets_and_every_metric(gated):
    rows = _rows(gated[0])
    assert set(rows) == {"overall", "patient_id=p1", "patient_id=p2", "lv_size=empty",
                         "lv_size=small", "lv_size=mid", "lv_size=large"}
    assert next(iter(run_summary.read_sliced_metrics(gated[0])))["slice"] == "overall"
    counts = {name: row["metrics"]["example_count"] for name, row in rows.items()}
    assert counts == {"overall": 10, "patient_id=p1": 5, "patient_id=p2": 5,
                      "lv_size=empty": 1, "lv_size=small": 2, "lv_size=mid": 4,
                      "lv_size=large": 3}
    for name, row in rows.items():
        for metric in ("dice", "iou", "pixel_accuracy", area_metric.AREA_ERROR_PIXELS):
            assert metric in row["metrics"] and metric in row["baseline"], (name, metric)
        assert 0 < row["metrics"]["iou"] <= row["metrics"]["dice"] <= 1.0
        assert row["metrics"]["pixel_accuracy"] > 0.99
    # mm^2 only where records carry a pixel spacing: all of p1, none of p2
    p1, p2 = rows["patient_id=p1"], rows["patient_id=p2"]
    assert p1["metrics"][area_metric.AREA_ERROR_MM2] == pytest.approx(
        p1["metrics"][area_metric.AREA_ERROR_PIXELS] * PIXEL_AREA, rel=1e-5)
    assert area_metric.AREA_ERROR_MM2 not in p2["metrics"]
    assert rows["overall"]["metrics"][area_metric.AREA_ERROR_MM2] == pytest.approx(
        p1["metrics"][area_metric.AREA_ERROR_MM2], rel=1e-5)
    # the candidate is exact on mid and large slices: no area error there
    assert rows["lv_size=large"]["metrics"][area_metric.AREA_ERROR_PIXELS] == 0.0


def test_without_the_slice_gate_the_better_average_is_blessed(gate_setup):
    evaluation_uri, blessed = _evaluate(
        gate_setup["root"], "ungated", gate_setup["examples"], gate_setup["candidate"],
        gate_setup["baseline"],
        eval_config.build_eval_config(min_dice=0.85, max_dice_drop=0.0, max_slice_dice_drop=None))
    assert blessed
    assert run_summary.validation_failures(evaluation_uri) == []


def test_first_run_without_a_baseline_ignores_the_slice_gate(gate_setup):
    """TFX drops every change threshold, per-slice ones too, when there is no baseline."""
    evaluation_uri, blessed = _evaluate(
        gate_setup["root"], "first", gate_setup["examples"], gate_setup["candidate"], None,
        eval_config.build_eval_config(min_dice=0.85, max_dice_drop=0.0))
    assert blessed
    rows = _rows(evaluation_uri)
    assert rows["lv_size=small"]["baseline"] == {}
    # the value threshold still holds on the first run
    evaluation_uri, blessed = _evaluate(
        gate_setup["root"], "first-strict", gate_setup["examples"], gate_setup["candidate"], None,
        eval_config.build_eval_config(min_dice=0.99, max_dice_drop=0.0))
    assert not blessed
    assert run_summary.validation_failures(evaluation_uri)[0].startswith("overall: dice 0.9")
