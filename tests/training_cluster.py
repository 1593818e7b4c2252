"""A training cluster on 127.0.0.1: the Trainer's replicas as local processes, started the way
Vertex AI custom training and the Kubeflow Training Operator start them.

Each replica runs the command TFX's Vertex AI training extension gives every worker pool
(``training_clients.AbstractJobClient.generate_container_command``:
``python -m tfx.scripts.run_executor --executor_class_path ... --inputs ... --outputs ...
--exec-properties ...``) with ``TF_CONFIG`` set as those launchers set it:

- Vertex AI: worker pool 0 is ``chief``, pool 1 ``worker``; ``TF_CONFIG`` also carries
  ``"environment": "cloud"`` and ``"job"`` (cloud.google.com/vertex-ai/docs/training/
  distributed-training, "TF_CONFIG");
- the Training Operator: replica types lower-cased (``Chief`` -> ``chief``), ``"environment":
  "cloud"`` (kubeflow/training-operator ``pkg/controller.v1/tensorflow/tensorflow.go``,
  ``genTFConfigJSONStr``).

Only the addresses differ: 127.0.0.1 and free ports instead of the replicas' host names.
"""
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

from tfx import v1 as tfx
from tfx.orchestration import metadata
from tfx.types import artifact_utils, standard_artifacts

from pipeline import configs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_EXECUTOR = "tfx.components.trainer.executor.GenericExecutor"


def free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def transform_outputs(data_root: str, work_dir: str) -> Dict[str, list]:
    """Runs ImportExampleGen -> ImportSchemaGen -> Transform (the pipeline's own settings) with
    TFX's LocalDagRunner on ``data_root`` and returns the Trainer's input artifacts from ML
    Metadata: ``examples`` (transformed), ``transform_graph`` and ``schema``."""
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root, input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=name, pattern=pattern)
            for name, pattern in configs.SPLIT_PATTERNS.items()]))
    schema_gen = tfx.components.ImportSchemaGen(schema_file=configs.CURATED_SCHEMA_PATH)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=configs.PREPROCESSING_FN)
    metadata_path = os.path.join(work_dir, "metadata.sqlite")
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="transform-only", pipeline_root=os.path.join(work_dir, "root"),
        components=[example_gen, schema_gen, transform], enable_cache=False,
        metadata_connection_config=connection))

    with metadata.Metadata(connection) as store:
        types = {artifact_type.id: artifact_type
                 for artifact_type in store.store.get_artifact_types()}

        def find(type_name: str, producer: str):
            found = [artifact for artifact in store.store.get_artifacts_by_type(type_name)
                     if f"/{producer}/" in artifact.uri]
            assert len(found) == 1, (type_name, producer, [a.uri for a in found])
            return [artifact_utils.deserialize_artifact(types[found[0].type_id], found[0])]

        return {"examples": find(standard_artifacts.Examples.TYPE_NAME, "Transform"),
                "transform_graph": find(standard_artifacts.TransformGraph.TYPE_NAME,
                                        "Transform"),
                "schema": find(standard_artifacts.Schema.TYPE_NAME, "ImportSchemaGen")}


def trainer_outputs(folder: str) -> Dict[str, list]:
    model = standard_artifacts.Model()
    model.uri = os.path.join(folder, "model")
    model_run = standard_artifacts.ModelRun()
    model_run.uri = os.path.join(folder, "model_run")
    return {"model": [model], "model_run": [model_run]}


def trainer_exec_properties(train_steps: int, training_config: dict) -> dict:
    """The Trainer's execution properties as its executor receives them (JSON strings)."""
    from tfx.utils import proto_utils
    return {"run_fn": configs.RUN_FN,
            "train_args": proto_utils.proto_to_json(tfx.proto.TrainArgs(num_steps=train_steps)),
            "eval_args": proto_utils.proto_to_json(tfx.proto.EvalArgs()),
            "custom_config": json.dumps(training_config)}


