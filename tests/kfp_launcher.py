"""Runs a compiled pipeline spec task by task the way Kubeflow Pipelines 2 backends launch it.

No cluster is needed: each task's own container command and arguments run here, as a process
of this machine's Python (which holds exactly what the image holds: ``requirements.lock`` and
this project), with ``{{$}}`` replaced by the ExecutorInput the backend would build. Between
tasks it does what the backend does: resolve parameters and upstream artifacts, compute the
cache key, reuse cached outputs, record output artifacts and parameters. Two modes:

``OSS`` (open-source Kubeflow Pipelines 2, backend 2.5.0; ``backend/src/v2`` of
kubeflow/pipelines at tag 2.5.0, files named below):

- The API server refuses a spec with resolver executors before any task runs
  (``compiler/visitor.go``: "non-container and non-importer executor not implemented").
- ``lifecycle.preCacheCheck`` is never run (no backend code reads it).
- Upstream artifacts reach the executor typed only by an empty instance schema,
  ``{"instanceSchema": ""}``, named by their ML Metadata id, with their properties and custom
  properties as metadata plus ``display_name`` and ``store_session_info``; booleans come back
  as numbers (``metadata/client.go`` ``GetOutputArtifactsByExecutionId``, ``ToRuntimeArtifact``;
  ``metadata/converter.go``).
- Every task gets an extra output ``executor-logs`` of type ``system.Artifact``
  (``driver/driver.go`` ``provisionOutputs``; new in 2.5.0, where ``--publish_logs`` defaults to
  true and the API server's manifest sets ``PUBLISH_LOGS=true``; ``publish_logs=False`` gives
  the 2.0-2.4 behaviour).
- Output URIs are ``<pipeline root>/<task>/<uuid>/<output>``, the executor output file is the
  pod's ``/tmp/kfp_outputs/output_metadata.json``, output parameters ``/tmp/kfp/outputs/<name>``.
- The cache key is the sha256 of the input artifact ids, the input parameter values, the output
  specs and the container's image and raw command + arguments (``cacheutils/cache.go``
  ``GenerateCacheKey``); consulted only when the task's ``cachingOptions.enableCache`` is true.
  A hit reuses the cached execution's artifacts (same ids) and output parameters, and the pod
  is not started.
- The executor output file is parsed strictly (``component/launcher_v2.go``
  ``getExecutorOutputFile``, protojson); its artifact URIs and metadata are merged into the
  outputs (``mergeRuntimeArtifacts``); parameters come from it or from their output files
  (``collectOutputParameters``).
- Input artifacts with ``gs://``, ``s3://`` or ``minio://`` URIs are downloaded to the pod before
  the command runs (``downloadArtifacts``); local paths, as here, are not: the emulation does not
  download.

``VERTEX`` (Vertex AI Pipelines; its backend is not public, so this follows what TFX's own V2
code expects of it, ``tfx/orchestration/kubeflow/v2``): artifacts arrive typed with their
producer's declared type; a task's ``lifecycle.preCacheCheck`` runs first, and the parameter
values it writes to the executor output file replace the task's before the cache check
(``file_based_example_gen/driver.py``); resolver executors are not emulated (the pipeline here
has none). The cache key is built as in OSS mode; Vertex's exact key is not published.
"""
import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

OSS = "oss"
VERTEX = "vertex"
MODES = (OSS, VERTEX)

EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"
LOGS_OUTPUT = "executor-logs"
OSS_OUTPUT_METADATA = "tmp/kfp_outputs/output_metadata.json"  # under the pod's root
VERTEX_PROJECT = "projects/123456/locations/europe-west4/metadataStores/default/artifacts"
# The image's environment (Dockerfile ENV); PATH puts this interpreter's `python` first.
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1", "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT": "1"}
DEFAULT_TASK_TIMEOUT_S = 1200
LOG_TAIL_LINES = 40


class BackendRefused(RuntimeError):
    """The backend refuses the pipeline before running any task."""


class TaskFailed(RuntimeError):
    def __init__(self, task: str, returncode: int, log_path: str):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-LOG_TAIL_LINES:])
        super().__init__(f"task {task} exited with {returncode}; last lines of {log_path}:\n"
                         f"{tail}")
        self.task = task
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = tail


@dataclasses.dataclass
class Artifact:
    id: int
    uri: str
    type: Dict[str, Any]  # the producer's declared artifactType
    metadata: Dict[str, Any]


@dataclasses.dataclass
class Execution:
    task: str
    state: str  # COMPLETE (the pod ran) or CACHED
    cache_key: Optional[str]
    executor_input: Dict[str, Any]  # what the command received as {{$}} (the cached one's if so)
    outputs: Dict[str, List[Artifact]]
    output_parameters: Dict[str, Any]
    log_path: Optional[str] = None
    seconds: float = 0.0


