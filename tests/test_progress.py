"""The CLI's one-line-per-step view of TFX's log."""
import io
import logging

from pipeline.progress import StepProgress


def _lines(messages):
    stream = io.StringIO()
    logger = logging.getLogger("test_progress")
    logger.handlers, logger.propagate = [StepProgress(stream)], False
    logger.setLevel(logging.INFO)
    for level, message in messages:
        logger.log(level, message)
    return [line.split("  ", 1)[1] for line in stream.getvalue().splitlines()]


def test_steps_cache_hits_and_errors_are_shown_and_the_rest_is_not():
    lines = _lines([
        (logging.INFO, "Using deployment config: ..."),
        (logging.INFO, "Component Transform is running."),
        (logging.INFO, "A cached execution 7 is used."),
        (logging.INFO, "Component Transform is finished."),
        (logging.INFO, "node Trainer is running."),
        (logging.WARNING, "ArtifactQuery.property_predicate is not supported."),
        (logging.ERROR, "Execution 9 failed."),
        (logging.INFO, "node Trainer is finished."),
    ])
    assert [line.split()[0] for line in lines] == [
        "Transform", "Transform", "Trainer", "ERROR:", "Trainer"]
    assert lines[0].split()[-1] == "running"
    assert lines[1].startswith("Transform") and lines[1].endswith("(cached)")
    assert "done in" in lines[4] and "cached" not in lines[4]
    assert lines[3] == "ERROR: Execution 9 failed."
