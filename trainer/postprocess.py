"""From per-pixel LV probabilities to the LV mask a service receives, inside the TF graph.

A short-axis slice holds one LV blood pool: one solid region. A network trained on a few patients
also answers with a second bright blob now and then (the RV, the aorta) and with holes and bites
where dark papillary muscles and trabeculae lie inside the pool; the expert contour (Sunnybrook's
i-contour, as in the field's convention) includes them and is convex: each of the 56 expert masks
of the real subset covers at least 94.9% of its convex hull (:func:`convex_hull`), 99.7% on
average. So the mask is:

1. ``probability > 0.5`` (:data:`trainer.dice.LV_PROBABILITY_THRESHOLD`);
2. only the connected region (8-connectivity) with the largest summed probability: the
   network's most confident blob, not merely the widest;
3. the convex hull of that region (:func:`convex_hull`), which fills the holes and bites the
   papillary muscles and trabeculae leave.

Everything is TensorFlow ops (connected regions by an iterated 3x3 maximum of pixel ids, the hull
by support lines), so the serving signatures, the Evaluator and TF Serving run the very same code;
:mod:`trainer.signatures` applies it. Measured on real Sunnybrook patients: README, "Training on
real patients".
"""
import math

import tensorflow as tf

from trainer import dice, records

# Directions of the support lines that bound the hull (a multiple of 4, so rows and columns are
# among them and the hull never leaves the region's bounding box).
HULL_DIRECTIONS = 64
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
    """Applies ``step`` until ``state`` stops changing (checked every few steps)."""

    def body(current, _):
        updated = current
        for _ in range(_STEPS_PER_CHECK):
            updated = step(updated)
        return updated, tf.reduce_any(tf.not_equal(updated, current))

    state, _ = tf.while_loop(lambda _, changed: changed, body, (state, tf.constant(True)),
                             maximum_iterations=records.NUM_PIXELS)
    return state


def connected_regions(mask: tf.Tensor) -> tf.Tensor:
    """Region ids ``[N, H, W]`` float32 of a 0/1 mask ``[N, H, W]``: 0 on background, on each
    8-connected region the largest pixel id (1 + row * W + column) in it."""
    mask = tf.cast(mask, tf.float32)
    shape = tf.shape(mask)
    ids = tf.reshape(tf.range(1, shape[1] * shape[2] + 1, dtype=tf.float32),
                     [1, shape[1], shape[2]])

    def spread(current):
        return _neighbourhood_max(current) * mask

    return _iterate_to_fixpoint(spread, mask * ids)


def most_probable_region(mask: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """The 0/1 mask ``[N, H, W]`` float32 of the region of ``mask`` with the largest summed
    probability (all zeros where ``mask`` is empty)."""
    regions = connected_regions(mask)
    num_images = tf.shape(regions)[0]
    per_image = tf.shape(regions)[1] * tf.shape(regions)[2] + 1  # id 0 is the background
    segment = tf.cast(regions, tf.int32) + tf.range(num_images)[:, None, None] * per_image
    scores = tf.math.unsorted_segment_sum(
        tf.reshape(probabilities * tf.cast(mask, tf.float32), [-1]), tf.reshape(segment, [-1]),
        num_images * per_image)
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
    tests/test_postprocess.py). Cost: about 2 ms for one slice's LV box on a CPU."""
    mask = tf.cast(mask, tf.float32)
    shape = tf.shape(mask)
    angles = tf.range(directions, dtype=tf.float32) * (2.0 * math.pi / directions)
    rows = tf.cast(tf.range(shape[1]), tf.float32)[:, None, None]
    columns = tf.cast(tf.range(shape[2]), tf.float32)[None, :, None]
    projections = (rows * tf.sin(angles) + columns * tf.cos(angles))[None]  # [1, H, W, K]
    support = tf.reduce_max(
        tf.where(mask[..., None] > 0, projections, float("-inf")), axis=[1, 2])  # [N, K]
    # The tolerance keeps pixels on a support line in despite float rounding (|values| < 400).
    inside = tf.reduce_all(projections <= support[:, None, None, :] + 1e-3, axis=-1)
    return tf.cast(inside, tf.float32)


def _on_bounding_box(mask: tf.Tensor, operation) -> tf.Tensor:
    """``operation`` applied to the box around every LV pixel of the batch instead of the whole
    image: the same result for an operation that adds no LV outside that box (the convex hull),
    at a fraction of the cost when the LV is small."""
    shape = tf.shape(mask, out_type=tf.int64)
    rows = tf.where(tf.reduce_any(mask > 0, axis=[0, 2]))[:, 0]
    columns = tf.where(tf.reduce_any(mask > 0, axis=[0, 1]))[:, 0]

    def on_box():
        top, left = tf.reduce_min(rows), tf.reduce_min(columns)
        bottom, right = tf.reduce_max(rows) + 1, tf.reduce_max(columns) + 1
        result = operation(mask[:, top:bottom, left:right])
        result = tf.pad(result, [[0, 0], [top, shape[1] - bottom], [left, shape[2] - right]])
        return tf.reshape(result, shape)

    return tf.cond(tf.size(rows) > 0, on_box, lambda: mask)


def lv_mask(probabilities: tf.Tensor) -> tf.Tensor:
    """The served LV mask ``[N, H, W]`` int32 (1 = LV) from LV probabilities ``[N, H, W]``;
    the steps are in the module docstring."""
    probabilities = tf.convert_to_tensor(probabilities, tf.float32)
    mask = tf.cast(dice.lv_mask(probabilities), tf.float32)
    mask = most_probable_region(mask, probabilities)
    mask = _on_bounding_box(mask, convex_hull)
    return tf.cast(mask, tf.int32)
