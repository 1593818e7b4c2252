"""The Trainer's and the Transform's settings, importable without TensorFlow.

The pipeline definition, the CLIs and the Kubeflow compiler read defaults and check settings
here before any component runs; the modules that train (``trainer.model``, ``trainer.nets``,
``trainer.augment``, ``trainer.preprocessing``) take their names and ranges from here too.
"""
import dataclasses
from typing import List, Optional

from dataset import records

# Networks (trainer.nets) and the U-Net's normalisation layers.
LAB_FCN = "lab_fcn"
UNET = "unet"
MODEL_NAMES = (UNET, LAB_FCN)
BATCH_NORM = "batch"
GROUP_NORM = "group"  # no running statistics: the same in training and inference
NORM_LAYERS = (BATCH_NORM, GROUP_NORM)

# The Transform's normalisation of each image (trainer.preprocessing): by its own 99th
# percentile intensity, or the lab's fixed 1/1024.
PERCENTILE_NORMALIZATION = "percentile"
LAB_NORMALIZATION = "lab"
NORMALIZATIONS = (PERCENTILE_NORMALIZATION, LAB_NORMALIZATION)
DEFAULT_NORMALIZATION = PERCENTILE_NORMALIZATION
LAB_SCALE = 1.0 / 1024.0
PERCENTILE = 99.0

# The exported model's interface (trainer.signatures builds it; serving, the Evaluator and the
# checks call it): signatures, their inputs and outputs.
SERVING_DEFAULT = "serving_default"  # serialized lab-schema tf.Examples in
SERVING_RAW_IMAGE = "serving_raw_image"  # pixel values [N, 256, 256] int64 in
TRANSFORM_FEATURES = "transform_features"  # the Transform's features, for the Evaluator
EXAMPLES_INPUT = "examples"
IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
MASK_OUTPUT = "mask"


