"""One MR slice from a DICOM file, read the same way for training and for predictions.

Ingestion (``dataset.sunnybrook``, ``lvseg data sunnybrook`` and ``SunnybrookExampleGen``) and
``lvseg predict`` both read DICOMs here, so a file gives the model the same pixels in both:

- the stored values through the modality LUT (``RescaleSlope`` / ``RescaleIntercept``, pydicom's
  ``apply_modality_lut``), rounded, negatives clipped to 0, as int64 (the record format's dtype);
- single-frame 2-D MR images only (``Modality`` MR or absent); other files are refused with a
  reason (:class:`DicomReadError`);
- any size: :func:`to_model_grid` takes the central 256x256 window, zero-padding what is smaller
  (the same window for the expert's mask at ingestion). A 320x320 acquisition loses 32 pixels
  on each side; a 192x192 one gains a black border. The pixel spacing is kept, so areas in mm^2
  stay right.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np

from dataset import records

MR = "MR"


class DicomReadError(ValueError):
    """A DICOM that is not a usable slice; ``reason`` is a short key (ingestion counts them)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class DicomSlice:
    pixels: np.ndarray  # int64, the acquisition's own size (see to_model_grid)
    pixel_spacing: Optional[Tuple[float, float]]  # mm per pixel (row, column)
    slice_location: Optional[float]
    instance_number: Optional[int]


def read_dicom_slice(path: str) -> DicomSlice:
    """The slice of ``path``, through the modality LUT; DicomReadError if unusable."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, struct errors, ...
        raise DicomReadError("unreadable_dicom", f"unreadable DICOM ({type(exc).__name__}: "
                                                 f"{exc})") from exc
    modality = getattr(dataset, "Modality", MR)
    if modality != MR:
        raise DicomReadError("not_mr", f"a {modality} image, not MR")
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raise DicomReadError("multi_frame", "a multi-frame DICOM; one slice per file is read")
    if "PixelData" not in dataset:
        raise DicomReadError("no_pixel_data", "DICOM without pixel data")
    try:
        pixels = apply_modality_lut(dataset.pixel_array, dataset)
    except Exception as exc:  # compressed data without a decoder, truncated data, ...
        raise DicomReadError("no_pixel_data",
                             f"cannot decode the DICOM pixel data ({exc})") from exc
    if pixels.ndim != 2:
        raise DicomReadError("not_2d", f"{pixels.ndim}-D pixel data {pixels.shape}; one grey "
                                       "slice per file is read")
    spacing = dataset.get("PixelSpacing")
    location = dataset.get("SliceLocation")
    instance = dataset.get("InstanceNumber")
    return DicomSlice(
        pixels=np.clip(np.rint(pixels), 0, None).astype(records.IMAGE_DTYPE),
        pixel_spacing=((float(spacing[0]), float(spacing[1]))
                       if spacing and len(spacing) == 2 else None),
        slice_location=float(location) if location is not None else None,
        instance_number=int(instance) if instance is not None else None)


def to_model_grid(array: np.ndarray, size: int = records.IMAGE_SIZE) -> np.ndarray:
    """The central ``size x size`` window of a 2-D array, zero-padded where it is smaller."""
    out = np.zeros((size, size), dtype=array.dtype)
    src, dst = [], []
    for n in array.shape:
        if n >= size:
            start = (n - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = array[tuple(src)]
    return out
