"""Where this process stands in a training cluster, read from ``TF_CONFIG``. No TensorFlow here.

Vertex AI custom jobs and the Kubeflow Training Operator's TFJob start one process per replica
and give each the cluster and its own task in ``TF_CONFIG`` (JSON), as TensorFlow's
``TFConfigClusterResolver`` reads it::

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"]},
     "task": {"type": "worker", "index": 1}}

Vertex AI names its first worker pool ``chief`` and the second ``worker``; a TFJob names them
after its replica types (``Chief``, ``Worker``, lower-cased). Both add keys TensorFlow ignores
(``environment``, ``job``). The Trainer trains with ``MultiWorkerMirroredStrategy`` when the
cluster holds more than one training task (docs/training.md, "More than one machine").
"""
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Mapping, Optional

TF_CONFIG_ENV = "TF_CONFIG"
CHIEF = "chief"
MASTER = "master"  # the chief's name in older TF_CONFIGs
WORKER = "worker"
TRAINING_TASK_TYPES = (CHIEF, MASTER, WORKER)
# Task types of parameter-server training and side-car evaluation, which this Trainer does not run.
UNSUPPORTED_TASK_TYPES = ("ps", "evaluator")


@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """This process's task: ``task_type`` None when there is no cluster (one process)."""

    task_type: Optional[str] = None
    task_index: int = 0
    num_workers: int = 1  # training tasks in the cluster: chief and workers
    has_chief: bool = False  # the cluster names a chief (or master); else worker 0 is the chief

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule (``multi_worker_util.is_chief``): the chief task, or worker 0 in a
        cluster without one. Only the chief writes the model and the training logs."""
        if self.task_type is None:
            return True
        if self.task_type in (CHIEF, MASTER):
            return self.task_index == 0
        return not self.has_chief and self.task_index == 0

    def describe(self) -> str:
        if self.task_type is None:
            return "one process"
        return (f"{self.task_type} {self.task_index} of {self.num_workers} training tasks"
                f"{' (the chief)' if self.is_chief else ''}")


def from_environment(environ: Optional[Mapping[str, str]] = None) -> ClusterRole:
    """The role ``TF_CONFIG`` gives this process; one process when it is unset or names no
    cluster. Raises ValueError for a ``TF_CONFIG`` this Trainer cannot train with."""
    text = (os.environ if environ is None else environ).get(TF_CONFIG_ENV, "")
    if not text.strip():
        return ClusterRole()
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG_ENV} is not JSON ({error}): {text[:200]!r}") from None
    if not isinstance(tf_config, dict):
        raise ValueError(f"{TF_CONFIG_ENV} must be a JSON object, got {text[:200]!r}")
    cluster = tf_config.get("cluster") or {}
    if not cluster:
        return ClusterRole()
    unsupported = sorted(set(cluster) & set(UNSUPPORTED_TASK_TYPES))
    if unsupported:
        raise ValueError(
            f"{TF_CONFIG_ENV} names {unsupported} tasks: this Trainer trains with "
            "MultiWorkerMirroredStrategy (a chief and workers, all training), not with parameter "
            "servers or a side-car evaluator; give the job only chief and worker replicas")
    unknown = sorted(set(cluster) - set(TRAINING_TASK_TYPES))
    if unknown:
        raise ValueError(f"{TF_CONFIG_ENV} names unknown task types {unknown}; "
                         f"known: {list(TRAINING_TASK_TYPES)}")
    task = tf_config.get("task") or {}
    task_type = task.get("type")
    if task_type not in cluster:
        raise ValueError(f"{TF_CONFIG_ENV}'s task type {task_type!r} is not one of the cluster's "
                         f"{sorted(cluster)}")
    task_index = int(task.get("index", 0))
    if not 0 <= task_index < len(cluster[task_type]):
        raise ValueError(f"{TF_CONFIG_ENV}'s task index {task_index} is outside the "
                         f"{len(cluster[task_type])} {task_type} task(s)")
    return ClusterRole(task_type=task_type, task_index=task_index,
                       num_workers=sum(len(cluster[name]) for name in cluster),
                       has_chief=CHIEF in cluster or MASTER in cluster)


def private_dir(role: ClusterRole, path: str) -> str:
    """``path`` for the chief; for any other task a fresh local folder of the same base name.

    Every task of a multi-worker job must save the model (the save runs collective operations)
    and runs the TensorBoard callback, but only the chief's output may land in the artifacts;
    the others write to a temporary folder, as TensorFlow's multi-worker guide does, which
    :func:`remove_private_dir` deletes afterwards.
    """
    if role.is_chief:
        return path
    folder = tempfile.mkdtemp(prefix=f"lvseg-{role.task_type}-{role.task_index}-")
    return os.path.join(folder, os.path.basename(path.rstrip("/")) or "output")


def remove_private_dir(role: ClusterRole, path: str) -> None:
    """Deletes what :func:`private_dir` gave a non-chief task; does nothing on the chief."""
    if not role.is_chief:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
