"""The client's transport rules over a real socket: retries on UNAVAILABLE only, deadlines, TLS.

A scripted PredictionService stands in for the model server, so each status happens on cue.
"""
import datetime
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import client

MODEL = "lv_segmentation"


class ScriptedService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Fails the first calls with the given statuses, then answers an empty response."""

    def __init__(self, failures=(), delay_s=0.0):
        self.failures = list(failures)
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def Predict(self, request, context):
        with self._lock:
            self.calls += 1
            failure = self.failures.pop(0) if self.failures else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if failure is not None:
            context.abort(failure, f"scripted {failure.name}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        return response


def _serve(service, credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, port


@pytest.fixture
def scripted():
    servers = []

    def start(service, credentials=None):
        server, port = _serve(service, credentials)
        servers.append(server)
        return port
    yield start
    for server in servers:
        server.stop(0)


def _call(port, host="127.0.0.1", **options):
    with client.ServingClient(f"{host}:{port}", MODEL, backoff_s=0.01, **options) as serving:
        return serving.predict_tensors({"image": np.zeros((1, 2), np.int64)})


def test_unavailable_is_retried_until_an_answer(scripted):
    service = ScriptedService([grpc.StatusCode.UNAVAILABLE] * 2)
    _call(scripted(service), max_attempts=3)
    assert service.calls == 3


def test_retries_are_bounded(scripted):
    service = ScriptedService([grpc.StatusCode.UNAVAILABLE] * 5)
    with pytest.raises(client.ServerUnavailableError, match="after 2 attempts"):
        _call(scripted(service), max_attempts=2)
    assert service.calls == 2


@pytest.mark.parametrize("status", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.INTERNAL])
def test_other_statuses_are_not_retried(scripted, status):
    service = ScriptedService([status])
    with pytest.raises(client.ServingError) as caught:
        _call(scripted(service), max_attempts=3)
    assert caught.value.code == status and service.calls == 1


def test_a_slow_answer_is_deadline_exceeded(scripted):
    service = ScriptedService(delay_s=2.0)
    with pytest.raises(client.DeadlineExceededError, match="DEADLINE_EXCEEDED"):
        _call(scripted(service), timeout_s=0.2, max_attempts=3)
    assert service.calls == 1  # a deadline is not retried


def test_nothing_listening_is_unavailable_naming_the_target():
    with pytest.raises(client.ServerUnavailableError) as caught:
        _call(_unused_port(), max_attempts=2, timeout_s=5)
    assert "127.0.0.1:" in str(caught.value) and MODEL in str(caught.value)


def _unused_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _self_signed_certificate(tmp_path):
    """A localhost certificate and key, PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_tls_channel_credentials(scripted, tmp_path):
    cert_file, key_file = _self_signed_certificate(tmp_path)
    with open(key_file, "rb") as key, open(cert_file, "rb") as cert:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    port = scripted(ScriptedService(), credentials)
    _, model_spec = _call(port, host="localhost",
                          credentials=client.tls_credentials(ca_file=cert_file))
    assert model_spec.name == MODEL
    with pytest.raises(client.ServerUnavailableError):  # plaintext to a TLS port fails
        _call(port, host="localhost", max_attempts=1, timeout_s=5)
