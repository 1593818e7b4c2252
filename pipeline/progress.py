"""One line per pipeline step on the console, instead of TFX's full INFO log.

TFX's runners log "Component X is running." / "is finished." at INFO, among hundreds of other
lines; this handler keeps just those (plus cache hits, with the time each step took) and every
error. ``lvseg -v`` shows the full log instead.
"""
import logging
import re
import sys
import time
from typing import Dict, Optional, TextIO

from absl import logging as absl_logging

_STEP = re.compile(r"^(?:[Cc]omponent|node) (\S+) is (running|finished)\.$")
_CACHED = re.compile(r"^A cached execution \d+ is used\.$")
_QUIET_LOGGERS = ("tensorflow", "apache_beam", "tensorflow_model_analysis")


class StepProgress(logging.Handler):
    """Prints ``HH:MM:SS  Component  running|done in N s [cached]`` lines from TFX's log."""

    def __init__(self, stream: Optional[TextIO] = None):
        super().__init__(level=logging.INFO)
        self._stream = stream  # None: whatever sys.stdout is at the time of each line
        self._started: Dict[str, float] = {}
        self._cached = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._print(f"{record.levelname}: {message}")
            return
        if _CACHED.match(message) and len(self._started) == 1:
            self._cached.update(self._started)
            return
        match = _STEP.match(message)
        if not match:
            return
        node, state = match.groups()
        if state == "running":
            self._started[node] = time.time()
            self._print(f"{node:<32} running")
        else:
            seconds = time.time() - self._started.pop(node, time.time())
            cached = " (cached)" if node in self._cached else ""
            self._print(f"{node:<32} done in {seconds:.0f} s{cached}")

    def _print(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        stream.flush()


def show_step_progress() -> None:
    """Routes TFX's (absl) log through :class:`StepProgress`; quiets TF/Beam warnings."""
    # Through absl's own flag: TFX's Beam executors re-parse absl flags, which resets a level
    # set on the logger directly to absl's default (WARNING) halfway through the run.
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logger = logging.getLogger("absl")
    absl_logger.handlers = [StepProgress()]
    absl_logger.propagate = False
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
