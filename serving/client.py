"""gRPC client of TF Serving's API for the LV segmentation model.

Works the same against the official ``tensorflow/serving`` image and the local stand-in
(``serving.model_server``)::

    with ServingClient("localhost:8500", "lv_segmentation") as client:
        masks, probabilities = client.predict(images)      # [256, 256] or [N, 256, 256]
        client.model_status()                              # [VersionStatus(version, state)]

Every call has a deadline; UNAVAILABLE (server starting, restarting, a dropped connection) is
retried a bounded number of times with exponential backoff, nothing else is (a bad input stays
bad). gRPC failures become :class:`ServingError` subclasses whose message names the target,
the model and the status.
"""
import dataclasses
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import config as serving_config
from serving import inference, payloads
from serving.versions import VersionStatus

from serving.config import DEFAULT_TIMEOUT_S  # noqa: E402
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 0.25
SIGNATURE_DEF_FIELD = "signature_def"


class ServingError(Exception):
    """A failed call; ``code`` is the gRPC status, the message names target, model and status."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str, model: str,
                 rpc: str, attempts: int = 1):
        self.code = code
        self.details = details
        self.target = target
        self.model = model
        self.rpc = rpc
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{rpc} to {target} for model {model!r} failed{tries}: "
                         f"{code.name}: {details}")


class ModelNotFoundError(ServingError):
    """NOT_FOUND: no such model, or no such version loaded (yet)."""


class InvalidInputError(ServingError):
    """INVALID_ARGUMENT: the inputs do not fit the signature (or an unknown version label)."""


class DeadlineExceededError(ServingError):
    """DEADLINE_EXCEEDED: no answer within the call's timeout."""


class ServerUnavailableError(ServingError):
    """UNAVAILABLE: nothing answers at the target (after the retries)."""


class RequestTooLargeError(ServingError):
    """RESOURCE_EXHAUSTED: the message is over the server's (or this client's) size limit."""


_ERROR_CLASSES = {
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RequestTooLargeError,
}


def error_from_status(code: grpc.StatusCode, details: str, target: str, model: str, rpc: str,
                      attempts: int = 1) -> ServingError:
    return _ERROR_CLASSES.get(code, ServingError)(code, details, target, model, rpc, attempts)


@dataclasses.dataclass(frozen=True)
class PredictResult:
    masks: np.ndarray  # int32, [256, 256] for one image, [N, 256, 256] for a batch; 1 = LV
    probabilities: np.ndarray  # float32 LV probability, same shape
    model_version: Optional[int]  # the version that answered (None: REST does not say)
    signature_name: str


def tls_credentials(ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                    key_file: Optional[str] = None) -> grpc.ChannelCredentials:
    """TLS channel credentials: a CA bundle (None: the system's), and a client cert for mTLS."""
    def read(path):
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()
    return grpc.ssl_channel_credentials(root_certificates=read(ca_file),
                                        private_key=read(key_file),
                                        certificate_chain=read(cert_file))


