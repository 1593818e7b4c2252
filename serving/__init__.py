"""Querying the pushed model over TF Serving's APIs."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
