"""Shared fixtures. Importing a project package first selects Keras 2 before TensorFlow loads."""
import os
import shutil

import pytest

from trainer import tf_env  # noqa: F401  (before TensorFlow)

from dataset import synthetic_data  # noqa: E402

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


# --- serving ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sample_saved_model(tmp_path_factory):
    """An untrained SavedModel with the pipeline's exact signatures (serving.sample_model)."""
    from serving import sample_model
    work = tmp_path_factory.mktemp("sample_model")
    return sample_model.build_sample_saved_model(str(work / "model"), str(work / "build"))


@pytest.fixture(scope="session")
def sample_images():
    """Two generated slices [2, 256, 256] int64, as the records hold them."""
    from serving import sample_model
    return sample_model.sample_batch(2)


TF_MODEL_SERVER = "tensorflow_model_server"
SERVER_KINDS = ("local", TF_MODEL_SERVER)


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server_kind(request):
    """Runs a module's tests against the local stand-in, and against the real binary if any."""
    if request.param == TF_MODEL_SERVER and shutil.which(TF_MODEL_SERVER) is None:
        pytest.skip(f"no {TF_MODEL_SERVER} on PATH (TF Serving's binary has no pip package and "
                    "cannot be installed on these machines); the local server stands in")
    return request.param


@pytest.fixture(scope="module")
def start_model_server():
    """``start(kind, base_path, **local_options) -> target``; servers stop with the module."""
    from pipeline import configs
    from serving import client, model_server, versions

    stops = []

    def start(kind, base_path, model_name=configs.MODEL_NAME, poll_interval_s=0.2,
              policy=versions.VersionPolicy(), version_labels=None, **server_options):
        if kind == "local":
            manager = versions.ModelManager(model_name, base_path, policy=policy,
                                            version_labels=version_labels,
                                            poll_interval_s=poll_interval_s)
            server = model_server.LocalModelServer([manager], host="127.0.0.1",
                                                   **server_options).start()
            stops.append(lambda: server.stop(grace_s=1.0))
            return server.target
        import subprocess
        port = _free_port()
        process = subprocess.Popen(
            [TF_MODEL_SERVER, f"--port={port}", "--rest_api_port=0", f"--model_name={model_name}",
             f"--model_base_path={base_path}",
             f"--file_system_poll_wait_seconds={max(1, round(poll_interval_s))}"])
        stops.append(lambda: (process.terminate(), process.wait(30)))
        target = f"127.0.0.1:{port}"
        with client.ServingClient(target, model_name, max_attempts=1, timeout_s=5) as probe:
            probe.wait_until_available(timeout_s=120)
        return target

    yield start
    for stop in reversed(stops):
        stop()
