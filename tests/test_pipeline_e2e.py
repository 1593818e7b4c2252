"""The real TFX pipeline, end to end, on a tiny generated data set: push, gate, both runners.

Few-step training is only repeatable because the Trainer seeds weights and shuffling and turns on
TensorFlow's op determinism (trainer.model.run_fn); the gate tests rely on that, and on thresholds
no model can meet, never on luck.
"""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import lopo_sunnybrook
from lvseg import cli

from pipeline import configs, local_runner, run_summary
from pipeline.settings import PipelineSettings
from report import model_card
from trainer import dice, postprocess, signatures
from dataset import records

pytestmark = pytest.mark.e2e

# Enough steps for the tiny set to learn something (run A beats an untrained model clearly).
TRAINED = dict(train_steps=40, training=dict(epochs=2, batch_size=8))


def _run(data_root, output_root, runner=local_runner.LOCAL, **settings):
    run = local_runner.LocalRun(data_root=data_root, output_root=output_root, runner=runner,
                                settings=PipelineSettings(**settings))
    local_runner.run_pipeline(run)
    return run, run_summary.read_run_summary(run.metadata_path, run.pipeline_name)


def _versions(run):
    if not os.path.isdir(run.serving_model_dir):
        return []
    return sorted(name for name in os.listdir(run.serving_model_dir) if name.isdigit())


@pytest.fixture(scope="module")
def local_root(tmp_path_factory, tiny_data_root):
    """Run A: a trained model on a fresh root, with a gate every model passes (min Dice 0)."""
    output_root = str(tmp_path_factory.mktemp("local_run"))
    run, summary = _run(tiny_data_root, output_root, min_dice=0.0, **TRAINED)
    return run, summary


def _eval_slice(data_root):
    return next(records.iter_lab_records(records.list_record_files(
        os.path.join(data_root, "eval"))[0]))


def test_first_run_is_blessed_and_pushed(local_root):
    run, summary = local_root
    assert summary.blessed and summary.pushed and not summary.push_reused
    assert summary.eval_dice is not None and summary.baseline_dice is None
    assert _versions(run) == [summary.pushed_version]
    assert summary.pushed_path == os.path.join(os.path.abspath(run.serving_model_dir),
                                               summary.pushed_version)
    assert os.path.isfile(run.metadata_path)
    assert os.path.isfile(os.path.join(summary.pushed_path, "saved_model.pb"))


def test_rerun_with_nothing_changed_publishes_no_new_version(local_root, tiny_data_root):
    run_a, summary_a = local_root
    run, summary = _run(tiny_data_root, run_a.output_root, min_dice=0.0, **TRAINED)
    assert summary.model_uri == summary_a.model_uri  # Trainer and data stages from the cache
    assert summary.blessed and summary.pushed and summary.push_reused
    assert summary.pushed_version == summary_a.pushed_version
    assert _versions(run) == [summary_a.pushed_version]


def test_trainer_writes_tensorboard_logs(local_root):
    run, summary = local_root
    model_run = summary.model_uri.replace(os.sep + "model" + os.sep, os.sep + "model_run" + os.sep)
    event_files = [f for _, _, files in os.walk(model_run) for f in files if "tfevents" in f]
    assert event_files, f"no TensorBoard event files under {model_run}"


def test_pushed_model_serves_both_signatures_with_the_same_mask(local_root, tiny_data_root):
    _, summary = local_root
    model = tf.saved_model.load(summary.pushed_path)
    assert {signatures.SERVING_DEFAULT, signatures.SERVING_RAW_IMAGE,
            signatures.TRANSFORM_FEATURES} <= set(model.signatures)
    eval_slice = _eval_slice(tiny_data_root)

    serialized = records.encode_example(eval_slice.name, eval_slice.image, eval_slice.mask)
    from_examples = model.signatures[signatures.SERVING_DEFAULT](
        examples=tf.constant([serialized]))
    from_pixels = model.signatures[signatures.SERVING_RAW_IMAGE](
        image=tf.constant(eval_slice.image[np.newaxis]))

    shape = (1, records.IMAGE_SIZE, records.IMAGE_SIZE)
    for outputs in (from_examples, from_pixels):
        assert outputs[signatures.MASK_OUTPUT].shape == shape
        probabilities = outputs[signatures.PROBABILITIES_OUTPUT].numpy()
        assert probabilities.shape == shape
        assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    np.testing.assert_array_equal(from_examples[signatures.MASK_OUTPUT].numpy(),
                                  from_pixels[signatures.MASK_OUTPUT].numpy())
    np.testing.assert_allclose(from_examples[signatures.PROBABILITIES_OUTPUT].numpy(),
                               from_pixels[signatures.PROBABILITIES_OUTPUT].numpy(), atol=1e-6)
    # the served mask is the post-processed mask of the served probabilities
    np.testing.assert_array_equal(
        from_examples[signatures.MASK_OUTPUT].numpy(),
        postprocess.lv_mask(from_examples[signatures.PROBABILITIES_OUTPUT]).numpy())


