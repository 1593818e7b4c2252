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
the argmax) or as LV probabilities ``[..., H, W]`` (the mask is ``p > 0.5``; a 0/1 mask, of any
dtype, is its own mask), so the Keras model's logits in training, probabilities and the served
(post-processed, :mod:`trainer.postprocess`) mask in TFMA all go through one definition.

:class:`PerImageMean` is the Keras metric base that averages a per-image score over images;
:class:`DiceCoefficient` here and IoU / pixel accuracy in :mod:`trainer.seg_metrics` derive from it.
"""
import tensorflow as tf

from dataset import records

SMOOTH = 1.0
LV_PROBABILITY_THRESHOLD = 0.5
METRIC_NAME = "dice"  # the key of the metric in Keras logs and TFMA results


def lv_mask(predictions) -> tf.Tensor:
    """The 0/1 LV mask, ``[..., H, W]`` int32, from class scores or LV probabilities."""
    predictions = tf.convert_to_tensor(predictions)
    if predictions.shape[-1] == records.NUM_CLASSES:
        return tf.cast(tf.argmax(predictions, axis=-1), tf.int32)
    return tf.cast(tf.cast(predictions, tf.float32) > LV_PROBABILITY_THRESHOLD, tf.int32)


def lv_probability(logits) -> tf.Tensor:
    """LV probability ``[..., H, W]`` from two-class logits ``[..., H, W, 2]``."""
    return tf.nn.softmax(logits, axis=-1)[..., 1]


def _as_label_mask(labels) -> tf.Tensor:
    """Labels arrive as ``[B, H, W]``, ``[B, H, W, 1]`` or (TFMA) with extra unit dims."""
    labels = tf.convert_to_tensor(labels)
    labels = tf.reshape(labels, [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    return tf.cast(labels > 0, tf.float32)


def label_and_predicted_masks(labels, predictions):
    """The expert and the predicted 0/1 LV masks, both float32 ``[B, H, W]``: what every
    per-image metric (Dice here, IoU and pixel accuracy in :mod:`trainer.seg_metrics`) compares."""
    label_mask = _as_label_mask(labels)
    pred_mask = tf.reshape(tf.cast(lv_mask(predictions), tf.float32),
                           [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    return label_mask, pred_mask


def dice_per_image(labels, predictions) -> tf.Tensor:
    """Dice of each image, shape ``[B]``; see the module docstring for the definition."""
    label_mask, pred_mask = label_and_predicted_masks(labels, predictions)
    intersection = tf.reduce_sum(label_mask * pred_mask, axis=[1, 2])
    total = tf.reduce_sum(label_mask, axis=[1, 2]) + tf.reduce_sum(pred_mask, axis=[1, 2])
    return (2.0 * intersection + SMOOTH) / (total + SMOOTH)


def soft_dice_loss_per_image(labels, logits) -> tf.Tensor:
    """1 - soft Dice of the LV probability, of each image ``[B]``: a differentiable loss."""
    label_mask = _as_label_mask(labels)
    probability = tf.reshape(lv_probability(logits),
                             [-1, records.IMAGE_SIZE, records.IMAGE_SIZE])
    intersection = tf.reduce_sum(label_mask * probability, axis=[1, 2])
    total = tf.reduce_sum(label_mask, axis=[1, 2]) + tf.reduce_sum(probability, axis=[1, 2])
    return 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)


def soft_dice_loss(labels, logits) -> tf.Tensor:
    """:func:`soft_dice_loss_per_image` averaged over the images."""
    return tf.reduce_mean(soft_dice_loss_per_image(labels, logits))


class PerImageMean(tf.keras.metrics.Metric):
    """Base of the per-image segmentation metrics: the mean over all images seen of a per-image
    score, ``per_image(labels, predictions) -> [B]``; sample weights are ignored (every image
    counts once, a small apical LV as much as a large basal one).

    TFMA loads a subclass by module and class name (``MetricConfig(module=..., class_name=...)``)
    and feeds it labels ``[B, 256, 256]`` and LV probabilities ``[B, 256, 256]``.
    """

    # Attribute and weight name of the running sum. DiceCoefficient keeps the name it had before
    # this base class existed, so SavedModels compiled with it restore their metric variables.
    SUM_NAME = "score_sum"

    def __init__(self, name, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        setattr(self, self.SUM_NAME,
                self.add_weight(name=self.SUM_NAME, initializer="zeros", dtype=tf.float64))
        self.images = self.add_weight(name="images", initializer="zeros", dtype=tf.float64)

    def per_image(self, y_true, y_pred) -> tf.Tensor:
        raise NotImplementedError

    @property
    def _score_sum(self):
        return getattr(self, self.SUM_NAME)

    def update_state(self, y_true, y_pred, sample_weight=None):
        del sample_weight
        scores = tf.cast(self.per_image(y_true, y_pred), tf.float64)
        self._score_sum.assign_add(tf.reduce_sum(scores))
        self.images.assign_add(tf.cast(tf.size(scores), tf.float64))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self._score_sum, self.images), tf.float32)

    def reset_state(self):
        self._score_sum.assign(0.0)
        self.images.assign(0.0)


@tf.keras.utils.register_keras_serializable(package="lvseg")
class DiceCoefficient(PerImageMean):
    """Mean per-image Dice over all images seen: the metric the Evaluator gates on.

    TFMA loads it by ``module='trainer.dice', class_name='DiceCoefficient'``; sample weights are
    ignored (every image counts once).
    """

    SUM_NAME = "dice_sum"

    def __init__(self, name=METRIC_NAME, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)

    def per_image(self, y_true, y_pred) -> tf.Tensor:
        return dice_per_image(y_true, y_pred)
