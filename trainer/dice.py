"""The Dice coefficient: the one implementation used by training, the Evaluator's gate and tests.

Definition (the lab's, per image)::

    dice = (2 * |pred AND label| + SMOOTH) / (|pred| + |label| + SMOOTH),   SMOOTH = 1

computed over the pixels of each image, then averaged over images. The smoothing term decides the
edge cases, and they are intended:

- prediction and label both empty (a slice without LV, predicted without LV): Dice = 1;
- one of them empty and the other not: Dice = 1 / (pixels + 1), close to 0, so a false LV on an
  empty slice, or a missed LV, costs as much as it should.

The per-image mean is stricter than pooling all pixels of a batch (the lab's batch-1 number equals
the per-image one): a small apical LV counts as much as a large basal one.

Predictions may come as class scores ``[..., H, W, 2]`` (logits or probabilities; the mask is
the argmax) or as LV probabilities ``[..., H, W]`` (the mask is ``p > 0.5``), so the Keras
model's logits in training and the serving signature's probabilities in TFMA give the same mask.
"""
import tensorflow as tf

from trainer import records

SMOOTH = 1.0
LV_PROBABILITY_THRESHOLD = 0.5
METRIC_NAME = "dice"  # the key of the metric in Keras logs and TFMA results


def lv_mask(predictions) -> tf.Tensor:
    """The 0/1 LV mask, ``[..., H, W]`` int32, from class scores or LV probabilities."""
    predictions = tf.convert_to_tensor(predictions)
    if predictions.shape[-1] == records.NUM_CLASSES:
        return tf.cast(tf.argmax(predictions, axis=-1), tf.int32)
    return tf.cast(predictions > LV_PROBABILITY_THRESHOLD, tf.int32)


def lv_probability(logits) -> tf.Tensor:
    """LV probability ``[..., H, W]`` from two-class logits ``[..., H, W, 2]``."""
    return tf.nn.softmax(logits, axis=-1)[..., 1]


def _as_label_mask(labels) -> tf.Tensor:
    """Labels arrive as ``[B, H, W]``, ``[B, H, W, 1]`` or (TFMA) with extra unit dims."""
    labels = tf.convert_to_tensor(labels)
    labels = tf.reshape(labels, [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    return tf.cast(labels > 0, tf.float32)


def dice_per_image(labels, predictions) -> tf.Tensor:
    """Dice of each image, shape ``[B]``; see the module docstring for the definition."""
    label_mask = _as_label_mask(labels)
    pred_mask = tf.reshape(tf.cast(lv_mask(predictions), tf.float32),
                           [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    intersection = tf.reduce_sum(label_mask * pred_mask, axis=[1, 2])
    total = tf.reduce_sum(label_mask, axis=[1, 2]) + tf.reduce_sum(pred_mask, axis=[1, 2])
    return (2.0 * intersection + SMOOTH) / (total + SMOOTH)


def soft_dice_loss(labels, logits) -> tf.Tensor:
    """1 - soft Dice of the LV probability, per image, averaged: a differentiable training loss."""
    label_mask = _as_label_mask(labels)
    probability = tf.reshape(lv_probability(logits),
                             [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    intersection = tf.reduce_sum(label_mask * probability, axis=[1, 2])
    total = tf.reduce_sum(label_mask, axis=[1, 2]) + tf.reduce_sum(probability, axis=[1, 2])
    return 1.0 - tf.reduce_mean((2.0 * intersection + SMOOTH) / (total + SMOOTH))


@tf.keras.utils.register_keras_serializable(package="lvseg")
class DiceCoefficient(tf.keras.metrics.Metric):
    """Mean per-image Dice over all images seen: the metric the Evaluator gates on.

    TFMA loads it by ``module='trainer.dice', class_name='DiceCoefficient'``; sample weights are
    ignored (every image counts once).
    """

    def __init__(self, name=METRIC_NAME, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.dice_sum = self.add_weight(name="dice_sum", initializer="zeros", dtype=tf.float64)
        self.images = self.add_weight(name="images", initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        del sample_weight
        dice = tf.cast(dice_per_image(y_true, y_pred), tf.float64)
        self.dice_sum.assign_add(tf.reduce_sum(dice))
        self.images.assign_add(tf.cast(tf.size(dice), tf.float64))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.dice_sum, self.images), tf.float32)

    def reset_state(self):
        self.dice_sum.assign(0.0)
        self.images.assign(0.0)
