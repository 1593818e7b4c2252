"""What each Kubeflow backend needs from the spec TFX compiles, applied to the PipelineSpec dict.

``kfp`` (open-source Kubeflow Pipelines 2) and ``vertex`` (Vertex AI Pipelines) run the same
PipelineSpec format but not the same way; what differs, and what this module changes for it
(each rule cites the backend's behaviour it answers):

Both targets
  - Every TFX task starts through :mod:`kubeflow.container_entrypoint` instead of TFX's entry
    point, with the code version as an argument. The entry point types the input artifacts
    open-source KFP sends untyped and refuses an image with other code; on Vertex AI the
    artifacts arrive typed and it only checks the code version. The code version in the
    arguments is part of both backends' cache keys, so changed code never reuses old outputs.
  - Tasks whose output depends on the world outside the pipeline (``ServedModel``: the model
    being served) are never cached (``cachingOptions.enableCache`` false, which both honour
    per task).

``kfp`` only
  - Its launcher copies every input artifact into the pod first and fails on the zero-byte
    "directory" objects TensorFlow writes on GCS (kubeflow/pipelines#13476): each task removes
    them under its outputs once its executor is done (:mod:`kubeflow.gcs_markers`).
  - Its backend never runs ``lifecycle.preCacheCheck``, the hook in which TFX fingerprints
    ImportExampleGen's input files; a task :mod:`kubeflow.input_fingerprint` does it instead,
    uncached, and its outputs become ImportExampleGen parameters, hence part of its cache key.
    The unused hook is removed.
"""
import copy
import json
from typing import Iterable, List

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from kubeflow import container_entrypoint, input_fingerprint
from kubeflow.config import KFP, TARGETS, VERTEX  # noqa: F401


TFX_COMMAND = list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD)
ENTRYPOINT_COMMAND = ["python", "-m", "kubeflow.container_entrypoint"]
FINGERPRINT_COMMAND = ["python", "-m", "kubeflow.input_fingerprint"]
FINGERPRINT_TASK = "InputFingerprint"
EXAMPLE_GEN_TASK = "ImportExampleGen"


def _executor(spec: dict, task_name: str) -> dict:
    component = spec["components"][spec["root"]["dag"]["tasks"][task_name]["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][component["executorLabel"]]


def code_version_arg(code_version: str) -> str:
    return f"{container_entrypoint.CODE_VERSION_FLAG}={code_version}"


def adapt(spec: dict, target: str, image: str, code_version: str,
          never_cached: Iterable[str]) -> None:
    """Changes the PipelineSpec dict ``spec`` in place for ``target``."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    tasks = spec["root"]["dag"]["tasks"]
    for task_name in tasks:
        container = _executor(spec, task_name).get("container")
        if container is not None and container.get("command") == TFX_COMMAND:
            container["command"] = list(ENTRYPOINT_COMMAND)
            container["args"] = list(container["args"]) + [code_version_arg(code_version)]
    for task_name in never_cached:
        tasks[task_name]["cachingOptions"] = {"enableCache": False}
    if target == KFP:
        for task_name in tasks:
            container = _executor(spec, task_name)["container"]
            if container["command"] == ENTRYPOINT_COMMAND:
                container["args"].append(container_entrypoint.REMOVE_MARKERS_FLAG)
        if EXAMPLE_GEN_TASK in tasks:
            add_input_fingerprint_task(spec, image, code_version)


def add_input_fingerprint_task(spec: dict, image: str, code_version: str) -> None:
    """Runs :mod:`kubeflow.input_fingerprint` before ImportExampleGen and passes it its outputs.

    The parameters it reads (``input_base``, ``input_config``, ``range_config``) are
    ImportExampleGen's own constants; ImportExampleGen then takes ``input_config``,
    ``input_fingerprint`` and ``span`` from it, as TFX's driver would set them."""
    tasks = spec["root"]["dag"]["tasks"]
    example_gen = tasks[EXAMPLE_GEN_TASK]
    example_gen_component = spec["components"][example_gen["componentRef"]["name"]]
    executor = _executor(spec, EXAMPLE_GEN_TASK)["container"]
    executor.pop("lifecycle", None)  # the hook open-source KFP never runs; this task replaces it

    read = [name for name in (input_fingerprint.INPUT_BASE, input_fingerprint.INPUT_CONFIG,
                              input_fingerprint.RANGE_CONFIG)
            if name in example_gen["inputs"]["parameters"]]
    label = f"{FINGERPRINT_TASK}_executor"
    spec["components"][FINGERPRINT_TASK] = {
        "executorLabel": label,
        "inputDefinitions": {"parameters": {name: {"parameterType": "STRING"} for name in read}},
        "outputDefinitions": {"parameters": {
            name: {"parameterType": kind}
            for name, kind in input_fingerprint.OUTPUT_PARAMETER_TYPES.items()}},
    }
    spec["deploymentSpec"]["executors"][label] = {"container": {
        "image": image,
        "command": list(FINGERPRINT_COMMAND),
        "args": [input_fingerprint.EXECUTOR_INPUT_FLAG, "{{$}}",
                 code_version_arg(code_version)],
    }}
    tasks[FINGERPRINT_TASK] = {
        "taskInfo": {"name": FINGERPRINT_TASK},
        "componentRef": {"name": FINGERPRINT_TASK},
        "inputs": {"parameters": {name: copy.deepcopy(example_gen["inputs"]["parameters"][name])
                                  for name in read}},
        "cachingOptions": {"enableCache": False},
    }

    declared = example_gen_component["inputDefinitions"]["parameters"]
    for name, kind in input_fingerprint.OUTPUT_PARAMETER_TYPES.items():
        example_gen["inputs"]["parameters"][name] = {"taskOutputParameter": {
            "producerTask": FINGERPRINT_TASK, "outputParameterKey": name}}
        declared[name] = {"parameterType": kind}
    example_gen["dependentTasks"] = sorted(set(example_gen.get("dependentTasks", []))
                                           | {FINGERPRINT_TASK})
    # TFX's entry point converts parameters by the types in this copy of the definitions.
    args: List[str] = executor["args"]
    inputs_spec = json.loads(container_entrypoint.get_flag(
        args, container_entrypoint.INPUTS_SPEC_FLAG))
    inputs_spec.setdefault("parameters", {}).update(
        {name: {"parameterType": kind}
         for name, kind in input_fingerprint.OUTPUT_PARAMETER_TYPES.items()})
    executor["args"] = container_entrypoint.set_flag(
        args, container_entrypoint.INPUTS_SPEC_FLAG, json.dumps(inputs_spec, indent=2,
                                                                  sort_keys=True))
