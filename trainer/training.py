"""Training one network: the loss, the optimiser and its schedule, the distribution strategy,
and the fit of one (ensemble member's) network for the run's steps."""
import math
from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from trainer import dice, inputs, nets
from trainer.config import TrainingConfig


def distribution_strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        logging.info("Training on %d GPU(s) with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    logging.info("No GPU visible: training on the CPU")
    return tf.distribute.get_strategy()


def build_loss(dice_loss_weight: float):
    cross_entropy = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def segmentation_loss(labels, logits):
        loss = cross_entropy(labels, logits)
        if dice_loss_weight:
            loss += dice_loss_weight * dice.soft_dice_loss(labels, logits)
        return loss

    return segmentation_loss


def build_compiled_model(config: TrainingConfig, total_steps: int,
                         name: Optional[str] = None) -> tf.keras.Model:
    """The network with Adam, its learning rate decaying to zero over ``total_steps`` (cosine):
    the last epochs settle the weights instead of leaving them wherever the last step threw them
    (with a constant rate, one measured run's eval Dice fell from 0.97 to 0.73 in its last
    epoch)."""
    model = nets.build_model(config.model, unet_base_filters=config.unet_base_filters,
                             unet_norm=config.unet_norm, model_name=name)
    learning_rate = tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(total_steps, 1))
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=build_loss(config.dice_loss_weight),
                  metrics=[dice.DiceCoefficient()])
    return model


def train_model(config: TrainingConfig, fn_args: tfx.components.FnArgs,
                tf_transform_output: tft.TFTransformOutput, strategy: tf.distribute.Strategy,
                log_dir: str, name: Optional[str] = None) -> tf.keras.Model:
    """One network trained for ``fn_args.train_steps`` steps with ``config``'s seed."""
    if config.seed is not None:
        tf.keras.utils.set_random_seed(config.seed)
    global_batch_size = config.batch_size * strategy.num_replicas_in_sync
    train_dataset = inputs.input_dataset(fn_args.train_files, fn_args.data_accessor,
                                         tf_transform_output, config, global_batch_size,
                                         training=True)
    eval_dataset = inputs.input_dataset(fn_args.eval_files, fn_args.data_accessor,
                                        tf_transform_output, config, global_batch_size,
                                        training=False)

    with strategy.scope():
        model = build_compiled_model(config, fn_args.train_steps, name=name)

    epochs = min(config.epochs, fn_args.train_steps)
    model.fit(
        train_dataset,
        epochs=epochs,
        steps_per_epoch=math.ceil(fn_args.train_steps / epochs),
        validation_data=eval_dataset,
        callbacks=[tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")],
        verbose=2)
    return model
