"""Request logging for the local server, in TF Serving's ``PredictionLog`` format.

TF Serving logs requests per model with a ``LoggingConfig``: a ``SamplingConfig`` (each request is
logged uniformly at random with probability ``sampling_rate``) and a ``LogCollectorConfig``
(``type`` and ``filename_prefix`` of a log collector). Each logged request becomes one
``tensorflow.serving.PredictionLog``: ``log_metadata`` (``model_spec`` with the name, the version
that answered and the signature, the ``sampling_config``, ``saved_model_tags`` and
``timestamp_secs``) and ``predict_log`` (the ``PredictRequest`` as received and the
``PredictResponse``). :class:`RequestLogger` writes the same records, as TFRecord files, so the
logs of this server read like a collector's output (and like TFX's own ``PredictionLog`` files):
``monitoring/drift.py`` reads them back.

Choices (and why):

- **Sampling**: per request, like TF Serving's ``RequestLogger`` (one uniform draw < rate); a
  batch is logged whole or not at all. ``seed`` makes the draws reproducible for tests.
- **Only successful Predicts** are logged (the server calls :meth:`RequestLogger.log` once the
  response is built); a request that failed is never written.
- **The response**: ``response="summary"`` (default) keeps the response's ``model_spec`` and, in
  place of the two 256x256 maps (512 KB per image), one small output ``lv_pixels`` int64 ``[N]``:
  the predicted LV area of each image in pixels (:data:`SUMMARY_OUTPUT`). The request (the images)
  is what drift is measured on, and the maps would double the size of every record. ``"full"``
  logs the response as answered; ``"none"`` only its ``model_spec``.
- **Bounded size**: ``max_bytes`` bounds the bytes of all log files in the folder, earlier runs'
  included (so restarts cannot grow the folder past it). A record is written only if it fits for
  sure (its uncompressed size counts); once one does not, logging stops and the server log says so
  once. Files are gzip-compressed (``.tfrecord.gz``, level 1): int64 pixels compress about 4.7x,
  so the cap holds about five times more images. Measured on generated slices: level 1 costs
  ~9 ms of the writer thread per image; level 6 (zlib's default) ~45 ms for 5.5x; level 9 ~0.7 s.
- **No torn records in a file a reader trusts**: a file is written as
  ``<name>.tfrecord.gz.partial`` and renamed to ``<name>.tfrecord.gz`` only once closed cleanly:
  at ``max_file_bytes``, after ``rotate_seconds``, when the cap is reached, on :meth:`flush` and
  on :meth:`close` (the server's shutdown). Readers read only the renamed files; a crash leaves at
  most one ``.partial`` file (its bytes still count towards the cap) and loses at most the records
  of one rotation interval.
- **Never in the way of a Predict**: the request thread only draws the sample, copies the request
  into a ``PredictionLog`` and hands it to one writer thread through a queue bounded in bytes
  (``max_queue_bytes``, 64 MB); when it is full the record is dropped (counted, said once in the
  log). Serialising, compressing and writing happen on the writer thread (TensorFlow's writer
  releases the GIL). Every error of logging is caught, counted and logged (once per kind), never
  raised to the client. Measured on 2 CPUs, sequential batches of 8 slices, logging every request
  (rate 1): median Predict latency 314 -> 353 ms and 352 -> 389 ms in two pairs of runs; the
  default rate of 0.1 costs about a tenth of that.
- Only gRPC Predict calls are logged; the REST gateway's are not.

Real TF Serving: the stock ``tensorflow_model_server`` registers no log collector (its
``ServerCore`` creates the ``ServerRequestLogger`` without a logger creator, whose ``Update``
refuses any logging config), so a ``logging_config`` in models.config stops it from loading the
config. Request logs of a real deployment need a build with a collector; this module's files are
what such a collector would write, and ``lvseg drift`` reads any ``PredictionLog`` TFRecords.
"""
import glob
import logging
import os
import queue
import random
import threading
import time
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

RESPONSE_MODES = ("summary", "full", "none")
DEFAULT_RESPONSE_MODE = "summary"
DEFAULT_SAMPLING_RATE = 0.1
DEFAULT_MAX_MB = 512
DEFAULT_MAX_FILE_MB = 64
DEFAULT_ROTATE_SECONDS = 300.0
DEFAULT_QUEUE_MB = 64  # records waiting for the writer; more are dropped, not waited for
DEFAULT_FILE_PREFIX = "prediction_log"
SERVING_TAG = "serve"  # the SavedModel tag set the server loads (tf.saved_model.SERVING)

