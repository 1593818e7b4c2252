"""Faults around a pipeline run: a run killed during training and run again, two runs on one
pipeline root, bad input and an unwritable output folder through the real ``lvseg run``.

Bad input must fail in the checks before the pipeline starts (exit code 2, one ``lvseg: error:``
line naming the file, no pipeline root); a killed run must resume from ML Metadata's cache.
"""
import gzip
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from lvseg import cli

from pipeline import configs, local_runner, run_summary
from dataset import records
from tests.conftest import REPO_ROOT

Execution = metadata_store_pb2.Execution


# --- bad input through `lvseg run` -------------------------------------------------------------


def _first_file(data_root, split="train"):
    return records.list_record_files(os.path.join(data_root, split))[0]


def _first_record_bytes(path):
    """Size of the first record of an uncompressed TFRecord file (header, data, data CRC)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    return 12 + length + 4


def _rewrite_first_record(path, change):
    """Rewrites ``path`` with ``change(example)`` applied to its first record."""
    serialized = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    example = tf.train.Example.FromString(serialized[0])
    change(example)
    serialized[0] = example.SerializeToString()
    with tf.io.TFRecordWriter(path) as writer:
        for record in serialized:
            writer.write(record)


def _png_among_records(data_root):
    path = os.path.join(data_root, "train", "preview.png")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return path


def _truncated_inside_a_header(data_root):
    path = _first_file(data_root)
    with open(path, "r+b") as f:
        f.truncate(_first_record_bytes(path) + 5)  # record 1's 12-byte header, cut after 5
    return path


def _truncated_inside_a_record(data_root):
    path = _first_file(data_root)
    with open(path, "r+b") as f:
        f.truncate(_first_record_bytes(path) + 12 + 1000)
    return path


def _gzip_cut_short(data_root):
    source = _first_file(data_root)
    path = source + ".gz"  # read as GZIP by its name, like ImportExampleGen reads it
    with open(source, "rb") as f:
        compressed = gzip.compress(f.read(), compresslevel=1)
    with open(path, "wb") as f:
        f.write(compressed[:len(compressed) // 2])
    os.remove(source)
    return path


def _missing_feature(data_root):
    path = _first_file(data_root, "eval")
    _rewrite_first_record(path, lambda example: example.features.feature.pop(records.LABEL_KEY))
    return path


def _mask_value_255(data_root):
    path = _first_file(data_root, "eval")

    def to_255(example):
        mask = bytearray(example.features.feature[records.LABEL_KEY].bytes_list.value[0])
        mask[:100] = b"\xff" * 100  # a mask saved as 0/255, as image editors write it
        example.features.feature[records.LABEL_KEY].bytes_list.value[0] = bytes(mask)
    _rewrite_first_record(path, to_255)
    return path


def _wrong_size_image(data_root):
    path = _first_file(data_root)

    def shrink(example):
        example.features.feature[records.IMAGE_KEY].bytes_list.value[0] = b"\0" * (128 * 128 * 8)
    _rewrite_first_record(path, shrink)
    return path


def _empty_record_file(data_root):
    path = os.path.join(data_root, "eval", "empty.tfrecord")
    open(path, "wb").close()
    return path


INPUT_FAULTS = {  # fault -> (makes it in a copy of the tiny data, returns the path; message)
    "a PNG among the records": (_png_among_records, "not a TFRecord file"),
    "truncated inside a record header": (_truncated_inside_a_header, "truncated"),
    "truncated inside a record": (_truncated_inside_a_record, "truncated"),
    "a GZIP record file cut short": (_gzip_cut_short, "truncated"),
    "a record without label_raw": (_missing_feature, "missing feature(s) label_raw"),
    "mask values 0/255": (_mask_value_255, "label_raw has values [255] besides 0/1"),
    "a 128x128 image": (_wrong_size_image, "image_raw holds 131072 bytes"),
    "an empty record file": (_empty_record_file, "holds no records"),
}


def _lvseg_run(capsys, data_root, output_root, *extra):
    code = cli.main(["run", "--runner", local_runner.LOCAL, "--data-root", data_root,
                     "--output-root", output_root, *extra])
    return code, capsys.readouterr().err


def _assert_refused_before_the_pipeline(code, err, named, output_root):
    errors = [line for line in err.splitlines() if line.startswith("lvseg: error:")]
    assert code == cli.EXIT_BAD_INPUT, err
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert not os.path.exists(local_runner.LocalRun(output_root=output_root).pipeline_root)


@pytest.mark.parametrize("fault", sorted(INPUT_FAULTS))
def test_bad_input_is_refused_naming_the_file_before_the_pipeline_starts(
        fault, copy_tiny_data, tmp_path, capsys):
    make, message = INPUT_FAULTS[fault]
    path = make(copy_tiny_data())
    output_root = str(tmp_path / "out")
    code, err = _lvseg_run(capsys, os.path.dirname(os.path.dirname(path)), output_root)
    _assert_refused_before_the_pipeline(code, err, path, output_root)
    assert message in err


def test_an_empty_data_folder_is_refused_naming_it(tmp_path, capsys):
    data_root = tmp_path / "data"
    data_root.mkdir()
    output_root = str(tmp_path / "out")
    code, err = _lvseg_run(capsys, str(data_root), output_root)
    _assert_refused_before_the_pipeline(code, err, f"no files match {data_root}", output_root)


def test_an_unwritable_output_folder_is_refused_naming_it(tiny_data_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"  # root may write anywhere: a file in the way stops anyone
    blocker.write_text("not a folder")
    output_root = str(blocker / "outputs")
    code, err = _lvseg_run(capsys, tiny_data_root, output_root)
    _assert_refused_before_the_pipeline(code, err, f"cannot write to {output_root}", output_root)


# --- one run per pipeline root -----------------------------------------------------------------

_HOLD_THE_LOCK = """
import sys, time
from pipeline import local_runner
with local_runner.pipeline_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_the_same_root_refuses_at_once_naming_root_and_holder(
        tiny_data_root, tmp_path, capsys):
    output_root = str(tmp_path / "out")
    run = local_runner.LocalRun(output_root=output_root)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_LOCK, run.pipeline_root],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        code, err = _lvseg_run(capsys, tiny_data_root, output_root)
        seconds = time.monotonic() - started
    finally:
        holder.kill()  # SIGKILL: no clean-up code of the holder runs
        holder.wait()
    message = [line for line in err.splitlines() if line.startswith("lvseg: error:")]
    assert code == cli.EXIT_BUSY and len(message) == 1, err
    assert "Traceback" not in err
    assert f"pid {holder.pid}" in message[0]
    assert os.path.abspath(run.pipeline_root) in message[0]
    assert seconds < 60
    assert not os.path.exists(run.metadata_path)  # ML Metadata was never opened
    # the kernel released the killed holder's lock: the next run takes it
    with local_runner.pipeline_lock(run.pipeline_root):
        with open(os.path.join(run.pipeline_root, local_runner.LOCK_FILE)) as f:
            assert f.read().strip() == str(os.getpid())


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    root = str(tmp_path / "root")
    with pytest.raises(RuntimeError, match="a component failed"):
        with local_runner.pipeline_lock(root):
            raise RuntimeError("a component failed")
    with local_runner.pipeline_lock(root):
        with pytest.raises(local_runner.PipelineLockedError, match=f"pid {os.getpid()}"):
            with local_runner.pipeline_lock(root):
                pass


