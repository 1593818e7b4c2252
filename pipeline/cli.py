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

from pipeline import configs, drift_cli
from pipeline.report import cli as report_cli
from kubeflow import cli as kubeflow_cli
from serving import cli as serving_cli

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
                     help="folder of per-patient DICOM folders (dicoms/ or SCD_DeidentifiedImages/)")
    scd.add_argument("--contour-root", required=True,
                     help="folder of per-case contour folders (contourfiles/ or SCD_ManualContours/)")
    scd.add_argument("--link", help="CSV with patient_id,original_id when DICOM and contour "
                                    "folders are named differently")
    scd.add_argument("--out", required=True, help="output folder (train/ and eval/ records)")
    _add_patient_split_options(scd)
    scd.set_defaults(handler=_data_sunnybrook)

    check = data_commands.add_parser("check", help="check every record against the lab schema")
    check.add_argument("data_root", nargs="?", default=configs.DEFAULT_DATA_ROOT)
    check.set_defaults(handler=_data_check)


def _add_patient_split_options(parser) -> None:
    from components import sunnybrook
    parser.add_argument("--eval-fraction", type=float, default=sunnybrook.DEFAULT_EVAL_FRACTION,
                        help="share of patients in the eval split (at least one patient)")
    parser.add_argument("--split-seed", type=int, default=sunnybrook.DEFAULT_SEED,
                        help="seed of the split by patient")


def add_intensity_jitter_options(parser, defaults) -> None:
    """The augmentation's intensity ranges (``lvseg run`` and ``lvseg-kubeflow compile``)."""
    parser.add_argument("--max-gain-change", type=float, default=defaults.max_gain_change,
                        metavar="X", help="augmentation multiplies the normalised image by a gain "
                                          "drawn from [1 - X, 1 + X]")
    parser.add_argument("--max-gamma-change", type=float, default=defaults.max_gamma_change,
                        metavar="X", help="augmentation raises the normalised image to a gamma "
                                          "drawn from [1 - X, 1 + X]")


def _add_run_command(subparsers) -> None:
    from pipeline import local_runner
    from trainer import nets, preprocessing

    defaults = configs.DEFAULT_TRAINING
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
    run.add_argument("--runner", choices=local_runner.RUNNERS, default=local_runner.DEFAULT_RUNNER)
    run.add_argument("--model", choices=nets.MODEL_NAMES, default=defaults.model)
    run.add_argument("--train-steps", type=int, default=None,
                     help=f"training steps (default {configs.DEFAULT_TRAIN_STEPS}, "
                          f"{configs.DICOM_TRAIN_STEPS} with --dicom-root)")
    run.add_argument("--unet-norm", choices=nets.NORM_LAYERS, default=defaults.unet_norm,
                     help="normalisation layers of the U-Net")
    run.add_argument("--ensemble-size", type=int, default=None, metavar="N",
                     help="train N networks (seeds seed, seed + 1, ...) and export one model "
                          "averaging their LV probabilities: N times the training, N forward "
                          f"passes per served image (default {configs.DICOM_ENSEMBLE_SIZE} with "
                          f"--dicom-root, else {defaults.ensemble_size})")
    run.add_argument("--epochs", type=int, default=defaults.epochs)
    run.add_argument("--batch-size", type=int, default=defaults.batch_size)
    run.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--dice-loss-weight", type=float, default=defaults.dice_loss_weight,
                     help="weight of the soft-Dice term beside cross-entropy in the loss")
    run.add_argument("--elastic-pixels", type=float, default=None, metavar="PIXELS",
                     help="elastic deformation when augmenting: standard deviation of the "
                          f"displacement in pixels, 0 = off (default {configs.DICOM_ELASTIC_PIXELS}"
                          f" with --dicom-root, else {defaults.elastic_pixels:g})")
    add_intensity_jitter_options(run, defaults)
    run.add_argument("--synthetic-mix", type=float, default=None, metavar="SHARE",
                     help="share of training examples drawn from generated slices (default "
                          f"{configs.DICOM_SYNTHETIC_MIX} with --dicom-root, else 0)")
    run.add_argument("--test-time-flips", action=argparse.BooleanOptionalAction, default=None,
                     help="export a model that averages its LV probability over the four flips "
                          "of each image: four forward passes per image (default on with "
                          "--dicom-root, else off)")
    run.add_argument("--normalization", choices=preprocessing.NORMALIZATIONS,
                     default=configs.DEFAULT_NORMALIZATION)
    run.add_argument("--min-dice", type=float, default=configs.MIN_DICE,
                     help="push only if eval Dice is at least this")
    run.add_argument("--max-dice-drop", type=float, default=configs.MAX_DICE_DROP,
                     help="push only if eval Dice is at most this below the served model's")
    _add_slice_gate_options(run)
    schema = run.add_mutually_exclusive_group()
    schema.add_argument("--schema", default=configs.CURATED_SCHEMA_PATH,
                        help="curated schema to validate against (default: the checked-in one)")
    schema.add_argument("--infer-schema", action="store_true",
                        help="infer the schema with SchemaGen instead of importing one")
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


