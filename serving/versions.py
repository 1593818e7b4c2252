"""Which versions of a model are loaded, and swapping them while requests run: TF Serving's
file-system source, version policy and availability-preserving loader, in small.

A :class:`ModelManager` watches ``<base_path>/<version>/`` (the Pusher's layout). As in TF
Serving (``sources/storage_path/file_system_storage_path_source.cc``), a folder's name is its
version when it parses as a decimal int64 (``safe_strto64``: ``0005`` is version 5, loaded from
``.../0005``); any other name (hidden ``.xxx.incomplete-pid`` staging folders, ``²``, ...) is
ignored, and a version counts only once its ``saved_model.pb`` exists, which copies write last.
A background thread polls the base path, loads the versions the policy asks for with
``tf.saved_model.load``, retries a failed load as TF Serving's loader harness does
(``core/loader_harness.cc``: ``--max_num_load_retries`` 5, ``--load_retry_interval_micros``
60 s by default, ``model_servers/main.cc``), and only then retires versions the policy no longer
wants, so there is always a version to answer. A retired version is unloaded once the last
request holding it (:meth:`ModelManager.acquire`) is done: requests in flight never fail because
of a reload.

Requests name versions by number or label and are looked up in the manager's tables, never
turned into paths.
"""
import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Dict, FrozenSet, Iterator, List, Mapping, Optional, Set

import grpc

log = logging.getLogger(__name__)

from serving.config import (DEFAULT_LOAD_RETRY_INTERVAL_S,  # noqa: E402
                            DEFAULT_MAX_LOAD_RETRIES, DEFAULT_POLL_INTERVAL_S)

SAVED_MODEL_FILE = "saved_model.pb"
SERVE_TAG = "serve"
INT64_MAX = (1 << 63) - 1

# The states TF Serving reports (get_model_status.proto's ModelVersionStatus.State).
LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"


def parse_version(name: str) -> Optional[int]:
    """A folder name as TF Serving reads it (``safe_strto64``: spaces around allowed, an optional
    ``-``, decimal digits, within int64), else None."""
    text = name.rstrip("/").strip(" ")
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    version = -int(digits) if text.startswith("-") else int(digits)
    return version if -INT64_MAX - 1 <= version <= INT64_MAX else None


