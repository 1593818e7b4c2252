"""The model side of the pipeline: data contract, preprocessing_fn, networks, Dice, run_fn.

Modules here are what TFX loads by dotted path (``trainer.preprocessing.preprocessing_fn``,
``trainer.model.run_fn``), so they must import cleanly inside any TFX worker process.
"""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