# --- nothing left in the temp folder ------------------------------------------------------------

def test_direct_runner_args_stop_tfx_building_its_package_in_a_temp_folder():
    from tfx.utils import dependency_utils

    args = local_runner.direct_runner_dependency_args(configs.DEFAULT_BEAM_ARGS)
    assert args[-1] == f"--setup_file={local_runner.PROJECT_SETUP_FILE}"
    assert os.path.isfile(local_runner.PROJECT_SETUP_FILE)
    # TFX's own check: it adds --extra_package=<sdist it built in a temp folder> unless told
    assert dependency_utils.make_beam_dependency_flags(args) == args


@pytest.mark.parametrize("beam_args", [
    ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t",
     "--sdk_container_image=img"],
    ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL"],
    ["--direct_num_workers=2", "--requirements_file=reqs.txt"],
])
def test_other_runners_and_given_dependencies_keep_their_beam_args(beam_args):
    assert local_runner.direct_runner_dependency_args(beam_args) == beam_args


# --- a run killed during training, then run again ----------------------------------------------

TRAINED_ARGS = ["--train-steps", "40", "--epochs", "2", "--batch-size", "8", "--min-dice", "0"]
TRAINING_STARTED = re.compile(r"^Epoch 1/\d+")  # Keras, inside the Trainer's run_fn
STATE_NAMES = {value: name for name, value in Execution.State.items()}


