"""The Trainer on two worker processes, as Vertex AI custom training or a TFJob runs it.

Each replica runs TFX's own per-replica command (``python -m tfx.scripts.run_executor`` with the
Trainer's GenericExecutor, from ``training_clients.AbstractJobClient.generate_container_command``)
with its own ``TF_CONFIG``; the chief and the worker talk over 127.0.0.1 on free ports. The data
is a small generated set (10 patients x 6 slices) transformed once by the pipeline's own Transform.

The two-worker run goes the whole Vertex AI way: the Trainer task of a spec compiled with
``--target vertex --trainer-replicas 2`` is executed by its executor (TFX's Vertex AI training
executor), whose job client asks Vertex AI's job service for the custom job; a stand-in for that
service (``training_cluster.FakeVertexJobService``) checks the request against Vertex AI's own
``CustomJob`` message and runs each replica's container command as a local process.
"""
import json
import os
import signal
import threading
import time

import pytest
from tfx.extensions.google_cloud_ai_platform import runner as vertex_runner
from tfx.extensions.google_cloud_ai_platform import training_clients

from components import tfjob_training, training_jobs, vertex_training
from dataset import synthetic_data
from kubeflow import runner as kubeflow_runner
from kubeflow.config import KFP, VERTEX
from pipeline import configs
from tests import training_cluster
from trainer import config as trainer_config

pytestmark = pytest.mark.e2e

# Enough examples and steps that a run converges (served Dice ~0.97 on the held-out patients), so
# the two runs can be compared: 200 global batches of 8, 2 epochs (docs/training.md).
STEPS = 200
TRAINING = {"batch_size": 8, "epochs": 2, "unet_base_filters": 16, "seed": 42}
# The two-worker run sees the same global batches' worth of examples, but each worker draws its
# batch share from its own shard, in its own order: the runs are not identical, only alike.
# Measured on this data: 0.9716 (one process) against 0.9724 (two workers); docs/training.md.
DICE_TOLERANCE = 0.05
# How long the chief may take to notice that a worker has died and fail: TensorFlow's
# coordination service declares a task dead after missing heartbeats (about 10 s here), and the
# collective then aborts. Generous, for a loaded CI machine; a hang would never end.
FAILURE_DEADLINE_S = 180
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("multi_worker"))
    data_root = os.path.join(work, "data")
    synthetic_data.synthesize_dataset(data_root, num_patients=10, slices_per_patient=6,
                                      eval_fraction=0.2, seed=7, progress=False)
    return data_root, training_cluster.transform_outputs(data_root, work)


def replica_command(inputs, out_dir, steps=STEPS, training=None):
    """The command TFX's Vertex AI training extension runs in every replica of the job."""
    return training_clients.AbstractJobClient.generate_container_command(
        None, inputs, training_cluster.trainer_outputs(out_dir),
        training_cluster.trainer_exec_properties(steps, dict(training or TRAINING)),
        training_cluster.TRAINER_EXECUTOR)


def run_replicas(inputs, out_dir, tf_configs):
    os.makedirs(os.path.join(out_dir, "tmp"))  # each replica's temporary folder (TMPDIR)
    replicas = training_cluster.start_replicas(
        replica_command(inputs, out_dir), tf_configs, out_dir,
        extra_env={"TMPDIR": os.path.join(out_dir, "tmp")})
    codes = training_cluster.wait_all(replicas, RUN_TIMEOUT_S)
    logs = "\n".join(f"--- {r.name}\n{r.log()[-4000:]}" for r in replicas)
    assert set(codes.values()) == {0}, (codes, logs)
    return replicas


def saved_models_under(folder):
    return sorted(root for root, _, files in os.walk(folder) if "saved_model.pb" in files)


@pytest.fixture(scope="module")
def one_process_run(transformed, tmp_path_factory):
    data_root, inputs = transformed
    out_dir = str(tmp_path_factory.mktemp("one") / "run")
    run_replicas(inputs, out_dir, [None])
    return out_dir


IMAGE = "europe-docker.pkg.dev/lvseg-test/lvseg/lvseg:1.2.3"
VERTEX_JOB = vertex_training.VertexTrainingJob(
    project="lvseg-test", region="europe-west4", image=IMAGE, replicas=2,
    machine_type="n1-standard-4")


def compiled_trainer_properties(folder: str, target: str, job, steps: int = STEPS,
                                training=None) -> dict:
    """The Trainer task's execution properties in a spec compiled for ``target`` with the
    training job ``job``: constants as compiled, the run-time parameters as a run that sets
    them (``steps``, ``training``) passes them."""
    compiled = kubeflow_runner.compile_pipeline(kubeflow_runner.KubeflowCompile(
        image=IMAGE, pipeline_root="gs://bucket/root", data_root="gs://bucket/data",
        serving_root="gs://bucket/serving", target=target, training_job=job),
        os.path.join(folder, "lv.json" if target == VERTEX else "lv.yaml"))
    run_values = {configs.TRAIN_ARGS_PARAMETER: json.dumps({"num_steps": steps}),
                  configs.TRAINING_CONFIG_PARAMETER: json.dumps(training or TRAINING)}
    properties = {}
    for name, value in compiled.spec["root"]["dag"]["tasks"]["Trainer"]["inputs"][
            "parameters"].items():
        if "componentInputParameter" in value:
            properties[name] = run_values[value["componentInputParameter"]]
        else:
            properties[name] = value["runtimeValue"]["constant"]
    return properties


