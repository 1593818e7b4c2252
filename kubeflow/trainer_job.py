"""Where the Trainer trains on Kubeflow: inside its own task, or as a job on several machines.

``--trainer-replicas N`` (N > 1) makes the Trainer task start a training job and wait for it
(``components.training_jobs``); every replica trains with ``MultiWorkerMirroredStrategy``:

- ``kfp``: a TFJob of the Kubeflow Training Operator (``components.tfjob_training``) in the
  task's namespace (or ``--trainer-namespace``): N pods, each with the trainer's resources
  (``--trainer-cpus``, ``--trainer-memory-gb``, ``--trainer-gpus``, node selectors and
  tolerations).
- ``vertex``: a Vertex AI custom job through TFX's Vertex AI training extension
  (``components.vertex_training``): N machines of ``--trainer-machine-type``, each with
  ``--trainer-gpus`` GPUs of ``--gpu-type``, in ``--project`` and ``--region``.
  ``--trainer-machine-type`` alone (one replica) trains on one bigger machine the same way.

The task itself then only waits, so its container gets no resources of its own.
"""
import dataclasses
from typing import Dict, Optional, Tuple

from components.tfjob_training import TFJobTraining
from components.training_jobs import TrainingJob
from components.vertex_training import DEFAULT_MACHINE_TYPE, VertexTrainingJob
from kubeflow import resources
from kubeflow.config import KFP, VERTEX

BACKENDS = {KFP: TFJobTraining.BACKEND, VERTEX: VertexTrainingJob.BACKEND}


def plan(target: str, image: str, replicas: int, machine_type: Optional[str],
         task_resources: Dict[str, resources.TaskResources], project: Optional[str] = None,
         region: Optional[str] = None, namespace: Optional[str] = None
         ) -> Tuple[Optional[TrainingJob], Dict[str, resources.TaskResources]]:
    """The training job (None: train in the Trainer's task) and the tasks' resources, the
    Trainer's moved from its task onto the job's replicas."""
    if replicas < 1:
        raise ValueError(f"--trainer-replicas must be at least 1, got {replicas}")
    trainer = task_resources.get(resources.TRAINER, resources.TaskResources())
    if target == KFP:
        if machine_type:
            raise ValueError("--trainer-machine-type is Vertex AI's; on Kubernetes give "
                             "--trainer-cpus, --trainer-memory-gb and node selectors")
        if replicas == 1:
            if namespace:
                raise ValueError("--trainer-namespace is where a TFJob runs: it needs "
                                 "--trainer-replicas 2 or more")
            return None, task_resources
        trainer.validate(resources.TRAINER)
        job = TFJobTraining(
            image=image, replicas=replicas, namespace=namespace, cpus=trainer.cpus,
            memory_gb=trainer.memory_gb, gpus=trainer.gpus,
            gpu_resource=trainer.gpu_type or resources.KUBERNETES_GPU,
            node_selector=dict(trainer.node_selector),
            tolerations=[t.as_kubernetes() for t in trainer.kubernetes_tolerations()])
        return job, dict(task_resources, **{resources.TRAINER: resources.TaskResources()})

    if namespace:
        raise ValueError("--trainer-namespace is for a TFJob (--target kfp)")
    if replicas == 1 and not machine_type:
        return None, task_resources
    missing = [flag for flag, value in (("--project", project), ("--region", region))
               if not value]
    if missing:
        raise ValueError(f"a Vertex AI training job (--trainer-replicas {replicas}) needs "
                         f"{' and '.join(missing)}: the project and region it runs in")
    if trainer.cpus or trainer.memory_gb:
        raise ValueError("a Vertex AI training job's machines are --trainer-machine-type "
                         f"(default {DEFAULT_MACHINE_TYPE}), not --trainer-cpus or "
                         "--trainer-memory-gb")
    job = VertexTrainingJob(
        project=project, region=region, image=image, replicas=replicas,
        machine_type=machine_type or DEFAULT_MACHINE_TYPE,
        accelerator_type=trainer.gpu_type, accelerator_count=trainer.gpus)
    job.check()
    waiting_task = dataclasses.replace(trainer, gpus=0, gpu_type=None)
    return job, dict(task_resources, **{resources.TRAINER: waiting_task})
