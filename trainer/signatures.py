"""Serving signatures of the exported SavedModel.

=======================  ==========================================  ===========================
signature                input                                       output
=======================  ==========================================  ===========================
``serving_default``      ``examples``: serialized lab-schema         ``probabilities`` float32
                         tf.Examples ``[N]`` (only ``image_raw`` is  ``[N, 256, 256]`` (LV),
                         read), the TFX convention                   ``mask`` int32 ``[N, 256,
                                                                     256]`` (1 = LV)
``serving_raw_image``    ``image``: pixel values ``[N, 256, 256]``   same as above
                         int64, as the records hold them
``transform_features``   ``examples``: serialized tf.Examples with   the transformed features
                         labels                                      (``image``, ``label``); the
                                                                     Evaluator reads labels here
=======================  ==========================================  ===========================

Both prediction signatures run the transform graph saved by the Transform component; the raw one
first encodes the pixels into ``image_raw`` bytes in the graph, so there is one normalisation,
never a copy of it.
"""
import tensorflow as tf
import tensorflow_transform as tft

from trainer import dice, preprocessing, records

SERVING_DEFAULT = "serving_default"
SERVING_RAW_IMAGE = "serving_raw_image"
TRANSFORM_FEATURES = "transform_features"

EXAMPLES_INPUT = "examples"
IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
MASK_OUTPUT = "mask"


def _predict(model: tf.keras.Model, raw_features: dict) -> dict:
    transformed = model.tft_layer(raw_features)
    logits = model(transformed[preprocessing.IMAGE_FEATURE], training=False)
    probabilities = dice.lv_probability(logits)
    return {PROBABILITIES_OUTPUT: probabilities, MASK_OUTPUT: dice.lv_mask(probabilities)}


def build_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput) -> dict:
    """The signatures above, as concrete functions for ``model.save(signatures=...)``."""
    # Tracked as an attribute so the transform graph's assets are saved with the model.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    image_spec = raw_feature_spec[records.IMAGE_KEY]
    # Only what the prediction needs is parsed: requests need not carry labels, names or sizes.
    image_only_spec = {records.IMAGE_KEY: image_spec}
    labelled_spec = {key: raw_feature_spec[key] for key in (records.IMAGE_KEY, records.LABEL_KEY)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(examples):
        return _predict(model, tf.io.parse_example(examples, image_only_spec))

    @tf.function(input_signature=[
        tf.TensorSpec([None, records.IMAGE_SIZE, records.IMAGE_SIZE], tf.int64, name=IMAGE_INPUT)])
    def serve_raw_image(image):
        image_raw = preprocessing.encode_image_raw(image)
        image_raw = tf.reshape(image_raw, [-1] + list(image_spec.shape))
        return _predict(model, {records.IMAGE_KEY: image_raw})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, labelled_spec))

    return {
        SERVING_DEFAULT: serve_examples.get_concrete_function(),
        SERVING_RAW_IMAGE: serve_raw_image.get_concrete_function(),
        TRANSFORM_FEATURES: transform_features.get_concrete_function(),
    }
