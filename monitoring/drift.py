"""Drift of the served images from the training images, measured with TFDV: ``lvseg drift``.

The model sees pixel intensities, and MRI intensities have no absolute scale: another scanner,
coil or protocol changes gain, offset, contrast or field of view without the anatomy changing.
So each image (served or trained on) is summarised by a few intensity statistics, one row per
image, and the distribution of each statistic over the served images is compared with its
distribution over the training images:

=====================  =========  ===============================================================
feature                compared   why
=====================  =========  ===============================================================
``mean_intensity``     yes        overall brightness: moves with any gain or offset change
``std_intensity``      yes        contrast: moves with gain, not with an offset
``p99_intensity``      yes        the bright end (blood pool, fat): the value the default
                                  ``percentile`` normalisation divides each image by (same rank
                                  rule as ``trainer.preprocessing``), so a shift here is what
                                  that normalisation has to absorb
``max_intensity``      yes        outliers, saturation or clipping
``p50_intensity``      reported   the median: mostly decided by how much of the image is air,
                                  lung or zero padding, so it varies with anatomy and field of
                                  view more than with gain
``zero_fraction``      reported   share of pixels exactly 0: zero padding or a circular field of
                                  view that the training images did not have (or had)
=====================  =========  ===============================================================

TFDV computes statistics of both tables (``generate_statistics_from_dataframe``), infers a schema
from the training statistics, gives each compared feature a ``drift_comparator`` with a
Jensen-Shannon divergence threshold (supported for numeric features: TFDV compares their
histograms) and validates the served statistics against the schema with the training statistics
as the reference (``validate_statistics(served, schema, previous_statistics=train)``). A feature
whose divergence exceeds the threshold is an anomaly; any anomaly means drift.

The two "reported" features are in the statistics and the report (train vs served summaries) but
have no comparator: they hinge on a per-acquisition yes/no (~30% of the generated patients have a
circular field of view with zeros outside it), so their distributions are a point mass plus a
second mode whose weight varies from sample to sample, and TFDV's histogram approximation of the
divergence treats a point mass badly. Measured between two samples of the same generator (20
training patients vs 12 served ones, 6 draws): up to 0.95 on ``zero_fraction`` and 0.33 on
``p50_intensity``, against at most 0.30 on the compared four (0.22 with 20 served patients).

Served images come from the request log of ``lvseg serve --request-log-dir`` (TF Serving
``PredictionLog`` TFRecords, :mod:`monitoring.request_log`): the ``image`` input (int64
``[N, 256, 256]``) of ``serving_raw_image`` or the ``image_raw`` of the serialized examples of
``serving_default``. Training images are the train split of the newest ExampleGen output found in
ML Metadata under the output root, or ``--train-examples``.

Output folder (default ``<output_root>/monitoring/``): ``train_stats.pb`` and
``served_stats.pb`` (binary ``DatasetFeatureStatisticsList``: ``tfdv.load_stats_binary``, then
``tfdv.visualize_statistics(lhs_statistics=train, rhs_statistics=served)``), ``schema.pbtxt``
(with the comparators), ``anomalies.pbtxt`` and ``drift.json``::

    {
      "created": "2026-01-01T12:00:00Z",        # UTC
      "drifted": true,                           # any anomaly
      "threshold": 0.3,                          # Jensen-Shannon divergence, per compared feature
      "comparator": "drift_comparator.jensen_shannon_divergence",
      "served_images": 100, "served_requests": 25, "training_images": 234,
      "features": {                              # every feature, most divergent first
        "mean_intensity": {
          "description": "...",
          "compared": true,                      # has a drift comparator (see the table)
          "divergence": 0.93,                    # TFDV's measurement (null if not compared)
          "threshold": 0.3,                      # null if not compared
          "anomaly": true,
          "train":  {"mean": ..., "std": ..., "min": ..., "median": ..., "max": ...},
          "served": {"mean": ..., "std": ..., "min": ..., "median": ..., "max": ...}
        }, ...
      },
      "top_features": ["mean_intensity", ...],   # the anomalous ones, most divergent first
      "anomalies": ["mean_intensity: High approximate Jensen-Shannon divergence ..."],
      "warnings": ["only 12 served images: ..."],   # few images, unread .partial files
      "served": {"log_files": [...], "partial_files_skipped": 1, "requests_by_signature": {...},
                 "model_versions": {"1700000000": 12}, "first_logged": "...",
                 "last_logged": "...", "records_without_images": 0, "unusable_images": 0},
      "training": {"source": "ml-metadata" | "--train-examples", "files": [...],
                   "example_gen": {"node": "ImportExampleGen", "execution_id": 5, "uri": "..."}},
      "inputs": {"request_log_dir": "...", "output_root": "...", "train_examples": null},
      "outputs": {"train_stats": "train_stats.pb", "served_stats": "served_stats.pb",
                  "schema": "schema.pbtxt", "anomalies": "anomalies.pbtxt"}
    }
"""
import datetime
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dataset import records
from trainer.config import percentile_rank_from_top

