"""Sunnybrook-style DICOM + contour ingestion: both layouts, the fill rule, bad files, real data."""
import json
import os

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from dataset import sunnybrook
from lvseg import cli
from pipeline import configs
from trainer import postprocess
from dataset import records

REAL_SUBSET = configs.BUNDLED_SUBSET


def write_dicom(path, pixels, instance, modality="MR", frames=None, pixel_data=True,
                spacing=(1.25, 1.5), location=-12.5):
    """A real DICOM file, as a scanner export would hold it (int16 MR slice)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.InstanceNumber = modality, "anon", instance
    ds.PixelSpacing, ds.SliceLocation = list(spacing), location
    pixels = np.asarray(pixels, dtype=np.int16)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if frames:
        ds.NumberOfFrames = frames
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_contour(path, points):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savetxt(path, np.asarray(points, dtype=float), fmt="%.2f")


def _image(shape=records.IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 800, size=shape)


SQUARE = [(100, 90), (140, 90), (140, 120), (100, 120)]  # x = column, y = row


def _ingest(tmp_path, dicom_root, contour_root, link=None, eval_fraction=0.5):
    out = str(tmp_path / "out")
    summary = sunnybrook.ingest(str(dicom_root), str(contour_root), link, out,
                                eval_fraction=eval_fraction, seed=1, progress=False)
    slices = [s for split in ("train", "eval") if os.path.isdir(os.path.join(out, split))
              for s in records.iter_lab_records(records.list_record_files(
                  os.path.join(out, split))[0])]
    return out, summary, {s.name: s for s in slices}


def test_fill_rule_on_hand_checked_polygons():
    # square with corners on pixel centres: left/top edges in, right/bottom edges out
    mask = sunnybrook.contour_to_mask(np.array([(2, 2), (5, 2), (5, 4), (2, 4)], float), (8, 8))
    expected = np.zeros((8, 8), np.uint8)
    expected[2:4, 2:5] = 1  # rows 2-3 (y in [2, 4)), columns 2-4 (x in [2, 5))
    np.testing.assert_array_equal(mask, expected)
    # right triangle (0,0) (4,0) (0,4): centre (x, y) inside when x < 4 - y
    triangle = sunnybrook.contour_to_mask(np.array([(0, 0), (4, 0), (0, 4)], float), (6, 6))
    expected = np.zeros((6, 6), np.uint8)
    for y in range(6):
        for x in range(6):
            expected[y, x] = y < 4 and x < 4 - y
    np.testing.assert_array_equal(triangle, expected)
    assert triangle.sum() == 4 + 3 + 2 + 1


def test_subset_layout_matches_by_instance_number_not_file_name(tmp_path):
    dicoms, contours = tmp_path / "dicoms", tmp_path / "contourfiles"
    images = {}
    for patient, original in (("SCD9000101", "SC-X-1"), ("SCD9000201", "SC-X-2")):
        for file_number, instance in ((7, 48), (8, 59)):  # file names say nothing
            images[(patient, instance)] = _image(seed=instance + len(images))
            write_dicom(str(dicoms / patient / f"{file_number}.dcm"),
                        images[(patient, instance)], instance)
            write_contour(str(contours / original / "i-contours" /
                              f"IM-0001-{instance:04d}-icontour-manual.txt"), SQUARE)
        write_dicom(str(dicoms / patient / "9.dcm"), _image(), 70)  # unlabelled frame
    link = tmp_path / "link.csv"
    link.write_text("patient_id,original_id\nSCD9000101,SC-X-1\nSCD9000201,SC-X-2\n")

    out, summary, slices = _ingest(tmp_path, dicoms, contours, str(link))
    assert sorted(slices) == ["SCD9000101-0048", "SCD9000101-0059",
                              "SCD9000201-0048", "SCD9000201-0059"]
    expected_mask = sunnybrook.contour_to_mask(np.array(SQUARE, float), records.IMAGE_SHAPE)
    assert expected_mask.sum() == 40 * 30
    for (patient, instance), image in images.items():
        item = slices[f"{patient}-{instance:04d}"]
        np.testing.assert_array_equal(item.image, image)
        np.testing.assert_array_equal(item.mask, expected_mask)
        assert item.patient_id == patient
        assert item.pixel_spacing == pytest.approx((1.25, 1.5))
        assert item.slice_location == pytest.approx(-12.5)
    assert summary["unlabelled_dicoms"] == 2 and summary["skipped"] == {}
    splits = summary["splits"]
    assert len(splits["train"]["patients"]) == len(splits["eval"]["patients"]) == 1
    assert not set(splits["train"]["patients"]) & set(splits["eval"]["patients"])
    with open(os.path.join(out, sunnybrook.SUMMARY_FILE)) as f:
        assert json.load(f)["slices"] == 4


@pytest.mark.parametrize("linked", [False, True])
def test_original_release_layout(tmp_path, linked):
    dicoms = tmp_path / "SCD_DeidentifiedImages"
    contours = tmp_path / "SCD_ManualContours"
    case_folder = "SC-HF-I-01" if linked else "SCD0000101"
    image = _image(seed=3)
    write_dicom(str(dicoms / "SCD0000101" / "IM-0001-0048.dcm"), image, 48)
    # the same instance number in another series: the contour's series decides
    write_dicom(str(dicoms / "SCD0000101" / "IM-0002-0048.dcm"), _image(seed=4), 48)
    write_contour(str(contours / case_folder / "contours-manual" / "IRCCI-expert" /
                      "IM-0001-0048-icontour-manual.txt"), SQUARE)
    link = None
    if linked:
        link = str(tmp_path / "link.csv")
        with open(link, "w") as f:
            f.write("patient_id,original_id\nSCD0000101,SC-HF-I-01\n")
    _, summary, slices = _ingest(tmp_path, dicoms, contours, link, eval_fraction=0.0)
    assert list(slices) == ["SCD0000101-0048"]
    np.testing.assert_array_equal(slices["SCD0000101-0048"].image, image)
    assert summary["unlabelled_dicoms"] == 1


def test_images_not_256_are_centre_cropped_or_padded_with_their_mask(tmp_path):
    dicoms, contours = tmp_path / "dicoms", tmp_path / "contours"
    image = _image(shape=(300, 240), seed=5)  # 22 rows cropped top, 8 columns padded left
    write_dicom(str(dicoms / "P1" / "1.dcm"), image, 5)
    write_contour(str(contours / "P1" / "IM-0001-0005-icontour-manual.txt"),
                  [(50, 60), (70, 60), (70, 80), (50, 80)])
    _, summary, slices = _ingest(tmp_path, dicoms, contours, eval_fraction=0.0)
    item = slices["P1-0005"]
    np.testing.assert_array_equal(item.image[:, 8:248], image[22:278, :])
    assert (item.image[:, :8] == 0).all() and (item.image[:, 248:] == 0).all()
    rows, cols = np.nonzero(item.mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (60 - 22, 79 - 22, 50 + 8, 69 + 8)
    assert summary["cropped_or_padded"] == 1


def test_bad_files_are_skipped_counted_and_the_good_ones_kept(tmp_path):
    dicoms, contours = tmp_path / "dicoms", tmp_path / "contours"
    case = dicoms / "P1"

    def contour(instance, points=SQUARE):
        write_contour(str(contours / "P1" / f"IM-0001-{instance:04d}-icontour-manual.txt"),
                      points)

    write_dicom(str(case / "good.dcm"), _image(), 1)
    contour(1)
    case.mkdir(parents=True, exist_ok=True)
    (case / "garbage.dcm").write_bytes(b"this is not DICOM at all" * 20)
    write_dicom(str(case / "nopixels.dcm"), _image(), 2, pixel_data=False)
    contour(2)
    write_dicom(str(case / "ct.dcm"), _image(), 3, modality="CT")
    contour(3)
    write_dicom(str(case / "cine.dcm"), np.stack([_image(), _image(seed=1)]), 4, frames=2)
    contour(4)
    write_dicom(str(case / "five.dcm"), _image(), 5)
    contour(5, [(10, 10), (20, 20)])  # two points
    write_dicom(str(case / "six.dcm"), _image(), 6)
    contour(6, [(10, 10), (900, 10), (10, 20)])  # far off a 256 image
    contour(7)  # no DICOM has InstanceNumber 7
    (contours / "P1" / "IM-0001-0008-icontour-manual.txt").write_text("x y\nnot numbers\n")
    write_dicom(str(case / "eight.dcm"), _image(), 8)

    out, summary, slices = _ingest(tmp_path, dicoms, contours, eval_fraction=0.0)
    assert list(slices) == ["P1-0001"]
    counts = {reason: info["count"] for reason, info in summary["skipped"].items()}
    assert counts == {"unreadable_dicom": 1, "no_pixel_data": 1, "not_mr": 1, "multi_frame": 1,
                      "too_few_points": 1, "points_off_image": 1, "contour_without_dicom": 1,
                      "unreadable_contour": 1}
    assert summary["skipped"]["unreadable_dicom"]["files"] == [str(case / "garbage.dcm")]
    with open(os.path.join(out, sunnybrook.SUMMARY_FILE)) as f:
        assert json.load(f)["skipped"]["not_mr"]["files"] == [str(case / "ct.dcm")]
    assert not [name for _, _, names in os.walk(out) for name in names
                if name.endswith(".partial")]


def test_nothing_usable_is_an_error_not_an_empty_data_set(tmp_path):
    (tmp_path / "dicoms" / "P1").mkdir(parents=True)
    write_contour(str(tmp_path / "contours" / "P1" / "IM-0001-0001-icontour-manual.txt"), SQUARE)
    with pytest.raises(ValueError, match="no usable labelled slice"):
        sunnybrook.ingest(str(tmp_path / "dicoms"), str(tmp_path / "contours"), None,
                          str(tmp_path / "out"), eval_fraction=0.0, seed=1, progress=False)


@pytest.mark.skipif(not os.path.isdir(REAL_SUBSET),
                    reason=f"the real Sunnybrook subset is not at {REAL_SUBSET}")
def test_real_subset_gives_56_labelled_slices_with_a_bright_blood_pool(tmp_path, capsys):
    out = str(tmp_path / "real")
    assert cli.main(["data", "sunnybrook", "--dicom-root", os.path.join(REAL_SUBSET, "dicoms"),
                     "--contour-root", os.path.join(REAL_SUBSET, "contourfiles"),
                     "--link", os.path.join(REAL_SUBSET, "link.csv"), "--out", out]) == 0
    assert "56 labelled slices" in capsys.readouterr().out
    slices = [s for split in ("train", "eval") for s in records.iter_lab_records(
        records.list_record_files(os.path.join(out, split))[0])]
    assert len(slices) == 56
    assert {s.patient_id for s in slices} == {"SCD0000101", "SCD0000201", "SCD0000301"}
    for item in slices:
        inside = item.mask.astype(bool)
        ring = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(
            inside, iterations=1)
        ratio = item.image[inside].mean() / item.image[ring].mean()
        assert ratio > 1.5, f"{item.name}: blood pool only {ratio:.2f}x the ring around it"
        assert item.pixel_spacing is not None and item.pixel_spacing[0] > 1.0
    # The expert contours are convex, as the served mask's last step (its convex hull) assumes.
    masks = np.stack([item.mask for item in slices]).astype(np.float32)
    cover = masks.sum(axis=(1, 2)) / postprocess.convex_hull(masks).numpy().sum(axis=(1, 2))
    assert cover.min() > 0.9 and cover.mean() > 0.98, cover
