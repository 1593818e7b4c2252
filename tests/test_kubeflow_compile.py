"""`lvseg kubeflow compile`: the spec for each target, loaded into KFP's protobufs, against the
local DAG. That the compiled tasks really run is shown by tests/test_kubeflow_launch.py.

Compiles with gs:// URIs while every network connection fails, as on a machine without network.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.proto import trainer_pb2
from tfx.utils import proto_utils

import tensorflow_model_analysis as tfma
from kubeflow import (beam_settings, cli, code_version, container_entrypoint, input_fingerprint,
                      resources, runner, targets)
from pipeline import configs, local_runner
from pipeline import eval_config as eval_config_lib
from tests.conftest import REPO_ROOT

IMAGE = "europe-docker.pkg.dev/project/lvseg/lvseg:1.2.3"
PIPELINE_ROOT = "gs://bucket/root"
DATA_ROOT = "gs://bucket/data"
SERVING_ROOT = "gs://bucket/serving"
DATA_STAGES = {"ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"}
NEVER_CACHED = {"ServedModel"}


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


def _load(path):
    """The PipelineSpec (parsed strictly: an unknown field fails) and the Kubernetes platform
    config of a compiled file; for .json also the PipelineJob."""
    with open(path) as f:
        if str(path).endswith(".json"):
            job_dict = json.load(f)
            documents = [job_dict["pipelineSpec"]]
        else:
            job_dict = None
            documents = list(yaml.safe_load_all(f))
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    platform = (json_format.ParseDict(documents[1], pipeline_spec_pb2.PlatformSpec())
                if len(documents) > 1 else None)
    job = json_format.ParseDict(job_dict, pipeline_spec_pb2.PipelineJob()) if job_dict else None
    return spec, platform, job


@pytest.fixture(scope="module")
def kfp_spec(tmp_path_factory, no_network):
    path = _compile(tmp_path_factory.mktemp("kfp") / "lv.yaml",
                    "--trainer-cpus", "4", "--trainer-memory-gb", "16", "--trainer-gpus", "1",
                    "--data-cpus", "2", "--data-memory-gb", "8",
                    "--serving-check-memory-gb", "4",
                    "--trainer-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                    "--trainer-toleration", "dedicated=training:NoSchedule")
    return _load(path)


@pytest.fixture(scope="module")
def vertex_spec(tmp_path_factory, no_network):
    return _load(_compile(tmp_path_factory.mktemp("vertex") / "lv.json", "--target", "vertex",
                          "--trainer-gpus", "1"))


@pytest.fixture(scope="module", params=[targets.KFP, targets.VERTEX])
def spec(request, kfp_spec, vertex_spec):
    return request.param, (kfp_spec if request.param == targets.KFP else vertex_spec)[0]


@pytest.fixture(scope="module")
def local_dag():
    """Node id -> upstream node ids of the pipeline the local runners run."""
    pipeline = local_runner.build_pipeline(local_runner.LocalRun(data_root="/data",
                                                                 output_root="/outputs"))
    return {node.id: {upstream.id for upstream in node.upstream_nodes}
            for node in pipeline.components}


def _executor(spec, task_name):
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    return executors[spec.components[spec.root.dag.tasks[task_name].component_ref.name]
                     .executor_label]


def _target_tasks(target):
    return {targets.FINGERPRINT_TASK} if target == targets.KFP else set()


def test_every_component_is_a_task_and_nothing_else_but_the_fingerprint(spec, local_dag):
    target, spec = spec
    assert set(spec.root.dag.tasks) == set(local_dag) | _target_tasks(target)


def test_no_task_needs_a_resolver(spec):
    _, spec = spec
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert all(set(executor) == {"container"} for executor in executors.values())


def test_dependencies_match_the_local_dag(spec, local_dag):
    target, spec = spec
    for node, upstream in local_dag.items():
        extra = ({targets.FINGERPRINT_TASK} if target == targets.KFP
                 and node == targets.EXAMPLE_GEN_TASK else set())
        assert set(spec.root.dag.tasks[node].dependent_tasks) == upstream | extra, node


def test_the_gate_compares_with_the_served_model_and_gates_the_pusher(spec):
    _, spec = spec
    tasks = spec.root.dag.tasks
    pusher_inputs = tasks["AtomicPusher"].inputs.artifacts
    assert pusher_inputs["model_blessing"].task_output_artifact.producer_task == "Evaluator"
    assert pusher_inputs["model_blessing"].task_output_artifact.output_artifact_key == "blessing"
    assert pusher_inputs["model"].task_output_artifact.producer_task == "Trainer"
    baseline = tasks["Evaluator"].inputs.artifacts["baseline_model"].task_output_artifact
    assert (baseline.producer_task, baseline.output_artifact_key) == ("ServedModel", "model")
    served_dir = tasks["ServedModel"].inputs.parameters["serving_model_dir"]
    assert served_dir.runtime_value.constant.string_value == \
        f"{SERVING_ROOT}/{configs.MODEL_NAME}"
    assert _executor(spec, "Evaluator")["container"]["args"][1] == \
        "components.served_model.EvaluatorExecutor"
    assert "DataGate" in tasks["Transform"].dependent_tasks


def test_tasks_that_read_the_world_outside_are_never_cached(spec):
    target, spec = spec
    for name, task in spec.root.dag.tasks.items():
        never = name in NEVER_CACHED | _target_tasks(target)
        assert task.caching_options.enable_cache is not never, name


def test_tfx_tasks_start_through_the_project_entry_point_with_the_code_version(spec):
    target, spec = spec
    version_arg = f"{container_entrypoint.CODE_VERSION_FLAG}={code_version.code_version()}"
    for name in spec.root.dag.tasks:
        container = _executor(spec, name)["container"]
        assert container["image"] == IMAGE, name
        expected = (targets.FINGERPRINT_COMMAND if name == targets.FINGERPRINT_TASK
                    else targets.ENTRYPOINT_COMMAND)
        assert container["command"] == expected, name
        assert version_arg in container["args"], name
        assert (container_entrypoint.REMOVE_MARKERS_FLAG in container["args"]) is (
            target == targets.KFP and name != targets.FINGERPRINT_TASK), name


def test_the_fingerprint_feeds_import_example_gen_on_kfp(kfp_spec):
    spec, _, _ = kfp_spec
    example_gen = spec.root.dag.tasks[targets.EXAMPLE_GEN_TASK]
    for name in input_fingerprint.OUTPUT_PARAMETER_TYPES:
        source = example_gen.inputs.parameters[name].task_output_parameter
        assert (source.producer_task, source.output_parameter_key) == (
            targets.FINGERPRINT_TASK, name)
    fingerprint = spec.root.dag.tasks[targets.FINGERPRINT_TASK]
    assert fingerprint.inputs.parameters["input_base"].runtime_value.constant.string_value == \
        DATA_ROOT
    container = _executor(spec, targets.EXAMPLE_GEN_TASK)["container"]
    assert "lifecycle" not in container  # open-source KFP never runs it
    inputs_spec = json.loads(container_entrypoint.get_flag(
        container["args"], container_entrypoint.INPUTS_SPEC_FLAG))
    assert inputs_spec["parameters"]["span"] == {"parameterType": "NUMBER_INTEGER"}
    assert inputs_spec["parameters"]["input_fingerprint"] == {"parameterType": "STRING"}


def test_vertex_keeps_tfx_driver_before_the_cache_check(vertex_spec):
    spec, _, job = vertex_spec
    assert targets.FINGERPRINT_TASK not in spec.root.dag.tasks
    driver = _executor(spec, targets.EXAMPLE_GEN_TASK)["container"]["lifecycle"]["preCacheCheck"]
    assert driver["command"] == [
        "python", "-m", "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"]
    assert driver["args"][-3:] == [*configs.DEFAULT_BEAM_ARGS, f"--sdk_container_image={IMAGE}"]
    assert job.runtime_config.parameter_values.keys() == {
        configs.TRAIN_ARGS_PARAMETER, configs.EVAL_CONFIG_PARAMETER,
        configs.TRAINING_CONFIG_PARAMETER}


def test_components_are_referenced_by_dotted_path_and_uris_kept(spec):
    _, spec = spec
    tasks = spec.root.dag.tasks

    def constant(task, name):
        return tasks[task].inputs.parameters[name].runtime_value.constant.string_value
    assert constant("Trainer", "run_fn") == configs.RUN_FN
    assert constant("Transform", "preprocessing_fn") == configs.PREPROCESSING_FN
    assert constant("ImportSchemaGen", "schema_file") == runner.IMAGE_SCHEMA_PATH
    destination = json.loads(constant("AtomicPusher", "push_destination"))
    assert destination["filesystem"]["base_directory"] == f"{SERVING_ROOT}/{configs.MODEL_NAME}"
    assert spec.default_pipeline_root == PIPELINE_ROOT
    assert spec.schema_version == "2.1.0"


def test_runtime_parameters_are_declared_with_their_defaults(spec):
    _, spec = spec
    parameters = spec.root.input_definitions.parameters
    names = {configs.TRAIN_ARGS_PARAMETER, configs.EVAL_CONFIG_PARAMETER,
             configs.TRAINING_CONFIG_PARAMETER}
    assert set(parameters) == names
    for name in names:
        assert parameters[name].parameter_type == pipeline_spec_pb2.ParameterType.STRING
    train_args = proto_utils.json_to_proto(
        parameters[configs.TRAIN_ARGS_PARAMETER].default_value.string_value,
        trainer_pb2.TrainArgs())
    assert train_args.num_steps == configs.DEFAULT_TRAIN_STEPS
    training = json.loads(parameters[configs.TRAINING_CONFIG_PARAMETER].default_value.string_value)
    assert training["model"] == configs.DEFAULT_TRAINING.model
    eval_config = proto_utils.json_to_proto(
        parameters[configs.EVAL_CONFIG_PARAMETER].default_value.string_value, tfma.EvalConfig())
    assert eval_config == eval_config_lib.build_eval_config()  # slice gate included

    def parameter_source(task, name):
        return spec.root.dag.tasks[task].inputs.parameters[name].component_input_parameter
    assert parameter_source("Trainer", "train_args") == configs.TRAIN_ARGS_PARAMETER
    assert parameter_source("Trainer", "custom_config") == configs.TRAINING_CONFIG_PARAMETER
    assert parameter_source("Evaluator", "eval_config") == configs.EVAL_CONFIG_PARAMETER


def _beam_args(container):
    """The arguments TFX's entry point hands to Beam: all but its own and this project's."""
    return [arg for arg in container["args"] if arg.startswith("--") and not arg.startswith(
        ("--executor_class_path", "--json_serialized", "--lvseg_"))]


def test_beam_args_reach_the_data_stages_only(spec):
    _, spec = spec
    for task in spec.root.dag.tasks:
        beam_args = [a for a in _beam_args(_executor(spec, task)["container"])
                     if a.startswith("--direct_")]
        assert beam_args == (list(configs.DEFAULT_BEAM_ARGS) if task in DATA_STAGES else []), task


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
    spec, _, _ = _load(_compile(tmp_path / "lv.yaml", *options))
    for task in DATA_STAGES:
        assert _beam_args(_executor(spec, task)["container"]) == expected, task
    assert not set(expected) & set(_executor(spec, "Trainer")["container"]["args"])


def test_dataflow_without_a_project_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--project"):
        _compile(tmp_path / "lv.yaml", "--beam-runner", "dataflow", "--region", "r",
                 "--temp-location", "gs://b/t")


def test_resources_per_group_of_tasks(kfp_spec):
    spec, _, _ = kfp_spec
    assert _executor(spec, "Trainer")["container"]["resources"] == {
        "cpuLimit": 4.0, "memoryLimit": 16.0,
        "accelerator": {"type": resources.KUBERNETES_GPU, "count": "1"}}
    for task in DATA_STAGES:  # ImportExampleGen too, which TFX's platform config skips
        assert _executor(spec, task)["container"]["resources"] == {
            "cpuLimit": 2.0, "memoryLimit": 8.0}, task
    assert _executor(spec, "ServingCheck")["container"]["resources"] == {"memoryLimit": 4.0}
    assert "resources" not in _executor(spec, "AtomicPusher")["container"]


def test_node_selectors_and_tolerations_go_to_the_kubernetes_platform_config(kfp_spec):
    """kfp-kubernetes' KubernetesExecutorConfig (kubernetes_platform/proto/
    kubernetes_executor_config.proto: node_selector.labels, tolerations key/operator/value/
    effect), under platforms.kubernetes.deploymentSpec.executors.<executor label>."""
    _, platform, _ = kfp_spec
    executors = json_format.MessageToDict(platform)["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    assert set(executors) == {"Trainer_executor"}
    assert executors["Trainer_executor"] == {
        "nodeSelector": {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "training",
             "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def test_vertex_gpus_are_gpu_models(vertex_spec):
    spec, platform, _ = vertex_spec
    assert platform is None
    assert _executor(spec, "Trainer")["container"]["resources"]["accelerator"] == {
        "type": resources.VERTEX_DEFAULT_GPU, "count": "1"}


VERTEX_JOB_OPTIONS = ["--target", "vertex", "--trainer-replicas", "4",
                      "--trainer-machine-type", "g2-standard-24", "--trainer-gpus", "2",
                      "--gpu-type", "NVIDIA_L4", "--project", "proj", "--region", "europe-west4"]


@pytest.fixture(scope="module")
def vertex_job_spec(tmp_path_factory, no_network):
    return _load(_compile(tmp_path_factory.mktemp("vertex_job") / "lv.json", *VERTEX_JOB_OPTIONS))


def test_vertex_training_job_settings_are_in_the_trainer_task(vertex_job_spec):
    """--trainer-replicas: the Trainer task runs TFX's Vertex AI training executor (through
    components.training_jobs.Executor) with the custom job as a parameter; what that
    executor makes of it is tests/test_multi_worker_training.py's."""
    from components import vertex_training

    spec, _, _ = vertex_job_spec
    task = json_format.MessageToDict(spec.root.dag.tasks["Trainer"])
    job = json.loads(task["inputs"]["parameters"]["training_job"]["runtimeValue"]["constant"])
    assert job.pop("backend") == "vertex"
    assert job == {"project": "proj", "region": "europe-west4", "image": IMAGE, "replicas": 4,
                   "machine_type": "g2-standard-24", "accelerator_type": "NVIDIA_L4",
                   "accelerator_count": 2}
    pools = vertex_training.VertexTrainingJob(**job).worker_pool_specs()
    assert [pool["replica_count"] for pool in pools] == [1, 3]  # the chief, then the workers
    assert {json.dumps(pool["machine_spec"], sort_keys=True) for pool in pools} == {json.dumps(
        {"machine_type": "g2-standard-24", "accelerator_type": "NVIDIA_L4",
         "accelerator_count": 2}, sort_keys=True)}
    # The training settings stay the run-time parameter a run can override.
    assert task["inputs"]["parameters"]["custom_config"] == {
        "componentInputParameter": configs.TRAINING_CONFIG_PARAMETER}
    container = _executor(spec, "Trainer")["container"]
    assert container["args"][container["args"].index("--executor_class_path") + 1] == (
        "components.training_jobs.Executor")
    # The task only waits for the job: the GPUs are on the job's machines, not on it.
    assert "resources" not in container


