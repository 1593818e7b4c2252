"""Stochastic weight averaging (SWA; Izmailov et al. 2018, "Averaging Weights Leads to Wider
Optima and Better Generalization"): the network exported is the average of the weights it passed
through over the last share of its run, not the weights of its last step.

With ``TrainingConfig.average_last = s`` (0 = off) a run of T steps:

1. decays the learning rate (cosine) from ``learning_rate`` to ``averaging_learning_rate`` over
   its first (1 - s) T steps, then holds it there (:class:`AveragingSchedule`): a constant rate
   keeps the weights moving around the region of low loss they have reached;
2. from step (1 - s) T on, adds the weights to a running mean every :data:`AVERAGE_EVERY_STEPS`
   steps and, at the end, sets the network to that mean (:class:`WeightAverage`);
3. recomputes each batch-norm layer's inference mean and variance for the averaged weights, as the
   exact average of its batch statistics over :data:`BATCH_NORM_BATCHES` training batches
   (:func:`refresh_batch_norm`): the running statistics were gathered under other weights.

One network, one forward pass when serving; the averaging costs a weight copy every few steps
and the refresh about a tenth of a training step per batch. Measured on real patients in
docs/experiments/2026-12-07-one-network.md.
"""
import math
from typing import List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

AVERAGE_EVERY_STEPS = 10
BATCH_NORM_BATCHES = 32


def averaging_start(total_steps: int, average_last: float) -> int:
    """The step from which weights are averaged (``total_steps`` when averaging is off)."""
    if not average_last:
        return total_steps
    return min(total_steps - 1, int(round(total_steps * (1.0 - average_last))))


@tf.keras.utils.register_keras_serializable(package="lvseg")
class AveragingSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from ``initial`` to ``floor`` over ``decay_steps``, then ``floor``."""

    def __init__(self, initial: float, floor: float, decay_steps: int):
        self.initial = float(initial)
        self.floor = float(floor)
        self.decay_steps = int(max(decay_steps, 1))

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / self.decay_steps, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.floor + (self.initial - self.floor) * cosine

    def get_config(self):
        return {"initial": self.initial, "floor": self.floor, "decay_steps": self.decay_steps}


class WeightAverage(tf.keras.callbacks.Callback):
    """Keeps the running mean of the model's trainable weights, taken every ``every`` steps from
    step ``start`` on (the step count of the run, over all epochs), and sets the model to it when
    training ends. Batch-norm running statistics are not weights here: see
    :func:`refresh_batch_norm`."""

    def __init__(self, start: int, every: int = AVERAGE_EVERY_STEPS):
        super().__init__()
        self.start = start
        self.every = every
        self.snapshots = 0
        self._step = 0
        self._mean: Optional[List[np.ndarray]] = None

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step < self.start or (self._step - self.start) % self.every:
            return
        weights = tf.keras.backend.batch_get_value(self.model.trainable_weights)
        self.snapshots += 1
        if self._mean is None:
            self._mean = [np.array(w, dtype=np.float64) for w in weights]
        else:
            for mean, w in zip(self._mean, weights):
                mean += (w - mean) / self.snapshots

    def on_train_end(self, logs=None):
        if self._mean is None:
            return
        tf.keras.backend.batch_set_value([
            (variable, mean.astype(variable.dtype.as_numpy_dtype))
            for variable, mean in zip(self.model.trainable_weights, self._mean)])
        logging.info("Weights averaged over %d snapshots from step %d", self.snapshots,
                     self.start)


def batch_norm_layers(model: tf.keras.Model) -> list:
    return [layer for layer in model.submodules
            if isinstance(layer, tf.keras.layers.BatchNormalization)]


def refresh_batch_norm(model: tf.keras.Model, dataset, strategy: tf.distribute.Strategy,
                       batches: int = BATCH_NORM_BATCHES) -> int:
    """Sets each batch-norm layer's moving mean and variance to the mean of its batch statistics
    over ``batches`` batches of ``dataset`` (a distributed dataset of (image, label) batches),
    the network's weights held fixed. Returns the number of layers refreshed."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    with strategy.scope():
        # Read by the layers at run time (a Python float would be fixed at trace time): the
        # k-th batch (from 0) gets weight 1 / (k + 1), so the result is the exact mean.
        momentum = tf.Variable(0.0, trainable=False, dtype=tf.float32,
                               synchronization=tf.VariableSynchronization.ON_WRITE,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        # Around Keras' attribute tracking, which would make the variable one of the layer's
        # weights (and save it with the model).
        object.__setattr__(layer, "momentum", momentum)

    @tf.function
    def forward(distributed_batch):
        strategy.run(lambda images, labels: model(images, training=True), args=distributed_batch)

    try:
        iterator = iter(dataset)
        for index in range(batches):
            momentum.assign(index / (index + 1.0))
            forward(next(iterator))
    finally:
        for layer, value in zip(layers, saved):
            object.__setattr__(layer, "momentum", value)
    return len(layers)
