"""Training-time augmentation of (image, mask) pairs: what cardiac MRI varies in.

- geometry: left-right and up-down flips, rotation, isotropic scaling and translation, applied
  to image and mask with the same transform (bilinear for the image, nearest for the mask);
- intensity: gain and gamma on the normalised image (scanners, coils and bias fields differ).

Each draw is random per example; under ``tf.keras.utils.set_random_seed`` the sequence is
repeatable. Sizes are in pixels of the 256x256 grid.
"""
import dataclasses
import math

import tensorflow as tf

from trainer import records


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    max_rotation_degrees: float = 15.0
    max_scale_change: float = 0.1  # scale drawn from [1 - x, 1 + x]
    max_shift_pixels: float = 12.0
    max_gain_change: float = 0.15  # intensity multiplied by [1 - x, 1 + x]
    max_gamma_change: float = 0.25  # gamma drawn from [1 - x, 1 + x]


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
    gain = 1.0 + _uniform(config.max_gain_change)
    gamma = 1.0 + _uniform(config.max_gamma_change)
    image = gain * tf.pow(tf.maximum(image, 0.0), gamma)
    return image, tf.cast(mask[..., 0], label.dtype)
