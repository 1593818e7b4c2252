"""The command of every TFX task on Kubeflow: ``python -m kubeflow.container_entrypoint ARGS``.

ARGS are those TFX's Kubeflow V2 compiler writes for its own entry point
(``tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor``), plus the code version
``lvseg kubeflow compile`` adds. This module does three things, then runs TFX's entry point with
the remaining arguments, exactly as ``python -m`` would:

1. **Outputs the orchestrator adds for itself.** Open-source Kubeflow Pipelines 2.5 gives every
   task an extra output ``executor-logs`` of type ``system.Artifact`` (``driver/driver.go``
   ``provisionOutputs``, on by default) and writes the task's log there itself. TFX maps only
   ``tfx.*`` types to classes and fails on it (``ImportError: Could not import
   system.Artifact``) before running anything, so ``system.*`` outputs are taken out of what
   TFX sees; the launcher still uploads the log from its own copy of the ExecutorInput.
2. **Artifact types the orchestrator left out.** TFX rebuilds each input artifact's class from
   ``type.instanceSchema`` in the ExecutorInput. Open-source Kubeflow Pipelines 2 leaves that
   schema empty for artifacts produced by an upstream task (its driver reads them back from ML
   Metadata with ``Schema: ""``, ``backend/src/v2/metadata/client.go``), and TFX 1.16 then fails
   with ``AttributeError: 'NoneType' object has no attribute 'get'`` (tensorflow/tfx#7768). The
   compiled task carries its component's input definitions
   (``--json_serialized_inputs_spec_args``); an input artifact without a usable type gets the
   type declared there. Typed artifacts (Vertex AI Pipelines) are left as they are.
3. **The code version** (:mod:`kubeflow.code_version`): a task whose image holds other code than
   the spec was compiled from stops before doing anything, saying which to rebuild.

After TFX's executor has finished, with ``--lvseg_remove_gcs_directory_markers`` (the ``kfp``
target), it removes the zero-byte GCS "directory" objects under the task's outputs, which
break open-source Kubeflow Pipelines' download of them into the next task
(:mod:`kubeflow.gcs_markers`).
"""
import json
import logging
import runpy
import sys
from typing import Dict, List, Optional, Tuple

TFX_ENTRY_POINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
INVOCATION_ARGS_FLAG = "--json_serialized_invocation_args"
INPUTS_SPEC_FLAG = "--json_serialized_inputs_spec_args"
CODE_VERSION_FLAG = "--lvseg_code_version"
REMOVE_MARKERS_FLAG = "--lvseg_remove_gcs_directory_markers"
EXIT_CODE_VERSION_MISMATCH = 3
SYSTEM_TYPE = "system."  # KFP's own artifact types (system.Artifact, ...), unknown to TFX

log = logging.getLogger("lvseg.entrypoint")


class CodeVersionMismatch(RuntimeError):
    """The image runs other code than the compiled spec names."""


def _find_flag(argv: List[str], flag: str) -> Optional[Tuple[int, bool]]:
    """(index, joined) of ``flag`` in argv: joined when written ``--flag=value``."""
    for index, arg in enumerate(argv):
        if arg == flag:
            return index, False
        if arg.startswith(flag + "="):
            return index, True
    return None


def get_flag(argv: List[str], flag: str) -> Optional[str]:
    found = _find_flag(argv, flag)
    if found is None:
        return None
    index, joined = found
    if joined:
        return argv[index].split("=", 1)[1]
    if index + 1 >= len(argv):
        raise ValueError(f"{flag} has no value")
    return argv[index + 1]


def set_flag(argv: List[str], flag: str, value: str) -> List[str]:
    index, joined = _find_flag(argv, flag)
    argv = list(argv)
    if joined:
        argv[index] = f"{flag}={value}"
    else:
        argv[index + 1] = value
    return argv


def pop_flag(argv: List[str], flag: str) -> Tuple[List[str], Optional[str]]:
    value = get_flag(argv, flag)
    if value is None:
        return list(argv), None
    index, joined = _find_flag(argv, flag)
    return argv[:index] + argv[index + (1 if joined else 2):], value


def _has_usable_type(artifact: dict) -> bool:
    """What TFX's ``_retrieve_class_path`` can read: a schema title or a non-empty schema."""
    artifact_type = artifact.get("type") or {}
    return bool(artifact_type.get("schemaTitle") or
                (artifact_type.get("instanceSchema") or "").strip())


