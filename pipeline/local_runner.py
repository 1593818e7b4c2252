"""Runs ``create_pipeline`` on this machine, with ML Metadata in SQLite under the pipeline root.

Two local orchestrators run the same definition:

- ``beam`` (default): TFX's ``BeamDagRunner``, each component a step of a Beam pipeline. It is
  the orchestrator the design names for local debugging, and it exercises the Beam code paths
  the data components use at scale.
- ``local``: TFX's ``LocalDagRunner``, components one after another in this process; the
  simplest to step through in a debugger.
"""
import contextlib
import dataclasses
import os
import sys
from typing import Dict, Optional, Sequence

from tfx import v1 as tfx
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from components import sunnybrook
from pipeline import configs
from pipeline.pipeline import DicomSource, create_pipeline

BEAM = "beam"
LOCAL = "local"
RUNNERS = (BEAM, LOCAL)
DEFAULT_RUNNER = BEAM


@dataclasses.dataclass
class LocalRun:
    """Where a local run reads and writes, and how it trains and gates."""

    data_root: str = configs.DEFAULT_DATA_ROOT
    output_root: str = configs.DEFAULT_OUTPUT_ROOT
    runner: str = DEFAULT_RUNNER
    pipeline_name: str = configs.PIPELINE_NAME
    model_name: str = configs.MODEL_NAME
    schema_path: Optional[str] = configs.CURATED_SCHEMA_PATH
    train_steps: int = configs.DEFAULT_TRAIN_STEPS
    training: Dict = dataclasses.field(default_factory=dict)  # TrainingConfig overrides
    normalization: str = configs.DEFAULT_NORMALIZATION
    min_dice: float = configs.MIN_DICE
    max_dice_drop: float = configs.MAX_DICE_DROP
    beam_args: Sequence[str] = configs.DEFAULT_BEAM_ARGS
    enable_cache: bool = True
    # DICOMs + contours instead of data_root's TFRecords (SunnybrookExampleGen)
    dicom_root: Optional[str] = None
    contour_root: Optional[str] = None
    link_path: Optional[str] = None
    eval_fraction: float = sunnybrook.DEFAULT_EVAL_FRACTION
    split_seed: int = sunnybrook.DEFAULT_SEED
    # TFX's InfraValidator with the official TF Serving image in Docker, instead of ServingCheck
    docker_infra_validation: bool = False

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
    return create_pipeline(
        pipeline_name=run.pipeline_name,
        pipeline_root=os.path.abspath(run.pipeline_root),
        data_root=None if dicom_source else os.path.abspath(run.data_root),
        dicom_source=dicom_source,
        serving_model_dir=os.path.abspath(run.serving_model_dir),
        split_patterns=run.split_patterns(),
        schema_path=run.schema_path,
        train_steps=run.train_steps,
        training_config=configs.training_custom_config(run.training),
        transform_config={"normalization": run.normalization},
        min_dice=run.min_dice,
        max_dice_drop=run.max_dice_drop,
        beam_pipeline_args=list(run.beam_args),
        docker_infra_validation=run.docker_infra_validation,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.abspath(run.metadata_path)),
        enable_cache=run.enable_cache)


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


def run_pipeline(run: LocalRun) -> None:
    pipeline = build_pipeline(run)
    os.makedirs(run.pipeline_root, exist_ok=True)
    with _argv_hidden_from_absl():
        if run.runner == BEAM:
            BeamDagRunner().run(pipeline)
        else:
            tfx.orchestration.LocalDagRunner().run(pipeline)
