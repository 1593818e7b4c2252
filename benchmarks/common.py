"""What the benchmark scripts share: the machine's description, timing, peak memory, JSON output,
and transformed examples (the Transform component's outputs) to train and read from.

Every script prints exactly one JSON object on stdout (anything else they or the libraries print
goes to stderr), so ``benchmarks/run_all.py`` and a shell pipe can read it.
"""
import contextlib
import glob
import json
import os
import platform
import resource
import sys
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> Dict[str, object]:
    """Where a figure was measured: CPUs, model, memory, GPUs, and how busy the machine was."""
    gpus = []
    with contextlib.suppress(Exception):
        import tensorflow as tf  # only if the script has TensorFlow loaded already
        if "tensorflow" in sys.modules:
            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
        "gpus": gpus,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


# --- timing -----------------------------------------------------------------------------------


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.started = time.perf_counter()
        self.seconds = None
        return self

    def __exit__(self, *exc_info) -> None:
        self.seconds = time.perf_counter() - self.started


def percentiles_ms(seconds, percentiles=(50, 90, 99)) -> Dict[str, float]:
    milliseconds = np.asarray(seconds, dtype=np.float64) * 1000.0
    summary = {f"p{p}": round(float(np.percentile(milliseconds, p)), 2) for p in percentiles}
    summary["mean"] = round(float(milliseconds.mean()), 2)
    summary["n"] = int(milliseconds.size)
    return summary


def ratio(numerator: Optional[float], denominator: Optional[float], digits: int = 3):
    if not numerator or not denominator:
        return None
    return round(float(numerator) / float(denominator), digits)


def rounded(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


# --- memory -----------------------------------------------------------------------------------


def peak_rss_mb_of_this_process() -> float:
    """The kernel's high-water mark of this process's resident memory (Linux: KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


class ProcessTreeMemory:
    """Samples the summed resident memory of a process and all its descendants in a thread.

    ``peak_mb`` is the largest sum seen (Beam workers, the serving-check server and the like
    count while they run); sampling every ``interval_s`` can miss a peak shorter than that.
    """

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            processes = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        if total / 2 ** 20 > self.peak_mb:
            self.peak_mb = total / 2 ** 20
            self.peak_processes = len(processes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ProcessTreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


# --- output -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keeps stdout for the JSON object: Keras' epoch lines and the like go to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit(result: Dict[str, object]) -> None:
    """Prints the script's one JSON object, with the machine it ran on."""
    result = dict(result)
    result.setdefault("machine", machine())
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.flush()


def last_json_object(text: str) -> Dict[str, object]:
    """The last top-level JSON object in a script's stdout (``emit`` starts it at a line start)."""
    decoder = json.JSONDecoder()
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        with contextlib.suppress(ValueError):
            value, _ = decoder.raw_decode(text[start:])
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object in the output")


# --- transformed examples ---------------------------------------------------------------------


def _newest(pattern: str) -> Optional[str]:
    matches = sorted(glob.glob(pattern), key=os.path.getmtime)
    return matches[-1] if matches else None


class TransformOutputs:
    """The Transform component's outputs in a pipeline root: examples, graph, schema."""

    def __init__(self, pipeline_root: str):
        self.pipeline_root = os.path.abspath(pipeline_root)
        self.transformed_examples = _newest(os.path.join(
            self.pipeline_root, "Transform", "transformed_examples", "*"))
        self.transform_graph = _newest(os.path.join(
            self.pipeline_root, "Transform", "transform_graph", "*"))
        self.schema = _newest(os.path.join(self.pipeline_root, "ImportSchemaGen", "schema", "*"))
        missing = [name for name in ("transformed_examples", "transform_graph", "schema")
                   if getattr(self, name) is None]
        if missing:
            raise FileNotFoundError(f"no Transform outputs ({', '.join(missing)}) under "
                                    f"{self.pipeline_root}")

    def split_files(self, split: str) -> List[str]:
        return sorted(glob.glob(os.path.join(self.transformed_examples, f"Split-{split}", "*")))


def load_transformed_arrays(outputs: TransformOutputs, split: str):
    """Decoded ``(images [N, 256, 256, 1] float32, labels [N, 256, 256] int64)`` of a split, read
    with the transformed schema: the arrays the Trainer's dataset yields, in memory."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from trainer import preprocessing

    feature_spec = tft.TFTransformOutput(outputs.transform_graph).transformed_feature_spec()
    dataset = tf.data.TFRecordDataset(outputs.split_files(split), compression_type="GZIP")
    dataset = dataset.batch(64).map(lambda records: tf.io.parse_example(records, feature_spec))
    images, labels = [], []
    for batch in dataset:
        images.append(batch[preprocessing.IMAGE_FEATURE].numpy())
        labels.append(batch[preprocessing.LABEL_FEATURE].numpy())
    return np.concatenate(images), np.concatenate(labels)


def log_to_stderr(prefix: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"[{prefix}] {line}", file=sys.stderr, flush=True)
    return log


def stage_seconds(metadata_path: str, pipeline_name: str) -> Dict[str, object]:
    """Per-node seconds of the newest pipeline run in an ML Metadata SQLite file (read-only)."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
        return {}
    run = max(runs, key=lambda context: (context.create_time_since_epoch, context.id))
    executions = store.get_executions_by_context(run.id)
    node_of = {}
    for execution in executions:
        for context in store.get_contexts_by_execution(execution.id):
            if context.name.startswith(f"{pipeline_name}."):
                node_of[execution.id] = context.name[len(pipeline_name) + 1:]
    states = metadata_store_pb2.Execution.State
    stages = {}
    for execution in sorted(executions, key=lambda e: e.create_time_since_epoch):
        seconds = (execution.last_update_time_since_epoch
                   - execution.create_time_since_epoch) / 1000.0
        stages[node_of.get(execution.id, str(execution.id))] = {
            "seconds": round(seconds, 1), "state": states.Name(execution.last_known_state)}
    first = min(e.create_time_since_epoch for e in executions)
    last = max(e.last_update_time_since_epoch for e in executions)
    return {"run_id": run.name, "stages": stages,
            "first_stage_start_to_last_stage_end_seconds": round((last - first) / 1000.0, 1)}


class Timings:
    """Step, fit, validation and export times of one training run (training_throughput.py)."""

    def __init__(self):
        self.step_seconds = []
        self.fit_seconds = 0.0
        self.validation_seconds = 0.0
        self.export_seconds = 0.0
        self.steps = 0


def timing_callback(timings: Timings):
    """A Keras callback recording each training step and validation into ``timings``."""
    import tensorflow as tf

    class StepTimer(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._step_started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            timings.step_seconds.append(time.perf_counter() - self._step_started)
            timings.steps += 1

        def on_test_begin(self, logs=None):
            self._test_started = time.perf_counter()

        def on_test_end(self, logs=None):
            timings.validation_seconds += time.perf_counter() - self._test_started

    return StepTimer()
