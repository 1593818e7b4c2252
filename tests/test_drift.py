"""``lvseg drift`` (monitoring/drift.py, monitoring/cli.py) on generated slices.

Training records and request logs are real files: lab-schema TFRecords written by
dataset.records, PredictionLog files written by monitoring.request_log's logger. Served slices of
other patients from the same generator must not drift; the same slices with a scanner-like gain
(and offset) must, and the report must name intensity features. Broken inputs give one clear
error.
"""
import argparse
import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_serving.apis import predict_pb2

from pipeline import configs
from monitoring import drift, cli as drift_cli
from serving import payloads
from monitoring import request_log
from dataset import records, synthetic_data

# Enough patients on both sides for the default threshold (see drift.DEFAULT_THRESHOLD): the
# generator varies gain per patient, so fewer patients make the divergences noisy.
SLICES_PER_PATIENT = 5
TRAIN_PATIENTS = 20  # 100 training images
SERVED_PATIENTS = 20  # 100 served images


def _images(num_patients, seed):
    slices = synthetic_data.generate_slices(num_patients=num_patients,
                                            slices_per_patient=SLICES_PER_PATIENT, seed=seed)
    return np.stack([s.image for s in slices]).astype(np.int64)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    """A data root: training records of 20 generated patients in train/, beside a manifest."""
    folder = tmp_path_factory.mktemp("drift_train")
    slices = synthetic_data.generate_slices(num_patients=TRAIN_PATIENTS,
                                            slices_per_patient=SLICES_PER_PATIENT, seed=1)
    (folder / "train").mkdir()
    records.write_lab_records(str(folder / "train" / "train.tfrecord"), slices)
    (folder / synthetic_data.MANIFEST_NAME).write_text("{}")
    return str(folder)


@pytest.fixture(scope="module")
def served_images():
    """Other patients of the same generator (another seed)."""
    return _images(SERVED_PATIENTS, seed=2)


def write_request_log(directory, images, batch_size=4):
    """Logs Predicts of ``images`` with the server's logger, alternating the two signatures."""
    with request_log.RequestLogger(str(directory), sampling_rate=1.0,
                                   max_queue_bytes=1 << 30) as logger:
        for index, start in enumerate(range(0, len(images), batch_size)):
            batch = images[start:start + batch_size]
            signature = payloads.PREDICTION_SIGNATURES[index % 2]
            request = predict_pb2.PredictRequest()
            request.model_spec.name = configs.MODEL_NAME
            request.model_spec.signature_name = signature
            for alias, value in payloads.signature_inputs(batch, signature).items():
                request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = configs.MODEL_NAME
            response.model_spec.version.value = 1700000000
            response.model_spec.signature_name = signature
            assert logger.log(request, response, model_name=configs.MODEL_NAME,
                              version=1700000000, signature_name=signature)
        logger.flush()
    return str(directory)


def scanner_change(images, gain, offset=0):
    return np.rint(images * gain + offset * (images > 0)).astype(np.int64)


