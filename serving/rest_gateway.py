"""TF Serving's REST API on the local server (``serve --rest-port``), over the same models.

    GET  /v1/models/{name}[/versions/{v}|/labels/{label}]             model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{label}]/metadata    signature_def metadata
    POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict     {"signature_name": ...,
         "inputs": {alias: nested lists}} -> {"outputs": ...}, or "instances" -> "predictions"

JSON as TF Serving writes it (binary strings as ``{"b64": ...}``); statuses map to HTTP codes as
TF Serving maps them, with ``{"error": message}`` bodies. Checks and calls are the gRPC
servicer's (:mod:`serving.inference`), so both answer alike.
"""
import base64
import http.server
import json
import logging
import re
import threading
from typing import Dict

import grpc
import numpy as np

from serving import inference
from serving.versions import ServingStatusError

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<action>/metadata|:predict)?$")
# TF Serving's status -> HTTP mapping (net_http's ToHTTPStatusCode).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
PAYLOAD_TOO_LARGE = 413
API_PREFIX = "/v1/"
BYTES_SUFFIX = "_bytes"  # string outputs whose alias ends so are written as {"b64": ...}


def proto_as_json(message) -> dict:
    """A proto as TF Serving's REST API prints it: proto field names, primitive fields always
    printed (``http_rest_api_util.cc``, ``ToJsonString``)."""
    from google.protobuf import json_format
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


def to_json_value(array: np.ndarray, alias: str = ""):
    """Nested lists, as ``json_tensor.cc`` writes a tensor: strings plain, or ``{"b64": ...}``
    when the output's alias ends in ``_bytes`` (``IsNamedTensorBytes``)."""
    if array.dtype == object or array.dtype.kind == "S":
        if alias.endswith(BYTES_SUFFIX):
            encode = lambda b: {"b64": base64.b64encode(b).decode("ascii")}  # noqa: E731
        else:
            encode = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []
    return array.tolist()


def to_json_input(array: np.ndarray):
    """An input tensor as a client sends it: binary strings as ``{"b64": ...}``."""
    if array.dtype == object or array.dtype.kind == "S":
        return to_json_value(array, BYTES_SUFFIX)
    return array.tolist()


def _decode_b64(item, alias: str) -> bytes:
    if set(item) != {"b64"} or not isinstance(item["b64"], str):
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"JSON Value: {json.dumps(item)} not formatted correctly for "
                                 "base64 data")
    try:
        return base64.b64decode(item["b64"], validate=True)
    except (ValueError, TypeError):
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 "Unable to base64 decode") from None


def from_json_value(value, numpy_dtype: np.dtype, alias: str) -> np.ndarray:
    """A JSON tensor in the signature's dtype; refuses values the dtype would silently change.
    ``{"b64": ...}`` is read for string inputs only, as ``json_tensor.cc`` does."""
    if numpy_dtype.kind == "O":
        def decode(item):
            if isinstance(item, dict):
                return _decode_b64(item, alias)
            if isinstance(item, str):
                return item.encode("utf-8")
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"input {alias!r}: expected strings or {{'b64': ...}}")
        array = np.asarray(value, dtype=object)
        return np.vectorize(decode, otypes=[object])(array) if array.size else array
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged lists
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"input {alias!r} is not a rectangular tensor") from exc
    if array.dtype == object or array.dtype.kind in "SU":
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"input {alias!r} is not a rectangular tensor of numbers")
    if np.dtype(numpy_dtype).kind in "iu" and array.dtype.kind == "f" and array.size and \
            not np.array_equal(array, np.rint(array)):
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"input {alias!r} must hold integers ({np.dtype(numpy_dtype)})")
    return array.astype(numpy_dtype)


def _instances_as_columns(instances, input_names) -> Dict[str, list]:
    """The row format (``"instances"``) as one list per input (``FillTensorMapFromInstancesList``):
    plain values for a signature of one input, else (or also) objects naming every input."""
    if not isinstance(instances, list):
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 "Expecting 'instances' to be an list/array")
    if not instances:
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 "No values in 'instances' array")
    named = [isinstance(item, dict) and set(item) != {"b64"} for item in instances]
    if not any(named):
        if len(input_names) != 1:
            raise ServingStatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map")
        return {input_names[0]: instances}
    columns: Dict[str, list] = {name: [] for name in input_names}
    for index, item in enumerate(instances):
        if not named[index]:
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"Expecting object but got list at item {index} of input "
                                     "list")
        if set(item) != set(input_names):
            unknown = sorted(set(item) - set(input_names))
            raise ServingStatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Failed to process element: {index} of 'instances' list. "
                + (f"JSON object: does not have named input: {unknown[0]}" if unknown else
                   f"JSON object: keys must be equal to: {','.join(sorted(input_names))}"))
        for name in input_names:
            columns[name].append(item[name])
    return columns


def _inputs_as_columns(inputs, input_names) -> Dict[str, object]:
    """The columnar format (``"inputs"``, ``FillTensorMapFromInputsMap``): a bare value for a
    signature of one input, else an object with every input (extra keys are ignored)."""
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        missing = [name for name in input_names if name not in inputs]
        if missing:
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"Missing named input: {missing[0]} in 'inputs' object.")
        return {name: inputs[name] for name in input_names}
    if len(input_names) != 1:
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 "'inputs' is a plain value/list, but expecting an object as "
                                 "multiple input tensors required as per tensorinfo_map")
    return {input_names[0]: inputs}


