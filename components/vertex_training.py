"""The Trainer as a Vertex AI custom job with several replicas, through TFX's own extension.

:meth:`VertexTrainingJob.run` (called by ``components.training_jobs.Executor``) runs TFX's
Vertex AI training executor
(``tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor``), given the job
the way that executor reads it, in ``custom_config``:

- ``ai_platform_training_args``: ``{"project": ..., "job_spec": {"worker_pool_specs": [...]}}``,
  a CustomJob whose pool 0 is the chief (one replica) and pool 1 the other workers;
- ``ai_platform_enable_vertex``: true, ``ai_platform_vertex_region``: the region.

TFX's job client then sets every pool's container command to ``python -m
tfx.scripts.run_executor`` with the Trainer's GenericExecutor and this task's inputs, outputs and
properties, creates the job and waits for it. Vertex AI gives each replica ``TF_CONFIG`` (pool 0
``chief``, pool 1 ``worker``), and ``trainer.model.run_fn`` trains with
``MultiWorkerMirroredStrategy`` (``trainer.cluster``). The pipeline task itself only waits: it
needs no GPU.

"""
import dataclasses
from typing import Any, Dict, List, Optional

from tfx.extensions.google_cloud_ai_platform import constants as vertex_constants
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_executor
from tfx.types import standard_component_specs
from tfx.utils import json_utils

DEFAULT_MACHINE_TYPE = "n1-standard-8"
DEFAULT_ACCELERATOR = "NVIDIA_TESLA_T4"


@dataclasses.dataclass(frozen=True)
class VertexTrainingJob:
    """The Vertex AI custom job that runs the Trainer: ``replicas`` machines alike, the first
    the chief. Every replica runs ``image`` (the pipeline's)."""

    project: str
    region: str
    image: str
    replicas: int = 1
    machine_type: str = DEFAULT_MACHINE_TYPE
    accelerator_type: Optional[str] = None  # a Vertex AI GPU model, e.g. NVIDIA_TESLA_T4
    accelerator_count: int = 0  # per replica

    BACKEND = "vertex"

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"a training job needs at least 1 replica, got {self.replicas}")
        if not self.project or not self.region:
            raise ValueError("a Vertex AI training job needs a project and a region")
        if self.accelerator_count < 0:
            raise ValueError(f"accelerator count must not be negative, got "
                             f"{self.accelerator_count}")

    def check(self) -> None:
        """Reads the job into Vertex AI's own ``CustomJob`` message, which refuses what the
        service would (an unknown accelerator type, say), so a bad job fails at compile time."""
        from google.cloud.aiplatform_v1.types.custom_job import CustomJob

        try:
            CustomJob(job_spec={"worker_pool_specs": self.worker_pool_specs()})
        except KeyError as error:  # an enum value Vertex AI does not have
            raise ValueError(f"Vertex AI has no accelerator type {error}; e.g. "
                             f"{DEFAULT_ACCELERATOR}, NVIDIA_L4, NVIDIA_TESLA_A100") from None
        except ValueError as error:
            raise ValueError(f"Vertex AI would refuse this training job: {error}") from None

    def worker_pool_specs(self) -> List[Dict[str, Any]]:
        machine = {"machine_type": self.machine_type}
        if self.accelerator_count:
            machine["accelerator_type"] = self.accelerator_type or DEFAULT_ACCELERATOR
            machine["accelerator_count"] = self.accelerator_count
        pools = [(1, "chief")] + ([(self.replicas - 1, "workers")] if self.replicas > 1 else [])
        # container_spec.command is TFX's to set: its job client overrides it.
        return [{"machine_spec": dict(machine), "replica_count": count,
                 "container_spec": {"image_uri": self.image}} for count, _ in pools]

    def custom_config(self) -> Dict[str, Any]:
        """The keys TFX's Vertex AI training executor reads from ``custom_config``."""
        return {
            vertex_executor.TRAINING_ARGS_KEY: {
                "project": self.project,
                "job_spec": {"worker_pool_specs": self.worker_pool_specs()}},
            vertex_constants.ENABLE_VERTEX_KEY: True,
            vertex_constants.VERTEX_REGION_KEY: self.region,
        }

    def describe(self) -> str:
        gpus = (f", {self.accelerator_count} x {self.accelerator_type or DEFAULT_ACCELERATOR} "
                "each" if self.accelerator_count else "")
        return (f"a Vertex AI custom job of {self.replicas} x {self.machine_type}{gpus} in "
                f"{self.region} (project {self.project})")

    def run(self, input_dict, output_dict, exec_properties, context=None) -> None:
        """Runs TFX's Vertex AI training executor with this job in ``custom_config`` (after the
        run's training settings): it creates the custom job and waits for it."""
        exec_properties = dict(exec_properties)
        custom_config = json_utils.loads(
            exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
        custom_config.update(self.custom_config())
        exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY] = json_utils.dumps(
            custom_config)
        vertex_executor.GenericExecutor(context).Do(input_dict, output_dict, exec_properties)
