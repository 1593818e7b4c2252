"""The pipeline's data stages scale out through Beam and give the same outputs.

create_pipeline's stages up to Transform run on the tiny set three ways: DirectRunner in memory
(the reference), DirectRunner with 2 worker processes, and Beam's portable runner protocol (the
one Flink and Spark job servers speak) with workers from an external SDK worker pool, as Flink
on Kubernetes runs them. Example counts, statistics and transformed examples must match.
The in-memory run must leave nothing in the temp folder. Timings: ``benchmarks/data_stages.py``.
"""
import contextlib
import os
import tempfile

import pytest

from benchmarks import data_stages
from tests.conftest import TINY
from pipeline import configs

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def temp_folders_in(folder):
    """``tempfile``'s folders (``mkdtemp`` and the like) go under ``folder`` meanwhile."""
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


@pytest.fixture(scope="module")
def single_process_run(tiny_data_root, tmp_path_factory):
    """The reference run's outputs, and what it left in the temp folder."""
    # every temp folder of the run goes here: the run must leave none (TFX's Beam executors build
    # a package of TFX in one per component unless the Beam options name the dependencies)
    temp = tmp_path_factory.mktemp("single_temp")
    with temp_folders_in(temp):
        outputs = data_stages.run_data_stages(
            tiny_data_root, str(tmp_path_factory.mktemp("single")), configs.DEFAULT_BEAM_ARGS)
    # folders only: TF's autograph writes small module files it deletes when the process exits
    return outputs, sorted(name for name in os.listdir(temp) if (temp / name).is_dir())


@pytest.fixture(scope="module")
def single_process(single_process_run):
    return single_process_run[0]


def test_single_process_reads_every_record(single_process):
    eval_patients = round(TINY["num_patients"] * TINY["eval_fraction"])
    slices = TINY["slices_per_patient"]
    assert single_process.example_counts == {
        "train": (TINY["num_patients"] - eval_patients) * slices, "eval": eval_patients * slices}
    for split, count in single_process.example_counts.items():
        assert sum(single_process.transformed_examples[split].values()) == count
        assert single_process.statistics[split].datasets[0].num_examples == count


def test_the_run_leaves_no_temp_folders(single_process_run):
    assert single_process_run[1] == []


def test_two_worker_processes_give_the_same_outputs(single_process, tiny_data_root, tmp_path):
    multi_process = data_stages.run_data_stages(
        tiny_data_root, str(tmp_path), data_stages.multi_process_args(workers=2))
    assert data_stages.compare_outputs(single_process, multi_process) == []


def test_portable_runner_with_an_external_worker_pool_gives_the_same_outputs(
        single_process, tiny_data_root, tmp_path):
    port = data_stages.free_port()
    log_path = str(tmp_path / "worker_pool.log")
    # TFX builds and stages a package of itself for the pool's workers (they ignore it): in a
    # temp folder it never deletes, so one under tmp_path
    with temp_folders_in(tmp_path), data_stages.sdk_worker_pool(port, log_path) as pool:
        portable = data_stages.run_data_stages(
            tiny_data_root, str(tmp_path / "run"), data_stages.portable_args(port))
        assert pool.poll() is None
    assert data_stages.compare_outputs(single_process, portable) == []
    with open(log_path) as log:  # the work ran in the pool's workers, started as `python`
        assert "Starting worker with command ['python'" in log.read()
