"""The compiled Kubeflow pipeline, run task by task through its own container commands, as the
open-source Kubeflow Pipelines 2.5 backend and Vertex AI Pipelines launch it
(``tests/kfp_launcher.py`` says what each backend does, with the source of each behaviour).

In each mode, on a tiny generated data set, three runs of one compiled spec against one
backend (its cache and metadata kept between runs):

1. the first run trains, is judged on the minimum Dice alone (nothing is served yet), is
   blessed and pushed;
2. a run-time override (``train_args``: 2 steps) trains a worse candidate; the data stages come
   from the cache, the Evaluator compares it with the version being served and refuses it;
3. a new file under the data root: ImportExampleGen is not a cache hit, and everything
   downstream runs on the new data.

A spec whose tasks start TFX's entry point unchanged fails on open-source Kubeflow Pipelines as
users saw it (tensorflow/tfx#7768), which shows the emulation reproduces the backend's failure.
"""
import copy
import json
import os
import shutil
import threading

import pytest
import yaml

from kubeflow import cli, container_entrypoint, targets
from pipeline import configs, run_summary
from tests import kfp_launcher
from dataset import records, synthetic_data

pytestmark = pytest.mark.e2e

IMAGE = "registry.example/lvseg:test"
TARGET_OF_MODE = {kfp_launcher.OSS: targets.KFP, kfp_launcher.VERTEX: targets.VERTEX}
# Enough training for the tiny set to beat a 2-step model clearly (eval Dice 0.70 against ~0
# in a local run with these settings; asserted, not assumed).
COMPILE_OPTIONS = ("--train-steps", "40", "--epochs", "2", "--batch-size", "8",
                   "--learning-rate", "0.005", "--min-dice", "0")
WORSE_TRAIN_ARGS = json.dumps({"num_steps": 2})
NEW_PATIENT_SLICES = 3
DATA_STAGES = ("ImportExampleGen", "StatisticsGen", "ExampleValidator", "DataGate", "Transform")


def compile_spec(tmp, data_root, target, *options):
    output = os.path.join(tmp, "lv.yaml")
    args = cli.build_parser().parse_args([
        "kubeflow", "compile", "--target", target, "--image", IMAGE,
        "--pipeline-root", os.path.join(tmp, "pipeline_root"), "--data-root", data_root,
        "--serving-dir", os.path.join(tmp, "serving"), "--schema", configs.CURATED_SCHEMA_PATH,
        "--output", output, *COMPILE_OPTIONS, *options])
    assert args.handler(args) == 0
    with open(output) as f:
        return next(yaml.safe_load_all(f))


