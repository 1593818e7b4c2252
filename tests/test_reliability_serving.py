"""Serving under faults, on the local server over real 127.0.0.1 sockets: versions pushed while
8 clients send requests (one push killed halfway), malformed and hostile requests, and request
strings that must never become paths."""
import builtins
import os
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from components import atomic_pusher
from pipeline import configs
from serving import client, payloads
from trainer import signatures
from dataset import records
from tests.conftest import REPO_ROOT

MODEL = configs.MODEL_NAME
CLIENTS = 8
PUSHES = 3
PAUSE_S = 0.02  # between one client's requests: a bounded load on a 2-CPU machine
RELOAD_WAIT_S = 90
LIMIT_IMAGES = 2  # the `served` server's message limit is sized for 2 images ...
OVER_LIMIT_IMAGES = payloads.message_bytes_for(LIMIT_IMAGES) // (records.NUM_PIXELS * 8) + 1


def _base_path(root):
    return os.path.join(str(root), "models", MODEL)


def _expected_outputs(saved_model, image):
    outputs = tf.saved_model.load(saved_model).signatures[signatures.SERVING_RAW_IMAGE](
        image=tf.constant(image[np.newaxis]))
    return (outputs[signatures.MASK_OUTPUT].numpy()[0],
            outputs[signatures.PROBABILITIES_OUTPUT].numpy()[0])


_KILLED_PUSH = """
import os, signal, sys
from components import atomic_pusher
copy_file = atomic_pusher.io_utils.copy_file
def dying_copy_file(src, dst, *args, **kwargs):
    if src.endswith(atomic_pusher.SAVED_MODEL_FILE):  # variables copied, graph not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return copy_file(src, dst, *args, **kwargs)
atomic_pusher.io_utils.copy_file = dying_copy_file
atomic_pusher.push_version_atomically(sys.argv[1], sys.argv[2])
"""


