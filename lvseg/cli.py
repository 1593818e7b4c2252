"""``lvseg``: the project's command line.

    lvseg data synth --out DIR [--patients N --slices N --seed S]    write the generated data
    lvseg data check DIR                                   check records against the lab schema
    lvseg run [--data-root DIR --output-root DIR --runner beam|local ...]    run the pipeline
    lvseg report [--pipeline-root DIR]        the run report + model card (every run writes it)
    lvseg drift --request-log-dir DIR         served inputs against the training data (TFDV)
    lvseg serve / predict / models-config     serving (see serving/cli.py)
    lvseg kubeflow compile / submit           Kubeflow Pipelines (see kubeflow/cli.py)
"""
import argparse
import logging
import os
import sys
import time

from kubeflow import cli as kubeflow_cli
from monitoring import cli as drift_cli
from pipeline import configs
from report import cli as report_cli
from serving import cli as serving_cli
from trainer import tf_env

EXIT_BAD_INPUT = 2
EXIT_PIPELINE_FAILED = 1
EXIT_BUSY = 3  # another run holds the pipeline root


def _add_data_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="write or check lab-schema TFRecords")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    synth = data_commands.add_parser(
        "synth", help="write the generated default data set (train/eval split by patient)")
    synth.add_argument("--out", default=configs.DEFAULT_DATA_ROOT, help="output folder")
    synth.add_argument("--patients", type=int, default=20)
    synth.add_argument("--slices", type=int, default=13, help="slices per patient")
    synth.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of patients in the eval split")
    synth.add_argument("--seed", type=int, default=42)
    synth.set_defaults(handler=_data_synth)

    scd = data_commands.add_parser(
        "sunnybrook", help="convert Sunnybrook-style DICOMs + LV contours to lab-schema records")
    scd.add_argument("--dicom-root", required=True,
                     help="folder of per-patient DICOM folders (dicoms/ or "
                          "SCD_DeidentifiedImages/)")
    scd.add_argument("--contour-root", required=True,
                     help="folder of per-case contour folders (contourfiles/ or "
                          "SCD_ManualContours/)")
    scd.add_argument("--link", help="CSV with patient_id,original_id when DICOM and contour "
                                    "folders are named differently")
    scd.add_argument("--out", required=True, help="output folder (train/ and eval/ records)")
    _add_patient_split_options(scd)
    scd.set_defaults(handler=_data_sunnybrook)

    check = data_commands.add_parser("check", help="check every record against the lab schema")
    check.add_argument("data_root", nargs="?", default=configs.DEFAULT_DATA_ROOT)
    check.set_defaults(handler=_data_check)


def _add_patient_split_options(parser) -> None:
    from dataset import sunnybrook
    parser.add_argument("--eval-fraction", type=float, default=sunnybrook.DEFAULT_EVAL_FRACTION,
                        help="share of patients in the eval split (at least one patient)")
    parser.add_argument("--split-seed", type=int, default=sunnybrook.DEFAULT_SEED,
                        help="seed of the split by patient")


def _add_run_command(subparsers) -> None:
    from pipeline import options

    run = subparsers.add_parser("run", help="run the TFX pipeline locally, ending in a push")
    run.add_argument("--data-root", default=configs.DEFAULT_DATA_ROOT,
                     help="folder of TFRecords; with train/ and eval/ subfolders they are the "
                          "splits, otherwise all files are hash-split 9:1")
    run.add_argument("--dicom-root", help="read Sunnybrook-style DICOMs instead of --data-root "
                                          "(with --contour-root, see `lvseg data sunnybrook`)")
    run.add_argument("--contour-root", help="folder of the expert contours of --dicom-root")
    run.add_argument("--link", help="CSV patient_id,original_id mapping contour folders to "
                                    "DICOM folders")
    _add_patient_split_options(run)
    run.add_argument("--output-root", default=configs.DEFAULT_OUTPUT_ROOT,
                     help="pipeline root, ML Metadata and pushed models go under it")
    run.add_argument("--runner", choices=configs.LOCAL_RUNNERS,
                     default=configs.DEFAULT_LOCAL_RUNNER)
    options.add_schema_options(run, configs.CURATED_SCHEMA_PATH, "on this machine")
    options.add_training_options(run, dicom=True)
    options.add_gate_options(run, dicom=True)
    run.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG",
                     help="a Beam pipeline option for the data components, repeatable "
                          f"(default: {' '.join(configs.DEFAULT_BEAM_ARGS)})")
    run.add_argument("--infra-validator", choices=("serving-check", "docker"),
                     default="serving-check",
                     help="how the candidate is checked to serve before a push: the local "
                          "stand-in server (default), or TFX's InfraValidator with the official "
                          "tensorflow/serving image in Docker (needs a Docker engine)")
    run.add_argument("--no-cache", action="store_true", help="recompute every component")
    run.add_argument("--skip-data-check", action="store_true",
                     help="do not read every record before starting (for large data sets)")
    run.set_defaults(handler=_run)


def _data_synth(args) -> int:
    from dataset import synthetic_data
    manifest = synthetic_data.synthesize_dataset(
        args.out, num_patients=args.patients, slices_per_patient=args.slices,
        eval_fraction=args.eval_fraction, seed=args.seed)
    splits = manifest["splits"]
    print(f"wrote {args.out}: " + ", ".join(
        f"{name} {split['num_slices']} slices from {split['num_patients']} patients"
        for name, split in splits.items()))
    return 0


