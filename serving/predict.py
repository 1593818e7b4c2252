"""The predict CLI's work: read slices from files, ask the served model, write mask and overlay
PNGs.

Inputs, recognised by content (DICOM files often have no extension):

- DICOM (pydicom), read exactly as ingestion reads it (``dataset.dicom``): through the modality
  LUT, centre-cropped or zero-padded to 256x256; ``PixelSpacing`` gives the LV area in mm^2.
- PNG: 8- or 16-bit grey (colour PNGs are converted to grey).
- NPY: one image ``[256, 256]`` or a stack ``[N, 256, 256]``.
- The lab's TFRecords (``*.tfrecord``, ``*.tfrecord.gz``): every record; its label gives a Dice.

Each file either yields its images or one :class:`InputFileError` line; a bad file never stops
the others.
"""
import dataclasses
import os
import re
from typing import Callable, Iterable, List, Optional, TextIO, Tuple

import numpy as np

from dataset import records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
TFRECORD_SUFFIXES = (records.TFRECORD_SUFFIX, records.TFRECORD_SUFFIX + ".gz",
                     records.TFRECORD_SUFFIX + "s")
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"
MASK_PNG_LV = 255  # LV pixels in the mask PNG (visible in any viewer); background is 0
CONTOUR_RGB = (255, 40, 40)
# Display window of the overlay: MRI intensities have no fixed scale (see trainer.preprocessing).
WINDOW_PERCENTILES = (0.5, 99.5)


class InputFileError(ValueError):
    """A file that is not a usable slice; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class InputImage:
    name: str  # names the output files
    source: str  # the file (and record) it came from, for messages
    image: np.ndarray  # [256, 256] int64 pixel values
    pixel_spacing: Optional[Tuple[float, float]] = None  # mm per pixel (row, column)
    label: Optional[np.ndarray] = None  # the record's LV mask, when the input has one


# --- reading ---------------------------------------------------------------------------------


def expand_paths(paths: Iterable[str]) -> List[str]:
    """Files as given, folders replaced by the files under them (sorted, hidden ones skipped)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                files += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
        else:
            files.append(path)
    return files


def kind_of(path: str) -> Optional[str]:
    """``dicom``, ``png``, ``npy`` or ``tfrecord`` by content (TFRecords by name), else None."""
    if path.endswith(TFRECORD_SUFFIXES):
        return "tfrecord"
    with open(path, "rb") as f:
        head = f.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC:
        return "dicom"
    return None


def _checked(path: str, image: np.ndarray, what: str = "image") -> np.ndarray:
    if image.shape != records.IMAGE_SHAPE:
        size = "x".join(map(str, image.shape))
        raise InputFileError(f"{path}: {what} is {size}, the model takes "
                             f"{records.IMAGE_SIZE}x{records.IMAGE_SIZE}")
    if image.dtype.kind not in "iuf" or (image.dtype.kind == "f" and not np.isfinite(image).all()):
        raise InputFileError(f"{path}: {what} holds {image.dtype} values, not pixel intensities")
    return np.rint(image).astype(np.int64) if image.dtype.kind == "f" else image.astype(np.int64)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in TFRECORD_SUFFIXES + (".dcm", ".png", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_dicom(path: str) -> List[InputImage]:
    """As ingestion reads it (``dataset.dicom``): through the modality LUT, and centre-cropped or
    zero-padded to 256x256, so the model sees the pixels it was trained on."""
    from dataset import dicom
    try:
        read = dicom.read_dicom_slice(path)
    except dicom.DicomReadError as exc:
        raise InputFileError(f"{path}: {exc}") from exc
    pixels = read.pixels
    if pixels.shape != records.IMAGE_SHAPE:
        pixels = dicom.to_model_grid(pixels)
    return [InputImage(_stem(path), path, _checked(path, pixels), read.pixel_spacing)]


def _read_png(path: str) -> List[InputImage]:
    from PIL import Image
    try:
        with Image.open(path) as picture:
            if picture.mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
                picture = picture.convert("L")
            pixels = np.asarray(picture)
    except Exception as exc:  # PIL's errors for truncated or broken files vary
        raise InputFileError(f"{path}: unreadable PNG ({exc})") from exc
    return [InputImage(_stem(path), path, _checked(path, pixels))]


def _read_npy(path: str) -> List[InputImage]:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # ValueError for object arrays, others for broken headers
        raise InputFileError(f"{path}: unreadable NPY ({exc})") from exc
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return [InputImage(_stem(path), path, _checked(path, array))]
    if array.ndim == 3:
        return [InputImage(f"{_stem(path)}-{i}", f"{path}[{i}]",
                           _checked(path, image, f"image {i}"))
                for i, image in enumerate(array)]
    raise InputFileError(f"{path}: array of shape {array.shape}, expected "
                         f"[{records.IMAGE_SIZE}, {records.IMAGE_SIZE}] or [N, ...]")


def _read_tfrecord(path: str) -> List[InputImage]:
    try:
        slices = list(records.iter_lab_records(path))
    except records.RecordError as exc:
        raise InputFileError(str(exc).splitlines()[0]) from exc
    if not slices:
        raise InputFileError(f"{path}: no records")
    return [InputImage(f"{_stem(path)}-{item.name}", f"{path}: {item.name}", item.image,
                       getattr(item, "pixel_spacing", None), item.mask)
            for item in slices]


_READERS = {"dicom": _read_dicom, "png": _read_png, "npy": _read_npy, "tfrecord": _read_tfrecord}


def read_inputs(path: str) -> List[InputImage]:
    """The slices in one file, or :class:`InputFileError`."""
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: no such file")
    try:
        kind = kind_of(path)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror})") from exc
    if kind is None:
        raise InputFileError(f"{path}: not an image (DICOM, PNG, NPY or the lab's TFRecord)")
    return _READERS[kind](path)


