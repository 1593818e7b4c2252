"""From per-pixel LV probabilities to the LV mask a service receives, inside the TF graph.

A short-axis slice holds one LV blood pool: one solid region. A network trained on a few patients
also answers with a second bright blob now and then (the RV, the aorta) and with holes and bites
where dark papillary muscles and trabeculae lie inside the pool; the expert contour (Sunnybrook's
i-contour, as in the field's convention) includes them and is convex: each of the 56 expert masks
of the real subset covers at least 94.9% of its convex hull (:func:`convex_hull`), 99.7% on
average. So the mask is:

1. ``probability > 0.5`` (:data:`trainer.dice.LV_PROBABILITY_THRESHOLD`);
2. only the connected region (8-connectivity) most likely to be the LV
   (:func:`most_probable_region`): the largest sum of the log-odds ``log(p / (1 - p))`` of its
   pixels. If one region is the LV and the others are not, and pixels are taken as independent, the
   probability of "region r is the LV" is proportional to the product of ``p / (1 - p)`` over r: so
   a confident blob wins over a wider, less certain one (the bright stomach below an apical slice,
   at p ~0.9, against the LV at p ~0.96);
3. the convex hull of that region (:func:`convex_hull`), which fills the holes and bites the
   papillary muscles and trabeculae leave.

Everything is TensorFlow ops (connected regions by an iterated 3x3 maximum of pixel ids, the hull
by support lines), so the serving signatures, the Evaluator and TF Serving run the very same code;
:mod:`trainer.signatures` applies it. Measured on real Sunnybrook patients:
docs/experiments/2026-11-29-served-mask-and-generator.md and 2026-11-29-leave-one-patient-out.md.
"""
import math

import tensorflow as tf

from trainer import dice
from dataset import records

# Directions of the support lines that bound the hull (a multiple of 4, so rows and columns are
# among them and the hull never leaves the region's bounding box).
HULL_DIRECTIONS = 64
# Probabilities are clipped to [eps, 1 - eps] for their log-odds (float32's 1 - 1e-7 < 1).
_PROBABILITY_EPSILON = 1e-7
# Steps of the iterative labelling between convergence checks (cheap steps, fewer checks).
_STEPS_PER_CHECK = 8


def _neighbourhood_max(x: tf.Tensor) -> tf.Tensor:
    """Max over each pixel's 3x3 neighbourhood in ``x`` ``[N, H, W]`` (values >= 0; outside the
    image counts as 0). Shifted slices, rows then columns, since ``max_pool2d`` on one channel is
    ~20x slower on CPUs (measured: 5 ms against 0.2 ms)."""
    padded = tf.pad(x, [[0, 0], [1, 1], [0, 0]])
    x = tf.maximum(tf.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    padded = tf.pad(x, [[0, 0], [0, 0], [1, 1]])
    return tf.maximum(tf.maximum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])


def _iterate_to_fixpoint(step, state: tf.Tensor) -> tf.Tensor:
    """Applies ``step`` to each image of ``state`` ``[N, H, W]`` until that image stops changing
    (checked every few steps). Only the images still changing are stepped: a batch costs the sum
    of its images' steps, not its slowest image's steps times the batch size."""

    def body(active, indices, done):
        updated = active
        for _ in range(_STEPS_PER_CHECK):
            updated = step(updated)
        changed = tf.reduce_any(tf.not_equal(updated, active), axis=[1, 2])

        def retire():  # only when an image has converged: copies cost as much as steps
            finished = tf.logical_not(changed)
            return (tf.boolean_mask(updated, changed), tf.boolean_mask(indices, changed),
                    tf.tensor_scatter_nd_update(done, tf.boolean_mask(indices, finished)[:, None],
                                                tf.boolean_mask(updated, finished)))

        return tf.cond(tf.reduce_all(changed), lambda: (updated, indices, done), retire)

    _, _, done = tf.while_loop(
        lambda active, indices, done: tf.size(indices) > 0, body,
        (state, tf.range(tf.shape(state)[0]), state),
        shape_invariants=(tf.TensorShape([None]).concatenate(state.shape[1:]),
                          tf.TensorShape([None]), state.shape),
        maximum_iterations=records.NUM_PIXELS)
    return done


def connected_regions(mask: tf.Tensor) -> tf.Tensor:
    """Region ids ``[N, H, W]`` float32 of a 0/1 mask ``[N, H, W]``: 0 on background, on each
    8-connected region the largest pixel id (1 + row * W + column) in it."""
    mask = tf.cast(mask, tf.float32)
    shape = tf.shape(mask)
    ids = tf.reshape(tf.range(1, shape[1] * shape[2] + 1, dtype=tf.float32),
                     [1, shape[1], shape[2]])

    def spread(current):
        # The mask is where the ids are: every id is >= 1 and only grows.
        return _neighbourhood_max(current) * tf.cast(current > 0, tf.float32)

    return _iterate_to_fixpoint(spread, mask * ids)


