"""IoU and pixel accuracy per image, as Keras metrics the Evaluator reports beside Dice.

Both compare the same masks as :func:`trainer.dice.dice_per_image` (the argmax of class scores, or
LV probability > 0.5) and average over images like :class:`trainer.dice.DiceCoefficient` (their
common base :class:`trainer.dice.PerImageMean`):

- **IoU** (Jaccard) per image: ``(|pred AND label| + SMOOTH) / (|pred OR label| + SMOOTH)``, with
  Dice's smoothing term, so the edge cases match Dice's: both masks empty = 1, one of them empty
  = ``1 / (pixels + 1)``. Per image, ``IoU = Dice / (2 - Dice)`` without the smoothing term.
- **pixel accuracy** per image: the share of the image's 65,536 pixels whose class (LV or not) is
  right. The background dominates it (an LV covers 0-3% of a slice), so it stays near 1 even for
  poor masks; it is reported because readers expect it, never gated on.

TFMA loads them by ``module='trainer.seg_metrics'`` and class name (``IntersectionOverUnion``,
``PixelAccuracy``); results carry :data:`IOU_METRIC_NAME` and :data:`PIXEL_ACCURACY_METRIC_NAME`.
"""
import tensorflow as tf

from trainer import dice

IOU_METRIC_NAME = "iou"
PIXEL_ACCURACY_METRIC_NAME = "pixel_accuracy"


def iou_per_image(labels, predictions) -> tf.Tensor:
    """IoU of each image, shape ``[B]``; see the module docstring."""
    label_mask, pred_mask = dice.label_and_predicted_masks(labels, predictions)
    intersection = tf.reduce_sum(label_mask * pred_mask, axis=[1, 2])
    union = tf.reduce_sum(tf.maximum(label_mask, pred_mask), axis=[1, 2])
    return (intersection + dice.SMOOTH) / (union + dice.SMOOTH)


def pixel_accuracy_per_image(labels, predictions) -> tf.Tensor:
    """Share of correctly classified pixels of each image, shape ``[B]``."""
    label_mask, pred_mask = dice.label_and_predicted_masks(labels, predictions)
    return tf.reduce_mean(tf.cast(tf.equal(label_mask, pred_mask), tf.float32), axis=[1, 2])


@tf.keras.utils.register_keras_serializable(package="lvseg")
class IntersectionOverUnion(dice.PerImageMean):
    """Mean per-image IoU over all images seen (sample weights ignored)."""

    def __init__(self, name=IOU_METRIC_NAME, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)

    def per_image(self, y_true, y_pred) -> tf.Tensor:
        return iou_per_image(y_true, y_pred)


@tf.keras.utils.register_keras_serializable(package="lvseg")
class PixelAccuracy(dice.PerImageMean):
    """Mean per-image pixel accuracy over all images seen (sample weights ignored)."""

    def __init__(self, name=PIXEL_ACCURACY_METRIC_NAME, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)

    def per_image(self, y_true, y_pred) -> tf.Tensor:
        return pixel_accuracy_per_image(y_true, y_pred)
