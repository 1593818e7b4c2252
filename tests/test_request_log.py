"""Request logging of the local server (monitoring/request_log.py): real gRPC Predicts on 127.0.0.1,
real PredictionLog files read back.

Sampling (0 logs nothing, 1 everything, a seed repeats the draws), the size cap (the files stay
under it, logging stops and says so once, the server goes on answering), failed requests are not
logged, errors of logging never reach a client, and only closed files carry the final name.
"""
import argparse
import contextlib
import logging
import os
import random
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from components import atomic_pusher
from pipeline import configs
from monitoring import drift
from serving import cli, client, model_server, payloads, versions
from serving import config as serving_config
from monitoring import request_log
from trainer import signatures
from dataset import records

MB = 1 << 20


@pytest.fixture(scope="module")
def base_path(sample_saved_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("request_log_models") / configs.MODEL_NAME)
    version, _ = atomic_pusher.push_version_atomically(sample_saved_model, path)
    return path


@contextlib.contextmanager
def serving(base_path, logger):
    """A local server on 127.0.0.1 that logs to ``logger``; yields its target."""
    manager = versions.ModelManager(configs.MODEL_NAME, base_path)
    server = model_server.LocalModelServer([manager], host="127.0.0.1", request_log=logger)
    server.start()
    try:
        yield server.target
    finally:
        server.stop(grace_s=1.0)


def _client(target, signature=serving_config.CLIENT_DEFAULT_SIGNATURE):
    return client.ServingClient(target, configs.MODEL_NAME, signature=signature, max_attempts=1)


def _read_all(directory):
    files, partial = request_log.list_log_files(directory)
    return [record for path in files for record in request_log.read_prediction_logs(path)], \
        files, partial


def _log_bytes(directory):
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def test_every_answered_predict_of_both_signatures_is_a_prediction_log(base_path, sample_images,
                                                                       tmp_path):
    log_dir = str(tmp_path / "log")
    logger = request_log.RequestLogger(log_dir, sampling_rate=1.0)
    started = int(time.time())
    with serving(base_path, logger) as target:
        with _client(target, signatures.SERVING_RAW_IMAGE) as raw:
            raw_result = raw.predict_result(sample_images)
        with _client(target, signatures.SERVING_DEFAULT) as examples:
            examples_result = examples.predict_result(sample_images[:1])
        logger.flush()
        logged, files, partial = _read_all(log_dir)
    assert partial == [] and len(files) == 1 and files[0].endswith(request_log.LOG_SUFFIX)
    assert len(logged) == 2
    by_signature = {r.log_metadata.model_spec.signature_name: r for r in logged}
    assert set(by_signature) == {signatures.SERVING_RAW_IMAGE, signatures.SERVING_DEFAULT}
    for record in logged:
        metadata = record.log_metadata
        assert metadata.model_spec.name == configs.MODEL_NAME
        assert metadata.model_spec.version.value == raw_result.model_version
        assert metadata.sampling_config.sampling_rate == 1.0
        assert list(metadata.saved_model_tags) == ["serve"]
        assert started - 1 <= metadata.timestamp_secs <= time.time() + 1
        assert record.predict_log.response.model_spec.version.value == raw_result.model_version

    raw_log = by_signature[signatures.SERVING_RAW_IMAGE].predict_log
    np.testing.assert_array_equal(
        tf.make_ndarray(raw_log.request.inputs[signatures.IMAGE_INPUT]), sample_images)
    np.testing.assert_array_equal(drift.images_of_request(raw_log.request), sample_images)
    # The default response summary: LV pixels per image instead of the 256x256 maps.
    assert set(raw_log.response.outputs) == {request_log.SUMMARY_OUTPUT}
    np.testing.assert_array_equal(
        tf.make_ndarray(raw_log.response.outputs[request_log.SUMMARY_OUTPUT]),
        raw_result.masks.reshape(len(sample_images), -1).sum(axis=1))

    examples_log = by_signature[signatures.SERVING_DEFAULT].predict_log
    assert signatures.EXAMPLES_INPUT in examples_log.request.inputs
    np.testing.assert_array_equal(drift.images_of_request(examples_log.request),
                                  sample_images[:1])
    np.testing.assert_array_equal(
        tf.make_ndarray(examples_log.response.outputs[request_log.SUMMARY_OUTPUT]),
        [examples_result.masks.sum()])


def test_failed_requests_are_not_logged(base_path, sample_images, tmp_path):
    log_dir = str(tmp_path / "log")
    logger = request_log.RequestLogger(log_dir, sampling_rate=1.0)
    with serving(base_path, logger) as target:
        with _client(target) as serving_client:
            with pytest.raises(client.InvalidInputError):  # wrong image size
                serving_client.predict_tensors(
                    {signatures.IMAGE_INPUT: np.zeros((1, 128, 128), np.int64)},
                    signatures.SERVING_RAW_IMAGE)
            with pytest.raises(client.ServingError):  # unknown signature
                serving_client.predict_tensors(
                    {signatures.IMAGE_INPUT: sample_images[:1]}, "no_such_signature")
            serving_client.predict(sample_images[0])  # the one that counts
        logger.flush()
        logged, _, _ = _read_all(log_dir)
        assert logger.stats()["offered"] == 1
    assert len(logged) == 1


