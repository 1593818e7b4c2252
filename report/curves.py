"""Training curves from the Trainer's TensorBoard logs (Keras' TensorBoard callback in run_fn).

The Trainer writes ``<model_run>/train/events.*`` and ``<model_run>/validation/events.*``, one
scalar per epoch per metric (``epoch_loss``, ``epoch_dice``, ...). :func:`read_curves` returns
``{"train": {"loss": [(epoch, value), ...], "dice": [...]}, "validation": {...}}``.
"""
import glob
import os
from typing import Dict, List, Tuple

import numpy as np

EPOCH_PREFIX = "epoch_"
SPLITS = ("train", "validation")

Curves = Dict[str, Dict[str, List[Tuple[int, float]]]]


def _scalar(value) -> float:
    import tensorflow as tf
    if value.HasField("tensor"):
        return float(np.asarray(tf.make_ndarray(value.tensor)).reshape(()))
    return float(value.simple_value)


def read_event_file(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """The ``epoch_*`` scalars of one event file: metric name -> [(epoch, value)] by epoch."""
    import tensorflow as tf
    series: Dict[str, Dict[int, float]] = {}
    for record in tf.data.TFRecordDataset(path):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.tag.startswith(EPOCH_PREFIX):
                name = value.tag[len(EPOCH_PREFIX):]
                series.setdefault(name, {})[int(event.step)] = _scalar(value)
    return {name: sorted(points.items()) for name, points in series.items()}


def read_curves(model_run_dir: str) -> Curves:
    """Every split's curves; splits without event files are left out."""
    curves: Curves = {}
    for split in SPLITS:
        merged: Dict[str, Dict[int, float]] = {}
        for path in sorted(glob.glob(os.path.join(model_run_dir, split, "events.out.tfevents.*"))):
            for name, points in read_event_file(path).items():
                merged.setdefault(name, {}).update(points)
        if merged:
            curves[split] = {name: sorted(points.items()) for name, points in merged.items()}
    return curves
