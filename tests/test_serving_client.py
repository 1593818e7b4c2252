"""The gRPC client against a real server on 127.0.0.1: the local stand-in always, the real
``tensorflow_model_server`` too when it is on PATH (same tests, see ``server_kind``).

Every bad input is sent for real and must come back with its status, and the server must go on
answering afterwards.
"""
import dataclasses

import grpc
import numpy as np
import pytest
import tensorflow as tf

from components import atomic_pusher
from pipeline import configs
from serving import client, payloads
from trainer import signatures
from dataset import records

# The local server's message limit in this module: a batch of 4 fits, a batch of 8 does not.
FITTING_BATCH = 4


@dataclasses.dataclass
class Served:
    target: str
    version: int
    kind: str


@pytest.fixture(scope="module")
def served(server_kind, sample_saved_model, tmp_path_factory, start_model_server):
    base_path = str(tmp_path_factory.mktemp("served") / "serving" / configs.MODEL_NAME)
    version, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    target = start_model_server(server_kind, base_path, version_labels={"stable": version},
                                max_message_bytes=payloads.message_bytes_for(FITTING_BATCH))
    return Served(target, version, server_kind)


@pytest.fixture(scope="module")
def in_process(sample_saved_model):
    return tf.saved_model.load(sample_saved_model)


def _client(served, **options):
    return client.ServingClient(served.target, configs.MODEL_NAME, **options)


def _local_only(served, why):
    if served.kind != "local":
        pytest.skip(f"{why} (a setting of the local server in this test)")


def test_status_reports_the_pushed_version_available(served):
    with _client(served) as serving:
        assert serving.model_status() == [client.VersionStatus(served.version, "AVAILABLE")]


def test_metadata_describes_both_prediction_signatures(served):
    with _client(served) as serving:
        metadata = serving.model_metadata()
    raw = metadata[signatures.SERVING_RAW_IMAGE]
    image = raw.inputs[signatures.IMAGE_INPUT]
    assert image.dtype == tf.int64.as_datatype_enum
    assert [d.size for d in image.tensor_shape.dim] == [-1, records.IMAGE_SIZE, records.IMAGE_SIZE]
    assert set(raw.outputs) == {signatures.MASK_OUTPUT, signatures.PROBABILITIES_OUTPUT}
    examples = metadata[signatures.SERVING_DEFAULT].inputs[signatures.EXAMPLES_INPUT]
    assert examples.dtype == tf.string.as_datatype_enum


@pytest.mark.parametrize("signature", payloads.PREDICTION_SIGNATURES)
def test_mask_from_the_server_equals_the_in_process_mask(served, in_process, sample_images,
                                                         signature):
    with _client(served, signature=signature) as serving:
        result = serving.predict_result(sample_images)
    inputs = payloads.signature_inputs(sample_images, signature)
    expected = in_process.signatures[signature](
        **{alias: tf.constant(value) for alias, value in inputs.items()})
    assert result.masks.dtype == np.int32 and result.probabilities.dtype == np.float32
    assert result.masks.shape == (len(sample_images),) + records.IMAGE_SHAPE
    np.testing.assert_array_equal(result.masks, expected[signatures.MASK_OUTPUT].numpy())
    np.testing.assert_allclose(result.probabilities,
                               expected[signatures.PROBABILITIES_OUTPUT].numpy(), atol=1e-6)
    assert (result.model_version, result.signature_name) == (served.version, signature)


def test_one_image_in_gives_one_mask_out(served, sample_images):
    with _client(served) as serving:
        masks, probabilities = serving.predict(sample_images[0])
        batch_masks, _ = serving.predict(sample_images)
    assert masks.shape == probabilities.shape == records.IMAGE_SHAPE
    np.testing.assert_array_equal(masks, batch_masks[0])


def test_version_and_label_pin_the_version(served, sample_images):
    with _client(served, version=served.version) as serving:
        assert serving.predict_result(sample_images[0]).model_version == served.version
    _local_only(served, "version labels come from a model config file for the real server")
    with _client(served, version_label="stable") as serving:
        assert serving.predict_result(sample_images[0]).model_version == served.version


def _status_of(call):
    with pytest.raises(client.ServingError) as caught:
        call()
    return caught.value


def test_unknown_model_is_not_found_and_the_error_names_target_model_status(served, sample_images):
    error = _status_of(lambda: client.ServingClient(served.target, "no_such_model").predict(
        sample_images[0]))
    assert isinstance(error, client.ModelNotFoundError)
    assert error.code == grpc.StatusCode.NOT_FOUND
    for part in (served.target, "'no_such_model'", "NOT_FOUND"):
        assert part in str(error)


def test_unknown_version_is_not_found(served, sample_images):
    error = _status_of(lambda: _client(served, version=served.version + 1000).predict(
        sample_images[0]))
    assert isinstance(error, client.ModelNotFoundError)
    error = _status_of(lambda: _client(served, version=served.version + 1000).model_status())
    assert isinstance(error, client.ModelNotFoundError)


def test_unknown_version_label_is_invalid(served, sample_images):
    error = _status_of(lambda: _client(served, version_label="nonexistent").predict(
        sample_images[0]))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("bad_image, what", [
    (np.zeros((1, 128, 128), np.int64), "shape"),
    (np.zeros((1, records.IMAGE_SIZE), np.int64), "shape"),
    (np.zeros((1,) + records.IMAGE_SHAPE, np.float32), "int64"),
])
def test_wrong_shape_or_dtype_is_invalid_argument(served, bad_image, what):
    with _client(served) as serving:
        error = _status_of(lambda: serving.predict_tensors({signatures.IMAGE_INPUT: bad_image}))
    assert isinstance(error, client.InvalidInputError)
    if served.kind == "local":
        assert what in error.details


def test_wrong_input_names_are_invalid_argument(served, sample_images):
    with _client(served) as serving:
        missing = _status_of(lambda: serving.predict_tensors({"pixels": sample_images}))
        extra = _status_of(lambda: serving.predict_tensors(
            {signatures.IMAGE_INPUT: sample_images, "extra": sample_images}))
    assert missing.code == extra.code == grpc.StatusCode.INVALID_ARGUMENT


def test_example_that_does_not_parse_is_invalid_argument(served):
    with _client(served, signature=signatures.SERVING_DEFAULT) as serving:
        error = _status_of(lambda: serving.predict_tensors(
            {signatures.EXAMPLES_INPUT: np.array([b"not a tf.Example"], dtype=object)}))
    assert isinstance(error, client.InvalidInputError)


def test_unknown_signature_fails_precondition(served, sample_images):
    with _client(served) as serving:
        error = _status_of(lambda: serving.predict_tensors(
            {signatures.IMAGE_INPUT: sample_images}, signature_name="no_such_signature"))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION


def test_request_over_the_size_limit_is_resource_exhausted(served, sample_images):
    _local_only(served, "TF Serving accepts messages up to 2 GiB")
    too_big = np.repeat(sample_images[:1], FITTING_BATCH * 2, axis=0)
    with _client(served) as serving:
        error = _status_of(lambda: serving.predict(too_big))
        assert isinstance(error, client.RequestTooLargeError)
        assert "SERVER" in error.details  # the server's limit, not the client's
        masks, _ = serving.predict(too_big[:FITTING_BATCH])
    assert masks.shape[0] == FITTING_BATCH


def test_server_answers_after_every_bad_request(served, sample_images):
    """Runs last in this module: everything above was sent to the same server."""
    with _client(served) as serving:
        masks, _ = serving.predict(sample_images)
        assert masks.shape == sample_images.shape
        assert serving.model_status()[0].state == "AVAILABLE"
