"""The model card: Markdown describing a pushed model, written beside its version folder.

``<serving model dir>/<version>.model_card.md`` sits next to ``<version>/``: TF Serving and the
local server only load integer-named folders, and the version folder keeps exactly the files
the pusher copied (the pusher compares them to skip pushing an identical model twice).
"""
from typing import Dict, List

from report.run_facts import RunFacts

INTENDED_USE = (
    "Research and engineering of LV segmentation pipelines on short-axis cardiac MRI. "
    "**Not a medical device and not for diagnosis**: its output must not inform the care of a "
    "patient. Outputs are a per-pixel LV blood-pool probability and a 0/1 mask for one 2D slice.")

LIMITATIONS = [
    "2D slice by slice: no use of neighbouring slices or of the cardiac phase.",
    "Trained on {data}. Performance on other scanners, field strengths, sequences, "
    "pathologies or paediatric hearts is unknown.",
    "The eval split is small; per-slice figures with few images are noisy.",
    "LV means the blood pool inside the endocardial contour, as the Sunnybrook expert contours "
    "trace it; other contouring conventions (papillary muscles, basal slices) differ.",
    "Images are centre-cropped or padded to 256x256; areas in mm^2 need the pixel spacing, "
    "which the generated data does not have.",
    "Empty-LV slices (above the apex, below the base) count fully: one false LV pixel on such "
    "a slice gives Dice close to 0 for it.",
]


def pushed_card_path(pushed_version_path: str) -> str:
    return pushed_version_path.rstrip("/") + ".model_card.md"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(rows: List[Dict[str, object]]) -> List[str]:
    from trainer import dice
    names = [dice.METRIC_NAME] + sorted({name for row in rows for name in row["metrics"]
                                         if name not in ("example_count", dice.METRIC_NAME)})
    lines = ["| slice | images | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for row in rows:
        count = row["metrics"].get("example_count")
        lines.append(f"| {row['slice']} | {_fmt(None if count is None else int(count))} | "
                     + " | ".join(_fmt(row["metrics"].get(name)) for name in names) + " |")
    return lines


def _augmentation(config: Dict[str, object]) -> str:
    """The training config's augmentation ranges that differ between runs, e.g. ``gain ±0.3,
    gamma ±0.4, elastic 4 px`` (configs saved before a setting existed leave it out)."""
    parts = [f"{name} ±{config[key]:g}" for name, key in (("gain", "max_gain_change"),
                                                          ("gamma", "max_gamma_change"))
             if config.get(key) is not None]
    if config.get("elastic_pixels"):
        parts.append(f"elastic {config['elastic_pixels']:g} px")
    return ", ".join(parts)


def _ensemble(config: Dict[str, object]) -> str:
    """For an ensemble, e.g. ``, an ensemble of 3 (seeds 42-44) whose ...``; else nothing."""
    size, seed = config.get("ensemble_size") or 1, config.get("seed")
    if size < 2:
        return ""
    seeds = f"seeds {seed}-{seed + size - 1}" if seed is not None else "unseeded"
    return f", an ensemble of {size} ({seeds}) whose LV probabilities are averaged"


def _weight_averaging(config: Dict[str, object]) -> str:
    """With stochastic weight averaging, e.g. ``; weights averaged over the last 25% of the
    steps at learning rate 0.00025``; else nothing."""
    share = config.get("average_last")
    if not share:
        return ""
    return (f"; weights averaged over the last {share:.0%} of the steps at learning rate "
            f"{config.get('averaging_learning_rate'):g}")


def _data_description(facts: RunFacts) -> str:
    example_gen = facts.stage("SunnybrookExampleGen", "ImportExampleGen")
    if example_gen is None:
        return "unknown data"
    if example_gen.node_id == "SunnybrookExampleGen":
        return ("Sunnybrook-style cardiac MRI DICOMs with expert LV contours, split by patient"
                + (", plus generated slices" if facts.training_config.get("synthetic_mix")
                   else ""))
    return "lab-schema TFRecords (by default the generated phantom slices, not real patients)"


def render_model_card(facts: RunFacts, rows, rules, per_image, generated: str) -> str:
    summary = facts.summary
    config = facts.training_config
    augmentation = _augmentation(config)
    data = _data_description(facts)
    lines = [
        f"# Model card: {facts.pipeline_name}",
        "",
        f"Generated {generated} by `lvseg report` from ML Metadata ({facts.metadata_path}).",
        "",
        "## Model",
        f"- Version: {summary.pushed_version or 'not pushed'}"
        + (f" (`{summary.pushed_path}`)" if summary.pushed_path else ""),
        f"- Artifact: `{summary.model_uri}`",
        f"- Network: {config.get('model', '?')}"
        + (f" (base filters {config.get('unet_base_filters')}, {config.get('unet_norm')} norm)"
           if config.get("model") == "unet" else "")
        + _ensemble(config)
        + "; input one 256x256 slice (int64 pixel values or a lab-schema tf.Example), "
          "normalised inside the graph by the saved Transform; output LV probability"
        + (" (averaged over the image's four flips)" if config.get("test_time_flips") else "")
        + " and the mask (the region with the largest log-odds sum, its convex hull; the metrics"
          " score it).",
        f"- Training: {facts.train_steps} steps, batch {config.get('batch_size')}, "
        f"learning rate {config.get('learning_rate')}, augmentation "
        f"{'on' if config.get('augment') else 'off'}"
        + (f" ({augmentation})" if config.get("augment") and augmentation else "")
        + f", generated-slice share "
        f"{config.get('synthetic_mix', 0)}, seed {config.get('seed')}"
        + _weight_averaging(config) + ".",
        "",
        "## Intended use",
        INTENDED_USE,
        "",
        "## Data",
        f"- {data}.",
        f"- Examples: `{facts.examples_uri}`",
        "",
        "## Metrics (eval split, TFMA)",
    ]
    lines += _metrics_table(rows) if rows else ["No evaluation recorded."]
    if per_image is not None and per_image.scores:
        dices = sorted(score.dice for score in per_image.scores)
        lines += ["", f"Per-image Dice over {len(dices)} eval images: median "
                      f"{dices[len(dices) // 2]:.4f}, lowest {dices[0]:.4f}."]
    lines += ["", "## Gate", f"- Decision: {'blessed' if summary.blessed else 'not blessed'}; "
                             f"{'pushed' if summary.pushed else 'not pushed'}."]
    lines += [f"- {rule.metric} ({rule.slices}): {rule.rule}" for rule in rules]
    if facts.baseline_model_uri:
        lines.append(f"- Baseline: `{facts.baseline_model_uri}`")
    lines += ["", "## Limitations"] + [f"- {item.format(data=data)}" for item in LIMITATIONS]
    lines += ["", "## Data licence and citation",
              "Sunnybrook Cardiac Data (CC0): Radau P, Lu Y, Connelly K, Paul G, Dick AJ, "
              "Wright GA. Evaluation framework for algorithms segmenting short axis cardiac MRI. "
              "The MIDAS Journal, 2009. http://hdl.handle.net/10380/3070", ""]
    return "\n".join(lines)
