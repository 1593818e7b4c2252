"""`lvseg kubeflow submit` against a stand-in Kubeflow Pipelines API on 127.0.0.1: the calls and
bodies of the kfp 2.5 client (kfp/client/client.py create_run_from_pipeline_package), the
server's reason when it refuses, a timeout on a server that does not answer, the token, and bad
overrides refused before any request."""
import http.server
import json
import socket
import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from tfx.proto import trainer_pb2
from tfx.utils import proto_utils

import tensorflow_model_analysis as tfma
from kubeflow import cli, run_parameters, submit
from pipeline import configs
from pipeline import eval_config as eval_config_lib

RUN_ID = "run-0001"
EXPERIMENT_ID = "experiment-0001"
TOKEN = "token-of-a-service-account"


class FakePipelinesApi(http.server.BaseHTTPRequestHandler):
    """The calls the kfp 2.5 client makes to start a run, answered as the KFP v2beta1 API does;
    ``behaviour`` makes it refuse (status + grpc-gateway error body) or never answer."""

    requests = []
    behaviour = {}

    def _answer(self, body, status=200):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _record(self, method, body=None):
        url = urlparse(self.path)
        self.requests.append(dict(method=method, path=url.path, query=parse_qs(url.query),
                                  body=body, headers=dict(self.headers)))
        return url.path

    def _misbehave(self, path):
        refusal = self.behaviour.get(path)
        if refusal == "hang":
            time.sleep(5)
            return True
        if refusal:
            status, message = refusal
            self._answer({"error": message, "code": 3, "message": message, "details": []},
                         status)
            return True
        return False

    def do_GET(self):
        path = self._record("GET")
        if self._misbehave(path):
            return
        self._answer({"experiments": [], "total_size": 0})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = self._record("POST", body)
        if self._misbehave(path):
            return
        if path == "/apis/v2beta1/experiments":
            self._answer({"experiment_id": EXPERIMENT_ID, "display_name": body["display_name"]})
        else:
            self._answer({"run_id": RUN_ID, "experiment_id": EXPERIMENT_ID,
                          "display_name": body["display_name"]})

    def log_message(self, *args):
        pass


@pytest.fixture
def pipelines_api():
    FakePipelinesApi.requests = []
    FakePipelinesApi.behaviour = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePipelinesApi)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakePipelinesApi
    server.shutdown()
    server.server_close()


def _compile(path, *options):
    args = cli.build_parser().parse_args([
        "kubeflow", "compile", "--image", "lvseg:test", "--pipeline-root", "gs://b/root",
        "--data-root", "gs://b/data", "--serving-dir", "gs://b/serving", "--output", str(path),
        *options])
    assert args.handler(args) == 0
    return str(path)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("kfp") / "lv.yaml")


def _submit(*options):
    from lvseg import cli as lvseg_cli
    return lvseg_cli.main(["kubeflow", "submit", *options])


def _runs(api):
    return [r for r in api.requests if r["path"] == "/apis/v2beta1/runs"]


