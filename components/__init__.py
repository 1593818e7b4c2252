"""Custom TFX components and executors of this project: SunnybrookExampleGen, DataGate,
ServedModel (the Evaluator's baseline) and its Evaluator, ServingCheck, AtomicPusher."""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