def _add_slice_gate_options(parser) -> None:
    slice_gate = parser.add_mutually_exclusive_group()
    slice_gate.add_argument(
        "--max-slice-dice-drop", type=float, default=configs.MAX_SLICE_DICE_DROP,
        metavar="DROP", help="push only if, on each LV size bucket (empty/small/mid/large), "
                             "eval Dice is at most this below the served model's on that "
                             f"bucket (default {configs.MAX_SLICE_DICE_DROP})")
    slice_gate.add_argument("--no-slice-gate", action="store_true",
                            help="gate on overall Dice only")


def _max_slice_dice_drop(args):
    return None if args.no_slice_gate else args.max_slice_dice_drop


def _data_synth(args) -> int:
    from trainer import synthetic_data
    manifest = synthetic_data.synthesize_dataset(
        args.out, num_patients=args.patients, slices_per_patient=args.slices,
        eval_fraction=args.eval_fraction, seed=args.seed)
    splits = manifest["splits"]
    print(f"wrote {args.out}: " + ", ".join(
        f"{name} {split['num_slices']} slices from {split['num_patients']} patients"
        for name, split in splits.items()))
    return 0


def _data_sunnybrook(args) -> int:
    from components import sunnybrook
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
    from pipeline import input_checks, local_runner, run_summary

    general = configs.DEFAULT_TRAINING
    run = local_runner.LocalRun(
        data_root=args.data_root,
        output_root=args.output_root,
        runner=args.runner,
        schema_path=None if args.infer_schema else args.schema,
        train_steps=_or_dicom_default(args, args.train_steps, configs.DICOM_TRAIN_STEPS,
                                      configs.DEFAULT_TRAIN_STEPS),
        training=dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, seed=args.seed,
                      dice_loss_weight=args.dice_loss_weight, unet_norm=args.unet_norm,
                      ensemble_size=_or_dicom_default(
                          args, args.ensemble_size, configs.DICOM_ENSEMBLE_SIZE,
                          general.ensemble_size),
                      synthetic_mix=_or_dicom_default(
                          args, args.synthetic_mix, configs.DICOM_SYNTHETIC_MIX,
                          general.synthetic_mix),
                      elastic_pixels=_or_dicom_default(
                          args, args.elastic_pixels, configs.DICOM_ELASTIC_PIXELS,
                          general.elastic_pixels),
                      max_gain_change=args.max_gain_change,
                      max_gamma_change=args.max_gamma_change,
                      test_time_flips=_or_dicom_default(
                          args, args.test_time_flips, configs.DICOM_TEST_TIME_FLIPS,
                          general.test_time_flips)),
        normalization=args.normalization,
        min_dice=args.min_dice,
        max_dice_drop=args.max_dice_drop,
        max_slice_dice_drop=_max_slice_dice_drop(args),
        beam_args=args.beam_args or configs.DEFAULT_BEAM_ARGS,
        enable_cache=not args.no_cache,
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


def _or_dicom_default(args, given, dicom_default, default):
    """``given`` when set on the command line; else, for a DICOM run (usually a few real
    patients), the setting measured for it on the Sunnybrook subset (``configs.DICOM_*``, see
    the README's "Training on real patients"), else the general default."""
    if given is not None:
        return given
    return dicom_default if args.dicom_root else default


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message: Beam and TFX wrap errors several times."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"


def _print_summary(summary, run, seconds: float) -> None:
    dice = "n/a" if summary.eval_dice is None else f"{summary.eval_dice:.4f}"
    lines = [f"\npipeline finished in {seconds:.0f} s",
             f"  eval Dice      {dice}   (gate: at least {run.min_dice}"
             + ("" if summary.baseline_dice is None else
                f", and at most {run.max_dice_drop} below the served model's "
                f"{summary.baseline_dice:.4f}") + ")",
             f"  blessed        {'yes' if summary.blessed else 'no'}"]
    if summary.baseline_dice is not None and run.max_slice_dice_drop is not None:
        lines.insert(-1, f"                 (and on each LV size bucket at most "
                         f"{run.max_slice_dice_drop} below the served model's)")
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
