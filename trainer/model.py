"""TFX Trainer entry point: ``run_fn`` (``Trainer(run_fn='trainer.model.run_fn')``).

The training story: read the settings, train the network (or each member of a deep ensemble, one
after the other) on the transformed examples (``trainer.training``, ``trainer.inputs``), and
export one SavedModel with the serving signatures (``trainer.signatures``).

Distribution (``trainer.training.distribution_strategy``): ``MultiWorkerMirroredStrategy`` when
``TF_CONFIG`` names several training tasks (a Vertex AI custom job or a TFJob runs this function
in every replica), ``MirroredStrategy`` over the visible GPUs, else the CPU. In a multi-worker
job every task trains and saves, but only the chief writes to the Trainer's outputs
(``trainer.cluster``).
"""
import dataclasses
import json
import os
import time

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from trainer import cluster, nets, signatures, training
from trainer.config import TrainingConfig, member_configs  # noqa: F401  (dotted paths in tests)

TRAINING_COST_PREFIX = "Trainer: trained and exported"


def run_fn(fn_args: tfx.components.FnArgs):
    """Trains the model (or each member of the ensemble) and exports it to
    ``fn_args.serving_model_dir``. The first member logs to ``fn_args.model_run_dir`` (the run
    report's training curves), member k > 0 to ``member_k/`` under it."""
    config = TrainingConfig.from_custom_config(fn_args.custom_config)
    logging.info("Training config: %s", json.dumps(dataclasses.asdict(config)))
    if config.seed is not None:
        tf.config.experimental.enable_op_determinism()

    started, cpu_started = time.time(), time.process_time()
    role = cluster.from_environment()
    strategy = training.distribution_strategy(role)
    # Only the chief writes to the Trainer's outputs; other tasks write to a private folder.
    run_dir = cluster.private_dir(role, fn_args.model_run_dir)
    export_dir = cluster.private_dir(role, fn_args.serving_model_dir)
    try:
        with training.worker_failures_explained(role):
            _train_and_export(config, fn_args, strategy, run_dir, export_dir)
            if role.multi_worker:
                training.wait_for_all_workers(strategy)
    finally:
        cluster.remove_private_dir(role, run_dir)
        cluster.remove_private_dir(role, export_dir)
    if role.is_chief:
        logging.info("Exported SavedModel to %s", fn_args.serving_model_dir)
    # The training cost of the run (benchmarks/lopo_sunnybrook.py reads this line).
    print(f"{TRAINING_COST_PREFIX} {fn_args.train_steps} steps x {config.ensemble_size} net(s) "
          f"in {time.time() - started:.0f} s, {time.process_time() - cpu_started:.0f} CPU-s",
          flush=True)


def _train_and_export(config: TrainingConfig, fn_args: tfx.components.FnArgs,
                      strategy: tf.distribute.Strategy, run_dir: str, export_dir: str) -> None:
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    members = []
    for index, member_config in enumerate(member_configs(config)):
        if config.ensemble_size > 1:
            print(f"ensemble member {index + 1} of {config.ensemble_size} "
                  f"(seed {member_config.seed})", flush=True)
        log_dir = run_dir if index == 0 else os.path.join(run_dir, f"member_{index}")
        members.append(training.train_model(
            member_config, fn_args, tf_transform_output, strategy, log_dir,
            name=f"{config.model}_{index}" if config.ensemble_size > 1 else None))
    if len(members) == 1:
        model = members[0]
    else:
        with strategy.scope():
            model = nets.build_ensemble(members)

    model.save(export_dir, save_format="tf",
               signatures=signatures.build_signatures(model, tf_transform_output,
                                                      test_time_flips=config.test_time_flips))
