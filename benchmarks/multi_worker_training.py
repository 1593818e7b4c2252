"""Training steps per second with one and with two worker processes on this machine: what
``MultiWorkerMirroredStrategy``'s collectives cost per step.

    .venv/bin/python benchmarks/multi_worker_training.py [--steps 40 --batch-size 8]

Both runs are the Trainer as a training job runs it (TFX's per-replica command ``python -m
tfx.scripts.run_executor`` with the Trainer's GenericExecutor, ``tests/training_cluster.py``),
on the same transformed examples (10 generated patients x 6 slices, transformed once, not timed),
with the same global batch, steps and seed: one process without ``TF_CONFIG``, then a chief and a
worker on 127.0.0.1 with Vertex AI's ``TF_CONFIG``. Each run has two epochs; the steady step time
is the second epoch's (Keras' ms/step, tracing excluded), ``wall_s`` the whole process.

On a 2-CPU machine two workers share the same two cores, each computing half the global batch,
so they gain nothing: ``two_over_one_step_time`` shows the collective overhead per step (an
all-reduce of every gradient between the processes), not a speed-up a cluster would see.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

EPOCH_LINE = re.compile(r"(\d+)/\1 - .* - (\d+)ms/step")


def steady_step_ms(log: str) -> float:
    """The last epoch's ms/step from Keras' verbose=2 lines."""
    steps = [int(match.group(2)) for match in EPOCH_LINE.finditer(log)]
    if not steps:
        raise RuntimeError("no epoch line in the Trainer's log:\n" + log[-2000:])
    return float(steps[-1])


def run(inputs, out_dir: str, tf_configs, steps: int, batch_size: int) -> dict:
    from tests import training_cluster
    from tfx.extensions.google_cloud_ai_platform import training_clients

    os.makedirs(out_dir)
    training = {"batch_size": batch_size, "epochs": 2, "seed": 42}
    command = training_clients.AbstractJobClient.generate_container_command(
        None, inputs, training_cluster.trainer_outputs(out_dir),
        training_cluster.trainer_exec_properties(steps, training),
        training_cluster.TRAINER_EXECUTOR)
    started = time.perf_counter()
    replicas = training_cluster.start_replicas(command, tf_configs, out_dir)
    codes = training_cluster.wait_all(replicas, 3600)
    wall = time.perf_counter() - started
    if set(codes.values()) != {0}:
        raise RuntimeError(f"replicas failed {codes}; logs in {out_dir}")
    step_ms = steady_step_ms(replicas[0].log())
    return {"processes": len(replicas), "wall_s": round(wall, 1), "steady_step_ms": step_ms,
            "steady_steps_per_s": round(1000.0 / step_ms, 3),
            "steady_images_per_s": round(batch_size * 1000.0 / step_ms, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="per run, over 2 epochs")
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch")
    args = parser.parse_args()

    from trainer import tf_env  # noqa: F401  (Keras 2 before TensorFlow)
    from dataset import synthetic_data
    from tests import training_cluster

    work = tempfile.mkdtemp(prefix="bench-multi-worker-")
    data_root = os.path.join(work, "data")
    with common.stdout_to_stderr():
        synthetic_data.synthesize_dataset(data_root, num_patients=10, slices_per_patient=6,
                                          eval_fraction=0.2, seed=7, progress=False)
        inputs = training_cluster.transform_outputs(data_root, work)
        one = run(inputs, os.path.join(work, "one"), [None], args.steps, args.batch_size)
        two = run(inputs, os.path.join(work, "two"),
                  training_cluster.vertex_tf_configs(training_cluster.free_ports(2)),
                  args.steps, args.batch_size)
    shutil.rmtree(work, ignore_errors=True)
    common.emit({
        "machine": common.machine(), "steps": args.steps, "global_batch_size": args.batch_size,
        "one_process": one, "two_workers": two,
        "two_over_one_step_time": common.ratio(two["steady_step_ms"], one["steady_step_ms"]),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
