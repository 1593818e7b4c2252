"""The Trainer's tf.data input from transformed examples: how fast it is, and whether the model
waits on it.

    .venv/bin/python benchmarks/input_pipeline.py [--pipeline-root DIR] [--net unet]
        [--batches 30 --steps 8 --batch-size 8]

The dataset is ``trainer.inputs.input_dataset``, built from a real ``FnArgs`` (TFX's
``get_common_fn_args`` over the Transform artifacts, as the Trainer executor builds it), so it is
exactly what ``run_fn`` trains on. Measured in one process:

- ``input_only``: images/s of the input alone, nothing consuming but the loop: the first batch
  (the shuffle buffer is larger than the split, so it waits for every record to be read, parsed
  and cached), then ``--batches`` steady batches (cached records, shuffle, augmentation), with
  augmentation on (the default) and off; and one pass of the parse alone (the eval pipeline,
  records to tensors, no cache hit).
- ``model_step``: the training step time of the net compiled as ``run_fn`` compiles it (seeds and
  op determinism too), fed by the real dataset, against the same step fed one batch cached in
  memory (``Dataset.from_tensors(batch).repeat()``). The ratio is the cost of the input in
  training: 1.0 means the model never waits (on 2 CPUs the input's map threads still compete
  with the model's for the same cores, which this ratio includes).
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, data_stages  # noqa: E402

log = common.log_to_stderr("input")


def _fn_args(outputs: common.TransformOutputs):
    from tfx.components.trainer import fn_args_utils
    from tfx.types import artifact_utils, standard_artifacts, standard_component_specs as specs

    examples = standard_artifacts.Examples()
    examples.uri = outputs.transformed_examples
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = outputs.transform_graph
    return fn_args_utils.get_common_fn_args(
        {specs.EXAMPLES_KEY: [examples], specs.TRANSFORM_GRAPH_KEY: [transform_graph]},
        {specs.TRAIN_ARGS_KEY: "{}", specs.EVAL_ARGS_KEY: "{}"})


def _input_rate(dataset, batches: int, batch_size: int) -> dict:
    iterator = iter(dataset)
    started = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    steady = time.perf_counter() - started
    return {"first_batch_seconds": common.rounded(first),
            "steady_images_per_s": common.rounded(batches * batch_size / steady, 1)}


def _parse_rate(dataset) -> dict:
    started = time.perf_counter()
    images = sum(int(image.shape[0]) for image, _ in dataset)
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": common.rounded(seconds),
            "images_per_s": common.rounded(images / seconds, 1)}


def _median_step(model, dataset, steps: int) -> float:
    import numpy as np

    timings = common.Timings()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[common.timing_callback(timings)])
    return float(np.median(timings.step_seconds))


def measure(args) -> dict:
    from trainer import tf_env  # noqa: F401  (before TensorFlow)

    import tensorflow as tf
    import tensorflow_transform as tft

    from pipeline import configs
    from trainer import config as trainer_config, inputs as trainer_inputs
    from trainer import training as trainer_training

    with tempfile.TemporaryDirectory(prefix="input-pipeline-") as work_dir:
        outputs = data_stages.transform_outputs(args.pipeline_root, args.data_root, work_dir, log)
        fn_args = _fn_args(outputs)
        config = trainer_config.TrainingConfig.from_custom_config(
            configs.training_custom_config(dict(model=args.net, batch_size=args.batch_size)))
        tf.keras.utils.set_random_seed(config.seed)
        tf.config.experimental.enable_op_determinism()
        transform_output = tft.TFTransformOutput(outputs.transform_graph)

        def dataset(training=True, **overrides):
            return trainer_inputs.input_dataset(
                fn_args.train_files, fn_args.data_accessor, transform_output,
                dataclasses.replace(config, **overrides), args.batch_size, training=training)

        log("input alone")
        input_only = {
            "parse_only_one_pass": _parse_rate(dataset(training=False)),
            "augmented": _input_rate(dataset(), args.batches, args.batch_size),
            "not_augmented": _input_rate(dataset(augment=False), args.batches, args.batch_size),
        }

        log(f"model steps: {args.net}, real input vs one cached batch, {args.steps} steps each")
        model = trainer_training.build_compiled_model(config, 1000)
        real = dataset()
        cached_batch = next(iter(real))
        cached = tf.data.Dataset.from_tensors(cached_batch).repeat()
        with common.stdout_to_stderr():
            _median_step(model, cached, 2)  # traces the step once, for both feeds
            real_step = _median_step(model, real, args.steps)
            cached_step = _median_step(model, cached, args.steps)
            # a second round, the other way round, so drift in the machine's load hits both
            cached_step = min(cached_step, _median_step(model, cached, args.steps))
            real_step = min(real_step, _median_step(model, real, args.steps))

    model_rate = args.batch_size / real_step
    augmented_rate = input_only["augmented"]["steady_images_per_s"]
    return {
        "benchmark": "input_pipeline",
        "net": args.net,
        "batch_size": args.batch_size,
        "train_files": fn_args.train_files,
        "input_only": input_only,
        "model_step": {
            "steps_per_measurement": args.steps,
            "real_input_step_seconds": common.rounded(real_step, 4),
            "cached_batch_step_seconds": common.rounded(cached_step, 4),
            "real_over_cached": common.ratio(real_step, cached_step),
            "training_images_per_s_real_input": common.rounded(model_rate, 1),
        },
        "input_headroom": common.ratio(augmented_rate, model_rate),
        "model_waits_on_input": bool(real_step > 1.05 * cached_step),
        "peak_rss_mb": common.peak_rss_mb_of_this_process(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline-root", help="a pipeline root with Transform outputs")
    parser.add_argument("--data-root", default=os.path.join(common.REPO_ROOT, "data", "synthetic"))
    parser.add_argument("--net", default="unet", choices=("unet", "lab_fcn"))
    parser.add_argument("--batches", type=int, default=30, help="steady batches of input")
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    common.emit(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