# --- results ---------------------------------------------------------------------------------


def lv_area(mask: np.ndarray,
            pixel_spacing: Optional[Tuple[float, float]]) -> Tuple[int, Optional[float]]:
    """LV area in pixels, and in mm^2 when the pixel spacing is known."""
    pixels = int(np.count_nonzero(mask))
    if pixel_spacing is None:
        return pixels, None
    return pixels, pixels * pixel_spacing[0] * pixel_spacing[1]


def lv_contour(mask: np.ndarray) -> np.ndarray:
    """The LV pixels on the mask's border (4-neighbourhood): the contour the overlay draws."""
    from scipy import ndimage
    inside = mask.astype(bool)
    return inside & ~ndimage.binary_erosion(inside, border_value=0)


def grey_rgb(image: np.ndarray) -> np.ndarray:
    """The slice windowed to 8-bit grey, ``[H, W, 3]`` uint8 (see ``WINDOW_PERCENTILES``)."""
    low, high = np.percentile(image, WINDOW_PERCENTILES)
    grey = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0
    return np.repeat(grey.astype(np.uint8)[..., np.newaxis], 3, axis=-1)


def overlay_rgb(image: np.ndarray, mask: np.ndarray,
                contour_rgb: Tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    """The slice windowed to 8-bit grey with the LV contour drawn over it, ``[H, W, 3]`` uint8."""
    rgb = grey_rgb(image)
    rgb[lv_contour(mask)] = contour_rgb
    return rgb


def write_pngs(out_dir: str, name: str, image: np.ndarray,
               mask: np.ndarray) -> Tuple[str, str]:
    """Writes ``<name>_mask.png`` (255 = LV) and ``<name>_overlay.png``; returns both paths."""
    from PIL import Image
    mask_path = os.path.join(out_dir, name + MASK_SUFFIX)
    overlay_path = os.path.join(out_dir, name + OVERLAY_SUFFIX)
    Image.fromarray((mask > 0).astype(np.uint8) * MASK_PNG_LV).save(mask_path)
    Image.fromarray(overlay_rgb(image, mask)).save(overlay_path)
    return mask_path, overlay_path


def _safe_name(name: str, taken: set) -> str:
    """A file-name-safe, not yet used name (two inputs called ``x`` give ``x`` and ``x-2``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    candidate, count = base, 1
    while candidate in taken:
        count += 1
        candidate = f"{base}-{count}"
    taken.add(candidate)
    return candidate


def describe(item: InputImage, mask: np.ndarray, overlay_path: str) -> str:
    """One result line: LV area (px, mm^2 when known), Dice against the record's label."""
    pixels, mm2 = lv_area(mask, item.pixel_spacing)
    text = f"{item.source}: LV area {pixels} px"
    if mm2 is not None:
        row, column = item.pixel_spacing
        text += f", {mm2:.1f} mm^2 (pixel {row:.4g} x {column:.4g} mm)"
    if item.label is not None:
        from trainer import dice
        # A 0/1 mask read as LV probabilities is its own mask (trainer.dice.lv_mask).
        score = float(dice.dice_per_image(item.label[np.newaxis],
                                          mask[np.newaxis].astype(np.float32))[0])
        text += f", Dice vs label {score:.3f}"
    return f"{text} -> {overlay_path}"


def predict_files(paths: Iterable[str], predict_masks: Callable[[np.ndarray], np.ndarray],
                  out_dir: str, batch_size: int, out: TextIO, err: TextIO) -> int:
    """Segments every image of ``paths``; returns the number of bad files.

    ``predict_masks`` maps a batch ``[N, 256, 256]`` to masks (a client's predict); its errors
    (server down, ...) propagate, since they are not about one file.
    """
    os.makedirs(out_dir, exist_ok=True)
    taken: set = set()
    bad_files = 0
    for path in expand_paths(paths):
        try:
            items = read_inputs(path)
        except InputFileError as exc:
            print(f"error: {exc}", file=err, flush=True)
            bad_files += 1
            continue
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            masks = predict_masks(np.stack([item.image for item in chunk]))
            for item, mask in zip(chunk, masks):
                _, overlay_path = write_pngs(out_dir, _safe_name(item.name, taken),
                                             item.image, mask)
                print(describe(item, mask, overlay_path), file=out, flush=True)
    return bad_files
