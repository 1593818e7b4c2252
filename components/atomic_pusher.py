"""A Pusher whose model versions appear whole or not at all.

TFX's stock Pusher copies files straight into ``<base>/<unix time>/``, so TF Serving, which polls
the base directory and loads every new integer-named folder, can see a half-copied model. Here a
version is copied into a hidden temporary folder beside its final place (same file system; TF
Serving ignores names that are not integers) and then renamed, which is atomic on POSIX file
systems. Object stores (``gs://``, ``s3://``) have no atomic rename: there the copy goes straight
to the final folder with ``saved_model.pb`` last, as the stock Pusher does.

Versions are the push time in seconds, but always above the newest existing version, so two
pushes in the same second both land (the stock Pusher silently skips the second). A model that is
already the newest version (byte for byte) is not published again.
"""
import os
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from serving import versions as versions_lib

SAVED_MODEL_FILE = "saved_model.pb"
INCOMPLETE_MARK = ".incomplete-"
# Custom property of the PushedModel artifact: 1 when the model was already the newest version.
REUSED_VERSION_PROPERTY = "reused_version"


def is_local_path(path: str) -> bool:
    return "://" not in path


def existing_versions(base_directory: str) -> List[int]:
    """The version folders, complete or not, as TF Serving's file system source reads their
    names (``serving.versions.parse_version``: ``0005`` is version 5)."""
    return sorted(versions_lib.version_folders(base_directory, complete=False))


def next_version(base_directory: str) -> int:
    versions = existing_versions(base_directory)
    return max([int(time.time())] + [v + 1 for v in versions])


def _relative_files(root: str) -> List[str]:
    root = root.rstrip("/")
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in fileio.walk(root) for name in names)


def _same_files(folder_a: str, folder_b: str) -> bool:
    files = _relative_files(folder_a)
    if files != _relative_files(folder_b):
        return False
    for name in files:
        with fileio.open(os.path.join(folder_a, name), "rb") as a, \
                fileio.open(os.path.join(folder_b, name), "rb") as b:
            if a.read() != b.read():
                return False
    return True


def latest_version_if_identical(model_path: str, base_directory: str) -> Optional[Tuple[int, str]]:
    """(version, path) of the newest version when it holds exactly this SavedModel, else None.

    A pipeline re-run whose Trainer came from the cache re-blesses the same model against
    itself; publishing it again would make servers reload an identical version.
    """
    folders = versions_lib.version_folders(base_directory, complete=False)
    if not folders:
        return None
    newest = max(folders)
    version_dir = os.path.join(base_directory, folders[newest])
    return (newest, version_dir) if _same_files(model_path, version_dir) else None


def _copy_saved_model(source: str, destination: str) -> None:
    """Copies a SavedModel folder with ``saved_model.pb`` last (what servers wait for)."""
    io_utils.copy_dir(source, destination, deny_regex_patterns=[r"saved_model\.pb$"])
    io_utils.copy_file(os.path.join(source, SAVED_MODEL_FILE),
                       os.path.join(destination, SAVED_MODEL_FILE))


def push_version_atomically(model_path: str, base_directory: str) -> Tuple[int, str]:
    """Publishes the SavedModel at ``model_path`` as a new version; returns (version, path)."""
    if not fileio.exists(os.path.join(model_path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"no {SAVED_MODEL_FILE} in {model_path}: not a SavedModel")
    fileio.makedirs(base_directory)
    if not is_local_path(base_directory):
        version = next_version(base_directory)
        version_dir = os.path.join(base_directory, str(version))
        _copy_saved_model(model_path, version_dir)
        return version, version_dir

    staging = os.path.join(base_directory, f".{uuid.uuid4().hex}{INCOMPLETE_MARK}{os.getpid()}")
    try:
        _copy_saved_model(model_path, staging)
        while True:
            version = next_version(base_directory)
            version_dir = os.path.join(base_directory, str(version))
            try:
                os.rename(staging, version_dir)  # fails if another push took this version
                return version, version_dir
            except OSError:
                if not os.path.exists(version_dir):
                    raise
    finally:
        if os.path.exists(staging):
            fileio.rmtree(staging)


class AtomicPusherExecutor(pusher_executor.Executor):
    """Pusher executor that publishes each version with :func:`push_version_atomically`."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination)
        if push_destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("AtomicPusher pushes to a file system destination only")

        base_directory = push_destination.filesystem.base_directory
        published = latest_version_if_identical(model_path, base_directory)
        if published:
            version, version_dir = published
            logging.info("Model already published as version %d at %s", version, version_dir)
        else:
            version, version_dir = push_version_atomically(model_path, base_directory)
            logging.info("Pushed model version %d to %s", version, version_dir)
        model_push.set_int_custom_property(REUSED_VERSION_PROPERTY, int(bool(published)))
        # Like the stock Pusher: the PushedModel artifact keeps its own copy, for lineage.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=version_dir, pushed_version=str(version))


class AtomicPusher(pusher_component.Pusher):
    """TFX's Pusher with :class:`AtomicPusherExecutor`; same inputs, outputs and options."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
