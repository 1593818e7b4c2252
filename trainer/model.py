"""TFX Trainer entry point: ``run_fn`` (``Trainer(run_fn='trainer.model.run_fn')``).

Reads the transformed examples, trains the chosen network with cross-entropy + soft-Dice loss
(or ``ensemble_size`` of them, one after the other), logs to TensorBoard in the model run
directory and exports a SavedModel with the signatures of :mod:`trainer.signatures`. Uses
``MirroredStrategy`` over all visible GPUs, the default (single-device) strategy on CPU.
"""
import dataclasses
import json
import math
import os
from typing import List, Optional

from absl import logging
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from trainer import augment as augmentation  # TrainingConfig.augment is a field
from trainer import dice, nets, preprocessing, records, signatures, synthetic_data


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The Trainer's hyperparameters, passed as the component's ``custom_config``.

    The number of steps is TFX's own ``TrainArgs.num_steps``; it is spread over ``epochs`` so the
    validation Dice and TensorBoard get a point per epoch.
    """

    model: str = nets.UNET
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3  # Adam's initial rate; decays to 0 over the run (cosine)
    dice_loss_weight: float = 1.0  # loss = cross-entropy + weight * (1 - soft Dice)
    augment: bool = True  # flips, rotation, scaling, shifts, gain and gamma (trainer.augment)
    elastic_pixels: float = 0.0  # elastic deformation when augmenting (trainer.augment); 0 = off
    # intensity jitter when augmenting: gain in [1 - x, 1 + x], gamma in [1 - y, 1 + y]
    max_gain_change: float = augmentation.AugmentConfig.max_gain_change
    max_gamma_change: float = augmentation.AugmentConfig.max_gamma_change
    unet_base_filters: int = 16
    unet_norm: str = nets.BATCH_NORM  # or GROUP_NORM (README, "Training on real patients")
    seed: Optional[int] = 42  # seeds weights and shuffling; None for a different run each time
    shuffle_buffer: int = 1024
    # Share of training examples drawn from generated slices (trainer.synthetic_data), the rest
    # from the training split. With a few real patients, mixing in generated anatomy regularises
    # the net (measured on the Sunnybrook subset: README, "Training on real patients").
    synthetic_mix: float = 0.0
    synthetic_patients: int = 20  # generated patients (13 slices each) when synthetic_mix > 0
    # A deep ensemble: this many networks, trained one after the other with seeds seed, seed + 1,
    # ... (weights, order of examples, augmentation, generated slices), exported as one model
    # that averages their LV probabilities (nets.build_ensemble). Each member costs a training
    # run and a forward pass per served image (README, "Training on real patients").
    ensemble_size: int = 1
    # Export option: the serving signatures average the LV probability over the four flips of
    # the image (trainer.tta); four forward passes per image (README, "Training on real patients").
    test_time_flips: bool = False

    @classmethod
    def from_custom_config(cls, custom_config: Optional[dict]) -> "TrainingConfig":
        custom_config = dict(custom_config or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        config = cls(**custom_config)
        if config.unet_norm not in nets.NORM_LAYERS:
            raise ValueError(f"unet_norm must be one of {nets.NORM_LAYERS}, "
                             f"got {config.unet_norm!r}")
        if config.model not in nets.MODEL_NAMES:
            raise ValueError(f"model must be one of {nets.MODEL_NAMES}, got {config.model!r}")
        for name in ("epochs", "batch_size", "ensemble_size"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
        if config.elastic_pixels < 0:
            raise ValueError(f"elastic_pixels must be >= 0, got {config.elastic_pixels}")
        for name in ("max_gain_change", "max_gamma_change"):
            if not 0.0 <= getattr(config, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")
        if not config.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {config.learning_rate}")
        if not 0.0 <= config.synthetic_mix < 1.0:
            raise ValueError(f"synthetic_mix must be in [0, 1), got {config.synthetic_mix}")
        if config.synthetic_mix and config.synthetic_patients < 1:
            raise ValueError("synthetic_patients must be at least 1 when synthetic_mix > 0")
        return config

    def augment_config(self) -> augmentation.AugmentConfig:
        """The augmentation these settings ask for (geometry ranges are the module's)."""
        return augmentation.AugmentConfig(elastic_pixels=self.elastic_pixels,
                                          max_gain_change=self.max_gain_change,
                                          max_gamma_change=self.max_gamma_change)


def _distribution_strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        logging.info("Training on %d GPU(s) with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    logging.info("No GPU visible: training on the CPU")
    return tf.distribute.get_strategy()


def synthetic_slices(config: TrainingConfig) -> list:
    """The generated slices mixed into training: ``config.synthetic_patients`` patients of the
    default data set's seeded generator, seed = the training seed, or 42."""
    seed = 42 if config.seed is None else config.seed
    return synthetic_data.generate_slices(config.synthetic_patients, seed=seed)


def synthetic_examples(config: TrainingConfig, tf_transform_output: tft.TFTransformOutput,
                       batch_size: int = 16) -> tf.data.Dataset:
    """(image, label) pairs of :func:`synthetic_slices`, through the same transform graph as the
    data: serialized in the lab's schema, parsed and transformed exactly as a training record
    would be, so normalisation is the Transform component's, never a copy of it.
    """
    slices = synthetic_slices(config)
    serialized = [records.encode_slice(record) for record in slices]
    raw_spec = tf_transform_output.raw_feature_spec()
    labelled_spec = {key: raw_spec[key] for key in (records.IMAGE_KEY, records.LABEL_KEY)}
    transform_layer = tf_transform_output.transform_features_layer()

    def transform(batch):
        features = transform_layer(tf.io.parse_example(batch, labelled_spec))
        return features[preprocessing.IMAGE_FEATURE], features[preprocessing.LABEL_FEATURE]

    logging.info("Mixing %d generated slices into training (share %.2f)", len(serialized),
                 config.synthetic_mix)
    return tf.data.Dataset.from_tensor_slices(serialized).batch(batch_size).map(transform).unbatch()


def input_dataset(file_pattern, data_accessor, tf_transform_output: tft.TFTransformOutput,
                  config: TrainingConfig, batch_size: int, training: bool) -> tf.data.Dataset:
    """(image, label) batches from transformed examples.

    The split is parsed once and cached in memory (the lab-sized set is ~200 MB as float32), then
    shuffled, repeated and augmented for training; the eval split is read once per epoch. With
    ``config.synthetic_mix`` > 0, that share of training examples is drawn from generated slices.
    """
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, num_epochs=1, shuffle=False,
                                       label_key=preprocessing.LABEL_FEATURE),
        tf_transform_output.transformed_metadata.schema)
    dataset = dataset.map(lambda features, label: (features[preprocessing.IMAGE_FEATURE], label))
    if not training:
        return dataset.cache().prefetch(tf.data.AUTOTUNE)
    generated = synthetic_examples(config, tf_transform_output) if config.synthetic_mix else None
    return training_batches(dataset.unbatch(), generated, config, batch_size)


