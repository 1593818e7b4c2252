"""MR DICOM files written with pydicom, for the tests that read DICOMs."""
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_mr_dicom(path, pixels: Optional[np.ndarray] = None, *,
                   spacing: Sequence[float] = (1.25, 1.25), slope: Optional[float] = None,
                   intercept: Optional[float] = None,
                   instance_number: Optional[int] = None) -> str:
    """A single-frame MR image of 16-bit ``pixels`` (None: no pixel data at all), with a
    modality LUT when ``slope`` is given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    if instance_number is not None:
        dataset.InstanceNumber = instance_number
    if pixels is not None:
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit, dataset.PixelRepresentation = 15, 0
        dataset.PixelSpacing = list(spacing)
        if slope is not None:
            dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
    return str(path)
