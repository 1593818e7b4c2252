"""The task that puts the state of ImportExampleGen's input files into its cache key on
open-source Kubeflow Pipelines: ``python -m kubeflow.input_fingerprint --executor_input {{$}}``.

On Vertex AI Pipelines, TFX's ImportExampleGen driver runs before the cache check (the task's
``lifecycle.preCacheCheck``, ``tfx/orchestration/kubeflow/v2/file_based_example_gen/driver.py``):
it fingerprints the files under the data root (count, bytes, modification times) and the
service updates the task's parameters with it, so new files miss the cache. Open-source Kubeflow
Pipelines never runs that hook (no code of its backend reads ``preCacheCheck``), so new files
under the same data root were a cache hit and a run returned the old outputs.

For the ``kfp`` target the compiled spec runs this task first, never cached, and feeds its
output parameters to ImportExampleGen's inputs, where they are part of the cache key. It
computes what TFX's driver computes, with the same TFX code (``FileBasedInputProcessor``):
``input_fingerprint``, ``span`` and ``input_config`` with any ``{SPAN}`` pattern resolved.
"""
import json
import logging
import os
import sys
from typing import Dict, List, Optional

from kubeflow import container_entrypoint

EXECUTOR_INPUT_FLAG = "--executor_input"
# ImportExampleGen's execution properties this task computes (TFX's names).
FINGERPRINT = "input_fingerprint"
SPAN = "span"
INPUT_CONFIG = "input_config"
INPUT_BASE = "input_base"
RANGE_CONFIG = "range_config"
OUTPUT_PARAMETER_TYPES = {FINGERPRINT: "STRING", SPAN: "NUMBER_INTEGER", INPUT_CONFIG: "STRING"}

log = logging.getLogger("lvseg.input_fingerprint")


def fingerprint_inputs(input_base: str, input_config_json: str,
                       range_config_json: Optional[str] = None) -> Dict[str, object]:
    """What TFX's file-based ExampleGen driver computes for ``input_base``."""
    from tfx.components.example_gen import input_processor
    from tfx.proto import example_gen_pb2, range_config_pb2
    from tfx.utils import proto_utils

    input_config = proto_utils.json_to_proto(input_config_json, example_gen_pb2.Input())
    range_config = (proto_utils.json_to_proto(range_config_json, range_config_pb2.RangeConfig())
                    if range_config_json else None)
    processor = input_processor.FileBasedInputProcessor(input_base, input_config.splits,
                                                        range_config)
    span, version = processor.resolve_span_and_version()
    if version is not None:
        raise ValueError("split patterns with {VERSION} are not supported on the kfp target; "
                         "use {SPAN} or plain patterns")
    fingerprint = processor.get_input_fingerprint(span, version)
    for split in input_config.splits:
        split.pattern = processor.get_pattern_for_span_version(split.pattern, span, version)
    return {FINGERPRINT: fingerprint, SPAN: span,
            INPUT_CONFIG: proto_utils.proto_to_json(input_config)}


def run(executor_input: dict) -> dict:
    """Computes the fingerprint from the ExecutorInput's parameters; returns the ExecutorOutput."""
    parameters = executor_input.get("inputs", {}).get("parameterValues", {})
    missing = [name for name in (INPUT_BASE, INPUT_CONFIG) if name not in parameters]
    if missing:
        raise ValueError(f"the task's inputs lack {missing}")
    values = fingerprint_inputs(parameters[INPUT_BASE], parameters[INPUT_CONFIG],
                                parameters.get(RANGE_CONFIG) or None)
    log.info("input files under %s: %s (span %s)", parameters[INPUT_BASE], values[FINGERPRINT],
             values[SPAN])
    return {"parameterValues": values}


def main(argv: List[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv, expected_version = container_entrypoint.pop_flag(
        argv, container_entrypoint.CODE_VERSION_FLAG)
    try:
        container_entrypoint.check_code_version(expected_version)
    except container_entrypoint.CodeVersionMismatch as exc:
        print(f"lvseg: error: {exc}", file=sys.stderr)
        sys.exit(container_entrypoint.EXIT_CODE_VERSION_MISMATCH)
    serialized = container_entrypoint.get_flag(argv, EXECUTOR_INPUT_FLAG)
    if serialized is None:
        sys.exit(f"lvseg: error: {EXECUTOR_INPUT_FLAG} is required")
    executor_input = json.loads(serialized)
    output = run(executor_input)
    output_file = executor_input["outputs"]["outputFile"]
    from tfx.dsl.io import fileio
    fileio.makedirs(os.path.dirname(output_file))
    with fileio.open(output_file, "w") as f:
        f.write(json.dumps(output, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
