"""TFX Trainer entry point: ``run_fn`` (``Trainer(run_fn='trainer.model.run_fn')``).

The training story: read the settings, train the network (or each member of a deep ensemble, one
after the other) on the transformed examples (``trainer.training``, ``trainer.inputs``), and
export one SavedModel with the serving signatures (``trainer.signatures``). Uses
``MirroredStrategy`` over all visible GPUs, the default (single-device) strategy on CPU.
"""
import dataclasses
import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from trainer import nets, signatures, training
from trainer.config import TrainingConfig, member_configs  # noqa: F401  (dotted paths in tests)


def run_fn(fn_args: tfx.components.FnArgs):
    """Trains the model (or each member of the ensemble) and exports it to
    ``fn_args.serving_model_dir``. The first member logs to ``fn_args.model_run_dir`` (the run
    report's training curves), member k > 0 to ``member_k/`` under it."""
    config = TrainingConfig.from_custom_config(fn_args.custom_config)
    logging.info("Training config: %s", json.dumps(dataclasses.asdict(config)))
    if config.seed is not None:
        tf.config.experimental.enable_op_determinism()

    strategy = training.distribution_strategy()
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    members = []
    for index, member_config in enumerate(member_configs(config)):
        if config.ensemble_size > 1:
            print(f"ensemble member {index + 1} of {config.ensemble_size} "
                  f"(seed {member_config.seed})", flush=True)
        log_dir = fn_args.model_run_dir if index == 0 else os.path.join(fn_args.model_run_dir,
                                                                        f"member_{index}")
        members.append(training.train_model(
            member_config, fn_args, tf_transform_output, strategy, log_dir,
            name=f"{config.model}_{index}" if config.ensemble_size > 1 else None))
    if len(members) == 1:
        model = members[0]
    else:
        with strategy.scope():
            model = nets.build_ensemble(members)

    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=signatures.build_signatures(model, tf_transform_output,
                                                      test_time_flips=config.test_time_flips))
    logging.info("Exported SavedModel to %s", fn_args.serving_model_dir)