def test_sampling_rate_zero_logs_nothing(base_path, sample_images, tmp_path):
    log_dir = str(tmp_path / "log")
    logger = request_log.RequestLogger(log_dir, sampling_rate=0.0)
    with serving(base_path, logger) as target, _client(target) as serving_client:
        for _ in range(3):
            masks, _ = serving_client.predict(sample_images)
            assert masks.shape == (len(sample_images),) + records.IMAGE_SHAPE
        logger.flush()
        stats = logger.stats()
    assert (stats["offered"], stats["logged"]) == (3, 0)
    assert os.listdir(log_dir) == []


def test_size_cap_holds_logging_stops_once_and_the_server_still_answers(base_path, tmp_path,
                                                                         caplog):
    log_dir = str(tmp_path / "log")
    cap = 1 * MB  # a single-image record: ~0.5 MB before compression, ~0.1 MB after
    logger = request_log.RequestLogger(log_dir, sampling_rate=1.0, max_bytes=cap,
                                       max_file_bytes=300_000)
    images = payloads.as_image_batch(drift_images(12))[0]
    caplog.set_level(logging.INFO, logger=request_log.__name__)
    with serving(base_path, logger) as target, _client(target) as serving_client:
        for image in images:
            logger.flush()  # one record at a time: the cap decision is deterministic
            masks, _ = serving_client.predict(image)
            assert masks.shape == records.IMAGE_SHAPE
        logger.flush()
        stats = logger.stats()
        logged, files, _ = _read_all(log_dir)
    assert stats["full"] == 1
    assert 0 < stats["logged"] < len(images)
    assert stats["logged"] + stats["dropped_cap"] + (stats["offered"] - stats["sampled"]) \
        == len(images)
    assert len(logged) == stats["logged"] == len(files)  # each flush closes the file
    assert _log_bytes(log_dir) <= cap
    cap_lines = [r for r in caplog.records if "size cap" in r.getMessage()]
    assert len(cap_lines) == 1 and cap_lines[0].levelno == logging.WARNING


def test_a_restart_counts_the_earlier_logs_towards_the_cap(tmp_path, caplog):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / f"old{request_log.LOG_SUFFIX}").write_bytes(b"x" * 600_000)
    (log_dir / f"torn{request_log.LOG_SUFFIX}{request_log.PARTIAL_SUFFIX}").write_bytes(
        b"y" * 500_000)
    caplog.set_level(logging.WARNING, logger=request_log.__name__)
    with request_log.RequestLogger(str(log_dir), sampling_rate=1.0, max_bytes=1_000_000) as logger:
        assert logger.stats()["full"] == 1
        request, response = _request_and_response(drift_images(1))
        assert not logger.log(request, response, model_name="m", version=1,
                              signature_name=signatures.SERVING_RAW_IMAGE)
    assert any("size cap" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(log_dir)) == [f"old{request_log.LOG_SUFFIX}",
                                           f"torn{request_log.LOG_SUFFIX}"
                                           f"{request_log.PARTIAL_SUFFIX}"]


def test_a_seed_repeats_the_sampling_draws(tmp_path):
    rate, seed, count = 0.4, 3, 20
    draws = random.Random(seed)
    expected = sum(draws.random() < rate for _ in range(count))
    assert 0 < expected < count
    request, response = _request_and_response(drift_images(1))
    with request_log.RequestLogger(str(tmp_path / "log"), sampling_rate=rate, seed=seed) as logger:
        queued = [logger.log(request, response, model_name="m", version=1,
                             signature_name=signatures.SERVING_RAW_IMAGE) for _ in range(count)]
        logger.flush()
        assert sum(queued) == logger.stats()["logged"] == expected
    logged, _, _ = _read_all(str(tmp_path / "log"))
    assert len(logged) == expected


