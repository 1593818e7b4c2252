"""The networks' cost per image in FLOPs, and the share of the machine's measured peak that
training and inference reach.

    .venv/bin/python benchmarks/model_flops.py [--nets unet lab_fcn] [--steps 6 --batch-size 8]

- FLOPs per image: TensorFlow's profiler (``tf.compat.v1.profiler``, ``float_operation``) over
  the graph of a concrete function at batch 1: inference is the net's forward pass
  (``training=False``), training is forward + the project's loss + gradients (what one image
  costs in a training step; Adam's update, a few FLOPs per weight per step, is left out). The
  profiler counts the ops TensorFlow registers FLOPs for (convolutions and their gradients,
  matmuls, element-wise arithmetic, pooling); data movement (concatenation, transposes, padding)
  costs time but no FLOPs.
- The machine's peak: the best of several float32 matmuls (``--matmul-size`` square) with
  TensorFlow's own threads, i.e. what this machine does at best through the same library;
  measured before and after the nets, the better of the two counts (the machine may be shared).
- Reached: images/s of the bare net here, with seeds and op determinism as ``run_fn`` sets
  them: a training step (``fit`` on one batch cached in memory, median step after tracing) and
  inference (``tf.function`` forward at the batch size, median call); times FLOPs per image,
  over the peak.
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

NETS = ("unet", "lab_fcn")
log = common.log_to_stderr("flops")


def graph_flops(concrete_function) -> int:
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=concrete_function.graph, options=options)
    return int(profile.total_float_ops)


def build_net(net: str):
    from trainer import config as trainer_config, nets

    return nets.build_model(
        net, unet_base_filters=trainer_config.TrainingConfig().unet_base_filters)


def flops_per_image(net: str) -> dict:
    import tensorflow as tf

    from trainer import config as trainer_config, training as trainer_training
    from dataset import records

    model = build_net(net)
    loss = trainer_training.build_loss(trainer_config.TrainingConfig().dice_loss_weight)
    image_spec = tf.TensorSpec([1, records.IMAGE_SIZE, records.IMAGE_SIZE, 1], tf.float32)
    label_spec = tf.TensorSpec([1, records.IMAGE_SIZE, records.IMAGE_SIZE], tf.int64)

    @tf.function
    def forward(images):
        return model(images, training=False)

    @tf.function
    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            value = loss(labels, model(images, training=True))
        return tape.gradient(value, model.trainable_variables)

    inference = graph_flops(forward.get_concrete_function(image_spec))
    training = graph_flops(forward_backward.get_concrete_function(image_spec, label_spec))
    return {"parameters": int(model.count_params()),
            "inference_gflops_per_image": round(inference / 1e9, 3),
            "training_gflops_per_image": round(training / 1e9, 3),
            "training_over_inference": common.ratio(training, inference, 2)}


def machine_peak_gflops(size: int, repeats: int) -> dict:
    import tensorflow as tf

    a = tf.random.uniform([size, size], dtype=tf.float32)
    b = tf.random.uniform([size, size], dtype=tf.float32)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()  # traced and warmed up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return {"matmul_size": size, "repeats": repeats, "best_seconds": round(best, 4),
            "gflops_per_s": round(2.0 * size ** 3 / best / 1e9, 1)}


def measured_rates(net: str, steps: int, batch_size: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from trainer import config as trainer_config, training as trainer_training

    config = trainer_config.TrainingConfig(model=net, batch_size=batch_size)
    tf.keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.5, size=(batch_size, 256, 256, 1)).astype(np.float32)
    labels = (rng.uniform(size=(batch_size, 256, 256)) < 0.05).astype(np.int64)

    model = trainer_training.build_compiled_model(config, 1000)
    cached = tf.data.Dataset.from_tensors((images, labels)).repeat()
    timings = common.Timings()
    with common.stdout_to_stderr():
        model.fit(cached, epochs=1, steps_per_epoch=steps + 1, verbose=0,
                  callbacks=[common.timing_callback(timings)])
    train_step = float(np.median(timings.step_seconds[1:]))

    forward = tf.function(lambda x: model(x, training=False))
    batch = tf.constant(images)
    forward(batch).numpy()
    calls = []
    for _ in range(steps):
        started = time.perf_counter()
        forward(batch).numpy()
        calls.append(time.perf_counter() - started)
    inference_call = float(np.median(calls))
    return {"batch_size": batch_size, "steps": steps,
            "training_step_seconds": round(train_step, 4),
            "training_images_per_s": common.rounded(batch_size / train_step),
            "inference_call_seconds": round(inference_call, 4),
            "inference_images_per_s": common.rounded(batch_size / inference_call)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--steps", type=int, default=6, help="timed training steps and "
                                                             "inference calls per net")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    args = parser.parse_args(argv)

    from trainer import tf_env  # noqa: F401  (before TensorFlow)
    import tensorflow as tf

    log(f"machine peak: float32 matmul {args.matmul_size}^2")
    peaks = [machine_peak_gflops(args.matmul_size, args.matmul_repeats)]
    nets = {}
    for net in args.nets:
        log(f"{net}: FLOPs per image")
        flops = flops_per_image(net)
        log(f"{net}: {args.steps} training steps and inference calls of batch {args.batch_size}")
        rates = measured_rates(net, args.steps, args.batch_size)
        tf.keras.backend.clear_session()
        nets[net] = {**flops, "measured": rates}
    # measured again at the end: the best of the two is the peak (the machine may be shared)
    peaks.append(machine_peak_gflops(args.matmul_size, args.matmul_repeats))
    peak = dict(max(peaks, key=lambda p: p["gflops_per_s"]),
                all_measurements_gflops_per_s=[p["gflops_per_s"] for p in peaks])
    for net, value in nets.items():
        flops, rates = value, value["measured"]
        training_gflops = flops["training_gflops_per_image"] * rates["training_images_per_s"]
        inference_gflops = flops["inference_gflops_per_image"] * rates["inference_images_per_s"]
        nets[net] = {**flops,
                     "training_gflops_per_s": round(training_gflops, 1),
                     "inference_gflops_per_s": round(inference_gflops, 1),
                     "training_share_of_peak": common.ratio(training_gflops,
                                                            peak["gflops_per_s"]),
                     "inference_share_of_peak": common.ratio(inference_gflops,
                                                             peak["gflops_per_s"])}
    common.emit({
        "benchmark": "model_flops",
        "flops_counted_by": "tf.compat.v1.profiler float_operation, batch-1 concrete functions",
        "machine_peak": peak,
        "tensorflow_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                               "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "nets": nets,
        "peak_rss_mb": common.peak_rss_mb_of_this_process(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
