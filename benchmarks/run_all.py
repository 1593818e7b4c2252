"""Runs every benchmark, one after the other, with sizes that fit 20 minutes on 2 CPUs, and prints
one combined JSON object (``make bench``).

    .venv/bin/python benchmarks/run_all.py [--data-root data/synthetic] [--out DIR] [--quick]

Order: ``cli_startup``, ``data_stages`` (its single-process Transform outputs are kept and feed
the next two), ``training_throughput``, ``input_pipeline``, ``serving_latency``, ``model_flops``,
``pipeline_stages`` (its default-run projection uses the Trainer's steady step time measured by
``training_throughput``), ``multi_worker_training`` (one process against a chief and a
worker), ``postprocess_batches`` (the served mask's post-processing, one image against 32),
``serving_pushed_model`` (``serving_latency`` on the newest model ``make run`` pushed, under
``--pushed-models``; skipped, and said, when there is none).
Each script runs in its own process; its stderr goes to
``<out>/<name>.log``, its JSON into the combined object under ``results``, and ``summary`` holds
the headline figures: each a ratio against the plain way of doing the same work, measured in the
same run, plus the goals of issue 9. The combined object is also written to
``<out>/latest.json``. A failed script is reported in ``failed`` and the exit code is 1; the
others still run. ``--quick`` shrinks everything (for a smoke run on a tiny data set).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ALL = ("cli_startup", "data_stages", "training_throughput", "input_pipeline", "serving_latency",
       "model_flops", "pipeline_stages", "multi_worker_training", "postprocess_batches",
       "serving_pushed_model")
# Entries that run another entry's script with other arguments.
SCRIPTS = {"serving_pushed_model": "serving_latency"}


def _sizes(quick: bool) -> Dict[str, List[str]]:
    """Each script's arguments, sized for the budget (``quick``: a smoke run)."""
    if quick:
        return {
            "cli_startup": ["--runs", "1"],
            "data_stages": ["--skip-portable"],
            "training_throughput": ["--steps", "4", "--epochs", "2"],
            "input_pipeline": ["--batches", "4", "--steps", "2"],
            "serving_latency": ["--requests", "10", "--grid-batches", "1", "8",
                                "--grid-clients", "1", "2", "--grid-images", "8"],
            "model_flops": ["--steps", "1", "--matmul-size", "512", "--matmul-repeats", "2"],
            "pipeline_stages": ["--train-steps", "2", "--epochs", "1"],
            "multi_worker_training": ["--steps", "4"],
            "postprocess_batches": ["--repeats", "1"],
            "serving_pushed_model": ["--requests", "10", "--grid-batches", "1", "32",
                                     "--grid-clients", "1", "--grid-images", "32"],
        }
    return {
        "cli_startup": ["--runs", "5"],
        "data_stages": ["--skip-portable", "--workers", "2"],
        "training_throughput": ["--steps", "16", "--epochs", "2", "--batch-size", "8"],
        "input_pipeline": ["--batches", "30", "--steps", "5"],
        "serving_latency": ["--requests", "100", "--grid-batches", "1", "8", "32",
                            "--grid-clients", "1", "8", "--grid-images", "16"],
        "model_flops": ["--steps", "4", "--matmul-size", "2048", "--matmul-repeats", "8"],
        "pipeline_stages": ["--train-steps", "6", "--epochs", "1"],
        "multi_worker_training": ["--steps", "40"],
        "postprocess_batches": ["--repeats", "15"],
        "serving_pushed_model": ["--requests", "100", "--grid-batches", "1", "32",
                                 "--grid-clients", "1", "--grid-images", "64"],
    }