LOG_SUFFIX = ".tfrecord.gz"
GZIP_LEVEL = 1  # see the module docstring: 5x less CPU than level 6 for 15% larger files
PARTIAL_SUFFIX = ".partial"
SUMMARY_OUTPUT = "lv_pixels"  # response="summary": predicted LV pixels per image, int64 [N]
_MB = 1 << 20
# A gzip stream can be a little larger than its input (stored blocks, headers, sync markers).
_GZIP_OVERHEAD_FRACTION = 0.01
_GZIP_OVERHEAD_BYTES = 1024
_STOP = object()


class RequestLogError(ValueError):
    """A request log file that cannot be read; the message names the file and the record."""


def _checked_rate(sampling_rate: float) -> float:
    rate = float(sampling_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(
            f"the request log sampling rate must be within [0, 1], got {sampling_rate}")
    return rate


class RequestLogger:
    """Samples Predict calls and writes them as ``PredictionLog`` TFRecords (see the module doc).

    Thread-safe: :meth:`log` is called from the server's request threads; one writer thread
    writes. :meth:`stats` counts what happened; :meth:`flush` waits until what was handed over is
    on disk in complete files; :meth:`close` ends it (the server calls it on shutdown).
    """

    def __init__(self, directory: str, sampling_rate: float = DEFAULT_SAMPLING_RATE,
                 max_bytes: int = DEFAULT_MAX_MB * _MB, response: str = DEFAULT_RESPONSE_MODE,
                 max_file_bytes: Optional[int] = None,
                 rotate_seconds: float = DEFAULT_ROTATE_SECONDS,
                 max_queue_bytes: int = DEFAULT_QUEUE_MB * _MB, seed: Optional[int] = None,
                 file_prefix: str = DEFAULT_FILE_PREFIX):
        self.sampling_rate = _checked_rate(sampling_rate)
        if max_bytes <= 0:
            raise ValueError(f"the request log size cap must be positive, got {max_bytes} bytes")
        if response not in RESPONSE_MODES:
            raise ValueError(f"response must be one of {RESPONSE_MODES}, got {response!r}")
        if rotate_seconds <= 0 or max_queue_bytes <= 0:
            raise ValueError("rotate_seconds and max_queue_bytes must be positive")
        self.directory = os.path.abspath(directory)
        self.max_bytes = int(max_bytes)
        self.max_file_bytes = int(max_file_bytes or min(DEFAULT_MAX_FILE_MB * _MB,
                                                        max(self.max_bytes // 4, 1)))
        self.response = response
        self.rotate_seconds = float(rotate_seconds)
        self.file_prefix = file_prefix
        os.makedirs(self.directory, exist_ok=True)

        self._random = random.Random(seed)
        self._lock = threading.Lock()  # the RNG, the counters and the "said once" flags
        self._counts = dict(offered=0, sampled=0, logged=0, dropped_queue_full=0,
                            dropped_cap=0, errors=0, files=0)
        self._said = set()
        self._full = threading.Event()
        self._closed = False
        self.max_queue_bytes = int(max_queue_bytes)
        self._queued_bytes = 0  # under self._lock
        self._queue: "queue.Queue" = queue.Queue()  # bounded by bytes in log()

        # Writer-thread state.
        self._writer = None
        self._partial_path: Optional[str] = None
        self._file_opened_at = 0.0
        self._file_seq = 0
        self._bytes_before = self._existing_bytes()  # everything in the folder but the open file
        self._open_file_bytes = 0
        if self._bytes_before >= self.max_bytes:
            self._cap_reached(f"{self._bytes_before} bytes of earlier logs already fill it")
        else:
            log.info("request log: %s, sampling rate %.3g of Predict requests, cap %.1f MB "
                     "(%.1f MB used by earlier logs), response: %s", self.directory,
                     self.sampling_rate, self.max_bytes / _MB, self._bytes_before / _MB,
                     self.response)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    # --- request threads ---------------------------------------------------------------------

    def log(self, request, response, *, model_name: str, version: int, signature_name: str,
            outputs: Optional[Mapping[str, np.ndarray]] = None) -> bool:
        """Samples one answered Predict and queues its ``PredictionLog``; True if queued.

        ``outputs`` are the response's arrays, for the summary. Never raises.
        """
        try:
            with self._lock:
                self._counts["offered"] += 1
                if self._closed or self._full.is_set():
                    return False
                if not self._random.random() < self.sampling_rate:
                    return False
                self._counts["sampled"] += 1
            record = prediction_log(request, response, model_name=model_name, version=version,
                                    signature_name=signature_name,
                                    sampling_rate=self.sampling_rate, response_mode=self.response,
                                    outputs=outputs)
            size = record.ByteSize()
            with self._lock:
                # One record always fits an empty queue, however large its batch.
                fits = self._queued_bytes == 0 or self._queued_bytes + size <= self.max_queue_bytes
                if fits:
                    self._queued_bytes += size
                else:
                    self._counts["dropped_queue_full"] += 1
            if not fits:
                self._say_once("queue", logging.WARNING,
                               "request log: the writer is behind, dropping sampled requests "
                               "(counted in the final line)")
                return False
            self._queue.put((record, size))
            return True
        except Exception as exc:  # noqa: BLE001  (logging must never fail a request)
            self._count("errors")
            self._say_once("log", logging.ERROR, "request log: cannot log a request: %s: %s",
                           type(exc).__name__, exc)
            return False

    # --- control -------------------------------------------------------------------------------

    def stats(self) -> Dict[str, int]:
        """Counters: offered, sampled, logged, dropped_queue_full, dropped_cap, errors, files
        (closed files written), bytes (all log files in the folder), full (the cap is reached)."""
        with self._lock:
            counts = dict(self._counts)
        counts["bytes"] = self._bytes_before + self._open_file_bytes
        counts["full"] = int(self._full.is_set())
        return counts

    def flush(self, timeout_s: float = 60.0) -> None:
        """Waits until every queued record is written and closes the open file (renamed to its
        final name), so readers see everything logged so far."""
        done = threading.Event()
        self._put_control(done, timeout_s)
        if not done.wait(timeout_s):
            raise TimeoutError(f"the request log writer did not flush within {timeout_s} s")

    def close(self, timeout_s: float = 30.0) -> None:
        """Writes what is queued, closes the open file, stops the writer. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._put_control(_STOP, timeout_s)
        self._thread.join(timeout_s)
        counts = self.stats()
        log.info("request log: %d of %d Predict requests logged (%d sampled; dropped: %d queue "
                 "full, %d over the cap; %d errors); %.1f MB in %s", counts["logged"],
                 counts["offered"], counts["sampled"], counts["dropped_queue_full"],
                 counts["dropped_cap"], counts["errors"], counts["bytes"] / _MB, self.directory)

    def __enter__(self) -> "RequestLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _put_control(self, item, timeout_s: float) -> None:
        if not self._thread.is_alive():
            if isinstance(item, threading.Event):
                item.set()
            return
        self._queue.put(item)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def _say_once(self, key: str, level: int, message: str, *args) -> None:
        with self._lock:
            if key in self._said:
                return
            self._said.add(key)
        log.log(level, message, *args)

    def _cap_reached(self, why: str) -> None:
        self._full.set()
        self._say_once("cap", logging.WARNING,
                       "request log: the size cap of %.1f MB is reached (%s); no more requests "
                       "are logged to %s", self.max_bytes / _MB, why, self.directory)

    # --- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        poll_s = min(self.rotate_seconds, 1.0)
        while True:
            try:
                item = self._queue.get(timeout=poll_s)
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    self._close_file()
                    return
                if isinstance(item, threading.Event):  # flush()
                    self._close_file()
                    item.set()
                elif item is not None:
                    record, size = item
                    with self._lock:
                        self._queued_bytes -= size
                    self._write(record)
                if (self._writer is not None
                        and time.monotonic() - self._file_opened_at >= self.rotate_seconds):
                    self._close_file()
            except Exception as exc:  # noqa: BLE001  (the writer thread must survive)
                self._count("errors")
                self._say_once("write", logging.ERROR, "request log: cannot write to %s: %s: %s",
                               self.directory, type(exc).__name__, exc)
                self._abandon_file()

    def _write(self, record) -> None:
        if self._full.is_set():
            self._count("dropped_cap")
            return
        serialized = record.SerializeToString()
        # Upper bound of what the record adds on disk: TFRecord framing (16 bytes) plus gzip's
        # worst case, so the total stays under the cap whatever the compression achieves.
        bound = int((len(serialized) + 16) * (1 + _GZIP_OVERHEAD_FRACTION)) + _GZIP_OVERHEAD_BYTES
        if self._bytes_before + self._open_file_bytes + bound > self.max_bytes:
            self._count("dropped_cap")
            self._close_file()
            self._cap_reached(f"{self._bytes_before} bytes in log files, and the next record "
                              "might not fit")
            return
        if self._writer is None:
            self._open_file()
        self._writer.write(serialized)
        self._writer.flush()  # the compressed bytes reach the file: its size is exact
        self._open_file_bytes = os.path.getsize(self._partial_path)
        self._count("logged")
        if self._open_file_bytes >= self.max_file_bytes:
            self._close_file()

    def _open_file(self) -> None:
        import tensorflow as tf
        self._file_seq += 1
        name = (f"{self.file_prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
                f"-{os.getpid()}-{self._file_seq:05d}{LOG_SUFFIX}")
        self._partial_path = os.path.join(self.directory, name + PARTIAL_SUFFIX)
        options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=GZIP_LEVEL)
        self._writer = tf.io.TFRecordWriter(self._partial_path, options)
        self._file_opened_at = time.monotonic()
        self._open_file_bytes = 0

    def _close_file(self) -> None:
        """Closes the open file cleanly and gives it its final name."""
        if self._writer is None:
            return
        self._writer.close()  # on an error, _abandon_file still finds the file
        final = self._partial_path[:-len(PARTIAL_SUFFIX)]
        os.replace(self._partial_path, final)
        self._writer = self._partial_path = None
        self._bytes_before += os.path.getsize(final)
        self._open_file_bytes = 0
        self._count("files")

    def _abandon_file(self) -> None:
        """After a write error: the open file may hold a torn record, so it keeps its
        ``.partial`` name (readers skip it); its bytes still count."""
        writer, partial = self._writer, self._partial_path
        self._writer = self._partial_path = None
        self._open_file_bytes = 0
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
        if partial is not None and os.path.exists(partial):
            self._bytes_before += os.path.getsize(partial)

    def _existing_bytes(self) -> int:
        total = 0
        for path in glob.glob(os.path.join(glob.escape(self.directory), "*")):
            if path.endswith(LOG_SUFFIX) or path.endswith(LOG_SUFFIX + PARTIAL_SUFFIX):
                total += os.path.getsize(path)
        return total


def prediction_log(request, response, *, model_name: str, version: int, signature_name: str,
                   sampling_rate: float = 1.0, response_mode: str = DEFAULT_RESPONSE_MODE,
                   outputs: Optional[Mapping[str, np.ndarray]] = None,
                   timestamp_s: Optional[float] = None):
    """The ``PredictionLog`` of one answered Predict, as TF Serving's request logger builds it
    (``response_mode``: see the module docstring)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    metadata = record.log_metadata
    metadata.model_spec.name = model_name
    metadata.model_spec.version.value = int(version)
    metadata.model_spec.signature_name = signature_name
    metadata.sampling_config.sampling_rate = sampling_rate
    metadata.saved_model_tags.append(SERVING_TAG)
    metadata.timestamp_secs = int(time.time() if timestamp_s is None else timestamp_s)
    record.predict_log.request.CopyFrom(request)
    logged = record.predict_log.response
    if response_mode == "full":
        logged.CopyFrom(response)
        return record
    logged.model_spec.CopyFrom(response.model_spec)
    if response_mode == "summary" and outputs is not None:
        from trainer import signatures
        masks = outputs.get(signatures.MASK_OUTPUT)
        if masks is not None:
            masks = np.asarray(masks)
            pixels = masks.reshape(masks.shape[0], -1).sum(axis=1, dtype=np.int64)
            tensor = logged.outputs[SUMMARY_OUTPUT]
            tensor.dtype = types_pb2.DT_INT64
            tensor.tensor_shape.dim.add(size=len(pixels))
            tensor.int64_val.extend(int(p) for p in pixels)
    return record


# --- reading -------------------------------------------------------------------------------------


def list_log_files(location: str) -> Tuple[List[str], List[str]]:
    """``(complete files, .partial files)`` of a log folder (recursively) or a glob pattern."""
    if glob.has_magic(location):
        paths = sorted(glob.glob(location, recursive=True))
    elif os.path.isdir(location):
        paths = sorted(glob.glob(os.path.join(glob.escape(location), "**", "*"), recursive=True))
    elif os.path.isfile(location):
        paths = [location]
    else:
        raise FileNotFoundError(f"no request log folder or file {location}")
    complete = [p for p in paths if os.path.isfile(p) and not p.endswith(PARTIAL_SUFFIX)
                and (p.endswith(LOG_SUFFIX) or p.endswith(".tfrecord") or p == location)]
    partial = [p for p in paths if p.endswith(PARTIAL_SUFFIX)]
    return complete, partial


def read_prediction_logs(path: str) -> Iterator:
    """Yields the ``PredictionLog`` records of one file (gzip by its ``.gz`` name); a file that
    is truncated, corrupt or holds other records raises :class:`RequestLogError` naming it."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    compression = "GZIP" if path.endswith(".gz") else ""
    index = -1
    try:
        for index, serialized in enumerate(
                tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator()):
            try:
                record = prediction_log_pb2.PredictionLog.FromString(serialized)
            except Exception as exc:  # protobuf's DecodeError
                raise RequestLogError(f"{path}: record {index} is not a PredictionLog "
                                      f"({exc})") from exc
            yield record
    except tf.errors.OpError as exc:
        where = "at its start" if index < 0 else f"after record {index}"
        raise RequestLogError(
            f"{path}: not a readable request log {where} (truncated or corrupt): "
            f"{(exc.message or type(exc).__name__).splitlines()[0]}") from exc
