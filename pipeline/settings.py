"""What a run of the pipeline trains and how it gates, whoever runs it: one settings class for
the local runners (``pipeline.local_runner.LocalRun``) and the Kubeflow compiler
(``kubeflow.runner.KubeflowCompile``), each adding only where it reads and writes.

No TensorFlow or TFX at import; values are checked where they are turned into TFX's protos
(``create_pipeline``), before any component runs.
"""
import dataclasses
from typing import Any, Dict, Optional

from pipeline import configs


@dataclasses.dataclass
class PipelineSettings:
    pipeline_name: str = configs.PIPELINE_NAME
    model_name: str = configs.MODEL_NAME  # TF Serving's name: <serving root>/<model_name>/<v>/
    schema_path: Optional[str] = configs.CURATED_SCHEMA_PATH  # None: infer it with SchemaGen
    train_steps: int = configs.DEFAULT_TRAIN_STEPS
    training: Dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainingConfig fields
    normalization: str = configs.DEFAULT_NORMALIZATION  # the Transform's
    min_dice: float = configs.MIN_DICE
    max_dice_drop: float = configs.MAX_DICE_DROP
    max_slice_dice_drop: Optional[float] = configs.MAX_SLICE_DICE_DROP  # None: no slice gate
    enable_cache: bool = True

    def training_config(self) -> dict:
        """The Trainer's custom_config: the TrainingConfig defaults with ``training`` applied,
        checked."""
        return configs.training_custom_config(self.training)

    def transform_config(self) -> dict:
        return {"normalization": self.normalization}
