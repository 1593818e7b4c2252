"""Starts a run of a compiled pipeline on Kubeflow Pipelines with the ``kfp`` client.

The host is checked first with one plain HTTP request, so a wrong or unreachable address fails in
seconds with one line naming it, not after the client's retries and a page of traceback. Run-time
parameters can be overridden per run: the package holds each one's default as JSON, and the
overrides (``--train-steps``, ``--model``, ``--min-dice``) edit that JSON.
"""
import json
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from typing import Any, Dict, Optional

import tensorflow_model_analysis as tfma
import yaml
from tfx.proto import trainer_pb2
from tfx.utils import proto_utils

from kubeflow import runner
from pipeline import configs, eval_config as eval_config_lib

HEALTHZ_PATH = "/apis/v2beta1/healthz"
CONNECT_TIMEOUT_S = 10


class KubeflowUnreachableError(ConnectionError):
    """The Kubeflow Pipelines host did not answer."""


class SubmitError(RuntimeError):
    """Kubeflow Pipelines answered but did not start the run."""


def check_reachable(host: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Any HTTP answer (even 401 or 404) means the host is there; no answer raises."""
    try:
        urllib.request.urlopen(host.rstrip("/") + HEALTHZ_PATH, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KubeflowUnreachableError(
            f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None


def load_pipeline_spec(package_path: str) -> Dict[str, Any]:
    """The PipelineSpec dict of a compiled package: a PipelineJob JSON or a PipelineSpec YAML."""
    with open(package_path, encoding="utf-8") as f:
        document = (json.load(f) if package_path.endswith(runner.JSON_SUFFIX)
                    else yaml.safe_load(f))
    spec = document.get("pipelineSpec", document)
    if "root" not in spec or "deploymentSpec" not in spec:
        raise ValueError(f"{package_path} is not a compiled pipeline (no root DAG or deployment "
                         "spec); compile one with `lvseg kubeflow compile`")
    return spec


def parameter_defaults(spec: Dict[str, Any]) -> Dict[str, Any]:
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: parameter["defaultValue"] for name, parameter in parameters.items()
            if "defaultValue" in parameter}


def parameter_overrides(defaults: Dict[str, str], *, train_steps: Optional[int] = None,
                        model: Optional[str] = None,
                        min_dice: Optional[float] = None) -> Dict[str, str]:
    """Edits the default JSON of the parameters the options touch; returns only those."""
    overrides = {}
    if train_steps is not None:
        train_args = proto_utils.json_to_proto(
            defaults[configs.TRAIN_ARGS_PARAMETER], trainer_pb2.TrainArgs())
        train_args.num_steps = train_steps
        overrides[configs.TRAIN_ARGS_PARAMETER] = runner.parameter_json(train_args)
    if model is not None:
        training = json.loads(defaults[configs.TRAINING_CONFIG_PARAMETER])
        overrides[configs.TRAINING_CONFIG_PARAMETER] = runner.parameter_json(
            configs.training_custom_config({**training, "model": model}))
    if min_dice is not None:
        eval_config = proto_utils.json_to_proto(
            defaults[configs.EVAL_CONFIG_PARAMETER], tfma.EvalConfig())
        # The overall Dice threshold is a per-slice threshold on the overall slice: a
        # MetricConfig.threshold would apply min_dice to every patient and LV size slice.
        try:
            eval_config_lib.set_min_dice(eval_config, min_dice)
        except ValueError as exc:
            raise ValueError(f"the package's eval_config has no overall Dice threshold to set "
                             f"({exc})") from exc
        overrides[configs.EVAL_CONFIG_PARAMETER] = runner.parameter_json(eval_config)
    return overrides


def submit(host: str, package_path: str, *, arguments: Optional[Dict[str, Any]] = None,
           run_name: Optional[str] = None, experiment_name: Optional[str] = None,
           namespace: Optional[str] = None, enable_caching: Optional[bool] = None) -> str:
    """Uploads the package as a run and starts it; returns the run id."""
    spec = load_pipeline_spec(package_path)
    unknown = sorted(set(arguments or {}) - set(parameter_defaults(spec)))
    if unknown:
        raise ValueError(f"the pipeline has no parameter(s) {unknown}; it has "
                         f"{sorted(parameter_defaults(spec))}")
    check_reachable(host)

    import kfp  # the client pulls in the Kubernetes client; only submitting needs it
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    with tempfile.TemporaryDirectory() as folder:
        # The client uploads YAML PipelineSpecs only, not TFX's PipelineJob JSON.
        spec_path = os.path.join(folder, f"{spec['pipelineInfo']['name']}.yaml")
        with open(spec_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(spec, f)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, **({"namespace": namespace} if namespace else {}))
            result = client.create_run_from_pipeline_package(
                spec_path, arguments=arguments or {}, run_name=run_name,
                experiment_name=experiment_name, namespace=namespace,
                pipeline_root=spec.get("defaultPipelineRoot"), enable_caching=enable_caching)
        except ApiException as exc:
            raise SubmitError(f"Kubeflow Pipelines at {host} refused the run: "
                              f"{exc.status} {exc.reason}") from None
        except Urllib3Error as exc:
            raise KubeflowUnreachableError(
                f"cannot reach Kubeflow Pipelines at {host}: {exc}") from None
    return result.run_id
