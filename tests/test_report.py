"""The run report and the model card: written by `lvseg run`, rewritten by `lvseg report`, and
opened in a real headless browser (Chromium) when one is installed."""
import dataclasses
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from lvseg import cli

from pipeline import local_runner
from report import curves, gate, model_card, per_image, plots, report, run_facts

pytestmark = pytest.mark.e2e

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_data_root):
    """`lvseg run` on the tiny data (a gate every model passes): the run writes its report."""
    output_root = str(tmp_path_factory.mktemp("reported_run"))
    exit_code = cli.main(["run", "--runner", "local", "--data-root", tiny_data_root,
                          "--output-root", output_root, "--train-steps", "16", "--epochs", "2",
                          "--min-dice", "0"])
    assert exit_code == 0
    run = local_runner.LocalRun(output_root=output_root)
    return run, report.default_out_dir(run.pipeline_root)


def _page(report_dir):
    with open(os.path.join(report_dir, report.INDEX), encoding="utf-8") as f:
        return f.read()


def test_every_run_writes_a_report_with_its_pictures(reported_run):
    run, report_dir = reported_run
    page = _page(report_dir)
    for section in ("decision", "metrics", "training", "images", "monitoring", "lineage"):
        assert f'<section id="{section}">' in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert {"training_curves.png", "dice_by_lv_size.png", "dice_by_patient.png",
            "dice_histogram.png", "best_1.png", "worst_1.png"} <= set(sources)
    for name in sources:  # each referenced picture is a real PNG beside the page
        with Image.open(os.path.join(report_dir, name)) as image:
            assert image.format == "PNG" and image.width > 100
    assert "http://" not in page and "https://" not in page  # viewable offline
    assert not [n for n in os.listdir(os.path.dirname(report_dir)) if ".tmp-" in n]


def test_report_shows_the_gate_decision_thresholds_and_lineage(reported_run):
    run, report_dir = reported_run
    page = _page(report_dir)
    facts = run_facts.read_run_facts(run.metadata_path)
    assert facts.summary.blessed and facts.summary.pushed
    assert "BLESSED" in page and "NOT BLESSED" not in page
    assert f"version <b>{facts.summary.pushed_version}</b>" in page
    assert "&gt;= 0" in page  # the --min-dice 0 value threshold, as the run's EvalConfig says
    for stage in ("ImportExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator",
                  "AtomicPusher"):
        assert f"<td>{stage}</td>" in page
    assert facts.summary.model_uri in page and facts.examples_uri in page


def test_overlays_draw_expert_and_predicted_contours(reported_run):
    _, report_dir = reported_run
    with Image.open(os.path.join(report_dir, "best_1.png")) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert plots.EXPERT_RGB in colours or plots.BOTH_RGB in colours


def test_model_card_sits_beside_the_pushed_version(reported_run):
    run, report_dir = reported_run
    facts = run_facts.read_run_facts(run.metadata_path)
    card_path = model_card.pushed_card_path(facts.summary.pushed_path)
    assert os.path.dirname(card_path) == os.path.dirname(facts.summary.pushed_path)
    with open(card_path, encoding="utf-8") as f:
        card = f.read()
    assert "not for diagnosis" in card.lower()
    assert f"Version: {facts.summary.pushed_version}" in card
    assert "| overall |" in card and "| lv_size=" in card
    assert "## Limitations" in card
    # The version folder holds exactly what the pusher copied; servers see only the version.
    assert not [n for n in os.listdir(facts.summary.pushed_path) if n.endswith(".md")]


def test_report_command_rewrites_it_and_names_bad_roots(reported_run, tmp_path, capsys):
    run, _ = reported_run
    out = str(tmp_path / "elsewhere")
    assert cli.main(["report", "--pipeline-root", run.pipeline_root, "--out", out,
                     "--max-images", "2"]) == 0
    assert os.path.isfile(os.path.join(out, report.INDEX))
    assert "2 eval images scored" in _page(out)
    capsys.readouterr()
    missing = str(tmp_path / "nowhere")
    assert cli.main(["report", "--pipeline-root", missing]) == cli.EXIT_BAD_INPUT
    assert missing in capsys.readouterr().err


def test_training_curves_come_from_the_tensorboard_logs(reported_run):
    run, _ = reported_run
    facts = run_facts.read_run_facts(run.metadata_path)
    read = curves.read_curves(facts.model_run_uri)
    assert [epoch for epoch, _ in read["train"]["loss"]] == [0, 1]
    assert [epoch for epoch, _ in read["validation"]["dice"]] == [0, 1]
    assert all(0.0 <= value <= 1.0 for _, value in read["validation"]["dice"])


def test_per_image_scores_match_the_dice_the_evaluator_reports(reported_run):
    run, _ = reported_run
    facts = run_facts.read_run_facts(run.metadata_path)
    predict = per_image.load_predictor(os.path.join(facts.summary.model_uri,
                                                    report.MODEL_FORMAT_DIR))
    result = per_image.evaluate(predict, per_image.eval_record_files(facts.examples_uri),
                                progress=False)
    mean = float(np.mean([score.dice for score in result.scores]))
    assert mean == pytest.approx(facts.summary.eval_dice, abs=1e-4)
    assert result.worst[0].score.dice == min(score.dice for score in result.scores)


def test_gate_rules_read_every_threshold_of_an_eval_config():
    from pipeline.eval_config import build_eval_config
    rules = gate.gate_rules(build_eval_config(min_dice=0.8, max_dice_drop=0.01))
    texts = {(rule.metric, rule.slices, rule.rule) for rule in rules}
    assert ("dice", "overall", ">= 0.8") in texts
    assert ("dice", "overall", "candidate - baseline >= -0.01") in texts


def test_a_rejected_model_reads_as_not_blessed_with_its_failures(reported_run):
    run, _ = reported_run
    facts = run_facts.read_run_facts(run.metadata_path)
    rejected = dataclasses.replace(facts, summary=dataclasses.replace(
        facts.summary, blessed=False, pushed=False,
        validation_failures=["dice: candidate - baseline is -0.02 < -1e-09"]))
    page = report.render_html(rejected, [], [], None, {}, {"best": [], "worst": []}, None,
                              "drift.json", "now")
    assert "NOT BLESSED" in page and "nothing pushed" in page
    assert "candidate - baseline is -0.02" in page


def _browser():
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def test_report_renders_with_its_images_in_a_headless_browser(reported_run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); "
                    ".ci/run installs it")
    _, report_dir = reported_run
    url = "file://" + os.path.join(report_dir, report.INDEX)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    check = re.search(r'id="image-check"[^>]*data-loaded="(\d+)"[^>]*data-total="(\d+)"', dom)
    assert check, "the page's script did not run: " + dom[-500:]
    loaded, total = map(int, check.groups())
    assert total >= 6 and loaded == total
    screenshot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={screenshot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=120, check=True)
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, charts, MRI: not blank
