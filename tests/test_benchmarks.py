"""The benchmark scripts' plumbing: their JSON output parses, their shared helpers work.

No timing is asserted anywhere (the figures depend on the machine and its load); the scripts that
run TensorFlow are marked ``e2e`` and run with tiny sizes. ``make bench`` runs the real set.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import common, run_all

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script_json(name, *arguments, timeout=600):
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", f"{name}.py"), *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)  # the whole of stdout is the one JSON object


def test_last_json_object_skips_other_output():
    text = 'Epoch 1/2 {not json}\n{"a": 1}\nnoise\n{\n  "b": {"c": [1, 2]}\n}\n'
    assert common.last_json_object(text) == {"b": {"c": [1, 2]}}
    with pytest.raises(ValueError):
        common.last_json_object("no object here\n")


def test_multi_worker_step_time_is_read_from_the_last_epoch():
    from benchmarks import multi_worker_training

    log = ("Epoch 1/2\n20/20 - 9s - loss: 1.0 - dice: 0.2 - 9s/epoch - 451ms/step\nEpoch 2/2\n"
           "I1207 noise 5ms/step\n20/20 - 6s - loss: 0.5 - dice: 0.6 - 6s/epoch - 301ms/step\n")
    assert multi_worker_training.steady_step_ms(log) == 301.0
    with pytest.raises(RuntimeError, match="no epoch line"):
        multi_worker_training.steady_step_ms("Epoch 1/2\n")


def test_percentiles_and_ratio():
    summary = common.percentiles_ms([0.001] * 98 + [0.010, 0.020])
    assert summary["p50"] == 1.0 and summary["n"] == 100 and summary["p99"] > summary["p90"]
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(None, 2.0) is None and common.ratio(1.0, 0) is None


def test_process_tree_memory_counts_children():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; x = bytearray(64 << 20); time.sleep(1.5)"])
    try:
        with common.ProcessTreeMemory(os.getpid(), interval_s=0.05) as memory:
            time.sleep(1.0)
    finally:
        child.wait()
    assert memory.peak_processes >= 2
    assert memory.peak_mb > 64


def test_machine_description():
    machine = common.machine()
    assert machine["cpus"] == os.cpu_count()
    assert set(machine) >= {"cpu_model", "memory_gb", "gpus", "load_average_1min"}


def test_summary_of_no_results_is_empty():
    assert run_all.summarise({}) == {}


@pytest.mark.e2e
def test_model_flops_json():
    result = _script_json("model_flops", "--nets", "lab_fcn", "--steps", "1",
                          "--matmul-size", "256", "--matmul-repeats", "1")
    lab = result["nets"]["lab_fcn"]
    # the lab net's convolutions, counted by hand: 1.797 GFLOPs per image
    assert lab["inference_gflops_per_image"] == pytest.approx(1.80, abs=0.02)
    assert lab["training_over_inference"] == pytest.approx(3.0, abs=0.2)
    assert result["machine_peak"]["gflops_per_s"] > 0


@pytest.mark.e2e
def test_serving_latency_json():
    result = _script_json("serving_latency", "--nets", "lab_fcn", "--requests", "3",
                          "--warmup", "1", "--grid-batches", "1", "2", "--grid-clients", "1", "2",
                          "--grid-images", "2")
    lab = result["nets"]["lab_fcn"]
    assert set(lab["latency_ms"]["grpc_local_server"]) >= {"p50", "p90", "p99"}
    assert [(c["batch"], c["clients"]) for c in lab["throughput"]] == [(1, 1), (1, 2), (2, 1),
                                                                        (2, 2)]
    assert "images_per_s_met" in result["goals_met"]["lab_fcn"]
    # make bench's rows for the pushed model are read from the same JSON
    pushed = run_all.summarise({"serving_pushed_model": result})["serving_pushed_model"]
    assert set(pushed["images_per_s_one_client"]) == {"batch_1", "batch_2"}
    assert pushed["p50_ms"]["grpc_local_server"] == lab["latency_ms"]["grpc_local_server"]["p50"]


def test_bench_says_when_there_is_no_pushed_model_to_measure(tmp_path, capsys):
    out = tmp_path / "bench"
    assert run_all.main(["--only", "serving_pushed_model", "--out", str(out),
                         "--pushed-models", str(tmp_path / "nothing")]) == 0
    with open(out / "latest.json") as f:
        combined = json.load(f)
    assert "serving_pushed_model" in combined["skipped"]
    assert "serving_pushed_model" not in combined["results"]
    assert "make run first" in capsys.readouterr().err
