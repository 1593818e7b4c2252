"""The slices evaluation reports and gates on: LV size bucket and patient.

``lv_size`` buckets each slice by the area of its expert LV mask, in pixels (pixel spacing is not
always known, and the generated data has none):

=========  ==============================  =====================================================
bucket     expert LV pixels                what it is
=========  ==============================  =====================================================
``empty``  0                               above the apex / below the base: a false LV is the
                                           failure (Dice is ~0 for any predicted pixel)
``small``  1 .. SMALL_MAX_PIXELS - 1        apical slices, where models fail first
``mid``    SMALL_MAX_PIXELS .. LARGE_MIN-1  mid-ventricular slices
``large``  LARGE_MIN_PIXELS and more        basal slices
=========  ==============================  =====================================================

The bounds fall near the quartiles of both the generated default data (260 slices: 25% below
554 px, 75% below 1681 px) and the real Sunnybrook subset (56 slices: 807 / 1647 px).

``patient`` slices use the records' optional ``patient_id`` feature
(:data:`dataset.records.PATIENT_ID_KEY`), read by TFMA from the raw examples.

The bucket is computed in the graph (the model's ``transform_features`` signature outputs it, so
TFMA can slice on it) and by the report, from the same function.
"""
import tensorflow as tf

from dataset import records

LV_SIZE_FEATURE = "lv_size"
PATIENT_FEATURE = records.PATIENT_ID_KEY

EMPTY, SMALL, MID, LARGE = "empty", "small", "mid", "large"
LV_SIZE_BUCKETS = (EMPTY, SMALL, MID, LARGE)
SMALL_MAX_PIXELS = 500
LARGE_MIN_PIXELS = 1500


def lv_pixels(labels) -> tf.Tensor:
    """Expert LV pixels per image, ``[N]`` int64, from 0/1 masks ``[N, 256, 256]`` (or with a
    trailing unit dimension)."""
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1, records.NUM_PIXELS])
    return tf.reduce_sum(tf.cast(labels > 0, tf.int64), axis=1)


def lv_size_bucket(labels) -> tf.Tensor:
    """The ``lv_size`` bucket of each mask, ``[N]`` string."""
    pixels = lv_pixels(labels)
    return tf.where(pixels == 0, EMPTY,
                    tf.where(pixels < SMALL_MAX_PIXELS, SMALL,
                             tf.where(pixels < LARGE_MIN_PIXELS, MID, LARGE)))
