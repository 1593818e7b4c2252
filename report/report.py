"""``lvseg report``: one HTML page (PNGs beside it, nothing from the network) about a run.

    lvseg report [--pipeline-root outputs/pipeline_root/lv-segmentation] [--out DIR]

``lvseg run`` writes it after every run to ``<pipeline root>/report/index.html``. It shows:

- the gate decision: blessed or not, every threshold of the run's EvalConfig, the baseline it
  was compared with (the model serving when the run started) and the push;
- TFMA's metrics overall and per slice (LV size bucket, patient), candidate against baseline;
- training and validation loss and Dice per epoch, from the Trainer's TensorBoard logs;
- a histogram of per-image Dice on the eval split, and the best and the worst eval images as
  overlays (expert contour green, predicted red);
- the served-input drift check, when ``lvseg drift`` has written one;
- lineage: every stage's state, time and input/output artifact URIs, from ML Metadata.

The page is written to a temporary folder and swapped in whole, so a reader never sees a half
report. The model card (:mod:`report.model_card`) is written beside it and beside the
pushed model version.
"""
import dataclasses
import datetime
import html
import json
import os
import shutil
from typing import Dict, List, Optional

from report import curves as curves_lib
from report import gate as gate_lib
from report import model_card as model_card_lib
from report import per_image as per_image_lib
from report import plots
from report.run_facts import RunFacts, read_run_facts

REPORT_DIR = "report"
INDEX = "index.html"
MODEL_CARD = "model_card.md"
DRIFT_FILE = os.path.join("monitoring", "drift.json")  # under the output root (lvseg drift)
MODEL_FORMAT_DIR = "Format-Serving"  # where TFX's Trainer puts the SavedModel in its artifact


@dataclasses.dataclass
class ReportResult:
    index_path: str
    model_card_path: str
    pushed_model_card_path: Optional[str]
    images: List[str]


def default_out_dir(pipeline_root: str) -> str:
    return os.path.join(pipeline_root, REPORT_DIR)


def default_drift_path(pipeline_root: str) -> str:
    """``<output root>/monitoring/drift.json`` for the layout configs.pipeline_root builds."""
    output_root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline_root)))
    return os.path.join(output_root, DRIFT_FILE)


def sliced_rows(evaluation_uri: Optional[str]) -> List[Dict[str, object]]:
    """TFMA's metrics per slice: ``[{"slice", "metrics", "baseline"}]`` (see run_summary)."""
    if not evaluation_uri:
        return []
    from pipeline import run_summary
    return run_summary.read_sliced_metrics(evaluation_uri)


def _slice_feature(row) -> Optional[str]:
    name = str(row["slice"])
    return None if name == "overall" else name.split("=", 1)[0]


def _bar_rows(rows, feature: str, order=None) -> List[Dict[str, object]]:
    from trainer import dice
    selected = [row for row in rows if _slice_feature(row) == feature]
    if order:
        selected.sort(key=lambda row: order.index(str(row["slice"]).split("=", 1)[1])
                      if str(row["slice"]).split("=", 1)[1] in order else len(order))
    return [{"label": str(row["slice"]).split("=", 1)[1],
             "candidate": row["metrics"].get(dice.METRIC_NAME),
             "baseline": (row.get("baseline") or {}).get(dice.METRIC_NAME),
             "count": _count(row)} for row in selected]


def _count(row) -> Optional[int]:
    value = row["metrics"].get("example_count")
    return None if value is None else int(value)


