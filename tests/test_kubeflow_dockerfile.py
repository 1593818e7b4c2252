"""The Dockerfile, read (no Docker engine here): base image and versions as in the lock, the
project installed from its lock, Keras 2, and entry points that exist."""
import importlib.util
import json
import os
import re

import pytest

from kubeflow import runner, targets

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO_ROOT, name)) as f:
        return f.read()


@pytest.fixture(scope="module")
def dockerfile():
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", _read("Dockerfile"))
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def lock():
    return dict(line.split("==") for line in _read("requirements.lock").splitlines()
                if "==" in line and not line.startswith("#"))


def _build_args(dockerfile):
    return dict(line.split(None, 1)[1].split("=", 1) for line in dockerfile
                if line.startswith("ARG ") and "=" in line)


def _instructions(dockerfile, keyword):
    return [line.split(None, 1)[1] for line in dockerfile if line.startswith(keyword + " ")]


def test_base_image_is_the_official_tfx_image_of_the_locked_version(dockerfile, lock):
    args = _build_args(dockerfile)
    assert args["TFX_VERSION"] == lock["tfx"]
    assert _instructions(dockerfile, "FROM")[-1] == "tensorflow/tfx:${TFX_VERSION}"


def test_beam_boot_and_python_match_the_lock(dockerfile, lock):
    args = _build_args(dockerfile)
    assert args["BEAM_VERSION"] == lock["apache-beam"]
    python_version = _read(".python-version").strip()
    assert python_version.startswith(args["PYTHON_VERSION"] + ".")
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk" in \
        _instructions(dockerfile, "FROM")
    assert "--from=beam-sdk /opt/apache/beam /opt/apache/beam" in _instructions(dockerfile, "COPY")


def test_the_lock_then_the_project_are_installed(dockerfile):
    runs = " && ".join(_instructions(dockerfile, "RUN"))
    assert "python${PYTHON_VERSION} -m venv" in runs
    assert "pip install --no-cache-dir --no-deps -r requirements.lock" in runs
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in runs
    assert "pip check" in runs
    lock_install = runs.index("-r requirements.lock")
    assert lock_install < runs.index("--no-build-isolation .")
    assert f"WORKDIR {runner.IMAGE_PROJECT_DIR}" in dockerfile
    assert "COPY . ." in dockerfile


def test_the_curated_schema_path_the_spec_names_is_in_the_copied_source():
    relative = os.path.relpath(runner.IMAGE_SCHEMA_PATH, runner.IMAGE_PROJECT_DIR)
    assert os.path.isfile(os.path.join(REPO_ROOT, relative))


def test_environment_and_entry_points(dockerfile):
    environment = _instructions(dockerfile, "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in environment
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in environment
    assert json.loads(_instructions(dockerfile, "ENTRYPOINT")[-1]) == ["/opt/apache/beam/boot"]
    # Kubeflow tasks run the compiled commands instead; their modules must be installed
    for command in (targets.ENTRYPOINT_COMMAND, targets.FINGERPRINT_COMMAND,
                    targets.TFX_COMMAND):
        assert command[:2] == ["python", "-m"]
        assert importlib.util.find_spec(command[2]) is not None
        assert command[2] in " ".join(_instructions(dockerfile, "RUN")) or \
            command[2].startswith("tfx.")


def test_the_cuda_wheels_are_the_locked_tensorflows_and_installed_by_default(dockerfile, lock):
    """requirements-cuda.lock is exactly the `and-cuda` extra of the locked TensorFlow."""
    import importlib.metadata
    assert importlib.metadata.version("tensorflow") == lock["tensorflow"]
    extra = sorted(requirement.split(";")[0].replace(" ", "")
                   for requirement in importlib.metadata.requires("tensorflow")
                   if "extra == 'and-cuda'" in requirement)
    cuda_lock = sorted(line.strip() for line in _read("requirements-cuda.lock").splitlines()
                       if line.strip() and not line.startswith("#"))
    assert cuda_lock == extra
    assert _build_args(dockerfile)["CUDA"] == "1"
    runs = " && ".join(_instructions(dockerfile, "RUN"))
    assert "pip install --no-cache-dir --no-deps -r requirements-cuda.lock" in runs


def test_the_build_context_leaves_out_local_state():
    ignored = set(_read(".dockerignore").split())
    assert {".git", ".venv", "data", "outputs"} <= ignored
    assert "README.md" not in ignored and "requirements.lock" not in ignored  # setup.py reads it
