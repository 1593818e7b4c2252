"""What a run decided, read back from ML Metadata: eval Dice, blessing, pushed version.

The CLI prints this at the end of ``lvseg run``; tests use it to assert on the gate.
"""
import dataclasses
from typing import Dict, List, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import atomic_pusher
from trainer import dice

_NODE_CONTEXT_TYPE = "node"
_DONE_STATES = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


@dataclasses.dataclass
class RunSummary:
    eval_dice: Optional[float]
    baseline_dice: Optional[float]
    blessed: bool
    validation_failures: List[str]
    pushed: bool
    push_reused: bool  # an earlier run pushed this very model (cached, or identical files)
    pushed_version: Optional[str]
    pushed_path: Optional[str]
    model_uri: Optional[str]
    evaluation_uri: Optional[str]


def _latest_execution(store: metadata_store.MetadataStore, pipeline_name: str, node_id: str):
    """The newest finished (run or cached) execution of a pipeline node, or None."""
    context = store.get_context_by_type_and_name(_NODE_CONTEXT_TYPE, f"{pipeline_name}.{node_id}")
    if context is None:
        return None
    executions = [e for e in store.get_executions_by_context(context.id)
                  if e.last_known_state in _DONE_STATES]
    return max(executions, key=lambda e: (e.create_time_since_epoch, e.id), default=None)


def _outputs(store: metadata_store.MetadataStore, execution) -> Dict[str, list]:
    """Output artifacts of an execution (None: no outputs), by output key."""
    if execution is None:
        return {}
    outputs: Dict[str, list] = {}
    output_types = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    events = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type in output_types]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    for event in events:
        outputs.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
    return outputs


def _custom(artifact, name: str):
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    return value.int_value if value.HasField("int_value") else value.string_value


def _overall_dice(evaluation_uri: str):
    """(candidate Dice, baseline Dice or None) of the overall slice."""
    candidate = baseline = None
    for metrics in tfma.load_metrics(evaluation_uri):
        if metrics.slice_key.single_slice_keys:
            continue
        for entry in metrics.metric_keys_and_values:
            key = entry.key
            if key.name != dice.METRIC_NAME or key.is_diff:
                continue
            value = entry.value.double_value.value
            if key.model_name == "baseline":
                baseline = value
            else:
                candidate = value
    return candidate, baseline


def read_run_summary(metadata_path: str, pipeline_name: str) -> RunSummary:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)

    trainer = _outputs(store, _latest_execution(store, pipeline_name, "Trainer"))
    evaluator = _outputs(store, _latest_execution(store, pipeline_name, "Evaluator"))
    push_execution = _latest_execution(store, pipeline_name,
                                       atomic_pusher.AtomicPusher.__name__)
    pusher = _outputs(store, push_execution)

    eval_dice = baseline_dice = None
    failures: List[str] = []
    evaluation_uri = None
    if evaluator.get("evaluation"):
        evaluation_uri = evaluator["evaluation"][0].uri
        eval_dice, baseline_dice = _overall_dice(evaluation_uri)
        validation = tfma.load_validation_result(evaluation_uri)
        for failure in validation.metric_validations_per_slice:
            failures += [f"{f.metric_key.name}: {f.message}" for f in failure.failures]
    blessing = evaluator.get("blessing", [None])[0]
    pushed_model = pusher.get("pushed_model", [None])[0]
    pushed = bool(pushed_model is not None and _custom(pushed_model, "pushed"))
    return RunSummary(
        eval_dice=eval_dice,
        baseline_dice=baseline_dice,
        blessed=bool(blessing is not None and _custom(blessing, "blessed")),
        validation_failures=failures,
        pushed=pushed,
        push_reused=bool(pushed and (
            push_execution.last_known_state == metadata_store_pb2.Execution.CACHED
            or _custom(pushed_model, atomic_pusher.REUSED_VERSION_PROPERTY))),
        pushed_version=_custom(pushed_model, "pushed_version") if pushed else None,
        pushed_path=_custom(pushed_model, "pushed_destination") if pushed else None,
        model_uri=trainer["model"][0].uri if trainer.get("model") else None,
        evaluation_uri=evaluation_uri)
