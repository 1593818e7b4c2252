"""The model being served now, as the Evaluator's baseline: "not worse than what is serving".

TFX's usual baseline is a ``Resolver`` for the latest blessed model, which open-source Kubeflow
Pipelines 2 cannot run (its backend has no resolver executors), and which is not what a user
means when a blessed model was never pushed (it failed ServingCheck) or a version was rolled
back by hand. :func:`ServedModel` instead reads TF Serving's model base path, the serving
directory the pusher writes, takes the newest complete version (the one TF Serving's default
version policy serves) and copies it into its ``Model`` artifact as ``Format-Serving``, the
layout the Evaluator reads. It runs the same on every orchestrator: local runners, open-source
Kubeflow Pipelines and Vertex AI Pipelines.

Its output depends on the serving directory, which changes outside the pipeline, so runners
never take it from the cache (``pipeline.pipeline.never_cached``). With nothing served yet the
artifact holds no model (``served_version`` 0) and :class:`Evaluator` evaluates without a
baseline: the gate is the minimum Dice alone, as TFX does on a first run with no blessed model.
"""
import posixpath
from typing import Optional, Tuple

from absl import logging
from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import standard_component_specs
from tfx.utils import io_utils, path_utils

from serving import versions

# Custom properties of the Model artifact: the version copied (0: nothing is served) and its
# folder, so the run report and lineage name what the candidate was compared with.
SERVED_VERSION_PROPERTY = "served_version"
SERVED_PATH_PROPERTY = "served_model_path"
NOTHING_SERVED = 0


def newest_served_version(serving_model_dir: str) -> Optional[Tuple[int, str]]:
    """(version, folder) of the newest complete version under TF Serving's model base path."""
    folders = versions.version_folders(serving_model_dir)
    if not folders:
        return None
    newest = max(folders)
    return newest, posixpath.join(serving_model_dir.rstrip("/"), folders[newest])


def holds_a_model(model) -> bool:
    """Whether a ServedModel artifact holds a model, read from its files rather than its
    properties (an orchestrator that dropped the properties must not drop the gate)."""
    path = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    return fileio.exists(posixpath.join(path, versions.SAVED_MODEL_FILE))


@tfx.dsl.components.component
def ServedModel(
        serving_model_dir: tfx.dsl.components.Parameter[str],
        model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model]) -> None:
    """Copies the newest version under ``serving_model_dir`` into ``model`` (Format-Serving)."""
    newest = newest_served_version(serving_model_dir)
    if newest is None:
        logging.info("ServedModel: nothing is served under %s yet; the candidate is judged "
                     "without a baseline", serving_model_dir)
        model.set_int_custom_property(SERVED_VERSION_PROPERTY, NOTHING_SERVED)
        return
    version, folder = newest
    io_utils.copy_dir(folder, path_utils.serving_model_dir(model.uri))
    model.set_int_custom_property(SERVED_VERSION_PROPERTY, version)
    model.set_string_custom_property(SERVED_PATH_PROPERTY, folder)
    logging.info("ServedModel: the baseline is version %d, %s", version, folder)


class EvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator, given an empty ServedModel artifact when nothing is served yet: it then
    evaluates without a baseline (TFX drops the change thresholds, ``rubber_stamp``)."""

    def Do(self, input_dict, output_dict, exec_properties):
        key = standard_component_specs.BASELINE_MODEL_KEY
        baselines = input_dict.get(key) or []
        if baselines and not any(holds_a_model(baseline) for baseline in baselines):
            logging.info("Evaluator: no served model to compare with; gating on the value "
                         "thresholds alone")
            input_dict = {name: value for name, value in input_dict.items() if name != key}
        super().Do(input_dict, output_dict, exec_properties)


class Evaluator(tfx.components.Evaluator):
    """TFX's Evaluator (same id, inputs and outputs) with :class:`EvaluatorExecutor`."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(EvaluatorExecutor)
