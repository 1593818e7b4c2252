"""`lvseg kubeflow submit`: a run reaches a (stand-in) Kubeflow Pipelines API over HTTP with the
compiled spec and its parameter overrides; an unreachable host fails in one line naming it."""
import http.server
import json
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
from tfx.proto import trainer_pb2
from tfx.utils import proto_utils

import tensorflow_model_analysis as tfma
from kubeflow import cli, submit
from pipeline import configs
from pipeline import eval_config as eval_config_lib

RUN_ID = "run-0001"
EXPERIMENT_ID = "experiment-0001"


class FakePipelinesApi(http.server.BaseHTTPRequestHandler):
    """The four calls the kfp 2.5 client makes to start a run, as the KFP v2beta1 API answers."""

    requests = []

    def _answer(self, body):
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self.requests.append(("GET", urlparse(self.path).path, None))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._answer({"experiments": [], "total_size": 0})
        else:
            self._answer({"multi_user": False})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = urlparse(self.path).path
        self.requests.append(("POST", path, body))
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
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePipelinesApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakePipelinesApi.requests
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kfp") / "lv.json")
    args = cli.build_parser().parse_args([
        "kubeflow", "compile", "--image", "lvseg:test", "--pipeline-root", "gs://b/root",
        "--data-root", "gs://b/data", "--serving-dir", "gs://b/serving", "--output", path])
    assert args.handler(args) == 0
    return path


def _submit(*options):
    args = cli.build_parser().parse_args(["kubeflow", "submit", *options])
    return args.handler(args)


def test_submit_uploads_the_spec_and_starts_a_run(pipelines_api, package, capsys):
    host, requests = pipelines_api
    assert _submit("--host", host, "--package", package, "--run-name", "nightly",
                   "--train-steps", "1000", "--model", "lab_fcn", "--min-dice", "0.9") == 0
    assert f"started run {RUN_ID}" in capsys.readouterr().out

    [run] = [body for method, path, body in requests if path == "/apis/v2beta1/runs"]
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
    assert overall.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    eval_config_lib.set_min_dice(eval_config, configs.MIN_DICE)
    assert eval_config == eval_config_lib.build_eval_config()


def test_without_overrides_the_run_uses_the_compiled_defaults(pipelines_api, package):
    host, requests = pipelines_api
    assert _submit("--host", host, "--package", package) == 0
    [run] = [body for method, path, body in requests if path == "/apis/v2beta1/runs"]
    assert not run["runtime_config"].get("parameters")
    defaults = run["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert json.loads(defaults[configs.TRAIN_ARGS_PARAMETER]["defaultValue"]) == {
        "num_steps": configs.DEFAULT_TRAIN_STEPS}


def test_an_unreachable_host_fails_in_one_line_naming_it(package, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    started = time.monotonic()
    assert _submit("--host", host, "--package", package) == cli.EXIT_SUBMIT_FAILED
    assert time.monotonic() - started < submit.CONNECT_TIMEOUT_S
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith(f"lvseg: error: cannot reach Kubeflow Pipelines at {host}")


def test_an_unknown_parameter_is_refused_before_contacting_the_host(package):
    with pytest.raises(ValueError, match="no parameter"):
        submit.submit("http://127.0.0.1:9", package, arguments={"learning_rate": "0.1"})


def test_a_file_that_is_not_a_compiled_pipeline_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ValueError, match="not a compiled pipeline"):
        submit.load_pipeline_spec(str(path))