def _push_killed_mid_copy(model, base_path):
    """A real pusher process killed (SIGKILL) halfway through its copy; returns its debris."""
    before = set(os.listdir(base_path))
    result = subprocess.run([sys.executable, "-c", _KILLED_PUSH, model, base_path],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    return sorted(set(os.listdir(base_path)) - before)


def test_eight_clients_while_three_versions_are_pushed_and_one_push_dies(
        start_model_server, sample_saved_model, sample_images, tmp_path):
    base_path = _base_path(tmp_path)
    complete = [atomic_pusher.push_version_atomically(sample_saved_model, base_path)[0]]
    target = start_model_server("local", base_path, poll_interval_s=0.1)
    image = sample_images[0]
    expected_mask, expected_probabilities = _expected_outputs(sample_saved_model, image)
    seen = [[] for _ in range(CLIENTS)]  # per client: (version, outputs as expected)
    failures, stop = [], threading.Event()

    def client_loop(index):
        with client.ServingClient(target, MODEL, timeout_s=60, max_attempts=1) as serving:
            while not stop.is_set():
                try:
                    result = serving.predict_result(image)
                    whole = (np.array_equal(result.masks, expected_mask) and
                             np.allclose(result.probabilities, expected_probabilities, atol=1e-6))
                    seen[index].append((result.model_version, whole))
                except Exception as exc:  # noqa: BLE001  (any failure fails the test)
                    failures.append(exc)
                stop.wait(PAUSE_S)

    def wait_for(condition, what):
        deadline = time.monotonic() + RELOAD_WAIT_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert all(t.is_alive() for t in threads), "a client thread died"
            time.sleep(0.05)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(seen), "a first answer to every client")
        debris = _push_killed_mid_copy(sample_saved_model, base_path)
        for _ in range(PUSHES):
            version, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
            complete.append(version)
            counts = [len(s) for s in seen]
            wait_for(lambda: all(s[-1][0] == version for s in seen)
                     and all(len(s) > n + 1 for s, n in zip(seen, counts)),
                     f"every client to be answered by version {version}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert not failures, failures[:3]
    # the killed push left a hidden staging folder, which nothing loaded
    assert len(debris) == 1 and debris[0].startswith(".") and atomic_pusher.INCOMPLETE_MARK in \
        debris[0] and not os.path.exists(os.path.join(base_path, debris[0], "saved_model.pb"))
    answers = [answer for per_client in seen for answer in per_client]
    assert {version for version, _ in answers} <= set(complete)
    assert all(whole for _, whole in answers)
    for per_client in seen:  # never back to an older version once a newer one answered
        versions = [version for version, _ in per_client]
        assert versions == sorted(versions) and versions[-1] == complete[-1]
    with client.ServingClient(target, MODEL) as serving:
        assert {s.version for s in serving.model_status()} <= set(complete)


# --- malformed and hostile requests ------------------------------------------------------------


@pytest.fixture(scope="module")
def served(start_model_server, sample_saved_model, tmp_path_factory):
    """A server whose message limit fits LIMIT_IMAGES images; a valid SavedModel sits beside its
    base path, where a request string turned into a path would find it."""
    root = tmp_path_factory.mktemp("served")
    base_path = _base_path(root)
    version, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    canary = os.path.join(os.path.dirname(base_path), "evil")
    atomic_pusher.push_version_atomically(sample_saved_model, canary)
    target = start_model_server("local", base_path, version_labels={"stable": version},
                                max_message_bytes=payloads.message_bytes_for(LIMIT_IMAGES))
    channel = grpc.insecure_channel(target)
    yield dict(target=target, base_path=base_path, version=version, channel=channel,
               prediction=prediction_service_pb2_grpc.PredictionServiceStub(channel),
               model=model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def _predict_request(tensor, signature=signatures.SERVING_RAW_IMAGE, name=MODEL):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    alias = (signatures.IMAGE_INPUT if signature == signatures.SERVING_RAW_IMAGE
             else signatures.EXAMPLES_INPUT)
    request.inputs[alias].CopyFrom(tensor)
    return request


def _images(count, dtype=np.int64, fill=0):
    return tf.make_tensor_proto(np.full((count,) + records.IMAGE_SHAPE, fill, dtype))


def _declared_only(dims, value=7):
    """A tensor of shape ``dims`` filled from a single value: a few bytes on the wire."""
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[value])
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def _with(tensor, **changes):
    for field, value in changes.items():
        if field == "first_dim":
            tensor.tensor_shape.dim[0].size = value
        elif field == "unknown_rank":
            tensor.tensor_shape.unknown_rank = value
        else:
            setattr(tensor, field, value)
    return tensor


def _good_request_bytes():
    return _predict_request(_images(1)).SerializeToString()


def _status_request_bytes():
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    return request.SerializeToString()


INVALID, TOO_BIG = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
BAD_REQUESTS = {
    # raw bytes, sent with a generic call that does not serialize anything
    "garbage bytes": (lambda: b"\xff\xfe\x00garbage", INVALID),
    "protobuf cut in the middle": (lambda: _good_request_bytes()[:1000], INVALID),
    "another RPC's request": (_status_request_bytes, INVALID),  # no inputs
    # well-formed protobufs with bad tensors
    "message over the size limit": (lambda: _predict_request(_images(OVER_LIMIT_IMAGES)),
                                    TOO_BIG),
    "huge tensor declared in a small message": (lambda: _predict_request(
        _declared_only((3000,) + records.IMAGE_SHAPE)), TOO_BIG),
    "float pixels": (lambda: _predict_request(_images(1, np.float32)), INVALID),
    "NaN pixels": (lambda: _predict_request(_images(1, np.float32, np.nan)), INVALID),
    "string pixels": (lambda: _predict_request(tf.make_tensor_proto(
        np.full((1, 2), b"x", dtype=object))), INVALID),
    "unknown dtype": (lambda: _predict_request(_with(_images(1), dtype=999)), INVALID),
    "negative dimension": (lambda: _predict_request(_with(_images(1), first_dim=-3)), INVALID),
    "unknown rank": (lambda: _predict_request(_with(_images(1), unknown_rank=True)), INVALID),
    "content shorter than the shape": (lambda: _predict_request(
        _with(_images(1), tensor_content=b"\0" * 100)), INVALID),
}


def _send(served, request, timeout=30):
    if isinstance(request, bytes):
        call = served["channel"].unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=None, response_deserializer=None)
        return call(request, timeout=timeout)
    return served["prediction"].Predict(request, timeout=timeout)


def _assert_still_serving(served):
    response = _send(served, _predict_request(tf.make_tensor_proto(payloads.as_image_batch(
        np.ones(records.IMAGE_SHAPE))[0])))
    assert response.model_spec.version.value == served["version"]
    assert tf.make_ndarray(response.outputs[signatures.MASK_OUTPUT]).shape == \
        (1,) + records.IMAGE_SHAPE


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_the_server_keeps_serving(served, case):
    build, expected_code = BAD_REQUESTS[case]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        _send(served, build())
    assert caught.value.code() == expected_code, caught.value.details()
    assert time.monotonic() - started < 10  # refused, not computed
    _assert_still_serving(served)


