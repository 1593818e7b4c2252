"""The served mask's post-processing (trainer.postprocess) and flip averaging (trainer.tta).

Hand-built masks where the answer is known, and random masks checked against SciPy's
reference implementations of the same operations.
"""
import numpy as np
import pytest
from scipy import ndimage

from trainer import tf_env  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from trainer import postprocess, records, tta  # noqa: E402

SIZE = records.IMAGE_SIZE
YY, XX = np.mgrid[0:SIZE, 0:SIZE]


def disk(cy, cx, radius):
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= radius ** 2


def structuring_disk(radius):
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def random_masks(seed, count=3):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((count, SIZE, SIZE)), (0, 3, 3)) > 0.52


def test_connected_regions_match_scipy_8_connectivity():
    masks = random_masks(0)
    regions = postprocess.connected_regions(tf.constant(masks)).numpy()
    for mask, ids in zip(masks, regions):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count > 10
        assert len(np.unique(ids[mask])) == count
        assert not ids[~mask].any()
        # Same partition: each SciPy region carries exactly one id, and no id spans two regions.
        for label in range(1, count + 1):
            assert len(np.unique(ids[labels == label])) == 1
        assert len({(labels[i], ids[i]) for i in zip(*np.nonzero(mask))}) == count


def test_diagonal_neighbours_are_one_region():
    mask = np.zeros((1, SIZE, SIZE), bool)
    mask[0, 10, 10] = mask[0, 11, 11] = mask[0, 12, 12] = True
    regions = postprocess.connected_regions(tf.constant(mask)).numpy()
    assert len(np.unique(regions[mask])) == 1


def test_the_most_probable_region_wins_not_the_largest():
    large = disk(60, 60, 6)  # 113 px at 0.6: 67.8
    confident = disk(150, 150, 5)  # 81 px at 0.99: 80.2
    probabilities = np.where(large, 0.6, np.where(confident, 0.99, 0.1)).astype(np.float32)
    mask = (probabilities > 0.5)[None].astype(np.float32)
    kept = postprocess.most_probable_region(tf.constant(mask),
                                            tf.constant(probabilities[None])).numpy()[0]
    np.testing.assert_array_equal(kept > 0.5, confident)


def test_fill_holes_matches_scipy_and_keeps_open_bays():
    masks = random_masks(1)
    filled = postprocess.fill_holes(tf.constant(masks.astype(np.float32))).numpy()
    for mask, result in zip(masks, filled):
        np.testing.assert_array_equal(result > 0.5, ndimage.binary_fill_holes(mask))
    ring = disk(100, 100, 20) & ~disk(100, 100, 10)
    bay = ring & ~((YY > 95) & (YY < 105) & (XX > 100))  # the ring cut open to the right
    filled = postprocess.fill_holes(tf.constant(np.stack([ring, bay]).astype(np.float32))).numpy()
    np.testing.assert_array_equal(filled[0] > 0.5, disk(100, 100, 20))
    np.testing.assert_array_equal(filled[1] > 0.5, bay)


def test_hole_touching_the_image_border_is_not_a_hole():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[0:20, 0:20] = True
    mask[0:5, 5:10] = False  # a notch open to the top border
    filled = postprocess.fill_holes(tf.constant(mask[None].astype(np.float32))).numpy()[0]
    np.testing.assert_array_equal(filled > 0.5, mask)


@pytest.mark.parametrize("radius", [3, postprocess.CLOSING_RADIUS])
def test_closing_matches_scipy_with_a_disk(radius):
    masks = random_masks(2)
    closed = postprocess.close(tf.constant(masks.astype(np.float32)), radius).numpy()
    for mask, result in zip(masks, closed):
        expected = ndimage.binary_closing(np.pad(mask, radius), structuring_disk(radius))
        np.testing.assert_array_equal(result > 0.5, expected[radius:-radius, radius:-radius])