def vertex_tf_configs(ports: Sequence[int]) -> List[dict]:
    """``TF_CONFIG`` of each replica of a Vertex AI custom job with pools [chief x1,
    worker x (n - 1)], in that order."""
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"]}
    if len(ports) > 1:
        cluster["worker"] = [f"127.0.0.1:{port}" for port in ports[1:]]
    tasks = [("chief", 0)] + [("worker", index) for index in range(len(ports) - 1)]
    return [{"cluster": cluster, "task": {"type": kind, "index": index},
             "environment": "cloud", "job": {"worker_pool_specs": "..."}}
            for kind, index in tasks]


class Replica:
    def __init__(self, name: str, process: subprocess.Popen, log_path: str):
        self.name, self.process, self.log_path = name, process, log_path

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def start_replicas(command: Sequence[str], tf_configs: Sequence[Optional[dict]], log_dir: str,
                   extra_env: Optional[dict] = None) -> List[Replica]:
    """Starts ``command`` once per ``TF_CONFIG`` (None: unset), from the repository root with
    the test interpreter standing in for the image's ``python``."""
    command = list(command)
    if command[0] == "python":
        command[0] = sys.executable
    replicas = []
    for number, tf_config in enumerate(tf_configs):
        env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1",
                   TF_CPP_MIN_LOG_LEVEL="1", CUDA_VISIBLE_DEVICES="", **(extra_env or {}))
        env.pop("TF_CONFIG", None)
        name = (f"{tf_config['task']['type']}-{tf_config['task']['index']}" if tf_config
                else f"single-{number}")
        if tf_config:
            env["TF_CONFIG"] = json.dumps(tf_config)
        log_path = os.path.join(log_dir, f"{name}.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        replicas.append(Replica(name, process, log_path))
    return replicas


def wait_all(replicas: Sequence[Replica], timeout_s: float) -> Dict[str, int]:
    """Exit code of each replica; kills them all and fails if one is still running at the end."""
    deadline = time.monotonic() + timeout_s
    codes = {}
    try:
        for replica in replicas:
            codes[replica.name] = replica.process.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"replicas still running after {timeout_s:.0f} s; logs:\n" +
            "\n".join(f"--- {r.name}\n{r.log()[-3000:]}" for r in replicas)) from None
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()
    return codes


def eval_dice(saved_model_dir: str, data_root: str) -> float:
    """Mean Dice of the exported model's served masks (``serving_raw_image``) over the eval
    split's slices, by the project's one Dice definition (``trainer.dice``)."""
    import numpy as np
    import tensorflow as tf

    from dataset import records
    from trainer import config as trainer_config
    from trainer import dice

    slices = [item for path in records.list_record_files(os.path.join(data_root, "eval"))
              for item in records.iter_lab_records(path)]
    predict = tf.saved_model.load(saved_model_dir).signatures[trainer_config.SERVING_RAW_IMAGE]
    masks = predict(image=tf.constant(np.stack([s.image for s in slices])))[
        trainer_config.MASK_OUTPUT]
    labels = np.stack([s.mask for s in slices])
    return float(np.mean(dice.dice_per_image(labels, masks).numpy()))


# Vertex AI's TF_CONFIG task type of each worker pool, in order (cloud.google.com/vertex-ai/docs/
# training/distributed-training: pool 0 chief, 1 worker, 2 parameter servers, 3 evaluator).
VERTEX_POOL_TASK_TYPES = ("chief", "worker", "ps", "evaluator")


class CreatedJob(NamedTuple):
    endpoint: str
    parent: str
    custom_job: object  # google.cloud.aiplatform_v1 CustomJob
    replicas: List[Replica]


