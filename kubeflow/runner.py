"""Compiles ``create_pipeline`` for Kubeflow Pipelines 2 with TFX's ``KubeflowV2DagRunner``.

Thin, like ``pipeline/local_runner.py``: it chooses paths, the image, Beam and Trainer settings
and the run-time parameters, then calls ``create_pipeline``. Compiling reads and uploads nothing:
components name the installed package's functions by dotted path (no ``module_file``, so no
wheels are built into the pipeline root), hence a ``gs://`` root compiles offline.

Run-time parameters (``configs.*_PARAMETER``) are whole protos or dicts as JSON strings, the only
form TFX 1.16 accepts. TFX writes no defaults for them, so ``compile_pipeline`` writes them twice:
into ``runtimeConfig.parameterValues`` (what Vertex AI Pipelines reads from a PipelineJob) and as
``defaultValue`` of the root inputs (what Kubeflow Pipelines reads from a PipelineSpec), so a run
without overrides works on either.
"""
import dataclasses
import json
import os
import posixpath
from typing import Any, Dict, Optional

import yaml
from google.protobuf import json_format, message
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from kubeflow import beam_settings
from pipeline import configs
from pipeline.eval_config import build_eval_config
from pipeline.pipeline import build_train_args, create_pipeline

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec

# Where the Dockerfile puts the project's source in the image (the curated schema is read there).
IMAGE_PROJECT_DIR = "/opt/lvseg/src"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(configs.__file__)))
IMAGE_SCHEMA_PATH = posixpath.join(
    IMAGE_PROJECT_DIR, os.path.relpath(configs.CURATED_SCHEMA_PATH, _REPO_ROOT))

# The container command of every task, as the image runs it (TFX's Kubeflow V2 entry point).
CONTAINER_COMMAND = list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD)

# Kubernetes' name for NVIDIA GPUs, what Kubeflow Pipelines expects; Vertex AI wants a model name
# such as NVIDIA_TESLA_T4 instead.
DEFAULT_GPU_TYPE = "nvidia.com/gpu"

JSON_SUFFIX = ".json"
YAML_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass
class TrainerResources:
    """CPU, memory (GB) and GPUs of the Trainer's container; None leaves the cluster's default.

    TFX 1.16's V2 runner sets them as limits; Kubernetes then requests the same amounts.
    """

    cpus: Optional[float] = None
    memory_gb: Optional[float] = None
    gpus: int = 0
    gpu_type: str = DEFAULT_GPU_TYPE

    def resource_spec(self) -> Optional[ResourceSpec]:
        if self.cpus is None and self.memory_gb is None and not self.gpus:
            return None
        for name, value in (("cpus", self.cpus), ("memory_gb", self.memory_gb),
                            ("gpus", self.gpus)):
            if value is not None and value < 0:
                raise ValueError(f"Trainer {name} must not be negative, got {value}")
        spec = ResourceSpec(cpu_limit=self.cpus or 0, memory_limit=self.memory_gb or 0)
        if self.gpus:
            spec.accelerator.type = self.gpu_type
            spec.accelerator.count = self.gpus
        return spec


@dataclasses.dataclass
class KubeflowCompile:
    """What a compiled Kubeflow pipeline reads, writes, runs in, and its parameters' defaults."""

    image: str
    pipeline_root: str
    data_root: str
    serving_root: str  # pushed versions land in <serving_root>/<model_name>/<version>/
    pipeline_name: str = configs.PIPELINE_NAME
    model_name: str = configs.MODEL_NAME
    split_by_folders: bool = True  # train/ and eval/ under the data root; else a hash split
    schema_path: Optional[str] = IMAGE_SCHEMA_PATH  # None: infer it with SchemaGen
    train_steps: int = configs.DEFAULT_TRAIN_STEPS
    training: Dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainingConfig overrides
    normalization: str = configs.DEFAULT_NORMALIZATION
    min_dice: float = configs.MIN_DICE
    max_dice_drop: float = configs.MAX_DICE_DROP
    max_slice_dice_drop: Optional[float] = configs.MAX_SLICE_DICE_DROP  # None: no slice gate
    beam: beam_settings.BeamSettings = dataclasses.field(
        default_factory=beam_settings.BeamSettings)
    trainer_resources: TrainerResources = dataclasses.field(default_factory=TrainerResources)
    compare_with_blessed_model: bool = True
    enable_cache: bool = True

    @property
    def serving_model_dir(self) -> str:
        return posixpath.join(self.serving_root, self.model_name)


