"""ServingCheck: the candidate model must answer over TF Serving's API before it is pushed.

TFX's InfraValidator does this with a ``tensorflow_model_server`` binary, Docker or Kubernetes,
none of which the local runs here have. This component does the same job with the local
stand-in (``serving.model_server``): it serves the Trainer's SavedModel on a free 127.0.0.1 port,
in process, and sends generated slices to both prediction signatures over real gRPC, checking
the model status and metadata, the output shapes and dtypes, that the mask is the
post-processed mask of the probabilities (``trainer.postprocess.lv_mask``) and that both
signatures agree.

Its output is an ``InfraBlessing`` marked as InfraValidator marks it (custom property
``blessed`` 1 or 0, an ``INFRA_BLESSED`` / ``INFRA_NOT_BLESSED`` file), so the Pusher's
``infra_blessing`` input takes it as is: a model that fails is not pushed. The reasons are
logged and written into the ``INFRA_NOT_BLESSED`` file. Where Docker is available,
:func:`docker_infra_validator` runs TFX's InfraValidator with the official image instead.
"""
import os
import shutil
import tempfile
from typing import List, Optional

import numpy as np
from absl import logging
from tfx import v1 as tfx
from tfx.utils import io_utils, path_utils

from pipeline import configs

BLESSED_KEY = "blessed"  # the custom property the Pusher reads (as InfraValidator sets it)
BLESSED_FILE = "INFRA_BLESSED"
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
CANDIDATE_VERSION = 1
DEFAULT_NUM_SLICES = 2
DEFAULT_TIMEOUT_SECONDS = 60
PROBABILITY_TOLERANCE = 1e-5  # the two signatures run the same graph after parsing
EVAL_SPLIT = "eval"  # ExampleGen's eval split (configs.SPLIT_PATTERNS): InfraValidator's requests


def _stage_as_version(model_path: str, staging_root: str, model_name: str) -> str:
    """``<staging>/<model>/1`` pointing at the candidate: the layout a model server reads."""
    base_path = os.path.join(staging_root, model_name)
    os.makedirs(base_path)
    version_path = os.path.join(base_path, str(CANDIDATE_VERSION))
    if "://" in model_path:  # a bucket: copy, as InfraValidator does
        io_utils.copy_dir(model_path, version_path)
    else:
        os.symlink(os.path.abspath(model_path), version_path)
    return base_path


def _check_prediction(name: str, result, num_slices: int) -> List[str]:
    from trainer import postprocess, signatures
    from dataset import records

    problems = []
    expected_shape = (num_slices,) + records.IMAGE_SHAPE
    for what, value, dtype in (("mask", result.masks, np.int32),
                               ("probabilities", result.probabilities, np.float32)):
        if value.shape != expected_shape or value.dtype != dtype:
            problems.append(f"{name}: {what} is {value.dtype} {list(value.shape)}, expected "
                            f"{np.dtype(dtype).name} {list(expected_shape)}")
    if problems:
        return problems
    if result.signature_name != name:
        problems.append(f"{name}: the response names signature {result.signature_name!r}")
    if not ((result.probabilities >= 0) & (result.probabilities <= 1)).all():
        problems.append(f"{name}: probabilities outside [0, 1]")
    elif not np.array_equal(result.masks, postprocess.lv_mask(result.probabilities).numpy()):
        problems.append(f"{name}: the {signatures.MASK_OUTPUT} is not the post-processed mask "
                        f"of the {signatures.PROBABILITIES_OUTPUT}")
    return problems