def served_versions(tmp):
    folder = os.path.join(tmp, "serving", configs.MODEL_NAME)
    return sorted(name for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(
        folder) else []


def blessed(result):
    [blessing] = result.executions["Evaluator"].outputs["blessing"]
    return os.path.exists(os.path.join(blessing.uri, "BLESSED"))


def overall_dice(result):
    [evaluation] = result.executions["Evaluator"].outputs["evaluation"]
    overall = run_summary.read_sliced_metrics(evaluation.uri)[0]
    assert overall["slice"] == run_summary.OVERALL_SLICE
    return overall["metrics"]["dice"], overall["baseline"].get("dice")


def pushed(result):
    [pushed_model] = result.executions["AtomicPusher"].outputs["pushed_model"]
    return pushed_model.metadata.get("pushed") == 1


def count_records(split_dir):
    """Records in an Examples split as ExampleGen writes them (gzipped TFRecord files)."""
    import tensorflow as tf
    files = sorted(os.path.join(split_dir, name) for name in os.listdir(split_dir))
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def task_log(result, task):
    with open(result.executions[task].log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def add_patient_file(data_root):
    """A new record file (one more generated patient) under train/."""
    slices = (records.Slice(name, image, mask, patient_id=synthetic_data.patient_name(99))
              for name, image, mask in synthetic_data.generate_patient(
                  99, NEW_PATIENT_SLICES, synthetic_data.patient_rng(123, 99)))
    path = os.path.join(data_root, "train", records.record_file_name("new-patient"))
    records.write_lab_records(path, slices)
    return path


RUNS = ("first", "worse", "new_data")  # made in this order, each on its own backend


class Deployment:
    """One backend and one compiled spec; its three runs are made in order in a thread of their
    own, so both backends' runs go on side by side (each task is a process of its own)."""

    def __init__(self, mode, tmp, tiny_data_root):
        self.mode = mode
        self.tmp = tmp
        self.data_root = os.path.join(tmp, "data")
        shutil.copytree(tiny_data_root, self.data_root)
        self.spec = compile_spec(tmp, self.data_root, TARGET_OF_MODE[mode])
        self.backend = kfp_launcher.Backend(mode, os.path.join(tmp, "backend"))
        self._done = {name: threading.Event() for name in RUNS}
        self._results = {}
        self._thread = threading.Thread(target=self._run_all, name=f"runs-{mode}", daemon=True)

    def start(self):
        self._thread.start()

    def _run_all(self):
        overrides = {"worse": {configs.TRAIN_ARGS_PARAMETER: WORSE_TRAIN_ARGS}}
        for name in RUNS:
            try:
                if name == "new_data":
                    add_patient_file(self.data_root)
                result = self.backend.run(self.spec, overrides.get(name))
                self._results[name] = (result, served_versions(self.tmp))
            except Exception as exc:  # reported by every test that needs this run or a later one
                for later in RUNS[RUNS.index(name):]:
                    self._results[later] = exc
                    self._done[later].set()
                return
            finally:
                self._done[name].set()

    def run(self, name):
        """(RunResult, served versions after the run) of run ``name``, once it has finished."""
        self._done[name].wait()
        result = self._results[name]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="module")
def deployments(request, tmp_path_factory, tiny_data_root):
    """The backends of the modes the selected tests use, compiled one after the other (TFX's
    compiler is not thread-safe), then run side by side."""
    modes = sorted({item.callspec.params["deployment"] for item in request.session.items
                    if "deployment" in getattr(getattr(item, "callspec", None), "params", {})})
    deployments = {mode: Deployment(mode, str(tmp_path_factory.mktemp(mode)), tiny_data_root)
                   for mode in modes}
    for deployment in deployments.values():
        deployment.start()
    return deployments


@pytest.fixture(params=kfp_launcher.MODES)
def deployment(request, deployments):
    return deployments[request.param]


def test_first_run_is_judged_without_baseline_blessed_and_pushed(deployment):
    result, versions = deployment.run("first")
    assert result.cached() == []  # a new backend has nothing cached
    [served] = result.executions["ServedModel"].outputs["model"]
    assert served.metadata.get("served_version") == 0  # nothing served yet
    dice, baseline_dice = overall_dice(result)
    assert baseline_dice is None
    assert blessed(result) and pushed(result)
    assert len(versions) == 1


def test_a_worse_candidate_is_refused_against_the_served_model(deployment):
    first, versions_after_first = deployment.run("first")
    result, versions = deployment.run("worse")
    for task in DATA_STAGES:
        assert result.state(task) == "CACHED", task
    assert result.state("Trainer") == "COMPLETE"
    assert result.state("ServedModel") == "COMPLETE"  # never cached: serving changes outside
    [served] = result.executions["ServedModel"].outputs["model"]
    assert served.metadata.get("served_version") == int(versions_after_first[0])

    first_dice, _ = overall_dice(first)
    dice, baseline_dice = overall_dice(result)
    assert baseline_dice == pytest.approx(first_dice, abs=1e-6)  # the served model, re-scored
    assert dice < baseline_dice - 0.05, "precondition: the 2-step model must be clearly worse"
    assert not blessed(result) and not pushed(result)
    assert versions == versions_after_first


def test_run_time_overrides_reach_the_executors(deployment):
    result, _ = deployment.run("worse")
    trainer = result.executions["Trainer"]
    assert trainer.executor_input["inputs"]["parameterValues"]["train_args"] == WORSE_TRAIN_ARGS
    # the executor's own account of its execution properties (TFX's entry point logs them)
    log = task_log(result, "Trainer")
    assert "'train_args': '{\"num_steps\": 2}'" in log
    first, _ = deployment.run("first")
    assert "'train_args': '{\"num_steps\": 40}'" in task_log(first, "Trainer")


def test_new_data_under_the_same_root_is_not_a_cache_hit(deployment):
    before, _ = deployment.run("worse")
    result, versions = deployment.run("new_data")
    for task in ("ImportExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator"):
        assert result.state(task) == "COMPLETE", task
    [examples] = result.executions["ImportExampleGen"].outputs["examples"]
    [old_examples] = before.executions["ImportExampleGen"].outputs["examples"]
    assert examples.uri != old_examples.uri
    with open(os.path.join(deployment.data_root, synthetic_data.MANIFEST_NAME)) as f:
        tiny_train_slices = json.load(f)["splits"]["train"]["num_slices"]
    assert count_records(os.path.join(examples.uri, "Split-train")) == (
        tiny_train_slices + NEW_PATIENT_SLICES)
    _, baseline_dice = overall_dice(result)
    assert baseline_dice is not None  # judged against the served model
    assert len(versions) in (1, 2)  # pushed only if not worse than what is served


def with_tfx_entry_point(spec):
    """The spec as TFX compiles it, before kubeflow.targets: TFX's own entry point."""
    spec = copy.deepcopy(spec)
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        if container["command"] == targets.ENTRYPOINT_COMMAND:
            container["command"] = list(targets.TFX_COMMAND)
            container["args"] = container_entrypoint.pop_flag(
                container["args"], container_entrypoint.CODE_VERSION_FLAG)[0]
    return spec


@pytest.mark.parametrize("publish_logs, failing_task, error", [
    # KFP 2.0-2.4: the first task taking an upstream artifact (tensorflow/tfx#7768)
    (False, "StatisticsGen", "AttributeError: 'NoneType' object has no attribute 'get'"),
    # KFP 2.5: its executor-logs output breaks the first TFX task
    (True, "ImportSchemaGen", "ImportError: Could not import system.Artifact"),
])
def test_tfx_entry_point_unchanged_fails_on_open_source_kfp(tmp_path, tiny_data_root,
                                                             publish_logs, failing_task, error):
    spec = with_tfx_entry_point(compile_spec(str(tmp_path), tiny_data_root, targets.KFP))
    backend = kfp_launcher.Backend(kfp_launcher.OSS, str(tmp_path / "backend"),
                                   publish_logs=publish_logs)
    with pytest.raises(kfp_launcher.TaskFailed) as failure:
        backend.run(spec)
    assert failure.value.task == failing_task
    assert error in failure.value.log_tail


def test_open_source_kfp_refuses_resolver_tasks(tmp_path):
    spec = {"schemaVersion": "2.1.0", "components": {"r": {"executorLabel": "r_executor"}},
            "deploymentSpec": {"executors": {"r_executor": {"resolver": {}}}},
            "root": {"dag": {"tasks": {}}}}
    with pytest.raises(kfp_launcher.BackendRefused, match="non-container and non-importer"):
        kfp_launcher.Backend(kfp_launcher.OSS, str(tmp_path)).run(spec)
