"""Checks that run before the pipeline, so bad input fails in seconds with a message naming the
file and record, instead of minutes later as a stack trace from inside a Beam worker."""
import glob
import os
import uuid
from typing import Dict, Optional

from tqdm import tqdm

from trainer import records


class InputDataError(ValueError):
    """The input data cannot be used; the message says which file or folder and why."""


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
