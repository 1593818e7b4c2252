"""Per-image evaluation of a model on the eval split: what the report's histogram and overlays show.

TFMA (the Evaluator) gives the gate's aggregate and sliced metrics; the report also needs every
image's Dice and the pictures of the best and the worst ones, so this runs the exported model's
``serving_raw_image`` signature (the transform graph included, as a served request) over the eval
records and scores each image with :func:`trainer.dice.dice_per_image` and buckets it with
:func:`trainer.slices.lv_size_bucket`: the same functions the Evaluator and training use.

Memory stays bounded: scores are kept for every image, pixels only for the ``keep`` best and worst.
"""
import dataclasses
import glob
import heapq
import os
import sys
from typing import Iterator, List, Optional, Tuple

import numpy as np

from dataset import records

BATCH_SIZE = 8
DEFAULT_MAX_IMAGES = 2000
DEFAULT_KEEP = 4


@dataclasses.dataclass
class ImageScore:
    name: str
    patient_id: Optional[str]
    lv_size: str
    dice: float
    expert_pixels: int
    predicted_pixels: int
    area_error_mm2: Optional[float]  # |predicted - expert| LV area, when the spacing is known


@dataclasses.dataclass
class Picture:
    score: ImageScore
    image: np.ndarray  # [256, 256] pixel values
    expert: np.ndarray  # [256, 256] 0/1
    predicted: np.ndarray  # [256, 256] 0/1


@dataclasses.dataclass
class PerImageResult:
    scores: List[ImageScore]
    best: List[Picture]  # highest Dice among slices with an expert LV, best first
    worst: List[Picture]  # lowest Dice among all slices, worst first
    truncated: bool  # stopped at max_images


def eval_record_files(examples_uri: str, split: str = "eval") -> List[str]:
    """The record files of one split of an Examples artifact (``Split-<name>/*``)."""
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise FileNotFoundError(f"no records in {examples_uri}/Split-{split}")
    return files


def _slices(files: List[str]) -> Iterator[records.Slice]:
    for path in files:
        yield from records.iter_lab_records(path)


def _batches(items: Iterator[records.Slice], size: int) -> Iterator[List[records.Slice]]:
    batch: List[records.Slice] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_predictor(saved_model_dir: str):
    """``image [N, 256, 256] int64 -> served LV masks [N, 256, 256]`` of an exported model (the
    post-processed ``mask`` output: what services receive and the Evaluator scores)."""
    import tensorflow as tf
    from trainer import signatures
    loaded = tf.saved_model.load(saved_model_dir)
    function = loaded.signatures[signatures.SERVING_RAW_IMAGE]

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = function(**{signatures.IMAGE_INPUT: tf.constant(images, tf.int64)})
        return outputs[signatures.MASK_OUTPUT].numpy()

    predict.keep_alive = loaded  # the signature needs its SavedModel object alive
    return predict


def evaluate(predict, files: List[str], max_images: int = DEFAULT_MAX_IMAGES,
             keep: int = DEFAULT_KEEP, progress: bool = True) -> PerImageResult:
    """Scores every image of ``files`` (up to ``max_images``) with ``predict``."""
    from serving import predict as predict_lib
    from trainer import dice, slices
    from tqdm import tqdm

    scores: List[ImageScore] = []
    # Heaps of (key, counter, Picture): the counter breaks ties without comparing arrays.
    best: List[Tuple[float, int, Picture]] = []
    worst: List[Tuple[float, int, Picture]] = []
    truncated = False
    bar = tqdm(desc="report: scoring eval images", unit="img",
               disable=not progress, file=sys.stderr, leave=False)
    for batch in _batches(_slices(files), BATCH_SIZE):
        if len(scores) >= max_images:
            truncated = True
            break
        batch = batch[:max_images - len(scores)]
        images = np.stack([item.image for item in batch])
        labels = np.stack([item.mask for item in batch]).astype(np.int64)
        predicted = np.asarray(predict(images)).astype(np.uint8)
        dice_values = dice.dice_per_image(labels, predicted).numpy()
        buckets = [b.decode() for b in slices.lv_size_bucket(labels).numpy()]
        for index, item in enumerate(batch):
            expert_pixels, expert_mm2 = predict_lib.lv_area(labels[index], item.pixel_spacing)
            predicted_pixels, predicted_mm2 = predict_lib.lv_area(predicted[index],
                                                                  item.pixel_spacing)
            area_error = (None if expert_mm2 is None
                          else abs(predicted_mm2 - expert_mm2))
            score = ImageScore(name=item.name, patient_id=item.patient_id,
                               lv_size=buckets[index], dice=float(dice_values[index]),
                               expert_pixels=expert_pixels, predicted_pixels=predicted_pixels,
                               area_error_mm2=area_error)
            scores.append(score)
            picture = None

            def push(heap, key):
                nonlocal picture
                picture = picture or Picture(score, item.image, item.mask, predicted[index])
                entry = (key, len(scores), picture)
                if len(heap) < keep:
                    heapq.heappush(heap, entry)
                elif key > heap[0][0]:
                    heapq.heapreplace(heap, entry)

            if expert_pixels > 0:
                push(best, score.dice)
            push(worst, -score.dice)
        bar.update(len(batch))
    bar.close()
    return PerImageResult(
        scores=scores,
        best=[entry[2] for entry in sorted(best, key=lambda e: (-e[0], e[1]))],
        worst=[entry[2] for entry in sorted(worst, key=lambda e: (-e[0], e[1]))],
        truncated=truncated)
