"""The TFX pipeline definition, its configuration, local runners and the ``lvseg`` CLI."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
