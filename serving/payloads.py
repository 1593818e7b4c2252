"""What goes into and comes out of a Predict call, shared by the clients, the server and the checks.

The two prediction signatures (``trainer.signatures``) take the same slices in two forms: pixel
values ``[N, 256, 256]`` int64, or serialized lab-schema ``tf.Example``s. Turning images into
either input, and the message-size budget a batch needs, are defined once here so the gRPC and
REST clients, the local server's limit and the pipeline's servable check agree.
"""
from typing import Dict, Mapping, Tuple

import numpy as np

from trainer import records, signatures

PREDICTION_SIGNATURES = (signatures.SERVING_RAW_IMAGE, signatures.SERVING_DEFAULT)
DEFAULT_SIGNATURE = signatures.SERVING_RAW_IMAGE

# Largest batch the default message limits are sized for. Per pixel, a request carries at most
# 9 bytes (int64 pixels plus the uint8 label of a full lab-schema example) and a response 8
# (float32 probability plus int32 mask); protobuf framing adds little on top.
MAX_BATCH_IMAGES = 64
_BYTES_PER_PIXEL = records.IMAGE_DTYPE.itemsize + records.LABEL_DTYPE.itemsize
_FRAMING_BYTES = 1 << 20


def message_bytes_for(batch_size: int) -> int:
    """gRPC message size (bytes) that fits a request or a response of ``batch_size`` slices."""
    return batch_size * records.NUM_PIXELS * _BYTES_PER_PIXEL + _FRAMING_BYTES


DEFAULT_MAX_MESSAGE_BYTES = message_bytes_for(MAX_BATCH_IMAGES)


def as_image_batch(images) -> Tuple[np.ndarray, bool]:
    """``(batch [N, H, W] int64, was_single)`` from one image ``[H, W]`` or a batch.

    Shapes are not checked here on purpose: the server is the judge (a wrong shape must reach it
    and come back as INVALID_ARGUMENT). Float pixels are rounded, as the raw-image signature does.
    """
    array = np.asarray(images)
    single = array.ndim == 2
    if single:
        array = array[np.newaxis]
    if array.dtype.kind == "f":
        array = np.rint(array)
    elif array.dtype.kind not in "iub":
        raise TypeError(f"images must hold numbers, got dtype {array.dtype}")
    return array.astype(np.int64), single


def encode_examples(batch: np.ndarray) -> np.ndarray:
    """Serialized lab-schema examples ``[N]`` for the ``serving_default`` signature.

    The label is empty (the signature reads only the image), so the examples also pass the
    schema checks a real TF Serving warm-up or an InfraValidator request goes through.
    """
    empty_mask = np.zeros(records.IMAGE_SHAPE, dtype=records.LABEL_DTYPE)
    return np.array([records.encode_example(f"request-{i}", image, empty_mask)
                     for i, image in enumerate(batch)], dtype=object)


def signature_inputs(batch: np.ndarray, signature_name: str) -> Dict[str, np.ndarray]:
    """The ``inputs`` map of a PredictRequest for ``signature_name``."""
    if signature_name == signatures.SERVING_RAW_IMAGE:
        return {signatures.IMAGE_INPUT: batch}
    if signature_name == signatures.SERVING_DEFAULT:
        return {signatures.EXAMPLES_INPUT: encode_examples(batch)}
    raise ValueError(f"signature must be one of {PREDICTION_SIGNATURES}, got {signature_name!r}")


def masks_and_probabilities(outputs: Mapping[str, np.ndarray],
                            single: bool) -> Tuple[np.ndarray, np.ndarray]:
    """``(masks, probabilities)`` from a response's outputs, unbatched for a single image."""
    # The signatures' dtypes, also for JSON (REST) outputs, which carry none.
    masks = np.asarray(outputs[signatures.MASK_OUTPUT], dtype=np.int32)
    probabilities = np.asarray(outputs[signatures.PROBABILITIES_OUTPUT], dtype=np.float32)
    return (masks[0], probabilities[0]) if single else (masks, probabilities)
