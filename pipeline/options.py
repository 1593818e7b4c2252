"""The training and gate options of the command line, declared once.

``lvseg run`` and ``lvseg kubeflow compile`` (and the benchmarks) add them with
:func:`add_training_options` and :func:`add_gate_options`, and turn them into the shared
:class:`pipeline.settings.PipelineSettings` with :func:`settings_from_args`. An option left out
takes the general default, or, on a run over real DICOMs, the one measured for a few real
patients (``configs.dicom_run_defaults``). Adding a TrainingConfig field here adds it everywhere.
No TensorFlow or TFX at import: ``lvseg --help`` builds these parsers.
"""
import argparse
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

from pipeline import configs
from pipeline.settings import PipelineSettings
from trainer import config as trainer_config


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str
    field: str  # the TrainingConfig field (or "train_steps": TFX's TrainArgs)
    type: Callable[[str], Any]
    help: str
    choices: Optional[Tuple[str, ...]] = None
    metavar: Optional[str] = None


TRAIN_STEPS = "train_steps"
TRAINING_OPTIONS = (
    Option("--model", "model", str, "the network: the U-Net, or the lab's transpose-conv net",
           choices=trainer_config.MODEL_NAMES),
    Option("--train-steps", TRAIN_STEPS, int, "total training steps (TFX TrainArgs)",
           metavar="N"),
    Option("--epochs", "epochs", int, "the steps are spread over this many epochs (one "
           "validation point each)", metavar="N"),
    Option("--batch-size", "batch_size", int,
           "the global batch, split evenly over the replicas training in sync", metavar="N"),
    Option("--learning-rate", "learning_rate", float, "Adam's initial rate, decaying to 0 over "
           "the run (cosine)", metavar="RATE"),
    Option("--seed", "seed", int, "seeds weights, shuffling, augmentation and generated slices",
           metavar="N"),
    Option("--dice-loss-weight", "dice_loss_weight", float, "loss = cross-entropy + this x "
           "(1 - soft Dice)", metavar="W"),
    Option("--unet-norm", "unet_norm", str, "the U-Net's normalisation layers",
           choices=trainer_config.NORM_LAYERS),
    Option("--synthetic-mix", "synthetic_mix", float, "share of training examples drawn from "
           "generated slices", metavar="SHARE"),
    Option("--synthetic-patients", "synthetic_patients", int, "generated patients (13 slices "
           "each) the mixed-in slices come from", metavar="N"),
    Option("--elastic-pixels", "elastic_pixels", float, "elastic deformation when augmenting: "
           "standard deviation of the displacement, 0 = off", metavar="PIXELS"),
    Option("--max-gain-change", "max_gain_change", float, "augmentation multiplies the "
           "normalised image by a gain drawn from [1 - X, 1 + X]", metavar="X"),
    Option("--max-gamma-change", "max_gamma_change", float, "augmentation raises the "
           "normalised image to a gamma drawn from [1 - X, 1 + X]", metavar="X"),
    Option("--average-last", "average_last", float, "stochastic weight averaging: export the "
           "mean of the weights over this share of the run's last steps (0 = off)",
           metavar="SHARE"),
    Option("--averaging-learning-rate", "averaging_learning_rate", float, "the constant "
           "learning rate while weights are averaged", metavar="RATE"),
    Option("--ensemble-size", "ensemble_size", int, "train N networks (seeds seed, seed + 1, "
           "...) and export one model averaging their LV probabilities: N times the training "
           "and the serving work", metavar="N"),
)
# A boolean TrainingConfig field, as --flag / --no-flag.
FLAG_OPTIONS = (
    Option("--test-time-flips", "test_time_flips", bool, "export a model that averages its LV "
           "probability over the four flips of each image (four forward passes per image)"),
)


def general_default(field: str) -> Any:
    if field == TRAIN_STEPS:
        return configs.DEFAULT_TRAIN_STEPS
    return getattr(configs.DEFAULT_TRAINING, field)


def _default_text(field: str, dicom: bool) -> str:
    text = f"default {general_default(field)}"
    dicom_value = configs.dicom_run_defaults().get(field)
    if dicom and dicom_value is not None and dicom_value != general_default(field):
        text += f"; {dicom_value} on real DICOMs (--dicom-root)"
    return text


