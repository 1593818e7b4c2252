"""TF Serving's REST API: the local server's gateway and the REST client, over a real socket."""
import json
import urllib.request

import numpy as np
import pytest

from components import atomic_pusher
from pipeline import configs
from serving import client, model_server, payloads, rest_client, versions
from trainer import signatures
from dataset import records

FITTING_BATCH = 2


@pytest.fixture(scope="module")
def server(sample_saved_model, tmp_path_factory):
    base_path = str(tmp_path_factory.mktemp("rest") / "serving" / configs.MODEL_NAME)
    version, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    manager = versions.ModelManager(configs.MODEL_NAME, base_path)
    started = model_server.LocalModelServer(
        [manager], host="127.0.0.1", rest_port=0,
        max_message_bytes=payloads.message_bytes_for(FITTING_BATCH)).start()
    started.version = version
    yield started
    started.stop(grace_s=1.0)


def _rest(server, **options):
    return rest_client.RestServingClient(server.rest_target, configs.MODEL_NAME, **options)


@pytest.mark.parametrize("signature", payloads.PREDICTION_SIGNATURES)
def test_rest_and_grpc_give_the_same_masks(server, sample_images, signature):
    with client.ServingClient(server.target, configs.MODEL_NAME) as grpc_client:
        expected_masks, expected_probabilities = grpc_client.predict(sample_images)
    with _rest(server, signature=signature) as rest:
        masks, probabilities = rest.predict(sample_images)
        assert rest.model_status() == [client.VersionStatus(server.version, "AVAILABLE")]
        metadata = rest.model_metadata()
    assert masks.dtype == np.int32 and probabilities.dtype == np.float32
    np.testing.assert_array_equal(masks, expected_masks)
    np.testing.assert_array_equal(probabilities, expected_probabilities)
    assert set(payloads.PREDICTION_SIGNATURES) <= set(metadata)
    assert signatures.IMAGE_INPUT in metadata[signatures.SERVING_RAW_IMAGE].inputs


def test_row_format_instances_give_predictions(server, sample_images):
    body = json.dumps({"signature_name": signatures.SERVING_RAW_IMAGE,
                       "instances": sample_images[:1].tolist()}).encode()
    url = f"http://{server.rest_target}/v1/models/{configs.MODEL_NAME}:predict"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
        predictions = json.loads(answer.read())["predictions"]
    assert len(predictions) == 1
    assert np.asarray(predictions[0][signatures.MASK_OUTPUT]).shape == records.IMAGE_SHAPE


def _error(call):
    with pytest.raises(client.ServingError) as caught:
        call()
    return caught.value


def test_bad_requests_get_their_status(server, sample_images):
    with _rest(server) as rest:
        assert isinstance(_error(lambda: rest.predict(np.zeros((1, 64, 64)))),
                          client.InvalidInputError)
        assert isinstance(_error(lambda: rest.predict_tensors(
            {signatures.IMAGE_INPUT: np.full((1,) + records.IMAGE_SHAPE, 0.5)})),
            client.InvalidInputError)  # 0.5 is no int64
        # JSON is larger than the tensors: enough copies to pass the limit as JSON
        one_image_json = len(json.dumps(sample_images[:1].tolist()))
        copies = payloads.message_bytes_for(FITTING_BATCH) // one_image_json + 1
        assert isinstance(_error(lambda: rest.predict(np.repeat(sample_images[:1], copies,
                                                                axis=0))),
                          client.RequestTooLargeError)
        assert rest.predict(sample_images)[0].shape == sample_images.shape  # still serving
    assert isinstance(_error(lambda: rest_client.RestServingClient(
        server.rest_target, "no_such_model").predict(sample_images)), client.ModelNotFoundError)
    assert isinstance(_error(lambda: _rest(server, version=server.version + 1).predict(
        sample_images)), client.ModelNotFoundError)


def test_nothing_listening_is_unavailable():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = _error(lambda: rest_client.RestServingClient(
        f"127.0.0.1:{port}", configs.MODEL_NAME, max_attempts=2, backoff_s=0.01).model_status())
    assert isinstance(error, client.ServerUnavailableError) and error.attempts == 2
