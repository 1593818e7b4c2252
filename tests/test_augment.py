"""Augmentation moves image and mask together and keeps the mask a mask."""
import dataclasses

import numpy as np
import tensorflow as tf

from trainer import augment
from trainer import config as trainer_config
from dataset import records

N = records.IMAGE_SIZE


def _disk(radius=30, centre=(100, 140)):
    rows, cols = np.mgrid[0:N, 0:N]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2).astype(np.int64)


def test_no_change_when_every_range_is_zero():
    none = augment.AugmentConfig(flips=False, max_rotation_degrees=0, max_scale_change=0,
                                 max_shift_pixels=0, max_gain_change=0, max_gamma_change=0)
    mask = _disk()
    image = tf.constant(mask[..., None] * 0.8 + 0.1, tf.float32)
    out_image, out_mask = augment.augment(image, tf.constant(mask), none)
    np.testing.assert_allclose(out_image.numpy(), image.numpy(), atol=1e-5)
    np.testing.assert_array_equal(out_mask.numpy(), mask)


def test_image_and_mask_stay_aligned_and_the_mask_binary():
    tf.keras.utils.set_random_seed(3)
    geometry_only = augment.AugmentConfig(max_gain_change=0, max_gamma_change=0)
    mask = _disk()
    image = tf.constant(mask[..., None].astype(np.float32))  # the image is the mask itself
    for _ in range(10):
        out_image, out_mask = augment.augment(image, tf.constant(mask), geometry_only)
        out_mask = out_mask.numpy()
        assert set(np.unique(out_mask)) <= {0, 1}
        # the LV moved with the image: they disagree at most along the edge
        disagree = ((out_image.numpy()[..., 0] > 0.5) != out_mask.astype(bool)).sum()
        assert disagree < 0.05 * mask.sum()
        # rotation keeps the area; scaling by at most 10% changes it by at most ~21%
        assert 0.75 * mask.sum() < out_mask.sum() < 1.25 * mask.sum()


def test_draws_differ_and_intensity_changes_stay_positive():
    tf.keras.utils.set_random_seed(5)
    mask = _disk()
    image = tf.constant(np.random.default_rng(0).uniform(0, 1.2, (N, N, 1)), tf.float32)
    outputs = [augment.augment(image, tf.constant(mask))[0].numpy() for _ in range(3)]
    assert not np.allclose(outputs[0], outputs[1])
    assert all(out.min() >= 0.0 for out in outputs)


def test_elastic_deformation_bends_image_and_mask_together():
    tf.keras.utils.set_random_seed(4)
    elastic_only = augment.AugmentConfig(flips=False, max_rotation_degrees=0, max_scale_change=0,
                                         max_shift_pixels=0, max_gain_change=0,
                                         max_gamma_change=0, elastic_pixels=4.0)
    mask = _disk()
    image = tf.constant(mask[..., None].astype(np.float32))
    for _ in range(5):
        out_image, out_mask = augment.augment(image, tf.constant(mask), elastic_only)
        out_image, out_mask = out_image.numpy()[..., 0], out_mask.numpy()
        assert set(np.unique(out_mask)) <= {0, 1}
        changed = (out_mask != mask).sum()
        assert changed > 20  # the outline moved ...
        assert 0.8 * mask.sum() < out_mask.sum() < 1.2 * mask.sum()  # ... but the LV is whole
        assert ((out_image > 0.5) != out_mask.astype(bool)).sum() < 0.05 * mask.sum()


def test_displacement_by_whole_pixels_is_a_shift_with_zeros_beyond_the_edge():
    image = tf.constant(np.arange(N * N, dtype=np.float32).reshape(N, N, 1))
    field = tf.constant(np.broadcast_to(np.array([2.0, -3.0], np.float32), (N, N, 2)))
    for nearest in (False, True):
        out = augment._displace(image, field, nearest).numpy()[..., 0]
        # output (r, c) = input (r + 2, c - 3)
        np.testing.assert_array_equal(out[:-2, 3:], image.numpy()[2:, :-3, 0])
        assert not out[-2:].any() and not out[:, :3].any()
    # A displacement of (1, -1.5): output (10, 10) is halfway between input (11, 8) and (11, 9).
    half = augment._displace(image, field * 0.5, nearest=False).numpy()[..., 0]
    np.testing.assert_allclose(half[10, 10], (image.numpy()[11, 8, 0] + image.numpy()[11, 9, 0])
                               / 2, atol=1e-3)


def test_gain_range_comes_from_the_training_config():
    config = trainer_config.TrainingConfig.from_custom_config(
        {"max_gain_change": 0.3, "max_gamma_change": 0.0})
    gain_only = dataclasses.replace(config.augment_config(), flips=False, max_rotation_degrees=0,
                                    max_scale_change=0, max_shift_pixels=0)
    assert gain_only.max_gain_change == 0.3 and gain_only.max_gamma_change == 0.0
    tf.keras.utils.set_random_seed(6)
    mask = _disk()
    image = tf.fill([N, N, 1], 0.5)
    centre = N // 2
    gains = [float(augment.augment(image, tf.constant(mask), gain_only)[0][centre, centre, 0])
             / 0.5 for _ in range(40)]
    assert 0.7 <= min(gains) and max(gains) <= 1.3
    assert max(gains) - min(gains) > 0.3  # wider than the +-0.15 that missed real slices