def add_training_options(parser: argparse.ArgumentParser, dicom: bool = False) -> None:
    """The TrainingConfig and train-steps options. ``dicom``: the command can run on DICOMs,
    so the help names their defaults too."""
    group = parser.add_argument_group("training")
    for option in TRAINING_OPTIONS:
        group.add_argument(option.flag, dest=option.field, type=option.type, default=None,
                           choices=option.choices, metavar=option.metavar,
                           help=f"{option.help} ({_default_text(option.field, dicom)})")
    for option in FLAG_OPTIONS:
        group.add_argument(option.flag, dest=option.field, default=None,
                           action=argparse.BooleanOptionalAction,
                           help=f"{option.help} ({_default_text(option.field, dicom)})")
    group.add_argument("--normalization", choices=trainer_config.NORMALIZATIONS,
                       default=configs.DEFAULT_NORMALIZATION,
                       help="the Transform's image scaling: by the image's own 99th percentile, "
                            "or the lab's 1/1024 (default %(default)s)")


def add_gate_options(parser: argparse.ArgumentParser, dicom: bool = False) -> None:
    """The gate's options. ``dicom``: the command can run on DICOMs, so the help names their
    default too."""
    group = parser.add_argument_group("the gate (a model is pushed only if it passes)")
    dicom_text = f"; {configs.DICOM_MIN_DICE} on real DICOMs (--dicom-root)" if dicom else ""
    group.add_argument("--min-dice", type=float, default=None, metavar="DICE",
                       help=f"eval Dice at least this (default {configs.MIN_DICE}{dicom_text})")
    group.add_argument("--max-dice-drop", type=float, default=configs.MAX_DICE_DROP,
                       metavar="DROP", help="eval Dice at most this below the served model's "
                                            "(default %(default)s)")
    slice_gate = group.add_mutually_exclusive_group()
    slice_gate.add_argument(
        "--max-slice-dice-drop", type=float, default=configs.MAX_SLICE_DICE_DROP,
        metavar="DROP", help="on each LV size bucket (empty/small/mid/large), eval Dice at most "
                             "this below the served model's on that bucket (default "
                             "%(default)s)")
    slice_gate.add_argument("--no-slice-gate", action="store_true",
                            help="gate on overall Dice only")


def add_schema_options(parser: argparse.ArgumentParser, default_schema: str,
                       where: str) -> None:
    schema = parser.add_mutually_exclusive_group()
    schema.add_argument("--schema", default=default_schema,
                        help=f"curated schema to validate against, {where} (default "
                             "%(default)s)")
    schema.add_argument("--infer-schema", action="store_true",
                        help="infer the schema with SchemaGen instead of importing one")


def training_settings(args: argparse.Namespace, dicom: bool = False) -> Tuple[int, Dict]:
    """(train steps, TrainingConfig overrides) from the options: given, else the DICOM-run
    default on a DICOM run, else the general default."""
    dicom_defaults = configs.dicom_run_defaults() if dicom else {}
    values = {}
    for option in TRAINING_OPTIONS + FLAG_OPTIONS:
        given = getattr(args, option.field)
        values[option.field] = (given if given is not None else
                                dicom_defaults.get(option.field, general_default(option.field)))
    return values.pop(TRAIN_STEPS), values


def command_line(train_steps: int, training: Dict[str, Any]) -> List[str]:
    """The training options that give ``train_steps`` and the TrainingConfig fields of
    ``training`` (each field these options declare), e.g. to start ``lvseg run`` with them."""
    values = dict(training, **{TRAIN_STEPS: train_steps})
    args = []
    for option in TRAINING_OPTIONS:
        if option.field in values:
            args += [option.flag, str(values[option.field])]
    for option in FLAG_OPTIONS:
        if option.field in values:
            args.append(option.flag if values[option.field] else
                        "--no-" + option.flag[len("--"):])
    return args


def settings_from_args(args: argparse.Namespace, dicom: bool = False,
                       **fields) -> PipelineSettings:
    """The shared settings of ``lvseg run`` and ``lvseg kubeflow compile``; ``fields`` are the
    command's own (pipeline name, ...)."""
    train_steps, training = training_settings(args, dicom)
    return PipelineSettings(
        schema_path=None if args.infer_schema else args.schema,
        train_steps=train_steps,
        training=training,
        normalization=args.normalization,
        min_dice=(args.min_dice if args.min_dice is not None else
                  configs.DICOM_MIN_DICE if dicom else configs.MIN_DICE),
        max_dice_drop=args.max_dice_drop,
        max_slice_dice_drop=None if args.no_slice_gate else args.max_slice_dice_drop,
        enable_cache=not args.no_cache,
        **fields)
