"""Serving cost: Predict over gRPC to the local server against calling the SavedModel in
process, same model, same inputs, same run.

    .venv/bin/python benchmarks/serving_latency.py [--nets unet lab_fcn] [--requests 100]
        [--grid-batches 1 8 32] [--grid-clients 1 8] [--grid-images 64]
    .venv/bin/python benchmarks/serving_latency.py --model-base-path outputs/serving/lv_segmentation

For each net, a SavedModel with the pipeline's exact signatures and transform graph
(``serving/sample_model.py``; untrained, at the width the Trainer trains: same compute as a
pushed model) is served by the local TF-Serving-compatible server in its own process
(``python -m serving.cli serve``), as it would be in use; the in-process side loads the same
version with ``tf.saved_model.load``. Both sides include turning numpy inputs into tensors and
the outputs back into numpy.

- ``latency_ms``: batch 1, one call at a time, gRPC and in-process calls alternating so drift in
  the machine's load hits both alike; p50, p90, p99 and mean, and their ratios.
- ``throughput``: images/s for each batch size x number of concurrent clients (threads, each
  with its own gRPC channel; in process, threads calling the same function), a bounded number of
  requests per cell: ``max(clients, ceil(grid_images / batch))``.

The server is this project's Python stand-in for ``tensorflow_model_server`` (the C++ server
cannot be installed here), so the gRPC figures include Python's protobuf and gRPC handling.
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SERVER_START_TIMEOUT_S = 180
NETS = ("unet", "lab_fcn")
GOALS = {"p50_ratio_at_most": 1.2, "p99_ratio_at_most": 1.5,
         "lab_fcn_images_per_s_at_least": 50.0}
log = common.log_to_stderr("serving")


def _sample_base_path(net: str, work_dir: str) -> str:
    from components import atomic_pusher
    from pipeline import configs
    from serving import sample_model
    from trainer import config as trainer_config

    model = sample_model.build_sample_saved_model(
        os.path.join(work_dir, net, "model"), os.path.join(work_dir, net, "build"), net=net,
        unet_base_filters=trainer_config.TrainingConfig().unet_base_filters)
    base_path = os.path.join(work_dir, net, "serving", configs.MODEL_NAME)
    atomic_pusher.push_version_atomically(model, base_path)
    return base_path


def start_server(base_path: str):
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model-base-path", base_path,
         "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=common.REPO_ROOT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    for line in process.stdout:
        match = re.search(r" on 127\.0\.0\.1:(\d+) ", line)
        if match:
            return process, f"127.0.0.1:{match.group(1)}"
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError("the local server did not start")


def _concurrent(call, requests: int, clients: int):
    """Runs ``requests`` calls from ``clients`` threads; (wall seconds, per-call seconds)."""
    lock = threading.Lock()
    remaining = [requests]
    latencies = []
    errors = []

    def worker(index):
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                call(index)
            except Exception as exc:  # noqa: BLE001  (reported, then the benchmark fails)
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, latencies


def measure_net(base_path: str, source: str, args) -> dict:
    import numpy as np
    import psutil
    import tensorflow as tf

    from pipeline import configs
    from serving import client, payloads, sample_model, versions
    from serving.config import DEFAULT_MAX_MESSAGE_BYTES
    from trainer import signatures

    folders = versions.version_folders(base_path)
    function = tf.saved_model.load(os.path.join(base_path, folders[max(folders)])).signatures[
        args.signature]
    images = sample_model.sample_batch(max(args.grid_batches + [8]))

    def batch_inputs(batch_size, offset=0):
        batch = np.roll(images, -offset, axis=0)[:batch_size]
        return payloads.signature_inputs(batch, args.signature)

    def in_process(request_inputs):
        outputs = function(**{k: tf.constant(v) for k, v in request_inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    singles = [batch_inputs(1, i) for i in range(8)]
    server, target = start_server(base_path)
    try:
        server_process = psutil.Process(server.pid)
        # one Predict per batch of the grid (up to 64 images), so the client's limit is raised
        grpc_clients = [client.ServingClient(target, configs.MODEL_NAME, signature=args.signature,
                                             max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES)
                        for _ in range(max(args.grid_clients))]
        served_version = grpc_clients[0].wait_until_available()

        log(f"{source}: latency, batch 1, {args.requests} calls per side")
        timings = {"grpc_local_server": [], "in_process": []}
        for i in range(args.warmup + args.requests):
            request_inputs = singles[i % len(singles)]
            started = time.perf_counter()
            served, _ = grpc_clients[0].predict_tensors(request_inputs)
            grpc_s = time.perf_counter() - started
            started = time.perf_counter()
            local = in_process(request_inputs)
            local_s = time.perf_counter() - started
            if i < args.warmup:
                # same model, same input: the masks must be the same
                np.testing.assert_array_equal(served[signatures.MASK_OUTPUT],
                                              local[signatures.MASK_OUTPUT])
                continue
            timings["grpc_local_server"].append(grpc_s)
            timings["in_process"].append(local_s)
        latency = {side: common.percentiles_ms(seconds) for side, seconds in timings.items()}

        throughput = []
        for batch_size in args.grid_batches:
            request_inputs = batch_inputs(batch_size)
            # one untimed call per side at this batch size (shapes seen once)
            grpc_clients[0].predict_tensors(request_inputs)
            in_process(request_inputs)
            for clients in args.grid_clients:
                requests = max(clients, math.ceil(args.grid_images / batch_size))
                log(f"{source}: throughput, batch {batch_size}, {clients} client(s), "
                    f"{requests} requests per side")
                cell = {"batch": batch_size, "clients": clients, "requests": requests}
                for side, call in (
                        ("grpc_local_server",
                         lambda i: grpc_clients[i].predict_tensors(request_inputs)),
                        ("in_process", lambda i: in_process(request_inputs))):
                    wall, latencies = _concurrent(call, requests, clients)
                    cell[side] = {"images_per_s": common.rounded(requests * batch_size / wall, 1),
                                  "latency_p50_ms": common.percentiles_ms(latencies)["p50"]}
                cell["grpc_over_in_process_images_per_s"] = common.ratio(
                    cell["grpc_local_server"]["images_per_s"], cell["in_process"]["images_per_s"])
                throughput.append(cell)
        server_rss_mb = round(server_process.memory_info().rss / 2 ** 20, 1)
        for grpc_client in grpc_clients:
            grpc_client.close()
    finally:
        server.terminate()
        server.wait(60)

    best = max(throughput, key=lambda cell: cell["grpc_local_server"]["images_per_s"])
    return {
        "model": source,
        "version": served_version,
        "latency_ms": latency,
        "grpc_over_in_process": {
            p: common.ratio(latency["grpc_local_server"][p], latency["in_process"][p])
            for p in ("p50", "p90", "p99")},
        "grpc_overhead_p50_ms": common.rounded(latency["grpc_local_server"]["p50"]
                                               - latency["in_process"]["p50"]),
        "throughput": throughput,
        "best_grpc_images_per_s": {"images_per_s": best["grpc_local_server"]["images_per_s"],
                                   "batch": best["batch"], "clients": best["clients"]},
        "server_rss_mb": server_rss_mb,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-base-path",
                        help="serve this folder of versions instead of sample models of --nets")
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--requests", type=int, default=100, help="timed batch-1 calls per side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per side first")
    parser.add_argument("--grid-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--grid-clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--grid-images", type=int, default=64,
                        help="images per throughput cell and side (at least one request per "
                             "client)")
    parser.add_argument("--signature", default="serving_raw_image",
                        choices=("serving_raw_image", "serving_default"))
    args = parser.parse_args(argv)

    from trainer import tf_env  # noqa: F401  (before TensorFlow)

    results = {}
    with tempfile.TemporaryDirectory(prefix="serving-latency-") as work_dir:
        if args.model_base_path:
            targets = {"given": (os.path.abspath(args.model_base_path), "given model base path")}
        else:
            targets = {}
            for net in args.nets:
                log(f"building an untrained {net} SavedModel with the pipeline's signatures")
                with common.stdout_to_stderr():
                    targets[net] = (_sample_base_path(net, work_dir),
                                    f"untrained sample model ({net}, trained width)")
        for name, (base_path, source) in targets.items():
            results[name] = measure_net(base_path, source, args)

    goals = {}
    for name, result in results.items():
        goals[name] = {
            "p50_met": result["grpc_over_in_process"]["p50"] <= GOALS["p50_ratio_at_most"],
            "p99_met": result["grpc_over_in_process"]["p99"] <= GOALS["p99_ratio_at_most"]}
    if "lab_fcn" in results:
        goals["lab_fcn"]["images_per_s_met"] = (
            results["lab_fcn"]["best_grpc_images_per_s"]["images_per_s"]
            >= GOALS["lab_fcn_images_per_s_at_least"])
    common.emit({
        "benchmark": "serving_latency",
        "signature": args.signature,
        "server": "local Python stand-in (serving.model_server), own process, 127.0.0.1",
        "requests_per_side": args.requests,
        "nets": results,
        "goals": GOALS,
        "goals_met": goals,
        "client_peak_rss_mb": common.peak_rss_mb_of_this_process(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
