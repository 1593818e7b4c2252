"""What a run decided, read back from ML Metadata: eval Dice, blessing, pushed version.

The CLI prints this at the end of ``lvseg run``; tests use it to assert on the gate.
:func:`read_sliced_metrics` reads TFMA's metrics per slice (overall, LV size bucket, patient) and
:func:`validation_failures` the failed thresholds, each naming its slice.
"""
import dataclasses
import os
from typing import Dict, List, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import atomic_pusher
from pipeline import eval_config
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


def latest_execution(store: metadata_store.MetadataStore, pipeline_name: str, node_id: str):
    """The newest finished (run or cached) execution of a pipeline node, or None."""
    context = store.get_context_by_type_and_name(_NODE_CONTEXT_TYPE, f"{pipeline_name}.{node_id}")
    if context is None:
        return None
    executions = [e for e in store.get_executions_by_context(context.id)
                  if e.last_known_state in _DONE_STATES]
    return max(executions, key=lambda e: (e.create_time_since_epoch, e.id), default=None)


def output_artifacts(store: metadata_store.MetadataStore, execution) -> Dict[str, list]:
    """Output artifacts of an execution (None: no outputs), by output key."""
    return _artifacts(store, execution, (metadata_store_pb2.Event.OUTPUT,
                                         metadata_store_pb2.Event.DECLARED_OUTPUT))


def input_artifacts(store: metadata_store.MetadataStore, execution) -> Dict[str, list]:
    """Input artifacts of an execution (None: no inputs), by input key."""
    return _artifacts(store, execution, (metadata_store_pb2.Event.INPUT,
                                         metadata_store_pb2.Event.DECLARED_INPUT))


def _artifacts(store, execution, event_types) -> Dict[str, list]:
    if execution is None:
        return {}
    outputs: Dict[str, list] = {}
    events = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type in event_types]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    for event in events:
        outputs.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
    return outputs


def custom_property(artifact, name: str):
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    return value.int_value if value.HasField("int_value") else value.string_value


OVERALL_SLICE = "overall"


def slice_name(slice_key) -> str:
    """A TFMA ``SliceKey`` proto as text: ``"overall"``, ``"lv_size=small"``, or
    ``"lv_size=small, patient_id=p1"`` for a crossed slice."""
    parts = []
    for single in slice_key.single_slice_keys:
        kind = single.WhichOneof("kind")
        value = getattr(single, kind) if kind else ""
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        parts.append(f"{single.column}={value}")
    return ", ".join(parts) or OVERALL_SLICE


def read_sliced_metrics(evaluation_uri: str) -> List[Dict[str, object]]:
    """TFMA's metrics of an Evaluator output, per slice.

    Returns one dict per slice, the overall slice first, then by slice name (``lv_size=...``,
    ``patient_id=...``)::

        {"slice": "overall" | "lv_size=small" | "patient_id=p007" | ...,
         "metrics": {metric name: candidate value},   # e.g. "dice", "iou", "pixel_accuracy",
                                                      # "example_count", "lv_area_error_px",
                                                      # "lv_area_error_mm2" (only with spacing)
         "baseline": {metric name: baseline value}}   # {} when there was no baseline model

    Values are floats; metrics TFMA stores as anything but a double (none in this pipeline's
    config) are left out, and so are TFMA's candidate - baseline diffs (subtract the two).
    Cross-slice results are not included.
    """
    rows = []
    for metrics in tfma.load_metrics(evaluation_uri):
        if metrics.HasField("cross_slice_key"):
            continue
        candidate: Dict[str, float] = {}
        baseline: Dict[str, float] = {}
        for entry in metrics.metric_keys_and_values:
            key = entry.key
            if key.is_diff or not entry.value.HasField("double_value"):
                continue
            target = baseline if key.model_name == tfma.BASELINE_KEY else candidate
            target[key.name] = entry.value.double_value.value
        rows.append({"slice": slice_name(metrics.slice_key), "metrics": candidate,
                     "baseline": baseline})
    rows.sort(key=lambda row: (row["slice"] != OVERALL_SLICE, row["slice"]))
    return rows


