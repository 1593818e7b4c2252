"""Compiles ``create_pipeline`` for Kubeflow Pipelines 2 with TFX's ``KubeflowV2DagRunner``.

Thin, like ``pipeline/local_runner.py``: it chooses paths, the image, Beam settings, resources
and the run-time parameters, calls ``create_pipeline``, and adapts TFX's spec to the backend it
will run on (``kubeflow/targets.py``: ``kfp`` for open-source Kubeflow Pipelines 2, ``vertex``
for Vertex AI Pipelines). Compiling reads and uploads nothing: components name the installed
package's functions by dotted path (no ``module_file``, so no wheels are built into the pipeline
root), hence a ``gs://`` root compiles offline.

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
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from kubeflow import beam_settings, code_version, resources, run_parameters, targets
from pipeline import configs
from pipeline.eval_config import build_eval_config
from pipeline.pipeline import build_train_args, create_pipeline, never_cached

# Where the Dockerfile puts the project's source in the image (the curated schema is read there).
IMAGE_PROJECT_DIR = "/opt/lvseg/src"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(configs.__file__)))
IMAGE_SCHEMA_PATH = posixpath.join(
    IMAGE_PROJECT_DIR, os.path.relpath(configs.CURATED_SCHEMA_PATH, _REPO_ROOT))

JSON_SUFFIX = ".json"
YAML_SUFFIXES = (".yaml", ".yml")
# What each target's client uploads: the kfp client takes YAML only (the PipelineSpec, then the
# Kubernetes platform config); Vertex AI takes TFX's PipelineJob JSON or the YAML.
DEFAULT_OUTPUTS = {targets.KFP: f"{configs.PIPELINE_NAME}.yaml",
                   targets.VERTEX: f"{configs.PIPELINE_NAME}.json"}


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
    target: str = targets.KFP
    # resources per group of tasks (resources.DATA, TRAINER, SERVING_CHECK)
    task_resources: Dict[str, resources.TaskResources] = dataclasses.field(default_factory=dict)
    enable_cache: bool = True

    @property
    def serving_model_dir(self) -> str:
        return posixpath.join(self.serving_root, self.model_name)


def parameter_defaults(run: KubeflowCompile) -> Dict[str, str]:
    """The run-time parameters' default values, each a JSON string."""
    return {
        configs.TRAIN_ARGS_PARAMETER: run_parameters.to_json(build_train_args(run.train_steps)),
        configs.EVAL_CONFIG_PARAMETER: run_parameters.to_json(
            build_eval_config(run.min_dice, run.max_dice_drop, run.max_slice_dice_drop)),
        configs.TRAINING_CONFIG_PARAMETER: run_parameters.to_json(
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
        enable_cache=run.enable_cache)


@dataclasses.dataclass
class CompiledPipeline:
    job: Dict[str, Any]  # TFX's PipelineJob dict, the PipelineSpec under "pipelineSpec"
    platform_spec: Optional[Dict[str, Any]]  # Kubernetes node selectors / tolerations, or None
    code_version: str

    @property
    def spec(self) -> Dict[str, Any]:
        return self.job["pipelineSpec"]


def compile_pipeline(run: KubeflowCompile, output_path: str) -> CompiledPipeline:
    """Writes the compiled pipeline for ``run.target``.

    ``.yaml``: the PipelineSpec, followed by the Kubernetes platform config as a second document
    when a task has node selectors or tolerations (what the kfp client uploads). ``.json``
    (``vertex`` only): TFX's PipelineJob, the PipelineSpec with its runtime config.
    """
    if run.target not in targets.TARGETS:
        raise ValueError(f"target must be one of {targets.TARGETS}, got {run.target!r}")
    if output_path.endswith(JSON_SUFFIX):
        if run.target == targets.KFP:
            raise ValueError("Kubeflow Pipelines' client uploads YAML: name a .yaml output for "
                             "--target kfp (.json is the PipelineJob for --target vertex)")
    elif not output_path.endswith(YAML_SUFFIXES):
        raise ValueError(f"the output file must end in {JSON_SUFFIX} or "
                         f"{' or '.join(YAML_SUFFIXES)}, got {output_path!r}")
    defaults = parameter_defaults(run)
    config = kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
        default_image=run.image, default_commands=targets.TFX_COMMAND,
        use_pipeline_spec_2_1=True)  # the schema Kubeflow Pipelines 2 reads (typed parameters)
    pipeline = build_pipeline(run)
    job = kubeflow_v2_dag_runner.KubeflowV2DagRunner(config).run(
        pipeline, parameter_values=defaults, write_out=False)
    spec = job["pipelineSpec"]
    for name, value in defaults.items():
        spec["root"]["inputDefinitions"]["parameters"][name]["defaultValue"] = value
    spec["defaultPipelineRoot"] = run.pipeline_root
    version = code_version.code_version()
    targets.adapt(spec, run.target, run.image, version, never_cached(pipeline))
    platform_spec = resources.apply(spec, run.task_resources, kubernetes=run.target == targets.KFP)
    compiled = CompiledPipeline(job=job, platform_spec=platform_spec, code_version=version)

    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
        if output_path.endswith(JSON_SUFFIX):
            json.dump(job, f, indent=2, sort_keys=True)
        else:
            yaml.safe_dump_all([spec] + ([platform_spec] if platform_spec else []), f,
                               sort_keys=True)
    return compiled


def count_tasks(compiled: CompiledPipeline) -> int:
    return len(compiled.spec["root"]["dag"]["tasks"])
