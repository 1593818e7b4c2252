"""The TFX pipeline: its definition (pipeline.py, ``create_pipeline``), configuration
(configs.py, settings.py, options.py), the gate's EvalConfig, the local runners, the pre-flight
input checks and the run summary read back from ML Metadata."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
