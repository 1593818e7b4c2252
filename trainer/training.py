"""Training one network: the loss, the optimiser and its schedule, the distribution strategy,
and the fit of one (ensemble member's) network for the run's steps.

The settings mean the same on one device, several GPUs or several machines: ``batch_size`` is
the global batch (split evenly over the replicas training in sync), a step is one global batch,
the learning-rate schedule runs over the run's steps, and the seed seeds every replica alike.
"""
import contextlib
import math
from typing import Iterator, Optional

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from trainer import cluster, dice, inputs, nets, weight_averaging
from trainer.config import TrainingConfig


def distribution_strategy(role: cluster.ClusterRole) -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one training task
    (each task uses its GPUs, or its CPU), ``MirroredStrategy`` over this machine's GPUs, or the
    default strategy on the CPU."""
    if role.multi_worker:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("Training as %s with MultiWorkerMirroredStrategy, %d replicas in sync",
                     role.describe(), strategy.num_replicas_in_sync)
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        logging.info("Training on %d GPU(s) with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    logging.info("No GPU visible: training on the CPU")
    return tf.distribute.get_strategy()


def build_loss(dice_loss_weight: float):
    """Per image: the mean pixel cross-entropy + ``dice_loss_weight`` x (1 - soft Dice).

    The loss returns one value per image and Keras averages them over the global batch (under
    a distribution strategy it scales each replica's share), so the loss and its gradients are
    the same on one device or many. (A Keras ``Loss`` object reducing inside this function is
    refused under any strategy other than the default.)"""
    def segmentation_loss(labels, logits):
        pixel_loss = tf.keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                     from_logits=True)
        loss = tf.reduce_mean(tf.reshape(pixel_loss, [tf.shape(pixel_loss)[0], -1]), axis=1)
        if dice_loss_weight:
            loss += dice_loss_weight * dice.soft_dice_loss_per_image(labels, logits)
        return loss

    return segmentation_loss


def learning_rate_schedule(config: TrainingConfig, total_steps: int):
    """Adam's rate: decaying to zero over ``total_steps`` (cosine), so the last epochs settle the
    weights instead of leaving them wherever the last step threw them (with a constant rate, one
    measured run's eval Dice fell from 0.97 to 0.73 in its last epoch). With weight averaging
    (``config.average_last``) it decays to ``config.averaging_learning_rate`` by the first
    averaged step and stays there (:mod:`trainer.weight_averaging`)."""
    if config.average_last:
        return weight_averaging.AveragingSchedule(
            config.learning_rate, config.averaging_learning_rate,
            weight_averaging.averaging_start(total_steps, config.average_last))
    return tf.keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                     decay_steps=max(total_steps, 1))


def build_compiled_model(config: TrainingConfig, total_steps: int,
                         name: Optional[str] = None) -> tf.keras.Model:
    """The network with Adam on :func:`learning_rate_schedule`, the loss and the Dice metric."""
    model = nets.build_model(config.model, unet_base_filters=config.unet_base_filters,
                             unet_norm=config.unet_norm, model_name=name)
    learning_rate = learning_rate_schedule(config, total_steps)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=build_loss(config.dice_loss_weight),
                  metrics=[dice.DiceCoefficient()])
    return model


def check_batch_size(global_batch_size: int, replicas: int) -> None:
    if global_batch_size % replicas:
        raise ValueError(f"batch_size {global_batch_size} (the global batch) must be a multiple "
                         f"of the {replicas} replicas training in sync")


def training_dataset(strategy: tf.distribute.Strategy, fn_args: tfx.components.FnArgs,
                     tf_transform_output: tft.TFTransformOutput, config: TrainingConfig):
    """The training batches of each replica: one input pipeline per worker reads its shard of
    the examples (:func:`trainer.inputs.input_dataset`) in per-replica batches."""
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return inputs.input_dataset(
            fn_args.train_files, fn_args.data_accessor, tf_transform_output, config,
            batch_size=context.get_per_replica_batch_size(config.batch_size), training=True,
            shard=inputs.Shard(context.num_input_pipelines, context.input_pipeline_id))

    return strategy.distribute_datasets_from_function(dataset_fn)


def train_model(config: TrainingConfig, fn_args: tfx.components.FnArgs,
                tf_transform_output: tft.TFTransformOutput, strategy: tf.distribute.Strategy,
                log_dir: str, name: Optional[str] = None) -> tf.keras.Model:
    """One network trained for ``fn_args.train_steps`` steps of ``config.batch_size`` examples
    (the global batch) with ``config``'s seed; TensorBoard logs to ``log_dir``. With
    ``config.average_last``, the network returned has the averaged weights and batch-norm
    statistics recomputed for them (:mod:`trainer.weight_averaging`)."""
    if config.seed is not None:
        tf.keras.utils.set_random_seed(config.seed)
    check_batch_size(config.batch_size, strategy.num_replicas_in_sync)
    train_dataset = training_dataset(strategy, fn_args, tf_transform_output, config)
    eval_dataset = inputs.input_dataset(fn_args.eval_files, fn_args.data_accessor,
                                        tf_transform_output, config, config.batch_size,
                                        training=False)

    with strategy.scope():
        model = build_compiled_model(config, fn_args.train_steps, name=name)

    epochs = min(config.epochs, fn_args.train_steps)
    callbacks = [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")]
    if config.average_last:
        callbacks.append(weight_averaging.WeightAverage(
            weight_averaging.averaging_start(fn_args.train_steps, config.average_last)))
    model.fit(
        train_dataset,
        epochs=epochs,
        steps_per_epoch=math.ceil(fn_args.train_steps / epochs),
        validation_data=eval_dataset,
        callbacks=callbacks,
        verbose=2)
    if config.average_last:
        layers = weight_averaging.refresh_batch_norm(model, train_dataset, strategy)
        logging.info("Batch-norm statistics of %d layers recomputed for the averaged weights",
                     layers)
    return model


def wait_for_all_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has got here (an all-reduce across them): after the chief's
    export, so no worker reports the Trainer done before the model exists."""
    strategy.reduce(tf.distribute.ReduceOp.SUM,
                    strategy.run(lambda: tf.constant(1.0)), axis=None)


# What a collective operation raises when a peer has gone: TensorFlow's coordination service
# misses the peer's heartbeats, or the health check finds it down, and aborts every collective.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                 tf.errors.CancelledError, tf.errors.AbortedError)


class WorkerFailure(RuntimeError):
    """A task of a multi-worker job stopped; the others cannot go on without it."""


@contextlib.contextmanager
def worker_failures_explained(role: cluster.ClusterRole) -> Iterator[None]:
    """Re-raises a failed collective of a multi-worker job as :class:`WorkerFailure`, which says
    what happened and what to do, instead of a graph-execution trace."""
    try:
        yield
    except PEER_FAILURES as error:
        if not role.multi_worker:
            raise
        message = str(error.message if hasattr(error, "message") else error)
        reason = next((line.strip() for line in message.splitlines()
                       if "aborted" in line or "heartbeat" in line or "down" in line),
                      message.splitlines()[0] if message else type(error).__name__)
        raise WorkerFailure(
            f"multi-worker training stopped on {role.describe()}: another task of the job "
            f"failed or became unreachable ({reason}). MultiWorkerMirroredStrategy cannot go on "
            "with fewer tasks, so this one fails too; the job (a Vertex AI custom job or a "
            "TFJob) must be run again, and the failed task's log says why it stopped."
        ) from error
