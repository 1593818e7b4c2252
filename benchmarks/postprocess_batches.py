"""The served mask's post-processing (``trainer.postprocess.lv_mask``) per image, one image a call
against batches of 32, in process.

    .venv/bin/python benchmarks/postprocess_batches.py [--repeats 15]

Inputs: LV probability maps made from generated slices' expert masks (``dataset.synthetic_data``,
blurred so the edges are soft, plus noise), 32 of them; and the same batch with one slow image,
a one-pixel region winding over 120 rows, whose labelling needs thousands of steps where an LV
needs a few dozen. A batch should cost the sum of its images, so its per-image rate should not
fall below the one-image rate, even with the slow image in it.
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

BATCH = 32


def probability_maps(count: int):
    import numpy as np
    from scipy import ndimage

    from dataset import synthetic_data

    slices = synthetic_data.generate_slices(num_patients=4, slices_per_patient=13, seed=11)
    masks = np.stack([s.mask for s in slices if s.mask.any()][:count]).astype(np.float32)
    rng = np.random.default_rng(0)
    soft = ndimage.gaussian_filter(masks, (0, 2, 2)) + rng.normal(0, 0.05, masks.shape)
    return np.clip(soft, 0.0, 1.0).astype(np.float32)


def winding_region(rows: int = 120, width: int = 120):
    import numpy as np

    from dataset import records

    mask = np.zeros((records.IMAGE_SIZE, records.IMAGE_SIZE), bool)
    for row in range(4, 4 + rows, 2):
        mask[row, 4:4 + width] = True
        column = 4 + width - 1 if (row // 2) % 2 == 0 else 4
        mask[row + 1, column] = row + 2 < 4 + rows
    return np.where(mask, 0.9, 0.05).astype(np.float32)


def images_per_s(function, images, batch: int, repeats: int) -> float:
    import numpy as np
    import tensorflow as tf

    function(tf.constant(images[:batch]))  # traced and warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(images), batch):
            function(tf.constant(images[start:start + batch])).numpy()
        times.append(time.perf_counter() - started)
    return round(len(images) / float(np.median(times)), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from trainer import tf_env  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    from dataset import records
    from trainer import postprocess

    size = records.IMAGE_SIZE
    function = tf.function(postprocess.lv_mask,
                           input_signature=[tf.TensorSpec([None, size, size], tf.float32)])
    typical = probability_maps(BATCH)
    with_slow = typical.copy()
    with_slow[0] = winding_region()
    result = {}
    for name, images in (("lv_masks", typical), ("one_slow_image", with_slow)):
        one = images_per_s(function, images, 1, args.repeats)
        batched = images_per_s(function, images, BATCH, args.repeats)
        result[name] = {"batch_1_images_per_s": one, f"batch_{BATCH}_images_per_s": batched,
                        "batch_over_single": common.ratio(batched, one)}
    common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
