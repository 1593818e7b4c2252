"""Serving signatures of the exported SavedModel.

=======================  ==========================================  ===========================
signature                input                                       output
=======================  ==========================================  ===========================
``serving_default``      ``examples``: serialized lab-schema         ``probabilities`` float32
                         tf.Examples ``[N]`` (only ``image_raw`` is  ``[N, 256, 256]`` (LV),
                         read), the TFX convention                   ``mask`` int32 ``[N, 256,
                                                                     256]`` (1 = LV), the
                                                                     post-processed answer
``serving_raw_image``    ``image``: pixel values ``[N, 256, 256]``   same as above
                         int64, as the records hold them
``transform_features``   ``examples``: serialized tf.Examples with   the transformed features
                         labels (``pixel_spacing`` optional)         (``image``, ``label``) and
                                                                     the evaluation features
                                                                     below; the Evaluator reads
                                                                     labels and slices here
=======================  ==========================================  ===========================

Both prediction signatures run the transform graph saved by the Transform component; the raw one
first encodes the pixels into ``image_raw`` bytes in the graph, so there is one normalisation,
never a copy of it. ``probabilities`` is the network's LV probability, averaged over the four
flips of the image when the model was trained with ``test_time_flips`` (:mod:`trainer.tta`);
``mask`` is :func:`trainer.postprocess.lv_mask` of it (one region, its convex hull): the
answer services use and the Evaluator scores.

Evaluation features (``transform_features`` only; requests to the prediction signatures carry
nothing but ``image_raw``):

- ``lv_size`` string ``[N]``: the LV size bucket of the expert mask
  (:func:`trainer.slices.lv_size_bucket`), the slice the Evaluator gates per bucket on;
- ``pixel_area_mm2`` float32 ``[N]``: mm^2 of one pixel (row spacing x column spacing) from the
  optional ``pixel_spacing`` feature, **0 when the example has none** (the generated data, the
  lab's records). The curated schema declares ``pixel_spacing`` as two floats with presence 0, so
  Transform's raw feature spec holds it as a VarLenFeature (and an inferred schema on data
  without it not at all): the signature parses it with its own spec, a fixed ``[2]`` with a
  ``[0, 0]`` default (the schema, checked before Transform, guarantees two values).
  :mod:`trainer.area_metric` turns it into the LV area error in mm^2.
"""
import tensorflow as tf
import tensorflow_transform as tft

from dataset import records
from trainer import dice, postprocess, preprocessing, slices, tta
from trainer.config import (EXAMPLES_INPUT, IMAGE_INPUT, MASK_OUTPUT,  # noqa: F401
                            PROBABILITIES_OUTPUT, SERVING_DEFAULT, SERVING_RAW_IMAGE,
                            TRANSFORM_FEATURES)

PIXEL_AREA_FEATURE = "pixel_area_mm2"
# Absent in most records: parsed with a default of 0 mm, which pixel_area_mm2 reads as unknown.
PIXEL_SPACING_SPEC = tf.io.FixedLenFeature([2], tf.float32, default_value=[0.0, 0.0])



def _probabilities(model: tf.keras.Model, images: tf.Tensor, test_time_flips: bool) -> tf.Tensor:
    if test_time_flips:
        return tta.flip_averaged_probability(model, images)
    return dice.lv_probability(model(images, training=False))


def _predict(model: tf.keras.Model, raw_features: dict, test_time_flips: bool) -> dict:
    images = model.tft_layer(raw_features)[preprocessing.IMAGE_FEATURE]
    # TensorFlow's CPU convolutions fail on an empty batch (BiasAdd); a request of no images
    # is answered with no outputs, as TF Serving, which runs the graph whatever the batch size,
    # then answers OK.
    probabilities = tf.cond(tf.shape(images)[0] > 0,
                            lambda: _probabilities(model, images, test_time_flips),
                            lambda: tf.zeros_like(images[..., 0]))
    return {PROBABILITIES_OUTPUT: probabilities, MASK_OUTPUT: postprocess.lv_mask(probabilities)}


def pixel_area_mm2(pixel_spacing) -> tf.Tensor:
    """mm^2 per pixel ``[N]`` from ``(row mm, column mm)`` spacings ``[N, 2]``; 0 where a spacing
    is not positive (the parse default of an example without ``pixel_spacing``)."""
    spacing = tf.reshape(tf.cast(pixel_spacing, tf.float32), [-1, 2])
    known = tf.reduce_all(spacing > 0.0, axis=1)
    return tf.where(known, spacing[:, 0] * spacing[:, 1], tf.zeros_like(spacing[:, 0]))


def evaluation_features(label, pixel_spacing) -> dict:
    """The features ``transform_features`` adds for the Evaluator, from the transformed label
    ``[N, 256, 256]`` and the parsed ``pixel_spacing`` ``[N, 2]`` (see the module docstring)."""
    return {slices.LV_SIZE_FEATURE: slices.lv_size_bucket(label),
            PIXEL_AREA_FEATURE: pixel_area_mm2(pixel_spacing)}


def parse_labelled_examples(examples, labelled_spec: dict):
    """Parses serialized examples for ``transform_features``: ``(raw features for the transform
    graph, pixel spacing [N, 2])``."""
    parsed = tf.io.parse_example(
        examples, {**labelled_spec, records.PIXEL_SPACING_KEY: PIXEL_SPACING_SPEC})
    spacing = parsed.pop(records.PIXEL_SPACING_KEY)
    return parsed, spacing


def build_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                     test_time_flips: bool = False) -> dict:
    """The signatures above, as functions with input signatures for ``model.save(signatures=...)``;
    ``test_time_flips`` bakes flip averaging (:mod:`trainer.tta`) into the prediction ones."""
    # Tracked as an attribute so the transform graph's assets are saved with the model.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    image_spec = raw_feature_spec[records.IMAGE_KEY]
    # Only what the prediction needs is parsed: requests need not carry labels, names or sizes.
    image_only_spec = {records.IMAGE_KEY: image_spec}
    labelled_spec = {key: raw_feature_spec[key] for key in (records.IMAGE_KEY, records.LABEL_KEY)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(examples):
        return _predict(model, tf.io.parse_example(examples, image_only_spec), test_time_flips)

    @tf.function(input_signature=[
        tf.TensorSpec([None, records.IMAGE_SIZE, records.IMAGE_SIZE], tf.int64, name=IMAGE_INPUT)])
    def serve_raw_image(image):
        image_raw = preprocessing.encode_image_raw(image)
        image_raw = tf.reshape(image_raw, [-1] + list(image_spec.shape))
        return _predict(model, {records.IMAGE_KEY: image_raw}, test_time_flips)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def transform_features(examples):
        raw_features, spacing = parse_labelled_examples(examples, labelled_spec)
        transformed = dict(model.tft_layer(raw_features))
        transformed.update(evaluation_features(transformed[preprocessing.LABEL_FEATURE], spacing))
        return transformed

    # The functions themselves, not their concrete functions: TensorFlow cannot save a concrete
    # function that reads a distributed (multi-worker) model's variables, but traces these
    # (each has an input signature) itself when saving.
    return {
        SERVING_DEFAULT: serve_examples,
        SERVING_RAW_IMAGE: serve_raw_image,
        TRANSFORM_FEATURES: transform_features,
    }