def test_kfp_training_job_is_a_tfjob_with_the_trainer_resources(tmp_path, no_network):
    spec, platform, _ = _load(_compile(
        tmp_path / "lv.yaml", "--trainer-replicas", "3", "--trainer-cpus", "8",
        "--trainer-memory-gb", "30", "--trainer-gpus", "1",
        "--trainer-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
        "--trainer-namespace", "team-cardiac"))
    task = json_format.MessageToDict(spec.root.dag.tasks["Trainer"])
    job = json.loads(task["inputs"]["parameters"]["training_job"]["runtimeValue"]["constant"])
    assert job["backend"] == "tfjob" and job["replicas"] == 3 and job["image"] == IMAGE
    assert (job["cpus"], job["memory_gb"], job["gpus"], job["gpu_resource"]) == (
        8, 30, 1, resources.KUBERNETES_GPU)
    assert job["namespace"] == "team-cardiac"
    assert job["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert job["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # The pods get the resources; the waiting task gets none and no platform config.
    assert "resources" not in _executor(spec, "Trainer")["container"]
    assert platform is None


def test_without_replicas_the_trainer_trains_in_its_own_task(vertex_spec):
    spec, _, _ = vertex_spec
    container = _executor(spec, "Trainer")["container"]
    assert container["args"][container["args"].index("--executor_class_path") + 1] == (
        "tfx.components.trainer.executor.GenericExecutor")


def test_the_tfjob_rbac_manifest_allows_what_the_trainer_task_calls():
    """kubeflow/tfjob-rbac.yaml: create and get on tfjobs.kubeflow.org, what
    components.tfjob_training calls (create_namespaced_custom_object, then
    get_namespaced_custom_object)."""
    from components import tfjob_training

    with open(os.path.join(REPO_ROOT, "kubeflow", "tfjob-rbac.yaml")) as f:
        role, binding = yaml.safe_load_all(f)
    (rule,) = role["rules"]
    assert rule["apiGroups"] == [tfjob_training.GROUP]
    assert rule["resources"] == [tfjob_training.PLURAL]
    assert {"create", "get"} <= set(rule["verbs"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


@pytest.mark.parametrize("options, message", [
    (["--trainer-machine-type", "n1-standard-8"], "--trainer-machine-type is Vertex AI's"),
    (["--trainer-namespace", "team"], "needs --trainer-replicas 2 or more"),
    (["--target", "vertex", "--trainer-replicas", "2", "--region", "r"], "needs --project"),
    (["--target", "vertex", "--trainer-replicas", "2", "--project", "p", "--region", "r",
      "--trainer-cpus", "8"], "--trainer-machine-type"),
    (["--target", "vertex", "--trainer-replicas", "2", "--project", "p", "--region", "r",
      "--trainer-gpus", "1", "--gpu-type", "nvidia.com/gpu"], "no accelerator type"),
    (["--target", "vertex", "--trainer-replicas", "0"], "at least 1"),
])
def test_bad_training_job_options_are_refused(tmp_path, options, message):
    output = tmp_path / ("lv.json" if "vertex" in options else "lv.yaml")
    with pytest.raises(ValueError) as error:
        _compile(output, *options)
    assert message in str(error.value)


@pytest.mark.parametrize("options, message", [
    (["--target", "vertex", "--trainer-node-selector", "a=b"], "exist only on Kubernetes"),
    (["--data-cpus", "-1"], "must not be negative"),
    (["--trainer-toleration", "nvidia.com/gpu"], "KEY[=VALUE]:EFFECT"),
    (["--trainer-node-selector", "pool"], "LABEL=VALUE"),
    (["--min-dice", "1.7"], "min_dice must be in [0, 1]"),
])
def test_bad_compile_options_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError) as error:
        _compile(tmp_path / "lv.yaml", *options)
    assert message in str(error.value)


def test_kfp_takes_yaml_only(tmp_path):
    with pytest.raises(ValueError, match="uploads YAML"):
        _compile(tmp_path / "lv.json")


@pytest.mark.parametrize("options, expected", [
    (["--max-slice-dice-drop", "0.1"], dict(max_slice_dice_drop=0.1)),
    (["--no-slice-gate"], dict(max_slice_dice_drop=None)),
])
def test_slice_gate_options_set_the_eval_config_default(tmp_path, no_network, options, expected):
    spec, _, _ = _load(_compile(tmp_path / "lv.yaml", *options))
    default = spec.root.input_definitions.parameters[configs.EVAL_CONFIG_PARAMETER]
    eval_config = proto_utils.json_to_proto(default.default_value.string_value, tfma.EvalConfig())
    assert eval_config == eval_config_lib.build_eval_config(**expected)


def test_training_options_set_the_parameter_defaults(tmp_path, no_network):
    spec, _, _ = _load(_compile(tmp_path / "lv.yaml", "--train-steps", "1000", "--model",
                                "lab_fcn", "--max-gain-change", "0.2", "--max-gamma-change",
                                "0.1", "--ensemble-size", "3"))
    parameters = spec.root.input_definitions.parameters
    assert json.loads(parameters[configs.TRAIN_ARGS_PARAMETER].default_value.string_value) == {
        "num_steps": 1000}
    training = json.loads(parameters[configs.TRAINING_CONFIG_PARAMETER].default_value.string_value)
    assert (training["model"], training["max_gain_change"], training["max_gamma_change"],
            training["ensemble_size"]) == ("lab_fcn", 0.2, 0.1, 3)


def test_the_code_version_changes_with_the_code_and_matches_an_installed_copy(tmp_path):
    """The digest of a wheel built from this tree (what `pip install .` puts in the image)
    equals the source tree's; editing one module changes it."""
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the repository
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "data", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "wheel"), str(source)], check=True,
                   cwd=str(tmp_path))
    [wheel] = os.listdir(tmp_path / "wheel")
    with zipfile.ZipFile(tmp_path / "wheel" / wheel) as archive:
        archive.extractall(tmp_path / "installed")
    installed = {p: str(tmp_path / "installed" / p) for p in code_version.PACKAGES}
    assert code_version.code_version(installed) == code_version.code_version()

    edited = tmp_path / "edited"
    for package in code_version.PACKAGES:
        shutil.copytree(code_version.installed_package_dir(package), edited / package)
    with open(edited / "trainer" / "model.py", "a") as f:
        f.write("\n# a change\n")
    assert code_version.code_version(
        {p: str(edited / p) for p in code_version.PACKAGES}) != code_version.code_version()
