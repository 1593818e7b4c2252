"""Kubeflow Pipelines and Vertex AI: compiling the pipeline (runner.py, targets.py,
resources.py, beam_settings.py, config.py), the tasks' entry point and input fingerprint
(container_entrypoint.py, input_fingerprint.py, code_version.py, gcs_markers.py), starting runs
(submit.py, run_parameters.py) and the ``lvseg kubeflow`` command (cli.py)."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
