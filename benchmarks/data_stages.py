"""The pipeline's data stages, in one process, in several, and through Beam's portable runner.

    .venv/bin/python benchmarks/data_stages.py [--data-root data/synthetic] [--workers 2]
        [--skip-portable] [--keep-outputs DIR]

Runs the stages of ``create_pipeline`` up to Transform (ImportExampleGen, StatisticsGen,
ImportSchemaGen, ExampleValidator, DataGate, Transform) as a TFX partial run, three times on the
same data: Beam's DirectRunner in memory, DirectRunner with worker processes, and the portable
runner (``--runner=PortableRunner --job_endpoint=embed --environment_type=EXTERNAL``) against an
SDK worker pool started here, the way Flink or Spark on Kubernetes run Python workers beside
their task managers. Checks that the outputs match and prints one JSON object with wall times:
of the whole partial run, and per stage from its ML Metadata (StatisticsGen + Transform, the
two Beam-heavy stages, summed).
``tests/test_beam_scaleout.py`` uses the same functions on the tiny test set.
"""
import argparse
import collections
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Counter, Dict, Iterator, List, Optional, Sequence
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer import tf_env  # noqa: F401  (before TensorFlow)

import tensorflow as tf  # noqa: E402
from tensorflow_metadata.proto.v0 import statistics_pb2  # noqa: E402
from tfx import v1 as tfx  # noqa: E402
from tfx.orchestration import pipeline as tfx_pipeline  # noqa: E402

from benchmarks import common  # noqa: E402
from pipeline import configs, local_runner  # noqa: E402

LAST_DATA_STAGE = "Transform"
DATA_STAGES = ("ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
               "DataGate", LAST_DATA_STAGE)
SPLITS = tuple(configs.SPLIT_PATTERNS)
WORKER_POOL_START_TIMEOUT_S = 60


def multi_process_args(workers: int) -> List[str]:
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def portable_args(worker_pool_port: int) -> List[str]:
    """The portable runner protocol a Flink or Spark job server speaks; ``embed`` starts Beam's
    own job server in this process, and workers come from the external pool."""
    return ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{worker_pool_port}"]


@dataclasses.dataclass
class DataStageOutputs:
    seconds: float
    example_counts: Dict[str, int]
    statistics: Dict[str, statistics_pb2.DatasetFeatureStatisticsList]
    transformed_examples: Dict[str, Counter[str]]  # split -> multiset of example digests


def run_data_stages(data_root: str, output_root: str,
                    beam_args: Sequence[str]) -> DataStageOutputs:
    """Runs create_pipeline's data stages into a fresh ``output_root`` and reads their outputs."""
    run = local_runner.LocalRun(data_root=data_root, output_root=output_root,
                                runner=local_runner.LOCAL, beam_args=list(beam_args))
    pipeline = local_runner.build_pipeline(run)
    os.makedirs(run.pipeline_root, exist_ok=True)
    started = time.perf_counter()
    # TFX's Beam executors parse sys.argv with absl; the caller's own options must not reach it.
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        tfx.orchestration.LocalDagRunner().run(
            pipeline, run_options=tfx_pipeline.RunOptions(to_nodes=[LAST_DATA_STAGE]))
    seconds = time.perf_counter() - started
    root = run.pipeline_root
    return DataStageOutputs(
        seconds=seconds,
        example_counts={split: _count_records(_split_files(root, "ImportExampleGen", "examples",
                                                           split)) for split in SPLITS},
        statistics={split: _read_statistics(root, split) for split in SPLITS},
        transformed_examples={split: _example_digests(
            _split_files(root, LAST_DATA_STAGE, "transformed_examples", split))
            for split in SPLITS})


def _split_files(pipeline_root: str, component: str, output: str, split: str) -> List[str]:
    files = sorted(glob.glob(os.path.join(pipeline_root, component, output, "*",
                                          f"Split-{split}", "*")))
    if not files:
        raise FileNotFoundError(f"no {component} {output} for split {split} in {pipeline_root}")
    return files


def _records(files: Sequence[str]) -> Iterator[bytes]:
    for record in tf.data.TFRecordDataset(list(files), compression_type="GZIP"):
        yield record.numpy()


def _count_records(files: Sequence[str]) -> int:
    return sum(1 for _ in _records(files))