FEATURES: Dict[str, str] = {
    "mean_intensity": "mean pixel value (brightness; gain and offset)",
    "std_intensity": "standard deviation of the pixel values (contrast)",
    "p99_intensity": "99th percentile (what the percentile normalisation divides by)",
    "max_intensity": "largest pixel value (outliers, saturation)",
    "p50_intensity": "median pixel value (reported, not compared)",
    "zero_fraction": "share of pixels that are exactly 0: padding, field of view (reported, "
                     "not compared)",
}
FEATURE_NAMES = tuple(FEATURES)
COMPARED_FEATURES = ("mean_intensity", "std_intensity", "p99_intensity", "max_intensity")

# Jensen-Shannon divergence (0 = same histogram, 1 = disjoint) above which a feature has drifted.
# Measured on generated data (20 training patients x 13 slices vs 20 served patients x 5, 6
# draws): two samples of the same generator reach at most 0.22 on a compared feature; a gain of
# 1.5x gives at least 0.40 on every compared feature, 3x gives ~1. A gain of 1.3x (inside the
# generator's own per-patient gain range, 0.75-1.35) gives 0.23-0.35 in the least divergent
# draw: not reliably drift. The noise grows with fewer patients (12 served: up to 0.30; 8
# training vs 12 served: up to 0.52), hence the warnings below.
DEFAULT_THRESHOLD = 0.3
MIN_IMAGES = 100  # fewer served or training images: drift.json warns that the divergences are noisy
MONITORING_DIR = "monitoring"
REPORT_NAME = "drift.json"
TRAIN_STATS_NAME = "train_stats.pb"
SERVED_STATS_NAME = "served_stats.pb"
SCHEMA_NAME = "schema.pbtxt"
ANOMALIES_NAME = "anomalies.pbtxt"
EXAMPLE_GEN_NODES = ("ImportExampleGen", "SunnybrookExampleGen")
EXAMPLES_OUTPUT = "examples"
TRAIN_SPLIT_DIR = "Split-train"  # in an ExampleGen output
DATA_ROOT_TRAIN_DIR = "train"  # in a data root (configs.SPLIT_PATTERNS)


# --- per-image features --------------------------------------------------------------------------


def image_features(image: np.ndarray) -> Dict[str, float]:
    """The intensity statistics of one image (see the module docstring)."""
    pixels = np.sort(np.asarray(image, dtype=np.float64).ravel())
    count = pixels.size
    # The intensity the default normalisation divides by (trainer.preprocessing's rule).
    rank_from_top = percentile_rank_from_top(count)
    return {
        "mean_intensity": float(pixels.mean()),
        "std_intensity": float(pixels.std()),
        "p99_intensity": float(pixels[max(count - rank_from_top, 0)]),
        "max_intensity": float(pixels[-1]),
        "p50_intensity": float(np.percentile(pixels, 50.0)),
        "zero_fraction": float(np.count_nonzero(pixels == 0) / count),
    }


def _progress(total: Optional[int], desc: str, unit: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                leave=False)


# --- served images, from the request log ---------------------------------------------------------


def images_of_request(request) -> np.ndarray:
    """The images ``[N, 256, 256]`` int64 of a logged PredictRequest (either signature);
    raises ValueError when it holds none."""
    import tensorflow as tf
    from trainer import signatures

    inputs = request.inputs
    if signatures.IMAGE_INPUT in inputs:
        images = tf.make_ndarray(inputs[signatures.IMAGE_INPUT])
        if images.ndim != 3 or images.shape[1:] != records.IMAGE_SHAPE:
            raise ValueError(f"input {signatures.IMAGE_INPUT!r} has shape {images.shape}")
        return images.astype(np.int64)
    if signatures.EXAMPLES_INPUT in inputs:
        serialized = tf.make_ndarray(inputs[signatures.EXAMPLES_INPUT]).reshape(-1)
        return np.stack([image_of_example(item) for item in serialized]) if len(serialized) \
            else np.zeros((0,) + records.IMAGE_SHAPE, np.int64)
    raise ValueError(f"the request has neither {signatures.IMAGE_INPUT!r} nor "
                     f"{signatures.EXAMPLES_INPUT!r} among its inputs ({sorted(inputs)})")


