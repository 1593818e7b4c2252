"""The lab's record schema: the one module that knows how a cardiac MRI slice is stored.

Every record is a ``tf.train.Example`` with the features of the NVIDIA DLI lab's TFRecords:

=============  =======  ==================================================================
feature        type     content
=============  =======  ==================================================================
``height``     int64    256
``width``      int64    256
``depth``      int64    1 (channels)
``name``       bytes    an identifier of the slice, e.g. ``b"synth-p007-s04"``
``image_raw``  bytes    256*256 pixel values as little-endian int64 (MRI intensities, 0..~2000)
``label_raw``  bytes    256*256 uint8 mask, 1 = LV blood pool (inside the endocardial contour)
=============  =======  ==================================================================

Real acquisitions add optional features beside the lab's (absent from the lab's own records and
ignored by the model): ``patient_id`` (bytes), ``pixel_spacing`` (float [row mm, column mm]) and
``slice_location`` (float, mm), so evaluation can slice by patient and report areas in mm^2.

The writer, the parser and the checks of that contract live here; the preprocessing_fn, the
serving signatures, the data generator, the validators and the tests import the names, sizes and
dtypes from this module instead of repeating them.
"""
import dataclasses
import os
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

IMAGE_SIZE = 256
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
NUM_CLASSES = 2  # 0 = not LV, 1 = LV blood pool

HEIGHT_KEY = "height"
WIDTH_KEY = "width"
DEPTH_KEY = "depth"
NAME_KEY = "name"
IMAGE_KEY = "image_raw"
LABEL_KEY = "label_raw"
FEATURE_KEYS = (HEIGHT_KEY, WIDTH_KEY, DEPTH_KEY, NAME_KEY, IMAGE_KEY, LABEL_KEY)

PATIENT_ID_KEY = "patient_id"
PIXEL_SPACING_KEY = "pixel_spacing"
SLICE_LOCATION_KEY = "slice_location"
OPTIONAL_FEATURE_KEYS = (PATIENT_ID_KEY, PIXEL_SPACING_KEY, SLICE_LOCATION_KEY)

IMAGE_DTYPE = np.dtype("<i8")  # int64, little-endian, as the lab's ``img.tostring()`` wrote it
LABEL_DTYPE = np.dtype("u1")
IMAGE_BYTES = NUM_PIXELS * IMAGE_DTYPE.itemsize
LABEL_BYTES = NUM_PIXELS * LABEL_DTYPE.itemsize

TFRECORD_SUFFIX = ".tfrecord"


class RecordError(ValueError):
    """A record that breaks the lab's schema; the message names the file and the record."""


@dataclasses.dataclass(frozen=True)
class Slice:
    """One record: the image as int64 pixel values, the 0/1 LV mask, and what else is known."""

    name: str
    image: np.ndarray  # (256, 256) int64
    mask: np.ndarray  # (256, 256) uint8
    patient_id: Optional[str] = None
    pixel_spacing: Optional[Tuple[float, float]] = None  # mm per pixel: (row, column)
    slice_location: Optional[float] = None  # mm along the scanner axis


def _bytes_feature(value: bytes):
    import tensorflow as tf
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int):
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float_feature(values):
    import tensorflow as tf
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def encode_example(name: str, image: np.ndarray, mask: np.ndarray, *,
                   patient_id: Optional[str] = None,
                   pixel_spacing: Optional[Tuple[float, float]] = None,
                   slice_location: Optional[float] = None) -> bytes:
    """Serialises one slice as a lab-schema ``tf.train.Example`` (plus the optional features
    that are given)."""
    import tensorflow as tf
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape != IMAGE_SHAPE or mask.shape != IMAGE_SHAPE:
        raise RecordError(
            f"{name}: image {image.shape} and mask {mask.shape} must both be {IMAGE_SHAPE}")
    if not np.isin(mask, (0, 1)).all():
        raise RecordError(f"{name}: mask values must be 0 or 1, got {np.unique(mask)[:10]}")
    example = tf.train.Example(features=tf.train.Features(feature={
        HEIGHT_KEY: _int64_feature(IMAGE_SIZE),
        WIDTH_KEY: _int64_feature(IMAGE_SIZE),
        DEPTH_KEY: _int64_feature(1),
        NAME_KEY: _bytes_feature(name.encode("utf-8")),
        IMAGE_KEY: _bytes_feature(image.astype(IMAGE_DTYPE).tobytes()),
        LABEL_KEY: _bytes_feature(mask.astype(LABEL_DTYPE).tobytes()),
    }))
    feature = example.features.feature
    if patient_id is not None:
        feature[PATIENT_ID_KEY].CopyFrom(_bytes_feature(patient_id.encode("utf-8")))
    if pixel_spacing is not None:
        if len(pixel_spacing) != 2 or min(pixel_spacing) <= 0:
            raise RecordError(f"{name}: pixel_spacing must be two positive mm values, "
                              f"got {pixel_spacing}")
        feature[PIXEL_SPACING_KEY].CopyFrom(_float_feature(pixel_spacing))
    if slice_location is not None:
        feature[SLICE_LOCATION_KEY].CopyFrom(_float_feature([slice_location]))
    return example.SerializeToString(deterministic=True)


