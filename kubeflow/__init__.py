"""Kubeflow Pipelines: compiling the pipeline (runner.py, beam_settings.py), starting runs
(submit.py) and the ``lvseg kubeflow`` command (cli.py)."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