def image_of_example(serialized: bytes) -> np.ndarray:
    """The ``image_raw`` pixels of a serialized lab-schema example (only that feature is read)."""
    import tensorflow as tf
    example = tf.train.Example.FromString(serialized)
    values = example.features.feature[records.IMAGE_KEY].bytes_list.value
    if len(values) != 1 or len(values[0]) != records.IMAGE_BYTES:
        raise ValueError(f"{records.IMAGE_KEY} is not one {records.IMAGE_BYTES}-byte value")
    return np.frombuffer(values[0], dtype=records.IMAGE_DTYPE).reshape(records.IMAGE_SHAPE)


def served_feature_rows(request_log_dir: str, progress: bool = False
                        ) -> Tuple[List[Dict[str, float]], dict]:
    """Per-image features of every logged Predict request, and what was read.

    Raises FileNotFoundError when there are no log files, ValueError (naming the file) for a
    corrupt one, and ValueError when the files hold no image.
    """
    from monitoring import request_log

    files, partial = request_log.list_log_files(request_log_dir)
    if not files:
        still = (f" ({len(partial)} file(s) still being written or left by a crash: *"
                 f"{request_log.PARTIAL_SUFFIX}; the server renames them on rotation and "
                 "shutdown)") if partial else ""
        raise FileNotFoundError(
            f"no request log files (*{request_log.LOG_SUFFIX}) in {request_log_dir}{still}; "
            "serve with `lvseg serve --request-log-dir DIR` to write them")
    rows: List[Dict[str, float]] = []
    info = dict(log_files=files, partial_files_skipped=len(partial), requests=0,
                requests_by_signature={}, model_versions={}, records_without_images=0,
                unusable_images=0, first_logged=None, last_logged=None)
    timestamps = []
    bar = _progress(None, "reading request logs", "image", progress)
    try:
        for path in files:
            for record in request_log.read_prediction_logs(path):
                if record.WhichOneof("log_type") != "predict_log":
                    info["records_without_images"] += 1
                    continue
                info["requests"] += 1
                spec = record.log_metadata.model_spec
                signature = spec.signature_name or "serving_default"
                info["requests_by_signature"][signature] = (
                    info["requests_by_signature"].get(signature, 0) + 1)
                version = str(spec.version.value)
                info["model_versions"][version] = info["model_versions"].get(version, 0) + 1
                if record.log_metadata.timestamp_secs:
                    timestamps.append(record.log_metadata.timestamp_secs)
                try:
                    images = images_of_request(record.predict_log.request)
                except Exception:  # noqa: BLE001  (counted; the other requests still count)
                    info["unusable_images"] += 1
                    continue
                for image in images:
                    rows.append(image_features(image))
                    bar.update(1)
    finally:
        bar.close()
    if timestamps:
        info["first_logged"] = _utc(min(timestamps))
        info["last_logged"] = _utc(max(timestamps))
    if not rows:
        raise ValueError(
            f"the request logs in {request_log_dir} hold no usable image ({len(files)} file(s), "
            f"{info['requests']} Predict record(s), {info['unusable_images']} unusable)")
    return rows, info


# --- training images -----------------------------------------------------------------------------


def latest_train_split(output_root: str, pipeline_name: Optional[str] = None) -> Tuple[str, dict]:
    """The train split folder of the newest ExampleGen output in the pipeline's ML Metadata."""
    from pipeline import configs, run_summary

    pipeline_name = pipeline_name or configs.PIPELINE_NAME
    metadata_path = os.path.abspath(configs.metadata_path(output_root, pipeline_name))
    store = run_summary.open_store(metadata_path)  # FileNotFoundError if no run
    candidates = []
    for node in EXAMPLE_GEN_NODES:
        execution = run_summary.latest_execution(store, pipeline_name, node)
        artifacts = run_summary.output_artifacts(store, execution).get(EXAMPLES_OUTPUT)
        if artifacts:
            candidates.append((execution.create_time_since_epoch, execution.id, node,
                               artifacts[0].uri))
    if not candidates:
        raise FileNotFoundError(
            f"no finished ExampleGen run of pipeline {pipeline_name!r} in {metadata_path}: run "
            f"`lvseg run --output-root {output_root}` first, or pass --train-examples")
    _, execution_id, node, uri = max(candidates)
    split_dir = os.path.join(uri, TRAIN_SPLIT_DIR)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"the {node} output {uri} (execution {execution_id}) has no "
                                f"{TRAIN_SPLIT_DIR} folder: was it deleted?")
    return split_dir, dict(node=node, execution_id=execution_id, uri=uri)