def encode_slice(item: Slice) -> bytes:
    return encode_example(item.name, item.image, item.mask, patient_id=item.patient_id,
                          pixel_spacing=item.pixel_spacing, slice_location=item.slice_location)


def decode_example(serialized: bytes, where: str = "record") -> Slice:
    """Parses and checks one serialized lab-schema example; ``where`` names it in errors."""
    import tensorflow as tf
    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as exc:  # protobuf raises DecodeError, which has no stable import path
        raise RecordError(f"{where}: not a tf.train.Example ({exc})") from exc
    feature = example.features.feature
    missing = [key for key in FEATURE_KEYS if key not in feature]
    if missing:
        raise RecordError(f"{where}: missing feature(s) {', '.join(missing)}")

    def single(key, kind):
        values = getattr(feature[key], kind).value
        if len(values) != 1:
            raise RecordError(f"{where}: feature {key!r} must hold one {kind} value, "
                              f"has {len(values)}")
        return values[0]

    name = single(NAME_KEY, "bytes_list").decode("utf-8", errors="replace")
    where = f"{where} ({name!r})"
    for key in (HEIGHT_KEY, WIDTH_KEY):
        value = single(key, "int64_list")
        if value != IMAGE_SIZE:
            raise RecordError(f"{where}: {key} is {value}, expected {IMAGE_SIZE}")
    image_raw = single(IMAGE_KEY, "bytes_list")
    label_raw = single(LABEL_KEY, "bytes_list")
    if len(image_raw) != IMAGE_BYTES:
        raise RecordError(
            f"{where}: {IMAGE_KEY} holds {len(image_raw)} bytes, expected {IMAGE_BYTES} "
            f"({IMAGE_SIZE}x{IMAGE_SIZE} int64 pixels)")
    if len(label_raw) != LABEL_BYTES:
        raise RecordError(
            f"{where}: {LABEL_KEY} holds {len(label_raw)} bytes, expected {LABEL_BYTES} "
            f"({IMAGE_SIZE}x{IMAGE_SIZE} uint8 mask)")
    image = np.frombuffer(image_raw, dtype=IMAGE_DTYPE).reshape(IMAGE_SHAPE)
    mask = np.frombuffer(label_raw, dtype=LABEL_DTYPE).reshape(IMAGE_SHAPE)
    if mask.max(initial=0) > 1:
        raise RecordError(f"{where}: {LABEL_KEY} has values {sorted(set(np.unique(mask)) - {0, 1})}"
                          f" besides 0/1")
    patient_id = pixel_spacing = slice_location = None
    if PATIENT_ID_KEY in feature:
        patient_id = single(PATIENT_ID_KEY, "bytes_list").decode("utf-8", errors="replace")
    if PIXEL_SPACING_KEY in feature:
        spacing = tuple(feature[PIXEL_SPACING_KEY].float_list.value)
        if len(spacing) != 2 or min(spacing) <= 0:
            raise RecordError(f"{where}: {PIXEL_SPACING_KEY} must be two positive mm values, "
                              f"got {spacing}")
        pixel_spacing = spacing
    if SLICE_LOCATION_KEY in feature:
        slice_location = single(SLICE_LOCATION_KEY, "float_list")
    return Slice(name=name, image=image, mask=mask, patient_id=patient_id,
                 pixel_spacing=pixel_spacing, slice_location=slice_location)


def write_lab_records(path: str, slices: Iterable) -> int:
    """Writes slices (:class:`Slice` objects or ``(name, image, mask)`` triples) to one TFRecord
    file, atomically.

    The file appears under its final name only once complete (written as ``<path>.partial``,
    then renamed), so an interrupted write never leaves a truncated file behind.
    """
    import tensorflow as tf
    partial = path + ".partial"
    count = 0
    with tf.io.TFRecordWriter(partial) as writer:
        for item in slices:
            writer.write(encode_slice(item if isinstance(item, Slice) else Slice(*item)))
            count += 1
    tf.io.gfile.rename(partial, path, overwrite=True)
    return count


def iter_lab_records(path: str) -> Iterator[Slice]:
    """Yields the checked slices of one TFRecord file; errors name the file and record index."""
    import tensorflow as tf
    index = -1
    try:
        for index, serialized in enumerate(
                tf.data.TFRecordDataset(path, compression_type=compression_of(path))
                .as_numpy_iterator()):
            yield decode_example(serialized, where=f"{path}: record {index}")
    except tf.errors.DataLossError as exc:
        raise RecordError(f"{path}: not a readable TFRecord file after record {index} "
                          f"(truncated or corrupt): {exc.message.splitlines()[0]}") from exc
    except tf.errors.OpError as exc:
        raise RecordError(f"{path}: cannot read: {exc.message.splitlines()[0]}") from exc


def compression_of(path: str) -> Optional[str]:
    """TFRecord compression by file name, as Beam's ``ReadFromTFRecord`` infers it."""
    if path.endswith(".gz"):
        return "GZIP"
    if path.endswith(".zlib"):
        return "ZLIB"
    return ""


def record_file_name(prefix: str, shard: int = 0, num_shards: int = 1) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{TFRECORD_SUFFIX}"


def list_record_files(directory: str) -> list:
    """TFRecord files directly in ``directory`` (what the pipeline's file patterns match)."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in tf.io.gfile.listdir(directory)
                  if not name.startswith(".") and not name.endswith(".partial"))
