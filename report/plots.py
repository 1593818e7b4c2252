"""The report's pictures, as PNG files (matplotlib, no display needed).

Colours in the overlays: the expert contour in green, the model's in red, yellow where they meet.
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from report.curves import Curves
from report.per_image import ImageScore, Picture

EXPERT_RGB = (40, 220, 40)
PREDICTED_RGB = (255, 40, 40)
BOTH_RGB = (255, 230, 0)
DPI = 100


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot
    return pyplot


def _save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)
    return path


def training_curves(curves: Curves, path: str) -> Optional[str]:
    """Loss and Dice per epoch, training and validation; None when there are no curves."""
    metrics = [name for name in ("loss", "dice")
               if any(name in split for split in curves.values())]
    if not metrics:
        return None
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.4), squeeze=False)
    for axis, name in zip(axes[0], metrics):
        for split, style in (("train", "-o"), ("validation", "-s")):
            points = curves.get(split, {}).get(name)
            if points:
                epochs, values = zip(*points)
                axis.plot([e + 1 for e in epochs], values, style, label=split, markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)


def slice_bars(rows: Sequence[Dict[str, object]], path: str, metric: str = "dice",
               title: str = "") -> Optional[str]:
    """Bars of ``metric`` per slice: candidate, and baseline when known. ``rows``: dicts with
    ``label``, ``candidate``, ``baseline`` (or None) and ``count``."""
    rows = [row for row in rows if row.get("candidate") is not None]
    if not rows:
        return None
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(max(4.5, 1.2 * len(rows) + 2), 3.4))
    positions = np.arange(len(rows))
    has_baseline = any(row.get("baseline") is not None for row in rows)
    width = 0.38 if has_baseline else 0.6
    candidate = [row["candidate"] for row in rows]
    bars = axis.bar(positions - (width / 2 if has_baseline else 0), candidate, width,
                    label="candidate", color="#3465a4")
    if has_baseline:
        axis.bar(positions + width / 2, [row.get("baseline") or 0.0 for row in rows], width,
                 label="baseline (serving)", color="#babdb6")
        axis.legend(loc="lower right")
    for bar, row in zip(bars, rows):
        axis.annotate(f"{row['candidate']:.3f}\nn={row.get('count', '?')}",
                      (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8)
    axis.set_xticks(positions, [str(row["label"]) for row in rows])
    axis.set_ylim(0, 1.15)
    axis.set_ylabel(metric)
    axis.set_title(title or f"{metric} per slice")
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def dice_histogram(scores: List[ImageScore], path: str) -> Optional[str]:
    """Histogram of per-image Dice, stacked by LV size bucket."""
    if not scores:
        return None
    from trainer import slices
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(6, 3.4))
    groups = [[s.dice for s in scores if s.lv_size == bucket] for bucket in slices.LV_SIZE_BUCKETS]
    labels = [f"{bucket} ({len(group)})" for bucket, group in zip(slices.LV_SIZE_BUCKETS, groups)]
    axis.hist(groups, bins=np.linspace(0.0, 1.0, 21), stacked=True, label=labels)
    axis.set_xlabel("Dice of one image")
    axis.set_ylabel("images")
    axis.set_title(f"per-image Dice, {len(scores)} eval images")
    axis.legend(title="LV size", fontsize=8)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def overlay_image(picture: Picture) -> np.ndarray:
    """The slice in grey with the expert contour (green) and the predicted one (red)."""
    from serving import predict
    rgb = predict.grey_rgb(picture.image)
    expert = predict.lv_contour(picture.expert)
    predicted = predict.lv_contour(picture.predicted)
    rgb[expert] = EXPERT_RGB
    rgb[predicted] = PREDICTED_RGB
    rgb[expert & predicted] = BOTH_RGB
    return rgb


def write_overlay(picture: Picture, path: str, scale: int = 2) -> str:
    from PIL import Image
    image = Image.fromarray(overlay_image(picture))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return path


def file_name(path: Optional[str]) -> Optional[str]:
    return os.path.basename(path) if path else None
