"""The whole pipeline, stage by stage, under each local runner: wall time, per-component times
from ML Metadata, and peak memory.

    .venv/bin/python benchmarks/pipeline_stages.py [--runners beam local] [--train-steps 10]
        [--epochs 1] [--data-root data/synthetic] [--steady-step-seconds S]

Each runner runs ``lvseg run`` (what ``make run`` runs) in its own process on the same data with
a fresh output root and ``--no-cache``, one runner after the other. ``--train-steps`` shrinks
the Trainer to fit the benchmark's time budget (the default run trains 300 steps); the other
stages do their full work, and ``--min-dice 0`` lets the push stage publish, as a blessed run's
would. Per stage: the ML Metadata execution's time from its registration to its publication
(``create_time_since_epoch`` to ``last_update_time_since_epoch``, in the run's
``pipeline_run`` context); the rest of the wall time is start-up (interpreter, imports, input
check) and orchestration between stages. Peak memory is the summed resident memory of the run's
process tree, sampled every 0.25 s (the serving check's server and Beam workers included).

``projected_default_run`` adds ``(300 - train_steps) x --steady-step-seconds`` (the Trainer's
steady step time, from ``benchmarks/training_throughput.py``) to the Trainer and the wall time:
an estimate of the default ``make run``, labelled so. ``reference_default_run`` reads the stage
times of the newest run in ``outputs/`` (an earlier, real default ``make run``) when there is one.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

RUNNERS = ("beam", "local")
DEFAULT_STEPS = 300  # configs.DEFAULT_TRAIN_STEPS; read from there when the project imports
TRAINER = "Trainer"
log = common.log_to_stderr("pipeline")


def run_pipeline(runner: str, data_root: str, output_root: str, train_steps: int,
                 epochs: int, extra_args) -> dict:
    command = [os.path.join(os.path.dirname(sys.executable), "lvseg"), "run",
               "--runner", runner, "--data-root", data_root, "--output-root", output_root,
               "--train-steps", str(train_steps), "--epochs", str(epochs), "--min-dice", "0",
               "--no-cache"] + list(extra_args)
    log(" ".join(command))
    with common.Stopwatch() as wall:
        process = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr,
                                   cwd=common.REPO_ROOT)
        with common.ProcessTreeMemory(process.pid) as memory:
            returncode = process.wait()
    if returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited with {returncode}")
    from pipeline import configs
    stages = common.stage_seconds(os.path.abspath(configs.metadata_path(output_root)),
                           configs.PIPELINE_NAME)
    stage_total = sum(stage["seconds"] for stage in stages.get("stages", {}).values())
    return {
        "command": " ".join(command[1:]),
        "wall_seconds": round(wall.seconds, 1),
        **stages,
        "sum_of_stage_seconds": round(stage_total, 1),
        "startup_and_orchestration_seconds": round(wall.seconds - stage_total, 1),
        "peak_rss_mb_process_tree": round(memory.peak_mb, 1),
        "processes_at_peak": memory.peak_processes,
    }


def _projection(result: dict, train_steps: int, default_steps: int,
                steady_step_seconds: Optional[float]) -> Optional[dict]:
    if not steady_step_seconds or TRAINER not in result.get("stages", {}):
        return None
    extra = (default_steps - train_steps) * steady_step_seconds
    return {"estimate": True, "train_steps": default_steps,
            "steady_step_seconds_used": steady_step_seconds,
            "trainer_seconds": round(result["stages"][TRAINER]["seconds"] + extra, 1),
            "wall_seconds": round(result["wall_seconds"] + extra, 1)}


def reference_default_run(output_root: str) -> Optional[dict]:
    """Stage times of the newest run under ``output_root`` (a real ``make run``), if any."""
    from pipeline import configs
    metadata_path = configs.metadata_path(output_root)
    if not os.path.exists(metadata_path):
        return None
    with tempfile.TemporaryDirectory(prefix="reference-mlmd-") as work:
        copy = os.path.join(work, "metadata.sqlite")  # never lock the user's store
        shutil.copy(metadata_path, copy)
        stages = common.stage_seconds(copy, configs.PIPELINE_NAME)
    if not stages:
        return None
    return {"source": os.path.abspath(metadata_path),
            "note": "an earlier run's stage times as recorded, not measured in this run",
            **stages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    parser.add_argument("--data-root", default=os.path.join(common.REPO_ROOT, "data", "synthetic"))
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steady-step-seconds", type=float,
                        help="the Trainer's steady step time, to project the default run")
    parser.add_argument("--reference-output-root", default=os.path.join(common.REPO_ROOT,
                                                                        "outputs"))
    parser.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                        help="extra `lvseg run` argument, repeatable")
    args = parser.parse_args(argv)

    from trainer import tf_env  # noqa: F401  (before TensorFlow)
    from pipeline import configs

    data_root = os.path.abspath(args.data_root)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-stages-") as work:
        for runner in args.runners:
            runs[runner] = run_pipeline(runner, data_root, os.path.join(work, runner),
                                        args.train_steps, args.epochs, args.run_arg)
            projection = _projection(runs[runner], args.train_steps,
                                     configs.DEFAULT_TRAIN_STEPS, args.steady_step_seconds)
            if projection:
                runs[runner]["projected_default_run"] = projection
    result = {
        "benchmark": "pipeline_stages",
        "data_root": data_root,
        "train_steps": args.train_steps,
        "epochs": args.epochs,
        "runs": runs,
    }
    if set(RUNNERS) <= set(runs):
        result["local_over_beam"] = {
            "wall": common.ratio(runs["local"]["wall_seconds"], runs["beam"]["wall_seconds"]),
            "peak_rss": common.ratio(runs["local"]["peak_rss_mb_process_tree"],
                                     runs["beam"]["peak_rss_mb_process_tree"])}
    reference = reference_default_run(args.reference_output_root)
    if reference:
        result["reference_default_run"] = reference
    common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