def test_submit_creates_the_experiment_and_starts_a_run(pipelines_api, package, capsys):
    host, api = pipelines_api
    assert _submit("--host", host, "--package", package, "--run-name", "nightly",
                   "--train-steps", "1000", "--model", "lab_fcn", "--min-dice", "0.9",
                   "--token", TOKEN) == 0
    assert f"started run {RUN_ID}" in capsys.readouterr().out

    [lookup, create_experiment, create_run] = api.requests
    assert (lookup["method"], lookup["path"]) == ("GET", "/apis/v2beta1/experiments")
    assert json.loads(lookup["query"]["filter"][0])["predicates"][0]["stringValue"] == \
        configs.PIPELINE_NAME
    assert create_experiment["body"] == {"display_name": configs.PIPELINE_NAME}
    for request in api.requests:
        assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"

    run = create_run["body"]
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == EXPERIMENT_ID
    spec = run["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == configs.PIPELINE_NAME
    assert "AtomicPusher" in spec["root"]["dag"]["tasks"]
    assert run["runtime_config"]["pipeline_root"] == "gs://b/root"

    parameters = run["runtime_config"]["parameters"]
    train_args = proto_utils.json_to_proto(parameters[configs.TRAIN_ARGS_PARAMETER],
                                           trainer_pb2.TrainArgs())
    assert train_args.num_steps == 1000
    assert json.loads(parameters[configs.TRAINING_CONFIG_PARAMETER])["model"] == "lab_fcn"
    eval_config = proto_utils.json_to_proto(parameters[configs.EVAL_CONFIG_PARAMETER],
                                            tfma.EvalConfig())
    [dice] = [m for s in eval_config.metrics_specs for m in s.metrics
              if m.class_name == configs.DICE_METRIC_CLASS]
    assert not dice.HasField("threshold")  # a MetricConfig.threshold applies to every slice
    overall = eval_config_lib.overall_dice_threshold(eval_config)
    assert overall.value_threshold.lower_bound.value == pytest.approx(0.9)
    # the rest of the gate is the compiled one, the slice gate included
    eval_config_lib.set_min_dice(eval_config, configs.MIN_DICE)
    assert eval_config == eval_config_lib.build_eval_config()


def test_without_overrides_the_run_uses_the_compiled_defaults(pipelines_api, package):
    host, api = pipelines_api
    assert _submit("--host", host, "--package", package) == 0
    [run] = _runs(api)
    assert run["body"]["runtime_config"]["parameters"] == {}
    assert "Authorization" not in run["headers"]
    defaults = run["body"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert json.loads(defaults[configs.TRAIN_ARGS_PARAMETER]["defaultValue"]) == {
        "num_steps": configs.DEFAULT_TRAIN_STEPS}
    # the compiled caching options are sent as they are: the served model is never cached
    tasks = run["body"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks["ServedModel"]["cachingOptions"] == {"enableCache": False}
    assert tasks["Trainer"]["cachingOptions"] == {"enableCache": True}


def test_no_cache_turns_every_task_cache_off(pipelines_api, package):
    host, api = pipelines_api
    assert _submit("--host", host, "--package", package, "--no-cache") == 0
    [run] = _runs(api)
    tasks = run["body"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert {json.dumps(t["cachingOptions"]) for t in tasks.values()} == {
        json.dumps({"enableCache": False})}


def test_the_token_comes_from_the_environment_or_the_service_account_file(
        pipelines_api, package, tmp_path, monkeypatch):
    host, api = pipelines_api
    monkeypatch.setenv(submit.TOKEN_ENV, "from-the-environment")
    assert _submit("--host", host, "--package", package) == 0
    assert api.requests[-1]["headers"]["Authorization"] == "Bearer from-the-environment"
    monkeypatch.delenv(submit.TOKEN_ENV)
    token_file = tmp_path / "token"
    token_file.write_text("projected-sa-token\n")
    monkeypatch.setenv(submit.SA_TOKEN_PATH_ENV, str(token_file))
    assert _submit("--host", host, "--package", package) == 0
    assert api.requests[-1]["headers"]["Authorization"] == "Bearer projected-sa-token"


def test_a_session_cookie_is_sent(pipelines_api, package):
    host, api = pipelines_api
    assert _submit("--host", host, "--package", package,
                   "--cookie", "authservice_session=abc") == 0
    assert {r["headers"]["Cookie"] for r in api.requests} == {"authservice_session=abc"}


@pytest.mark.parametrize("path, status, message", [
    ("/apis/v2beta1/runs", 500, "Failed to create a run: InternalServerError: pipeline spec "
                                "is invalid: missing executor ServedModel_executor"),
    ("/apis/v2beta1/experiments", 401, "Unauthorized access: no user identity found"),
])
def test_the_servers_reason_is_shown(pipelines_api, package, capsys, path, status, message):
    host, api = pipelines_api
    api.behaviour[path] = (status, message)
    assert _submit("--host", host, "--package", package) == cli.EXIT_SUBMIT_FAILED
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"{status}" in error and message in error
    if status == 401:
        assert "--token" in error


def test_a_server_that_does_not_answer_times_out(pipelines_api, package, capsys):
    host, api = pipelines_api
    api.behaviour["/apis/v2beta1/runs"] = "hang"
    started = time.monotonic()
    assert _submit("--host", host, "--package", package,
                   "--timeout", "1") == cli.EXIT_SUBMIT_FAILED
    assert time.monotonic() - started < 4  # the stand-in would answer nothing for 5 s
    error = capsys.readouterr().err
    assert "did not answer POST /apis/v2beta1/runs within 1 s" in error
    assert "may or may not have been created" in error


def test_an_unreachable_host_fails_in_one_line_naming_it(package, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    assert _submit("--host", host, "--package", package) == cli.EXIT_SUBMIT_FAILED
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith(f"lvseg: error: cannot reach Kubeflow Pipelines at {host}")


@pytest.mark.parametrize("options, message", [
    (["--param", "train_args=300"], "train_args is not a valid TrainArgs"),
    (["--param", "train_args={\"num_steps\": 0}"], "num_steps must be at least 1"),
    (["--param", "eval_config={\"model_specs\": ["], "eval_config is not a valid EvalConfig"),
    (["--param", "eval_config={}"], "no overall Dice threshold"),
    (["--param", "training_config={\"model\": \"resnet\"}"], "model must be one of"),
    (["--param", "training_config={\"learning_rte\": 0.1}"], "unknown training option"),
    (["--param", "learning_rate=0.1"], "no parameter 'learning_rate'"),
    (["--min-dice", "1.7"], "a Dice threshold is in [0, 1]"),
    (["--train-steps", "500", "--param", "train_args={\"num_steps\": 300}"],
     "--train-steps and --param train_args=... both set train_args"),
    (["--param", "train_args={\"num_steps\": 3}", "--param", "train_args={\"num_steps\": 4}"],
     "given twice"),
])
def test_a_bad_override_is_refused_before_any_request(pipelines_api, package, capsys, options,
                                                       message):
    host, api = pipelines_api
    from lvseg import cli as lvseg_cli
    assert _submit("--host", host, "--package", package, *options) == lvseg_cli.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert api.requests == []


def test_a_file_that_is_not_a_compiled_pipeline_is_refused(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"hello": "world"}))
    with pytest.raises(ValueError, match="not a compiled pipeline"):
        submit.load_package(str(path))


def test_the_platform_config_is_sent_beside_the_spec(pipelines_api, tmp_path):
    host, api = pipelines_api
    package = _compile(tmp_path / "gpu.yaml", "--trainer-gpus", "1",
                       "--trainer-node-selector", "cloud.google.com/gke-accelerator=nvidia-l4")
    assert _submit("--host", host, "--package", package) == 0
    [run] = _runs(api)
    pipeline_spec = run["body"]["pipeline_spec"]
    assert set(pipeline_spec) == {"pipeline_spec", "platform_spec"}  # as the kfp client sends
    executors = pipeline_spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"]
    assert executors["Trainer_executor"]["nodeSelector"] == {
        "labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}


def test_run_parameters_check_matches_what_the_executors_read():
    defaults = {configs.TRAIN_ARGS_PARAMETER: '{"num_steps": 300}',
                configs.EVAL_CONFIG_PARAMETER: run_parameters.to_json(
                    eval_config_lib.build_eval_config()),
                configs.TRAINING_CONFIG_PARAMETER: run_parameters.to_json(
                    configs.training_custom_config())}
    result = run_parameters.overrides(defaults, train_steps=5)
    assert proto_utils.json_to_proto(result[configs.TRAIN_ARGS_PARAMETER],
                                     trainer_pb2.TrainArgs()).num_steps == 5
    assert set(result) == {configs.TRAIN_ARGS_PARAMETER}


def test_vertex_takes_the_package_and_the_checked_overrides_offline(tmp_path):
    """Vertex AI's own SDK (google-cloud-aiplatform) parses the compiled PipelineJob and merges
    the overrides; submitting it needs Google Cloud, not available here."""
    from google.auth.credentials import AnonymousCredentials
    package = _compile(tmp_path / "lv.json", "--target", "vertex")
    arguments = run_parameters.overrides(submit.load_package(package).parameter_defaults(),
                                         train_steps=7)
    job = submit.vertex_pipeline_job(package, project="my-project", region="europe-west4",
                                     arguments=arguments, run_name="nightly",
                                     credentials=AnonymousCredentials())
    resource = job._gca_resource
    assert resource.display_name == "nightly"
    assert resource.runtime_config.gcs_output_directory == "gs://b/root"
    values = resource.runtime_config.parameter_values
    assert json.loads(values[configs.TRAIN_ARGS_PARAMETER]) == {"num_steps": 7}
    assert proto_utils.json_to_proto(values[configs.EVAL_CONFIG_PARAMETER],
                                     tfma.EvalConfig()) == eval_config_lib.build_eval_config()
    tasks = resource.pipeline_spec["root"]["dag"]["tasks"]
    assert tasks["ServedModel"]["cachingOptions"] == {"enableCache": False}