def parameter_json(value: Any) -> str:
    """A run-time parameter's value: one line of JSON (field names as in the .proto files, as
    TFX writes them), short enough to read and edit in the Kubeflow UI."""
    if isinstance(value, message.Message):
        return json_format.MessageToJson(value, preserving_proto_field_name=True, indent=None,
                                         sort_keys=True)
    return json.dumps(value, sort_keys=True)


def parameter_defaults(run: KubeflowCompile) -> Dict[str, str]:
    """The run-time parameters' default values, each a JSON string."""
    return {
        configs.TRAIN_ARGS_PARAMETER: parameter_json(build_train_args(run.train_steps)),
        configs.EVAL_CONFIG_PARAMETER: parameter_json(
            build_eval_config(run.min_dice, run.max_dice_drop, run.max_slice_dice_drop)),
        configs.TRAINING_CONFIG_PARAMETER: parameter_json(
            configs.training_custom_config(run.training)),
    }


def build_pipeline(run: KubeflowCompile) -> tfx.dsl.Pipeline:
    parameters = {name: tfx.dsl.experimental.RuntimeParameter(name=name, ptype=str, default=value)
                  for name, value in parameter_defaults(run).items()}
    return create_pipeline(
        pipeline_name=run.pipeline_name,
        pipeline_root=run.pipeline_root,
        data_root=run.data_root,
        serving_model_dir=run.serving_model_dir,
        split_patterns=dict(configs.SPLIT_PATTERNS) if run.split_by_folders else None,
        schema_path=run.schema_path,
        train_args=parameters[configs.TRAIN_ARGS_PARAMETER],
        eval_config=parameters[configs.EVAL_CONFIG_PARAMETER],
        training_config=parameters[configs.TRAINING_CONFIG_PARAMETER],
        transform_config={"normalization": run.normalization},
        beam_pipeline_args=beam_settings.beam_pipeline_args(run.beam, run.image),
        compare_with_blessed_model=run.compare_with_blessed_model,
        trainer_platform_config=run.trainer_resources.resource_spec(),
        enable_cache=run.enable_cache)


def compile_pipeline(run: KubeflowCompile, output_path: str) -> Dict[str, Any]:
    """Writes the compiled pipeline and returns it as a PipelineJob dict.

    ``.json``: the whole PipelineJob (Vertex AI's format; ``pipelineSpec`` inside). ``.yaml``:
    the PipelineSpec alone, the format Kubeflow Pipelines' UI and ``kfp`` client upload.
    """
    if not output_path.endswith((JSON_SUFFIX,) + YAML_SUFFIXES):
        raise ValueError(f"the output file must end in {JSON_SUFFIX} or "
                         f"{' or '.join(YAML_SUFFIXES)}, got {output_path!r}")
    defaults = parameter_defaults(run)
    config = kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
        default_image=run.image, default_commands=CONTAINER_COMMAND,
        use_pipeline_spec_2_1=True)  # the schema Kubeflow Pipelines 2 reads (typed parameters)
    job = kubeflow_v2_dag_runner.KubeflowV2DagRunner(config).run(
        build_pipeline(run), parameter_values=defaults, write_out=False)
    spec = job["pipelineSpec"]
    for name, value in defaults.items():
        spec["root"]["inputDefinitions"]["parameters"][name]["defaultValue"] = value
    spec["defaultPipelineRoot"] = run.pipeline_root

    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
        if output_path.endswith(JSON_SUFFIX):
            json.dump(job, f, indent=2, sort_keys=True)
        else:
            yaml.safe_dump(spec, f, sort_keys=True)
    return job


def count_tasks(job: Dict[str, Any]) -> int:
    return len(job["pipelineSpec"]["root"]["dag"]["tasks"])
