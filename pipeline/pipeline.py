"""``create_pipeline``: the LV segmentation TFX pipeline, one definition for every runner.

    ImportExampleGen -> StatisticsGen -> SchemaGen | ImportSchemaGen -> ExampleValidator
      -> DataGate (stops on anomalies) -> Transform -> Trainer
      -> Resolver (latest blessed model) -> Evaluator (Dice gate) -> AtomicPusher

No I/O and no environment reads here: runners pass every path and knob.
"""
from typing import Dict, Optional, Sequence

from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components.atomic_pusher import AtomicPusher
from components.data_gate import DataGate
from pipeline import configs, eval_config


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


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_model_dir: str,
    *,
    split_patterns: Optional[Dict[str, str]] = None,
    schema_path: Optional[str] = None,
    train_steps: int = configs.DEFAULT_TRAIN_STEPS,
    training_config: Optional[dict] = None,
    transform_config: Optional[dict] = None,
    min_dice: float = configs.MIN_DICE,
    max_dice_drop: float = configs.MAX_DICE_DROP,
    beam_pipeline_args: Sequence[str] = (),
    metadata_connection_config=None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline.

    Args:
      pipeline_name: name of the pipeline in ML Metadata and Kubeflow.
      pipeline_root: where component outputs go (local path or bucket URI).
      data_root: folder of lab-schema TFRecords.
      serving_model_dir: TF Serving's model base path; blessed models are pushed to
        ``<serving_model_dir>/<version>/``.
      split_patterns: split name -> file pattern under ``data_root`` (e.g. ``train/*``); None
        reads every file and hash-splits it by ``configs.HASH_SPLIT_BUCKETS``.
      schema_path: a curated schema (``schema.pbtxt``) to validate against; None infers one
        from the statistics with SchemaGen.
      train_steps: total training steps.
      training_config: the Trainer's custom_config (``trainer.model.TrainingConfig`` fields).
      transform_config: the Transform's custom_config (``normalization``).
      min_dice, max_dice_drop: the gate (see ``pipeline.eval_config``).
      beam_pipeline_args: Beam options of the data components (runner, workers, ...).
      metadata_connection_config: ML Metadata connection; None lets the runner choose.
      enable_cache: reuse outputs of unchanged components from earlier runs.
    """
    input_config, output_config = _example_gen_configs(split_patterns)
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root, input_config=input_config, output_config=output_config)

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

    trainer = tfx.components.Trainer(
        run_fn=configs.RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=None),
        custom_config=training_config or configs.training_custom_config())

    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config.build_eval_config(min_dice, max_dice_drop))

    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate,
                    transform, trainer, model_resolver, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args))