def run_script(name: str, arguments: List[str], log_path: str) -> Dict[str, object]:
    script = SCRIPTS.get(name, name)
    command = [sys.executable, os.path.join(HERE, f"{script}.py")] + arguments
    print(f"[bench] {name}: {' '.join(arguments)} (log: {log_path})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                   cwd=common.REPO_ROOT)
    seconds = round(time.perf_counter() - started, 1)
    if completed.returncode != 0:
        raise RuntimeError(f"{name} exited with {completed.returncode} after {seconds} s; "
                           f"see {log_path}")
    result = common.last_json_object(completed.stdout)
    print(f"[bench] {name}: done in {seconds} s", file=sys.stderr, flush=True)
    return {"seconds": seconds, "result": result}


def _get(mapping, *keys, default=None):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return default
        mapping = mapping[key]
    return mapping


def summarise(results: Dict[str, dict]) -> Dict[str, object]:
    """The headline figures and the goals, from whichever scripts succeeded."""
    summary: Dict[str, object] = {}
    training = results.get("training_throughput")
    if training:
        plain, run_fn = training["sides"]["plain"], training["sides"]["run_fn"]
        overhead = training["overhead_run_fn_vs_plain"]
        summary["training"] = {
            "net": training["net"], "batch_size": training["batch_size"],
            "steps": training["steps"],
            "steady_images_per_s": {"run_fn": run_fn["steady_images_per_s"],
                                    "plain_fit": plain["steady_images_per_s"]},
            "end_to_end_images_per_s": {"run_fn": run_fn["end_to_end_images_per_s"],
                                        "plain_fit": plain["end_to_end_images_per_s"]},
            "overhead": overhead,
            "goal_overhead_at_most": training["goal_overhead_at_most"],
            "goal_met_steady": overhead["steady_step"] <= training["goal_overhead_at_most"],
            "goal_met_end_to_end": overhead["end_to_end"] <= training["goal_overhead_at_most"],
        }
    inputs = results.get("input_pipeline")
    if inputs:
        summary["input_pipeline"] = {
            "input_images_per_s_augmented": inputs["input_only"]["augmented"][
                "steady_images_per_s"],
            "input_images_per_s_not_augmented": inputs["input_only"]["not_augmented"][
                "steady_images_per_s"],
            "parse_images_per_s": inputs["input_only"]["parse_only_one_pass"]["images_per_s"],
            "step_real_over_cached": inputs["model_step"]["real_over_cached"],
            "model_waits_on_input": inputs["model_waits_on_input"],
        }
    startup = results.get("cli_startup")
    if startup:
        summary["cli_help_median_s"] = {command: figures["median_s"]
                                        for command, figures in startup["commands"].items()}
    serving = results.get("serving_latency")
    if serving:
        summary["serving"] = {}
        for net, result in serving["nets"].items():
            summary["serving"][net] = {
                "p50_ms": {side: result["latency_ms"][side]["p50"]
                           for side in ("grpc_local_server", "in_process")},
                "p99_ms": {side: result["latency_ms"][side]["p99"]
                           for side in ("grpc_local_server", "in_process")},
                "grpc_over_in_process": result["grpc_over_in_process"],
                "best_grpc_images_per_s": result["best_grpc_images_per_s"],
                "goals_met": serving["goals_met"].get(net),
            }
    pushed = results.get("serving_pushed_model")
    if pushed:
        (result,) = pushed["nets"].values()
        summary["serving_pushed_model"] = {
            "model": result["model"], "version": result["version"],
            "p50_ms": {side: result["latency_ms"][side]["p50"]
                       for side in ("grpc_local_server", "in_process")},
            "grpc_over_in_process": result["grpc_over_in_process"],
            "images_per_s_one_client": {
                f"batch_{cell['batch']}": {side: cell[side]["images_per_s"]
                                           for side in ("grpc_local_server", "in_process")}
                for cell in result["throughput"] if cell["clients"] == 1},
        }
    data = results.get("data_stages")
    if data:
        summary["data_stages"] = {
            "statisticsgen_plus_transform_seconds": data["statisticsgen_plus_transform_seconds"],
            "multi_over_single_process": data["multi_over_single_process"],
            "outputs_match": data["outputs_match_single_process"],
        }
    pipeline = results.get("pipeline_stages")
    if pipeline:
        summary["pipeline"] = {}
        for runner, run in pipeline["runs"].items():
            stages = run.get("stages", {})
            top = sorted(stages.items(), key=lambda item: -item[1]["seconds"])[:3]
            summary["pipeline"][runner] = {
                "wall_seconds": run["wall_seconds"],
                "train_steps": pipeline["train_steps"],
                "top_stages_seconds": {name: stage["seconds"] for name, stage in top},
                "startup_and_orchestration_seconds": run["startup_and_orchestration_seconds"],
                "peak_rss_mb": run["peak_rss_mb_process_tree"],
                "projected_default_run": run.get("projected_default_run"),
            }
    workers = results.get("multi_worker_training")
    if workers:
        summary["multi_worker_training"] = {
            "steady_steps_per_s": {side: workers[side]["steady_steps_per_s"]
                                   for side in ("one_process", "two_workers")},
            "two_over_one_step_time": workers["two_over_one_step_time"]}
    postprocess = results.get("postprocess_batches")
    if postprocess:
        summary["postprocess_batch_over_single"] = {
            case: figures["batch_over_single"] for case, figures in postprocess.items()
            if isinstance(figures, dict) and "batch_over_single" in figures}
    flops = results.get("model_flops")
    if flops:
        peak = flops["machine_peak"]["gflops_per_s"]
        summary["model"] = {"machine_peak_gflops_per_s": peak, "nets": {
            net: {key: value[key] for key in (
                "inference_gflops_per_image", "training_gflops_per_image",
                "training_share_of_peak", "inference_share_of_peak")}
            for net, value in flops["nets"].items()}}
        # The same FLOPs at the rates the other benchmarks measured, through the real paths.
        net = _get(training, "net")
        rate = _get(training, "sides", "run_fn", "steady_images_per_s")
        gflops = _get(flops, "nets", net, "training_gflops_per_image")
        if rate and gflops:
            summary["model"]["run_fn_training_share_of_peak"] = common.ratio(rate * gflops, peak)
        for serving_net, result in (_get(serving, "nets") or {}).items():
            gflops = _get(flops, "nets", serving_net, "inference_gflops_per_image")
            rate = result["best_grpc_images_per_s"]["images_per_s"]
            if gflops:
                summary["model"].setdefault("grpc_serving_share_of_peak", {})[serving_net] = \
                    common.ratio(rate * gflops, peak)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.path.join(common.REPO_ROOT, "data", "synthetic"))
    parser.add_argument("--out", default=os.path.join(common.REPO_ROOT, "outputs", "benchmarks"),
                        help="logs, the data stages' kept outputs and latest.json")
    parser.add_argument("--pushed-models",
                        default=os.path.join(common.REPO_ROOT, "outputs", "serving",
                                             "lv_segmentation"),
                        help="the versions `make run` pushed (serving_pushed_model measures "
                             "the newest)")
    parser.add_argument("--only", nargs="+", choices=ALL, help="run only these (in order)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data_root = os.path.abspath(args.data_root)
    sizes = _sizes(args.quick)
    kept = os.path.join(out, "data_stages_outputs")
    transform_root = os.path.join(kept, "single_process", "pipeline_root", "lv-segmentation")
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    results, seconds, failed, skipped = {}, {}, {}, {}
    for name in args.only or ALL:
        arguments = list(sizes[name])
        if name == "data_stages":
            arguments += ["--data-root", data_root, "--keep-outputs", kept]
        elif name in ("training_throughput", "input_pipeline"):
            arguments += (["--pipeline-root", transform_root] if os.path.isdir(transform_root)
                          else ["--data-root", data_root])
        elif name == "pipeline_stages":
            arguments += ["--data-root", data_root]
            step = _get(results, "training_throughput", "sides", "run_fn",
                        "median_step_seconds_after_first")
            if step:
                arguments += ["--steady-step-seconds", str(step)]
        elif name == "serving_pushed_model":
            from serving import versions
            if not versions.servable_versions(args.pushed_models):
                print(f"[bench] {name}: skipped, no pushed model under {args.pushed_models} "
                      "(make run first)", file=sys.stderr, flush=True)
                skipped[name] = f"no pushed model under {args.pushed_models}"
                continue
            arguments += ["--model-base-path", os.path.abspath(args.pushed_models)]
        try:
            run = run_script(name, arguments, os.path.join(out, f"{name}.log"))
        except Exception as exc:  # noqa: BLE001  (reported; the other benchmarks still run)
            print(f"[bench] {name} FAILED: {exc}", file=sys.stderr, flush=True)
            failed[name] = str(exc)
            continue
        results[name], seconds[name] = run["result"], run["seconds"]

    combined = {
        "benchmark": "all",
        "quick": args.quick,
        "data_root": data_root,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "seconds_per_script": seconds,
        "load_average_1min_before": load_before,
        "machine": common.machine(),
        "summary": summarise(results),
        "results": results,
        "failed": failed,
        "skipped": skipped,
    }
    with open(os.path.join(out, "latest.json"), "w") as f:
        json.dump(combined, f, indent=2)
    common.emit(combined)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
