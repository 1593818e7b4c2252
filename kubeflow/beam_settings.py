"""Beam options of the data stages on Kubeflow: DirectRunner, Dataflow, or a portable job server.

Only ExampleGen, StatisticsGen, Transform and Evaluator run Beam; ``create_pipeline`` gives these
options to them alone. The image the pipeline runs in doubles as the Beam worker image (its
entry point is Beam's ``boot``, with this project installed), so Dataflow and Flink/Spark workers
can import ``trainer.preprocessing`` and ``trainer.dice`` just as the Kubeflow tasks do.
"""
import dataclasses
from typing import List, Optional, Sequence

from pipeline import configs

DIRECT = "direct"
DATAFLOW = "dataflow"
PORTABLE = "portable"  # a Flink or Spark job server, through Beam's portable runner protocol
BEAM_RUNNERS = (DIRECT, DATAFLOW, PORTABLE)

# How a portable runner starts Python workers. EXTERNAL: an SDK worker pool runs beside each
# Flink task manager / Spark executor (this image started with `--worker_pool`, listening on
# port 50000), the usual set-up of Flink on Kubernetes; DOCKER: the runner starts this image.
EXTERNAL = "EXTERNAL"
DOCKER = "DOCKER"
ENVIRONMENT_TYPES = (EXTERNAL, DOCKER)
DEFAULT_WORKER_POOL = "localhost:50000"


@dataclasses.dataclass
class BeamSettings:
    runner: str = DIRECT
    direct_workers: int = 1  # DirectRunner: 1 in memory, more in as many processes
    project: Optional[str] = None  # Dataflow
    region: Optional[str] = None  # Dataflow
    temp_location: Optional[str] = None  # Dataflow: a gs:// folder for staging and temp files
    job_endpoint: Optional[str] = None  # portable: the job server's host:port
    environment_type: str = EXTERNAL  # portable
    environment_config: Optional[str] = None  # portable: worker pool address or image
    extra_args: Sequence[str] = ()  # any other Beam option, appended as given


def beam_pipeline_args(settings: BeamSettings, image: str) -> List[str]:
    """The Beam options for ``settings``; ``image`` is the workers' container image."""
    if settings.runner == DIRECT:
        # the workers run in this image (the task's pod); naming it spares each TFX Beam executor
        # building a source package of TFX for remote workers (the DirectRunner ignores it)
        args = _direct_args(settings.direct_workers) + [f"--sdk_container_image={image}"]
    elif settings.runner == DATAFLOW:
        args = _dataflow_args(settings, image)
    elif settings.runner == PORTABLE:
        args = _portable_args(settings, image)
    else:
        raise ValueError(f"Beam runner must be one of {BEAM_RUNNERS}, got {settings.runner!r}")
    return args + list(settings.extra_args)


def _direct_args(workers: int) -> List[str]:
    if workers < 1:
        raise ValueError(f"DirectRunner needs at least 1 worker, got {workers}")
    if workers == 1:
        return list(configs.DEFAULT_BEAM_ARGS)
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def _dataflow_args(settings: BeamSettings, image: str) -> List[str]:
    missing = [flag for flag, value in (("--project", settings.project),
                                        ("--region", settings.region),
                                        ("--temp-location", settings.temp_location)) if not value]
    if missing:
        raise ValueError(f"the Dataflow runner needs {', '.join(missing)}")
    return ["--runner=DataflowRunner", f"--project={settings.project}",
            f"--region={settings.region}", f"--temp_location={settings.temp_location}",
            f"--sdk_container_image={image}"]


def _portable_args(settings: BeamSettings, image: str) -> List[str]:
    if not settings.job_endpoint:
        raise ValueError("the portable runner needs --job-endpoint (the Flink or Spark job "
                         "server, host:port)")
    if settings.environment_type not in ENVIRONMENT_TYPES:
        raise ValueError(f"environment type must be one of {ENVIRONMENT_TYPES}, "
                         f"got {settings.environment_type!r}")
    default_config = DEFAULT_WORKER_POOL if settings.environment_type == EXTERNAL else image
    # the workers run this image, TFX and this project installed: naming it keeps TFX from
    # staging a package of itself for them to install (the portable runner ignores the option)
    return ["--runner=PortableRunner", f"--job_endpoint={settings.job_endpoint}",
            f"--environment_type={settings.environment_type}",
            f"--environment_config={settings.environment_config or default_config}",
            f"--sdk_container_image={image}"]