def training_batches(examples: tf.data.Dataset, generated: Optional[tf.data.Dataset],
                     config: TrainingConfig, batch_size: int) -> tf.data.Dataset:
    """Endless augmented training batches from (image, label) examples: cached, shuffled and,
    with ``generated`` examples, mixed with ``config.synthetic_mix`` of them."""
    dataset = examples.cache().shuffle(config.shuffle_buffer, seed=config.seed).repeat()
    if generated is not None:
        generated = generated.cache().shuffle(config.shuffle_buffer, seed=config.seed).repeat()
        dataset = tf.data.Dataset.sample_from_datasets(
            [dataset, generated], weights=[1.0 - config.synthetic_mix, config.synthetic_mix],
            seed=config.seed)
    if config.augment:
        augment_config = config.augment_config()
        dataset = dataset.map(
            lambda image, label: augmentation.augment(image, label, augment_config),
            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


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
    (with a constant rate, one measured run's eval Dice fell from 0.97 to 0.73 in its last epoch)."""
    model = nets.build_model(config.model, unet_base_filters=config.unet_base_filters,
                             unet_norm=config.unet_norm, model_name=name)
    learning_rate = tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(total_steps, 1))
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=build_loss(config.dice_loss_weight),
                  metrics=[dice.DiceCoefficient()])
    return model


def member_configs(config: TrainingConfig) -> List[TrainingConfig]:
    """The training settings of each ensemble member: ``config`` with seeds ``seed``,
    ``seed + 1``, ... (all ``None`` when ``config.seed`` is; the first member is ``config``)."""
    return [dataclasses.replace(config, seed=None if config.seed is None else config.seed + index)
            for index in range(config.ensemble_size)]


def train_model(config: TrainingConfig, fn_args: tfx.components.FnArgs,
                tf_transform_output: tft.TFTransformOutput, strategy: tf.distribute.Strategy,
                log_dir: str, name: Optional[str] = None) -> tf.keras.Model:
    """One network trained for ``fn_args.train_steps`` steps with ``config``'s seed."""
    if config.seed is not None:
        tf.keras.utils.set_random_seed(config.seed)
    global_batch_size = config.batch_size * strategy.num_replicas_in_sync
    train_dataset = input_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                                  config, global_batch_size, training=True)
    eval_dataset = input_dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                                 config, global_batch_size, training=False)

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


def run_fn(fn_args: tfx.components.FnArgs):
    """Trains the model (or each member of the ensemble) and exports it to
    ``fn_args.serving_model_dir``. The first member logs to ``fn_args.model_run_dir`` (the run
    report's training curves), member k > 0 to ``member_k/`` under it."""
    config = TrainingConfig.from_custom_config(fn_args.custom_config)
    logging.info("Training config: %s", json.dumps(dataclasses.asdict(config)))
    if config.seed is not None:
        tf.config.experimental.enable_op_determinism()

    strategy = _distribution_strategy()
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    members = []
    for index, member_config in enumerate(member_configs(config)):
        if config.ensemble_size > 1:
            print(f"ensemble member {index + 1} of {config.ensemble_size} "
                  f"(seed {member_config.seed})", flush=True)
        log_dir = fn_args.model_run_dir if index == 0 else os.path.join(fn_args.model_run_dir,
                                                                        f"member_{index}")
        members.append(train_model(
            member_config, fn_args, tf_transform_output, strategy, log_dir,
            name=f"{config.model}_{index}" if config.ensemble_size > 1 else None))
    if len(members) == 1:
        model = members[0]
    else:
        with strategy.scope():
            model = nets.build_ensemble(members)

    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=signatures.build_signatures(model, tf_transform_output,
                                                      test_time_flips=config.test_time_flips))
    logging.info("Exported SavedModel to %s", fn_args.serving_model_dir)
