"""What the report and the model card say about a run, read from ML Metadata and TFMA's output.

:func:`read_run_facts` gathers, for the newest finished execution of every pipeline node: its
state and times, and its input and output artifacts (the lineage table); plus the Trainer's
configuration, the Evaluator's configuration, baseline and decision, and the push.
"""
import dataclasses
import json
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2

from components import served_model
from pipeline import run_summary

_STATE_NAMES = {value: name for name, value in metadata_store_pb2.Execution.State.items()}
# The order the stages run in; nodes not listed (custom ones) follow in MLMD's order.
_NODE_ORDER = ("ImportExampleGen", "SunnybrookExampleGen", "StatisticsGen", "ImportSchemaGen",
               "SchemaGen", "ExampleValidator", "DataGate", "Transform", "Trainer",
               "ServedModel", "Evaluator", "ServingCheck", "InfraValidator",
               "AtomicPusher")


@dataclasses.dataclass
class ArtifactRef:
    key: str  # the input/output name, e.g. "model"
    type_name: str
    uri: str
    artifact_id: int


@dataclasses.dataclass
class StageFacts:
    node_id: str
    state: str  # COMPLETE, CACHED, ...
    started: Optional[float]  # seconds since the epoch
    seconds: Optional[float]
    inputs: List[ArtifactRef]
    outputs: List[ArtifactRef]

    def output_uri(self, key: str) -> Optional[str]:
        return next((ref.uri for ref in self.outputs if ref.key == key), None)

    def input_uri(self, key: str) -> Optional[str]:
        return next((ref.uri for ref in self.inputs if ref.key == key), None)


@dataclasses.dataclass
class RunFacts:
    pipeline_name: str
    metadata_path: str
    stages: List[StageFacts]
    summary: run_summary.RunSummary
    training_config: Dict[str, object]
    train_steps: Optional[int]
    # the served version the Evaluator compared with and its folder; None: nothing was served
    baseline_version: Optional[int] = None
    baseline_path: Optional[str] = None

    def stage(self, *node_ids: str) -> Optional[StageFacts]:
        return next((s for s in self.stages if s.node_id in node_ids), None)

    @property
    def examples_uri(self) -> Optional[str]:
        example_gen = self.stage("ImportExampleGen", "SunnybrookExampleGen")
        return example_gen.output_uri("examples") if example_gen else None

    @property
    def statistics_uri(self) -> Optional[str]:
        stage = self.stage("StatisticsGen")
        return stage.output_uri("statistics") if stage else None

    @property
    def model_run_uri(self) -> Optional[str]:
        stage = self.stage("Trainer")
        return stage.output_uri("model_run") if stage else None

    @property
    def baseline_model_uri(self) -> Optional[str]:
        """The served version the candidate was compared with (its folder under the serving
        directory), None when nothing was served."""
        return self.baseline_path


def _refs(by_key: Dict[str, list], types: Dict[int, str]) -> List[ArtifactRef]:
    return [ArtifactRef(key, types.get(artifact.type_id, "?"), artifact.uri, artifact.id)
            for key, artifacts in sorted(by_key.items()) for artifact in artifacts]


def pipeline_names(store) -> List[str]:
    return sorted(context.name for context in store.get_contexts_by_type("pipeline"))


def read_run_facts(metadata_path: str, pipeline_name: Optional[str] = None) -> RunFacts:
    """The facts of the latest run recorded in ``metadata_path`` (the only pipeline in it, or
    ``pipeline_name``)."""
    store = run_summary.open_store(metadata_path)
    names = pipeline_names(store)
    if pipeline_name is None:
        if len(names) != 1:
            raise ValueError(f"{metadata_path} holds pipelines {names}: name one")
        pipeline_name = names[0]
    elif pipeline_name not in names:
        raise ValueError(f"no pipeline {pipeline_name!r} in {metadata_path} (it has {names})")
    types = {t.id: t.name for t in store.get_artifact_types()}
    prefix = pipeline_name + "."
    node_ids = [c.name[len(prefix):] for c in store.get_contexts_by_type("node")
                if c.name.startswith(prefix)]
    node_ids.sort(key=lambda n: _NODE_ORDER.index(n) if n in _NODE_ORDER else len(_NODE_ORDER))
    stages = []
    for node_id in node_ids:
        execution = run_summary.latest_execution(store, pipeline_name, node_id)
        if execution is None:
            continue
        started = execution.create_time_since_epoch / 1000.0 or None
        ended = execution.last_update_time_since_epoch / 1000.0 or None
        stages.append(StageFacts(
            node_id=node_id,
            state=_STATE_NAMES.get(execution.last_known_state, "UNKNOWN"),
            started=started,
            seconds=round(ended - started, 1) if started and ended else None,
            inputs=_refs(run_summary.input_artifacts(store, execution), types),
            outputs=_refs(run_summary.output_artifacts(store, execution), types)))
    training_config, train_steps = {}, None
    trainer = run_summary.latest_execution(store, pipeline_name, "Trainer")
    if trainer is not None:
        properties = trainer.custom_properties
        if "custom_config" in properties:
            training_config = json.loads(properties["custom_config"].string_value or "{}")
        if "train_args" in properties:
            train_steps = json.loads(properties["train_args"].string_value or "{}").get(
                "num_steps")
    baseline_version, baseline_path = _served_baseline(store, pipeline_name)
    return RunFacts(pipeline_name=pipeline_name, metadata_path=metadata_path, stages=stages,
                    summary=run_summary.read_run_summary(metadata_path, pipeline_name),
                    training_config=training_config, train_steps=train_steps,
                    baseline_version=baseline_version, baseline_path=baseline_path)


def _served_baseline(store, pipeline_name: str):
    """(version, folder) of the model ServedModel gave the Evaluator, or (None, None)."""
    execution = run_summary.latest_execution(store, pipeline_name,
                                             served_model.ServedModel.__name__)
    if execution is None:
        return None, None
    [model] = run_summary.output_artifacts(store, execution).get("model", [None])
    version = (run_summary.custom_property(model, served_model.SERVED_VERSION_PROPERTY)
               if model else None)
    if not version:
        return None, None
    return version, run_summary.custom_property(model, served_model.SERVED_PATH_PROPERTY)
