"""Resources of the Kubeflow tasks: CPU, memory, GPUs, node selectors and tolerations.

Set on the compiled spec rather than through TFX's ``with_platform_config``, which TFX 1.16 drops
for ImportExampleGen and which can carry no node selector or toleration. Three groups of tasks:

- ``data``: ImportExampleGen, StatisticsGen, Transform, Evaluator (the Beam stages; with the
  DirectRunner their work runs inside the task's pod);
- ``trainer``: the Trainer (the only task that uses GPUs);
- ``serving_check``: ServingCheck (loads the model and serves it on 127.0.0.1).

CPU and memory go into the container's ``resources`` as limits, as TFX writes them; both
backends read them (open-source Kubeflow Pipelines turns them into the pod's limits and
Kubernetes requests the same; Vertex AI picks a machine that fits). GPUs are an
``accelerator``: on open-source Kubeflow Pipelines its type is the Kubernetes resource name
(``nvidia.com/gpu``), on Vertex AI a GPU model (``NVIDIA_TESLA_T4``). Node selectors and
tolerations exist only on Kubernetes: they go into the Kubernetes platform config
(kfp-kubernetes' ``KubernetesExecutorConfig``, the compiled YAML's second document), which
open-source Kubeflow Pipelines reads (node selectors since 2.0, tolerations since 2.1).
A task given GPUs on Kubernetes also tolerates the usual GPU node taint
(``nvidia.com/gpu``, NoSchedule), without which GPU node pools refuse the pod.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

DATA = "data"
TRAINER = "trainer"
SERVING_CHECK = "serving_check"
TASKS = {DATA: ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"),
         TRAINER: ("Trainer",),
         SERVING_CHECK: ("ServingCheck",)}

KUBERNETES_GPU = "nvidia.com/gpu"  # what the NVIDIA device plugin registers
VERTEX_DEFAULT_GPU = "NVIDIA_TESLA_T4"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclasses.dataclass(frozen=True)
class Toleration:
    key: str
    effect: str
    value: Optional[str] = None  # None: operator Exists (any value)

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """``KEY[=VALUE]:EFFECT``, e.g. ``nvidia.com/gpu:NoSchedule`` or ``pool=gpu:NoSchedule``."""
        target, separator, effect = text.rpartition(":")
        key, _, value = target.partition("=")
        if not separator or not key or effect not in EFFECTS:
            raise ValueError(f"a toleration is KEY[=VALUE]:EFFECT with EFFECT one of {EFFECTS}, "
                             f"got {text!r}")
        return cls(key=key, effect=effect, value=value or None)

    def as_kubernetes(self) -> dict:
        toleration = {"key": self.key, "effect": self.effect,
                      "operator": "Equal" if self.value is not None else "Exists"}
        if self.value is not None:
            toleration["value"] = self.value
        return toleration


GPU_TOLERATION = Toleration(key=KUBERNETES_GPU, effect="NoSchedule")


def parse_node_selector(pairs: Sequence[str]) -> Dict[str, str]:
    selector = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key or not value:
            raise ValueError(f"a node selector is LABEL=VALUE, got {pair!r}")
        selector[key] = value
    return selector


@dataclasses.dataclass
class TaskResources:
    """What one group of tasks gets; None or empty leaves the cluster's default."""

    cpus: Optional[float] = None
    memory_gb: Optional[float] = None
    gpus: int = 0
    gpu_type: Optional[str] = None  # default: the target's (nvidia.com/gpu or NVIDIA_TESLA_T4)
    node_selector: Dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: List[Toleration] = dataclasses.field(default_factory=list)

    def validate(self, group: str) -> None:
        for name, value in (("cpus", self.cpus), ("memory_gb", self.memory_gb),
                            ("gpus", self.gpus)):
            if value is not None and value < 0:
                raise ValueError(f"{group} {name} must not be negative, got {value}")
        if self.gpus and group != TRAINER:
            raise ValueError(f"only the trainer uses GPUs, not the {group} tasks")

    def container_resources(self, kubernetes: bool) -> Optional[dict]:
        """The container's ``resources`` in the PipelineSpec, None if nothing is set."""
        resources = {}
        if self.cpus:
            resources["cpuLimit"] = float(self.cpus)
        if self.memory_gb:
            resources["memoryLimit"] = float(self.memory_gb)
        if self.gpus:
            default_type = KUBERNETES_GPU if kubernetes else VERTEX_DEFAULT_GPU
            resources["accelerator"] = {"type": self.gpu_type or default_type,
                                        "count": str(self.gpus)}
        return resources or None

    def kubernetes_tolerations(self) -> List[Toleration]:
        """The tolerations given, and the GPU node taint's when the tasks use GPUs."""
        tolerations = list(self.tolerations)
        if self.gpus and GPU_TOLERATION not in tolerations:
            tolerations.append(GPU_TOLERATION)
        return tolerations

    def kubernetes_config(self) -> Optional[dict]:
        """kfp-kubernetes' KubernetesExecutorConfig (JSON names), None if nothing is set."""
        config = {}
        if self.node_selector:
            config["nodeSelector"] = {"labels": dict(sorted(self.node_selector.items()))}
        tolerations = self.kubernetes_tolerations()
        if tolerations:
            config["tolerations"] = [t.as_kubernetes() for t in tolerations]
        return config or None


def apply(spec: dict, groups: Dict[str, TaskResources], kubernetes: bool) -> Optional[dict]:
    """Sets each group's resources on its tasks' containers in ``spec`` (a PipelineSpec dict).

    Returns the Kubernetes platform config for the compiled YAML's second document (None when
    no task needs one). ``kubernetes`` False (Vertex AI) refuses node selectors and tolerations.
    """
    executors = spec["deploymentSpec"]["executors"]
    platform_executors = {}
    for group, resources in groups.items():
        resources.validate(group)
        if not kubernetes and (resources.node_selector or resources.tolerations):
            raise ValueError(f"node selectors and tolerations ({group}) exist only on Kubernetes "
                             "(target kfp); Vertex AI picks machines from the resources")
        for task_name in TASKS[group]:
            task = spec["root"]["dag"]["tasks"].get(task_name)
            if task is None:
                continue
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            container = executors[label]["container"]
            container_resources = resources.container_resources(kubernetes)
            if container_resources:
                container["resources"] = container_resources
            else:
                container.pop("resources", None)
            config = resources.kubernetes_config() if kubernetes else None
            if config:
                platform_executors[label] = config
    if not platform_executors:
        return None
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": platform_executors}}}}
