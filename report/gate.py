"""The Evaluator's gate in words: its thresholds as the run's EvalConfig states them.

Read from the ``eval_config.json`` TFMA writes beside its results, so the report shows the rules
that were applied to this run (a Kubeflow run may have overridden the defaults).
"""
import dataclasses
import json
from typing import List, Optional

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer

from pipeline import eval_config as eval_config_lib


@dataclasses.dataclass
class GateRule:
    metric: str
    slices: str  # "overall", or the slicing specs the rule applies to, e.g. "each lv_size"
    rule: str  # e.g. ">= 0.85" or "change vs baseline >= -0.0"


def load_eval_config(evaluation_uri: str) -> Optional[tfma.EvalConfig]:
    eval_config, _, _, _ = eval_config_writer.load_eval_run(evaluation_uri)
    return eval_config


def _spec_text(specs) -> str:
    parts = []
    for spec in specs:
        if spec.feature_keys:
            parts.append("each " + " x ".join(spec.feature_keys))
        elif spec.feature_values:
            parts.append(", ".join(f"{k}={v}" for k, v in sorted(spec.feature_values.items())))
        else:
            parts.append("overall")
    return "; ".join(parts) or "overall"


def _bound_texts(threshold) -> List[str]:
    return eval_config_lib.value_bounds(threshold) + [
        f"candidate - baseline {bound}" for bound in eval_config_lib.change_bounds(threshold)]


def _metric_name(metric) -> str:
    """The name results carry: the Keras metric's ``name`` in its config, else the class."""
    try:
        configured = json.loads(metric.config or "{}").get("name")
    except (ValueError, AttributeError):
        configured = None
    return configured or metric.class_name


def gate_rules(eval_config: Optional[tfma.EvalConfig]) -> List[GateRule]:
    """Every threshold of ``eval_config``, overall and per slice."""
    rules: List[GateRule] = []
    if eval_config is None:
        return rules
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            name = _metric_name(metric)
            if metric.HasField("threshold"):
                rules += [GateRule(name, "overall", text)
                          for text in _bound_texts(metric.threshold)]
            for per_slice in metric.per_slice_thresholds:
                rules += [GateRule(name, _spec_text(per_slice.slicing_specs), text)
                          for text in _bound_texts(per_slice.threshold)]
        for name, threshold in sorted(metrics_spec.thresholds.items()):
            rules += [GateRule(name, "overall", text) for text in _bound_texts(threshold)]
        for name, per_slice_list in sorted(metrics_spec.per_slice_thresholds.items()):
            for per_slice in per_slice_list.thresholds:
                rules += [GateRule(name, _spec_text(per_slice.slicing_specs), text)
                          for text in _bound_texts(per_slice.threshold)]
    return rules