def percentile_rank_from_top(num_pixels: int = records.NUM_PIXELS) -> int:
    """The ``PERCENTILE`` intensity of an image is its k-th largest pixel value, this k (the
    Transform's normalisation, and the drift check's statistic of served images)."""
    return int(round(num_pixels * (100.0 - PERCENTILE) / 100.0)) + 1


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The ranges of the training-time augmentation (``trainer.augment``)."""

    flips: bool = True
    max_rotation_degrees: float = 15.0
    max_scale_change: float = 0.1  # scale drawn from [1 - x, 1 + x]
    max_shift_pixels: float = 12.0
    # Intensity jitter. After per-image normalisation a real slice's blood pool still varies:
    # over the 56 Sunnybrook subset slices its mean runs from 0.26 to 0.69 of the 99th percentile.
    # SCD0000101's mid slices (0.61-0.69, and the most uneven inside the mask) sit at the top of
    # that range, above nearly every slice of the other two patients; with gain 0.15 / gamma 0.25,
    # a model trained on those two missed 8 of them with seed 1 (Dice 0.52). With these ranges:
    # 0.82, and that patient's spread over three seeds 0.52-0.87 -> 0.81-0.87
    # (docs/experiments/2026-11-29-leave-one-patient-out.md).
    max_gain_change: float = 0.3  # intensity multiplied by [1 - x, 1 + x]
    max_gamma_change: float = 0.4  # gamma drawn from [1 - x, 1 + x]
    # Standard deviation in pixels of the elastic displacement at its control points; 0 = off.
    elastic_pixels: float = 0.0



# custom_config keys that TFX's Google Cloud extensions read (components/vertex_training.py).
TFX_EXTENSION_KEY_PREFIX = "ai_platform_"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The Trainer's hyperparameters, passed as the component's ``custom_config``.

    The number of steps is TFX's own ``TrainArgs.num_steps``; it is spread over ``epochs`` so the
    validation Dice and TensorBoard get a point per epoch.
    """

    model: str = UNET
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3  # Adam's initial rate; decays to 0 over the run (cosine)
    dice_loss_weight: float = 1.0  # loss = cross-entropy + weight * (1 - soft Dice)
    augment: bool = True  # flips, rotation, scaling, shifts, gain and gamma (trainer.augment)
    elastic_pixels: float = 0.0  # elastic deformation when augmenting (trainer.augment); 0 = off
    # intensity jitter when augmenting: gain in [1 - x, 1 + x], gamma in [1 - y, 1 + y]
    max_gain_change: float = AugmentConfig.max_gain_change
    max_gamma_change: float = AugmentConfig.max_gamma_change
    unet_base_filters: int = 16
    unet_norm: str = BATCH_NORM  # or GROUP_NORM (docs/decisions.md)
    seed: Optional[int] = 42  # seeds weights and shuffling; None for a different run each time
    shuffle_buffer: int = 1024
    # Share of training examples drawn from generated slices (dataset.synthetic_data), the rest
    # from the training split. With a few real patients, mixing in generated anatomy regularises
    # the net (measured on the Sunnybrook subset: docs/decisions.md).
    synthetic_mix: float = 0.0
    synthetic_patients: int = 20  # generated patients (13 slices each) when synthetic_mix > 0
    # A deep ensemble: this many networks, trained one after the other with seeds seed, seed + 1,
    # ... (weights, order of examples, augmentation, generated slices), exported as one model
    # that averages their LV probabilities (nets.build_ensemble). Each member costs a training
    # run and a forward pass per served image (docs/experiments/2026-12-02-ensemble.md).
    ensemble_size: int = 1
    # Stochastic weight averaging (trainer.weight_averaging): the exported weights are the mean of
    # those the net passed through over this share of the run's last steps, at a constant
    # learning rate of averaging_learning_rate; 0 = off (the weights of the last step).
    average_last: float = 0.0
    averaging_learning_rate: float = 2.5e-4
    # Export option: the serving signatures average the LV probability over the four flips of
    # the image (trainer.tta); four forward passes per image (docs/decisions.md).
    test_time_flips: bool = False

    @classmethod
    def from_custom_config(cls, custom_config: Optional[dict]) -> "TrainingConfig":
        """The settings in the Trainer's ``custom_config``. Keys of TFX's Vertex AI training
        extension (``ai_platform_*``, the custom job that runs the Trainer), which it passes on to
        every replica, are not training settings and are skipped."""
        custom_config = {key: value for key, value in (custom_config or {}).items()
                         if not key.startswith(TFX_EXTENSION_KEY_PREFIX)}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        config = cls(**custom_config)
        if config.unet_norm not in NORM_LAYERS:
            raise ValueError(f"unet_norm must be one of {NORM_LAYERS}, "
                             f"got {config.unet_norm!r}")
        if config.model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {MODEL_NAMES}, got {config.model!r}")
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
        if not 0.0 <= config.average_last < 1.0:
            raise ValueError(f"average_last must be in [0, 1), got {config.average_last}")
        if config.average_last and not (
                0 < config.averaging_learning_rate <= config.learning_rate):
            raise ValueError("averaging_learning_rate must be positive and at most learning_rate "
                             f"({config.learning_rate}), got {config.averaging_learning_rate}")
        if not 0.0 <= config.synthetic_mix < 1.0:
            raise ValueError(f"synthetic_mix must be in [0, 1), got {config.synthetic_mix}")
        if config.synthetic_mix and config.synthetic_patients < 1:
            raise ValueError("synthetic_patients must be at least 1 when synthetic_mix > 0")
        return config

    def augment_config(self) -> AugmentConfig:
        """The augmentation these settings ask for (geometry ranges are the module's)."""
        return AugmentConfig(elastic_pixels=self.elastic_pixels,
                             max_gain_change=self.max_gain_change,
                             max_gamma_change=self.max_gamma_change)


def member_configs(config: TrainingConfig) -> List[TrainingConfig]:
    """The training settings of each ensemble member: ``config`` with seeds ``seed``,
    ``seed + 1``, ... (all ``None`` when ``config.seed`` is; the first member is ``config``)."""
    return [dataclasses.replace(config, seed=None if config.seed is None else config.seed + index)
            for index in range(config.ensemble_size)]
