"""Training images/s: the TFX Trainer's ``run_fn`` against a plain Keras ``model.fit`` (the lab
notebook's way) on the same net, data, batch size and number of steps, in the same run.

    .venv/bin/python benchmarks/training_throughput.py [--pipeline-root DIR] [--net unet]
        [--steps 40 --epochs 2 --batch-size 8]

Transformed examples come from ``--pipeline-root`` (a pipeline root holding the Transform
component's outputs, e.g. one ``benchmarks/data_stages.py --keep-outputs`` left), else the
pipeline's data stages are run on ``--data-root`` first (not timed).

The two sides, each in a fresh Python process so neither inherits the other's state (op
determinism, thread pools, memory):

- ``run_fn``: TFX's own Trainer executor (``GenericExecutor.Do``) builds the real ``FnArgs`` from
  the Transform artifacts and calls ``trainer.model.run_fn``: tf.data over the transformed
  TFRecords (parsing, in-memory cache, shuffle, augmentation), seeding and op determinism, a
  validation pass per epoch, the TensorBoard callback, and the SavedModel export with the
  serving signatures (transform graph included).
- ``plain``: the same transformed examples decoded into numpy arrays first (not timed, as the lab
  loads its arrays before training), then ``trainer.training.build_compiled_model`` (same net, loss,
  optimizer and metric) and ``model.fit(x, y, batch_size, epochs, steps_per_epoch)``: no
  augmentation, no validation, no callbacks, no export.

Both sides get the same timing callback (``Model.fit`` is wrapped to add it, and ``Model.save``
to time the export), so three ratios come out (plain images/s over run_fn images/s, >1 means
run_fn is slower):

- ``steady_step``: the median training step after the first one, i.e. the input pipeline's
  augmentation and determinism against arrays, without one-off costs;
- ``fit``: the whole ``fit`` call: graph tracing, the first parse of the records into the cache,
  the validation passes and TensorBoard for run_fn;
- ``end_to_end``: everything each side does: run_fn from the executor's call to the exported
  SavedModel, plain from model build to the end of fit.

With few steps the one-off costs weigh more than in a 300-step run; ``projected_default_run``
scales the measured steady step time to the default step count (an estimate, labelled so).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, data_stages  # noqa: E402

RUN_FN = "run_fn"
PLAIN = "plain"
SIDES = (PLAIN, RUN_FN)
DEFAULT_STEPS = 40
DEFAULT_EPOCHS = 2
log = common.log_to_stderr("training")


# --- the timing hooks, the same on both sides ---------------------------------------------------


def _instrumented(timings: common.Timings):
    """Patches ``Model.fit`` (adds the timer, times the call) and ``Model.save`` (times it)."""
    import tensorflow as tf

    original_fit, original_save = tf.keras.Model.fit, tf.keras.Model.save

    def fit(self, *args, **kwargs):
        kwargs["callbacks"] = (list(kwargs.get("callbacks") or [])
                               + [common.timing_callback(timings)])
        started = time.perf_counter()
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            timings.fit_seconds += time.perf_counter() - started

    def save(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original_save(self, *args, **kwargs)
        finally:
            timings.export_seconds += time.perf_counter() - started

    return mock.patch.multiple(tf.keras.Model, fit=fit, save=save)


# --- the two sides ------------------------------------------------------------------------------


def _training_config(args) -> dict:
    from pipeline import configs
    return configs.training_custom_config(
        dict(model=args.net, epochs=args.epochs, batch_size=args.batch_size))


def run_run_fn_side(args, outputs: common.TransformOutputs, work_dir: str) -> dict:
    """TFX's Trainer executor calling ``trainer.model.run_fn`` on the Transform artifacts."""
    from tfx.components.trainer import executor as trainer_executor
    from tfx.types import artifact_utils, standard_artifacts, standard_component_specs as specs

    from pipeline import configs

    examples = standard_artifacts.Examples()
    examples.uri = outputs.transformed_examples
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = outputs.transform_graph
    schema = standard_artifacts.Schema()
    schema.uri = outputs.schema
    model = standard_artifacts.Model()
    model.uri = os.path.join(work_dir, "model")
    model_run = standard_artifacts.ModelRun()
    model_run.uri = os.path.join(work_dir, "model_run")
    exec_properties = {
        specs.TRAIN_ARGS_KEY: json.dumps({"num_steps": args.steps}),
        specs.EVAL_ARGS_KEY: "{}",  # as create_pipeline: EvalArgs(num_steps=None)
        specs.CUSTOM_CONFIG_KEY: json.dumps(_training_config(args)),
        specs.RUN_FN_KEY: configs.RUN_FN,
    }
    timings = common.Timings()
    with _instrumented(timings), common.stdout_to_stderr(), common.Stopwatch() as total:
        trainer_executor.GenericExecutor().Do(
            {specs.EXAMPLES_KEY: [examples], specs.TRANSFORM_GRAPH_KEY: [transform_graph],
             specs.SCHEMA_KEY: [schema]},
            {specs.MODEL_KEY: [model], specs.MODEL_RUN_KEY: [model_run]},
            exec_properties)
    return _side_result(args, timings, total.seconds)


