"""Dice on known masks, its edge cases, and the Keras metric the gate uses."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import dice
from dataset import records

N = records.IMAGE_SIZE


def _mask(rows, cols):
    mask = np.zeros((N, N), np.int64)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def _scores(mask):
    """Two-class logits whose argmax is ``mask``."""
    return np.stack([1.0 - mask, mask.astype(float)], axis=-1)[np.newaxis]


def test_identical_masks_score_one():
    mask = _mask((10, 50), (20, 60))
    assert float(dice.dice_per_image(mask[np.newaxis], _scores(mask))[0]) == pytest.approx(1.0)


def test_disjoint_masks_score_almost_zero():
    label, pred = _mask((10, 50), (20, 60)), _mask((100, 140), (100, 140))
    # 1 / (1600 + 1600 + 1): only the smoothing term is left
    assert float(dice.dice_per_image(label[np.newaxis], _scores(pred))[0]) == pytest.approx(
        1.0 / 3201.0)


def test_half_overlap():
    label, pred = _mask((0, 40), (0, 40)), _mask((0, 40), (20, 60))
    expected = (2 * 800 + 1) / (1600 + 1600 + 1)
    result = dice.dice_per_image(label[np.newaxis], _scores(pred))
    assert float(result[0]) == pytest.approx(expected)


def test_both_empty_is_one_and_false_lv_on_empty_slice_is_near_zero():
    empty = np.zeros((N, N), np.int64)
    assert float(dice.dice_per_image(empty[np.newaxis], _scores(empty))[0]) == 1.0
    false_lv = _mask((0, 10), (0, 10))
    assert float(dice.dice_per_image(empty[np.newaxis], _scores(false_lv))[0]) == pytest.approx(
        1.0 / 101.0)


def test_probabilities_and_scores_give_the_same_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, N, N, 2)).astype(np.float32)
    probability = dice.lv_probability(logits)
    np.testing.assert_array_equal(dice.lv_mask(logits).numpy(), dice.lv_mask(probability).numpy())
    label = rng.integers(0, 2, size=(2, N, N))
    np.testing.assert_allclose(dice.dice_per_image(label, logits).numpy(),
                               dice.dice_per_image(label, probability).numpy())


def test_metric_is_the_mean_of_per_image_dice_across_batches():
    a, b = _mask((0, 40), (0, 40)), _mask((0, 40), (20, 60))
    metric = dice.DiceCoefficient()
    metric.update_state(a[np.newaxis], _scores(a))  # 1.0
    metric.update_state(a[np.newaxis], _scores(b))  # half overlap
    expected = (1.0 + (2 * 800 + 1) / 3201) / 2
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_metric_accepts_labels_with_a_channel_axis():
    a = _mask((0, 40), (0, 40))
    metric = dice.DiceCoefficient()
    metric.update_state(a[np.newaxis, ..., np.newaxis], _scores(a))
    assert float(metric.result()) == pytest.approx(1.0)


def test_soft_dice_loss_is_low_for_a_confident_right_answer():
    label = _mask((0, 40), (0, 40))
    confident = tf.constant(_scores(label) * 20.0, tf.float32)
    wrong = tf.constant(_scores(1 - label) * 20.0, tf.float32)
    assert float(dice.soft_dice_loss(label[np.newaxis], confident)) < 0.01
    assert float(dice.soft_dice_loss(label[np.newaxis], wrong)) > 0.99