def _data_sunnybrook(args) -> int:
    from dataset import sunnybrook
    summary = sunnybrook.ingest(args.dicom_root, args.contour_root, args.link, args.out,
                                eval_fraction=args.eval_fraction, seed=args.split_seed)
    print(f"wrote {args.out}: {summary['slices']} labelled slices from "
          f"{summary['contour_dicom_pairs']} contours ({summary['unlabelled_dicoms']} DICOMs "
          "without contour)")
    for split, info in summary["splits"].items():
        print(f"  {split:5s} {info['slices']:4d} slices, patients {', '.join(info['patients'])}")
    for reason, info in summary["skipped"].items():
        print(f"  skipped {info['count']} ({info['why']}): {', '.join(info['files'][:3])}"
              + (" ..." if info["count"] > 3 else ""))
    print(f"  summary: {os.path.join(args.out, sunnybrook.SUMMARY_FILE)}")
    return 0


def _data_check(args) -> int:
    from pipeline import input_checks
    counts = input_checks.check_data_root(args.data_root, _split_patterns_of(args.data_root))
    print(f"{args.data_root}: all records match the lab schema: "
          + ", ".join(f"{split} {count}" for split, count in counts.items()))
    return 0


def _split_patterns_of(data_root: str):
    from pipeline import local_runner
    return local_runner.LocalRun(data_root=data_root).split_patterns()


def _run(args) -> int:
    from pipeline import input_checks, local_runner, options, run_summary

    run = local_runner.LocalRun(
        data_root=args.data_root,
        output_root=args.output_root,
        runner=args.runner,
        settings=options.settings_from_args(args, dicom=bool(args.dicom_root)),
        beam_args=args.beam_args or configs.DEFAULT_BEAM_ARGS,
        dicom_root=args.dicom_root, contour_root=args.contour_root, link_path=args.link,
        eval_fraction=args.eval_fraction, split_seed=args.split_seed,
        docker_infra_validation=args.infra_validator == "docker")
    input_checks.check_writable(run.output_root)
    local_runner.ensure_unlocked(run.pipeline_root)
    if not args.skip_data_check and not run.dicom_root:
        counts = input_checks.check_data_root(run.data_root, run.split_patterns())
        print(f"input {run.data_root}: " + ", ".join(f"{s} {n} records" for s, n in counts.items()),
              flush=True)
    pipeline = local_runner.build_pipeline(run)  # configuration errors surface before the run
    source = f"DICOMs in {run.dicom_root}" if run.dicom_root else run.data_root
    print(f"running {pipeline.pipeline_info.pipeline_name} on {source} with the {run.runner} "
          f"runner; outputs under {run.pipeline_root}", flush=True)
    started = time.time()
    try:
        local_runner.run_pipeline(run)
    except Exception as exc:  # report the cause in one line; the log above has the trace
        print(f"\npipeline failed after {time.time() - started:.0f} s: {_root_cause(exc)}",
              file=sys.stderr)
        return EXIT_PIPELINE_FAILED
    summary = run_summary.read_run_summary(os.path.abspath(run.metadata_path),
                                           run.pipeline_name)
    _print_summary(summary, run, time.time() - started)
    return _write_report(run)


def _write_report(run) -> int:
    """Every run ends with its report (and the model card beside a pushed version). The run's
    outcome is already in ML Metadata: a report that fails is said, not a failed run."""
    try:
        return report_cli.write_and_print(run.pipeline_root)
    except Exception as exc:  # noqa: BLE001  (the pipeline's results stand; say what failed)
        print(f"  report         not written: {_root_cause(exc)} (retry: lvseg report "
              f"--pipeline-root {run.pipeline_root})", file=sys.stderr)
        return 0


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message: Beam and TFX wrap errors several times."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"


def _print_summary(summary, run, seconds: float) -> None:
    settings = run.settings
    dice = "n/a" if summary.eval_dice is None else f"{summary.eval_dice:.4f}"
    lines = [f"\npipeline finished in {seconds:.0f} s",
             f"  eval Dice      {dice}   (gate: at least {settings.min_dice}"
             + ("" if summary.baseline_dice is None else
                f", and at most {settings.max_dice_drop} below the served model's "
                f"{summary.baseline_dice:.4f}") + ")",
             f"  blessed        {'yes' if summary.blessed else 'no'}"]
    if summary.baseline_dice is not None and settings.max_slice_dice_drop is not None:
        lines.insert(-1, f"                 (and on each LV size bucket at most "
                         f"{settings.max_slice_dice_drop} below the served model's)")
    lines += [f"                 {failure}" for failure in summary.validation_failures]
    if summary.pushed:
        base_path = os.path.dirname(summary.pushed_path)
        reused = " (by an earlier run: nothing changed since)" if summary.push_reused else ""
        lines += [f"  pushed         version {summary.pushed_version} -> {summary.pushed_path}"
                  + reused,
                  "  serve it       docker run --rm -p 8500:8500 -p 8501:8501 "
                  f"-v {base_path}:/models/{run.model_name} -e MODEL_NAME={run.model_name} "
                  "tensorflow/serving:2.16.1"]
    else:
        lines.append("  pushed         nothing (the model was not blessed)")
    print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvseg", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TFX's and Beam's full log instead of one line per step")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(subparsers)
    _add_run_command(subparsers)
    report_cli.register(subparsers)
    drift_cli.register(subparsers)
    serving_cli.register(subparsers)
    kubeflow_cli.register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # before anything imports TensorFlow: its C++ start-up errors only with -v
    tf_env.set_cpp_log_level(tf_env.EVERYTHING if args.verbose else tf_env.ERRORS_TOO)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        from pipeline import progress
        progress.show_step_progress()
    from pipeline import input_checks, local_runner
    try:
        return args.handler(args)
    except (input_checks.InputDataError, ValueError, FileNotFoundError) as exc:
        print(f"lvseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except local_runner.PipelineLockedError as exc:
        print(f"lvseg: error: {exc}", file=sys.stderr)
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
