"""tf.Transform ``preprocessing_fn``: lab-schema bytes in, a normalised image and a mask out.

The Transform component runs this over the data; the same graph is saved beside the model and the
serving signatures apply it, so a served request is normalised exactly as the training data was.

Normalisation (``normalization`` in the Transform's custom_config):

- ``"percentile"`` (default): each image divided by its own 99th-percentile intensity. MRI
  intensities have no absolute scale (gain, coil and bias field differ between scanners and
  patients; Sunnybrook maxima run from ~670 to ~2000), and a high percentile ignores both the
  zeros outside a circular field of view and a few hot pixels.
- ``"lab"``: the lab's fixed scaling, pixel / 1024.

Both are stateless (no dataset-wide analyzer), so Transform's analysis pass is cheap.
"""
from typing import Optional

import tensorflow as tf

from dataset import records
from trainer.config import (DEFAULT_NORMALIZATION, LAB_NORMALIZATION, LAB_SCALE,  # noqa: F401
                            NORMALIZATIONS, PERCENTILE, PERCENTILE_NORMALIZATION,
                            percentile_rank_from_top)

# Names of the transformed features: what the model is trained and served on.
IMAGE_FEATURE = "image"  # float32 [256, 256, 1], normalised intensities
LABEL_FEATURE = "label"  # int64 [256, 256], 0 = not LV, 1 = LV



def decode_image(image_raw: tf.Tensor) -> tf.Tensor:
    """``image_raw`` bytes (shape ``[N]`` or ``[N, 1]``) to float32 pixels ``[N, 256, 256, 1]``."""
    pixels = tf.io.decode_raw(tf.reshape(image_raw, [-1]), records.IMAGE_DTYPE.name,
                              little_endian=True)
    pixels = tf.reshape(pixels, [-1, records.IMAGE_SIZE, records.IMAGE_SIZE, 1])
    return tf.ensure_shape(tf.cast(pixels, tf.float32),
                           [None, records.IMAGE_SIZE, records.IMAGE_SIZE, 1])


def decode_label(label_raw: tf.Tensor) -> tf.Tensor:
    """``label_raw`` bytes to int64 class ids ``[N, 256, 256]``."""
    mask = tf.io.decode_raw(tf.reshape(label_raw, [-1]), tf.uint8)
    mask = tf.reshape(mask, [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    return tf.ensure_shape(tf.cast(mask, tf.int64),
                           [None, records.IMAGE_SIZE, records.IMAGE_SIZE])


def encode_image_raw(pixels: tf.Tensor) -> tf.Tensor:
    """Pixels ``[N, 256, 256]`` (any integer or float dtype) to ``image_raw`` bytes ``[N]``.

    The exact inverse of :func:`decode_image`, inside the graph, so the raw-image serving signature
    can feed the very transform graph the Transform component saved. ``serialize_tensor`` writes a
    TensorProto whose last field is the tensor's raw little-endian content; its tail is the bytes
    the lab's records hold (a test checks this against :mod:`dataset.records`).
    """
    pixels = tf.cast(tf.round(tf.cast(pixels, tf.float64)), tf.int64) \
        if not pixels.dtype.is_integer else tf.cast(pixels, tf.int64)

    def one_image(image):
        serialized = tf.io.serialize_tensor(image)
        return tf.strings.substr(serialized, tf.strings.length(serialized) - records.IMAGE_BYTES,
                                 records.IMAGE_BYTES)

    return tf.map_fn(one_image, pixels, fn_output_signature=tf.TensorSpec([], tf.string))


def normalize_image(pixels: tf.Tensor, normalization: str = DEFAULT_NORMALIZATION) -> tf.Tensor:
    """Scales float pixels ``[N, H, W, 1]``; see the module docstring for the methods."""
    if normalization == LAB_NORMALIZATION:
        return pixels * LAB_SCALE
    if normalization == PERCENTILE_NORMALIZATION:
        flat = tf.reshape(pixels, [tf.shape(pixels)[0], -1])
        high = tf.math.top_k(flat, k=percentile_rank_from_top(), sorted=True).values[:, -1]
        high = tf.maximum(high, 1.0)  # an all-dark image stays dark instead of dividing by 0
        return pixels / tf.reshape(high, [-1, 1, 1, 1])
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def preprocessing_fn(inputs, custom_config: Optional[dict] = None):
    """tf.Transform entry point (``Transform(preprocessing_fn='trainer.preprocessing...')``)."""
    normalization = (custom_config or {}).get("normalization", DEFAULT_NORMALIZATION)
    return {
        IMAGE_FEATURE: normalize_image(decode_image(inputs[records.IMAGE_KEY]), normalization),
        LABEL_FEATURE: decode_label(inputs[records.LABEL_KEY]),
    }