def predictions_json(outputs: Dict[str, np.ndarray], row_format: bool):
    """``{"predictions": ...}`` or ``{"outputs": ...}`` as ``MakeJsonFromTensors`` writes them: a
    single output bare, several as an object per row (or one object of columns)."""
    if not row_format:
        if len(outputs) == 1:
            [(alias, value)] = outputs.items()
            return {"outputs": to_json_value(value, alias)}
        return {"outputs": {alias: to_json_value(value, alias)
                            for alias, value in outputs.items()}}
    rows = len(next(iter(outputs.values())))
    if len(outputs) == 1:
        [(alias, value)] = outputs.items()
        return {"predictions": [to_json_value(value[i], alias) for i in range(rows)]}
    return {"predictions": [{alias: to_json_value(value[i], alias)
                             for alias, value in outputs.items()} for i in range(rows)]}


class RestGateway:
    """A threaded HTTP server answering TF Serving's REST API from the model managers."""

    def __init__(self, models, host: str, port: int, max_message_bytes: int):
        self._models = models
        self.max_message_bytes = max_message_bytes
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                gateway._handle(self, "GET")

            def do_POST(self):
                gateway._handle(self, "POST")

            def log_message(self, *args):  # requests are not logged, like the gRPC side
                pass

        self._http = http.server.ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="rest",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # --- requests ------------------------------------------------------------------------------

    def _handle(self, handler, method: str) -> None:
        try:
            status, body = 200, self._answer(handler, method)
        except Exception as exc:  # noqa: BLE001  (every failure becomes an HTTP status)
            code, message = inference.status_of_exception(exc)
            status = getattr(exc, "http_status", None) or HTTP_STATUS.get(code, 500)
            body = {"error": message}
        payload = json.dumps(body).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _answer(self, handler, method: str) -> dict:
        match = _PATH.match(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        if length > self.max_message_bytes:
            handler.rfile.read(length)  # drain it, so the connection stays usable
            error = ServingStatusError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request of {length} bytes is over the limit of "
                                       f"{self.max_message_bytes}")
            error.http_status = PAYLOAD_TOO_LARGE
            raise error
        body = handler.rfile.read(length) if length else b""
        if not match:  # TF Serving: a path under /v1/ it cannot read is a bad request (400);
            # anything else never reaches its handler (404)
            raise ServingStatusError(
                grpc.StatusCode.INVALID_ARGUMENT if handler.path.lower().startswith(API_PREFIX)
                else grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {handler.path}")
        manager = self._models.by_name.get(match["name"])
        if manager is None:
            raise ServingStatusError(grpc.StatusCode.NOT_FOUND,
                                     f"Servable not found for request: Latest({match['name']})")
        version = int(match["version"]) if match["version"] else None
        action = match["action"]
        if method == "GET" and action is None:
            return self._status(manager, version, match["label"])
        if method == "GET" and action == "/metadata":
            return self._metadata(manager, version, match["label"])
        if method == "POST" and action == ":predict":
            try:
                request = json.loads(body or b"{}")
            except ValueError as exc:
                raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                         f"JSON Parse error: {exc}") from exc
            return self._predict(manager, version, match["label"], request)
        raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"Malformed request: {method} {handler.path}")

    @staticmethod
    def _status(manager, version, label) -> dict:
        # TF Serving ignores the label here (get_model_status_impl.cc)
        return proto_as_json(inference.model_status(manager, version))

    @staticmethod
    def _metadata(manager, version, label) -> dict:
        """As ``http_rest_api_util.cc`` ``ToJsonString`` writes it: the model spec and the
        unpacked SignatureDefMap, each printed with proto field names and every primitive field
        (``"metadata": {"signature_def": {"signature_def": {...}}}``, no ``@type``)."""
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        with manager.acquire(version, label) as loaded:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in loaded.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            model_spec = model_pb2.ModelSpec(name=manager.model_name)
            model_spec.version.value = loaded.version
            return {"model_spec": proto_as_json(model_spec),
                    "metadata": {"signature_def": proto_as_json(signature_map)}}

    @staticmethod
    def _predict(manager, version, label, request: dict) -> dict:
        """``json_tensor.cc`` ``FillPredictRequestFromJson``, the signature run as over gRPC,
        ``MakeJsonFromTensors``."""
        import tensorflow as tf

        if not isinstance(request, dict):
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT, "Is not object")
        if "inputs" in request and "instances" in request:
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "Not formatted correctly expecting only one of 'inputs' "
                                     "or 'instances' keys to exist ")
        if "inputs" not in request and "instances" not in request:
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "Missing 'inputs' or 'instances' key")
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "'signature_name' key must be a string value.")
        row_format = "instances" in request
        with manager.acquire(version, label) as loaded:
            name = signature_name or inference.SERVER_DEFAULT_SIGNATURE
            if name not in loaded.signature_defs:
                raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                         f'Serving signature name: "{name}" not found in '
                                         "signature def")
            signature_def = loaded.signature_defs[name]
            input_names = sorted(signature_def.inputs)
            columns = (_instances_as_columns(request["instances"], input_names) if row_format
                       else _inputs_as_columns(request["inputs"], input_names))
            arrays: Dict[str, np.ndarray] = {}
            for alias, value in columns.items():
                dtype = tf.dtypes.as_dtype(signature_def.inputs[alias].dtype).as_numpy_dtype
                arrays[alias] = from_json_value(value, np.dtype(dtype), alias)
            inference.check_inputs(name, signature_def, {
                alias: (signature_def.inputs[alias].dtype, list(array.shape))
                for alias, array in arrays.items()})
            outputs = inference.run_signature(loaded, name, signature_def, arrays)
        return predictions_json(outputs, row_format)
