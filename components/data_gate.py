"""DataGate: stops the pipeline when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets the run go on; training on data that breaks the
schema wastes the run at best. This component runs after it and before Transform (an explicit
task dependency) and fails with one readable message listing each anomaly per split.
"""
import os
from typing import List

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tensorflow_metadata.proto.v0 import anomalies_pb2

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator 1.16 writes in each split folder


class DataAnomaliesError(RuntimeError):
    """The data broke the schema; the message lists the anomalies per split."""


def describe_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> List[str]:
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        detail = info.description or info.short_description
        lines.append(f"split {split!r}, feature {feature!r}: {detail}")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        detail = info.description or info.short_description
        lines.append(f"split {split!r}, whole data set: {detail}")
    return lines


def read_anomalies(anomalies_artifact) -> List[str]:
    """One line per anomaly in every split of an ExampleAnomalies artifact."""
    lines = []
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split),
                            ANOMALIES_FILE)
        with tfx.dsl.io.fileio.open(path, "rb") as f:
            lines += describe_anomalies(split, anomalies_pb2.Anomalies.FromString(f.read()))
    return lines


@tfx.dsl.components.component
def DataGate(anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails the run if ExampleValidator reported any anomaly."""
    problems = read_anomalies(anomalies)
    if problems:
        raise DataAnomaliesError(
            "the data does not match the schema; fix the data, or the schema if the change is "
            "intended:\n  " + "\n  ".join(problems))