def _overall_dice(evaluation_uri: str):
    """(candidate Dice, baseline Dice or None) of the overall slice."""
    for row in read_sliced_metrics(evaluation_uri):
        if row["slice"] == OVERALL_SLICE:
            return row["metrics"].get(dice.METRIC_NAME), row["baseline"].get(dice.METRIC_NAME)
    return None, None


def failure_text(slice_key, failure) -> str:
    """One TFMA validation failure in words, naming the slice, e.g.
    ``"lv_size=small: dice changed by -0.3120 against the baseline (allowed >= -0.05)"``."""
    name = slice_name(slice_key)
    metric = failure.metric_key.name
    if failure.message:  # TFMA's own text: "Metric not found.", a comparison error
        return f"{name}: {metric}: {failure.message.strip()}"
    value = failure.metric_value.double_value.value
    if failure.metric_key.is_diff:
        bound = " and ".join(eval_config.change_bounds(failure.metric_threshold))
        return f"{name}: {metric} changed by {value:+.4f} against the baseline (allowed {bound})"
    bound = " and ".join(eval_config.value_bounds(failure.metric_threshold))
    return f"{name}: {metric} {value:.4f} (allowed {bound})"


def validation_failures(evaluation_uri: str) -> List[str]:
    """Every failed threshold of an Evaluator output, each naming its slice (see
    :func:`failure_text`), and the thresholded slices TFMA found no data for."""
    validation = tfma.load_validation_result(evaluation_uri)
    failures = [failure_text(per_slice.slice_key, failure)
                for per_slice in validation.metric_validations_per_slice
                for failure in per_slice.failures]
    for spec in validation.missing_slices:
        columns = list(spec.feature_keys) + [f"{k}={v}" for k, v in spec.feature_values.items()]
        failures.append(f"{', '.join(columns) or OVERALL_SLICE}: no examples in the eval split "
                        "for a thresholded slice")
    return failures


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """The run's SQLite ML Metadata store, read-only."""
    if not os.path.isfile(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}: has the pipeline run "
                                "with this output root?")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def read_run_summary(metadata_path: str, pipeline_name: str) -> RunSummary:
    store = open_store(metadata_path)

    trainer = output_artifacts(store, latest_execution(store, pipeline_name, "Trainer"))
    evaluator = output_artifacts(store, latest_execution(store, pipeline_name, "Evaluator"))
    push_execution = latest_execution(store, pipeline_name,
                                       atomic_pusher.AtomicPusher.__name__)
    pusher = output_artifacts(store, push_execution)

    eval_dice = baseline_dice = None
    failures: List[str] = []
    evaluation_uri = None
    if evaluator.get("evaluation"):
        evaluation_uri = evaluator["evaluation"][0].uri
        eval_dice, baseline_dice = _overall_dice(evaluation_uri)
        failures = validation_failures(evaluation_uri)
    blessing = evaluator.get("blessing", [None])[0]
    pushed_model = pusher.get("pushed_model", [None])[0]
    pushed = bool(pushed_model is not None and custom_property(pushed_model, "pushed"))
    return RunSummary(
        eval_dice=eval_dice,
        baseline_dice=baseline_dice,
        blessed=bool(blessing is not None and custom_property(blessing, "blessed")),
        validation_failures=failures,
        pushed=pushed,
        push_reused=bool(pushed and (
            push_execution.last_known_state == metadata_store_pb2.Execution.CACHED
            or custom_property(pushed_model, atomic_pusher.REUSED_VERSION_PROPERTY))),
        pushed_version=custom_property(pushed_model, "pushed_version") if pushed else None,
        pushed_path=custom_property(pushed_model, "pushed_destination") if pushed else None,
        model_uri=trainer["model"][0].uri if trainer.get("model") else None,
        evaluation_uri=evaluation_uri)
