"""In-memory A/B of training choices on real Sunnybrook patients (quicker than the pipeline).

    .venv/bin/python benchmarks/real_data_ablation.py [--subset DIR] [--patients ID ...]
        [--train-steps 600] [--set synthetic_mix=0.3 --set dice_loss_weight=3 ...] [--out DIR]

For each held-out patient: trains the Trainer's network (``trainer.training.build_compiled_model``,
the same loss, schedule, augmentation and generated-slice mixing as ``run_fn``) on the other
patients' labelled slices, normalised by ``trainer.preprocessing`` as the Transform graph does,
then scores the held-out slices four ways with the project's Dice: the plain thresholded
probability, the flip-averaged probability (``trainer.tta``), and both through
``trainer.postprocess``. ``--set name=value`` overrides any ``TrainingConfig`` field. Prints one
JSON object; ``--out`` keeps the probabilities (``.npz``) for offline analysis.

The figures are the same procedure as ``benchmarks/lopo_sunnybrook.py`` without ExampleGen,
Transform and the Evaluator (and their ~2 minutes per fold), not the same numbers: the order of
examples differs, so a fold's Dice differs by a few hundredths between the two.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

from trainer import tf_env  # noqa: F401  (before TensorFlow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import lopo_sunnybrook  # noqa: E402
from pipeline import configs  # noqa: E402
from trainer import config as trainer_config  # noqa: E402
from trainer import dice, postprocess, preprocessing, tta  # noqa: E402
from trainer import inputs as trainer_inputs, training as trainer_training  # noqa: E402


def _normalised(slices) -> tuple:
    images = np.stack([s.image for s in slices]).astype(np.float32)[..., None]
    images = preprocessing.normalize_image(tf.constant(images)).numpy()
    labels = np.stack([s.mask for s in slices]).astype(np.int64)
    return images, labels


def _train_dataset(train_slices, config: trainer_config.TrainingConfig) -> tf.data.Dataset:
    generated = None
    if config.synthetic_mix:
        generated = tf.data.Dataset.from_tensor_slices(
            _normalised(trainer_inputs.synthetic_slices(config)))
    return trainer_inputs.training_batches(
        tf.data.Dataset.from_tensor_slices(_normalised(train_slices)), generated, config,
        config.batch_size)


def _dice(labels, predictions) -> float:
    """Mean per-image Dice of LV probabilities or 0/1 masks (``trainer.dice.lv_mask``)."""
    return float(np.mean(dice.dice_per_image(labels, predictions).numpy()))


def run_fold(slices, patient: str, config, train_steps: int, out_dir) -> dict:
    train = [s for s in slices if s.patient_id != patient]
    held_out = [s for s in slices if s.patient_id == patient]
    tf.keras.utils.set_random_seed(config.seed)
    model = trainer_training.build_compiled_model(config, train_steps)
    epochs = min(config.epochs, train_steps)
    started = time.process_time()
    model.fit(_train_dataset(train, config), epochs=epochs,
              steps_per_epoch=math.ceil(train_steps / epochs), verbose=0)
    cpu_s = time.process_time() - started
    images, labels = _normalised(held_out)
    plain = dice.lv_probability(model.predict(images, batch_size=4, verbose=0)).numpy()
    flipped = tta.flip_averaged_probability(model, tf.constant(images)).numpy()
    result = {"train_slices": len(train), "eval_slices": len(held_out),
              "train_cpu_s": round(cpu_s)}
    for name, probabilities in (("plain", plain), ("flips", flipped)):
        result[name] = round(_dice(labels, probabilities), 4)
        masks = postprocess.lv_mask(tf.constant(probabilities)).numpy()
        result[f"{name}+postprocess"] = round(_dice(labels, masks), 4)
    if out_dir:
        np.savez_compressed(os.path.join(out_dir, f"{patient}.npz"), labels=labels,
                            plain=plain, flips=flipped,
                            names=np.array([s.name for s in held_out]))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", default=lopo_sunnybrook.DEFAULT_SUBSET)
    parser.add_argument("--patients", nargs="*", help="hold out only these patients")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a TrainingConfig field (JSON value), e.g. synthetic_mix=0.3")
    parser.add_argument("--out", help="keep the held-out probabilities here")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.subset):
        print(f"no Sunnybrook subset at {args.subset} (--subset DIR)", file=sys.stderr)
        return 2
    dicom = configs.dicom_run_defaults()
    overrides = {"synthetic_mix": dicom["synthetic_mix"], "elastic_pixels": dicom["elastic_pixels"]}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)
    config = trainer_config.TrainingConfig.from_custom_config(overrides)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    slices, _ = lopo_sunnybrook.labelled_slices(args.subset)
    folds = {}
    for patient in args.patients or sorted({s.patient_id for s in slices}):
        folds[patient] = run_fold(slices, patient, config, args.train_steps, args.out)
        print(f"{patient}: {json.dumps(folds[patient])}", file=sys.stderr, flush=True)
    keys = ("plain", "flips", "plain+postprocess", "flips+postprocess")
    print(json.dumps({
        "benchmark": "real_data_ablation",
        "train_steps": args.train_steps,
        "config": dataclasses.asdict(config),
        "folds": folds,
        "mean": {key: round(float(np.mean([fold[key] for fold in folds.values()])), 4)
                 for key in keys},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
