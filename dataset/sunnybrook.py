"""Sunnybrook Cardiac Data (SCD): cine MRI DICOMs + expert LV contours -> lab-schema slices.

Two layouts are read (``find_labelled_slices``):

- the re-packaged subset (``../shared/data/sunnybrook-subset``)::

      dicoms/<patient_id>/<N>.dcm
      contourfiles/<original_id>/i-contours/IM-0001-NNNN-icontour-manual.txt
      link.csv                                  patient_id,original_id

- the original SCD release::

      SCD_DeidentifiedImages/<case>/IM-SSSS-NNNN.dcm
      SCD_ManualContours/<case>/contours-manual/IRCCI-expert/IM-0001-NNNN-icontour-manual.txt

A contour's *case* is the first folder under the contour root. It names a DICOM folder directly,
or through the link file (``patient_id,original_id`` rows: DICOM folder, contour folder). Within
the case, ``IM-xxxx-NNNN`` pairs with the DICOM whose header InstanceNumber is NNNN, whatever the
DICOM file is called; when several series share that number, the one whose file name carries
the contour's series (``IM-SSSS-``) is taken.

Masks (``contour_to_mask``): the contour is a closed polygon in pixel coordinates, x = column and
y = row, with pixel (r, c) centred at (x=c, y=r). A pixel is LV when its centre lies inside the
polygon by the even-odd rule; a centre exactly on a left or top edge counts as inside, on a right
or bottom edge as outside (the half-open crossing test), so two polygons sharing an edge never
both claim a pixel.

Images that are not 256x256 are centre-cropped or zero-padded to 256x256 (the same window for
image and mask; pixel spacing is unchanged). The pixel spacing, patient and slice location are
kept in each record (``dataset.records`` optional features).

Bad input is skipped, never fatal, and counted by reason (``SKIP_REASONS``).
"""
import collections
import csv
import dataclasses
import glob
import json
import os
import re
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from dataset import dicom, records

DEFAULT_EVAL_FRACTION = 0.25  # share of patients in the eval split (at least one patient)
DEFAULT_SEED = 42
CONTOUR_GLOB = "*-icontour-manual.txt"
SUMMARY_FILE = "ingest_summary.json"
_CONTOUR_NAME = re.compile(r"^IM-(\d+)-(\d+)-icontour-manual\.txt$")
# A contour point further than this share of the image size outside the image is a corrupt file,
# not an LV touching the border.
OFF_IMAGE_TOLERANCE = 0.1

SKIP_REASONS = {
    "unreadable_dicom": "not a readable DICOM file",
    "no_pixel_data": "DICOM without pixel data",
    "not_mr": "DICOM modality is not MR",
    "multi_frame": "multi-frame DICOM (one slice per file expected)",
    "not_2d": "pixel data is not a 2-D image",
    "unreadable_contour": "contour file could not be parsed",
    "too_few_points": "contour with fewer than 3 points",
    "points_off_image": "contour points far outside the image",
    "contour_without_dicom": "no DICOM of the case has the contour's InstanceNumber",
    "ambiguous_dicom": "several DICOMs of the case have the contour's InstanceNumber",
}


@dataclasses.dataclass(frozen=True)
class ContourPair:
    """One expert contour and the DICOM it belongs to."""

    patient_id: str  # the DICOM folder's name
    instance_number: int
    dicom_path: str
    contour_path: str


@dataclasses.dataclass
class IngestReport:
    """What was read, what was skipped and why (``skipped[reason]`` = list of paths)."""

    pairs: int = 0
    slices: int = 0
    unlabelled_dicoms: int = 0
    cropped_or_padded: int = 0
    skipped: Dict[str, List[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list))

    def skip(self, reason: str, path: str) -> None:
        assert reason in SKIP_REASONS, reason
        self.skipped[reason].append(path)

    def as_dict(self) -> dict:
        return {"contour_dicom_pairs": self.pairs, "slices": self.slices,
                "unlabelled_dicoms": self.unlabelled_dicoms,
                "cropped_or_padded": self.cropped_or_padded,
                "skipped": {reason: {"count": len(paths), "why": SKIP_REASONS[reason],
                                     "files": sorted(paths)}
                            for reason, paths in sorted(self.skipped.items())}}


def read_link_file(path: Optional[str]) -> Dict[str, str]:
    """contour folder (``original_id``) -> DICOM folder (``patient_id``)."""
    if not path:
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"patient_id", "original_id"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns patient_id,original_id")
    return {row["original_id"].strip(): row["patient_id"].strip() for row in rows}


