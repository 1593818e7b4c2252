"""Runs ``create_pipeline`` on this machine, with ML Metadata in SQLite under the pipeline root.

Two local orchestrators run the same definition:

- ``beam`` (default): TFX's ``BeamDagRunner``, each component a step of a Beam pipeline. It is
  the orchestrator the design names for local debugging, and it exercises the Beam code paths
  the data components use at scale.
- ``local``: TFX's ``LocalDagRunner``, components one after another in this process; the
  simplest to step through in a debugger.

One run at a time per pipeline root: :func:`run_pipeline` holds an exclusive ``fcntl`` lock on
``<pipeline root>/.lvseg-run.lock`` for the whole run, and a second run on the same root fails
at once (:class:`PipelineLockedError`) instead of racing the first for ML Metadata's SQLite file
and the artifact folders. The kernel releases the lock when its process ends, however it ends,
so a killed run never blocks the next one.

On the DirectRunner the Beam options name this project's ``setup.py`` as the workers' dependency
(:func:`direct_runner_dependency_args`): without such an option TFX's Beam executors build a
source package of TFX for remote workers in a new temp folder that is never deleted.
"""
import contextlib
import dataclasses
import errno
import fcntl
import os
import sys
from typing import Dict, List, Optional, Sequence

from apache_beam.options import pipeline_options
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
from tfx.proto.orchestration import pipeline_pb2

from dataset import sunnybrook
from pipeline import configs
from pipeline.pipeline import DicomSource, create_pipeline, never_cached
from pipeline.settings import PipelineSettings

BEAM, LOCAL, RUNNERS, DEFAULT_RUNNER = (configs.BEAM_RUNNER, configs.LOCAL_RUNNER,
                                         configs.LOCAL_RUNNERS, configs.DEFAULT_LOCAL_RUNNER)


@dataclasses.dataclass
class LocalRun:
    """Where a local run reads and writes, and how (``settings``: what it trains and how it
    gates, shared with the Kubeflow compiler)."""

    data_root: str = configs.DEFAULT_DATA_ROOT
    output_root: str = configs.DEFAULT_OUTPUT_ROOT
    runner: str = DEFAULT_RUNNER
    settings: PipelineSettings = dataclasses.field(default_factory=PipelineSettings)
    beam_args: Sequence[str] = configs.DEFAULT_BEAM_ARGS
    # DICOMs + contours instead of data_root's TFRecords (SunnybrookExampleGen)
    dicom_root: Optional[str] = None
    contour_root: Optional[str] = None
    link_path: Optional[str] = None
    eval_fraction: float = sunnybrook.DEFAULT_EVAL_FRACTION
    split_seed: int = sunnybrook.DEFAULT_SEED
    # TFX's InfraValidator with the official TF Serving image in Docker, instead of ServingCheck
    docker_infra_validation: bool = False

    @property
    def pipeline_name(self) -> str:
        return self.settings.pipeline_name

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    @property
    def pipeline_root(self) -> str:
        return configs.pipeline_root(self.output_root, self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return configs.metadata_path(self.output_root, self.pipeline_name)

    @property
    def serving_model_dir(self) -> str:
        return configs.serving_model_dir(self.output_root, self.model_name)

    def dicom_source(self) -> Optional[DicomSource]:
        if not self.dicom_root and not self.contour_root:
            return None
        if not (self.dicom_root and self.contour_root):
            raise ValueError("DICOM input needs both a DICOM root and a contour root")
        paths = [os.path.abspath(p) for p in (self.dicom_root, self.contour_root)]
        for path in paths:
            if not os.path.isdir(path):
                raise FileNotFoundError(f"{path} does not exist (or is not a folder)")
        link = os.path.abspath(self.link_path) if self.link_path else ""
        return DicomSource(dicom_root=paths[0], contour_root=paths[1], link_path=link,
                           eval_fraction=self.eval_fraction, seed=self.split_seed,
                           input_fingerprint=sunnybrook.input_fingerprint(*paths, link))

    def split_patterns(self) -> Optional[Dict[str, str]]:
        """Split folders when the data root has them, else None (one pattern, hash split)."""
        if all(os.path.isdir(os.path.join(self.data_root, split))
               for split in configs.SPLIT_PATTERNS):
            return dict(configs.SPLIT_PATTERNS)
        return None


def build_pipeline(run: LocalRun) -> tfx.dsl.Pipeline:
    if run.runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {run.runner!r}")
    dicom_source = run.dicom_source()
    settings = run.settings
    return create_pipeline(
        pipeline_name=settings.pipeline_name,
        pipeline_root=os.path.abspath(run.pipeline_root),
        data_root=None if dicom_source else os.path.abspath(run.data_root),
        dicom_source=dicom_source,
        serving_model_dir=os.path.abspath(run.serving_model_dir),
        split_patterns=run.split_patterns(),
        schema_path=settings.schema_path,
        train_steps=settings.train_steps,
        training_config=settings.training_config(),
        transform_config=settings.transform_config(),
        min_dice=settings.min_dice,
        max_dice_drop=settings.max_dice_drop,
        max_slice_dice_drop=settings.max_slice_dice_drop,
        beam_pipeline_args=direct_runner_dependency_args(run.beam_args),
        docker_infra_validation=run.docker_infra_validation,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.abspath(run.metadata_path)),
        enable_cache=settings.enable_cache)