class ModelClient:
    """What both clients offer in the model's terms, over their ``predict_tensors`` and
    ``model_status`` (gRPC here, REST in :mod:`serving.rest_client`)."""

    def __init__(self, target: str, model_name: str, version: Optional[int],
                 version_label: Optional[str], signature: str, timeout_s: float,
                 max_attempts: int, backoff_s: float):
        if version is not None and version_label:
            raise ValueError("give a version or a version label, not both")
        if signature not in payloads.PREDICTION_SIGNATURES:
            raise ValueError(f"signature must be one of {payloads.PREDICTION_SIGNATURES}, "
                             f"got {signature!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.target = target
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.signature = signature
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s

    # Images per Predict call (None: the whole batch in one).
    max_images_per_request: Optional[int] = None

    def predict_tensors(self, inputs: Mapping[str, np.ndarray],
                        signature_name: Optional[str] = None,
                        output_filter: Sequence[str] = (),
                        version: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], object]:
        raise NotImplementedError

    def model_status(self) -> List[VersionStatus]:
        raise NotImplementedError

    def predict_result(self, images) -> PredictResult:
        """Masks and probabilities of one image ``[256, 256]`` or a batch, and who answered.

        A batch larger than ``max_images_per_request`` goes in several calls, the later ones
        pinned to the version that answered the first, so one model answers the whole batch."""
        batch, single = payloads.as_image_batch(images)
        step = self.max_images_per_request or max(len(batch), 1)
        masks, probabilities, version, signature = [], [], None, self.signature
        for start in range(0, max(len(batch), 1), step):
            outputs, model_spec = self.predict_tensors(
                payloads.signature_inputs(batch[start:start + step], self.signature),
                self.signature, version=version)
            chunk_masks, chunk_probabilities = payloads.masks_and_probabilities(outputs, False)
            masks.append(chunk_masks)
            probabilities.append(chunk_probabilities)
            if model_spec.HasField("version"):
                version = model_spec.version.value
            signature = model_spec.signature_name or signature
        masks, probabilities = np.concatenate(masks), np.concatenate(probabilities)
        if single:
            masks, probabilities = masks[0], probabilities[0]
        return PredictResult(masks, probabilities, version, signature)

    def predict(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """``(masks, probabilities)`` of one image ``[256, 256]`` or a batch ``[N, 256, 256]``."""
        result = self.predict_result(images)
        return result.masks, result.probabilities

    def wait_until_available(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> int:
        """Waits for an AVAILABLE version (a server that is still loading); returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                available = [s.version for s in self.model_status() if s.state == "AVAILABLE"]
                if available:
                    return max(available)
                last = "no version AVAILABLE yet"
            except (ModelNotFoundError, ServerUnavailableError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.target}: model {self.model_name!r} not available "
                                   f"after {timeout_s:.0f} s ({last})")
            time.sleep(poll_s)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ServingClient(ModelClient):
    """Predict, model status and metadata of one model at ``target`` (``host:port``), gRPC.

    ``version`` or ``version_label`` pins a version (default: the latest the server has);
    ``signature`` is ``serving_raw_image`` (pixels) or ``serving_default`` (tf.Examples).
    """

    def __init__(self, target: str, model_name: str, *, version: Optional[int] = None,
                 version_label: Optional[str] = None,
                 signature: str = serving_config.CLIENT_DEFAULT_SIGNATURE,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 backoff_s: float = DEFAULT_BACKOFF_S,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 max_message_bytes: Optional[int] = None):
        super().__init__(target, model_name, version, version_label, signature, timeout_s,
                         max_attempts, backoff_s)
        # gRPC's default limits unless told otherwise; batches are split to fit them.
        receive_limit = max_message_bytes or serving_config.GRPC_CLIENT_DEFAULT_MAX_RECEIVE_BYTES
        self.max_images_per_request = serving_config.images_per_response(receive_limit)
        options = ([("grpc.max_send_message_length", max_message_bytes),
                    ("grpc.max_receive_message_length", max_message_bytes)]
                   if max_message_bytes else [])
        self._channel = (grpc.secure_channel(target, credentials, options) if credentials
                         else grpc.insecure_channel(target, options))
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # --- the protocol, in one place ----------------------------------------------------------

    def _model_spec(self, model_spec, signature_name: str = "",
                    version: Optional[int] = None) -> None:
        model_spec.name = self.model_name
        if signature_name:
            model_spec.signature_name = signature_name
        if version is not None or self.version is not None:
            model_spec.version.value = version if version is not None else self.version
        elif self.version_label:
            model_spec.version_label = self.version_label

    def predict_tensors(self, inputs: Mapping[str, np.ndarray],
                        signature_name: Optional[str] = None,
                        output_filter: Sequence[str] = (),
                        version: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], object]:
        """One Predict call with the given input tensors; returns (outputs, response model_spec).

        The lowest level: no conversion of the inputs, so any tensor can be sent. Outputs are
        decoded whichever encoding the server chose (TF Serving's typed fields such as
        ``float_val``, or ``tensor_content``): ``serving.inference.ndarray``, which is
        ``tf.make_ndarray`` reading packed fields from their wire bytes.
        """
        import tensorflow as tf

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name or self.signature, version)
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        response = self._call("Predict", self._prediction.Predict, request)
        outputs = {alias: inference.ndarray(proto) for alias, proto in response.outputs.items()}
        return outputs, response.model_spec

    def model_status(self) -> List[VersionStatus]:
        """The versions the server knows of this model, with their states (AVAILABLE, ...)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call("GetModelStatus", self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [VersionStatus(int(s.version), states.Name(s.state), s.status.error_message)
                for s in response.model_version_status]

    def model_metadata(self) -> Dict[str, object]:
        """Signature name -> SignatureDef (inputs, outputs, dtypes, shapes) of the served model."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append(SIGNATURE_DEF_FIELD)
        response = self._call("GetModelMetadata", self._prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def _call(self, rpc: str, method, request):
        """Calls with a deadline; retries UNAVAILABLE only, with exponential backoff."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.max_attempts:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise error_from_status(err.code(), err.details() or "", self.target,
                                        self.model_name, rpc, attempt) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._channel.close()