def test_a_model_worse_than_the_blessed_one_is_not_pushed(local_root, tiny_data_root):
    run_a, summary_a = local_root
    # Same seed, same initial weights, but a learning rate too small to move them: the model
    # is the untrained one, which run A's trained model beats (asserted below, not assumed).
    run, summary = _run(tiny_data_root, run_a.output_root, min_dice=0.0, train_steps=2,
                        training=dict(epochs=1, batch_size=8, learning_rate=1e-12))
    assert summary.model_uri != summary_a.model_uri, "the Trainer must have run again"
    assert summary.baseline_dice == pytest.approx(summary_a.eval_dice)
    assert summary.eval_dice < summary.baseline_dice
    assert not summary.blessed and not summary.pushed
    assert any(dice.METRIC_NAME in failure for failure in summary.validation_failures)
    assert _versions(run) == [summary_a.pushed_version]


def test_a_dice_threshold_the_model_does_not_meet_pushes_nothing(local_root, tiny_data_root):
    run_a, summary_a = local_root
    # Dice 1 is met only by a perfect mask on every eval image (thresholds above 1 are refused)
    run, summary = _run(tiny_data_root, run_a.output_root, min_dice=1.0, **TRAINED)
    assert summary.model_uri == summary_a.model_uri  # the Trainer's output came from the cache
    assert summary.eval_dice < 1.0
    assert not summary.blessed and not summary.pushed
    assert _versions(run) == [summary_a.pushed_version]


def test_beam_dag_runner_runs_the_same_pipeline_to_a_push(tmp_path, tiny_data_root):
    run, summary = _run(tiny_data_root, str(tmp_path), runner=local_runner.BEAM, min_dice=0.0,
                        train_steps=2, training=dict(epochs=1, batch_size=4))
    assert summary.blessed and summary.pushed
    assert _versions(run) == [summary.pushed_version]
    model = tf.saved_model.load(summary.pushed_path)
    eval_slice = _eval_slice(tiny_data_root)
    outputs = model.signatures[signatures.SERVING_RAW_IMAGE](
        image=tf.constant(eval_slice.image[np.newaxis]))
    assert outputs[signatures.MASK_OUTPUT].shape == (1, records.IMAGE_SIZE, records.IMAGE_SIZE)


def test_schema_anomalies_stop_the_run_before_transform(copy_tiny_data, tmp_path, capsys):
    data_root = copy_tiny_data()
    path = records.list_record_files(os.path.join(data_root, "train"))[0]
    slices = list(records.iter_lab_records(path))
    with tf.io.TFRecordWriter(path) as writer:
        for index, item in enumerate(slices):
            example = tf.train.Example.FromString(
                records.encode_example(item.name, item.image, item.mask))
            if index == 0:
                example.features.feature[records.HEIGHT_KEY].int64_list.value[0] = 128
            writer.write(example.SerializeToString())

    output_root = str(tmp_path / "out")
    exit_code = cli.main(["run", "--runner", "local", "--data-root", data_root,
                          "--output-root", output_root, "--skip-data-check"])
    error = capsys.readouterr().err
    assert exit_code == cli.EXIT_PIPELINE_FAILED
    assert "DataAnomaliesError" in error and "'height'" in error and "split 'train'" in error
    pipeline_root = local_runner.LocalRun(output_root=output_root).pipeline_root
    assert os.path.isdir(os.path.join(pipeline_root, "ExampleValidator"))
    assert not os.path.exists(os.path.join(pipeline_root, "Transform"))


