"""One DICOM reader for ingestion and predictions (dataset/dicom.py): a scanner that writes a
rescale slope, or a 320x320 matrix, gives `lvseg predict` exactly the pixels ingestion writes
to the record, and other sizes are cropped or padded the same way in both."""
import io

import numpy as np
import pydicom
import pytest

from dataset import dicom, records, sunnybrook
from serving import predict
from tests import dicom_files


def _write_dicom(path, stored, slope=None, intercept=None):
    return dicom_files.write_mr_dicom(path, stored, slope=slope, intercept=intercept,
                                      instance_number=7)


def _contour(path, centre, radius=20):
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    with open(path, "w") as f:
        for a in angles:
            f.write(f"{centre + radius * np.cos(a):.2f} {centre + radius * np.sin(a):.2f}\n")
    return str(path)


def _ingested(dicom_path, contour_path):
    report = sunnybrook.IngestReport()
    pair = sunnybrook.ContourPair("SCD9", 7, dicom_path, contour_path)
    record = sunnybrook.read_slice(pair, report)
    assert record is not None, report.as_dict()
    return record


def _sent_by_predict(path, tmp_path):
    """The batch `lvseg predict` hands to the client for ``path``."""
    sent = []

    def predict_masks(batch):
        sent.append(batch.copy())
        return np.zeros(batch.shape, np.int32)
    bad = predict.predict_files([path], predict_masks, str(tmp_path / "out"), 8, io.StringIO(),
                                io.StringIO())
    assert bad == 0
    [batch] = sent
    return batch[0]


@pytest.mark.parametrize("shape, slope, intercept", [
    ((256, 256), 2, -100),  # a modality LUT
    ((320, 320), None, None),  # a larger matrix: the central 256x256
    ((192, 208), 1.5, 10),  # smaller, not square, and a LUT: zero-padded
])
def test_predict_sends_the_pixels_ingestion_writes(tmp_path, shape, slope, intercept):
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 3000, size=shape)
    path = _write_dicom(tmp_path / "slice.dcm", stored, slope, intercept)
    record = _ingested(path, _contour(tmp_path / "contour.txt", min(shape) / 2))
    sent = _sent_by_predict(path, tmp_path)
    assert sent.dtype == np.int64 and sent.shape == records.IMAGE_SHAPE
    np.testing.assert_array_equal(sent, record.image)
    # and what that is: the stored values through the LUT, clipped at 0, on the model's grid
    expected = np.clip(np.rint(stored * (slope or 1) + (intercept or 0)), 0, None)
    np.testing.assert_array_equal(sent, dicom.to_model_grid(expected.astype(np.int64)))
    assert record.pixel_spacing == (1.25, 1.25)


def test_the_window_is_central():
    array = np.arange(320 * 320).reshape(320, 320)
    window = dicom.to_model_grid(array)
    assert window[0, 0] == array[32, 32] and window[-1, -1] == array[287, 287]
    small = dicom.to_model_grid(np.ones((200, 256), np.int64))
    assert small[:28].sum() == 0 and small[28:228].all() and small[228:].sum() == 0


def test_a_non_mr_dicom_is_refused_by_both(tmp_path):
    path = _write_dicom(tmp_path / "ct.dcm", np.zeros((256, 256)))
    ds = pydicom.dcmread(path)
    ds.Modality = "CT"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(dicom.DicomReadError) as error:
        dicom.read_dicom_slice(path)
    assert error.value.reason == "not_mr"
    with pytest.raises(predict.InputFileError, match="a CT image, not MR"):
        predict.read_inputs(path)
