"""Test-time augmentation: the LV probability averaged over the image and its flips.

The network is trained on left-right and up-down flipped slices (:mod:`trainer.augment`), so
each flip is an equally valid view; averaging the four predictions (each flipped back) smooths
out what one view gets wrong. It costs four forward passes per image, so it is a training option
(``TrainingConfig.test_time_flips``) that the export bakes into the serving signatures; measured
in docs/experiments/2026-11-29-served-mask-and-generator.md.
"""
import tensorflow as tf

from trainer import dice

# (flip rows, flip columns) of each view; a flip is its own inverse, so the same flip undoes it.
VIEWS = ((False, False), (False, True), (True, False), (True, True))


def flip(images: tf.Tensor, rows: bool, columns: bool) -> tf.Tensor:
    """Flips ``[N, H, W, ...]`` along rows (axis 1) and/or columns (axis 2)."""
    axes = [axis for axis, flipped in ((1, rows), (2, columns)) if flipped]
    return tf.reverse(images, axes) if axes else images


def flip_averaged_probability(model: tf.keras.Model, images: tf.Tensor) -> tf.Tensor:
    """LV probability ``[N, H, W]`` of normalised images ``[N, H, W, 1]``, averaged over the four
    flips; one batched forward pass of ``4N`` images."""
    batch = tf.concat([flip(images, *view) for view in VIEWS], axis=0)
    probabilities = tf.split(dice.lv_probability(model(batch, training=False)), len(VIEWS))
    return tf.add_n([flip(p, *view) for p, view in zip(probabilities, VIEWS)]) / len(VIEWS)