def run_plain_side(args, outputs: common.TransformOutputs) -> dict:
    """The lab's way: arrays in memory, ``model.fit(x, y)``."""
    import tensorflow as tf

    from trainer import config as trainer_config, training as trainer_training

    with common.Stopwatch() as loading:
        images, labels = common.load_transformed_arrays(outputs, "train")
    config = trainer_config.TrainingConfig.from_custom_config(_training_config(args))
    epochs = min(args.epochs, args.steps)
    steps_per_epoch = math.ceil(args.steps / epochs)
    timings = common.Timings()
    with _instrumented(timings), common.stdout_to_stderr(), common.Stopwatch() as total:
        model = trainer_training.build_compiled_model(config, args.steps)
        model.fit(images, labels, batch_size=args.batch_size, epochs=epochs,
                  steps_per_epoch=steps_per_epoch, shuffle=True, verbose=2)
    del model
    tf.keras.backend.clear_session()
    result = _side_result(args, timings, total.seconds)
    result["array_loading_seconds_not_timed"] = common.rounded(loading.seconds)
    result["train_images_in_memory"] = int(images.shape[0])
    return result


def _side_result(args, timings: common.Timings, total_seconds: float) -> dict:
    import numpy as np

    images = timings.steps * args.batch_size
    steady = timings.step_seconds[1:] or timings.step_seconds
    median_step = float(np.median(steady))
    return {
        "steps": timings.steps,
        "images": images,
        "first_step_seconds": common.rounded(timings.step_seconds[0]),
        "median_step_seconds_after_first": common.rounded(median_step, 4),
        "steady_images_per_s": common.rounded(args.batch_size / median_step),
        "fit_seconds": common.rounded(timings.fit_seconds),
        "fit_images_per_s": common.rounded(images / timings.fit_seconds),
        "validation_seconds": common.rounded(timings.validation_seconds),
        "steps_seconds_total": common.rounded(sum(timings.step_seconds)),
        # fit's own time outside the steps and validation: callbacks (TensorBoard), epoch ends
        "fit_other_seconds": common.rounded(
            timings.fit_seconds - sum(timings.step_seconds) - timings.validation_seconds),
        "export_seconds": common.rounded(timings.export_seconds),
        "total_seconds": common.rounded(total_seconds),
        "end_to_end_images_per_s": common.rounded(images / total_seconds),
        "one_off_seconds": common.rounded(total_seconds - timings.steps * median_step),
        "peak_rss_mb": common.peak_rss_mb_of_this_process(),
    }


def _one_side(args) -> dict:
    from trainer import tf_env  # noqa: F401  (before TensorFlow)

    with tempfile.TemporaryDirectory(prefix=f"training-{args.side}-") as work_dir:
        outputs = data_stages.transform_outputs(args.pipeline_root, args.data_root, work_dir, log)
        log(f"{args.side}: {args.net}, {args.steps} steps of {args.batch_size} in "
            f"{args.epochs} epochs")
        if args.side == RUN_FN:
            return run_run_fn_side(args, outputs, work_dir)
        return run_plain_side(args, outputs)


# --- both sides, compared -------------------------------------------------------------------


def _run_side_in_subprocess(args, side: str, pipeline_root: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--side", side,
               "--pipeline-root", pipeline_root, "--net", args.net, "--steps", str(args.steps),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                               cwd=common.REPO_ROOT, check=True)
    return common.last_json_object(completed.stdout)


def _projected_seconds(side: dict, steps: int) -> float:
    return side["one_off_seconds"] + steps * side["median_step_seconds_after_first"]


def compare(args) -> dict:
    from pipeline import configs

    with tempfile.TemporaryDirectory(prefix="training-") as work_dir:
        pipeline_root = args.pipeline_root
        if not pipeline_root:
            from trainer import tf_env  # noqa: F401
            pipeline_root = data_stages.transform_outputs(None, args.data_root, work_dir,
                                                     log).pipeline_root
        sides = {side: _run_side_in_subprocess(args, side, pipeline_root) for side in SIDES}
    plain, run_fn = sides[PLAIN], sides[RUN_FN]
    default_steps = configs.DEFAULT_TRAIN_STEPS
    return {
        "benchmark": "training_throughput",
        "net": args.net,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "epochs": args.epochs,
        "sides": sides,
        "overhead_run_fn_vs_plain": {
            "steady_step": common.ratio(plain["steady_images_per_s"],
                                        run_fn["steady_images_per_s"]),
            "fit": common.ratio(plain["fit_images_per_s"], run_fn["fit_images_per_s"]),
            "end_to_end": common.ratio(plain["end_to_end_images_per_s"],
                                       run_fn["end_to_end_images_per_s"]),
            f"projected_{default_steps}_steps_end_to_end": common.ratio(
                _projected_seconds(run_fn, default_steps),
                _projected_seconds(plain, default_steps)),
        },
        "goal_overhead_at_most": 1.3,
        "what_the_ratios_include": {
            "steady_step": "median step after the first: run_fn's tf.data (cached records, "
                           "shuffle, augmentation) and op determinism vs numpy slices",
            "fit": "the whole fit call: + tracing, the first parse of the TFRecords into the "
                   "cache (run_fn), validation each epoch and the TensorBoard callback (run_fn)",
            "end_to_end": "+ run_fn's FnArgs, TFTransformOutput, model build and the SavedModel "
                          "export with serving signatures; plain: model build + fit (arrays "
                          "loaded beforehand, not timed)",
            f"projected_{default_steps}_steps_end_to_end": "estimate: each side's one-off "
                          f"seconds + {default_steps} x its steady step time",
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline-root", help="a pipeline root with Transform outputs")
    parser.add_argument("--data-root", default=os.path.join(common.REPO_ROOT, "data", "synthetic"),
                        help="data to run the data stages on when there is no --pipeline-root")
    parser.add_argument("--net", default="unet", choices=("unet", "lab_fcn"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side only
    args = parser.parse_args(argv)
    if args.side:
        result = _one_side(args)
        result["side"] = args.side
    else:
        result = compare(args)
    common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