def test_open_files_are_partial_until_closed(tmp_path):
    log_dir = str(tmp_path / "log")
    request, response = _request_and_response(drift_images(2))
    logger = request_log.RequestLogger(log_dir, sampling_rate=1.0)
    try:
        for _ in range(2):
            assert logger.log(request, response, model_name="m", version=7,
                              signature_name=signatures.SERVING_RAW_IMAGE)
        deadline = time.monotonic() + 30
        while logger.stats()["logged"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        files, partial = request_log.list_log_files(log_dir)
        assert files == [] and len(partial) == 1  # a reader never sees the open file
    finally:
        logger.close()
    logged, files, partial = _read_all(log_dir)
    assert len(files) == 1 and partial == [] and len(logged) == 2
    assert logged[0].log_metadata.model_spec.version.value == 7


def test_a_full_queue_drops_records_instead_of_waiting(tmp_path, monkeypatch, caplog):
    request, response = _request_and_response(drift_images(1))
    logger = request_log.RequestLogger(str(tmp_path / "log"), sampling_rate=1.0,
                                       max_queue_bytes=1)  # one record at a time
    writing, release = threading.Event(), threading.Event()
    original_write = logger._write

    def slow_write(record):
        writing.set()
        release.wait(30)
        original_write(record)

    monkeypatch.setattr(logger, "_write", slow_write)
    caplog.set_level(logging.WARNING, logger=request_log.__name__)

    def log():
        return logger.log(request, response, model_name="m", version=1,
                          signature_name=signatures.SERVING_RAW_IMAGE)

    try:
        assert log()  # taken by the writer, which is now stuck in slow_write
        assert writing.wait(30)
        assert log()  # fits the empty queue
        assert not log() and not log()  # would wait: dropped
    finally:
        release.set()
        logger.close()
    stats = logger.stats()
    assert (stats["logged"], stats["dropped_queue_full"]) == (2, 2)
    assert len([r for r in caplog.records if "writer is behind" in r.getMessage()]) == 1


@pytest.mark.parametrize("mode", ["full", "none"])
def test_response_modes(tmp_path, mode):
    images = drift_images(1)
    request, response = _request_and_response(images)
    with request_log.RequestLogger(str(tmp_path), sampling_rate=1.0, response=mode) as logger:
        logger.log(request, response, model_name="m", version=1,
                   signature_name=signatures.SERVING_RAW_IMAGE,
                   outputs={signatures.MASK_OUTPUT: np.ones((1,) + records.IMAGE_SHAPE)})
    [record], _, _ = _read_all(str(tmp_path))
    logged = record.predict_log.response
    assert logged.model_spec.version.value == 1
    if mode == "full":
        assert logged == response
    else:
        assert len(logged.outputs) == 0


def test_errors_of_logging_never_reach_the_client(base_path, sample_images, tmp_path, caplog,
                                                  monkeypatch):
    logger = request_log.RequestLogger(str(tmp_path / "log"), sampling_rate=1.0)

    def cannot_open():
        raise OSError("No space left on device")

    monkeypatch.setattr(logger, "_open_file", cannot_open)
    caplog.set_level(logging.ERROR, logger=request_log.__name__)
    with serving(base_path, logger) as target, _client(target) as serving_client:
        for _ in range(3):
            masks, _ = serving_client.predict(sample_images)
            assert masks.shape == (len(sample_images),) + records.IMAGE_SHAPE
        logger.flush()
        stats = logger.stats()
    assert stats["errors"] == 3 and stats["logged"] == 0
    errors = [r for r in caplog.records if "No space left" in r.getMessage()]
    assert len(errors) == 1  # said once, counted always

    broken = request_log.RequestLogger(str(tmp_path / "log2"), sampling_rate=1.0)
    monkeypatch.setattr(request_log, "prediction_log",
                        lambda *args, **kwargs: 1 / 0)
    with serving(base_path, broken) as target, _client(target) as serving_client:
        masks, _ = serving_client.predict(sample_images[0])
        assert masks.shape == records.IMAGE_SHAPE
        assert broken.stats()["errors"] == 1


def test_serve_options_build_the_logger(tmp_path):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve"])
    assert cli._request_logger(args) is None  # off by default
    args = parser.parse_args(["serve", "--request-log-dir", str(tmp_path / "log"),
                              "--request-log-sampling", "0.25", "--request-log-max-mb", "2",
                              "--request-log-response", "none"])
    logger = cli._request_logger(args)
    try:
        assert (logger.sampling_rate, logger.max_bytes, logger.response) == (0.25, 2 * MB, "none")
    finally:
        logger.close()
    for bad in (["--request-log-sampling", "1.5"], ["--request-log-max-mb", "0"]):
        args = parser.parse_args(["serve", "--request-log-dir", str(tmp_path / "x")] + bad)
        with pytest.raises(ValueError):
            cli._request_logger(args)


# --- helpers -------------------------------------------------------------------------------------


def drift_images(count):
    """``count`` generated slices [count, 256, 256] int64."""
    from dataset import synthetic_data
    slices = synthetic_data.generate_slices(num_patients=1, slices_per_patient=count, seed=5)
    return np.stack([s.image for s in slices]).astype(np.int64)


def _request_and_response(images):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = signatures.SERVING_RAW_IMAGE
    request.inputs[signatures.IMAGE_INPUT].CopyFrom(tf.make_tensor_proto(images))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 1
    response.outputs[signatures.MASK_OUTPUT].CopyFrom(
        tf.make_tensor_proto(np.zeros(images.shape, np.int32)))
    return request, response