def test_dicom_folders_train_gate_and_push(tmp_path, capsys):
    """`lvseg run --dicom-root --contour-root`: SunnybrookExampleGen feeds the same pipeline."""
    from tests.test_sunnybrook import write_contour, write_dicom

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:records.IMAGE_SIZE, 0:records.IMAGE_SIZE]
    for patient in range(3):
        for instance in (10, 20, 30):
            centre, radius = rng.uniform(100, 150, size=2), rng.uniform(15, 30)
            disk = (cols - centre[0]) ** 2 + (rows - centre[1]) ** 2 <= radius ** 2
            write_dicom(str(tmp_path / "dicoms" / f"P{patient}" / f"{instance}.dcm"),
                        200 + 600 * disk + rng.integers(0, 50, size=disk.shape), instance)
            angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
            write_contour(str(tmp_path / "contours" / f"P{patient}" /
                              f"IM-0001-{instance:04d}-icontour-manual.txt"),
                          np.stack([centre[0] + radius * np.cos(angles),
                                    centre[1] + radius * np.sin(angles)], axis=1))
    output_root = str(tmp_path / "out")
    exit_code = cli.main(["run", "--runner", "local", "--dicom-root", str(tmp_path / "dicoms"),
                          "--contour-root", str(tmp_path / "contours"), "--eval-fraction", "0.34",
                          "--output-root", output_root, "--train-steps", "2", "--epochs", "1",
                          "--min-dice", "0", "--ensemble-size", "2", "--test-time-flips"])
    out = capsys.readouterr().out
    assert exit_code == 0, out
    # the Trainer says what training cost (the leave-one-patient-out benchmark reads it)
    cost = lopo_sunnybrook.trainer_cost(out)
    assert cost["trainer_wall_s"] >= 0 and cost["trainer_cpu_s"] > 0
    run = local_runner.LocalRun(output_root=output_root)
    summary = run_summary.read_run_summary(run.metadata_path, run.pipeline_name)
    assert summary.blessed and summary.pushed
    example_gen_dir = os.path.join(run.pipeline_root, "SunnybrookExampleGen", "examples")
    (execution,) = os.listdir(example_gen_dir)
    with open(os.path.join(example_gen_dir, execution, "ingest_summary.json")) as f:
        ingest = json.load(f)
    assert ingest["slices"] == 9 and ingest["skipped"] == {}
    assert len(ingest["splits"]["eval"]["patients"]) == 1
    eval_records = records.list_record_files(os.path.join(example_gen_dir, execution, "Split-eval"))
    eval_slices = list(records.iter_lab_records(eval_records[0]))
    assert len(eval_slices) == 3
    assert {s.patient_id for s in eval_slices} == set(ingest["splits"]["eval"]["patients"])
    assert all(s.pixel_spacing is not None for s in eval_slices)
    # DICOM runs augment with elastic deformation and average weights by default (the model
    # card says what ran) ...
    defaults, dicom = configs.DEFAULT_TRAINING, configs.dicom_run_defaults()
    with open(model_card.pushed_card_path(summary.pushed_path)) as f:
        card = f.read()
    assert (f"augmentation on (gain ±{defaults.max_gain_change:g}, "
            f"gamma ±{defaults.max_gamma_change:g}, "
            f"elastic {dicom['elastic_pixels']:g} px)") in card
    assert (f"weights averaged over the last {dicom['average_last']:.0%} of the steps at "
            f"learning rate {defaults.averaging_learning_rate:g}") in card
    # ... here an ensemble of two, each member with its own seed and training curves
    size, seed = 2, defaults.seed
    assert f"an ensemble of {size} (seeds {seed}-{seed + size - 1})" in card
    (model_run,) = glob.glob(os.path.join(run.pipeline_root, "Trainer", "model_run", "*"))
    assert sorted(name for name in os.listdir(model_run) if name.startswith("member_")) == [
        f"member_{index}" for index in range(1, size)]
    # ... and flip averaging: averaged over all four flips, the served
    # probability of a flipped image is the flipped probability (a plain net is not symmetric).
    predict = tf.saved_model.load(summary.pushed_path).signatures[signatures.SERVING_RAW_IMAGE]
    image = eval_slices[0].image[np.newaxis]
    probability = predict(image=tf.constant(image))[signatures.PROBABILITIES_OUTPUT].numpy()
    flipped = predict(image=tf.constant(image[:, :, ::-1].copy()))[
        signatures.PROBABILITIES_OUTPUT].numpy()
    np.testing.assert_allclose(flipped, probability[:, :, ::-1], atol=1e-5)