def test_lv_mask_hand_checked_case():
    """A blood pool with a bite at its edge and a dark papillary muscle inside, plus a weaker
    bright blob elsewhere (an RV): one solid pool comes out."""
    pool = disk(128, 128, 25)
    bite = (abs(YY - 128) <= 2) & (XX >= 143)  # a trabecular slot, 5 px wide, 10 px deep
    papillary = disk(120, 120, 3)
    rv = disk(128, 60, 12)
    probabilities = np.full((SIZE, SIZE), 0.05, np.float32)
    probabilities[pool & ~bite & ~papillary] = 0.95
    probabilities[rv] = 0.7
    mask = postprocess.lv_mask(tf.constant(probabilities[None])).numpy()[0]
    assert mask.dtype == np.int32
    assert not mask[rv].any()
    assert mask[papillary].all()
    # The closing fills the slot, except at its mouth, where the pool's outline curves away
    # and a disk of radius 6 reaches in a little.
    assert mask[bite & disk(128, 128, 23)].all()
    assert not mask[bite & ~disk(128, 128, 25)].any()
    assert not mask[~disk(128, 128, 26)].any()


def test_lv_mask_equals_the_same_steps_in_scipy():
    """The served mask (computed on the LV's bounding box) against the steps done on the whole
    image with SciPy: threshold, most probable 8-connected region, closing, holes filled."""
    rng = np.random.default_rng(4)
    probabilities = ndimage.gaussian_filter(rng.random((4, SIZE, SIZE)), (0, 4, 4))
    probabilities = np.clip((probabilities - 0.5) * 12 + 0.5, 0, 1).astype(np.float32)
    probabilities[3] = 0.1  # one image without LV in the batch
    masks = postprocess.lv_mask(tf.constant(probabilities)).numpy()
    radius = postprocess.CLOSING_RADIUS
    for probability, mask in zip(probabilities, masks):
        labels, count = ndimage.label(probability > 0.5, structure=np.ones((3, 3)))
        if count == 0:
            assert not mask.any()
            continue
        scores = ndimage.sum(probability, labels, range(1, count + 1))
        region = labels == 1 + int(np.argmax(scores))
        closed = ndimage.binary_closing(np.pad(region, radius), structuring_disk(radius))
        expected = ndimage.binary_fill_holes(closed[radius:-radius, radius:-radius])
        np.testing.assert_array_equal(mask, expected)


def test_lv_mask_of_nothing_is_empty():
    probabilities = np.full((2, SIZE, SIZE), 0.2, np.float32)
    assert postprocess.lv_mask(tf.constant(probabilities)).numpy().sum() == 0


def test_lv_mask_works_inside_a_tf_function_with_an_unknown_batch():
    function = tf.function(postprocess.lv_mask,
                           input_signature=[tf.TensorSpec([None, SIZE, SIZE], tf.float32)])
    probabilities = np.where(disk(50, 50, 10), 0.9, 0.1).astype(np.float32)
    masks = function(tf.constant(np.stack([probabilities, probabilities[::-1]]))).numpy()
    np.testing.assert_array_equal(masks[0], disk(50, 50, 10))
    np.testing.assert_array_equal(masks[1], disk(50, 50, 10)[::-1])


def test_flip_averaged_probability_is_the_mean_of_the_four_flipped_back_views():
    tf.keras.utils.set_random_seed(3)
    # Not flip-equivariant (an asymmetric kernel and a position-dependent input), so each view
    # gives a different answer and a wrong un-flip would show.
    inputs = tf.keras.Input((SIZE, SIZE, 1))
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(records.NUM_CLASSES, 5,
                                                          padding="same")(inputs))
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype(np.float32)
    averaged = tta.flip_averaged_probability(model, tf.constant(images)).numpy()

    def probability(batch):
        return tf.nn.softmax(model(batch), axis=-1)[..., 1].numpy()

    expected = (probability(images)
                + probability(images[:, :, ::-1])[:, :, ::-1]
                + probability(images[:, ::-1])[:, ::-1]
                + probability(images[:, ::-1, ::-1])[:, ::-1, ::-1]) / 4
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    assert not np.allclose(averaged, probability(images), atol=1e-3)