def _read_header(path: str):
    import pydicom
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises InvalidDicomError, OSError, struct errors, ...
        return None


def _dicom_files(folder: str) -> List[str]:
    return sorted(path for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if os.path.isfile(path) and not path.endswith((".txt", ".csv", ".json")))


def index_dicoms(folder: str, report: IngestReport) -> Dict[int, List[str]]:
    """InstanceNumber -> DICOM paths of one case, from the headers."""
    by_instance: Dict[int, List[str]] = collections.defaultdict(list)
    for path in _dicom_files(folder):
        header = _read_header(path)
        if header is None or "InstanceNumber" not in header:
            report.skip("unreadable_dicom", path)
            continue
        by_instance[int(header.InstanceNumber)].append(path)
    return by_instance


def find_labelled_slices(dicom_root: str, contour_root: str, link_path: Optional[str],
                         report: IngestReport) -> List[ContourPair]:
    """Pairs every i-contour under ``contour_root`` with its DICOM (see the module docstring)."""
    for root, what in ((dicom_root, "DICOM root"), (contour_root, "contour root")):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{what} {root} does not exist")
    link = read_link_file(link_path)
    contours = sorted(glob.glob(os.path.join(contour_root, "**", CONTOUR_GLOB), recursive=True))
    indexes: Dict[str, Dict[int, List[str]]] = {}
    pairs = []
    for contour_path in contours:
        case = os.path.relpath(contour_path, contour_root).split(os.sep)[0]
        patient_id = link.get(case, case)
        match = _CONTOUR_NAME.match(os.path.basename(contour_path))
        if match is None:
            report.skip("unreadable_contour", contour_path)
            continue
        series, instance = match.group(1), int(match.group(2))
        if patient_id not in indexes:
            indexes[patient_id] = index_dicoms(os.path.join(dicom_root, patient_id), report)
        candidates = indexes[patient_id].get(instance, [])
        if len(candidates) > 1:
            candidates = [p for p in candidates
                          if os.path.basename(p).startswith(f"IM-{series}-")]
        if not candidates:
            report.skip("contour_without_dicom", contour_path)
        elif len(candidates) > 1:
            report.skip("ambiguous_dicom", contour_path)
        else:
            pairs.append(ContourPair(patient_id, instance, candidates[0], contour_path))
    labelled = {pair.dicom_path for pair in pairs}
    report.unlabelled_dicoms += sum(
        1 for index in indexes.values() for paths in index.values() for path in paths
        if path not in labelled)
    report.pairs += len(pairs)
    return pairs


def read_contour(path: str) -> np.ndarray:
    """The contour's points as float ``[n, 2]`` (x = column, y = row); ValueError if unparsable."""
    points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if points.shape[1] != 2:
        raise ValueError(f"{path}: expected two numbers per line, got {points.shape[1]}")
    return points


