"""`lvseg serve` seen by a client written for TF Serving 2.16: only the stock
`tensorflow_serving.apis` stubs, grpc, `requests` and TensorFlow's tensor helpers, over real
127.0.0.1 sockets; no import of this project's client or server. The server runs as a process,
as users start it (`python -m lvseg serve`). Each test asserts what TF Serving 2.16.1 answers,
from its source (tensorflow/serving at tag 2.16.1, file named in the test).

The project's code builds the models served here (the sample model's exact signatures, a
string model), nothing else.
"""
import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.conftest import REPO_ROOT

MODEL = "lv_segmentation"
SIZE = 256
RAW = "serving_raw_image"
EXAMPLES = "serving_default"
STRINGS_VERSION = 3  # a tiny model with string outputs, beside the sample model's versions
ZERO_PADDED, PLAIN = "0005", "7"  # the sample model twice: versions 5 and 7
START_TIMEOUT_S = 240


# --- servers, as processes ---------------------------------------------------------------------


class ServeProcess:
    """`python -m lvseg serve ...` on free ports; its gRPC and REST addresses once it says."""

    def __init__(self, base_path, *options):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lvseg", "serve", "--model-base-path", str(base_path),
             "--host", "127.0.0.1", "--port", "0", "--rest-port", "0", *options],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = []
        ready = threading.Event()
        self.grpc_target = self.rest_url = None

        def read():
            for line in self.process.stdout:
                self.output.append(line)
                match = re.search(r"on 127\.0\.0\.1:(\d+) \(gRPC\), REST on 127\.0\.0\.1:(\d+)",
                                  line)
                if match:
                    self.grpc_target = f"127.0.0.1:{match[1]}"
                    self.rest_url = f"http://127.0.0.1:{match[2]}/v1/models/{MODEL}"
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or self.grpc_target is None:
            self.stop()
            raise RuntimeError("lvseg serve did not start:\n" + "".join(self.output[-30:]))
        self.channel = grpc.insecure_channel(self.grpc_target)  # gRPC's default limits
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def _copy_model(source, destination, variables=True):
    os.makedirs(destination)
    shutil.copy(os.path.join(source, "saved_model.pb"), destination)
    if variables:
        for name in ("variables", "assets"):
            if os.path.isdir(os.path.join(source, name)):
                shutil.copytree(os.path.join(source, name), os.path.join(destination, name))


def _strings_model(export_dir):
    """Two string outputs: ``text`` and ``text_bytes`` (TF Serving base64-wraps only the
    second in JSON)."""
    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            words = tf.fill(tf.shape(x), "é\x01")
            return {"text": words, "text_bytes": words}
    module = Strings()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


@pytest.fixture(scope="module")
def server(sample_saved_model, tmp_path_factory):
    """Versions 5 (folder ``0005``) and 7 of the sample model, the strings model as version 3,
    and a stray non-numeric folder; every version served (``--all-versions``)."""
    base = tmp_path_factory.mktemp("conformance") / MODEL
    for folder in (ZERO_PADDED, PLAIN):
        _copy_model(sample_saved_model, base / folder)
    _strings_model(str(base / str(STRINGS_VERSION)))
    (base / "²").mkdir()
    serve = ServeProcess(base, "--all-versions")
    yield serve
    serve.stop()


