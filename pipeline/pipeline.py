"""``create_pipeline``: the LV segmentation TFX pipeline, one definition for every runner.

    ImportExampleGen | SunnybrookExampleGen -> StatisticsGen -> ImportSchemaGen | SchemaGen
      -> ExampleValidator -> DataGate (stops on anomalies) -> Transform -> Trainer
      -> ServedModel (the version being served) -> Evaluator (Dice gate, overall and per LV
      size, against the served model)
      -> ServingCheck (the candidate answers over TF Serving's API) -> AtomicPusher

No I/O and no environment reads here: runners pass every path and knob.

Kubeflow (``kubeflow/runner.py``) passes three settings as ``RuntimeParameter``s, so a run can
change them without recompiling: TFX 1.16 accepts one only for a whole proto or dict, so they are
the whole ``train_args``, ``eval_config`` and Trainer ``custom_config``, each a JSON string.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Union

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from dataset import sunnybrook
from components.atomic_pusher import AtomicPusher
from components.data_gate import DataGate
from components.served_model import Evaluator, ServedModel
from components.serving_check import ServingCheck, docker_infra_validator
from components.sunnybrook_example_gen import SunnybrookExampleGen
from components.training_jobs import JobTrainer, TrainingJob
from pipeline import configs
from pipeline.eval_config import build_eval_config

RuntimeParameter = tfx.dsl.experimental.RuntimeParameter


@dataclasses.dataclass(frozen=True)
class DicomSource:
    """Sunnybrook-style DICOMs + expert contours, read by SunnybrookExampleGen instead of
    ImportExampleGen reading TFRecords (see dataset/sunnybrook.py for the layouts)."""

    dicom_root: str
    contour_root: str
    link_path: str = ""
    eval_fraction: float = sunnybrook.DEFAULT_EVAL_FRACTION
    seed: int = sunnybrook.DEFAULT_SEED
    input_fingerprint: str = ""  # changes with the files, so the cache re-reads changed data


def _example_gen_configs(split_patterns: Optional[Dict[str, str]]):
    """Input/output configs: given split folders, or one pattern hash-split into train/eval."""
    if split_patterns:
        return example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=name, pattern=pattern)
            for name, pattern in split_patterns.items()]), None
    return (example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single", pattern="*")]),
            example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
                example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                for name, buckets in configs.HASH_SPLIT_BUCKETS.items()])))


def build_train_args(train_steps: int) -> tfx.proto.TrainArgs:
    return tfx.proto.TrainArgs(num_steps=train_steps)


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: Optional[str],
    serving_model_dir: str,
    *,
    split_patterns: Optional[Dict[str, str]] = None,
    schema_path: Optional[str] = None,
    train_steps: int = configs.DEFAULT_TRAIN_STEPS,
    training_config: Optional[Union[dict, RuntimeParameter]] = None,
    transform_config: Optional[dict] = None,
    min_dice: float = configs.MIN_DICE,
    max_dice_drop: float = configs.MAX_DICE_DROP,
    max_slice_dice_drop: Optional[float] = configs.MAX_SLICE_DICE_DROP,
    beam_pipeline_args: Sequence[str] = (),
    metadata_connection_config=None,
    enable_cache: bool = True,
    train_args: Optional[Union[tfx.proto.TrainArgs, RuntimeParameter]] = None,
    eval_config: Optional[Union[tfma.EvalConfig, RuntimeParameter]] = None,
    dicom_source: Optional[DicomSource] = None,
    docker_infra_validation: bool = False,
    training_job: Optional[TrainingJob] = None,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline.

    Args:
      pipeline_name: name of the pipeline in ML Metadata and Kubeflow.
      pipeline_root: where component outputs go (local path or bucket URI).
      data_root: folder of lab-schema TFRecords (None with ``dicom_source``).
      serving_model_dir: TF Serving's model base path; blessed models are pushed to
        ``<serving_model_dir>/<version>/``.
      split_patterns: split name -> file pattern under ``data_root`` (e.g. ``train/*``); None
        reads every file and hash-splits it by ``configs.HASH_SPLIT_BUCKETS``.
      schema_path: a curated schema (``schema.pbtxt``) to validate against; None infers one
        from the statistics with SchemaGen.
      train_steps: total training steps.
      training_config: the Trainer's custom_config (``trainer.config.TrainingConfig`` fields),
        or a RuntimeParameter holding it as JSON.
      transform_config: the Transform's custom_config (``normalization``).
      min_dice, max_dice_drop: the overall gate (see ``pipeline.eval_config``); the
        baseline is the newest version under ``serving_model_dir`` (``ServedModel``).
      max_slice_dice_drop: the slice gate: Dice may drop at most this much against the
        served model on each LV size bucket; None turns it off (see ``pipeline.eval_config``).
      beam_pipeline_args: Beam options of the data components (ExampleGen, StatisticsGen,
        Transform, Evaluator: runner, workers, ...); the other components get none.
      metadata_connection_config: ML Metadata connection; None lets the runner choose.
      enable_cache: reuse outputs of unchanged components from earlier runs.
      train_args: replaces ``train_steps`` with a whole TrainArgs, or a RuntimeParameter
        holding one as JSON.
      eval_config: replaces the EvalConfig built from ``min_dice``, ``max_dice_drop`` and
        ``max_slice_dice_drop``, or a RuntimeParameter holding one as JSON.
      dicom_source: read DICOMs + contours (SunnybrookExampleGen) instead of ``data_root``'s
        TFRecords; give exactly one of the two.
      docker_infra_validation: check servability with TFX's InfraValidator running the
        official TF Serving image in local Docker, instead of ServingCheck, which serves the
        candidate with the local stand-in inside its own task (and is what Kubeflow runs use:
        TFX 1.16's Kubeflow V2 runner cannot compile InfraValidator).
      training_job: train as this job on one or more machines, a Vertex AI custom job or a
        TFJob (``components.training_jobs``), instead of inside the Trainer's own task.
    """
    if (data_root is None) == (dicom_source is None):
        raise ValueError("give either data_root (TFRecords) or dicom_source (DICOMs + contours)")
    if dicom_source is not None:
        example_gen = SunnybrookExampleGen(**dataclasses.asdict(dicom_source))
        beam_components = []
    else:
        input_config, output_config = _example_gen_configs(split_patterns)
        example_gen = tfx.components.ImportExampleGen(
            input_base=data_root, input_config=input_config, output_config=output_config)
        beam_components = [example_gen]

    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])

    if schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)

    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    data_gate = DataGate(anomalies=example_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=configs.PREPROCESSING_FN,
        custom_config=transform_config or {})
    transform.add_upstream_node(data_gate)

    trainer_args = dict(
        run_fn=configs.RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=train_args if train_args is not None else build_train_args(train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=None),
        custom_config=training_config or configs.training_custom_config())
    if training_job is None:
        trainer = tfx.components.Trainer(**trainer_args)
    else:  # same task name, so resources, run reports and lineage find it alike
        trainer = JobTrainer(training_job, **trainer_args).with_id("Trainer")

    # The baseline is the model being served now (newest version under serving_model_dir),
    # not TFX's latest-blessed-model Resolver: open-source Kubeflow Pipelines cannot run
    # resolver tasks, and "not worse than what is serving" is what the gate should mean.
    served_model = ServedModel(serving_model_dir=serving_model_dir)

    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=served_model.outputs["model"],
        eval_config=(eval_config if eval_config is not None
                     else build_eval_config(min_dice, max_dice_drop, max_slice_dice_drop)))

    if docker_infra_validation:
        serving_check = docker_infra_validator(trainer.outputs["model"],
                                               example_gen.outputs["examples"])
    else:
        serving_check = ServingCheck(model=trainer.outputs["model"])

    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=serving_check.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))

    # Per component rather than pipeline-wide: on Kubeflow every task would get pipeline-wide
    # Beam options on its command line, the Trainer and the pusher included.
    for beam_component in beam_components + [statistics_gen, transform, evaluator]:
        beam_component.with_beam_pipeline_args(list(beam_pipeline_args))

    components = [example_gen, statistics_gen, schema_gen, example_validator, data_gate,
                  transform, trainer, served_model, evaluator, serving_check, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config)


def never_cached(pipeline: tfx.dsl.Pipeline) -> List[str]:
    """Ids of the components a runner must always run, never take from its cache: their output
    depends on something outside the pipeline (``ServedModel`` reads the serving directory)."""
    return [component.id for component in pipeline.components
            if isinstance(component, ServedModel)]