# --- HTML ---------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.uri { font-family: monospace; font-size: 0.85em; word-break: break-all; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.4em 0.8em; display: inline-block; }
.pass { background: #dff0d8; color: #2d6a2d; } .fail { background: #f8d7da; color: #8a1f2b; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #444; max-width: 320px; }
img { max-width: 100%; } figure img { width: 320px; image-rendering: pixelated; }
.legend-expert { color: #28b428; font-weight: bold; }
.legend-pred { color: #e02828; font-weight: bold; }
"""

# Counts the images the browser could decode and says so at the bottom of the page (the
# headless-browser test reads it; a reader sees at once if PNGs went missing).
_IMAGE_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var check = document.getElementById("image-check");
  check.textContent = loaded + " of " + images.length + " images loaded";
  check.setAttribute("data-loaded", String(loaded));
  check.setAttribute("data-total", String(images.length));
});
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _table(headers: List[str], rows: List[List[str]], numeric: set = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(name: Optional[str], alt: str) -> str:
    return f'<img src="{_e(name)}" alt="{_e(alt)}">' if name else f"<p>({_e(alt)}: no data)</p>"


def _decision_section(facts: RunFacts, rules, baseline_dice) -> str:
    summary = facts.summary
    verdict = ('<span class="verdict pass">BLESSED</span>' if summary.blessed
               else '<span class="verdict fail">NOT BLESSED</span>')
    if summary.pushed:
        push = (f"pushed as version <b>{_e(summary.pushed_version)}</b> to "
                f'<span class="uri">{_e(summary.pushed_path)}</span>'
                + (" (the same model an earlier run pushed)" if summary.push_reused else ""))
    else:
        push = "nothing pushed: the serving model stays as it was"
    baseline = facts.baseline_model_uri
    baseline_text = (f"compared with the model serving when the run started, version "
                     f"{_e(facts.baseline_version)}: "
                     f'<span class="uri">{_e(baseline)}</span> (Dice {_fmt(baseline_dice)})'
                     if baseline else "no baseline: nothing was served (value thresholds only)")
    rule_rows = [[_e(r.metric), _e(r.slices), _e(r.rule)] for r in rules]
    failures = "".join(f"<li>{_e(f)}</li>" for f in summary.validation_failures)
    return (f'<section id="decision"><h2>Gate decision</h2><p>{verdict}</p>'
            f"<p>eval Dice {_fmt(summary.eval_dice)}; {baseline_text}</p><p>{push}</p>"
            "<h3>Thresholds of this run</h3>"
            + _table(["metric", "slices", "rule"], rule_rows)
            + (f"<h3>Failed</h3><ul>{failures}</ul>" if failures else "")
            + "</section>")


def _metrics_section(rows, images: Dict[str, Optional[str]]) -> str:
    from trainer import dice
    names = sorted({name for row in rows for name in row["metrics"]
                    if name not in ("example_count", dice.METRIC_NAME)})
    headers = ["slice", "images", "Dice", "baseline Dice"] + names
    table_rows = []
    for row in rows:
        metrics, baseline = row["metrics"], row.get("baseline") or {}
        table_rows.append([_e(row["slice"]), _fmt(_count(row)),
                           _fmt(metrics.get(dice.METRIC_NAME)),
                           _fmt(baseline.get(dice.METRIC_NAME))]
                          + [_fmt(metrics.get(name)) for name in names])
    return ('<section id="metrics"><h2>Evaluation (TFMA, eval split)</h2>'
            + (_table(headers, table_rows, numeric=set(range(1, len(headers))))
               if table_rows else "<p>No TFMA results for this run.</p>")
            + '<div class="gallery">'
            + _img(images.get("lv_size"), "Dice per LV size bucket")
            + _img(images.get("patient"), "Dice per patient") + "</div></section>")


def _training_section(facts: RunFacts, image: Optional[str]) -> str:
    config_rows = [[_e(key), _e(value)] for key, value in sorted(facts.training_config.items())]
    return ('<section id="training"><h2>Training</h2>'
            + _img(image, "training and validation loss and Dice per epoch")
            + f"<p>{_e(facts.train_steps)} training steps. Trainer configuration:</p>"
            + _table(["setting", "value"], config_rows) + "</section>")


def _caption(picture) -> str:
    score = picture.score
    parts = [score.name, score.patient_id, f"LV {score.lv_size}", f"Dice {score.dice:.3f}",
             f"expert {score.expert_pixels} px, predicted {score.predicted_pixels} px"]
    if score.area_error_mm2 is not None:
        parts.append(f"area error {score.area_error_mm2:.0f} mm\u00b2")
    return " · ".join(_e(part) for part in parts if part)


def _images_section(result, images: Dict[str, Optional[str]], overlays) -> str:
    def gallery(kind):
        return '<div class="gallery">' + "".join(
            f'<figure><img src="{_e(name)}" alt="{_e(kind)} eval image">'
            f"<figcaption>{_caption(picture)}</figcaption></figure>"
            for name, picture in overlays[kind]) + "</div>"
    scored = len(result.scores) if result else 0
    note = " (the first ones only)" if result and result.truncated else ""
    return ('<section id="images"><h2>Eval images</h2>'
            f"<p>{scored} eval images scored with the exported model{note}. "
            '<span class="legend-expert">Green</span>: expert contour; '
            '<span class="legend-pred">red</span>: predicted; yellow: both.</p>'
            + _img(images.get("histogram"), "histogram of per-image Dice")
            + "<h3>Best (slices with an LV)</h3>" + gallery("best")
            + "<h3>Worst</h3>" + gallery("worst") + "</section>")


def _drift_section(drift: Optional[dict], drift_path: str) -> str:
    if drift is None:
        return ('<section id="monitoring"><h2>Served inputs</h2><p>No drift check yet: log '
                "requests with <code>lvseg serve --request-log-dir DIR</code>, then run "
                f"<code>lvseg drift</code> (writes {_e(drift_path)}).</p></section>")
    features = drift.get("features", {})
    rows = []
    for name, info in sorted(features.items()):
        rows.append([_e(name), _fmt(_get(info, "train", "mean")),
                     _fmt(_get(info, "served", "mean")),
                     _fmt(info.get("divergence", info.get("jensen_shannon_divergence"))),
                     _fmt(info.get("threshold")), "drift" if info.get("anomaly") else "ok"])
    verdict = ('<span class="verdict fail">DRIFT</span>' if drift.get("drifted")
               else '<span class="verdict pass">no drift</span>')
    counts = (f"{_e(drift.get('served_images'))} served images against "
              f"{_e(drift.get('training_images'))} training images; "
              f"checked {_e(drift.get('created'))}")
    return ('<section id="monitoring"><h2>Served inputs (drift)</h2>'
            f"<p>{verdict}</p><p>{counts}</p>"
            + _table(["feature", "train mean", "served mean", "divergence", "threshold", ""],
                     rows, numeric={1, 2, 3, 4})
            + f'<p class="uri">{_e(drift_path)}</p></section>')


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _lineage_section(facts: RunFacts) -> str:
    rows = []
    for stage in facts.stages:
        started = (datetime.datetime.fromtimestamp(stage.started, datetime.timezone.utc)
                   .strftime("%Y-%m-%d %H:%M:%S UTC") if stage.started else "")
        outputs = "<br>".join(f'{_e(ref.key)}: <span class="uri">{_e(ref.uri)}</span>'
                              for ref in stage.outputs)
        inputs = "<br>".join(f'{_e(ref.key)} ({_e(ref.type_name)}) #{ref.artifact_id}'
                             for ref in stage.inputs)
        rows.append([_e(stage.node_id), _e(stage.state), _e(started), _fmt(stage.seconds, 1),
                     inputs, outputs])
    return ('<section id="lineage"><h2>Lineage (ML Metadata)</h2>'
            f'<p class="uri">{_e(facts.metadata_path)}</p>'
            + _table(["stage", "state", "started", "seconds", "inputs", "outputs"], rows,
                     numeric={3}) + "</section>")


def render_html(facts: RunFacts, rows, rules, result, images, overlays, drift, drift_path,
                generated: str) -> str:
    from trainer import dice
    overall = next((row for row in rows if row["slice"] == "overall"), None)
    baseline_dice = (overall.get("baseline") or {}).get(dice.METRIC_NAME) if overall else None
    body = "".join([
        _decision_section(facts, rules, baseline_dice),
        _metrics_section(rows, images),
        _training_section(facts, images.get("curves")),
        _images_section(result, images, overlays),
        _drift_section(drift, drift_path),
        _lineage_section(facts),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(facts.pipeline_name)}: run report</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_e(facts.pipeline_name)}: run report</h1>"
        f'<p class="meta">generated {_e(generated)} · model '
        f'<span class="uri">{_e(facts.summary.model_uri)}</span> · '
        f'model card: <a href="{MODEL_CARD}">{MODEL_CARD}</a></p>'
        f"{body}"
        '<footer><p class="meta" id="image-check">images not checked (scripts off)</p></footer>'
        f"<script>{_IMAGE_CHECK_SCRIPT}</script></body></html>\n")


# --- writing ------------------------------------------------------------------------------------

def _write_text_atomic(path: str, text: str) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


def _swap_in(staging: str, out_dir: str) -> None:
    old = f"{out_dir}.old-{os.getpid()}"
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_report(pipeline_root: str, out_dir: Optional[str] = None,
                 drift_path: Optional[str] = None, pipeline_name: Optional[str] = None,
                 max_images: int = per_image_lib.DEFAULT_MAX_IMAGES,
                 progress: bool = True) -> ReportResult:
    """Writes the report of the latest run under ``pipeline_root`` and its model card."""
    from pipeline import configs
    pipeline_root = os.path.abspath(pipeline_root)
    out_dir = os.path.abspath(out_dir or default_out_dir(pipeline_root))
    drift_path = drift_path or default_drift_path(pipeline_root)
    facts = read_run_facts(os.path.join(pipeline_root, configs.METADATA_FILE), pipeline_name)

    rows = sliced_rows(facts.summary.evaluation_uri)
    rules = gate_lib.gate_rules(gate_lib.load_eval_config(facts.summary.evaluation_uri)
                                if facts.summary.evaluation_uri else None)
    result = None
    if facts.summary.model_uri and facts.examples_uri:
        predict = per_image_lib.load_predictor(
            os.path.join(facts.summary.model_uri, MODEL_FORMAT_DIR))
        result = per_image_lib.evaluate(
            predict, per_image_lib.eval_record_files(facts.examples_uri),
            max_images=max_images, progress=progress)
    drift = None
    if os.path.isfile(drift_path):
        with open(drift_path, encoding="utf-8") as f:
            drift = json.load(f)

    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    from trainer import slices
    images = {
        "curves": plots.training_curves(
            curves_lib.read_curves(facts.model_run_uri) if facts.model_run_uri else {},
            os.path.join(staging, "training_curves.png")),
        "lv_size": plots.slice_bars(_bar_rows(rows, slices.LV_SIZE_FEATURE,
                                              list(slices.LV_SIZE_BUCKETS)),
                                    os.path.join(staging, "dice_by_lv_size.png"),
                                    title="Dice per LV size bucket"),
        "patient": plots.slice_bars(_bar_rows(rows, slices.PATIENT_FEATURE),
                                    os.path.join(staging, "dice_by_patient.png"),
                                    title="Dice per patient"),
        "histogram": plots.dice_histogram(result.scores if result else [],
                                          os.path.join(staging, "dice_histogram.png")),
    }
    images = {key: plots.file_name(path) for key, path in images.items()}
    overlays = {"best": [], "worst": []}
    for kind in overlays:
        for rank, picture in enumerate(getattr(result, kind, []) if result else [], 1):
            name = f"{kind}_{rank}.png"
            plots.write_overlay(picture, os.path.join(staging, name))
            overlays[kind].append((name, picture))

    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = render_html(facts, rows, rules, result, images, overlays, drift, drift_path, generated)
    _write_text_atomic(os.path.join(staging, INDEX), page)
    card = model_card_lib.render_model_card(facts, rows, rules, result, generated)
    _write_text_atomic(os.path.join(staging, MODEL_CARD), card)
    _swap_in(staging, out_dir)

    pushed_card = None
    if facts.summary.pushed and facts.summary.pushed_path:
        pushed_card = model_card_lib.pushed_card_path(facts.summary.pushed_path)
        _write_text_atomic(pushed_card, card)
    written = [name for name in list(images.values())
               + [name for kind in overlays.values() for name, _ in kind] if name]
    return ReportResult(index_path=os.path.join(out_dir, INDEX),
                        model_card_path=os.path.join(out_dir, MODEL_CARD),
                        pushed_model_card_path=pushed_card, images=written)
