"""`lvseg kubeflow compile`: the spec, loaded into KFP's protobufs, against the local DAG.

Compiles with gs:// URIs while every network connection fails, as on a machine without network.
"""
import json
import socket

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.proto import trainer_pb2
from tfx.utils import proto_utils

import tensorflow_model_analysis as tfma
from kubeflow import beam_settings, cli, runner
from pipeline import configs, local_runner
from pipeline import eval_config as eval_config_lib

IMAGE = "europe-docker.pkg.dev/project/lvseg/lvseg:1.2.3"
PIPELINE_ROOT = "gs://bucket/root"
DATA_ROOT = "gs://bucket/data"
SERVING_ROOT = "gs://bucket/serving"
DATA_STAGES = {"ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"}
BLESSING_RESOLVER = f"{configs.BASELINE_RESOLVER_ID}-model-blessing-resolver"
MODEL_RESOLVER = f"{configs.BASELINE_RESOLVER_ID}-model-resolver"


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(scope="module")
def no_network():
    def refuse(*args, **kwargs):
        raise NetworkUsed(f"compiling tried to open a connection: {args}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield


def test_the_network_is_really_blocked(no_network):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("storage.googleapis.com", 443), timeout=1)


def _compile(output, *options):
    args = cli.build_parser().parse_args([
        "kubeflow", "compile", "--image", IMAGE, "--pipeline-root", PIPELINE_ROOT,
        "--data-root", DATA_ROOT, "--serving-dir", SERVING_ROOT, "--output", str(output),
        *options])
    assert args.handler(args) == 0
    return output


