"""The serving subcommands: predict on real good and bad files, serve as a process (SIGTERM),
models-config on a pushed folder."""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from components import atomic_pusher
from pipeline import configs
from serving import cli, client, models_config, predict
from dataset import records
from tests import dicom_files

SPACING_MM = (1.25, 1.5)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _write_dicom(path, pixels=None):
    return dicom_files.write_mr_dicom(path, pixels, spacing=SPACING_MM)


@pytest.fixture(scope="module")
def target(sample_saved_model, tmp_path_factory, start_model_server):
    base_path = str(tmp_path_factory.mktemp("cli") / "serving" / configs.MODEL_NAME)
    atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    return start_model_server("local", base_path)


def test_predict_writes_pngs_and_areas_and_reports_each_bad_file(target, sample_images, tmp_path,
                                                                 capsys):
    image_a, image_b = sample_images
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dicom = _write_dicom(inputs / "slice.dcm", image_a)
    Image.fromarray(image_b.astype(np.uint16)).save(inputs / "grey16.png")
    np.save(inputs / "stack.npy", sample_images)
    records.write_lab_records(str(inputs / ("lab" + records.TFRECORD_SUFFIX)),
                              [("rec-0", image_a, np.zeros(records.IMAGE_SHAPE, np.uint8))])
    bad = {
        "notes.png": "not an image",
        "no_pixels.dcm": "without pixel data",
        "small.png": "is 128x128",
        "wrong.npy": "is 256x100",
    }
    (inputs / "notes.png").write_text("this is not a PNG")
    _write_dicom(inputs / "no_pixels.dcm")
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(inputs / "small.png")
    np.save(inputs / "wrong.npy", np.zeros((records.IMAGE_SIZE, 100), np.int64))
    out_dir = tmp_path / "out"

    exit_code = cli.predict_command(_parse(["predict", "--target", target, "--out", str(out_dir),
                                            str(inputs), str(tmp_path / "missing.png")]))
    captured = capsys.readouterr()
    assert exit_code == cli.EXIT_BAD_INPUT
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad) + 1  # one line per bad file, the missing one included
    for name, reason in bad.items():
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert any("missing.png" in line and "no such file" in line for line in errors)

    with client.ServingClient(target, configs.MODEL_NAME) as serving:
        expected_masks, _ = serving.predict(sample_images)
    written = {"slice": image_a, "grey16": image_b, "stack-0": image_a, "stack-1": image_b,
               "lab-rec-0": image_a}
    for name, image in written.items():
        mask_png = np.asarray(Image.open(out_dir / (name + predict.MASK_SUFFIX)))
        expected = expected_masks[0] if image is image_a else expected_masks[1]
        np.testing.assert_array_equal(mask_png > 0, expected > 0)
        overlay = np.asarray(Image.open(out_dir / (name + predict.OVERLAY_SUFFIX)))
        assert overlay.shape == records.IMAGE_SHAPE + (3,)
        contour = predict.lv_contour(expected)
        assert (overlay[contour] == predict.CONTOUR_RGB).all()

    lines = captured.out.splitlines()
    assert len(lines) == len(written)
    dicom_line = next(line for line in lines if line.startswith(dicom))
    pixels = int(np.count_nonzero(expected_masks[0]))
    assert f"LV area {pixels} px, {pixels * SPACING_MM[0] * SPACING_MM[1]:.1f} mm^2" in dicom_line
    assert "mm^2" not in next(line for line in lines if "grey16.png" in line)
    assert "Dice vs label" in next(line for line in lines if "rec-0" in line)


