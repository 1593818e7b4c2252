"""``lvseg report``: write the run report and the model card of the latest run."""
import os

from pipeline import configs


def register(subparsers) -> None:
    from report import per_image
    report = subparsers.add_parser(
        "report", help="write the HTML run report and the model card of the latest run")
    report.add_argument("--pipeline-root",
                        default=configs.pipeline_root(configs.DEFAULT_OUTPUT_ROOT),
                        help="the run's pipeline root (holds metadata.sqlite)")
    report.add_argument("--out", help="output folder (default: <pipeline root>/report)")
    report.add_argument("--drift", metavar="DRIFT_JSON",
                        help="the drift check to show (default: <output root>/monitoring/"
                             "drift.json, written by `lvseg drift`)")
    report.add_argument("--max-images", type=int, default=per_image.DEFAULT_MAX_IMAGES,
                        help="score at most this many eval images for the histogram/overlays")
    report.set_defaults(handler=_report)


def write_and_print(pipeline_root: str, **kwargs) -> int:
    from report import report
    result = report.write_report(pipeline_root, **kwargs)
    print(f"  report         {result.index_path}")
    print(f"  model card     {result.pushed_model_card_path or result.model_card_path}")
    return 0


def _report(args) -> int:
    if args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    if not os.path.isdir(args.pipeline_root):
        raise FileNotFoundError(f"no pipeline root at {args.pipeline_root}: run `lvseg run` "
                                "first, or pass --pipeline-root")
    return write_and_print(args.pipeline_root, out_dir=args.out, drift_path=args.drift,
                           max_images=args.max_images)
