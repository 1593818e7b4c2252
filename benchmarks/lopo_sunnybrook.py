"""Leave-one-patient-out Dice on real Sunnybrook patients, through the whole pipeline.

    .venv/bin/python benchmarks/lopo_sunnybrook.py [--subset data/sunnybrook-subset]
        [any training option of `lvseg run`: --train-steps, --seed, --ensemble-size, ...]
        [--work-dir DIR] [--patients ID ...]

The training options default to a DICOM run's (`lvseg run --dicom-root`,
configs.dicom_run_defaults).

For each patient of the subset, the labelled slices of the other patients are the train split and
that patient's slices the eval split (lab-schema TFRecords written with dataset.sunnybrook);
then ``lvseg run`` runs the real pipeline on them (ExampleGen ... Trainer, with generated slices
mixed into training, ... Evaluator) and the Evaluator's Dice is read from ML Metadata. Each fold
is a fresh pipeline root, so no fold sees another's model. Prints one JSON object: Dice per
patient, the mean, the wall and CPU seconds of each fold (the pipeline's process tree) and of its
Trainer (the line ``trainer.model.run_fn`` prints), and the pushed model re-scored on the held-out
slices through its ``serving_raw_image`` signature, as served and with its LV probability averaged
over the four flips of each image (what ``--test-time-flips`` bakes in), so one trained network
says what flip averaging buys it.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from trainer import tf_env  # noqa: F401  (before TensorFlow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dataset import records, sunnybrook  # noqa: E402
from pipeline import configs, options, run_summary  # noqa: E402
from serving import versions  # noqa: E402
from trainer import config as trainer_config, dice, model, postprocess, tta  # noqa: E402

DEFAULT_SUBSET = configs.BUNDLED_SUBSET


def labelled_slices(subset: str):
    """Every labelled slice of the subset (its layout: dicoms/, contourfiles/, link.csv)."""
    report = sunnybrook.IngestReport()
    pairs = sunnybrook.find_labelled_slices(
        os.path.join(subset, "dicoms"), os.path.join(subset, "contourfiles"),
        os.path.join(subset, "link.csv"), report)
    slices = sunnybrook.read_labelled_slices(pairs, report, progress=False)
    return slices, report.as_dict()


def write_fold(slices, eval_patient: str, data_root: str) -> dict:
    counts = {}
    for split, keep in (("train", lambda s: s.patient_id != eval_patient),
                        ("eval", lambda s: s.patient_id == eval_patient)):
        os.makedirs(os.path.join(data_root, split), exist_ok=True)
        counts[split] = records.write_lab_records(
            os.path.join(data_root, split, records.record_file_name(f"fold-{split}")),
            [s for s in slices if keep(s)])
    return counts


def trainer_cost(log_text: str) -> dict:
    """The Trainer's wall and CPU seconds, from the line ``run_fn`` prints."""
    match = re.search(re.escape(model.TRAINING_COST_PREFIX) + r".* in (\d+) s, (\d+) CPU-s",
                      log_text)
    if not match:
        raise RuntimeError("no training cost line in the run's log")
    return {"trainer_wall_s": int(match.group(1)), "trainer_cpu_s": int(match.group(2))}


def rescore(model_dir: str, eval_slices) -> dict:
    """Dice of the pushed model on ``eval_slices`` through ``serving_raw_image``: its served mask,
    and the served post-processing of its probability averaged over the four flips (the views of
    :mod:`trainer.tta`, each flipped back)."""
    predict = tf.saved_model.load(model_dir).signatures[trainer_config.SERVING_RAW_IMAGE]
    images = tf.constant(np.stack([s.image for s in eval_slices]).astype(np.int64))
    labels = np.stack([s.mask for s in eval_slices])
    served = predict(image=images)
    averaged = tf.add_n([
        tta.flip(predict(image=tta.flip(images, *view))[trainer_config.PROBABILITIES_OUTPUT],
                 *view) for view in tta.VIEWS]) / len(tta.VIEWS)
    flipped_mask = postprocess.lv_mask(averaged)
    return {"served_dice": round(float(np.mean(dice.dice_per_image(
                labels, served[trainer_config.MASK_OUTPUT]))), 4),
            "flip_averaged_dice": round(float(np.mean(dice.dice_per_image(
                labels, flipped_mask))), 4)}


def pushed_model_dir(output_root: str) -> str:
    """The newest complete version the run pushed (read as TF Serving reads version folders)."""
    serving_dir = configs.serving_model_dir(output_root)
    folders = versions.version_folders(serving_dir)
    if not folders:
        raise RuntimeError(f"no model pushed under {output_root}")
    return os.path.join(serving_dir, folders[max(folders)])


def run_fold(data_root: str, output_root: str, train_steps: int, training: dict) -> dict:
    command = [os.path.join(os.path.dirname(sys.executable), "lvseg"), "run",
               "--data-root", data_root, "--output-root", output_root, "--min-dice", "0",
               *options.command_line(train_steps, training)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    log_path = os.path.join(output_root, "run.log")
    os.makedirs(output_root, exist_ok=True)
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log_path}")
    summary = run_summary.read_run_summary(
        configs.metadata_path(output_root), configs.PIPELINE_NAME)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(log_path) as log:
        cost = trainer_cost(log.read())
    return {"dice": round(summary.eval_dice, 4), "wall_s": round(time.time() - started),
            "cpu_s": round(cpu), **cost}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", default=DEFAULT_SUBSET)
    options.add_training_options(parser, dicom=True)
    parser.add_argument("--work-dir", help="keep the folds' data and outputs here")
    parser.add_argument("--patients", nargs="*", help="evaluate only these patients")
    args = parser.parse_args(argv)
    train_steps, training = options.training_settings(args, dicom=True)
    if not os.path.isdir(args.subset):
        print(f"no Sunnybrook subset at {args.subset} (--subset DIR)", file=sys.stderr)
        return 2
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="lvseg-lopo-")
    slices, ingest = labelled_slices(args.subset)
    patients = sorted({s.patient_id for s in slices})
    folds = {}
    for patient in args.patients or patients:
        fold_dir = os.path.join(work_dir, patient)
        counts = write_fold(slices, patient, os.path.join(fold_dir, "data"))
        print(f"fold {patient}: {counts['train']} train / {counts['eval']} eval slices",
              file=sys.stderr, flush=True)
        output_root = os.path.join(fold_dir, "outputs")
        folds[patient] = dict(run_fold(os.path.join(fold_dir, "data"), output_root,
                                       train_steps, training),
                              train_slices=counts["train"], eval_slices=counts["eval"])
        folds[patient].update(rescore(pushed_model_dir(output_root),
                                      [s for s in slices if s.patient_id == patient]))
        print(f"fold {patient}: {json.dumps(folds[patient])}", file=sys.stderr, flush=True)
    dices = [fold["dice"] for fold in folds.values()]
    print(json.dumps({
        "benchmark": "leave_one_patient_out_sunnybrook",
        "train_steps": train_steps,
        **training,
        "labelled_slices": len(slices),
        "skipped": ingest["skipped"],
        "folds": folds,
        "mean_dice": round(sum(dices) / len(dices), 4),
        "mean_flip_averaged_dice": round(float(np.mean(
            [fold["flip_averaged_dice"] for fold in folds.values()])), 4),
        "cpu_s_total": sum(fold["cpu_s"] for fold in folds.values()),
        "trainer_cpu_s_total": sum(fold["trainer_cpu_s"] for fold in folds.values()),
        "work_dir": work_dir,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
