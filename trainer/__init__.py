"""The model side of the pipeline: settings (config.py, no TensorFlow), preprocessing_fn, the
networks, augmentation, the input pipeline, training, the loss and Dice, post-processing, the
serving signatures, and ``run_fn`` (model.py), the training story.

Modules here are what TFX loads by dotted path (``trainer.preprocessing.preprocessing_fn``,
``trainer.model.run_fn``, ``trainer.dice``), so they must import cleanly inside any TFX worker.
"""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
