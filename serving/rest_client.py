"""REST client of TF Serving (port 8501) with the gRPC client's interface and errors.

    with RestServingClient("localhost:8501", "lv_segmentation") as client:
        masks, probabilities = client.predict(images)

For where gRPC is not an option (a proxy, a language without the stubs). JSON is larger and
slower than gRPC's tensors (a 256x256 slice is ~65,000 numbers each way), and TF Serving's REST
predict response does not say which version answered (``PredictResult.model_version`` is None
unless the client pins one). Standard library only (urllib).
"""
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving import config as serving_config
from serving.client import (DEFAULT_BACKOFF_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S,
                            ModelClient, error_from_status)
from serving.rest_gateway import PAYLOAD_TOO_LARGE, to_json_input
from serving.versions import VersionStatus

# HTTP status -> the gRPC status it stands for (TF Serving's mapping, reversed).
_GRPC_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
                429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
                503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


class RestServingClient(ModelClient):
    """Predict, status and metadata over ``http(s)://target/v1/models/...``."""

    def __init__(self, target: str, model_name: str, *, version: Optional[int] = None,
                 version_label: Optional[str] = None,
                 signature: str = serving_config.CLIENT_DEFAULT_SIGNATURE,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 backoff_s: float = DEFAULT_BACKOFF_S,
                 ssl_context: Optional[ssl.SSLContext] = None):
        super().__init__(target, model_name, version, version_label, signature, timeout_s,
                         max_attempts, backoff_s)
        self._ssl_context = ssl_context
        scheme = "https" if ssl_context else "http"
        self._model_url = f"{scheme}://{target}/v1/models/{model_name}"
        if version is not None:
            self._model_url += f"/versions/{version}"
        elif version_label:
            self._model_url += f"/labels/{version_label}"

    def predict_tensors(self, inputs: Mapping[str, np.ndarray],
                        signature_name: Optional[str] = None,
                        output_filter: Sequence[str] = (),
                        version: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], object]:
        """One ``:predict`` call (columnar ``inputs``); returns (outputs, model_spec)."""
        if output_filter:
            raise ValueError("TF Serving's REST API has no output filter")
        signature_name = signature_name or self.signature
        body = {"signature_name": signature_name,
                "inputs": {alias: to_json_input(np.asarray(value))
                           for alias, value in inputs.items()}}
        response = self._call("Predict", self._model_url + ":predict", body)
        outputs = response["outputs"]
        if not isinstance(outputs, dict):  # a signature with one output answers it bare
            outputs = {"outputs": outputs}
        model_spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature_name)
        if self.version is not None:
            model_spec.version.value = self.version
        return {alias: np.asarray(value) for alias, value in outputs.items()}, model_spec

    def model_status(self) -> List[VersionStatus]:
        response = self._call("GetModelStatus", self._model_url)
        return [VersionStatus(int(s["version"]), s["state"],
                              s.get("status", {}).get("error_message", ""))
                for s in response["model_version_status"]]

    def model_metadata(self) -> Dict[str, object]:
        """Signature name -> SignatureDef proto, as the gRPC client returns it."""
        from google.protobuf import json_format
        response = self._call("GetModelMetadata", self._model_url + "/metadata")
        signature_map = json_format.ParseDict(response["metadata"]["signature_def"],
                                              get_model_metadata_pb2.SignatureDefMap(),
                                              ignore_unknown_fields=True)
        return dict(signature_map.signature_def)

    def _call(self, rpc: str, url: str, body: Optional[dict] = None) -> dict:
        """GET or POST with a timeout; retries an unreachable or 503 server, nothing else."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s,
                                            context=self._ssl_context) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as err:
                code = _GRPC_STATUS.get(err.code, grpc.StatusCode.UNKNOWN)
                details = _error_message(err)
            except (socket.timeout, TimeoutError):
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            except urllib.error.URLError as err:
                if isinstance(err.reason, (socket.timeout, TimeoutError)):
                    code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
                else:
                    code, details = grpc.StatusCode.UNAVAILABLE, str(err.reason)
            except ConnectionError as err:  # reset or refused mid-way
                code, details = grpc.StatusCode.UNAVAILABLE, str(err)
            if code == grpc.StatusCode.UNAVAILABLE and attempt < self.max_attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                continue
            raise error_from_status(code, details, self.target, self.model_name, rpc,
                                    attempt) from None
        raise AssertionError("unreachable")


def _error_message(err: urllib.error.HTTPError) -> str:
    raw = err.read()
    try:
        return json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", errors="replace")[:500] or err.reason

