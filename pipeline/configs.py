"""Every tunable default of the pipeline, in one place; runners and the CLI read them from here.

Nothing here reads the environment or touches the file system: paths are built from arguments.
"""
import os
from typing import Any, Dict, Optional

from trainer import config as trainer_config

PIPELINE_NAME = "lv-segmentation"
# The name TF Serving serves the model under: <serving_root>/<MODEL_NAME>/<version>/.
MODEL_NAME = "lv_segmentation"

# The local orchestrators (pipeline/local_runner.py): TFX's BeamDagRunner, the default, or its
# LocalDagRunner.
BEAM_RUNNER = "beam"
LOCAL_RUNNER = "local"
LOCAL_RUNNERS = (BEAM_RUNNER, LOCAL_RUNNER)
DEFAULT_LOCAL_RUNNER = BEAM_RUNNER

# Defaults of the local runs (relative to the working directory, as `make run` uses them).
DEFAULT_DATA_ROOT = os.path.join("data", "synthetic")
DEFAULT_OUTPUT_ROOT = "outputs"
# The real patients the repository carries (Sunnybrook Cardiac Data, CC0; its README.md gives the
# licence, citation and layout): `make run` trains on them, tests and benchmarks read them.
BUNDLED_SUBSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data", "sunnybrook-subset")

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

# Training: total steps (TFX TrainArgs); the rest is trainer.config.TrainingConfig.
DEFAULT_TRAIN_STEPS = 300
DEFAULT_TRAINING = trainer_config.TrainingConfig()
DEFAULT_NORMALIZATION = trainer_config.DEFAULT_NORMALIZATION


def dicom_run_defaults() -> Dict[str, Any]:
    """What a run on real DICOMs (usually a few patients) changes from the general defaults:
    ``train_steps`` and TrainingConfig fields, each measured on the Sunnybrook subset by
    leaving one patient out over three seeds (docs/decisions.md,
    docs/experiments/2026-12-07-one-network.md). Half of the training examples are generated
    slices, from 60 generated patients; an elastic deformation of 4 px when augmenting
    (trainer.augment); the weights averaged over the last quarter of the run
    (trainer.weight_averaging); and the exported model averages its prediction over the four
    flips of the image (trainer.tta). One network: an ensemble (``--ensemble-size``) did no
    better and costs three times the training and the serving."""
    return {"train_steps": 540, "synthetic_mix": 0.5, "synthetic_patients": 60,
            "elastic_pixels": 4.0, "average_last": 0.25, "test_time_flips": True}


# The gate: a model is pushed only if its eval Dice is at least MIN_DICE and at most
# MAX_DICE_DROP below the Dice of the model being served (0 = no regression allowed).
MIN_DICE = 0.85
MAX_DICE_DROP = 0.0
# MIN_DICE of a run on real DICOMs (`make run`: two patients train, one evaluates). One held-out
# patient's 18-20 slices move its Dice by several points with the seed: the default recipe's
# leave-one-patient-out figures over three seeds run from 0.81 to 0.91 (docs/decisions.md), so a
# model under 0.8 is a failed run, not an unlucky one.
DICOM_MIN_DICE = 0.8
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
# docs/pipeline.md ("Local runners") for multi-processing, docs/kubeflow.md for Flink, Spark and
# Dataflow, docs/costs.md for the measurement.
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
    trainer_config.TrainingConfig.from_custom_config(config)  # fail here, not inside the Trainer
    return config