@dataclasses.dataclass
class RunResult:
    run_id: str
    executions: Dict[str, Execution]

    def state(self, task: str) -> str:
        return self.executions[task].state

    def executed(self) -> List[str]:
        return sorted(t for t, e in self.executions.items() if e.state == "COMPLETE")

    def cached(self) -> List[str]:
        return sorted(t for t, e in self.executions.items() if e.state == "CACHED")


class MetadataStore:
    """What the backend keeps between runs: artifacts by id, and successful executions by cache
    key (ML Metadata and the cache table, in memory)."""

    def __init__(self):
        self._next_id = 1000
        self.by_cache_key: Dict[str, Execution] = {}

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id


def _mlmd_round_trip(value):
    """A metadata value as it comes back from ML Metadata (metadata/converter.go): booleans as
    numbers, lists and structs wrapped."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return {"list": value}
    if isinstance(value, dict):
        return {"struct": value}
    return value


def cache_key(executor_input: Dict[str, Any], component: Dict[str, Any],
              container: Dict[str, Any]) -> str:
    """cacheutils/cache.go GenerateCacheKey: ids of the input artifacts, the input parameter
    values, the output artifact specs without URIs, the output parameter types, the image and
    the raw command + arguments; sha256 of its JSON with sorted keys."""
    inputs = executor_input["inputs"]
    key = {
        "inputArtifactNames": {
            name: {"artifactNames": [a["name"] for a in artifacts["artifacts"]]}
            for name, artifacts in inputs.get("artifacts", {}).items()},
        "inputParameterValues": inputs.get("parameterValues", {}),
        "outputArtifactsSpec": {
            name: {key: value for key, value in artifacts["artifacts"][0].items()
                   if key != "uri"}
            for name, artifacts in executor_input["outputs"].get("artifacts", {}).items()},
        "outputParametersSpec": {
            name: spec["parameterType"] for name, spec in
            component.get("outputDefinitions", {}).get("parameters", {}).items()},
        "containerSpec": {"image": container["image"],
                          "cmdArgs": list(container["command"]) + list(container["args"])},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _topological_order(tasks: Dict[str, Any]) -> List[str]:
    upstream = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    for name, task in tasks.items():
        for kind in ("artifacts", "parameters"):
            for spec in task.get("inputs", {}).get(kind, {}).values():
                producer = (spec.get("taskOutputArtifact") or spec.get("taskOutputParameter")
                            or {}).get("producerTask")
                if producer:
                    upstream[name].add(producer)
    order, done = [], set()
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in done and upstream[n] <= done)
        if not ready:
            raise BackendRefused(f"the DAG has a cycle among {sorted(set(tasks) - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


class Backend:
    """One Kubeflow Pipelines installation (OSS) or Vertex AI project (VERTEX): runs compiled
    specs and keeps their metadata and cache between runs."""

    def __init__(self, mode: str, work_dir: str, task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S,
                 extra_env: Optional[Dict[str, str]] = None, publish_logs: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.publish_logs = publish_logs and mode == OSS
        self.work_dir = work_dir
        self.store = MetadataStore()
        self.task_timeout_s = task_timeout_s
        self.extra_env = dict(extra_env or {})
        self.runs = 0

    # --- the run -------------------------------------------------------------------------------

    def run(self, spec: Dict[str, Any], parameters: Optional[Dict[str, Any]] = None,
            enable_caching: Optional[bool] = None,
            pipeline_root: Optional[str] = None) -> RunResult:
        """Runs every task of ``spec`` (a PipelineSpec dict) in dependency order; raises
        TaskFailed at the first task that fails, as a run stops there."""
        self._check_accepted(spec)
        self.runs += 1
        run_id = f"run-{self.runs:03d}-{uuid.uuid4().hex[:8]}"
        root = pipeline_root or spec["defaultPipelineRoot"]
        values = self._run_parameters(spec, parameters or {})
        tasks = spec["root"]["dag"]["tasks"]
        executions: Dict[str, Execution] = {}
        for task_name in _topological_order(tasks):
            executions[task_name] = self._run_task(spec, task_name, tasks[task_name], values,
                                                   executions, root, run_id, enable_caching)
        return RunResult(run_id=run_id, executions=executions)

    def _check_accepted(self, spec: Dict[str, Any]) -> None:
        if spec.get("schemaVersion") != "2.1.0":
            raise BackendRefused(f"schemaVersion {spec.get('schemaVersion')!r}, the API "
                                 "server takes 2.1.0")
        for label, executor in spec["deploymentSpec"]["executors"].items():
            if "container" in executor or "importer" in executor:
                continue
            if self.mode == OSS:
                component = next(name for name, c in spec["components"].items()
                                 if c.get("executorLabel") == label)
                raise BackendRefused(
                    f'error processing component name="{component}": executor(label='
                    f'"{label}"): non-container and non-importer executor not implemented')
            raise NotImplementedError(f"{label}: resolver executors are not emulated")

    def _run_parameters(self, spec, overrides):
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise BackendRefused(f"the pipeline has no parameter(s) {unknown}")
        values = {name: p["defaultValue"] for name, p in declared.items() if "defaultValue" in p}
        values.update(overrides)
        return values

    # --- one task ------------------------------------------------------------------------------

    def _run_task(self, spec, name, task, run_values, executions, root, run_id,
                  enable_caching) -> Execution:
        component = spec["components"][task["componentRef"]["name"]]
        container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        pod = os.path.join(self.work_dir, "pods", run_id, name)
        os.makedirs(pod)
        executor_input = self._executor_input(spec, name, task, component, run_values,
                                              executions, root, run_id, pod)
        log_path = os.path.join(pod, "log.txt")
        started = time.monotonic()
        if self.mode == VERTEX and "lifecycle" in container:
            hook = container["lifecycle"]["preCacheCheck"]
            self._launch(name + " (preCacheCheck)", hook["command"], hook["args"],
                         executor_input, pod, log_path)
            driver_output = self._read_executor_output(executor_input)
            executor_input["inputs"]["parameterValues"].update(
                driver_output.get("parameterValues", {}))

        caching = task.get("cachingOptions", {}).get("enableCache", False)
        if enable_caching is not None:
            caching = enable_caching
        key = cache_key(executor_input, component, container)
        if caching and key in self.store.by_cache_key:
            cached = self.store.by_cache_key[key]
            return Execution(task=name, state="CACHED", cache_key=key,
                             executor_input=cached.executor_input, outputs=cached.outputs,
                             output_parameters=dict(cached.output_parameters),
                             seconds=time.monotonic() - started)

        self._launch(name, container["command"], container["args"], executor_input, pod,
                     log_path)
        outputs, output_parameters = self._record_outputs(component, executor_input)
        execution = Execution(task=name, state="COMPLETE", cache_key=key,
                              executor_input=executor_input, outputs=outputs,
                              output_parameters=output_parameters, log_path=log_path,
                              seconds=time.monotonic() - started)
        self.store.by_cache_key[key] = execution  # written only after a successful run
        return execution

    def _executor_input(self, spec, name, task, component, run_values, executions, root,
                        run_id, pod) -> Dict[str, Any]:
        declared = component.get("inputDefinitions", {}).get("parameters", {})
        parameter_values = {}
        for parameter, source in task.get("inputs", {}).get("parameters", {}).items():
            parameter_values[parameter] = self._typed(
                name, parameter, self._parameter_value(source, run_values, executions, name,
                                                       run_id),
                declared.get(parameter, {}).get("parameterType"))
        artifacts = {}
        for input_name, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            upstream = executions[producer["producerTask"]].outputs[
                producer["outputArtifactKey"]]
            artifacts[input_name] = {"artifacts": [self._input_artifact(a, producer)
                                                   for a in upstream]}
        task_uuid = uuid.uuid4().hex[:12]
        output_specs = dict(component.get("outputDefinitions", {}).get("artifacts", {}))
        if self.publish_logs:
            output_specs[LOGS_OUTPUT] = {"artifactType": {"schemaTitle": "system.Artifact"}}
        if self.mode == OSS:
            output_file = os.path.join(pod, OSS_OUTPUT_METADATA)
            task_root = f"{root}/{name}/{task_uuid}"
        else:
            task_root = f"{root}/123456/{run_id}/{name}_{task_uuid}"
            output_file = f"{task_root}/executor_output.json"
        outputs = {
            "artifacts": {
                key: {"artifacts": [self._output_artifact(key, output_spec, task_root)]}
                for key, output_spec in output_specs.items()},
            "outputFile": output_file,
        }
        output_parameters = component.get("outputDefinitions", {}).get("parameters", {})
        if output_parameters:
            outputs["parameters"] = {
                parameter: {"outputFile": os.path.join(pod, "tmp", "kfp", "outputs", parameter)}
                for parameter in output_parameters}
        inputs = {"parameterValues": parameter_values}
        if artifacts:
            inputs["artifacts"] = artifacts
        return {"inputs": inputs, "outputs": outputs}

    def _parameter_value(self, source, run_values, executions, task_name, run_id):
        if "componentInputParameter" in source:
            return run_values[source["componentInputParameter"]]
        if "taskOutputParameter" in source:
            producer = source["taskOutputParameter"]
            return executions[producer["producerTask"]].output_parameters[
                producer["outputParameterKey"]]
        constant = source["runtimeValue"]["constant"]
        # driver.go resolveInputParameter: these five placeholders, nothing else
        substitutions = {"{{$.pipeline_job_name}}": run_id,
                         "{{$.pipeline_job_resource_name}}": run_id,
                         "{{$.pipeline_job_uuid}}": run_id,
                         "{{$.pipeline_task_name}}": task_name,
                         "{{$.pipeline_task_uuid}}": task_name}
        return substitutions.get(constant, constant) if isinstance(constant, str) else constant

    def _typed(self, task, parameter, value, parameter_type):
        """driver.go handleParamTypeValidationAndConversion, for the types TFX uses."""
        if parameter_type == "STRING" and not isinstance(value, str):
            return json.dumps(value)
        if parameter_type in ("NUMBER_INTEGER", "NUMBER_DOUBLE") and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BackendRefused(f"{task}: input parameter {parameter!r} type mismatch: expect "
                                 f"{parameter_type}, got {type(value).__name__}")
        return value

    def _input_artifact(self, artifact: Artifact, producer) -> Dict[str, Any]:
        if self.mode == OSS:
            metadata = {key: _mlmd_round_trip(value) for key, value in artifact.metadata.items()}
            metadata["display_name"] = producer["outputArtifactKey"]
            metadata["store_session_info"] = json.dumps({"Provider": "gs", "Params": {}})
            return {"name": str(artifact.id), "type": {"instanceSchema": ""},
                    "uri": artifact.uri, "metadata": metadata}
        return {"name": f"{VERTEX_PROJECT}/{artifact.id}", "type": dict(artifact.type),
                "uri": artifact.uri, "metadata": dict(artifact.metadata)}

    def _output_artifact(self, key, output_spec, task_root) -> Dict[str, Any]:
        artifact = {"type": dict(output_spec["artifactType"]), "uri": f"{task_root}/{key}"}
        if output_spec.get("metadata"):
            artifact["metadata"] = dict(output_spec["metadata"])
        return artifact

    # --- the pod -------------------------------------------------------------------------------

    def _launch(self, name, command, args, executor_input, pod, log_path) -> None:
        serialized = json.dumps(executor_input)
        argv = []
        for arg in args:
            if arg == EXECUTOR_INPUT_PLACEHOLDER:
                argv.append(serialized)
            elif "{{$" in arg:
                raise NotImplementedError(f"{name}: placeholder {arg!r} is not emulated")
            else:
                argv.append(arg)
        env = dict(os.environ)
        env.update(IMAGE_ENV)
        env.update(self.extra_env)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        workdir = os.path.join(pod, "workdir")
        os.makedirs(workdir, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(command)} ... ({name})\n")
            log.flush()
            process = subprocess.run(list(command) + argv, cwd=workdir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, timeout=self.task_timeout_s)
        if process.returncode != 0:
            raise TaskFailed(name, process.returncode, log_path)

    def _read_executor_output(self, executor_input) -> Dict[str, Any]:
        path = executor_input["outputs"]["outputFile"]
        if not os.path.exists(path):
            return {}
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # launcher_v2.go getExecutorOutputFile: protojson.Unmarshal, unknown fields refused
        json_format.Parse(text, pipeline_spec_pb2.ExecutorOutput())
        return json.loads(text)

    def _record_outputs(self, component, executor_input):
        executor_output = self._read_executor_output(executor_input)
        outputs = collections.OrderedDict()
        for key, artifacts in executor_input["outputs"]["artifacts"].items():
            artifact = dict(artifacts["artifacts"][0])
            produced = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
            if produced:  # launcher_v2.go mergeRuntimeArtifacts
                if produced[0].get("uri"):
                    artifact["uri"] = produced[0]["uri"]
                artifact["metadata"] = {**artifact.get("metadata", {}),
                                        **produced[0].get("metadata", {})}
            outputs[key] = [Artifact(id=self.store.new_id(), uri=artifact["uri"],
                                     type=artifact["type"],
                                     metadata=artifact.get("metadata", {}))]
        parameters = dict(executor_output.get("parameterValues", {}))
        declared = component.get("outputDefinitions", {}).get("parameters", {})
        for name, spec in executor_input["outputs"].get("parameters", {}).items():
            if name in parameters:
                continue
            path = spec["outputFile"]
            if not os.path.exists(path):  # launcher_v2.go collectOutputParameters
                raise RuntimeError(f"failed to read output parameter name={name!r} "
                                   f"path={path!r}: no such file")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            kind = declared[name]["parameterType"]
            parameters[name] = text if kind == "STRING" else json.loads(text)
        return dict(outputs), parameters
