"""The lab schema: round trip, and errors that name the file and record."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import preprocessing
from dataset import records


def _slice(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 2000, size=records.IMAGE_SHAPE, dtype=np.int64)
    mask = np.zeros(records.IMAGE_SHAPE, np.uint8)
    mask[100:140, 90:150] = 1
    return image, mask


def test_round_trip_keeps_pixels_mask_and_name(tmp_path):
    image, mask = _slice()
    path = str(tmp_path / "a.tfrecord")
    assert records.write_lab_records(
        path, [("case-1", image, mask), ("case-2", image + 1, mask)]) == 2
    slices = list(records.iter_lab_records(path))
    assert [s.name for s in slices] == ["case-1", "case-2"]
    np.testing.assert_array_equal(slices[0].image, image)
    np.testing.assert_array_equal(slices[1].image, image + 1)
    np.testing.assert_array_equal(slices[0].mask, mask)
    assert slices[0].image.dtype == np.int64 and slices[0].mask.dtype == np.uint8


def test_example_has_the_lab_features_and_types():
    image, mask = _slice()
    example = tf.train.Example.FromString(records.encode_example("x", image, mask))
    feature = example.features.feature
    assert sorted(feature) == sorted(records.FEATURE_KEYS)
    assert feature["height"].int64_list.value == [records.IMAGE_SIZE]
    assert feature["width"].int64_list.value == [records.IMAGE_SIZE]
    assert feature["depth"].int64_list.value == [1]
    assert len(feature["image_raw"].bytes_list.value[0]) == records.NUM_PIXELS * 8
    assert len(feature["label_raw"].bytes_list.value[0]) == records.NUM_PIXELS


def test_optional_features_round_trip_and_stay_optional(tmp_path):
    image, mask = _slice()
    path = str(tmp_path / "real.tfrecord")
    records.write_lab_records(path, [
        records.Slice("scd-1-0048", image, mask, patient_id="SCD0000101",
                      pixel_spacing=(1.367188, 1.367188), slice_location=-30.072),
        ("lab-style", image, mask)])
    real, lab_style = records.iter_lab_records(path)
    assert real.patient_id == "SCD0000101"
    assert real.pixel_spacing == pytest.approx((1.367188, 1.367188))
    assert real.slice_location == pytest.approx(-30.072)
    assert (lab_style.patient_id, lab_style.pixel_spacing, lab_style.slice_location) == (
        None, None, None)
    with pytest.raises(records.RecordError, match="pixel_spacing"):
        records.encode_example("x", image, mask, pixel_spacing=(0.0, 1.0))


def test_encoding_is_deterministic():
    image, mask = _slice()
    assert records.encode_example("x", image, mask) == records.encode_example("x", image, mask)


def test_writer_rejects_bad_masks_and_shapes():
    image, mask = _slice()
    with pytest.raises(records.RecordError, match="mask values"):
        records.encode_example("x", image, mask * 2)
    with pytest.raises(records.RecordError, match="must both be"):
        records.encode_example("x", image[:128], mask)


def _write_raw(path, examples):
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def _example(image_raw_bytes=None, drop=None, height=None):
    image, mask = _slice()
    example = tf.train.Example.FromString(records.encode_example("bad-one", image, mask))
    if image_raw_bytes is not None:
        example.features.feature["image_raw"].bytes_list.value[0] = image_raw_bytes
    if height is not None:
        example.features.feature["height"].int64_list.value[0] = height
    if drop:
        del example.features.feature[drop]
    return example


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_raw_bytes=b"\0" * 1000), r"record 1 \('bad-one'\): image_raw holds 1000 bytes"),
    (dict(drop="label_raw"), r"record 1: missing feature\(s\) label_raw"),
    (dict(height=128), r"record 1 \('bad-one'\): height is 128"),
])
def test_bad_record_is_named(tmp_path, kwargs, message):
    path = str(tmp_path / "bad.tfrecord")
    _write_raw(path, [_example(), _example(**kwargs)])
    with pytest.raises(records.RecordError, match=message) as error:
        list(records.iter_lab_records(path))
    assert path in str(error.value)


def test_truncated_file_is_named(tmp_path):
    path = str(tmp_path / "truncated.tfrecord")
    image, mask = _slice()
    records.write_lab_records(path, [("a", image, mask), ("b", image, mask)])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 5000])
    with pytest.raises(records.RecordError, match="truncated or corrupt") as error:
        list(records.iter_lab_records(path))
    assert path in str(error.value)


def test_not_a_tfrecord_file_is_named(tmp_path):
    path = tmp_path / "notes.tfrecord"
    path.write_text("these are not the records you are looking for\n" * 50)
    with pytest.raises(records.RecordError, match="notes.tfrecord"):
        list(records.iter_lab_records(str(path)))


def test_in_graph_encoder_matches_the_record_writer():
    """The raw-image serving signature relies on this to feed the saved transform graph."""
    images = np.stack([_slice(seed)[0] for seed in range(3)])
    encoded = preprocessing.encode_image_raw(tf.constant(images)).numpy()
    expected = [image.astype(records.IMAGE_DTYPE).tobytes() for image in images]
    assert [bytes(e) for e in encoded] == expected
    decoded = preprocessing.decode_image(tf.constant(encoded)).numpy()[..., 0]
    np.testing.assert_array_equal(decoded, images.astype(np.float32))