@pytest.fixture(scope="module")
def two_worker_run(transformed, tmp_path_factory):
    """The compiled Trainer task, run by its executor against the stand-in job service."""
    _, inputs = transformed
    out_dir = str(tmp_path_factory.mktemp("two") / "run")
    os.makedirs(os.path.join(out_dir, "tmp"))
    properties = compiled_trainer_properties(os.path.dirname(out_dir), VERTEX, VERTEX_JOB)
    training_cluster.FakeVertexJobService.reset(
        out_dir, extra_env={"TMPDIR": os.path.join(out_dir, "tmp")})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_clients.gapic, "JobServiceClient",
                      training_cluster.FakeVertexJobService)
        patch.setattr(vertex_runner, "_POLLING_INTERVAL_IN_SECONDS", 1)
        try:
            training_jobs.Executor().Do(inputs, training_cluster.trainer_outputs(out_dir),
                                        properties)
        finally:
            for job in training_cluster.FakeVertexJobService.jobs.values():
                for replica in job.replicas:
                    if replica.process.poll() is None:
                        replica.process.kill()
    (job,) = training_cluster.FakeVertexJobService.jobs.values()
    return out_dir, job


def test_the_compiled_vertex_trainer_asks_for_the_custom_job_it_was_compiled_with(
        two_worker_run):
    _, job = two_worker_run
    assert job.endpoint == "europe-west4-aiplatform.googleapis.com"
    assert job.parent == "projects/lvseg-test/locations/europe-west4"
    pools = job.custom_job.job_spec.worker_pool_specs
    assert [pool.replica_count for pool in pools] == [1, 1]
    for pool in pools:
        assert pool.machine_spec.machine_type == "n1-standard-4"
        assert pool.container_spec.image_uri == IMAGE
        # TFX's job client runs the Trainer's own executor in every replica.
        command = list(pool.container_spec.command)
        assert command[:3] == ["python", "-m", "tfx.scripts.run_executor"]
        assert command[command.index("--executor_class_path") + 1] == (
            training_cluster.TRAINER_EXECUTOR)


def test_two_workers_train_in_sync_and_only_the_chief_exports(two_worker_run):
    out_dir, job = two_worker_run
    chief, worker = job.replicas
    assert (chief.name, worker.name) == ("chief-0", "worker-0")
    assert "MultiWorkerMirroredStrategy, 2 replicas in sync" in chief.log()
    assert "worker 0 of 2 training tasks" in worker.log()
    # Exactly one SavedModel, in the Trainer's output, with the serving signatures.
    export_dir = os.path.join(out_dir, "model", "Format-Serving")
    assert saved_models_under(out_dir) == [export_dir]
    import tensorflow as tf
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {trainer_config.SERVING_DEFAULT,
                                      trainer_config.SERVING_RAW_IMAGE,
                                      trainer_config.TRANSFORM_FEATURES}
    # TensorBoard logs only from the chief (the worker's went to a temporary folder, removed).
    run_dir = os.path.join(out_dir, "model_run")
    event_files = [name for _, _, files in os.walk(run_dir) for name in files
                   if name.startswith("events.out.tfevents")]
    # (TensorBoard names each event file after the writing process: ...<host>.<pid>.<n>.v2)
    assert event_files and all(f".{chief.process.pid}." in name for name in event_files), (
        event_files, chief.process.pid)
    # The worker's private export and logs are gone.
    assert not [name for name in os.listdir(os.path.join(out_dir, "tmp"))
                if name.startswith("lvseg-worker")]


def test_two_workers_score_like_one_process(transformed, one_process_run, two_worker_run):
    data_root, _ = transformed
    one = training_cluster.eval_dice(
        os.path.join(one_process_run, "model", "Format-Serving"), data_root)
    two = training_cluster.eval_dice(
        os.path.join(two_worker_run[0], "model", "Format-Serving"), data_root)
    print(f"served Dice on the eval patients: one process {one:.4f}, two workers {two:.4f}")
    assert one > 0.8, "the one-process reference did not converge; the comparison means nothing"
    assert abs(one - two) <= DICE_TOLERANCE, (one, two)


