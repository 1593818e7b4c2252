"""The task entry point's pieces (kubeflow/container_entrypoint.py, kubeflow/gcs_markers.py), on
the ExecutorInputs the backends send; whole tasks run through it in test_kubeflow_launch.py."""
import json
import subprocess
import sys

import pytest

from kubeflow import container_entrypoint, gcs_markers
from tests.conftest import REPO_ROOT

EXAMPLES_SCHEMA = "title: tfx.Examples\ntype: object\n"
INPUTS_SPEC = {"artifacts": {"examples": {"artifactType": {"instanceSchema": EXAMPLES_SCHEMA}}},
               "parameters": {"exclude_splits": {"parameterType": "STRING"}}}


def _executor_input(input_type):
    return {"inputs": {"artifacts": {"examples": {"artifacts": [
        {"name": "1042", "type": input_type, "uri": "gs://b/root/ImportExampleGen/u/examples",
         "metadata": {"split_names": "[\"train\", \"eval\"]"}}]}}},
        "outputs": {"artifacts": {
            "statistics": {"artifacts": [{"type": {"instanceSchema": "title: tfx.X\n"},
                                          "uri": "gs://b/root/StatisticsGen/v/statistics"}]},
            "executor-logs": {"artifacts": [{"type": {"schemaTitle": "system.Artifact"},
                                             "uri": "gs://b/root/StatisticsGen/v/logs"}]}},
            "outputFile": "/tmp/kfp_outputs/output_metadata.json"}}


def test_untyped_inputs_get_their_declared_type():
    """Open-source KFP: {"instanceSchema": ""} (metadata/client.go, Schema: "")."""
    executor_input = _executor_input({"instanceSchema": ""})
    assert container_entrypoint.fill_input_artifact_types(executor_input, INPUTS_SPEC) == {
        "examples": "tfx.Examples"}
    [artifact] = executor_input["inputs"]["artifacts"]["examples"]["artifacts"]
    assert artifact["type"] == {"instanceSchema": EXAMPLES_SCHEMA}
    assert artifact["metadata"] == {"split_names": "[\"train\", \"eval\"]"}  # nothing else moves


@pytest.mark.parametrize("typed", [{"instanceSchema": EXAMPLES_SCHEMA},
                                   {"schemaTitle": "tfx.Examples"}])
def test_typed_inputs_are_left_as_they_are(typed):
    executor_input = _executor_input(dict(typed))
    assert container_entrypoint.fill_input_artifact_types(executor_input, INPUTS_SPEC) == {}
    assert executor_input["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"] == typed


def test_an_untyped_input_the_component_does_not_declare_is_an_error():
    with pytest.raises(ValueError, match="declare none"):
        container_entrypoint.fill_input_artifact_types(_executor_input({}), {"artifacts": {}})


def test_the_orchestrators_own_outputs_are_not_given_to_tfx():
    executor_input = _executor_input({"instanceSchema": ""})
    assert container_entrypoint.drop_orchestrator_outputs(executor_input) == ["executor-logs"]
    assert list(executor_input["outputs"]["artifacts"]) == ["statistics"]


def test_the_arguments_keep_their_form_and_order():
    argv = ["--executor_class_path", "x.Executor",
            container_entrypoint.INVOCATION_ARGS_FLAG, json.dumps(_executor_input(
                {"instanceSchema": ""})),
            f"{container_entrypoint.INPUTS_SPEC_FLAG}={json.dumps(INPUTS_SPEC)}",
            "--direct_num_workers=1"]
    adapted = container_entrypoint.adapted_for_tfx(argv)
    assert [a for i, a in enumerate(adapted) if i != 3] == [a for i, a in enumerate(argv)
                                                            if i != 3]
    executor_input = json.loads(adapted[3])
    assert executor_input["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"] == {
        "instanceSchema": EXAMPLES_SCHEMA}
    assert container_entrypoint.output_uris(adapted) == [
        "gs://b/root/StatisticsGen/v/statistics"]


def test_an_image_with_other_code_refuses_to_run():
    process = subprocess.run(
        [sys.executable, "-m", "kubeflow.container_entrypoint",
         f"{container_entrypoint.CODE_VERSION_FLAG}=0123456789abcdef",
         "--executor_class_path", "tfx.components.statistics_gen.executor.Executor",
         container_entrypoint.INVOCATION_ARGS_FLAG, "{}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == container_entrypoint.EXIT_CODE_VERSION_MISMATCH
    assert "the pipeline spec was compiled from code version 0123456789abcdef" in process.stderr


# What a Trainer task leaves on GCS: TensorFlow's directory markers (zero-byte "x/" objects)
# beside the files, for the model and, listed by the same prefix, its sibling model_run.
TRAINER_OBJECTS = [
    ("root/Trainer/u/model/", 0),
    ("root/Trainer/u/model/Format-Serving/", 0),
    ("root/Trainer/u/model/Format-Serving/assets/", 0),
    ("root/Trainer/u/model/Format-Serving/saved_model.pb", 912345),
    ("root/Trainer/u/model/Format-Serving/variables/", 0),
    ("root/Trainer/u/model/Format-Serving/variables/variables.index", 0),  # an empty file
    ("root/Trainer/u/model/Format-Serving/variables/variables.data-00000-of-00001", 77777),
    ("root/Trainer/u/model_run/", 0),
    ("root/Trainer/u/model_run/train/events.out.tfevents.1", 4096),
]


def test_directory_markers_are_the_empty_slash_objects_under_the_artifact():
    assert gcs_markers.directory_markers(TRAINER_OBJECTS, "root/Trainer/u/model") == [
        "root/Trainer/u/model/", "root/Trainer/u/model/Format-Serving/",
        "root/Trainer/u/model/Format-Serving/assets/",
        "root/Trainer/u/model/Format-Serving/variables/"]


class _FakeBlob:
    def __init__(self, store, name):
        self.store, self.name = store, name
        self.size = store.objects.get(name)

    def delete(self):
        del self.store.objects[self.name]


class _FakeGcs:
    """google.cloud.storage.Client's list_blobs / bucket().blob().delete() on a dict."""

    def __init__(self, objects):
        self.objects = dict(objects)

    def list_blobs(self, bucket, prefix):
        return [_FakeBlob(self, name) for name in sorted(self.objects) if name.startswith(prefix)]

    def bucket(self, name):
        return self

    def blob(self, name):
        return _FakeBlob(self, name)


def test_removing_markers_keeps_every_file():
    store = _FakeGcs(TRAINER_OBJECTS)
    removed = gcs_markers.remove_directory_markers("gs://bucket/root/Trainer/u/model", store)
    assert len(removed) == 4
    assert sorted(store.objects) == sorted(
        name for name, size in TRAINER_OBJECTS if name not in removed)
    assert "root/Trainer/u/model/Format-Serving/variables/variables.index" in store.objects
    assert "root/Trainer/u/model_run/" in store.objects  # another artifact: its own task's job
