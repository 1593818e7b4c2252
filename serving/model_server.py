"""The local stand-in for ``tensorflow_model_server``: TF Serving's gRPC API over this project's
SavedModels, for debugging and tests on machines where the real binary cannot be installed.

Production serves the pushed models with the official ``tensorflow/serving`` image (see
``serving/deploy/``); this server answers the same RPCs on a real port, so clients, the predict
CLI and the pipeline's servable check talk to either alike:

- ``PredictionService.Predict`` and ``GetModelMetadata`` (``signature_def``), and
  ``ModelService.GetModelStatus``; the other RPCs answer UNIMPLEMENTED.
- Versions: :mod:`serving.versions` (latest by default, polling, reload without failing
  requests in flight).
- TF Serving's REST API too, on request (``rest_port``, :mod:`serving.rest_gateway`).
- Status codes as TF Serving's: unknown model or version NOT_FOUND, unknown label or bad input
  INVALID_ARGUMENT (inputs are checked against the SignatureDef's names, dtypes and shapes before
  the model runs), unknown signature FAILED_PRECONDITION, a message over the size limit
  RESOURCE_EXHAUSTED (gRPC's own check), and so is a small message declaring a tensor that
  would be larger than that limit once decoded (a shape with one repeated value). Empty batches,
  negative or unknown dimensions and bytes that are not the RPC's protobuf are INVALID_ARGUMENT.
  No request can stop the server.
- Model names, versions and labels from requests are looked up in tables, never joined into
  paths: the file system is read only under each model's configured base path.
- Request logging, on request (``request_log``, :mod:`monitoring.request_log`): a sample of the
  successful Predict calls is written as TF Serving ``PredictionLog`` TFRecords, bounded in size;
  logging never fails or holds up a request.
"""
import functools
import logging
import os
import signal
import threading
from concurrent import futures
from typing import Optional, Sequence, Tuple

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import inference, rest_gateway
from serving.config import DEFAULT_GRACE_S, DEFAULT_WORKERS, TF_SERVING_MAX_MESSAGE_BYTES
from serving.inference import (check_decoded_size, check_inputs, find_signature, run_signature,
                               status_of_exception)
from serving.versions import ModelManager, ServingStatusError

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving knows


# --- gRPC servicers ----------------------------------------------------------------------------


class MalformedRequest:
    """What a request that is not its RPC's protobuf parses to (see :class:`_LenientParsing`)."""

    def __init__(self, error: Exception):
        self.error = error


def _parse_or_malformed(parse, data: bytes):
    try:
        return parse(data)
    except Exception as exc:  # noqa: BLE001  (protobuf's DecodeError, or anything else)
        return MalformedRequest(exc)


class _LenientParsing(grpc.GenericRpcHandler):
    """Wraps generated handlers so that bytes which are not the RPC's protobuf reach the servicer
    as :class:`MalformedRequest`, answered INVALID_ARGUMENT, instead of gRPC's INTERNAL
    "Exception deserializing request!" with a traceback logged for every such request."""

    def __init__(self, handler: grpc.GenericRpcHandler):
        self._handler = handler

    def service(self, handler_call_details):
        method = self._handler.service(handler_call_details)
        if method is None or method.request_deserializer is None:
            return method
        return method._replace(request_deserializer=functools.partial(
            _parse_or_malformed, method.request_deserializer))


class _LenientServer:
    """What the generated ``add_*Servicer_to_server`` functions see instead of the server."""

    def __init__(self, server: grpc.Server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_LenientParsing(h) for h in handlers))