def _node_states(run):
    """Node id -> states of its executions, oldest first (resolver nodes left out)."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = run.metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    states = {}
    for context in store.get_contexts_by_type("node"):
        node = context.name.split(".", 1)[1]
        if "resolver" in node.lower():
            continue
        executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
        if executions:
            states[node] = [STATE_NAMES[e.last_known_state] for e in executions]
    return states


def _start_and_kill_at(args, pattern, timeout_s=1200):
    """Starts ``args`` in its own process group and SIGKILLs the group at the first output line
    matching ``pattern``; returns the output up to there."""
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = queue.Queue()

    def read_lines():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # end of output
    threading.Thread(target=read_lines, daemon=True).start()
    output, deadline = [], time.monotonic() + timeout_s
    try:
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "the run ended before training:\n" + "".join(output[-40:])
            output.append(line)
            if pattern.match(line):
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)
    assert process.returncode == -signal.SIGKILL
    return "".join(output)


@pytest.mark.e2e
def test_a_run_killed_during_training_resumes_from_the_cache(tiny_data_root, tmp_path):
    output_root = str(tmp_path / "out")
    run = local_runner.LocalRun(output_root=output_root)
    args = [sys.executable, "-m", "lvseg", "run", "--data-root", tiny_data_root,
            "--output-root", output_root, *TRAINED_ARGS]

    _start_and_kill_at(args, TRAINING_STARTED)
    killed = _node_states(run)
    assert killed.pop("Trainer") == ["RUNNING"]  # killed in the middle of training
    assert {"ImportExampleGen", "Transform"} <= set(killed)
    assert all(states == ["COMPLETE"] for states in killed.values()), killed
    assert not os.path.exists(run.serving_model_dir)

    rerun = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed = _node_states(run)
    # everything before the Trainer came from the cache, but the served model, read anew
    assert killed.pop("ServedModel") == ["COMPLETE"]
    assert resumed["ServedModel"] == ["COMPLETE", "COMPLETE"]
    for node in killed:
        assert resumed[node] == ["COMPLETE", "CACHED"], (node, resumed[node])
    assert resumed["Trainer"] == ["RUNNING", "COMPLETE"]  # the dead execution stays as it was
    assert resumed["Evaluator"] == resumed["AtomicPusher"] == ["COMPLETE"]

    # the same outcome as a run that was never interrupted: blessed, one version pushed
    summary = run_summary.read_run_summary(run.metadata_path, run.pipeline_name)
    assert summary.blessed and summary.pushed and not summary.push_reused
    # one version folder (beside it, only its model card) and no leftover of the killed run
    assert sorted(os.listdir(run.serving_model_dir)) == [
        summary.pushed_version, summary.pushed_version + ".model_card.md"]
    assert os.path.isfile(os.path.join(summary.pushed_path, "saved_model.pb"))
    assert "pushed         version" in rerun.stdout
