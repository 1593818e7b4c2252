"""The Evaluator's TFMA configuration: Dice on the eval split, and the gate thresholds.

TFMA feeds the raw eval examples through the model's ``transform_features`` signature to get the
labels, and reads the LV probabilities of ``serving_default``; the Dice metric is
:class:`trainer.dice.DiceCoefficient`, the one training reports.

The gate: the model is blessed only if Dice >= ``min_dice`` (value threshold) and Dice >=
baseline Dice - ``max_dice_drop`` (change threshold against the latest blessed model). On the
first run there is no baseline and TFX judges the value threshold alone.
"""
import json

import tensorflow_model_analysis as tfma

from pipeline import configs
from trainer import dice, preprocessing, signatures


def build_eval_config(min_dice: float = configs.MIN_DICE,
                      max_dice_drop: float = configs.MAX_DICE_DROP) -> tfma.EvalConfig:
    if not 0.0 <= max_dice_drop:
        raise ValueError(f"max_dice_drop must be >= 0, got {max_dice_drop}")
    dice_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_dice}),
        # TFMA compares candidate - baseline against this bound; a hair below zero so an equal
        # Dice (the same model evaluated again) is not called a regression.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_dice_drop - 1e-9}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=signatures.SERVING_DEFAULT,
            preprocessing_function_names=[signatures.TRANSFORM_FEATURES],
            label_key=preprocessing.LABEL_FEATURE,
            prediction_key=signatures.PROBABILITIES_OUTPUT)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name=configs.DICE_METRIC_CLASS,
                              module=configs.DICE_METRIC_MODULE,
                              config=json.dumps({"name": dice.METRIC_NAME}),
                              threshold=dice_threshold),
        ])])