def _status(stub, version=None, label=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    return stub.GetModelStatus(request, timeout=30)


def _wait_for(condition, timeout_s=120, what="the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def _predict_request(images, signature=RAW, version=PLAIN, output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.model_spec.version.value = int(version)
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    request.output_filter.extend(output_filter)
    return request


def _images(count):
    rng = np.random.default_rng(0)
    return rng.integers(0, 1200, size=(count, SIZE, SIZE), dtype=np.int64)


# --- 1-2: Predict's encoding and size -----------------------------------------------------------


def test_predict_answers_values_in_the_typed_fields(server):
    """predict_util.cc PostProcessPredictionResult: ``AsProtoField`` under the default
    ``kAsProtoField`` (server_core.h); DT_FLOAT values in ``float_val``, DT_INT32 in
    ``int_val``, ``tensor_content`` empty, dtype and shape set."""
    response = server.prediction.Predict(_predict_request(_images(2)), timeout=60)
    probabilities, mask = response.outputs["probabilities"], response.outputs["mask"]
    assert probabilities.dtype == tf.float32.as_datatype_enum
    assert len(probabilities.float_val) == 2 * SIZE * SIZE and not probabilities.tensor_content
    assert mask.dtype == tf.int32.as_datatype_enum
    assert len(mask.int_val) == 2 * SIZE * SIZE and not mask.tensor_content
    assert [d.size for d in probabilities.tensor_shape.dim] == [2, SIZE, SIZE]
    assert set(np.unique(mask.int_val)) <= {0, 1}
    assert response.model_spec.version.value == int(PLAIN)
    assert response.model_spec.signature_name == RAW


def test_a_batch_of_eight_fits_a_default_grpc_client(server):
    """server.cc: ``SetMaxMessageSize(kint32max)`` on the server; a stock client keeps gRPC's
    4 MiB receive limit, which eight images' answer (field encoding, about 2.6 MB) fits."""
    response = server.prediction.Predict(_predict_request(_images(8)), timeout=120)
    assert tf.make_ndarray(response.outputs["mask"]).shape == (8, SIZE, SIZE)
    assert response.ByteSize() < 4 * 1024 * 1024


def test_a_request_over_the_old_39_mb_limit_is_served(server):
    """server.cc: requests up to 2 GiB - 1 (a client must raise its own send limit)."""
    channel = grpc.insecure_channel(server.grpc_target,
                                    options=[("grpc.max_send_message_length", -1),
                                             ("grpc.max_receive_message_length", -1)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _predict_request(_images(80), output_filter=["mask"])
    assert request.ByteSize() > 40 * 1000 * 1000
    response = stub.Predict(request, timeout=300)
    assert tf.make_ndarray(response.outputs["mask"]).shape == (80, SIZE, SIZE)


# --- 3-4: REST ----------------------------------------------------------------------------------


def test_rest_metadata_prints_proto_field_names_and_every_field(server):
    """http_rest_api_util.cc ToJsonString(GetModelMetadataResponse): ``preserve_proto_field_names``
    and ``always_print_primitive_fields``, the SignatureDefMap unpacked under
    ``metadata.signature_def`` (no ``@type``)."""
    answer = requests.get(f"{server.rest_url}/versions/{PLAIN}/metadata", timeout=60)
    assert answer.status_code == 200
    body = answer.json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": PLAIN}
    signature = body["metadata"]["signature_def"]["signature_def"][RAW]
    assert signature["method_name"] == "tensorflow/serving/predict"
    image = signature["inputs"]["image"]
    assert image["dtype"] == "DT_INT64"
    assert image["tensor_shape"]["unknown_rank"] is False
    assert image["tensor_shape"]["dim"][0] == {"size": "-1", "name": ""}
    assert "defaults" in signature and "@type" not in body["metadata"]["signature_def"]


def test_rest_status_prints_every_field(server):
    """http_rest_api_util.cc ToJsonString(GetModelStatusResponse); status_util.cc sets the code
    (OK too) and the message."""
    body = requests.get(f"{server.rest_url}/versions/{PLAIN}", timeout=60).json()
    assert body == {"model_version_status": [{"version": PLAIN, "state": "AVAILABLE",
                                              "status": {"error_code": "OK",
                                                         "error_message": ""}}]}


def test_rest_row_format_with_named_instances(server):
    """json_tensor.cc FillTensorMapFromInstancesList: a list of objects naming the inputs, for a
    signature of one input too; ``{"b64": ...}`` for a string input; predictions of several
    outputs as one object per row (MakeRowFormatJsonFromTensors)."""
    images = _images(2)
    examples = []
    for image in images:
        example = tf.train.Example()
        example.features.feature["image_raw"].bytes_list.value.append(
            image.astype("<i8").tobytes())
        examples.append({"b64": base64.b64encode(example.SerializeToString()).decode()})
    url = f"{server.rest_url}/versions/{PLAIN}:predict"
    by_examples = requests.post(url, json={
        "signature_name": EXAMPLES, "instances": [{"examples": e} for e in examples]}, timeout=120)
    by_pixels = requests.post(url, json={
        "signature_name": RAW, "instances": [{"image": image.tolist()} for image in images]},
        timeout=120)
    assert by_examples.status_code == 200, by_examples.text
    assert by_pixels.status_code == 200, by_pixels.text
    for answer in (by_examples, by_pixels):
        predictions = answer.json()["predictions"]
        assert len(predictions) == 2 and set(predictions[0]) == {"mask", "probabilities"}
    assert by_examples.json()["predictions"][1]["mask"] == by_pixels.json()["predictions"][1][
        "mask"]


def test_rest_string_outputs_are_base64_only_for_aliases_ending_in_bytes(server):
    """json_tensor.cc IsNamedTensorBytes: ``{"b64": ...}`` only for ``*_bytes`` aliases."""
    answer = requests.post(f"{server.rest_url}/versions/{STRINGS_VERSION}:predict",
                           json={"inputs": [1.0, 2.0]}, timeout=60)
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert outputs["text"] == ["é\x01", "é\x01"]
    assert outputs["text_bytes"] == [{"b64": base64.b64encode("é\x01".encode()).decode()}] * 2


@pytest.mark.parametrize("path, status", [
    ("/v1/models", 400), (f"/v1/models/{MODEL}/versions/x", 400),
    (f"/v1/models/{MODEL}:classify_nothing", 400), ("/v2/models", 404)])
def test_rest_malformed_paths(server, path, status):
    """http_rest_api_handler.cc ProcessRequest: a /v1/ path it cannot read is INVALID_ARGUMENT
    "Malformed request" (400, http_server.cc ToHTTPStatusCode); other paths never reach it
    (404, evhttp_server.cc)."""
    root = server.rest_url.split("/v1/")[0]
    answer = requests.get(root + path, timeout=30)
    assert answer.status_code == status


def test_rest_invalid_base64_is_refused(server):
    """json_tensor.cc JsonDecodeBase64Object: INVALID_ARGUMENT "Unable to base64 decode"."""
    answer = requests.post(f"{server.rest_url}/versions/{PLAIN}:predict", json={
        "signature_name": EXAMPLES, "instances": [{"examples": {"b64": "not base64!"}}]},
        timeout=60)
    assert answer.status_code == 400
    assert "Unable to base64 decode" in answer.json()["error"]


# --- 5-6: versions on disk ----------------------------------------------------------------------


def test_a_zero_padded_version_folder_is_served_and_a_stray_folder_ignored(server):
    """file_system_storage_path_source.cc ParseVersionNumber: ``safe_strto64`` on the folder's
    name (``0005`` is version 5, loaded from ``.../0005``); names that do not parse are
    skipped."""
    response = server.prediction.Predict(_predict_request(_images(1), version=ZERO_PADDED),
                                         timeout=60)
    assert response.model_spec.version.value == 5
    versions = [s.version for s in _status(server.models).model_version_status]
    assert 5 in versions and all(v in (STRINGS_VERSION, 5, int(PLAIN)) for v in versions)


def test_a_failed_load_is_retried_and_reports_its_error_code(sample_saved_model, tmp_path):
    """loader_harness.cc: a failed load is retried (``--max_num_load_retries``,
    ``--load_retry_interval_micros``, main.cc) with the state LOADING meanwhile; once the
    retries are spent it is END with the load error's own status (status_util.cc), not UNKNOWN.
    A version whose variables arrive after its saved_model.pb (a non-atomic copy) is served
    once they are there."""
    base = tmp_path / MODEL
    _copy_model(sample_saved_model, base / "9", variables=False)  # variables still to come
    _copy_model(sample_saved_model, base / "11", variables=False)  # never completed
    # 30 retries 0.5 s apart: version 9 has 15 s to get its variables, 11 gives up after that
    serve = ServeProcess(base, "--all-versions", "--max-load-retries", "30",
                         "--load-retry-seconds", "0.5")
    try:
        states = {s.version: s for s in _status(serve.models).model_version_status}
        LOADING, AVAILABLE, END = (get_model_status_pb2.ModelVersionStatus.State.Value(n)
                                   for n in ("LOADING", "AVAILABLE", "END"))
        assert states[9].state == LOADING and states[11].state == LOADING
        shutil.copytree(os.path.join(sample_saved_model, "variables"), base / "9" / "variables")
        _wait_for(lambda: {s.version: s.state for s in _status(serve.models)
                           .model_version_status} == {11: END, 9: AVAILABLE},
                  what="version 9 available and 11 given up")
        failed = next(s for s in _status(serve.models).model_version_status if s.version == 11)
        assert failed.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert failed.status.error_message
        response = serve.prediction.Predict(_predict_request(_images(1), version=9), timeout=60)
        assert response.model_spec.version.value == 9
    finally:
        serve.stop()


# --- 7-9: requests ------------------------------------------------------------------------------


def test_an_empty_batch_answers_empty_outputs(server):
    """predict_util.cc RunPredict checks no batch size; the graph runs on 0 images."""
    response = server.prediction.Predict(_predict_request(np.zeros((0, SIZE, SIZE), np.int64)),
                                         timeout=60)
    for alias in ("mask", "probabilities"):
        assert tf.make_ndarray(response.outputs[alias]).shape == (0, SIZE, SIZE)


def test_model_status_lists_versions_newest_first_and_ignores_the_label(server):
    """get_model_status_impl.cc: versions from ServableStateMonitor's map, ordered by
    ``std::greater`` (servable_state_monitor.h); only ``has_version()`` is read, so a label
    (known or not) lists every version."""
    versions = [s.version for s in _status(server.models).model_version_status]
    assert versions == sorted(versions, reverse=True) == [int(PLAIN), 5, STRINGS_VERSION]
    labelled = [s.version for s in _status(server.models, label="no-such-label")
                .model_version_status]
    assert labelled == versions


def test_duplicate_output_filter_aliases_are_refused(server):
    """predict_util.cc PreProcessPrediction: INVALID_ARGUMENT "duplicate output tensor alias"."""
    with pytest.raises(grpc.RpcError) as error:
        server.prediction.Predict(_predict_request(_images(1), output_filter=["mask", "mask"]),
                                  timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate output tensor alias: mask" in error.value.details()


def test_model_metadata_over_grpc(server):
    """get_model_metadata_impl.cc: the SignatureDefMap packed under ``signature_def``."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL), metadata_field=["signature_def"])
    response = server.prediction.GetModelMetadata(request, timeout=60)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert {RAW, EXAMPLES} <= set(signature_map.signature_def)
    assert response.model_spec.version.value == int(PLAIN)  # the latest


def test_sigterm_ends_the_server_at_once(sample_saved_model, tmp_path):
    """main.cc installs no signal handler: SIGTERM's default action ends the process."""
    base = tmp_path / MODEL
    _copy_model(sample_saved_model, base / "1")
    serve = ServeProcess(base)
    started = time.monotonic()
    serve.process.send_signal(signal.SIGTERM)
    code = serve.process.wait(30)
    assert time.monotonic() - started < 5
    assert code == -signal.SIGTERM
