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

from pipeline import configs
from pipeline.pipeline import create_pipeline

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

    @property
    def pipeline_root(self) -> str:
        return configs.pipeline_root(self.output_root, self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return configs.metadata_path(self.output_root, self.pipeline_name)

    @property
    def serving_model_dir(self) -> str:
        return configs.serving_model_dir(self.output_root, self.model_name)

    def split_patterns(self) -> Optional[Dict[str, str]]:
        """Split folders when the data root has them, else None (one pattern, hash split)."""
        if all(os.path.isdir(os.path.join(self.data_root, split))
               for split in configs.SPLIT_PATTERNS):
            return dict(configs.SPLIT_PATTERNS)
        return None


def build_pipeline(run: LocalRun) -> tfx.dsl.Pipeline:
    if run.runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {run.runner!r}")
    return create_pipeline(
        pipeline_name=run.pipeline_name,
        pipeline_root=os.path.abspath(run.pipeline_root),
        data_root=os.path.abspath(run.data_root),
        serving_model_dir=os.path.abspath(run.serving_model_dir),
        split_patterns=run.split_patterns(),
        schema_path=run.schema_path,
        train_steps=run.train_steps,
        training_config=configs.training_custom_config(run.training),
        transform_config={"normalization": run.normalization},
        min_dice=run.min_dice,
        max_dice_drop=run.max_dice_drop,
        beam_pipeline_args=list(run.beam_args),
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
