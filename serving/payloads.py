"""What goes into and comes out of a Predict call, shared by the clients, the server and the checks.

The two prediction signatures (``trainer.signatures``) take the same slices in two forms: pixel
values ``[N, 256, 256]`` int64, or serialized lab-schema ``tf.Example``s. Turning images into
either input, and the message-size budget a batch needs, are defined once here so the gRPC and
REST clients, the local server's limit and the pipeline's servable check agree.
"""
from typing import Dict, Mapping, Tuple

import numpy as np

from dataset import records
from serving.config import (DEFAULT_MAX_MESSAGE_BYTES, MAX_BATCH_IMAGES,  # noqa: F401
                            PREDICTION_SIGNATURES, message_bytes_for)
from trainer import config as trainer_config  # the model's interface names


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
    if signature_name == trainer_config.SERVING_RAW_IMAGE:
        return {trainer_config.IMAGE_INPUT: batch}
    if signature_name == trainer_config.SERVING_DEFAULT:
        return {trainer_config.EXAMPLES_INPUT: encode_examples(batch)}
    raise ValueError(f"signature must be one of {PREDICTION_SIGNATURES}, got {signature_name!r}")


def masks_and_probabilities(outputs: Mapping[str, np.ndarray],
                            single: bool) -> Tuple[np.ndarray, np.ndarray]:
    """``(masks, probabilities)`` from a response's outputs, unbatched for a single image."""
    # The signatures' dtypes, also for JSON (REST) outputs, which carry none.
    masks = np.asarray(outputs[trainer_config.MASK_OUTPUT], dtype=np.int32)
    probabilities = np.asarray(outputs[trainer_config.PROBABILITIES_OUTPUT], dtype=np.float32)
    return (masks[0], probabilities[0]) if single else (masks, probabilities)