def check_servable(model_path: str, model_name: str = configs.MODEL_NAME,
                   num_slices: int = DEFAULT_NUM_SLICES,
                   timeout_s: float = DEFAULT_TIMEOUT_SECONDS) -> List[str]:
    """Serves ``model_path`` locally and queries it; returns the problems found (none: servable)."""
    from serving import client, model_server, payloads, sample_model, versions
    from trainer import signatures

    staging_root = tempfile.mkdtemp(prefix="serving-check-")
    try:
        manager = versions.ModelManager(model_name, _stage_as_version(
            model_path, staging_root, model_name), poll_interval_s=timeout_s)
        with model_server.LocalModelServer([manager], host="127.0.0.1") as server:
            statuses = {s.version: s for s in manager.statuses()}
            loaded = statuses.get(CANDIDATE_VERSION)
            if loaded is None or loaded.state != versions.AVAILABLE:
                return [f"the model does not load: {loaded.error if loaded else 'no version'}"]
            batch = sample_model.sample_batch(num_slices)
            results, problems = {}, []
            for name in payloads.PREDICTION_SIGNATURES:
                with client.ServingClient(server.target, model_name, signature=name,
                                          timeout_s=timeout_s, max_attempts=1) as serving:
                    if name == payloads.PREDICTION_SIGNATURES[0]:
                        missing = set(payloads.PREDICTION_SIGNATURES) - set(
                            serving.model_metadata())
                        problems += [f"metadata lacks signature {m!r}" for m in sorted(missing)]
                    try:
                        results[name] = serving.predict_result(batch)
                    except client.ServingError as exc:
                        problems.append(f"{name}: {exc}")
                        continue
                problems += _check_prediction(name, results[name], num_slices)
            if not problems and len(results) == len(payloads.PREDICTION_SIGNATURES):
                raw = results[signatures.SERVING_RAW_IMAGE]
                examples = results[signatures.SERVING_DEFAULT]
                if not np.array_equal(raw.masks, examples.masks) or not np.allclose(
                        raw.probabilities, examples.probabilities, atol=PROBABILITY_TOLERANCE):
                    problems.append("the two prediction signatures disagree on the same slices")
            return problems
    except Exception as exc:  # anything else that breaks serving is a finding, not a crash
        return [f"{type(exc).__name__}: {exc}"]
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


@tfx.dsl.components.component
def ServingCheck(
        model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
        blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InfraBlessing],
        num_slices: tfx.dsl.components.Parameter[int] = DEFAULT_NUM_SLICES,
        timeout_seconds: tfx.dsl.components.Parameter[int] = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Blesses the model (InfraBlessing) only if it serves both signatures correctly."""
    model_path = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    problems = check_servable(model_path, num_slices=num_slices, timeout_s=timeout_seconds)
    if problems:
        logging.error("ServingCheck: model %s is not servable:\n  %s", model_path,
                      "\n  ".join(problems))
        io_utils.write_string_file(os.path.join(blessing.uri, NOT_BLESSED_FILE),
                                   "\n".join(problems) + "\n")
        blessing.set_int_custom_property(BLESSED_KEY, 0)
    else:
        logging.info("ServingCheck: model %s serves both prediction signatures", model_path)
        io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILE), "")
        blessing.set_int_custom_property(BLESSED_KEY, 1)


def docker_infra_validator(model, examples, image: Optional[str] = None,
                           split_name: str = EVAL_SPLIT):
    """TFX's own InfraValidator with the official TF Serving image in a local Docker container:
    the real server instead of the stand-in, for local runs on machines with a Docker engine.

    Only ``serving_default`` is queried: InfraValidator builds requests from serialized
    examples, and the raw-image signature takes pixels. ``examples`` is ExampleGen's output (raw
    lab-schema records, what that signature parses). TFX 1.16's Kubeflow V2 runner cannot
    compile InfraValidator at all ("component type ... is not supported"), so Kubeflow runs use
    ServingCheck.
    """
    from serving import models_config
    from trainer import signatures

    image_name, tag = (image or models_config.TF_SERVING_IMAGE).rsplit(":", 1)
    return tfx.components.InfraValidator(
        model=model,
        examples=examples,
        serving_spec=tfx.proto.ServingSpec(
            tensorflow_serving=tfx.proto.TensorFlowServing(image_name=image_name, tags=[tag]),
            local_docker=tfx.proto.LocalDockerConfig(),
            model_name=configs.MODEL_NAME),
        validation_spec=tfx.proto.ValidationSpec(max_loading_time_seconds=180, num_tries=3),
        request_spec=tfx.proto.RequestSpec(
            tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(
                signature_names=[signatures.SERVING_DEFAULT]),
            split_name=split_name,
            num_examples=2))