def test_a_worker_that_dies_fails_the_run_with_a_clear_error(transformed, tmp_path):
    _, inputs = transformed
    out_dir = str(tmp_path / "run")
    os.makedirs(out_dir)
    # Far more steps than the test waits for: the run must end because the worker died.
    command = replica_command(inputs, out_dir, steps=100_000)
    chief, worker = training_cluster.start_replicas(
        command, training_cluster.vertex_tf_configs(training_cluster.free_ports(2)), out_dir)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "Epoch 1/" not in chief.log():
            assert chief.process.poll() is None and worker.process.poll() is None, (
                chief.log()[-3000:], worker.log()[-3000:])
            assert time.monotonic() < deadline, "training never started"
            time.sleep(1)
        time.sleep(5)  # a few steps into the first epoch
        worker.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            code = chief.process.wait(FAILURE_DEADLINE_S)
        except Exception:
            pytest.fail(f"the chief still runs {FAILURE_DEADLINE_S} s after its worker died:\n"
                        + chief.log()[-3000:])
        waited = time.monotonic() - killed_at
    finally:
        for replica in (chief, worker):
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()
    log = chief.log()
    print(f"the chief failed {waited:.1f} s after its worker was killed (exit code {code})")
    assert code != 0
    assert "WorkerFailure: multi-worker training stopped on chief 0 of 2 training tasks" in log, (
        log[-4000:])
    assert saved_models_under(out_dir) == []


@pytest.fixture
def training_operator(tmp_path, monkeypatch):
    """The stand-in Training Operator, and a kubeconfig for it as the task's credentials."""
    operator = training_cluster.FakeTrainingOperator(str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", operator.write_kubeconfig(
        str(tmp_path / "kubeconfig"), token="pipeline-runner-token", namespace="team-cardiac"))
    yield operator
    operator.stop()


def test_a_tfjob_trains_a_deep_ensemble_on_two_workers(transformed, tmp_path, training_operator):
    """The compiled kfp Trainer task with --trainer-replicas 2: it creates the TFJob, the two
    pods train (here a two-member ensemble, briefly) and the task returns when the job has
    succeeded. The members average their weights over the last half of the run, so the
    batch-norm refresh runs under MultiWorkerMirroredStrategy too."""
    _, inputs = transformed
    job = tfjob_training.TFJobTraining(image=IMAGE, replicas=2, cpus=2, memory_gb=8,
                                       poll_seconds=1)
    training = {"batch_size": 4, "epochs": 1, "unet_base_filters": 4, "ensemble_size": 2,
                "seed": 7, "average_last": 0.5}
    properties = compiled_trainer_properties(str(tmp_path), KFP, job, steps=4,
                                             training=training)
    out_dir = str(tmp_path / "run")
    training_jobs.Executor().Do(inputs, training_cluster.trainer_outputs(out_dir), properties)

    (name,) = training_operator.jobs
    assert name.startswith("team-cardiac/lvseg-trainer-")
    assert training_operator.requests[0] == (
        "POST", "/apis/kubeflow.org/v1/namespaces/team-cardiac/tfjobs",
        "Bearer pipeline-runner-token")
    specs = training_operator.jobs[name]["spec"]["tfReplicaSpecs"]
    assert {kind: spec["replicas"] for kind, spec in specs.items()} == {"Chief": 1, "Worker": 1}
    for spec in specs.values():
        assert spec["restartPolicy"] == "Never"
        (container,) = spec["template"]["spec"]["containers"]
        assert container["image"] == IMAGE
        assert container["resources"] == {"limits": {"cpu": "2", "memory": "8192Mi"}}
        assert container["command"][:3] == ["python", "-m", "tfx.scripts.run_executor"]
    chief, worker = training_operator.replicas[name]
    assert "ensemble member 2 of 2" in chief.log() and "ensemble member 2 of 2" in worker.log()
    export_dir = os.path.join(out_dir, "model", "Format-Serving")
    assert saved_models_under(out_dir) == [export_dir]
    import tensorflow as tf
    assert trainer_config.SERVING_RAW_IMAGE in tf.saved_model.load(export_dir).signatures


def test_a_tfjob_whose_worker_dies_fails_the_trainer_task(transformed, tmp_path,
                                                          training_operator):
    _, inputs = transformed
    job = tfjob_training.TFJobTraining(image=IMAGE, replicas=2, poll_seconds=1)
    properties = compiled_trainer_properties(str(tmp_path), KFP, job, steps=100_000)
    outcome = {}

    def run_task():
        try:
            training_jobs.Executor().Do(
                inputs, training_cluster.trainer_outputs(str(tmp_path / "run")), properties)
        except Exception as error:  # noqa: BLE001  (the test inspects it)
            outcome["error"] = error

    task = threading.Thread(target=run_task, daemon=True)
    task.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not training_operator.replicas or "Epoch 1/" not in next(
            iter(training_operator.replicas.values()))[0].log():
        assert task.is_alive(), outcome
        assert time.monotonic() < deadline, "training never started"
        time.sleep(1)
    chief, worker = next(iter(training_operator.replicas.values()))
    worker.process.send_signal(signal.SIGKILL)
    task.join(FAILURE_DEADLINE_S)
    assert not task.is_alive(), f"the Trainer task still waits {FAILURE_DEADLINE_S} s later"
    message = str(outcome.get("error"))
    assert isinstance(outcome.get("error"), RuntimeError), outcome
    assert "has failed because 1 Worker replica(s) failed" in message
    assert "kubectl logs -n team-cardiac -l training.kubeflow.org/job-name=" in message
    assert chief.process.wait(30) != 0  # its pod was deleted with the job
