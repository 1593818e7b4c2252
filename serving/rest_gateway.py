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


def to_json_value(array: np.ndarray):
    """Nested lists; bytes as ``{"b64": ...}`` like TF Serving."""
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")},
                            otypes=[object])(array).tolist()
    return array.tolist()


def from_json_value(value, numpy_dtype: np.dtype, alias: str) -> np.ndarray:
    """A JSON tensor in the signature's dtype; refuses values the dtype would silently change."""
    if numpy_dtype.kind == "O":
        def decode(item):
            if isinstance(item, dict) and "b64" in item:
                return base64.b64decode(item["b64"])
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
        if not match:
            raise ServingStatusError(grpc.StatusCode.NOT_FOUND,
                                     f"Malformed request: {method} {handler.path}")
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
        raise ServingStatusError(grpc.StatusCode.NOT_FOUND,
                                 f"Malformed request: {method} {handler.path}")

    @staticmethod
    def _status(manager, version, label) -> dict:
        return {"model_version_status": [
            {"version": str(s.version), "state": s.state,
             "status": {"error_code": "UNKNOWN" if s.error else "OK",
                        "error_message": s.error}}
            for s in manager.statuses(version, label)]}

    @staticmethod
    def _metadata(manager, version, label) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        with manager.acquire(version, label) as loaded:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in loaded.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            return {"model_spec": {"name": manager.model_name, "signature_name": "",
                                   "version": str(loaded.version)},
                    "metadata": {"signature_def": json_format.MessageToDict(signature_map)}}

    @staticmethod
    def _predict(manager, version, label, request: dict) -> dict:
        import tensorflow as tf

        if not isinstance(request, dict) or ("inputs" in request) == ("instances" in request):
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "the request must have either 'inputs' or 'instances'")
        with manager.acquire(version, label) as loaded:
            name, signature_def = inference.find_signature(
                loaded, request.get("signature_name", ""))
            columns = request.get("inputs", request.get("instances"))
            if not isinstance(columns, dict):
                if len(signature_def.inputs) != 1:
                    raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                             "name the inputs: the signature has several")
                columns = {next(iter(signature_def.inputs)): columns}
            arrays: Dict[str, np.ndarray] = {}
            for alias, value in columns.items():
                info = signature_def.inputs.get(alias)
                dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype if info else np.float32
                arrays[alias] = from_json_value(value, np.dtype(dtype), alias)
            inference.check_inputs(name, signature_def, {
                alias: (signature_def.inputs[alias].dtype if alias in signature_def.inputs
                        else 0, list(array.shape)) for alias, array in arrays.items()})
            outputs = inference.run_signature(loaded, name, signature_def, arrays)
        if "inputs" in request:
            return {"outputs": {alias: to_json_value(value) for alias, value in outputs.items()}}
        rows = len(next(iter(outputs.values())))
        return {"predictions": [{alias: to_json_value(value[i]) for alias, value in
                                 outputs.items()} for i in range(rows)]}

