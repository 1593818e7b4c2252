"""create_pipeline's DAG, configuration and gate, checked without running it."""
import json

import pytest
import tensorflow_model_analysis as tfma

from components.atomic_pusher import AtomicPusherExecutor
from pipeline import configs, eval_config
from pipeline.pipeline import DicomSource, create_pipeline
from trainer import dice


def _pipeline(**kwargs):
    defaults = dict(pipeline_name="p", pipeline_root="/tmp/root", data_root="/data",
                    serving_model_dir="/serving/m", split_patterns=configs.SPLIT_PATTERNS,
                    schema_path=configs.CURATED_SCHEMA_PATH)
    return create_pipeline(**{**defaults, **kwargs})


def _components(pipeline):
    return {component.id: component for component in pipeline.components}


def test_every_stage_is_present():
    assert sorted(c.id for c in _pipeline().components) == sorted([
        "ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
        "Transform", "Trainer", "ServedModel", "Evaluator", "ServingCheck", "AtomicPusher"])


def test_schema_gen_is_used_when_no_schema_is_given():
    assert "SchemaGen" in _components(_pipeline(schema_path=None))


def test_functions_are_referenced_by_dotted_path_not_module_file():
    components = _components(_pipeline())
    transform = components["Transform"].exec_properties
    trainer = components["Trainer"].exec_properties
    assert transform["preprocessing_fn"] == "trainer.preprocessing.preprocessing_fn"
    assert not transform.get("module_file") and not trainer.get("module_file")
    assert trainer["run_fn"] == "trainer.model.run_fn"


def test_transform_waits_for_the_data_gate():
    components = _components(_pipeline())
    assert components["DataGate"] in components["Transform"].upstream_nodes


def test_evaluator_blessing_gates_the_atomic_pusher():
    components = _components(_pipeline())
    pusher = components["AtomicPusher"]
    assert pusher.inputs["model_blessing"].producer_component_id == "Evaluator"
    assert pusher.inputs["model"].producer_component_id == "Trainer"
    assert pusher.inputs["infra_blessing"].producer_component_id == "ServingCheck"
    assert components["ServingCheck"].inputs["model"].producer_component_id == "Trainer"
    assert pusher.executor_spec.executor_class is AtomicPusherExecutor
    destination = json.loads(pusher.exec_properties["push_destination"])
    assert destination["filesystem"]["base_directory"] == "/serving/m"
    assert components["Evaluator"].inputs["baseline_model"].producer_component_id == \
        "ServedModel"
    assert components["ServedModel"].exec_properties["serving_model_dir"] == "/serving/m"


def test_split_folders_or_a_hash_split():
    components = _components(_pipeline())
    input_config = json.loads(components["ImportExampleGen"].exec_properties["input_config"])
    assert [(s["name"], s["pattern"]) for s in input_config["splits"]] == [
        ("train", "train/*"), ("eval", "eval/*")]
    hashed = _components(_pipeline(split_patterns=None))["ImportExampleGen"].exec_properties
    splits = json.loads(hashed["output_config"])["split_config"]["splits"]
    assert [(s["name"], s["hash_buckets"]) for s in splits] == [("train", 9), ("eval", 1)]


def test_gate_thresholds_on_dice():
    config = eval_config.build_eval_config(min_dice=0.9, max_dice_drop=0.02)
    metrics = [m for spec in config.metrics_specs for m in spec.metrics]
    dice_config = next(m for m in metrics if m.class_name == configs.DICE_METRIC_CLASS)
    assert dice_config.module == "trainer.dice"
    assert json.loads(dice_config.config)["name"] == dice.METRIC_NAME
    threshold = eval_config.overall_dice_threshold(config)
    assert threshold.value_threshold.lower_bound.value == 0.9
    assert threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    assert config.model_specs[0].preprocessing_function_names == ["transform_features"]


def test_the_slice_gate_reaches_the_evaluator():
    def per_bucket_bounds(pipeline):
        config = json.loads(_components(pipeline)["Evaluator"].exec_properties["eval_config"])
        [dice_config] = [m for spec in config["metrics_specs"] for m in spec["metrics"]
                         if m["class_name"] == configs.DICE_METRIC_CLASS]
        return [t["threshold"]["change_threshold"]["absolute"]
                for t in dice_config["per_slice_thresholds"]
                if t["slicing_specs"] == [{"feature_keys": ["lv_size"]}]]
    assert per_bucket_bounds(_pipeline()) == [pytest.approx(-configs.MAX_SLICE_DICE_DROP)]
    assert per_bucket_bounds(_pipeline(max_slice_dice_drop=0.2)) == [pytest.approx(-0.2)]
    assert per_bucket_bounds(_pipeline(max_slice_dice_drop=None)) == []


def test_negative_allowed_drop_is_rejected():
    with pytest.raises(ValueError, match="max_dice_drop"):
        eval_config.build_eval_config(max_dice_drop=-0.1)


def test_dicom_source_replaces_the_tfrecord_input():
    source = DicomSource(dicom_root="/dicoms", contour_root="/contours", link_path="/link.csv",
                         input_fingerprint="abc")
    components = _components(_pipeline(data_root=None, dicom_source=source))
    assert "ImportExampleGen" not in components
    example_gen = components["SunnybrookExampleGen"]
    assert example_gen.exec_properties["dicom_root"] == "/dicoms"
    assert example_gen.exec_properties["input_fingerprint"] == "abc"
    assert components["Transform"].inputs["examples"].producer_component_id == \
        "SunnybrookExampleGen"
    with pytest.raises(ValueError, match="either data_root"):
        _pipeline(dicom_source=source)  # and data_root


def test_infra_validator_with_docker_is_the_option_for_the_real_server():
    components = _components(_pipeline(docker_infra_validation=True))
    assert "ServingCheck" not in components and "InfraValidator" in components
    assert components["AtomicPusher"].inputs["infra_blessing"].producer_component_id == \
        "InfraValidator"
