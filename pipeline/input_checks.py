"""Checks that run before the pipeline, so bad input fails in seconds with a message naming the
file and record, instead of minutes later as a stack trace from inside a Beam worker."""
import functools
import glob
import gzip
import os
import struct
import uuid
from typing import BinaryIO, Dict, Optional

from tqdm import tqdm

from dataset import records


class InputDataError(ValueError):
    """The input data cannot be used; the message says which file or folder and why."""


# TFRecord framing: uint64 length, masked CRC32C of the length, data, masked CRC32C of the data.
_HEADER = struct.Struct("<QI")
_FOOTER_BYTES = 4
_CRC_MASK_DELTA = 0xA282EAD8


@functools.lru_cache(maxsize=None)
def _crc32c():
    import crcmod.predefined  # what Beam's TFRecord reader uses (a C extension)
    return crcmod.predefined.mkPredefinedCrcFun("crc-32c")


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c()(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def check_framing(path: str) -> int:
    """Checks that ``path`` is a sequence of whole TFRecords; returns how many it holds.

    TensorFlow's reader ends quietly when a file stops inside a record header (the file reads
    as one holding fewer records) and calls a file that is not a TFRecord at all corrupt "after
    record -1"; Beam's reader, which ImportExampleGen uses, fails on both in the middle of the
    pipeline. Record contents and their checksums are left to the reader.
    """
    import tensorflow as tf
    compression = records.compression_of(path)
    if compression == "ZLIB":
        return -1  # not checked here; the reader reports what it finds
    index = offset = 0
    try:
        with tf.io.gfile.GFile(path, "rb") as raw:
            # a plain file is skipped through by size; a GZIP stream's size is known at its end
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if compression == "GZIP" else raw
            size = None if compression == "GZIP" else raw.size()
            while True:
                header = stream.read(_HEADER.size)
                if not header:
                    return index
                whole = len(header) == _HEADER.size
                if not whole or _masked_crc32c(header[:8]) != _HEADER.unpack(header)[1]:
                    if index == 0:
                        raise InputDataError(f"{path}: not a TFRecord file (its first "
                                             f"{len(header)} bytes are not a record header)")
                    if not whole:
                        raise InputDataError(
                            f"{path}: truncated: the file ends inside the header of record "
                            f"{index} (at byte {offset + len(header)})")
                    raise InputDataError(f"{path}: corrupt: the header of record {index} at "
                                         f"byte {offset} fails its checksum")
                body = _HEADER.unpack(header)[0] + _FOOTER_BYTES
                if size is not None:
                    there = min(body, size - offset - _HEADER.size)
                    stream.seek(there, 1)
                else:
                    there = _read_past(stream, body)
                if there != body:
                    raise InputDataError(
                        f"{path}: truncated: record {index} at byte {offset} is "
                        f"{_HEADER.size + body} bytes long, the file ends "
                        f"{_HEADER.size + there} bytes into it")
                index += 1
                offset += _HEADER.size + body
    except EOFError as exc:  # a GZIP stream cut short
        raise InputDataError(f"{path}: truncated: {exc}") from None
    except (OSError, tf.errors.OpError) as exc:
        raise InputDataError(f"{path}: cannot read: {exc}") from None


def _read_past(stream: BinaryIO, count: int) -> int:
    """Reads past ``count`` bytes in chunks; returns how many there were."""
    done = 0
    while done < count:
        chunk = stream.read(min(count - done, 1 << 20))
        if not chunk:
            break
        done += len(chunk)
    return done


def check_data_root(data_root: str, split_patterns: Optional[Dict[str, str]],
                    progress: bool = True) -> Dict[str, int]:
    """Reads every record under ``data_root`` and checks it against the lab schema.

    Args:
      data_root: the folder ImportExampleGen reads.
      split_patterns: split name -> pattern under ``data_root``; None means all files, one split.
    Returns:
      the number of records per split.
    Raises:
      InputDataError: naming the first bad file or record.
    """
    if not os.path.isdir(data_root):
        raise InputDataError(f"data folder {data_root} does not exist (or is not a folder)")
    patterns = split_patterns or {"all": "*"}
    counts = {}
    bar = tqdm(desc="checking records", unit=" records", disable=not progress, leave=False)
    try:
        for split, pattern in patterns.items():
            files = sorted(path for path in glob.glob(os.path.join(data_root, pattern))
                           if os.path.isfile(path))
            if not files:
                raise InputDataError(
                    f"no files match {os.path.join(data_root, pattern)} (split {split!r})")
            counts[split] = 0
            for path in files:
                check_framing(path)
                in_file = 0
                try:
                    for _ in records.iter_lab_records(path):
                        in_file += 1
                        bar.update()
                except records.RecordError as exc:
                    raise InputDataError(str(exc)) from None
                if in_file == 0:
                    raise InputDataError(f"{path}: holds no records (empty file?)")
                counts[split] += in_file
    finally:
        bar.close()
    return counts


def check_writable(directory: str) -> None:
    """Fails fast, naming the folder, if ``directory`` cannot be created or written."""
    probe = os.path.join(directory, f".write-probe-{uuid.uuid4().hex}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise InputDataError(f"cannot write to {directory}: {exc.strerror}") from None