@pytest.mark.parametrize("request_of_nothing", [
    lambda: _predict_request(_images(0)),
    lambda: _predict_request(tf.make_tensor_proto(np.array([], dtype=object)),
                             signatures.SERVING_DEFAULT)])
def test_an_empty_batch_is_answered_with_empty_outputs(served, request_of_nothing):
    """As TF Serving, which runs the graph on it (predict_util.cc checks no batch size)."""
    response = _send(served, request_of_nothing())
    for alias in (signatures.MASK_OUTPUT, signatures.PROBABILITIES_OUTPUT):
        assert tf.make_ndarray(response.outputs[alias]).shape == (0,) + records.IMAGE_SHAPE
    _assert_still_serving(served)


@pytest.mark.parametrize("fill", [0, np.iinfo(np.int64).max, np.iinfo(np.int64).min])
def test_extreme_pixel_values_give_finite_probabilities(served, fill):
    response = _send(served, _predict_request(_images(1, fill=fill)))
    probabilities = tf.make_ndarray(response.outputs[signatures.PROBABILITIES_OUTPUT])
    mask = tf.make_ndarray(response.outputs[signatures.MASK_OUTPUT])
    assert np.isfinite(probabilities).all()
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    assert set(np.unique(mask)) <= {0, 1}


# --- request strings never become paths --------------------------------------------------------

HOSTILE_NAMES = ["../evil", "../../models/evil", "lv_segmentation/../evil", "evil", "a/b/evil",
                 "/tmp/evil", "..", "", f"{MODEL}/", f"{MODEL}/../{MODEL}"]
HOSTILE_VERSIONS = [2 ** 63 - 1, -1, 0]


@pytest.fixture
def path_spy(monkeypatch):
    """Records the path arguments of the file-system calls the server could make."""
    seen = []

    def spy(module, name):
        real = getattr(module, name)

        def recording(*args, **kwargs):
            seen.extend(str(a) for a in args if isinstance(a, (str, bytes, os.PathLike)))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, recording)

    for name in ("join", "exists", "isdir", "isfile"):
        spy(os.path, name)
    for name in ("stat", "lstat", "listdir", "scandir", "open"):
        spy(os, name)
    spy(builtins, "open")
    for name in ("exists", "isdir", "listdir", "glob", "stat", "GFile"):
        spy(tf.io.gfile, name)
    spy(tf.saved_model, "load")
    return seen


def _model_spec(message, name=MODEL, version=None, label=None):
    message.model_spec.name = name
    if version is not None:
        message.model_spec.version.value = version
    if label is not None:
        message.model_spec.version_label = label
    return message


def _all_rpcs(served, **spec):
    """Status code of Predict, GetModelMetadata and GetModelStatus for one model spec."""
    predict = _model_spec(_predict_request(_images(1)), **spec)
    metadata = _model_spec(get_model_metadata_pb2.GetModelMetadataRequest(
        metadata_field=["signature_def"]), **spec)
    status = _model_spec(get_model_status_pb2.GetModelStatusRequest(), **spec)
    codes = []
    for call, request in ((served["prediction"].Predict, predict),
                          (served["prediction"].GetModelMetadata, metadata),
                          (served["model"].GetModelStatus, status)):
        try:
            call(request, timeout=30)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    return codes


def test_model_names_versions_and_labels_are_looked_up_never_used_as_paths(served, path_spy):
    for name in HOSTILE_NAMES:
        assert _all_rpcs(served, name=name) == [grpc.StatusCode.NOT_FOUND] * 3, name
    for version in HOSTILE_VERSIONS + [served["version"] + 1]:
        assert _all_rpcs(served, version=version) == [grpc.StatusCode.NOT_FOUND] * 3, version
    for label in ("../evil", f"stable/../../{served['version']}", "stable\x00"):
        # Predict and GetModelMetadata refuse an unknown label; GetModelStatus ignores labels,
        # as TF Serving's get_model_status_impl.cc does
        assert _all_rpcs(served, label=label) == [grpc.StatusCode.INVALID_ARGUMENT] * 2 + [
            grpc.StatusCode.OK], label
    calls_before = len(path_spy)
    time.sleep(1.0)  # the server polls its base path every 0.2 s: the spies must see it
    assert any(served["base_path"] in path for path in path_spy[calls_before:]), \
        "the spies saw no file-system call at all"
    assert not [path for path in path_spy if "evil" in path or "a/b" in path]
    assert _all_rpcs(served) == [grpc.StatusCode.OK] * 3