PROJECT_SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "setup.py")
# the options that make TFX's executors skip building their own package (its dependency_utils)
_DEPENDENCY_OPTIONS = ("extra_packages", "setup_file", "requirements_file",
                       "worker_harness_container_image", "sdk_container_image")
_DIRECT_RUNNERS = ("direct", "directrunner")


def direct_runner_dependency_args(beam_args: Sequence[str]) -> List[str]:
    """``beam_args``, plus ``--setup_file=<this project's setup.py>`` on the DirectRunner.

    Unless a Beam option names the workers' dependencies, every TFX Beam executor (StatisticsGen,
    Transform, Evaluator, ...) runs ``setup.py sdist`` of TFX into a new ``tempfile.mkdtemp()``
    folder and never deletes it: 50-150 MB and ~3 s per component and run, which filled a 250 GB
    disk over a few hundred test runs. The DirectRunner's workers are this interpreter or its
    subprocesses and need nothing staged, and it never reads the option; a remote runner (given
    with its own options) keeps whatever they say.
    """
    args = list(beam_args)
    options = pipeline_options.PipelineOptions(flags=args).get_all_options()
    runner = options.get("runner")
    if (runner and runner.lower() not in _DIRECT_RUNNERS) or any(
            options.get(name) for name in _DEPENDENCY_OPTIONS):
        return args
    if not os.path.isfile(PROJECT_SETUP_FILE):
        return args  # installed without its sources: TFX builds its package, as it would anyway
    return args + [f"--setup_file={PROJECT_SETUP_FILE}"]


@contextlib.contextmanager
def _argv_hidden_from_absl():
    """TFX's Beam executors parse ``sys.argv`` with absl flags (``FLAGS(sys.argv + beam_args)``),
    so the caller's own options reach absl: ``lvseg -v`` or ``pytest -v`` reads as absl's
    ``--verbosity`` and fails the component. The pipeline gets its settings from arguments, never
    from the command line, so it runs with the program name alone."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


LOCK_FILE = ".lvseg-run.lock"


class PipelineLockedError(RuntimeError):
    """Another run holds the pipeline root; the message names the root and that run's pid."""


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def pipeline_lock(pipeline_root: str):
    """Holds the run lock of ``pipeline_root``; raises PipelineLockedError at once if taken.

    ``flock`` on a file in the root: released by the kernel when the holder exits or is killed
    (the file stays, with the last holder's pid, and is reused). The pid is for the message only.
    """
    root = os.path.abspath(pipeline_root)
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _try_flock(fd):
            # raised outside the except clause: the CLI reports the innermost exception
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise PipelineLockedError(
                f"another run (pid {holder}) is using the pipeline root {root}; wait for it to "
                "finish or stop it")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def ensure_unlocked(pipeline_root: str) -> None:
    """Raises PipelineLockedError now, before any slow checks, if another run holds the root.

    Creates nothing; :func:`run_pipeline` takes the lock itself for the run."""
    if os.path.exists(os.path.join(os.path.abspath(pipeline_root), LOCK_FILE)):
        with pipeline_lock(pipeline_root):
            pass


def compile_pipeline(pipeline: tfx.dsl.Pipeline) -> pipeline_pb2.Pipeline:
    """The pipeline's IR, with the cache off for the components that must always run
    (``never_cached``: the served model is read anew on every run)."""
    ir = compiler.Compiler().compile(pipeline)
    uncached = set(never_cached(pipeline))
    for node in ir.nodes:
        if node.pipeline_node.node_info.id in uncached:
            node.pipeline_node.execution_options.caching_options.enable_cache = False
    return ir


def run_pipeline(run: LocalRun) -> None:
    ir = compile_pipeline(build_pipeline(run))
    with pipeline_lock(run.pipeline_root), _argv_hidden_from_absl():
        if run.runner == BEAM:
            BeamDagRunner().run_with_ir(ir)
        else:
            tfx.orchestration.LocalDagRunner().run_with_ir(ir)
