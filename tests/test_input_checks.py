"""Bad input fails before the pipeline starts, with a message naming the file and record."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import input_checks
from dataset import records
from tests.conftest import REPO_ROOT


def _first_file(data_root, split):
    return records.list_record_files(os.path.join(data_root, split))[0]


def _append_record(path, example_bytes):
    """Rewrites a TFRecord file with one more record at the end."""
    existing = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    with tf.io.TFRecordWriter(path) as writer:
        for serialized in existing + [example_bytes]:
            writer.write(serialized)
    return len(existing)


def test_good_data_passes_with_counts(tiny_data_root):
    counts = input_checks.check_data_root(
        tiny_data_root, {"train": "train/*", "eval": "eval/*"}, progress=False)
    assert counts == {"train": 12, "eval": 4}


def test_wrong_size_image_names_file_and_record(copy_tiny_data):
    data_root = copy_tiny_data()
    path = _first_file(data_root, "eval")
    image, mask = np.zeros(records.IMAGE_SHAPE, np.int64), np.zeros(records.IMAGE_SHAPE, np.uint8)
    example = tf.train.Example.FromString(records.encode_example("short-one", image, mask))
    example.features.feature[records.IMAGE_KEY].bytes_list.value[0] = b"\1" * 4096
    index = _append_record(path, example.SerializeToString())
    with pytest.raises(input_checks.InputDataError) as error:
        input_checks.check_data_root(data_root, {"train": "train/*", "eval": "eval/*"},
                                     progress=False)
    message = str(error.value)
    assert path in message and f"record {index}" in message and "short-one" in message
    assert "image_raw holds 4096 bytes" in message


def test_corrupt_file_is_named(copy_tiny_data):
    data_root = copy_tiny_data()
    path = _first_file(data_root, "train")
    with open(path, "r+b") as f:  # flip bytes in the middle of the first record's payload
        f.seek(2000)
        f.write(b"\xff" * 64)
    with pytest.raises(input_checks.InputDataError, match="truncated or corrupt") as error:
        input_checks.check_data_root(data_root, {"train": "train/*"}, progress=False)
    assert path in str(error.value)


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(input_checks.InputDataError, match="does not exist"):
        input_checks.check_data_root(str(tmp_path / "nowhere"), None, progress=False)
    (tmp_path / "train").mkdir()
    with pytest.raises(input_checks.InputDataError, match="no files match"):
        input_checks.check_data_root(str(tmp_path), {"train": "train/*"}, progress=False)
    (tmp_path / "train" / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(input_checks.InputDataError, match="holds no records"):
        input_checks.check_data_root(str(tmp_path), {"train": "train/*"}, progress=False)


def test_unwritable_output_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(input_checks.InputDataError, match="cannot write to .*a-file"):
        input_checks.check_writable(str(blocker / "outputs"))


def test_cli_run_reports_bad_data_in_one_line_without_a_trace(copy_tiny_data, tmp_path):
    data_root = copy_tiny_data()
    path = _first_file(data_root, "train")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1000)
    result = subprocess.run(
        [sys.executable, "-m", "lvseg", "run", "--data-root", data_root,
         "--output-root", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("lvseg: error:")]
    assert len(error_lines) == 1 and path in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "out", "pipeline_root"))
