"""The Trainer's input: (image, label) batches from the Transform's output, and the generated
slices mixed into training (through the same transform graph as the data).

Several workers (``trainer.training``): for training, each worker's input pipeline keeps every
n-th example (:class:`Shard`) before caching, shuffling and augmentation, so the workers read
disjoint parts, each augments only its own, and the shards differ by at most one example
whatever the number of files; TensorFlow's auto-sharding is off there. (Its FILE policy would
leave workers idle or fail, as the Transform writes a split to as few as one file; its DATA
policy would make every worker augment every example and drop all but its own.) The eval split,
read once per epoch without augmentation, is auto-sharded by DATA: Keras then evaluates the
whole split, every example once, whatever its size.
"""
from typing import NamedTuple, Optional

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx_bsl.public import tfxio

from dataset import records, synthetic_data
from trainer import augment as augmentation
from trainer import preprocessing
from trainer.config import TrainingConfig


class Shard(NamedTuple):
    """Input pipeline ``index`` of ``count`` keeps examples ``index``, ``index + count``, ..."""

    count: int = 1
    index: int = 0

    def apply(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset if self.count == 1 else dataset.shard(self.count, self.index)


def with_auto_shard(dataset: tf.data.Dataset,
                    policy: tf.data.experimental.AutoShardPolicy) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


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
                  config: TrainingConfig, batch_size: int, training: bool,
                  shard: Shard = Shard()) -> tf.data.Dataset:
    """(image, label) batches of ``batch_size`` from the transformed examples.

    The split is parsed once and cached in memory (the lab-sized set is ~200 MB as float32), then
    for training: ``shard`` of it shuffled, repeated and augmented; with ``config.synthetic_mix``
    > 0, that share of training examples is drawn from generated slices (sharded alike). The eval
    split is read once per epoch, whole (a distribution strategy shards it by DATA).
    """
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, num_epochs=1, shuffle=False,
                                       label_key=preprocessing.LABEL_FEATURE),
        tf_transform_output.transformed_metadata.schema)
    dataset = dataset.map(lambda features, label: (features[preprocessing.IMAGE_FEATURE], label))
    if not training:
        return with_auto_shard(dataset.cache().prefetch(tf.data.AUTOTUNE),
                               tf.data.experimental.AutoShardPolicy.DATA)
    generated = (shard.apply(synthetic_examples(config, tf_transform_output))
                 if config.synthetic_mix else None)
    return with_auto_shard(
        training_batches(shard.apply(dataset.unbatch()), generated, config, batch_size),
        tf.data.experimental.AutoShardPolicy.OFF)


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