def _read_statistics(pipeline_root: str, split: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    """The split's statistics with features sorted by path: worker processes list them in the
    order their partial results merged, the statistics themselves are the same."""
    [path] = _split_files(pipeline_root, "StatisticsGen", "statistics", split)
    with open(path, "rb") as f:
        statistics = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    for dataset in statistics.datasets:
        features = sorted(dataset.features, key=lambda feature: tuple(feature.path.step))
        del dataset.features[:]
        dataset.features.extend(features)
    return statistics


def _example_digest(serialized: bytes) -> str:
    """A digest of a tf.Example's content, independent of the map order of its serialization."""
    features = tf.train.Example.FromString(serialized).features.feature
    digest = hashlib.sha256()
    for name in sorted(features):
        feature = features[name]
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        digest.update(f"{name}:{kind}:{len(values)}:".encode())
        digest.update(b"".join(values) if kind == "bytes_list" else repr(list(values)).encode())
    return digest.hexdigest()


def _example_digests(files: Sequence[str]) -> Counter[str]:
    return collections.Counter(_example_digest(record) for record in _records(files))


def compare_outputs(expected: DataStageOutputs, actual: DataStageOutputs) -> List[str]:
    """What differs between two runs' outputs; empty when they match."""
    differences = []
    if actual.example_counts != expected.example_counts:
        differences.append(f"example counts {actual.example_counts} != {expected.example_counts}")
    for split in SPLITS:
        if actual.statistics[split] != expected.statistics[split]:
            differences.append(f"statistics of split {split} differ")
        if actual.transformed_examples[split] != expected.transformed_examples[split]:
            differences.append(f"transformed examples of split {split} differ")
    return differences


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def worker_pool_environment() -> Dict[str, str]:
    """The pool starts each worker with the ``python`` first on PATH: this venv's, with Keras 2."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env[tf_env.LEGACY_KERAS_ENV] = "1"
    return env


@contextlib.contextmanager
def sdk_worker_pool(port: int, log_path: str) -> Iterator[subprocess.Popen]:
    """A Beam SDK worker pool on ``port``, in its own process group, stopped on exit."""
    with open(log_path, "wb") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
             f"--service_port={port}"],
            env=worker_pool_environment(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            _wait_for_port(port, pool, log_path)
            yield pool
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pool.pid, signal.SIGTERM)  # the pool and the workers it started
            try:
                pool.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(pool.pid, signal.SIGKILL)
                pool.wait()


def _wait_for_port(port: int, pool: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + WORKER_POOL_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if pool.poll() is not None:
            raise RuntimeError(f"the SDK worker pool exited with {pool.returncode}; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("localhost", port), 1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the SDK worker pool did not listen on port {port} within "
                       f"{WORKER_POOL_START_TIMEOUT_S} s; see {log_path}")


def stage_seconds(output_root: str) -> Dict[str, float]:
    """Per-stage seconds of a data-stages run, from its ML Metadata (see pipeline_stages.py)."""
    stages = common.stage_seconds(
        os.path.abspath(configs.metadata_path(output_root)), configs.PIPELINE_NAME)
    return {name: stage["seconds"] for name, stage in stages.get("stages", {}).items()}



def transform_outputs(pipeline_root: Optional[str], data_root: str, work_dir: str,
                      log: Callable[[str], None] = lambda line: None) -> common.TransformOutputs:
    """The Transform outputs under ``pipeline_root``, or made now: the pipeline's data stages
    (ImportExampleGen ... Transform, single-process DirectRunner) on ``data_root``."""
    if pipeline_root:
        return common.TransformOutputs(pipeline_root)
    from pipeline import configs, local_runner

    output_root = os.path.join(work_dir, "data_stages")
    log(f"running the data stages on {data_root} (into {output_root})")
    with common.stdout_to_stderr():
        run_data_stages(data_root, output_root, list(configs.DEFAULT_BEAM_ARGS))
    return common.TransformOutputs(local_runner.LocalRun(output_root=output_root).pipeline_root)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=configs.DEFAULT_DATA_ROOT)
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes")
    parser.add_argument("--skip-portable", action="store_true")
    parser.add_argument("--keep-outputs", metavar="DIR",
                        help="write the runs' outputs under DIR and keep them (the single-process "
                             "pipeline root then feeds training_throughput.py and "
                             "input_pipeline.py); default: a temporary folder")
    args = parser.parse_args(argv)

    beam_args = {"single_process": list(configs.DEFAULT_BEAM_ARGS),
                 "multi_process": multi_process_args(args.workers)}
    port = free_port()
    if not args.skip_portable:
        beam_args["portable"] = portable_args(port)
    outputs = {}
    stages = {}
    with contextlib.ExitStack() as stack:
        if args.keep_outputs:
            work = os.path.abspath(args.keep_outputs)
            os.makedirs(work, exist_ok=True)
        else:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="data_stages_"))
        for name, args_ in beam_args.items():
            output_root = os.path.join(work, name)
            shutil.rmtree(output_root, ignore_errors=True)  # a fresh store: nothing cached
            # Keras/absl lines go to stderr: stdout is for the JSON object
            with contextlib.redirect_stdout(sys.stderr):
                if name == "portable":
                    with sdk_worker_pool(port, os.path.join(work, "worker_pool.log")):
                        outputs[name] = run_data_stages(args.data_root, output_root, args_)
                else:
                    outputs[name] = run_data_stages(args.data_root, output_root, args_)
            stages[name] = stage_seconds(output_root)

    single = outputs["single_process"]
    stats_and_transform = {name: round(sum(seconds.get(stage, 0.0)
                                           for stage in ("StatisticsGen", LAST_DATA_STAGE)), 1)
                           for name, seconds in stages.items()}
    print(json.dumps({
        "benchmark": "data_stages",
        "data_root": os.path.abspath(args.data_root),
        "records": single.example_counts,
        "stages": list(DATA_STAGES),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "seconds": {name: round(result.seconds, 1) for name, result in outputs.items()},
        "stage_seconds": stages,
        "statisticsgen_plus_transform_seconds": stats_and_transform,
        "multi_over_single_process": {
            "statisticsgen_plus_transform": round(
                stats_and_transform["multi_process"] / stats_and_transform["single_process"], 3)
            if stats_and_transform.get("single_process") else None,
            "all_data_stages": round(outputs["multi_process"].seconds / single.seconds, 3)},
        "beam_args": beam_args,
        "outputs_match_single_process": {name: not compare_outputs(single, result)
                                         for name, result in outputs.items()
                                         if name != "single_process"},
        "kept_outputs": work if args.keep_outputs else None,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