def training_files(train_examples: str) -> List[str]:
    """TFRecord files of ``--train-examples``: a glob, a file, an ExampleGen output (its
    ``Split-train``), a data root (its ``train`` folder) or a folder of record files."""
    if glob.has_magic(train_examples):
        files = sorted(p for p in glob.glob(train_examples, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(train_examples):
        files = [train_examples]
    elif os.path.isdir(train_examples):
        folder = train_examples
        for split in (TRAIN_SPLIT_DIR, DATA_ROOT_TRAIN_DIR):
            if os.path.isdir(os.path.join(folder, split)):
                folder = os.path.join(folder, split)
                break
        files = records.list_record_files(folder)
    else:
        raise FileNotFoundError(f"--train-examples {train_examples}: no such file or folder")
    files = [p for p in files if os.path.isfile(p) and not p.endswith(".partial")]
    if not files:
        raise FileNotFoundError(f"no training record files in {train_examples}")
    return files


def training_feature_rows(files: Sequence[str], progress: bool = False
                          ) -> List[Dict[str, float]]:
    """Per-image features of every example in ``files`` (gzip by the ``.gz`` name)."""
    import tensorflow as tf

    rows: List[Dict[str, float]] = []
    bar = _progress(None, "reading training examples", "image", progress)
    try:
        for path in files:
            index = -1
            try:
                for index, serialized in enumerate(tf.data.TFRecordDataset(
                        path, compression_type=records.compression_of(path)).as_numpy_iterator()):
                    try:
                        rows.append(image_features(image_of_example(serialized)))
                    except Exception as exc:  # noqa: BLE001
                        raise ValueError(f"{path}: record {index}: not a lab-schema example "
                                         f"({exc})") from exc
                    bar.update(1)
            except tf.errors.OpError as exc:
                where = "at its start" if index < 0 else f"after record {index}"
                raise ValueError(
                    f"{path}: not a readable TFRecord file {where} (truncated or corrupt): "
                    f"{(exc.message or type(exc).__name__).splitlines()[0]}") from exc
    finally:
        bar.close()
    if not rows:
        raise ValueError(f"the training records hold no example: {', '.join(files[:3])}")
    return rows


# --- comparison ----------------------------------------------------------------------------------


def statistics_of(rows: Sequence[Dict[str, float]]):
    """TFDV statistics of the per-image feature table."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    frame = pd.DataFrame(list(rows), columns=list(FEATURE_NAMES)).astype(np.float64)
    return tfdv.generate_statistics_from_dataframe(frame, tfdv.StatsOptions())


def compare(train_stats, served_stats, threshold: float = DEFAULT_THRESHOLD):
    """``(schema, anomalies)``: the schema inferred from the training statistics with a
    Jensen-Shannon drift comparator on each compared feature, and TFDV's validation of the
    served statistics against it with the training statistics as the reference."""
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(train_stats)
    for name in COMPARED_FEATURES:
        tfdv.get_feature(schema, name).drift_comparator.jensen_shannon_divergence.threshold = (
            threshold)
    anomalies = tfdv.validate_statistics(served_stats, schema, previous_statistics=train_stats)
    return schema, anomalies


def divergences(anomalies) -> Dict[str, float]:
    """Feature -> Jensen-Shannon divergence, from the anomalies' ``drift_skew_info``."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    jsd = anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE
    values = {}
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        for measurement in info.drift_measurements:
            if measurement.type == jsd:
                values[name] = float(measurement.value)
    return values


def _summary(stats, name: str) -> dict:
    for feature in stats.datasets[0].features:
        if ".".join(feature.path.step) == name or feature.name == name:
            num = feature.num_stats
            return {"mean": num.mean, "std": num.std_dev, "min": num.min, "median": num.median,
                    "max": num.max}
    return {}


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _write_atomically(path: str, data: bytes) -> None:
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def run_drift(request_log_dir: str, output_root: Optional[str] = None,
              train_examples: Optional[str] = None, out_dir: Optional[str] = None,
              threshold: float = DEFAULT_THRESHOLD, progress: bool = False,
              pipeline_name: Optional[str] = None) -> dict:
    """Compares the logged requests with the training data; writes and returns drift.json's
    content (see the module docstring). Errors: FileNotFoundError / ValueError, one line."""
    from google.protobuf import text_format
    from pipeline import configs

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold is a Jensen-Shannon divergence in (0, 1], got {threshold}")
    output_root = output_root or configs.DEFAULT_OUTPUT_ROOT
    out_dir = out_dir or os.path.join(output_root, MONITORING_DIR)

    served_rows, served_info = served_feature_rows(request_log_dir, progress)
    if train_examples:
        files = training_files(train_examples)
        training_info = dict(source="--train-examples", files=files)
    else:
        split_dir, example_gen = latest_train_split(output_root, pipeline_name)
        files = training_files(split_dir)
        training_info = dict(source="ml-metadata", files=files, example_gen=example_gen)
    train_rows = training_feature_rows(files, progress)

    train_stats = statistics_of(train_rows)
    served_stats = statistics_of(served_rows)
    schema, anomalies = compare(train_stats, served_stats, threshold)
    measured = divergences(anomalies)

    anomalous = {name for name in anomalies.anomaly_info}
    features = {}
    for name in sorted(FEATURE_NAMES, key=lambda n: -measured.get(n, -1.0)):
        compared = name in COMPARED_FEATURES
        features[name] = dict(description=FEATURES[name], compared=compared,
                              divergence=measured.get(name),
                              threshold=threshold if compared else None,
                              anomaly=name in anomalous,
                              train=_summary(train_stats, name),
                              served=_summary(served_stats, name))
    anomaly_lines = [f"{name}: {info.description}" for name, info in
                     sorted(anomalies.anomaly_info.items())]
    if anomalies.HasField("dataset_anomaly_info"):
        anomaly_lines.append(f"dataset: {anomalies.dataset_anomaly_info.description}")
    warnings = []
    for what, count in (("served", len(served_rows)), ("training", len(train_rows))):
        if count < MIN_IMAGES:
            warnings.append(
                f"only {count} {what} images: with fewer than {MIN_IMAGES} images (or images "
                "of few patients) the divergences are noisy (two samples of ~10 generated "
                "patients each differ by up to 0.5); "
                + ("log more (a higher --request-log-sampling) or wait" if what == "served"
                   else "compare with a larger training set"))
    if served_info["partial_files_skipped"]:
        warnings.append(f"{served_info['partial_files_skipped']} log file(s) still open or torn "
                        "(*.partial) were not read")
    if served_info["unusable_images"]:
        warnings.append(f"{served_info['unusable_images']} logged request(s) had no readable "
                        "image")
    served_info = dict(served_info)
    served_info.pop("requests")
    report = {
        "created": _utc(datetime.datetime.now(datetime.timezone.utc).timestamp()),
        "drifted": bool(anomaly_lines),
        "threshold": threshold,
        "comparator": "drift_comparator.jensen_shannon_divergence",
        "served_images": len(served_rows),
        "served_requests": sum(served_info["requests_by_signature"].values()),
        "training_images": len(train_rows),
        "features": features,
        "top_features": [name for name, value in features.items() if value["anomaly"]],
        "anomalies": anomaly_lines,
        "warnings": warnings,
        "served": served_info,
        "training": training_info,
        "inputs": {"request_log_dir": os.path.abspath(request_log_dir),
                   "output_root": os.path.abspath(output_root),
                   "train_examples": train_examples},
        "outputs": {"train_stats": TRAIN_STATS_NAME, "served_stats": SERVED_STATS_NAME,
                    "schema": SCHEMA_NAME, "anomalies": ANOMALIES_NAME},
    }
    os.makedirs(out_dir, exist_ok=True)
    _write_atomically(os.path.join(out_dir, TRAIN_STATS_NAME), train_stats.SerializeToString())
    _write_atomically(os.path.join(out_dir, SERVED_STATS_NAME), served_stats.SerializeToString())
    _write_atomically(os.path.join(out_dir, SCHEMA_NAME),
                      text_format.MessageToString(schema).encode())
    _write_atomically(os.path.join(out_dir, ANOMALIES_NAME),
                      text_format.MessageToString(anomalies).encode())
    _write_atomically(os.path.join(out_dir, REPORT_NAME),
                      (json.dumps(report, indent=2) + "\n").encode())
    report["report_path"] = os.path.join(out_dir, REPORT_NAME)
    return report
