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

from kubeflow import (beam_settings, code_version, resources, run_parameters, targets,
                      trainer_job)
from kubeflow.config import DEFAULT_OUTPUTS, IMAGE_PROJECT_DIR, IMAGE_SCHEMA_PATH, KFP  # noqa: F401
from components.training_jobs import TrainingJob
from pipeline import configs
from pipeline.eval_config import build_eval_config
from pipeline.pipeline import build_train_args, create_pipeline, never_cached
from pipeline.settings import PipelineSettings

JSON_SUFFIX = ".json"
YAML_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass
class KubeflowCompile:
    """What a compiled Kubeflow pipeline reads, writes and runs in (``settings``: what it trains
    and how it gates, the parameters' defaults; shared with the local runners)."""

    image: str
    pipeline_root: str
    data_root: str
    serving_root: str  # pushed versions land in <serving_root>/<model_name>/<version>/
    settings: PipelineSettings = dataclasses.field(
        default_factory=lambda: PipelineSettings(schema_path=IMAGE_SCHEMA_PATH))
    split_by_folders: bool = True  # train/ and eval/ under the data root; else a hash split
    beam: beam_settings.BeamSettings = dataclasses.field(
        default_factory=beam_settings.BeamSettings)
    target: str = KFP
    # resources per group of tasks (resources.DATA, TRAINER, SERVING_CHECK)
    task_resources: Dict[str, resources.TaskResources] = dataclasses.field(default_factory=dict)
    # the Trainer as a training job (kubeflow/trainer_job.py); None: in its own task
    training_job: Optional[TrainingJob] = None

    @property
    def serving_model_dir(self) -> str:
        return posixpath.join(self.serving_root, self.settings.model_name)


def parameter_defaults(run: KubeflowCompile) -> Dict[str, str]:
    """The run-time parameters' default values, each a JSON string."""
    settings = run.settings
    return {
        configs.TRAIN_ARGS_PARAMETER: run_parameters.to_json(
            build_train_args(settings.train_steps)),
        configs.EVAL_CONFIG_PARAMETER: run_parameters.to_json(build_eval_config(
            settings.min_dice, settings.max_dice_drop, settings.max_slice_dice_drop)),
        configs.TRAINING_CONFIG_PARAMETER: run_parameters.to_json(settings.training_config()),
    }


def build_pipeline(run: KubeflowCompile) -> tfx.dsl.Pipeline:
    parameters = {name: tfx.dsl.experimental.RuntimeParameter(name=name, ptype=str, default=value)
                  for name, value in parameter_defaults(run).items()}
    return create_pipeline(
        pipeline_name=run.settings.pipeline_name,
        pipeline_root=run.pipeline_root,
        data_root=run.data_root,
        serving_model_dir=run.serving_model_dir,
        split_patterns=dict(configs.SPLIT_PATTERNS) if run.split_by_folders else None,
        schema_path=run.settings.schema_path,
        train_args=parameters[configs.TRAIN_ARGS_PARAMETER],
        eval_config=parameters[configs.EVAL_CONFIG_PARAMETER],
        training_config=parameters[configs.TRAINING_CONFIG_PARAMETER],
        transform_config=run.settings.transform_config(),
        beam_pipeline_args=beam_settings.beam_pipeline_args(run.beam, run.image),
        enable_cache=run.settings.enable_cache,
        training_job=run.training_job)


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
    if run.training_job and run.training_job.BACKEND != trainer_job.BACKENDS[run.target]:
        raise ValueError(f"a {run.training_job.BACKEND} training job cannot run from "
                         f"{run.target}")
    if output_path.endswith(JSON_SUFFIX):
        if run.target == KFP:
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
    platform_spec = resources.apply(spec, run.task_resources, kubernetes=run.target == KFP)
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
