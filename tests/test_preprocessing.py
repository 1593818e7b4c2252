"""preprocessing_fn run through tf.Transform (Beam, in process) on a few generated records, and
the Trainer's generated-slice mix through the saved transform graph."""
import dataclasses
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
from tfx.utils import io_utils
from tensorflow_metadata.proto.v0 import schema_pb2

from pipeline import configs
from trainer import config as trainer_config
from trainer import inputs as trainer_inputs
from trainer import preprocessing
from dataset import records, synthetic_data


def _curated_schema():
    return io_utils.parse_pbtxt_file(configs.CURATED_SCHEMA_PATH, schema_pb2.Schema())


def test_curated_schema_matches_the_record_contract():
    schema = _curated_schema()
    assert sorted(f.name for f in schema.feature) == sorted(
        records.FEATURE_KEYS + records.OPTIONAL_FEATURE_KEYS)
    for feature in schema.feature:
        assert not feature.HasField("string_domain"), feature.name  # the SchemaGen trap
        if feature.name in (records.HEIGHT_KEY, records.WIDTH_KEY):
            assert (feature.int_domain.min, feature.int_domain.max) == (
                records.IMAGE_SIZE, records.IMAGE_SIZE)


@pytest.fixture(scope="module")
def slices():
    return synthetic_data.generate_patient(0, 3, synthetic_data.patient_rng(1, 0))


def _instances(slices):
    return [{records.HEIGHT_KEY: [records.IMAGE_SIZE], records.WIDTH_KEY: [records.IMAGE_SIZE],
                  records.DEPTH_KEY: [1], records.NAME_KEY: [name.encode()],
                  records.IMAGE_KEY: [image.astype(records.IMAGE_DTYPE).tobytes()],
                  records.LABEL_KEY: [mask.astype(records.LABEL_DTYPE).tobytes()],
                  **{key: [] for key in records.OPTIONAL_FEATURE_KEYS}}
                 for name, image, mask in slices]


def _transform(slices, tmp_path, custom_config=None):
    instances = _instances(slices)
    metadata = dataset_metadata.DatasetMetadata(_curated_schema())
    with tft_beam.Context(temp_dir=str(tmp_path)):
        (transformed, _), _ = ((instances, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, custom_config),
            output_record_batches=False))
    return transformed


def test_preprocessing_fn_decodes_and_normalises(slices, tmp_path):
    transformed = _transform(slices, tmp_path)
    assert len(transformed) == len(slices)
    for row, (_, image, mask) in zip(transformed, slices):
        out_image = np.asarray(row[preprocessing.IMAGE_FEATURE]).reshape(image.shape)
        out_label = np.asarray(row[preprocessing.LABEL_FEATURE]).reshape(mask.shape)
        np.testing.assert_array_equal(out_label, mask)
        # percentile scaling: the 99th percentile of each image becomes 1, zeros stay 0
        assert np.percentile(out_image, 99) == pytest.approx(1.0, abs=0.02)
        np.testing.assert_allclose(out_image * np.percentile(image, 99), image,
                                   rtol=0.02, atol=2.0)


def test_lab_normalisation_is_the_labs_fixed_scale(slices, tmp_path):
    transformed = _transform(slices[:1], tmp_path, {"normalization": "lab"})
    image = slices[0][1]
    np.testing.assert_allclose(
        np.asarray(transformed[0][preprocessing.IMAGE_FEATURE]).reshape(image.shape),
        image / 1024.0, rtol=1e-6)


def test_normalisation_rejects_unknown_method():
    with pytest.raises(ValueError, match="normalization must be one of"):
        preprocessing.normalize_image(tf.zeros([1, records.IMAGE_SIZE, records.IMAGE_SIZE, 1]),
                                      "zscore")


def test_dark_image_is_not_divided_by_zero():
    dark = tf.zeros([1, records.IMAGE_SIZE, records.IMAGE_SIZE, 1])
    assert float(tf.reduce_max(preprocessing.normalize_image(dark))) == 0.0


def test_generated_training_slices_go_through_the_saved_transform_graph(slices, tmp_path):
    """The Trainer's synthetic mix is normalised by the Transform component's graph itself."""
    output = str(tmp_path / "transform_output")
    metadata = dataset_metadata.DatasetMetadata(_curated_schema())
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        data = pipeline | beam.Create(_instances(slices))
        transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(preprocessing.preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(output)
    # the raw schema, as TFX's Transform component writes it beside the graph
    metadata_io.write_metadata(metadata,
                               os.path.join(output, tft.TFTransformOutput.RAW_METADATA_DIR))

    config = trainer_config.TrainingConfig(synthetic_mix=0.5, synthetic_patients=1, seed=3)
    pairs = list(trainer_inputs.synthetic_examples(config, tft.TFTransformOutput(output)))
    expected = synthetic_data.generate_slices(1, seed=3)
    assert len(pairs) == len(expected) == 13
    for (image, label), item in zip(pairs, expected):
        assert image.shape == (records.IMAGE_SIZE, records.IMAGE_SIZE, 1)
        np.testing.assert_array_equal(label.numpy(), item.mask)
        reference = preprocessing.normalize_image(
            tf.constant(item.image[None, ..., None], tf.float32))[0]
        np.testing.assert_allclose(image.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"synthetic_mix": 1.0}, "synthetic_mix must be in"),
    ({"synthetic_mix": -0.1}, "synthetic_mix must be in"),
    ({"synthetic_mix": 0.5, "synthetic_patients": 0}, "synthetic_patients"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"ensemble_size": 0}, "ensemble_size must be at least 1"),
    ({"model": "resnet"}, "model must be one of"),
    ({"unet_norm": "layer"}, "unet_norm must be one of"),
    ({"elastic_pixels": -1.0}, "elastic_pixels must be >= 0"),
    ({"max_gain_change": 1.0}, r"max_gain_change must be in \[0, 1\)"),
    ({"max_gamma_change": -0.1}, r"max_gamma_change must be in \[0, 1\)"),
    ({"dropout": 0.1}, "unknown training option"),
])
def test_training_config_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        trainer_config.TrainingConfig.from_custom_config(options)


def test_ensemble_members_differ_only_in_consecutive_seeds():
    config = trainer_config.TrainingConfig(seed=42, ensemble_size=3)
    members = trainer_config.member_configs(config)
    assert [member.seed for member in members] == [42, 43, 44]
    assert members[0] == config
    assert all(dataclasses.replace(member, seed=42) == config for member in members)
    unseeded = trainer_config.TrainingConfig(seed=None, ensemble_size=2)
    assert [member.seed for member in trainer_config.member_configs(unseeded)] == [None, None]