def version_folders(base_path: str, complete: bool = True) -> Dict[int, str]:
    """version -> folder name of the version folders under ``base_path``; ``complete``: only
    those holding a ``saved_model.pb``. Two names of one number (``5``, ``0005``): the last in
    name order, as TF Serving's source keeps it."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(base_path):
        return {}
    folders: Dict[int, str] = {}
    for name in sorted(tf.io.gfile.listdir(base_path)):
        name = name.rstrip("/")
        version = parse_version(name)
        if version is None:
            continue
        if complete and not tf.io.gfile.exists(os.path.join(base_path, name, SAVED_MODEL_FILE)):
            continue
        folders[version] = name
    return folders


def servable_versions(base_path: str) -> List[int]:
    """The versions under ``base_path`` that hold a complete SavedModel, oldest first."""
    return sorted(version_folders(base_path))


class ServingStatusError(Exception):
    """A request that fails with a gRPC status (the REST gateway maps it to HTTP)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``model_version_policy``: the newest ``latest`` versions, all, or some."""

    latest: int = 1
    specific: FrozenSet[int] = frozenset()
    all_versions: bool = False

    def __post_init__(self):
        if self.latest < 1:
            raise ValueError(f"latest must be at least 1, got {self.latest}")

    def choose(self, on_disk: List[int]) -> Set[int]:
        if self.all_versions:
            return set(on_disk)
        if self.specific:
            return set(on_disk) & set(self.specific)
        return set(sorted(on_disk)[-self.latest:])

    def describe(self) -> str:
        if self.all_versions:
            return "all"
        if self.specific:
            return "specific " + ",".join(map(str, sorted(self.specific)))
        return f"latest {self.latest}"


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str = ""  # why a load failed; empty when it did not
    error_code: grpc.StatusCode = grpc.StatusCode.OK  # the failed load's status, as TF Serving's


class LoadedVersion:
    """One loaded SavedModel version: the callable signatures and their SignatureDefs."""

    def __init__(self, model_name: str, version: int, path: str):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.model_name = model_name
        self.version = version
        self.path = path
        with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
            saved_model = saved_model_pb2.SavedModel.FromString(f.read())
        meta_graphs = [mg for mg in saved_model.meta_graphs
                       if SERVE_TAG in mg.meta_info_def.tags]
        if not meta_graphs:
            raise ValueError(f"{path}: no MetaGraph tagged {SERVE_TAG!r}")
        # SignatureDefs as TF Serving reports and checks them (names, dtypes, shapes).
        self.signature_defs = dict(meta_graphs[0].signature_def)
        self._model = tf.saved_model.load(path, tags=[SERVE_TAG])
        self.functions = dict(self._model.signatures)
        self.in_flight = 0
        self.retired = False

    def release_model(self) -> None:
        """Drops the references to the TensorFlow objects, so their memory can be freed."""
        self._model = None
        self.functions = {}


class ModelManager:
    """The loaded versions of one model under ``base_path``, kept current by polling."""

    def __init__(self, model_name: str, base_path: str, policy: VersionPolicy = VersionPolicy(),
                 version_labels: Optional[Mapping[str, int]] = None,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES,
                 load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_S):
        self.model_name = model_name
        self.base_path = base_path
        self.policy = policy
        self.version_labels = dict(version_labels or {})
        self.poll_interval_s = poll_interval_s
        self.max_load_retries = max_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._folders: Dict[int, str] = {}
        self._failed_loads: Dict[int, int] = {}  # version -> failed attempts so far
        self._next_attempt: Dict[int, float] = {}  # version -> monotonic time of the next load
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._available: Dict[int, LoadedVersion] = {}
        self._states: Dict[int, VersionStatus] = {}
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Loads what the policy wants now (like TF Serving before it opens its ports), then
        keeps polling in the background."""
        self.refresh()
        if not self._available:
            log.warning("model %s: no servable version under %s yet; waiting for one",
                        self.model_name, self.base_path)
        self._poller = threading.Thread(target=self._poll, name=f"poll-{self.model_name}",
                                        daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
            except Exception:  # a bad poll must not end polling; the next one may succeed
                log.exception("model %s: polling %s failed", self.model_name, self.base_path)

    # --- the file-system source and the loader ---------------------------------------------

    def versions_on_disk(self) -> List[int]:
        self._folders = version_folders(self.base_path)
        return sorted(self._folders)

    def _should_load(self, version: int) -> bool:
        """New, unloaded earlier and wanted again, or a failed load whose retry is due (until
        the retries are spent, as TF Serving's loader harness)."""
        known = self._states.get(version)
        if known is None or (known.state == END and not known.error):
            return True
        failures = self._failed_loads.get(version, 0)
        return (known.state == LOADING and 0 < failures <= self.max_load_retries
                and time.monotonic() >= self._next_attempt.get(version, 0.0))

    def refresh(self) -> None:
        """One poll: load wanted versions that are new (or retry failed loads that are due), then
        retire unwanted ones."""
        with self._refresh_lock:
            on_disk = self.versions_on_disk()
            wanted = self.policy.choose(on_disk)
            for version in sorted(wanted):
                if self._should_load(version):
                    self._load(version)
            with self._lock:
                serving_wanted = wanted & set(self._available)
                for version in list(self._available):
                    # Availability first: an old version goes only once a wanted one serves,
                    # or when its folder is gone.
                    if version not in wanted and (serving_wanted or version not in on_disk):
                        self._retire_locked(version)

    def _load(self, version: int) -> None:
        path = os.path.join(self.base_path, self._folders.get(version, str(version)))
        self._set_state(version, LOADING)
        log.info("model %s: loading version %d from %s", self.model_name, version, path)
        started = time.monotonic()
        try:
            loaded = LoadedVersion(self.model_name, version, path)
        except Exception as exc:  # any broken SavedModel: report it, keep serving the others
            self._load_failed(version, exc)
            return
        with self._lock:
            self._available[version] = loaded
            self._states[version] = VersionStatus(version, AVAILABLE)
            self._failed_loads.pop(version, None)
        log.info("model %s: version %d available (loaded in %.1f s)", self.model_name, version,
                 time.monotonic() - started)

    def _load_failed(self, version: int, exc: Exception) -> None:
        """A failed attempt: retried after ``load_retry_interval_s`` (the state stays LOADING),
        until ``max_load_retries`` retries have failed too: then END with the error and its
        status code."""
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failures = self._failed_loads.get(version, 0) + 1
        self._failed_loads[version] = failures
        if failures <= self.max_load_retries:
            self._next_attempt[version] = time.monotonic() + self.load_retry_interval_s
            log.warning("model %s: loading version %d failed (%s); retry %d of %d in %.0f s",
                        self.model_name, version, message, failures, self.max_load_retries,
                        self.load_retry_interval_s)
            self._set_state(version, LOADING)
            return
        log.error("model %s: loading version %d failed after %d retries: %s", self.model_name,
                  version, self.max_load_retries, message)
        self._set_state(version, END, message, status_code_of_load_error(exc))

    def _retire_locked(self, version: int) -> None:
        loaded = self._available.pop(version)
        loaded.retired = True
        self._states[version] = VersionStatus(version, UNLOADING)
        log.info("model %s: unloading version %d (%d request(s) in flight finish first)",
                 self.model_name, version, loaded.in_flight)
        if loaded.in_flight == 0:
            self._unload_locked(loaded)

    def _unload_locked(self, loaded: LoadedVersion) -> None:
        loaded.release_model()
        self._states[loaded.version] = VersionStatus(loaded.version, END)
        log.info("model %s: version %d unloaded", self.model_name, loaded.version)

    def _set_state(self, version: int, state: str, error: str = "",
                   error_code: grpc.StatusCode = grpc.StatusCode.OK) -> None:
        with self._lock:
            self._states[version] = VersionStatus(version, state, error, error_code)

    def unload_all(self) -> None:
        with self._lock:
            for version in list(self._available):
                self._retire_locked(version)

    # --- what requests see -----------------------------------------------------------------

    def resolve_version(self, version: Optional[int], label: Optional[str]) -> Optional[int]:
        """The version a request names: its number, its label's number, or None for latest."""
        if label:
            if label not in self.version_labels:
                raise ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                         f"Unrecognized servable version label: {label}")
            return self.version_labels[label]
        return version

    @contextlib.contextmanager
    def acquire(self, version: Optional[int] = None,
                label: Optional[str] = None) -> Iterator[LoadedVersion]:
        """Holds a loaded version for one request; a reload waits for it before unloading."""
        version = self.resolve_version(version, label)
        with self._lock:
            if version is None:
                if not self._available:
                    raise ServingStatusError(
                        grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Latest({self.model_name})")
                loaded = self._available[max(self._available)]
            else:
                loaded = self._available.get(version)
                if loaded is None:
                    raise ServingStatusError(
                        grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Specific({self.model_name}, {version})")
            loaded.in_flight += 1
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.in_flight -= 1
                if loaded.retired and loaded.in_flight == 0:
                    self._unload_locked(loaded)

    def statuses(self, version: Optional[int] = None) -> List[VersionStatus]:
        """Version states as TF Serving's GetModelStatus reports them: newest first, NOT_FOUND
        if none (``model_servers/get_model_status_impl.cc``, which reads no version label)."""
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if version not in states:
                raise ServingStatusError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {self.model_name}")
            return [states[version]]
        if not states:
            raise ServingStatusError(grpc.StatusCode.NOT_FOUND,
                                     f"Could not find any versions of model {self.model_name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def available_versions(self) -> List[int]:
        with self._lock:
            return sorted(self._available)


def status_code_of_load_error(exc: Exception) -> grpc.StatusCode:
    """The status TF Serving reports for a failed load: TensorFlow's own code when it raised one
    (e.g. NOT_FOUND for a missing file), NOT_FOUND for a missing path, else UNKNOWN."""
    code = getattr(exc, "error_code", None)
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.UNKNOWN
