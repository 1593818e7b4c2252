"""A servable SavedModel without running the pipeline: for tests, benchmarks and local trials.

It is built the way the Trainer exports (``trainer.model.run_fn``): the real ``preprocessing_fn``
analysed by tf.Transform on a few generated slices and written as a transform graph, an untrained
network from ``trainer.nets``, and ``trainer.signatures.build_signatures``. So it has the exact
signatures, inputs and outputs of a pushed model; only its masks mean nothing.
"""
import os
from typing import List, Optional

import numpy as np

from dataset import synthetic_data
from trainer import nets
from dataset import records

SAMPLE_SEED = 11
LOGITS_LAYER = "logits"  # the last layer of both nets
LOGIT_SCALE = 50.0


def sample_slices(count: int = 2, seed: int = SAMPLE_SEED) -> List[synthetic_data.SliceRecord]:
    """``count`` generated ``(name, image, mask)`` slices of one synthetic patient, base first."""
    return synthetic_data.generate_patient(0, max(count, 1), synthetic_data.patient_rng(seed, 0))[
        :count]


def write_transform_output(folder: str, custom_config: Optional[dict] = None) -> str:
    """Runs tf.Transform's analysis of ``preprocessing_fn`` and writes the transform graph.

    ``tft.TFTransformOutput(folder)`` then reads it, as the Trainer reads the Transform
    component's output. The normalisations are stateless, so two slices are plenty.
    """
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx.utils import io_utils

    from pipeline import configs
    from trainer import preprocessing

    schema = io_utils.parse_pbtxt_file(configs.CURATED_SCHEMA_PATH, schema_pb2.Schema())
    # The lab's features only: optional ones (absent from the lab's records) need no samples.
    lab_features = [f for f in schema.feature if f.name in records.FEATURE_KEYS]
    del schema.feature[:]
    schema.feature.extend(lab_features)
    instances = [{records.HEIGHT_KEY: [records.IMAGE_SIZE], records.WIDTH_KEY: [records.IMAGE_SIZE],
                  records.DEPTH_KEY: [1], records.NAME_KEY: [name.encode()],
                  records.IMAGE_KEY: [image.astype(records.IMAGE_DTYPE).tobytes()],
                  records.LABEL_KEY: [mask.astype(records.LABEL_DTYPE).tobytes()]}
                 for name, image, mask in sample_slices(2)]
    raw_metadata = dataset_metadata.DatasetMetadata(schema)
    with tft_beam.Context(temp_dir=os.path.join(folder, "tmp"), force_tf_compat_v1=False):
        transform_fn = ((instances, raw_metadata)
                        | tft_beam.AnalyzeDataset(
                            lambda inputs: preprocessing.preprocessing_fn(inputs, custom_config)))
        _ = transform_fn | tft_beam.WriteTransformFn(folder)
    # Where the Transform component keeps the raw schema; TFTransformOutput reads it from there.
    metadata_io.write_metadata(raw_metadata,
                               os.path.join(folder, tft.TFTransformOutput.RAW_METADATA_DIR))
    return folder


def build_sample_saved_model(export_dir: str, work_dir: str, net: str = nets.LAB_FCN,
                             seed: int = SAMPLE_SEED, unet_base_filters: int = 4) -> str:
    """Exports an untrained ``net`` with the pipeline's signatures to ``export_dir``.

    Weights are seeded (``tf.keras.utils.set_random_seed``, as ``run_fn`` does), so the same
    arguments give the same model.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    from trainer import signatures

    transform_dir = write_transform_output(os.path.join(work_dir, "transform_graph"))
    tf.keras.utils.set_random_seed(seed)
    model = nets.build_model(net, unet_base_filters=unet_base_filters)
    # Untrained logits sit near 0 (probabilities near 0.5); scaled up, the masks show shapes.
    logits = model.get_layer(LOGITS_LAYER)
    logits.set_weights([w * LOGIT_SCALE for w in logits.get_weights()])
    model.save(export_dir, save_format="tf",
               signatures=signatures.build_signatures(model, tft.TFTransformOutput(transform_dir)))
    return export_dir


def sample_batch(count: int = 2, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Generated images ``[count, 256, 256]`` int64, as the records hold them."""
    return np.stack([image for _, image, _ in sample_slices(count, seed)]).astype(np.int64)