def contour_to_mask(points: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Fills a closed polygon: uint8 mask of ``shape``, 1 where the pixel centre is inside.

    Even-odd rule, vectorised over pixel centres; see the module docstring for edges.
    """
    rows, cols = shape
    y = np.arange(rows, dtype=np.float64)[:, np.newaxis]  # pixel-centre rows
    x = np.arange(cols, dtype=np.float64)[np.newaxis, :]  # pixel-centre columns
    inside = np.zeros(shape, dtype=bool)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue  # horizontal edges never cross a horizontal ray
        crosses = (ay <= y) != (by <= y)  # half-open in y: [min, max)
        x_at_y = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < x_at_y)
    return inside.astype(records.LABEL_DTYPE)


def _read_pixels(path: str, report: IngestReport) -> Optional[dicom.DicomSlice]:
    """The slice of a usable single-frame MR DICOM (``dataset.dicom``, as predictions read it),
    else None (reason counted)."""
    try:
        return dicom.read_dicom_slice(path)
    except dicom.DicomReadError as exc:
        report.skip(exc.reason, path)
        return None


def read_slice(pair: ContourPair, report: IngestReport) -> Optional[records.Slice]:
    """The record of one contour/DICOM pair, or None when either file is unusable."""
    try:
        points = read_contour(pair.contour_path)
    except ValueError:
        report.skip("unreadable_contour", pair.contour_path)
        return None
    if len(points) < 3:
        report.skip("too_few_points", pair.contour_path)
        return None
    read = _read_pixels(pair.dicom_path, report)
    if read is None:
        return None
    pixels = read.pixels
    rows, cols = pixels.shape
    margin = OFF_IMAGE_TOLERANCE * max(rows, cols)
    if (points[:, 0].min() < -margin or points[:, 0].max() > cols - 1 + margin
            or points[:, 1].min() < -margin or points[:, 1].max() > rows - 1 + margin):
        report.skip("points_off_image", pair.contour_path)
        return None
    mask = contour_to_mask(points, pixels.shape)
    if pixels.shape != records.IMAGE_SHAPE:
        report.cropped_or_padded += 1
        pixels, mask = dicom.to_model_grid(pixels), dicom.to_model_grid(mask)
    return records.Slice(
        name=f"{pair.patient_id}-{pair.instance_number:04d}", image=pixels, mask=mask,
        patient_id=pair.patient_id, pixel_spacing=read.pixel_spacing,
        slice_location=read.slice_location)


def read_labelled_slices(pairs: Iterable[ContourPair], report: IngestReport,
                         progress: bool = True) -> List[records.Slice]:
    from tqdm import tqdm
    pairs = list(pairs)
    slices = []
    for pair in tqdm(pairs, desc="reading DICOM + contours", unit="file", disable=not progress):
        item = read_slice(pair, report)
        if item is not None:
            slices.append(item)
    report.slices = len(slices)
    return slices


def split_and_write(slices: List[records.Slice], split_folder: Callable[[str], str],
                    eval_fraction: float, seed: int,
                    file_prefix: str = "sunnybrook") -> Dict[str, dict]:
    """Writes one TFRecord file per split into ``split_folder(split)``, split by patient;
    returns per-split patients, slice counts and files. Local paths or bucket URIs."""
    import tensorflow as tf
    from dataset import patient_split
    train_ids, eval_ids = patient_split.split_patients(
        [item.patient_id for item in slices], eval_fraction, seed)
    splits = {}
    for split, patient_ids in (("train", train_ids), ("eval", eval_ids)):
        chosen = [item for item in slices if item.patient_id in set(patient_ids)]
        if not chosen:
            continue
        tf.io.gfile.makedirs(split_folder(split))
        path = os.path.join(split_folder(split), records.record_file_name(f"{file_prefix}-{split}"))
        splits[split] = {"patients": patient_ids, "slices": records.write_lab_records(path, chosen),
                         "file": path}
    return splits


def ingest(dicom_root: str, contour_root: str, link_path: Optional[str], out_dir: str,
           eval_fraction: float, seed: int, progress: bool = True,
           split_folder: Optional[Callable[[str], str]] = None) -> dict:
    """DICOMs + contours -> one TFRecord file per split and ``out_dir/SUMMARY_FILE``.

    Splits go to ``out_dir/<split>/`` unless ``split_folder(split)`` says otherwise. Every file
    is written under a temporary name and renamed when complete; the summary (what was read,
    skipped by reason, the split) is both returned and saved as JSON.
    """
    import tensorflow as tf
    report = IngestReport()
    pairs = find_labelled_slices(dicom_root, contour_root, link_path, report)
    slices = read_labelled_slices(pairs, report, progress=progress)
    if not slices:
        raise ValueError(f"no usable labelled slice under {dicom_root} and {contour_root}: "
                         f"{json.dumps(report.as_dict()['skipped'])}")
    summary = report.as_dict()
    summary.update(seed=seed, eval_fraction=eval_fraction, splits=split_and_write(
        slices, split_folder or (lambda split: os.path.join(out_dir, split)), eval_fraction,
        seed))
    tf.io.gfile.makedirs(out_dir)
    path = os.path.join(out_dir, SUMMARY_FILE)
    with tf.io.gfile.GFile(path + ".partial", "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(path + ".partial", path, overwrite=True)
    return summary


def input_fingerprint(*paths: Optional[str]) -> str:
    """A hash of every file's path, size and modification time under ``paths``: it changes when
    the input data does, so the pipeline's cache re-reads changed DICOM folders."""
    import hashlib
    digest = hashlib.sha256()
    for root in paths:
        if not root:
            continue
        files = [root] if os.path.isfile(root) else sorted(
            path for path in glob.glob(os.path.join(root, "**", "*"), recursive=True)
            if os.path.isfile(path))
        for path in files:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