class FakeVertexJobService:
    """Stands in for Vertex AI's ``JobServiceClient`` (``google.cloud.aiplatform.gapic``), the
    one object TFX's Vertex AI training client talks to (``training_clients.VertexJobClient``:
    ``create_custom_job``, then ``get_custom_job`` until the state is final).

    ``create_custom_job`` reads the request into Vertex AI's own ``CustomJob`` message (unknown
    fields or accelerator types are refused, as the service refuses them) and starts every
    replica of every worker pool as a local process running the pool's container command, with
    ``TF_CONFIG`` as Vertex AI sets it and 127.0.0.1 addresses; ``get_custom_job`` reports
    RUNNING, then SUCCEEDED or FAILED from their exit codes. ``jobs`` keeps what was asked.
    """

    log_dir = ""
    extra_env: Optional[dict] = None
    jobs: Dict[str, "CreatedJob"] = {}  # by job name

    def __init__(self, client_options=None, **_):
        self.endpoint = (client_options or {}).get("api_endpoint")

    @classmethod
    def reset(cls, log_dir: str, extra_env: Optional[dict] = None) -> None:
        cls.log_dir, cls.extra_env, cls.jobs = log_dir, extra_env, {}

    def create_custom_job(self, parent, custom_job):
        from google.cloud.aiplatform_v1.types.custom_job import CustomJob

        job = CustomJob(custom_job)
        pools = list(job.job_spec.worker_pool_specs)
        addresses = {VERTEX_POOL_TASK_TYPES[number]: [f"127.0.0.1:{port}"
                                                      for port in free_ports(pool.replica_count)]
                     for number, pool in enumerate(pools)}
        replicas = []
        for number, pool in enumerate(pools):
            task_type = VERTEX_POOL_TASK_TYPES[number]
            command = list(pool.container_spec.command) + list(pool.container_spec.args)
            tf_configs = [{"cluster": addresses, "task": {"type": task_type, "index": index},
                           "environment": "cloud", "job": custom_job.get("job_spec", {})}
                          for index in range(pool.replica_count)]
            replicas += start_replicas(command, tf_configs, self.log_dir, self.extra_env)
        name = f"{parent}/customJobs/{len(self.jobs) + 1}"
        self.jobs[name] = CreatedJob(self.endpoint, parent, job, replicas)
        return CustomJob(name=name, display_name=job.display_name)

    def get_custom_job(self, name, retry=None):
        from google.cloud.aiplatform_v1.types.custom_job import CustomJob
        from google.cloud.aiplatform_v1.types.job_state import JobState

        replicas = self.jobs[name].replicas
        codes = [replica.process.poll() for replica in replicas]
        if any(code not in (None, 0) for code in codes):
            for replica in replicas:  # Vertex AI ends the job when a replica fails
                if replica.process.poll() is None:
                    replica.process.kill()
            state = JobState.JOB_STATE_FAILED
        elif None in codes:
            state = JobState.JOB_STATE_RUNNING
        else:
            state = JobState.JOB_STATE_SUCCEEDED
        return CustomJob(name=name, state=state)


