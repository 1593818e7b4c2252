"""Every tunable default of the pipeline, in one place; runners and the CLI read them from here.

Nothing here reads the environment or touches the file system: paths are built from arguments.
"""
import os
from typing import Dict, Optional

from trainer import model as trainer_model
from trainer import preprocessing

PIPELINE_NAME = "lv-segmentation"
# The name TF Serving serves the model under: <serving_root>/<MODEL_NAME>/<version>/.
MODEL_NAME = "lv_segmentation"

# Defaults of the local runs (relative to the working directory, as `make run` uses them).
DEFAULT_DATA_ROOT = os.path.join("data", "synthetic")
DEFAULT_OUTPUT_ROOT = "outputs"

# ImportExampleGen's input: one folder per split under the data root, split by patient upstream.
# A data root without these folders is read as one pattern and hash-split (see create_pipeline).
SPLIT_PATTERNS: Dict[str, str] = {"train": "train/*", "eval": "eval/*"}
HASH_SPLIT_BUCKETS: Dict[str, int] = {"train": 9, "eval": 1}

CURATED_SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema",
                                   "schema.pbtxt")

# Functions the components load by dotted path from the installed package (no module_file, so
# the same definition compiles for Kubeflow without building wheels).
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.model.run_fn"
DICE_METRIC_MODULE = "trainer.dice"
DICE_METRIC_CLASS = "DiceCoefficient"
# Reported beside Dice, never gated on: IoU and pixel accuracy per image, LV area error.
SEG_METRICS_MODULE = "trainer.seg_metrics"
IOU_METRIC_CLASS = "IntersectionOverUnion"
PIXEL_ACCURACY_METRIC_CLASS = "PixelAccuracy"
AREA_METRIC_MODULE = "trainer.area_metric"
AREA_METRIC_CLASS = "LVAreaError"

# Training: total steps (TFX TrainArgs); the rest is trainer.model.TrainingConfig.
DEFAULT_TRAIN_STEPS = 300
DEFAULT_TRAINING = trainer_model.TrainingConfig()
DEFAULT_NORMALIZATION = preprocessing.DEFAULT_NORMALIZATION
# Real DICOMs (usually a few patients): half of the training examples are generated slices, and
# training is longer, since half of it is spent on those (measured on the Sunnybrook subset, see
# the README's "Training on real patients").
DICOM_SYNTHETIC_MIX = 0.5
DICOM_TRAIN_STEPS = 600
# ... and the exported model averages its prediction over the four flips of the image
# (trainer.tta; measured on the Sunnybrook subset, README).
DICOM_TEST_TIME_FLIPS = True
# ... and training augments with an elastic deformation of this many pixels (trainer.augment;
# measured on the Sunnybrook subset, README).
DICOM_ELASTIC_PIXELS = 4.0
# ... and trains a deep ensemble of this many networks, exported as one model averaging their LV
# probabilities (trainer.nets.build_ensemble): three times the training and the serving work
# (measured on the Sunnybrook subset, README).
DICOM_ENSEMBLE_SIZE = 3

# The gate: a model is pushed only if its eval Dice is at least MIN_DICE and at most
# MAX_DICE_DROP below the Dice of the model being served (0 = no regression allowed).
MIN_DICE = 0.85
MAX_DICE_DROP = 0.0
# The slice gate: on each LV size bucket (empty / small / mid / large, trainer.slices), Dice may
# be at most this below the served model's on the same bucket; None disables it. Larger than
# MAX_DICE_DROP because a bucket holds few images (the default eval split: 13 large, 7 mid,
# 4 small, 2 empty), so its mean moves with one image; three training seeds differed by at most
# 0.006 per bucket on the default data. See pipeline/eval_config.py.
MAX_SLICE_DICE_DROP: Optional[float] = 0.05

# Kubeflow pipeline parameters (TFX RuntimeParameters), each a whole proto or dict as JSON,
# since TFX 1.16 takes a RuntimeParameter for nothing smaller: training steps (TrainArgs),
# the Dice gate (TFMA EvalConfig) and the model choice with the other TrainingConfig fields.
TRAIN_ARGS_PARAMETER = "train_args"
EVAL_CONFIG_PARAMETER = "eval_config"
TRAINING_CONFIG_PARAMETER = "training_config"

# Beam settings of the data components. In-memory DirectRunner is quickest for the lab-sized set;
# see the README for multi-processing, Flink, Spark and Dataflow.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")

METADATA_FILE = "metadata.sqlite"  # ML Metadata's SQLite store, in the pipeline root


def pipeline_root(output_root: str, pipeline_name: str = PIPELINE_NAME) -> str:
    return os.path.join(output_root, "pipeline_root", pipeline_name)


def metadata_path(output_root: str, pipeline_name: str = PIPELINE_NAME) -> str:
    """The SQLite ML Metadata store, under the pipeline root."""
    return os.path.join(pipeline_root(output_root, pipeline_name), METADATA_FILE)


def serving_model_dir(output_root: str, model_name: str = MODEL_NAME) -> str:
    """Where versions are pushed: TF Serving's --model_base_path for ``model_name``."""
    return os.path.join(output_root, "serving", model_name)


def training_custom_config(overrides: Optional[dict] = None) -> dict:
    """The Trainer's custom_config: the TrainingConfig defaults with ``overrides`` applied."""
    config = {**DEFAULT_TRAINING.__dict__, **(overrides or {})}
    trainer_model.TrainingConfig.from_custom_config(config)  # fail here, not inside the Trainer
    return config
