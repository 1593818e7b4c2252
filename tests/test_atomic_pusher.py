"""The push publishes whole versions only, with increasing numbers, even within one second."""
import os

import pytest
from tfx.utils import io_utils

from components import atomic_pusher


def _fake_saved_model(path, payload=b"weights"):
    os.makedirs(os.path.join(path, "variables"))
    with open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(payload)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"graph")
    return path


def _visible(base):
    """What TF Serving would consider: integer-named folders."""
    return sorted(name for name in os.listdir(base) if name.isdigit())


def test_push_publishes_a_complete_version(tmp_path):
    model = _fake_saved_model(str(tmp_path / "model"))
    base = str(tmp_path / "serving" / "lv")
    version, path = atomic_pusher.push_version_atomically(model, base)
    assert path == os.path.join(base, str(version))
    assert _visible(base) == [str(version)]
    assert sorted(os.listdir(base)) == [str(version)]  # no staging folder left behind
    assert open(os.path.join(path, "saved_model.pb"), "rb").read() == b"graph"
    assert os.path.exists(os.path.join(path, "variables", "variables.data-00000-of-00001"))


def test_pushes_in_the_same_second_get_increasing_versions(tmp_path):
    model = _fake_saved_model(str(tmp_path / "model"))
    base = str(tmp_path / "serving")
    versions = [atomic_pusher.push_version_atomically(model, base)[0] for _ in range(3)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert _visible(base) == [str(v) for v in versions]


def test_version_is_above_any_existing_one(tmp_path):
    model = _fake_saved_model(str(tmp_path / "model"))
    base = tmp_path / "serving"
    (base / "99999999999").mkdir(parents=True)  # a version from the future (clock skew)
    version, _ = atomic_pusher.push_version_atomically(model, str(base))
    assert version == 100000000000


def test_a_crash_mid_copy_leaves_nothing_a_server_would_load(tmp_path, monkeypatch):
    model = _fake_saved_model(str(tmp_path / "model"))
    base = str(tmp_path / "serving")
    real_copy_file = io_utils.copy_file

    def failing_copy_file(src, dst, *args, **kwargs):
        if src.endswith("saved_model.pb"):  # the variables are copied, the graph is not
            raise IOError("disk full (injected)")
        return real_copy_file(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic_pusher.io_utils, "copy_file", failing_copy_file)
    with pytest.raises(IOError, match="injected"):
        atomic_pusher.push_version_atomically(model, base)
    assert os.listdir(base) == []


def test_refuses_a_folder_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a SavedModel"):
        atomic_pusher.push_version_atomically(str(tmp_path / "empty"), str(tmp_path / "serving"))


def test_an_identical_model_is_recognised_as_the_newest_version(tmp_path):
    model = _fake_saved_model(str(tmp_path / "model"))
    base = str(tmp_path / "serving")
    assert atomic_pusher.latest_version_if_identical(model, base) is None
    version, path = atomic_pusher.push_version_atomically(model, base)
    assert atomic_pusher.latest_version_if_identical(model, base) == (version, path)
    retrained = _fake_saved_model(str(tmp_path / "retrained"), payload=b"other weights")
    assert atomic_pusher.latest_version_if_identical(retrained, base) is None