class FakeTrainingOperator:
    """A Kubernetes API server on 127.0.0.1 serving TFJobs the way the Kubeflow Training Operator
    runs them (kubeflow/training-operator v1.9), for the Kubernetes client of
    ``components.tfjob_training``:

    - ``POST /apis/kubeflow.org/v1/namespaces/{ns}/tfjobs`` checks what the operator's admission
      webhook checks (``pkg/webhooks/tensorflow/tfjob_webhook.go``: a DNS-1035 name, at most one
      Chief or Master, every replica type with an image and a container named ``tensorflow``;
      otherwise 422) and starts each replica's ``tensorflow`` container command as a local
      process with ``TF_CONFIG`` as ``genTFConfigJSONStr`` writes it (``pkg/controller.v1/
      tensorflow/tensorflow.go``: replica types lower-cased, ``"environment": "cloud"``);
    - ``GET .../tfjobs/{name}`` returns the job with the conditions ``UpdateJobStatus`` sets
      (``tfjob_controller.go``): Running; Failed as soon as a replica fails ("has failed because
      N Worker replica(s) failed."); Succeeded when the Chief has. A finished job's running pods
      are deleted (the default clean-pod policy, Running).

    ``requests`` records (method, path, Authorization header).
    """

    DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

    def __init__(self, log_dir: str, extra_env: Optional[dict] = None):
        self.log_dir, self.extra_env = log_dir, extra_env
        self.jobs: Dict[str, dict] = {}
        self.replicas: Dict[str, List[Replica]] = {}
        self.requests: List[tuple] = []
        operator = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                operator.requests.append(("POST", self.path, self.headers.get("Authorization")))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._reply(*operator.create(self.path, body))

            def do_GET(self):
                operator.requests.append(("GET", self.path, self.headers.get("Authorization")))
                self._reply(*operator.get(self.path))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write_kubeconfig(self, path: str, token: str, namespace: str) -> str:
        import yaml
        with open(path, "w") as f:
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "runner", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "runner",
                                                           "namespace": namespace}}]}, f)
        return path

    @staticmethod
    def _status(code: int, message: str):
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "message": message, "code": code}

    def create(self, path: str, job: dict):
        parts = path.strip("/").split("/")
        if parts[:3] != ["apis", "kubeflow.org", "v1"] or parts[-1] != "tfjobs":
            return self._status(404, f"no such resource {path}")
        namespace, name = parts[4], job.get("metadata", {}).get("name", "")
        errors = []
        if not self.DNS_1035.match(name) or len(name) > 63:
            errors.append(f"metadata.name: Invalid value: {name!r}")
        specs = job.get("spec", {}).get("tfReplicaSpecs") or {}
        if not specs:
            errors.append("spec.tfReplicaSpecs: Required value: must be required")
        if sum(kind in ("Chief", "Master") for kind in specs) > 1:
            errors.append("spec.tfReplicaSpecs: Forbidden: must not have more than 1 Chief or "
                          "Master role")
        for kind, spec in specs.items():
            containers = spec.get("template", {}).get("spec", {}).get("containers") or []
            if not any(c.get("name") == "tensorflow" for c in containers):
                errors.append(f"spec.tfReplicaSpecs[{kind}].template.spec.containers: Required "
                              "value: must have at least one container with name tensorflow")
            if any(not c.get("image") for c in containers):
                errors.append(f"spec.tfReplicaSpecs[{kind}]: image must be required")
        if errors:
            return self._status(422, f"admission webhook denied the request: {errors}")
        key = f"{namespace}/{name}"
        cluster = {kind.lower(): [f"127.0.0.1:{port}"
                                  for port in free_ports(int(spec.get("replicas", 1)))]
                   for kind, spec in specs.items()}
        replicas = []
        for kind, spec in specs.items():
            container = next(c for c in spec["template"]["spec"]["containers"]
                             if c["name"] == "tensorflow")
            command = list(container.get("command", [])) + list(container.get("args", []))
            tf_configs = [{"cluster": cluster, "task": {"type": kind.lower(), "index": index},
                           "environment": "cloud"}
                          for index in range(int(spec.get("replicas", 1)))]
            replicas += start_replicas(command, tf_configs, self.log_dir, self.extra_env)
        self.jobs[key], self.replicas[key] = job, replicas
        return 201, job

    def get(self, path: str):
        parts = path.strip("/").split("/")
        key = f"{parts[4]}/{parts[-1]}" if len(parts) == 7 else ""
        if key not in self.jobs:
            return self._status(404, f"tfjobs.kubeflow.org {parts[-1]!r} not found")
        replicas = self.replicas[key]
        conditions = [{"type": "Created", "status": "True",
                       "message": f"TFJob {key} is created."}]
        failed = [r for r in replicas if r.process.poll() not in (None, 0)]
        chief = [r for r in replicas if r.name.startswith(("chief-", "master-"))]
        if any(r.process.poll() is None for r in replicas):
            conditions.append({"type": "Running", "status": "True",
                               "message": f"TFJob {key} is running."})
        if failed:
            kind = failed[0].name.split("-")[0].capitalize()
            conditions.append({"type": "Failed", "status": "True",
                               "message": f"TFJob {key} has failed because {len(failed)} "
                                          f"{kind} replica(s) failed."})
        elif chief and all(r.process.poll() == 0 for r in chief):
            conditions.append({"type": "Succeeded", "status": "True",
                               "message": f"TFJob {key} successfully completed."})
        if conditions[-1]["type"] in ("Failed", "Succeeded"):
            for replica in replicas:  # clean-pod policy Running: the finished job's pods go
                if replica.process.poll() is None:
                    replica.process.kill()
        return 200, dict(self.jobs[key], status={"conditions": conditions})

    def stop(self) -> None:
        self.server.shutdown()
        for replicas in self.replicas.values():
            for replica in replicas:
                if replica.process.poll() is None:
                    replica.process.kill()
                    replica.process.wait()
