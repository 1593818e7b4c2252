"""The served mask's post-processing (trainer.postprocess) and flip averaging (trainer.tta).

Hand-built masks where the answer is known, and random masks checked against SciPy's
reference implementations of the same operations.
"""
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from trainer import tf_env  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from trainer import postprocess, tta  # noqa: E402
from dataset import records

SIZE = records.IMAGE_SIZE
YY, XX = np.mgrid[0:SIZE, 0:SIZE]


def disk(cy, cx, radius):
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= radius ** 2


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


def snake(rows=40, width=40):
    """A one-pixel path winding down ``rows`` rows: its region needs ~rows x width / 2 labelling
    steps, against a few dozen for an LV-sized disk."""
    mask = np.zeros((SIZE, SIZE), bool)
    for row in range(4, 4 + rows, 2):
        mask[row, 4:4 + width] = True
        column = 4 + width - 1 if (row // 2) % 2 == 0 else 4
        mask[row + 1, column] = row + 2 < 4 + rows
    return mask


def test_a_batch_labels_each_image_as_alone_however_long_each_takes():
    """Each image stops when it has converged, while the others go on: a batch of a slow
    image (the snake), quick ones and an empty one gives what each image alone gives."""
    masks = np.stack([disk(60, 60, 12), snake(), np.zeros((SIZE, SIZE), bool),
                      disk(200, 40, 3) | disk(100, 150, 30)] + list(random_masks(4)))
    batch = postprocess.connected_regions(tf.constant(masks)).numpy()
    for index, mask in enumerate(masks):
        alone = postprocess.connected_regions(tf.constant(mask[None])).numpy()[0]
        np.testing.assert_array_equal(batch[index], alone, err_msg=f"image {index}")
    assert len(np.unique(batch[1])) == 2  # the snake is one region
    assert batch[2].max() == 0


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


def test_a_confident_region_wins_over_a_wider_less_certain_one_with_more_summed_probability():
    # an apical slice: a small LV at p = 0.99 above a bright stomach twice its size at p = 0.85,
    # whose summed probability is larger (2 * 0.85 > 0.99); its log-odds sum is not
    # (2 * 1.73 < 4.6)
    lv = disk(100, 128, 12)
    stomach = disk(170, 128, 17)
    assert stomach.sum() * 0.85 > lv.sum() * 0.99
    probabilities = np.where(lv, 0.99, np.where(stomach, 0.85, 0.05)).astype(np.float32)
    served = postprocess.lv_mask(tf.constant(probabilities[None])).numpy()[0]
    np.testing.assert_array_equal(served > 0, lv)


def test_saturated_probabilities_give_finite_log_odds():
    log_odds = postprocess.region_log_odds(tf.constant([0.0, 0.5, 1.0])).numpy()
    assert np.isfinite(log_odds).all()
    assert log_odds[0] < 0 and log_odds[1] == 0 and log_odds[2] > 0


def exact_hull(mask):
    """The pixels whose centres lie in the convex hull of the mask's pixel centres (SciPy)."""
    points = np.argwhere(mask).astype(float)
    equations = ConvexHull(points).equations  # inside: normal . point + offset <= 0
    centres = np.argwhere(np.ones_like(mask)).astype(float)
    inside = (centres @ equations[:, :2].T + equations[:, 2] <= 1e-9).all(axis=1)
    return inside.reshape(mask.shape)


def blobs(seed):
    """Random irregular LV-sized regions: the largest 8-connected region of smoothed noise
    within a disk of radius 30."""
    result = []
    for mask in random_masks(seed, count=4) & disk(128, 128, 30):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        result.append(labels == 1 + np.argmax(ndimage.sum(mask, labels, range(1, count + 1))))
    return np.stack(result)


def test_convex_hull_holds_the_exact_hull_and_barely_more():
    masks = np.concatenate([blobs(1), blobs(2)])
    hulls = postprocess.convex_hull(tf.constant(masks)).numpy() > 0.5
    for mask, hull in zip(masks, hulls):
        exact = exact_hull(mask)
        assert hull[exact].all()
        # The support lines circumscribe the exact hull: at most a rim a pixel wide more.
        extra = hull & ~exact
        assert extra.sum() <= 0.05 * exact.sum()
        assert not extra.any() or ndimage.distance_transform_edt(~exact)[extra].max() <= 1.0
    assert sum(exact_hull(mask).sum() - mask.sum() for mask in masks) > 1000  # irregular


def test_convex_hull_hand_checked_shapes():
    rectangle = (YY >= 10) & (YY < 30) & (XX >= 40) & (XX < 100)
    ell = (YY >= 100) & (YY < 121) & (XX >= 100) & (XX < 121)
    ell &= ~((YY > 110) & (XX > 110))  # a 21x21 square missing its lower-right 10x10 quadrant
    ring = disk(180, 180, 20) & ~disk(180, 180, 10)
    bitten = disk(180, 60, 20) & ~((abs(YY - 180) <= 2) & (XX >= 70))  # a slot 10 px deep
    point = (YY == 250) & (XX == 3)
    hulls = postprocess.convex_hull(tf.constant(
        np.stack([rectangle, ell, ring, bitten, point, np.zeros_like(point)]))).numpy() > 0.5
    np.testing.assert_array_equal(hulls[0], rectangle)
    # The missing quadrant's corner is cut by the diagonal from (110, 120) to (120, 110).
    np.testing.assert_array_equal(hulls[1], (YY >= 100) & (YY < 121) & (XX >= 100) & (XX < 121)
                                  & (YY + XX <= 230))
    np.testing.assert_array_equal(hulls[2], disk(180, 180, 20))
    assert hulls[3][disk(180, 60, 19)].all() and not hulls[3][~disk(180, 60, 20.5)].any()
    np.testing.assert_array_equal(hulls[4], point)
    assert not hulls[5].any()


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
    # The hull closes the slot up to the chord across its mouth, on the pool's outline.
    assert mask[bite & disk(128, 128, 24)].all()
    assert mask[disk(128, 128, 24)].all() and not mask[~disk(128, 128, 25.5)].any()


def test_lv_mask_equals_the_same_steps_in_scipy():
    """The served mask against the same steps done with SciPy: threshold, the 8-connected region
    with the largest log-odds sum; then its convex hull holds SciPy's exact hull of that region."""
    rng = np.random.default_rng(4)
    probabilities = ndimage.gaussian_filter(rng.random((4, SIZE, SIZE)), (0, 4, 4))
    probabilities = np.clip((probabilities - 0.5) * 12 + 0.5, 0, 1).astype(np.float32)
    probabilities[3] = 0.1  # one image without LV in the batch
    masks = postprocess.lv_mask(tf.constant(probabilities)).numpy().astype(bool)
    for probability, mask in zip(probabilities, masks):
        labels, count = ndimage.label(probability > 0.5, structure=np.ones((3, 3)))
        if count == 0:
            assert not mask.any()
            continue
        p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
        scores = ndimage.sum(np.log(p / (1 - p)), labels, range(1, count + 1))
        region = labels == 1 + int(np.argmax(scores))
        assert mask[exact_hull(region)].all()
        np.testing.assert_array_equal(
            mask, postprocess.convex_hull(tf.constant(region[None])).numpy()[0] > 0.5)


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