def _load_job(path):
    """The PipelineJob and its PipelineSpec, parsed strictly (an unknown field fails)."""
    with open(path) as f:
        job_dict = json.load(f)
    job = json_format.ParseDict(job_dict, pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(job_dict["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    return job, spec


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, no_network):
    path = _compile(tmp_path_factory.mktemp("kfp") / "lv.json",
                    "--trainer-cpus", "4", "--trainer-memory-gb", "16", "--trainer-gpus", "1")
    return _load_job(path)


@pytest.fixture(scope="module")
def local_dag():
    """Node id -> upstream node ids of the pipeline the local runners run."""
    pipeline = local_runner.build_pipeline(local_runner.LocalRun(data_root="/data",
                                                                 output_root="/outputs"))
    return {node.id: {upstream.id for upstream in node.upstream_nodes}
            for node in pipeline.components}


def _task_name(node_id):
    """Kubeflow task of a local node: TFX splits the blessed-model Resolver in two tasks."""
    return MODEL_RESOLVER if node_id == configs.BASELINE_RESOLVER_ID else node_id


def _executor(spec, task_name):
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    return executors[spec.components[spec.root.dag.tasks[task_name].component_ref.name]
                     .executor_label]


def test_every_component_is_a_task(compiled, local_dag):
    _, spec = compiled
    expected = {_task_name(node) for node in local_dag} | {BLESSING_RESOLVER}
    assert set(spec.root.dag.tasks) == expected
    assert len(spec.root.dag.tasks) == len(local_dag) + 1


def test_dependencies_match_the_local_dag(compiled, local_dag):
    _, spec = compiled
    for node, upstream in local_dag.items():
        task = spec.root.dag.tasks[_task_name(node)]
        if node == configs.BASELINE_RESOLVER_ID:
            continue  # resolvers query ML Metadata; they have no upstream tasks
        assert set(task.dependent_tasks) == {_task_name(u) for u in upstream}, node
    resolver_input = spec.root.dag.tasks[MODEL_RESOLVER].inputs.artifacts["input"]
    assert resolver_input.task_output_artifact.producer_task == BLESSING_RESOLVER


def test_evaluator_blessing_gates_the_pusher(compiled):
    _, spec = compiled
    pusher_inputs = spec.root.dag.tasks["AtomicPusher"].inputs.artifacts
    assert pusher_inputs["model_blessing"].task_output_artifact.producer_task == "Evaluator"
    assert pusher_inputs["model_blessing"].task_output_artifact.output_artifact_key == "blessing"
    assert pusher_inputs["model"].task_output_artifact.producer_task == "Trainer"
    evaluator_inputs = spec.root.dag.tasks["Evaluator"].inputs.artifacts
    assert evaluator_inputs["baseline_model"].task_output_artifact.producer_task == MODEL_RESOLVER
    assert "DataGate" in spec.root.dag.tasks["Transform"].dependent_tasks


def test_every_container_runs_the_given_image_with_tfx_entry_point(compiled):
    _, spec = compiled
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    containers = {label: e["container"] for label, e in executors.items() if "container" in e}
    assert len(containers) == len(spec.root.dag.tasks) - 2  # all but the two resolver queries
    for label, container in containers.items():
        assert container["image"] == IMAGE, label
        assert container["command"] == [
            "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


def test_components_are_referenced_by_dotted_path_and_uris_kept(compiled):
    _, spec = compiled
    tasks = spec.root.dag.tasks

    def constant(task, name):
        return tasks[task].inputs.parameters[name].runtime_value.constant.string_value
    assert constant("Trainer", "run_fn") == configs.RUN_FN
    assert constant("Transform", "preprocessing_fn") == configs.PREPROCESSING_FN
    assert constant("ImportExampleGen", "input_base") == DATA_ROOT
    assert constant("ImportSchemaGen", "schema_file") == runner.IMAGE_SCHEMA_PATH
    destination = json.loads(constant("AtomicPusher", "push_destination"))
    assert destination["filesystem"]["base_directory"] == f"{SERVING_ROOT}/{configs.MODEL_NAME}"
    assert spec.default_pipeline_root == PIPELINE_ROOT


def test_runtime_parameters_are_declared_with_their_defaults(compiled):
    job, spec = compiled
    parameters = spec.root.input_definitions.parameters
    names = {configs.TRAIN_ARGS_PARAMETER, configs.EVAL_CONFIG_PARAMETER,
             configs.TRAINING_CONFIG_PARAMETER}
    assert set(parameters) == names
    for name in names:
        assert parameters[name].parameter_type == pipeline_spec_pb2.ParameterType.STRING
        assert job.runtime_config.parameter_values[name] == parameters[name].default_value

    train_args = proto_utils.json_to_proto(
        parameters[configs.TRAIN_ARGS_PARAMETER].default_value.string_value,
        trainer_pb2.TrainArgs())
    assert train_args.num_steps == configs.DEFAULT_TRAIN_STEPS
    training = json.loads(parameters[configs.TRAINING_CONFIG_PARAMETER].default_value.string_value)
    assert training["model"] == configs.DEFAULT_TRAINING.model
    eval_config = proto_utils.json_to_proto(
        parameters[configs.EVAL_CONFIG_PARAMETER].default_value.string_value, tfma.EvalConfig())
    overall = eval_config_lib.overall_dice_threshold(eval_config)
    assert overall.value_threshold.lower_bound.value == configs.MIN_DICE
    assert eval_config == eval_config_lib.build_eval_config()  # slice gate included

    def parameter_source(task, name):
        return spec.root.dag.tasks[task].inputs.parameters[name].component_input_parameter
    assert parameter_source("Trainer", "train_args") == configs.TRAIN_ARGS_PARAMETER
    assert parameter_source("Trainer", "custom_config") == configs.TRAINING_CONFIG_PARAMETER
    assert parameter_source("Evaluator", "eval_config") == configs.EVAL_CONFIG_PARAMETER


def test_beam_args_reach_the_data_stages_only(compiled):
    _, spec = compiled
    for task in spec.root.dag.tasks:
        container = _executor(spec, task).get("container")
        if container is None:
            continue
        beam_args = [arg for arg in container["args"] if arg.startswith("--direct_")]
        if task in DATA_STAGES:
            assert beam_args == list(configs.DEFAULT_BEAM_ARGS), task
        else:
            assert beam_args == [], task
    driver = _executor(spec, "ImportExampleGen")["container"]["lifecycle"]["preCacheCheck"]
    assert driver["args"][-3:] == [*configs.DEFAULT_BEAM_ARGS, f"--sdk_container_image={IMAGE}"]


@pytest.mark.parametrize("options, expected", [
    (["--beam-runner", "dataflow", "--project", "p", "--region", "europe-west4",
      "--temp-location", "gs://bucket/tmp"],
     ["--runner=DataflowRunner", "--project=p", "--region=europe-west4",
      "--temp_location=gs://bucket/tmp", f"--sdk_container_image={IMAGE}"]),
    (["--beam-runner", "portable", "--job-endpoint", "flink-jobmanager:8099"],
     ["--runner=PortableRunner", "--job_endpoint=flink-jobmanager:8099",
      "--environment_type=EXTERNAL",
      f"--environment_config={beam_settings.DEFAULT_WORKER_POOL}",
      f"--sdk_container_image={IMAGE}"]),
    (["--beam-runner", "direct", "--direct-workers", "4", "--beam-arg=--max_num_records=10"],
     ["--direct_running_mode=multi_processing", "--direct_num_workers=4",
      f"--sdk_container_image={IMAGE}", "--max_num_records=10"]),
])
def test_beam_settings_reach_the_data_stages(tmp_path, no_network, options, expected):
    _, spec = _load_job(_compile(tmp_path / "lv.json", *options))
    for task in DATA_STAGES:
        assert _executor(spec, task)["container"]["args"][-len(expected):] == expected, task
    assert not set(expected) & set(_executor(spec, "Trainer")["container"]["args"])


def test_dataflow_without_a_project_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--project"):
        _compile(tmp_path / "lv.json", "--beam-runner", "dataflow", "--region", "r",
                 "--temp-location", "gs://b/t")


def test_trainer_resources(compiled):
    _, spec = compiled
    resources = _executor(spec, "Trainer")["container"]["resources"]
    assert resources == {"cpuLimit": 4.0, "memoryLimit": 16.0,
                         "accelerator": {"type": runner.DEFAULT_GPU_TYPE, "count": "1"}}
    assert "resources" not in _executor(spec, "Transform")["container"]


def test_without_baseline_there_is_no_resolver(tmp_path, no_network):
    _, spec = _load_job(_compile(tmp_path / "lv.json", "--no-baseline"))
    assert BLESSING_RESOLVER not in spec.root.dag.tasks
    assert MODEL_RESOLVER not in spec.root.dag.tasks
    assert "baseline_model" not in spec.root.dag.tasks["Evaluator"].inputs.artifacts
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert all("resolver" not in executor for executor in executors.values())


@pytest.mark.parametrize("options, expected", [
    (["--max-slice-dice-drop", "0.1"], dict(max_slice_dice_drop=0.1)),
    (["--no-slice-gate"], dict(max_slice_dice_drop=None)),
])
def test_slice_gate_options_set_the_eval_config_default(tmp_path, no_network, options, expected):
    _, spec = _load_job(_compile(tmp_path / "lv.json", *options))
    default = spec.root.input_definitions.parameters[configs.EVAL_CONFIG_PARAMETER]
    eval_config = proto_utils.json_to_proto(default.default_value.string_value, tfma.EvalConfig())
    assert eval_config == eval_config_lib.build_eval_config(**expected)


def test_yaml_output_is_the_pipeline_spec_with_defaults(tmp_path, no_network):
    path = _compile(tmp_path / "lv.yaml", "--train-steps", "1000", "--model", "lab_fcn",
                    "--max-gain-change", "0.2", "--max-gamma-change", "0.1",
                    "--ensemble-size", "3")
    with open(path) as f:
        spec = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())
    parameters = spec.root.input_definitions.parameters
    assert json.loads(parameters[configs.TRAIN_ARGS_PARAMETER].default_value.string_value) == {
        "num_steps": 1000}
    training = json.loads(parameters[configs.TRAINING_CONFIG_PARAMETER].default_value.string_value)
    assert (training["model"], training["max_gain_change"], training["max_gamma_change"],
            training["ensemble_size"]) == ("lab_fcn", 0.2, 0.1, 3)
    assert spec.schema_version == "2.1.0"