def fill_input_artifact_types(executor_input: dict, inputs_spec: dict) -> Dict[str, str]:
    """Gives each input artifact without a usable type the type its input definition declares.

    Returns input name -> the schema's title, for the inputs it filled."""
    declared = inputs_spec.get("artifacts", {})
    filled = {}
    for name, artifact_list in executor_input.get("inputs", {}).get("artifacts", {}).items():
        for artifact in artifact_list.get("artifacts", []):
            if _has_usable_type(artifact):
                continue
            if name not in declared or "artifactType" not in declared[name]:
                raise ValueError(
                    f"input artifact {name!r} arrived without a type and the component's input "
                    f"definitions declare none (they declare {sorted(declared)})")
            artifact["type"] = dict(declared[name]["artifactType"])
            filled[name] = _schema_title(artifact["type"])
    return filled


def _schema_title(artifact_type: dict) -> str:
    if artifact_type.get("schemaTitle"):
        return artifact_type["schemaTitle"]
    for line in artifact_type.get("instanceSchema", "").splitlines():
        if line.startswith("title:"):
            return line.split(":", 1)[1].strip()
    return "?"


def drop_orchestrator_outputs(executor_input: dict) -> List[str]:
    """Removes the outputs typed ``system.*`` (the orchestrator's own, e.g. ``executor-logs``);
    returns their names."""
    outputs = executor_input.get("outputs", {}).get("artifacts", {})
    dropped = sorted(name for name, artifact_list in outputs.items()
                     if any((a.get("type") or {}).get("schemaTitle", "").startswith(SYSTEM_TYPE)
                            for a in artifact_list.get("artifacts", [])))
    for name in dropped:
        del outputs[name]
    return dropped


def adapted_for_tfx(argv: List[str]) -> List[str]:
    """``argv`` with the ExecutorInput as TFX's entry point needs it: the orchestrator's own
    outputs removed, missing input artifact types filled in."""
    invocation = get_flag(argv, INVOCATION_ARGS_FLAG)
    if invocation is None:
        return argv
    spec = get_flag(argv, INPUTS_SPEC_FLAG)
    executor_input = json.loads(invocation)
    dropped = drop_orchestrator_outputs(executor_input)
    filled = fill_input_artifact_types(executor_input, json.loads(spec) if spec else {})
    if dropped:
        log.info("outputs the orchestrator keeps for itself, not given to TFX: %s",
                 ", ".join(dropped))
    if filled:
        log.info("input artifacts the orchestrator sent without a type, typed from the "
                 "component's input definitions: %s",
                 ", ".join(f"{k} ({v})" for k, v in sorted(filled.items())))
    if not (dropped or filled):
        return argv
    return set_flag(argv, INVOCATION_ARGS_FLAG, json.dumps(executor_input))


def check_code_version(expected: Optional[str]) -> None:
    from kubeflow import code_version

    if expected is None:
        log.warning("the task names no code version (a spec compiled before they existed): "
                    "recompile it so a rebuilt image cannot reuse outputs of old code")
        return
    actual = code_version.code_version()
    if actual != expected:
        raise CodeVersionMismatch(
            f"this image holds code version {actual}, but the pipeline spec was compiled from "
            f"code version {expected}: build and push the image from the same commit and lock "
            f"the spec was compiled from (or recompile the spec from the image's commit); "
            f"running would mix code versions and let the cache return outputs of other code")


def output_uris(argv: List[str]) -> List[str]:
    """The URIs of the output artifacts in the ExecutorInput of ``argv``."""
    invocation = get_flag(argv, INVOCATION_ARGS_FLAG)
    outputs = json.loads(invocation).get("outputs", {}).get("artifacts", {}) if invocation else {}
    return sorted(artifact["uri"] for artifact_list in outputs.values()
                  for artifact in artifact_list.get("artifacts", []) if artifact.get("uri"))


def remove_output_markers(argv: List[str]) -> None:
    from kubeflow import gcs_markers

    for uri in output_uris(argv):
        if uri.startswith(gcs_markers.GCS_SCHEME):
            gcs_markers.remove_directory_markers(uri)


def _flag_present(argv: List[str], flag: str) -> Tuple[List[str], bool]:
    return [arg for arg in argv if arg != flag], flag in argv


def main(argv: List[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv, expected_version = pop_flag(argv, CODE_VERSION_FLAG)
    argv, remove_markers = _flag_present(argv, REMOVE_MARKERS_FLAG)
    try:
        check_code_version(expected_version)
    except CodeVersionMismatch as exc:
        print(f"lvseg: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CODE_VERSION_MISMATCH)
    argv = adapted_for_tfx(argv)
    # Exactly `python -m tfx....kubeflow_v2_run_executor ARGS`: TFX reads sys.argv itself.
    sys.argv = [TFX_ENTRY_POINT] + argv
    try:
        runpy.run_module(TFX_ENTRY_POINT, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:  # absl's app.run ends with sys.exit, 0 on success
        if exit_.code not in (0, None):
            raise
    if remove_markers:
        remove_output_markers(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
