"""The Trainer as a TFJob of the Kubeflow Training Operator, on open-source Kubeflow clusters.

The same pattern as TFX's Vertex AI training extension, for Kubernetes: the pipeline's Trainer
task builds the command TFX runs in every replica (``python -m tfx.scripts.run_executor`` with
the Trainer's GenericExecutor and this task's inputs, outputs and properties:
``training_clients.AbstractJobClient.generate_container_command``), creates a ``TFJob``
(``kubeflow.org/v1``) with a ``Chief`` and ``replicas - 1`` ``Worker`` replicas running it, and
waits until the job's conditions say ``Succeeded`` or ``Failed``. The Training Operator gives
each pod ``TF_CONFIG`` (replica types lower-cased: ``chief``, ``worker``), and
``trainer.model.run_fn`` trains with ``MultiWorkerMirroredStrategy`` (``trainer.cluster``).

What the Training Operator requires and does, from its source (kubeflow/training-operator v1.9,
``pkg/apis/kubeflow.org/v1/tensorflow_types.go``, ``pkg/controller.v1/tensorflow/``): the
container is named ``tensorflow`` (it gets ``TF_CONFIG`` and port 2222); with a Chief the job
succeeds when the chief does, and fails as soon as any replica fails. Replicas never restart
(``restartPolicy: Never``): ``MultiWorkerMirroredStrategy`` cannot take a restarted worker back
mid-run, so a failed replica fails the job, the task and the pipeline run at once.

The task talks to the Kubernetes API as its pod's service account (in cluster), or through the
kubeconfig ``KUBECONFIG`` names. That account needs ``create`` and ``get`` on
``tfjobs.kubeflow.org`` in the namespace (docs/kubeflow.md, "Training on several machines").
"""
import dataclasses
import json
import os
import time
import uuid
from typing import Any, Dict, List, Optional

from absl import logging

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
CONTAINER_NAME = "tensorflow"  # the Training Operator's TFJobDefaultContainerName
TRAINER_EXECUTOR = "tfx.components.trainer.executor.GenericExecutor"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
FINAL_CONDITIONS = ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class TFJobTraining:
    """A TFJob of ``replicas`` pods alike, the first the chief, each running ``image``."""

    image: str
    replicas: int = 2
    namespace: Optional[str] = None  # None: the namespace of the pod that creates the job
    cpus: Optional[float] = None  # per replica, as limits (Kubernetes requests the same)
    memory_gb: Optional[float] = None
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: Dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    service_account: Optional[str] = None  # None: the namespace's default
    poll_seconds: float = 30.0

    BACKEND = "tfjob"

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"a TFJob needs at least 1 replica, got {self.replicas}")

    def describe(self) -> str:
        resources = ", ".join(part for part in (
            f"{self.cpus:g} CPUs" if self.cpus else "",
            f"{self.memory_gb:g} GB" if self.memory_gb else "",
            f"{self.gpus} x {self.gpu_resource}" if self.gpus else "") if part)
        return (f"a TFJob of {self.replicas} pods (1 Chief, {self.replicas - 1} Worker)"
                + (f", each {resources}" if resources else ""))

    def pod_spec(self, command: List[str]) -> Dict[str, Any]:
        limits = {}
        if self.cpus:
            limits["cpu"] = f"{self.cpus:g}"
        if self.memory_gb:
            limits["memory"] = f"{int(self.memory_gb * 1024)}Mi"
        if self.gpus:
            limits[self.gpu_resource] = str(self.gpus)
        container = {"name": CONTAINER_NAME, "image": self.image, "command": list(command)}
        if limits:
            container["resources"] = {"limits": limits}
        spec: Dict[str, Any] = {"containers": [container]}
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return spec

    def manifest(self, name: str, namespace: str, command: List[str]) -> Dict[str, Any]:
        """The TFJob: a Chief and ``replicas - 1`` Workers, all running ``command``."""
        replica_specs = {}
        for replica_type, count in (("Chief", 1), ("Worker", self.replicas - 1)):
            if count:
                replica_specs[replica_type] = {
                    "replicas": count, "restartPolicy": "Never",
                    "template": {"metadata": {"labels": {"app.kubernetes.io/name": "lvseg"}},
                                 "spec": self.pod_spec(command)}}
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/name": "lvseg",
                                        "app.kubernetes.io/component": "trainer"}},
                "spec": {"runPolicy": {"backoffLimit": 0}, "tfReplicaSpecs": replica_specs}}

    def run(self, input_dict, output_dict, exec_properties, context=None) -> None:
        """Creates the TFJob for this Trainer task and waits for it; raises RuntimeError if it
        fails."""
        from tfx.extensions.google_cloud_ai_platform import training_clients

        command = training_clients.AbstractJobClient.generate_container_command(
            None, input_dict, output_dict, exec_properties, TRAINER_EXECUTOR)
        namespace = self.namespace or _own_namespace()
        name = f"lvseg-trainer-{uuid.uuid4().hex[:8]}"
        api = _custom_objects_api()
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                            self.manifest(name, namespace, command))
        logging.info("Created TFJob %s/%s: %s", namespace, name, self.describe())
        print(f"training as TFJob {namespace}/{name} ({self.describe()}); "
              f"logs: kubectl logs -n {namespace} -l training.kubeflow.org/job-name={name}",
              flush=True)
        wait_for(api, namespace, name, self.poll_seconds)


def wait_for(api, namespace: str, name: str, poll_seconds: float) -> None:
    last = None
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        conditions = [c for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"]
        current = conditions[-1] if conditions else None
        if current and current is not last and current.get("type") != (last or {}).get("type"):
            print(f"TFJob {namespace}/{name}: {current.get('type')} "
                  f"({current.get('message', '')})", flush=True)
        last = current or last
        final = [c for c in conditions if c.get("type") in FINAL_CONDITIONS]
        if final:
            if final[-1]["type"] == "Succeeded":
                return
            raise RuntimeError(
                f"TFJob {namespace}/{name} failed: {final[-1].get('message', '')} The failed "
                f"replica's log says why: kubectl logs -n {namespace} "
                f"-l training.kubeflow.org/job-name={name}")
        time.sleep(poll_seconds)


def _own_namespace() -> str:
    """The kubeconfig's current namespace with ``KUBECONFIG``, else the pod's."""
    if os.environ.get("KUBECONFIG"):
        from kubernetes import config

        _, context = config.list_kube_config_contexts(config_file=os.environ["KUBECONFIG"])
        namespace = (context or {}).get("context", {}).get("namespace")
        if namespace:
            return namespace
    try:
        with open(NAMESPACE_FILE) as f:
            return f.read().strip()
    except OSError:
        raise ValueError("no namespace for the TFJob: not in a pod, and none given "
                         "(compile with --trainer-namespace)") from None


def _custom_objects_api():
    from kubernetes import client, config

    if os.environ.get("KUBECONFIG"):
        config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    else:
        config.load_incluster_config()
    return client.CustomObjectsApi()


def from_json(text: str) -> TFJobTraining:
    return TFJobTraining(**json.loads(text))