def test_predict_with_the_server_down_is_one_error(tmp_path, sample_images, capsys):
    np.save(tmp_path / "a.npy", sample_images[0])
    exit_code = cli.predict_command(_parse(["predict", "--target", "127.0.0.1:1", "--timeout",
                                            "5", "--out", str(tmp_path / "out"),
                                            str(tmp_path / "a.npy")]))
    assert exit_code == cli.EXIT_SERVER_ERROR
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_predict_waits_for_a_server_that_is_still_starting(sample_saved_model, sample_images,
                                                           tmp_path, capsys):
    """`lvseg serve &` then `lvseg predict --wait`: the server needs seconds to load TensorFlow
    and the model; predict waits for the model instead of failing on a refused connection."""
    base_path = str(tmp_path / "serving" / configs.MODEL_NAME)
    atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    np.save(tmp_path / "a.npy", sample_images[0])
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model-base-path", base_path,
         "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        exit_code = cli.predict_command(_parse([
            "predict", "--target", f"127.0.0.1:{port}", "--wait", "120",
            "--out", str(tmp_path / "out"), str(tmp_path / "a.npy")]))
        assert exit_code == cli.EXIT_OK, capsys.readouterr().err
        assert (tmp_path / "out" / "a_mask.png").exists()
    finally:
        process.kill()
        process.wait()


def test_predict_that_waits_for_no_server_says_so(tmp_path, sample_images, capsys):
    np.save(tmp_path / "a.npy", sample_images[0])
    exit_code = cli.predict_command(_parse(["predict", "--target", "127.0.0.1:1", "--wait", "1",
                                            "--out", str(tmp_path / "out"),
                                            str(tmp_path / "a.npy")]))
    assert exit_code == cli.EXIT_SERVER_ERROR
    assert "not available after 1 s" in capsys.readouterr().err


def test_lv_area_and_contour():
    mask = np.zeros(records.IMAGE_SHAPE, np.int32)
    mask[10:14, 20:25] = 1
    assert predict.lv_area(mask, None) == (20, None)
    assert predict.lv_area(mask, (0.5, 2.0)) == (20, 20.0)
    assert np.count_nonzero(predict.lv_contour(mask)) == 20 - 2 * 3  # 4x5 minus its 2x3 inside


def test_serve_as_a_process_answers_and_stops_on_sigterm(sample_saved_model, sample_images,
                                                         tmp_path):
    base_path = str(tmp_path / "serving" / configs.MODEL_NAME)
    version, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model-base-path", base_path,
         "--port", "0", "--host", "127.0.0.1", "--grace-seconds", "2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in process.stdout:  # the first stdout line says where it listens
            match = re.search(r" on 127\.0\.0\.1:(\d+) ", line)
            if match:
                port = int(match.group(1))
                break
        assert port, process.stderr.read() if process.poll() is not None else "no port line"
        with client.ServingClient(f"127.0.0.1:{port}", configs.MODEL_NAME) as serving:
            assert serving.predict_result(sample_images).model_version == version
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
        assert "SIGTERM" in log and "server stopped" in log and f"version {version} unloaded" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_models_config_lists_the_pushed_models(sample_saved_model, tmp_path, capsys):
    serving_root = tmp_path / "serving"
    atomic_pusher.push_version_atomically(sample_saved_model,
                                          str(serving_root / configs.MODEL_NAME))
    (serving_root / "not_a_model").mkdir()
    monitoring = tmp_path / "monitoring.config"
    assert cli.models_config_command(_parse([
        "models-config", "--serving-root", str(serving_root), "--base-path-root",
        "gs://bucket/serving", "--monitoring-out", str(monitoring)])) == cli.EXIT_OK
    config = models_config.parse_models_config(capsys.readouterr().out)
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path) == (configs.MODEL_NAME,
                                             f"gs://bucket/serving/{configs.MODEL_NAME}")
    assert models_config.PROMETHEUS_PATH in monitoring.read_text()
    with pytest.raises(ValueError, match="no pushed models"):
        cli.models_config_command(_parse(["models-config", "--serving-root",
                                          str(tmp_path / "empty")]))


def test_main_reports_bad_arguments(capsys):
    assert cli.main(["serve", "--version-label", "stable"]) == cli.EXIT_BAD_INPUT
    assert "LABEL=VERSION" in capsys.readouterr().err
