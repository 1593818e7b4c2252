"""Custom TFX components and executors of this project (atomic pusher, data gate)."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
