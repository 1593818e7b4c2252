"""Compiling the pipeline for Kubeflow Pipelines."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
