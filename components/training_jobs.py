"""The Trainer as a training job on several machines: a Vertex AI custom job
(``components.vertex_training``) or a TFJob of the Kubeflow Training Operator
(``components.tfjob_training``).

:class:`JobTrainer` is TFX's Trainer (same inputs, outputs and parameters, the run-time
``training_config`` included) plus one parameter, ``training_job``: which job trains, as JSON.
Its task no longer trains: it starts the job, in which every replica runs TFX's own Trainer
executor with this task's inputs, outputs and properties, and waits for it. The job is a separate
parameter rather than part of ``custom_config`` so the training settings stay one run-time
parameter that a run can override.
"""
import dataclasses
import json
from typing import Union

from tfx import types
from tfx.components.trainer import component as trainer_component
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import component_spec, standard_component_specs

from components.tfjob_training import TFJobTraining
from components.vertex_training import VertexTrainingJob

TRAINING_JOB_KEY = "training_job"
TrainingJob = Union[VertexTrainingJob, TFJobTraining]
BACKENDS = {job_class.BACKEND: job_class for job_class in (VertexTrainingJob, TFJobTraining)}


def job_to_json(job: TrainingJob) -> str:
    return json.dumps(dict(dataclasses.asdict(job), backend=job.BACKEND), sort_keys=True)


def job_from_json(text: str) -> TrainingJob:
    fields = json.loads(text)
    backend = fields.pop("backend", None)
    if backend not in BACKENDS:
        raise ValueError(f"training job backend must be one of {sorted(BACKENDS)}, got "
                         f"{backend!r}")
    return BACKENDS[backend](**fields)


class JobTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = dict(standard_component_specs.TrainerSpec.PARAMETERS,
                      **{TRAINING_JOB_KEY: component_spec.ExecutionParameter(type=str)})


class Executor(base_executor.BaseExecutor):
    """Runs the ``training_job`` parameter's job for this Trainer task and waits for it."""

    def Do(self, input_dict, output_dict, exec_properties):
        exec_properties = dict(exec_properties)
        job = job_from_json(exec_properties.pop(TRAINING_JOB_KEY))
        job.run(input_dict, output_dict, exec_properties, context=self._context)


class JobTrainer(base_component.BaseComponent):
    """TFX's Trainer, trained by ``training_job`` (see the module docstring)."""

    SPEC_CLASS = JobTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, training_job: TrainingJob, **trainer_args):
        # TFX's Trainer builds and checks the spec; this adds the job to it.
        trainer = trainer_component.Trainer(**trainer_args)
        parameters = {name: value for name, value in trainer.exec_properties.items()
                      if value is not None}
        outputs = {name: types.Channel(type=channel.type)
                   for name, channel in trainer.outputs.items()}
        spec = JobTrainerSpec(**trainer.inputs, **outputs, **parameters,
                              **{TRAINING_JOB_KEY: job_to_json(training_job)})
        super().__init__(spec=spec)
