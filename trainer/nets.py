"""The segmentation networks: the lab's transpose-convolution net and a small U-Net.

Both map a normalised image ``[B, 256, 256, 1]`` to per-pixel logits ``[B, 256, 256, 2]``
(class 0 = not LV, class 1 = LV), so the loss, the Dice metric and the serving signatures do not
care which one was trained; :func:`build_ensemble` makes one such model of several trained nets.
"""
from typing import Optional, Sequence

import tensorflow as tf

from dataset import records
from trainer import tf_env
from trainer.config import (BATCH_NORM, GROUP_NORM, LAB_FCN, MODEL_NAMES,  # noqa: F401
                            NORM_LAYERS, UNET)

tf_env.skip_autograph_for_tf_keras()  # before any Keras model is traced


_INPUT_SHAPE = (records.IMAGE_SIZE, records.IMAGE_SIZE, 1)
_FULL_RES_FILTERS = 8


def build_lab_fcn(name: str = LAB_FCN) -> tf.keras.Model:
    """The lab's net, layer for layer: two strided conv/pool stages, two 3x3 convs, a 1x1 class
    conv and one 31x31 transpose convolution with stride 16 back to full resolution."""
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=_INPUT_SHAPE, name="image")
    x = layers.Conv2D(100, 5, strides=2, padding="same", activation="relu")(inputs)
    x = layers.MaxPool2D(2)(x)
    x = layers.Conv2D(200, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.MaxPool2D(2)(x)
    x = layers.Conv2D(300, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(300, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(records.NUM_CLASSES, 1, padding="same")(x)
    logits = layers.Conv2DTranspose(records.NUM_CLASSES, 31, strides=16, padding="same",
                                    name="logits")(x)
    return tf.keras.Model(inputs, logits, name=name)


# Batch-norm statistics must settle within the few hundred steps a CPU run trains for; Keras'
# default momentum (0.99) leaves them mostly at their initial values, and the exported model
# then predicts no LV at all in inference mode (measured: eval Dice 0.08 instead of 0.97).
_BN_MOMENTUM = 0.9


_GROUPS = 8


def _norm(kind: str, name: str) -> tf.keras.layers.Layer:
    if kind == BATCH_NORM:
        return tf.keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=name)
    if kind == GROUP_NORM:
        return tf.keras.layers.GroupNormalization(groups=_GROUPS, name=name)
    raise ValueError(f"norm layer must be one of {NORM_LAYERS}, got {kind!r}")


def _conv_block(x, filters: int, name: str, norm: str = BATCH_NORM):
    for i in (1, 2):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                   name=f"{name}_conv{i}")(x)
        x = _norm(norm, f"{name}_{norm[0]}n{i}")(x)
        x = tf.keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(base_filters: int = 16, depth: int = 3, norm: str = BATCH_NORM,
               name: str = UNET) -> tf.keras.Model:
    """U-Net (Ronneberger et al. 2015) with transpose-convolution upsampling, sized for CPUs.

    A strided 3x3 stem halves the resolution first and the U-Net (``depth`` pooling steps,
    filters doubling from ``base_filters``) runs at 128x128; a 2x2 stride-2 transpose convolution
    returns to 256x256, where the image is concatenated back for one 3x3 refinement before the
    1x1 class layer. ``norm`` is batch norm (default) or group norm. Full-resolution
    convolutions with few channels are what CPUs run worst: a plain full-resolution U-Net trained
    at 3-4 images/s on 2 cores, this one at ~10.
    """
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=_INPUT_SHAPE, name="image")
    x = layers.Conv2D(base_filters, 3, strides=2, padding="same", activation="relu",
                      name="stem")(inputs)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, name=f"down{level}", norm=norm)
        skips.append(x)
        x = layers.MaxPool2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2 ** depth, name="bottom", norm=norm)
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, name=f"dec{level}", norm=norm)
    x = layers.Conv2DTranspose(_FULL_RES_FILTERS, 2, strides=2, padding="same",
                               name="up_full")(x)
    x = layers.Concatenate(name="skip_image")([x, inputs])
    x = layers.Conv2D(_FULL_RES_FILTERS, 3, padding="same", activation="relu", name="refine")(x)
    logits = layers.Conv2D(records.NUM_CLASSES, 1, name="logits")(x)
    return tf.keras.Model(inputs, logits, name=name)


def build_model(name: str, unet_base_filters: int = 16, unet_norm: str = BATCH_NORM,
                model_name: Optional[str] = None) -> tf.keras.Model:
    """The net called ``name`` (one of ``MODEL_NAMES``); the Keras model is called
    ``model_name`` (default ``name``), so the members of an ensemble differ."""
    if name == UNET:
        return build_unet(base_filters=unet_base_filters, norm=unet_norm,
                          name=model_name or name)
    if name == LAB_FCN:
        return build_lab_fcn(name=model_name or name)
    raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}")


ENSEMBLE = "ensemble"
_MIN_PROBABILITY = 1e-7  # keeps log() finite where every member is certain


def build_ensemble(members: Sequence[tf.keras.Model]) -> tf.keras.Model:
    """One model of several trained nets (names must differ): its logits are the log of the
    members' mean class probabilities, so their softmax, which the loss, Dice and the serving
    signatures take, is the members' average probability (a deep ensemble, Lakshminarayanan et
    al. 2017)."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    inputs = tf.keras.Input(shape=_INPUT_SHAPE, name="image")
    probabilities = [tf.nn.softmax(member(inputs, training=False), axis=-1)
                     for member in members]
    mean = tf.keras.layers.Average(name="mean_probability")(probabilities)
    logits = tf.math.log(tf.maximum(mean, _MIN_PROBABILITY))
    return tf.keras.Model(inputs, logits, name=ENSEMBLE)
