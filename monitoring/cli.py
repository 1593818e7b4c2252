"""``lvseg drift``: are the served images still like the training images?

    lvseg drift --request-log-dir DIR [--output-root outputs] [--train-examples DIR_OR_GLOB]
                [--out DIR] [--threshold 0.3]

Reads the request log written by ``lvseg serve --request-log-dir DIR``, compares per-image
intensity statistics with the training data's using TFDV (:mod:`monitoring.drift`) and writes
``drift.json`` and the statistics under ``<output-root>/monitoring/`` (or ``--out``).

Exit code, like ``diff``: 0 no drift, 1 drift; unusable inputs raise ValueError or
FileNotFoundError, which ``lvseg`` prints as ``lvseg: error: ...`` with exit code 2.
"""
import sys

EXIT_NO_DRIFT = 0
EXIT_DRIFTED = 1


def register(subparsers) -> None:
    """Adds ``drift`` to ``subparsers``."""
    from pipeline import configs
    from monitoring import drift

    parser = subparsers.add_parser(
        "drift", help="compare the intensity statistics of logged requests with the training "
                      "data (TFDV); exit code 1 on drift")
    parser.add_argument("--request-log-dir", required=True, metavar="DIR",
                        help="folder (or glob) of the PredictionLog files of `lvseg serve "
                             "--request-log-dir`")
    parser.add_argument("--output-root", default=configs.DEFAULT_OUTPUT_ROOT,
                        help="the pipeline's output root: its ML Metadata names the training "
                             "examples (default: %(default)s)")
    parser.add_argument("--train-examples", metavar="DIR_OR_GLOB",
                        help="training TFRecords to compare with instead (a folder, an "
                             "ExampleGen output or a glob)")
    parser.add_argument("--out", metavar="DIR",
                        help=f"output folder (default: <output-root>/{drift.MONITORING_DIR})")
    parser.add_argument("--threshold", type=float, default=drift.DEFAULT_THRESHOLD,
                        help="Jensen-Shannon divergence above which a feature has drifted "
                             "(default: %(default)s)")
    parser.set_defaults(handler=drift_command)


def drift_command(args, out=None) -> int:
    from monitoring import drift

    out = out or sys.stdout
    report = drift.run_drift(args.request_log_dir, output_root=args.output_root,
                             train_examples=args.train_examples, out_dir=args.out,
                             threshold=args.threshold, progress=sys.stderr.isatty())
    out.write(format_summary(report) + "\n")
    out.flush()
    return EXIT_DRIFTED if report["drifted"] else EXIT_NO_DRIFT


def format_summary(report: dict) -> str:
    """A few lines: drifted or not, the counts, each feature (most divergent first)."""
    features = report["features"]
    flagged = report["top_features"]
    if report["drifted"]:
        compared = sum(1 for feature in features.values() if feature["compared"])
        headline = (f"drift: yes - {len(flagged)} of {compared} intensity features differ "
                    f"from the training data (Jensen-Shannon divergence > "
                    f"{report['threshold']:g})")
        if not flagged:
            headline = "drift: yes - " + "; ".join(report["anomalies"])
    else:
        headline = (f"drift: no - every compared intensity feature within a Jensen-Shannon "
                    f"divergence of {report['threshold']:g} of the training data")
    served, training = report["served"], report["training"]
    when = (f", logged {served['first_logged']} .. {served['last_logged']}"
            if served.get("first_logged") else "")
    source = training["source"]
    if "example_gen" in training:
        source = (f"{training['example_gen']['node']} output, execution "
                  f"{training['example_gen']['execution_id']}")
    lines = [headline,
             f"  served    {report['served_images']} images in {report['served_requests']} "
             f"logged requests ({len(served['log_files'])} "
             f"file{'' if len(served['log_files']) == 1 else 's'}{when})",
             f"  training  {report['training_images']} images ({source})",
             f"  {'feature':16s} {'train median':>13s} {'served median':>14s} "
             f"{'divergence':>11s}"]
    for name, feature in features.items():
        divergence = ("reported" if not feature["compared"] else
                      "n/a" if feature["divergence"] is None else f"{feature['divergence']:.3f}")
        lines.append(f"  {name:16s} {feature['train'].get('median', float('nan')):13.4g} "
                     f"{feature['served'].get('median', float('nan')):14.4g} {divergence:>11s}"
                     + ("  DRIFT" if feature["anomaly"] else ""))
    lines += [f"  warning   {warning}" for warning in report["warnings"]]
    lines.append(f"  report    {report['report_path']}")
    return "\n".join(lines)
