"""The pipeline as compiled for Kubeflow, run for real here with TFX's LocalDagRunner.

Its run-time parameters are whole protos and dicts as JSON strings with defaults, as in the
compiled spec; this run shows the executors parse them (TrainArgs, EvalConfig, TrainingConfig),
the gate judges and the model is pushed, as a Kubeflow run without overrides would do. Only the
orchestrator differs: no cluster here.
"""
import os
import sys
from unittest import mock

import ml_metadata as mlmd
import pytest
from tfx import v1 as tfx

from kubeflow import runner
from pipeline import configs, run_summary

pytestmark = pytest.mark.e2e


def _execution_properties(metadata_path, component_type):
    store = mlmd.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    [execution] = store.get_executions_by_type(component_type)
    return {name: value.string_value for name, value in execution.custom_properties.items()}


def test_kubeflow_definition_runs_to_a_push_with_its_parameter_defaults(tiny_data_root, tmp_path):
    run = runner.KubeflowCompile(
        image="unused-here", pipeline_root=str(tmp_path / "root"), data_root=tiny_data_root,
        serving_root=str(tmp_path / "serving"), schema_path=configs.CURATED_SCHEMA_PATH,
        train_steps=4, training=dict(model="lab_fcn", epochs=1), min_dice=0.0)
    pipeline = runner.build_pipeline(run)
    metadata_path = str(tmp_path / "metadata.sqlite")
    pipeline.metadata_connection_config = (
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # absl in Beam executors reads argv
        tfx.orchestration.LocalDagRunner().run(pipeline)

    summary = run_summary.read_run_summary(metadata_path, run.pipeline_name)
    assert summary.blessed and summary.pushed
    assert os.path.dirname(summary.pushed_path) == run.serving_model_dir

    defaults = runner.parameter_defaults(run)
    trainer = _execution_properties(metadata_path, "tfx.components.trainer.component.Trainer")
    assert trainer["train_args"] == defaults[configs.TRAIN_ARGS_PARAMETER]
    assert trainer["custom_config"] == defaults[configs.TRAINING_CONFIG_PARAMETER]
    assert '"model": "lab_fcn"' in trainer["custom_config"]
    evaluator = _execution_properties(metadata_path,
                                      "tfx.components.evaluator.component.Evaluator")
    assert evaluator["eval_config"] == defaults[configs.EVAL_CONFIG_PARAMETER]