def region_log_odds(probabilities: tf.Tensor) -> tf.Tensor:
    """Each pixel's ``log(p / (1 - p))``, p kept within [1e-7, 1 - 1e-7] (float32 saturates)."""
    p = tf.clip_by_value(probabilities, _PROBABILITY_EPSILON, 1.0 - _PROBABILITY_EPSILON)
    return tf.math.log(p) - tf.math.log1p(-p)


def most_probable_region(mask: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """The 0/1 mask ``[N, H, W]`` float32 of the region of ``mask`` most likely to be the LV:
    the largest summed log-odds (module docstring); all zeros where ``mask`` is empty."""
    regions = connected_regions(mask)
    num_images = tf.shape(regions)[0]
    per_image = tf.shape(regions)[1] * tf.shape(regions)[2] + 1  # id 0 is the background
    segment = tf.cast(regions, tf.int32) + tf.range(num_images)[:, None, None] * per_image
    log_odds = region_log_odds(probabilities) * tf.cast(mask, tf.float32)
    scores = tf.math.unsorted_segment_sum(
        tf.reshape(log_odds, [-1]), tf.reshape(segment, [-1]), num_images * per_image)
    best = tf.argmax(tf.reshape(scores, [num_images, per_image])[:, 1:], axis=1,
                     output_type=tf.int32) + 1
    kept = tf.equal(tf.cast(regions, tf.int32), best[:, None, None])
    return tf.cast(kept, tf.float32)


def convex_hull(mask: tf.Tensor, directions: int = HULL_DIRECTIONS) -> tf.Tensor:
    """The 0/1 mask ``[N, H, W]`` float32 of the convex hull of each image's mask ``[N, H, W]``
    (all zeros where it is empty), by support lines: a pixel is in when, along each of
    ``directions`` unit vectors u evenly spaced around the circle, u . centre is at most the
    largest u . centre over the mask's pixels. That is the polygon circumscribing the hull of the
    pixel centres with edges in those directions: it contains the exact hull and adds a rim of
    pixels where an edge of the exact hull falls between two directions (with 64 directions, at
    most 1 px wide on irregular LV-sized regions, ~2% of the area; 32 directions: 2.2 px, ~4%;
    tests/test_postprocess.py).

    Row by row, so no tensor is larger than ``[N, H, W]`` or ``[N, H, directions]`` (TFMA feeds
    the model batches of hundreds of images): the largest u . centre is reached at a row's
    leftmost or rightmost pixel, and the polygon cuts each row to an interval of columns."""
    mask = tf.cast(mask, tf.float32) > 0
    shape = tf.shape(mask)
    rows = tf.cast(tf.range(shape[1]), tf.float32)[:, None]  # [H, 1]
    columns = tf.cast(tf.range(shape[2]), tf.float32)  # [W]
    far = 1e9  # beyond any coordinate; finite, so 0 * far stays 0
    angles = tf.range(directions, dtype=tf.float32) * (2.0 * math.pi / directions)
    cos, sin = tf.cos(angles), tf.sin(angles)  # [K]
    occupied = tf.reduce_any(mask, axis=2)[..., None]  # [N, H, 1]
    left = tf.reduce_min(tf.where(mask, columns, far), axis=2)[..., None]  # [N, H, 1]
    right = tf.reduce_max(tf.where(mask, columns, -far), axis=2)[..., None]
    reach = tf.maximum(cos * left, cos * right) + sin * rows  # [N, H, K]
    support = tf.reduce_max(tf.where(occupied, reach, -far), axis=1)  # [N, K]
    # In row r: cos * column <= support - sin * r (+ a tolerance for float rounding).
    bound = support[:, None, :] - sin * rows + 1e-3  # [N, H, K]
    upper, lower = cos > 1e-6, cos < -1e-6
    ratio = bound / tf.where(upper | lower, cos, 1.0)
    last = tf.reduce_min(tf.where(upper, ratio, far), axis=2)[..., None]  # [N, H, 1]
    first = tf.reduce_max(tf.where(lower, ratio, -far), axis=2)[..., None]
    row_in = tf.reduce_all(tf.where(upper | lower, True, bound >= 0), axis=2)[..., None]
    return tf.cast((columns >= first) & (columns <= last) & row_in, tf.float32)


def lv_mask(probabilities: tf.Tensor) -> tf.Tensor:
    """The served LV mask ``[N, H, W]`` int32 (1 = LV) from LV probabilities ``[N, H, W]``;
    the steps are in the module docstring."""
    probabilities = tf.convert_to_tensor(probabilities, tf.float32)
    mask = tf.cast(dice.lv_mask(probabilities), tf.float32)
    mask = most_probable_region(mask, probabilities)
    mask = convex_hull(mask)
    return tf.cast(mask, tf.int32)