def _answers_with_status(method):
    """Turns any exception of an RPC into its gRPC status, so no request can end the server."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            if isinstance(request, MalformedRequest):
                raise ServingStatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {method.__name__} request protobuf: "
                    f"{type(request.error).__name__}: {request.error}")
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001  (every failure becomes a status)
            code, message = status_of_exception(exc)
        context.abort(code, message)
    return wrapper


class _Models:
    """Model name -> manager; names are looked up, never used as paths."""

    def __init__(self, managers: Sequence[ModelManager]):
        self.by_name = {manager.model_name: manager for manager in managers}

    def get(self, model_spec) -> ModelManager:
        manager = self.by_name.get(model_spec.name)
        if manager is None:
            raise ServingStatusError(grpc.StatusCode.NOT_FOUND,
                                     f"Servable not found for request: Latest({model_spec.name})")
        return manager


def _requested_version(model_spec) -> Tuple[Optional[int], Optional[str]]:
    which = model_spec.WhichOneof("version_choice")
    if which == "version":
        return model_spec.version.value, None
    if which == "version_label":
        return None, model_spec.version_label
    return None, None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` and ``GetModelMetadata`` as TF Serving answers them."""

    def __init__(self, models: _Models,
                 max_tensor_bytes: int = TF_SERVING_MAX_MESSAGE_BYTES,
                 request_log=None, response_encoding: str = inference.AS_PROTO_FIELD):
        self._models = models
        self._max_tensor_bytes = max_tensor_bytes
        self._request_log = request_log  # a monitoring.request_log.RequestLogger, or None
        self._response_encoding = response_encoding

    @_answers_with_status
    def Predict(self, request, context):
        import tensorflow as tf

        manager = self._models.get(request.model_spec)
        with manager.acquire(*_requested_version(request.model_spec)) as loaded:
            name, signature_def = find_signature(loaded, request.model_spec.signature_name)
            check_inputs(name, signature_def, {
                alias: (proto.dtype, [d.size for d in proto.tensor_shape.dim])
                for alias, proto in request.inputs.items()})
            inputs = {}
            for alias, proto in request.inputs.items():
                check_decoded_size(alias, proto, self._max_tensor_bytes)
                try:
                    inputs[alias] = tf.make_ndarray(proto)
                except Exception as exc:  # content that does not fit the declared shape, ...
                    raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                             f"tensor parsing error: {alias}: {exc}") from exc
            outputs = run_signature(loaded, name, signature_def, inputs,
                                    list(request.output_filter))
            response = predict_pb2.PredictResponse()
            _fill_model_spec(response.model_spec, manager.model_name, loaded.version, name)
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(
                    inference.tensor_proto(value, self._response_encoding))
            if self._request_log is not None:  # only answered requests; never raises
                self._request_log.log(request, response, model_name=manager.model_name,
                                      version=loaded.version, signature_name=name,
                                      outputs=outputs)
            return response

    @_answers_with_status
    def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if not fields:
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "GetModelMetadataRequest must specify at least one "
                                     "metadata_field")
        unsupported = [field for field in fields if field != SIGNATURE_DEF_FIELD]
        if unsupported:
            raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"Metadata field {unsupported[0]} is not supported")
        manager = self._models.get(request.model_spec)
        with manager.acquire(*_requested_version(request.model_spec)) as loaded:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in loaded.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_model_spec(response.model_spec, manager.model_name, loaded.version)
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``GetModelStatus``; ``HandleReloadConfigRequest`` stays UNIMPLEMENTED."""

    def __init__(self, models: _Models):
        self._models = models

    @_answers_with_status
    def GetModelStatus(self, request, context):
        manager = self._models.get(request.model_spec)
        version, _ = _requested_version(request.model_spec)  # a label is ignored, as in TF Serving
        return inference.model_status(manager, version)


def _fill_model_spec(model_spec, name: str, version: int, signature_name: str = "") -> None:
    model_spec.name = name
    model_spec.version.value = version
    if signature_name:
        model_spec.signature_name = signature_name


# --- the server --------------------------------------------------------------------------------


class LocalModelServer:
    """gRPC server over one or more :class:`ModelManager` s; a context manager.

    ``port=0`` picks a free port (see :attr:`port` after :meth:`start`). ``rest_port`` adds TF
    Serving's REST API (:mod:`serving.rest_gateway`; 0 picks a port, None: no REST).
    ``request_log``: a :class:`monitoring.request_log.RequestLogger` that gRPC Predict calls are
    logged to; the server closes it when it stops. ``max_message_bytes``: TF Serving's 2 GiB - 1
    by default; a lower limit also bounds what a request's tensors may decode to.
    ``response_encoding``: TF Serving's typed fields (``float_val``, ``int_val``) by default, or
    ``tensor_content``.
    """

    def __init__(self, managers: Sequence[ModelManager], port: int = 0, host: str = "0.0.0.0",
                 max_workers: int = DEFAULT_WORKERS,
                 max_message_bytes: int = TF_SERVING_MAX_MESSAGE_BYTES,
                 server_credentials: Optional[grpc.ServerCredentials] = None,
                 rest_port: Optional[int] = None, request_log=None,
                 response_encoding: str = inference.AS_PROTO_FIELD):
        if response_encoding not in inference.RESPONSE_ENCODINGS:
            raise ValueError(f"response encoding must be one of {inference.RESPONSE_ENCODINGS}")
        self.response_encoding = response_encoding
        self.managers = list(managers)
        self.request_log = request_log
        self.host = host
        self.requested_port = port
        self.requested_rest_port = rest_port
        self.rest_port: Optional[int] = None
        self._rest = None
        self.max_workers = max_workers
        self.max_message_bytes = max_message_bytes
        self.server_credentials = server_credentials
        self.port: Optional[int] = None
        self._server: Optional[grpc.Server] = None

    @property
    def target(self) -> str:
        return f"{self._client_host}:{self.port}"

    @property
    def rest_target(self) -> str:
        return f"{self._client_host}:{self.rest_port}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "[::]") else self.host

    def start(self) -> "LocalModelServer":
        for manager in self.managers:
            manager.start()
        models = _Models(self.managers)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers,
                                       thread_name_prefix="predict"),
            options=[("grpc.max_receive_message_length", self.max_message_bytes),
                     ("grpc.max_send_message_length", self.max_message_bytes),
                     ("grpc.so_reuseport", 0)])  # a taken port is an error, not shared
        lenient = _LenientServer(server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(models, self.max_message_bytes, self.request_log,
                               self.response_encoding), lenient)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(models), lenient)
        address = f"{self.host}:{self.requested_port}"
        if self.server_credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, self.server_credentials)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        log.info("serving %s over gRPC on %s:%d", ", ".join(
            f"{m.model_name} ({m.base_path}, versions: {m.policy.describe()})"
            for m in self.managers), self.host, self.port)
        if self.requested_rest_port is not None:
            self._rest = rest_gateway.RestGateway(models, self.host, self.requested_rest_port,
                                                  self.max_message_bytes)
            self._rest.start()
            self.rest_port = self._rest.port
            log.info("REST API on %s:%d", self.host, self.rest_port)
        return self

    def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Stops taking requests, lets those in flight finish for up to ``grace_s``."""
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self.request_log is not None:  # after the requests in flight: they may log
            self.request_log.close()
        for manager in self.managers:
            manager.stop()
            manager.unload_all()
        log.info("server stopped")

    def __enter__(self) -> "LocalModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve_until_terminated(server: LocalModelServer, grace_s: float = DEFAULT_GRACE_S) -> None:
    """Runs a started server until SIGTERM or SIGINT.

    ``grace_s`` 0 (the default): the process ends at once, by the signal, as TF Serving's does
    (it installs no handler); only the request log is flushed first, so no logged request is
    lost. Above 0: new requests are refused and those in flight finish, for up to ``grace_s``.
    """
    stop = threading.Event()
    received = []

    def request_stop(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if grace_s <= 0 and received:
            if server.request_log is not None:
                server.request_log.close()
            log.info("received %s: exiting now", signal.Signals(received[0]).name)
            signal.signal(received[0], signal.SIG_DFL)
            os.kill(os.getpid(), received[0])  # ends the process as the signal would have
        log.info("%sshutting down (grace %.0f s)",
                 f"received {signal.Signals(received[0]).name}: " if received else "", grace_s)
        server.stop(grace_s)
