"""Training-time augmentation of (image, mask) pairs: what cardiac MRI varies in.

- geometry: left-right and up-down flips, rotation, isotropic scaling and translation, and
  optionally an elastic deformation (a smooth random displacement field), applied to image and
  mask with the same transform (bilinear for the image, nearest for the mask);
- intensity: gain and gamma on the normalised image (scanners, coils and bias fields differ).

Each draw is random per example; under ``tf.keras.utils.set_random_seed`` the sequence is
repeatable. Sizes are in pixels of the 256x256 grid.
"""
import math

import tensorflow as tf

from dataset import records
from trainer.config import AugmentConfig  # noqa: F401  (the settings; defined TF-free)


# Control points per side of the elastic displacement field (~50 px apart: the LV bends, it is
# not crumpled); the field between them is bicubic.
ELASTIC_GRID = 6


def _uniform(half_width: float) -> tf.Tensor:
    return tf.random.uniform([], -half_width, half_width)


def _affine_transform(config: AugmentConfig) -> tf.Tensor:
    """The 8 projective parameters mapping output pixels to input pixels (rotation and scale
    about the image centre, then a shift)."""
    angle = _uniform(config.max_rotation_degrees) * (math.pi / 180.0)
    scale = 1.0 + _uniform(config.max_scale_change)
    shift_x, shift_y = _uniform(config.max_shift_pixels), _uniform(config.max_shift_pixels)
    centre = (records.IMAGE_SIZE - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # input = R(-angle) / scale * (output - centre) + centre - shift
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = centre - a0 * centre - a1 * centre - shift_x
    b2 = centre - b0 * centre - b1 * centre - shift_y
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[tf.newaxis]


def _warp(image: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform,
        output_shape=tf.constant(records.IMAGE_SHAPE, tf.int32), fill_value=0.0,
        interpolation=interpolation, fill_mode="CONSTANT")[0]


def _elastic_field(config: AugmentConfig) -> tf.Tensor:
    """A smooth random displacement ``[H, W, 2]`` (rows, columns) in pixels."""
    coarse = tf.random.normal([1, ELASTIC_GRID, ELASTIC_GRID, 2]) * config.elastic_pixels
    return tf.image.resize(coarse, records.IMAGE_SHAPE, method="bicubic")[0]


def _displace(image: tf.Tensor, field: tf.Tensor, nearest: bool) -> tf.Tensor:
    """``image`` ``[H, W, C]`` sampled at each pixel plus ``field`` ``[H, W, 2]``: bilinear, or
    the nearest pixel; zeros outside the image."""
    size = records.IMAGE_SIZE
    rows = tf.range(size, dtype=tf.float32)[:, None] + field[..., 0]
    columns = tf.range(size, dtype=tf.float32)[None, :] + field[..., 1]

    def at(row, column):
        inside = (row >= 0) & (row <= size - 1) & (column >= 0) & (column <= size - 1)
        index = tf.cast(tf.stack([tf.clip_by_value(row, 0, size - 1),
                                  tf.clip_by_value(column, 0, size - 1)], axis=-1), tf.int32)
        return tf.where(inside[..., None], tf.gather_nd(image, index), 0.0)

    if nearest:
        return at(tf.round(rows), tf.round(columns))
    top, left = tf.floor(rows), tf.floor(columns)
    down, right = (rows - top)[..., None], (columns - left)[..., None]
    return ((1 - down) * ((1 - right) * at(top, left) + right * at(top, left + 1))
            + down * ((1 - right) * at(top + 1, left) + right * at(top + 1, left + 1)))


def augment(image: tf.Tensor, label: tf.Tensor, config: AugmentConfig = AugmentConfig()):
    """One random draw for one example: image float ``[H, W, 1]``, label int ``[H, W]``."""
    mask = tf.cast(label[..., tf.newaxis], tf.float32)
    if config.flips:
        flip_lr = tf.random.uniform([]) < 0.5
        image = tf.cond(flip_lr, lambda: tf.image.flip_left_right(image), lambda: image)
        mask = tf.cond(flip_lr, lambda: tf.image.flip_left_right(mask), lambda: mask)
        flip_ud = tf.random.uniform([]) < 0.5
        image = tf.cond(flip_ud, lambda: tf.image.flip_up_down(image), lambda: image)
        mask = tf.cond(flip_ud, lambda: tf.image.flip_up_down(mask), lambda: mask)
    transform = _affine_transform(config)
    image = _warp(image, transform, "BILINEAR")
    mask = _warp(mask, transform, "NEAREST")
    if config.elastic_pixels > 0:
        field = _elastic_field(config)
        image = _displace(image, field, nearest=False)
        mask = _displace(mask, field, nearest=True)
    gain = 1.0 + _uniform(config.max_gain_change)
    gamma = 1.0 + _uniform(config.max_gamma_change)
    image = gain * tf.pow(tf.maximum(image, 0.0), gamma)
    return image, tf.cast(mask[..., 0], label.dtype)
