"""What each training recipe costs to serve: one trained network served as it was pushed, with
flip averaging, and as an ensemble of three with flip averaging (the DICOM runs' default before
2026-12-07), over gRPC to the local server and in process.

    .venv/bin/python benchmarks/recipe_serving_cost.py
        [--pipeline-root outputs/pipeline_root/lv-segmentation] [--requests 100]
        [--grid-batches 1 32] [--grid-clients 1] [--grid-images 64]

The variants are exported from the newest pushed model of the pipeline root (its Keras network,
loaded three times for the ensemble) with the Trainer's own ``trainer.nets.build_ensemble`` and
``trainer.signatures.build_signatures`` and that run's transform graph, so each computes exactly
what a model trained with that recipe would (an ensemble of three copies of one net runs the same
operations as one of three trained nets) on masks of a trained net. Each is measured by
``benchmarks/serving_latency.py``'s ``measure_net`` (batch-1 latency, throughput per batch size).
Prints one JSON object.
"""
import argparse
import glob
import os
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, serving_latency  # noqa: E402

VARIANTS = ("as_pushed", "one_net_flips", "ensemble_of_3_flips")


def newest_transform_graph(pipeline_root: str) -> str:
    """The Transform output of the pipeline root's newest execution (TFX numbers them)."""
    pattern = os.path.join(pipeline_root, "Transform", "transform_graph", "*")
    paths = [path for path in glob.glob(pattern) if os.path.basename(path).isdigit()]
    if not paths:
        raise FileNotFoundError(f"nothing matches {pattern}")
    return max(paths, key=lambda path: int(os.path.basename(path)))


def export_variant(pushed_dir: str, transform_dir: str, export_dir: str, members: int,
                   test_time_flips: bool) -> None:
    import tensorflow as tf
    import tensorflow_transform as tft

    from trainer import nets, signatures

    loaded = []
    for index in range(members):
        model = tf.keras.models.load_model(pushed_dir, compile=False)
        model._name = f"member_{index}"  # build_ensemble needs distinct names
        loaded.append(model)
    model = loaded[0] if members == 1 else nets.build_ensemble(loaded)
    model.save(export_dir, save_format="tf", signatures=signatures.build_signatures(
        model, tft.TFTransformOutput(transform_dir), test_time_flips=test_time_flips))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline-root", default=os.path.join(
        common.REPO_ROOT, "outputs", "pipeline_root", "lv-segmentation"))
    parser.add_argument("--serving-dir", default=os.path.join(
        common.REPO_ROOT, "outputs", "serving", "lv_segmentation"))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--grid-batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--grid-clients", type=int, nargs="+", default=[1])
    parser.add_argument("--grid-images", type=int, default=64)
    parser.add_argument("--signature", default="serving_raw_image")
    args = parser.parse_args(argv)

    from trainer import tf_env  # noqa: F401  (before TensorFlow)

    from serving import versions

    folders = versions.version_folders(args.serving_dir)
    if not folders:
        raise FileNotFoundError(f"no complete version under {args.serving_dir}")
    pushed_dir = os.path.join(args.serving_dir, folders[max(folders)])
    transform_dir = newest_transform_graph(args.pipeline_root)
    results = {}
    with tempfile.TemporaryDirectory(prefix="recipe-serving-") as work_dir:
        for variant in args.variants:
            if variant == "as_pushed":
                base_path = os.path.dirname(pushed_dir)
                source = f"the pushed model {pushed_dir}"
            else:
                base_path = os.path.join(work_dir, variant)
                members = 3 if variant.startswith("ensemble") else 1
                with common.stdout_to_stderr():
                    export_variant(pushed_dir, transform_dir, os.path.join(base_path, "1"),
                                   members, test_time_flips=True)
                source = f"{variant} built from {pushed_dir}"
            serving_latency.log(f"measuring {variant}")
            result = serving_latency.measure_net(base_path, source, args)
            results[variant] = {
                "p50_ms": {side: result["latency_ms"][side]["p50"]
                           for side in ("grpc_local_server", "in_process")},
                "p99_ms": {side: result["latency_ms"][side]["p99"]
                           for side in ("grpc_local_server", "in_process")},
                "grpc_over_in_process": result["grpc_over_in_process"],
                "images_per_s": {
                    f"batch_{cell['batch']}_clients_{cell['clients']}": {
                        side: cell[side]["images_per_s"]
                        for side in ("grpc_local_server", "in_process")}
                    for cell in result["throughput"]},
            }
    common.emit({"benchmark": "recipe_serving_cost", "pushed_model": pushed_dir,
                 "machine": common.machine(), "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