def test_same_distribution_is_not_drifted(train_dir, served_images, tmp_path):
    log_dir = write_request_log(tmp_path / "log", served_images)
    out = tmp_path / "monitoring"
    report = drift.run_drift(log_dir, train_examples=train_dir, out_dir=str(out))

    assert report["drifted"] is False, report["anomalies"]
    assert (report["served_images"], report["served_requests"], report["training_images"]) == (
        len(served_images), -(-len(served_images) // 4), TRAIN_PATIENTS * SLICES_PER_PATIENT)
    assert set(report["features"]) == set(drift.FEATURE_NAMES)
    for name, feature in report["features"].items():
        assert feature["compared"] == (name in drift.COMPARED_FEATURES)
        if feature["compared"]:
            assert feature["divergence"] < feature["threshold"] == report["threshold"]
        else:
            assert feature["divergence"] is None and feature["threshold"] is None
        assert feature["anomaly"] is False
        assert set(feature["train"]) == {"mean", "std", "min", "median", "max"}
    assert report["warnings"] == []
    assert report["top_features"] == [] and report["anomalies"] == []
    assert set(report["served"]["requests_by_signature"]) == set(payloads.PREDICTION_SIGNATURES)
    assert report["served"]["model_versions"] == {"1700000000": report["served_requests"]}

    written = json.loads((out / drift.REPORT_NAME).read_text())
    assert written["drifted"] is False and written["threshold"] == drift.DEFAULT_THRESHOLD
    for name in (drift.TRAIN_STATS_NAME, drift.SERVED_STATS_NAME):
        stats = tfdv.load_stats_binary(str(out / name))
        assert {f.path.step[0] for f in stats.datasets[0].features} == set(drift.FEATURE_NAMES)
    assert tfdv.load_stats_binary(str(out / drift.SERVED_STATS_NAME)).datasets[0].num_examples \
        == len(served_images)


@pytest.mark.parametrize("gain, offset", [(3.0, 0), (1.6, 120)])
def test_a_scanner_gain_change_is_drift_on_intensity_features(train_dir, served_images, tmp_path,
                                                               gain, offset):
    log_dir = write_request_log(tmp_path / "log", scanner_change(served_images, gain, offset))
    report = drift.run_drift(log_dir, train_examples=train_dir, out_dir=str(tmp_path / "out"))

    assert report["drifted"] is True
    flagged = set(report["top_features"])
    assert {"mean_intensity", "p99_intensity"} <= flagged <= set(drift.COMPARED_FEATURES), \
        report["features"]
    divergences = [f["divergence"] for f in report["features"].values() if f["compared"]]
    assert divergences == sorted(divergences, reverse=True)  # most divergent first
    assert any("mean_intensity" in line for line in report["anomalies"])
    mean = report["features"]["mean_intensity"]
    assert mean["served"]["mean"] > 1.3 * mean["train"]["mean"]


def test_the_cli_prints_a_summary_and_exits_1_on_drift(train_dir, served_images, tmp_path,
                                                        capsys):
    parser = argparse.ArgumentParser()
    drift_cli.register(parser.add_subparsers(dest="command", required=True))

    same = write_request_log(tmp_path / "same", served_images)
    args = parser.parse_args(["drift", "--request-log-dir", same, "--train-examples", train_dir,
                              "--output-root", str(tmp_path / "outputs")])
    assert args.handler(args) == drift_cli.EXIT_NO_DRIFT
    printed = capsys.readouterr().out
    assert printed.startswith("drift: no")
    assert os.path.isfile(tmp_path / "outputs" / drift.MONITORING_DIR / drift.REPORT_NAME)

    gained = write_request_log(tmp_path / "gained", scanner_change(served_images, 3.0))
    args = parser.parse_args(["drift", "--request-log-dir", gained, "--train-examples",
                              os.path.join(train_dir, "train", "*.tfrecord"),  # a glob
                              "--out", str(tmp_path / "out"), "--threshold", "0.4"])
    assert args.handler(args) == drift_cli.EXIT_DRIFTED
    printed = capsys.readouterr().out
    assert printed.startswith("drift: yes")
    assert "mean_intensity" in printed and "DRIFT" in printed
    assert f"{len(served_images)} images" in printed
    assert json.loads((tmp_path / "out" / drift.REPORT_NAME).read_text())["threshold"] == 0.4


# --- the training data from ML Metadata ----------------------------------------------------------


def _fake_pipeline_run(output_root, examples_uri, node="ImportExampleGen"):
    """A real ML Metadata store holding one finished ExampleGen execution and its output."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    path = configs.metadata_path(str(output_root))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    context = mlmd.Context(type_id=store.put_context_type(mlmd.ContextType(name="node")),
                           name=f"{configs.PIPELINE_NAME}.{node}")
    if examples_uri is None:
        store.put_contexts([context])
        return
    execution = mlmd.Execution(type_id=store.put_execution_type(mlmd.ExecutionType(name=node)),
                               last_known_state=mlmd.Execution.COMPLETE)
    artifact = mlmd.Artifact(type_id=store.put_artifact_type(mlmd.ArtifactType(name="Examples")),
                             uri=examples_uri)
    event = mlmd.Event(type=mlmd.Event.OUTPUT)
    event.path.steps.add().key = drift.EXAMPLES_OUTPUT
    event.path.steps.add().index = 0
    store.put_execution(execution, [(artifact, event)], [context])


def test_training_examples_come_from_the_latest_example_gen_in_ml_metadata(
        train_dir, served_images, tmp_path):
    examples_uri = tmp_path / "ImportExampleGen" / "examples" / "3"
    split = examples_uri / drift.TRAIN_SPLIT_DIR
    split.mkdir(parents=True)
    # ExampleGen writes gzipped records.
    with open(os.path.join(train_dir, "train", "train.tfrecord"), "rb") as source, \
            gzip.open(split / "data_tfrecord-00000-of-00001.gz", "wb", compresslevel=1) as target:
        target.write(source.read())
    output_root = tmp_path / "outputs"
    _fake_pipeline_run(output_root, str(examples_uri))
    log_dir = write_request_log(tmp_path / "log", served_images)

    report = drift.run_drift(log_dir, output_root=str(output_root))
    assert report["training"]["source"] == "ml-metadata"
    assert report["training"]["example_gen"]["node"] == "ImportExampleGen"
    assert report["training_images"] == TRAIN_PATIENTS * SLICES_PER_PATIENT
    assert report["drifted"] is False
    assert os.path.isfile(output_root / drift.MONITORING_DIR / drift.REPORT_NAME)


def test_no_pipeline_run_is_a_clear_error(served_images, tmp_path):
    log_dir = write_request_log(tmp_path / "log", served_images[:4])
    with pytest.raises(FileNotFoundError, match="no ML Metadata store"):
        drift.run_drift(log_dir, output_root=str(tmp_path / "nothing"))
    _fake_pipeline_run(tmp_path / "outputs", None)
    with pytest.raises(FileNotFoundError, match="no finished ExampleGen run"):
        drift.run_drift(log_dir, output_root=str(tmp_path / "outputs"))


# --- broken request logs -------------------------------------------------------------------------


def test_no_log_files_is_a_clear_error(train_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no request log folder"):
        drift.run_drift(str(tmp_path / "missing"), train_examples=train_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no request log files"):
        drift.run_drift(str(tmp_path / "empty"), train_examples=train_dir)
    (tmp_path / "empty" / f"a{request_log.LOG_SUFFIX}{request_log.PARTIAL_SUFFIX}").write_bytes(
        b"")
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\) still being written"):
        drift.run_drift(str(tmp_path / "empty"), train_examples=train_dir)


def test_empty_log_is_a_clear_error(train_dir, tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    with tf.io.TFRecordWriter(str(folder / f"empty{request_log.LOG_SUFFIX}"),
                              tf.io.TFRecordOptions(compression_type="GZIP")):
        pass
    with pytest.raises(ValueError, match="hold no usable image"):
        drift.run_drift(str(folder), train_examples=train_dir)


def test_corrupted_log_file_is_named(train_dir, served_images, tmp_path):
    log_dir = write_request_log(tmp_path / "log", served_images[:8])
    [path] = request_log.list_log_files(log_dir)[0]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])  # truncated, as by a full disk or a copy cut short
    with pytest.raises(ValueError, match=f"{os.path.basename(path)}.*truncated or corrupt"):
        drift.run_drift(log_dir, train_examples=train_dir)


def test_a_file_of_other_records_is_named(train_dir, tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    path = str(folder / f"not_logs{request_log.LOG_SUFFIX}")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        writer.write(b"\xff\xff\xff not a protobuf")
    with pytest.raises(ValueError, match="not_logs.*record 0 is not a PredictionLog"):
        drift.run_drift(str(folder), train_examples=train_dir)


def test_image_features_of_a_known_image():
    image = np.zeros(records.IMAGE_SHAPE, np.int64)
    image[:128] = 1000  # half the pixels
    features = drift.image_features(image)
    assert features["zero_fraction"] == 0.5
    assert features["mean_intensity"] == 500.0 and features["std_intensity"] == 500.0
    assert features["p50_intensity"] == 500.0 and features["p99_intensity"] == 1000.0
    assert features["max_intensity"] == 1000.0
    assert set(features) == set(drift.FEATURE_NAMES)
