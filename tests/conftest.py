"""Shared fixtures. Importing a project package first selects Keras 2 before TensorFlow loads."""
import os
import shutil

import pytest

from trainer import tf_env  # noqa: F401  (before TensorFlow)

from pipeline import synthetic_data  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny generated data set for pipeline tests: 4 patients x 4 slices, one patient held out.
TINY = dict(num_patients=4, slices_per_patient=4, eval_fraction=0.25, seed=7, progress=False)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    """A session-wide tiny data set; tests that change data copy it first (see copy_tiny_data)."""
    root = str(tmp_path_factory.mktemp("tiny_data"))
    synthetic_data.synthesize_dataset(root, **TINY)
    return root


@pytest.fixture
def copy_tiny_data(tiny_data_root, tmp_path):
    def copy(name="data"):
        destination = str(tmp_path / name)
        shutil.copytree(tiny_data_root, destination)
        return destination
    return copy
