"""Versions change under a running server: pushed while a client loops, policies, failed loads,
and a version unloaded only after the requests that hold it are done."""
import os
import threading
import time

import grpc
import pytest

from components import atomic_pusher
from pipeline import configs
from serving import client, versions

RELOAD_WAIT_S = 60  # a bound, not a measurement: the poll interval here is 0.2 s


def _base_path(tmp_path):
    return str(tmp_path / "serving" / configs.MODEL_NAME)


def test_push_while_a_client_loops_every_request_succeeds_and_the_version_changes(
        server_kind, start_model_server, sample_saved_model, sample_images, tmp_path):
    base_path = _base_path(tmp_path)
    first, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
    target = start_model_server(server_kind, base_path, poll_interval_s=0.2)
    seen, failures, stop = [], [], threading.Event()

    def loop():
        with client.ServingClient(target, configs.MODEL_NAME, timeout_s=30,
                                  max_attempts=1) as serving:
            while not stop.is_set():
                try:
                    seen.append(serving.predict_result(sample_images[0]).model_version)
                except Exception as exc:  # any failure fails the test below
                    failures.append(exc)

    looping = threading.Thread(target=loop)
    looping.start()
    try:
        while len(seen) < 3 and looping.is_alive():
            time.sleep(0.05)
        second, _ = atomic_pusher.push_version_atomically(sample_saved_model, base_path)
        deadline = time.monotonic() + RELOAD_WAIT_S
        while second not in seen[-1:] and time.monotonic() < deadline and looping.is_alive():
            time.sleep(0.05)
        settled = len(seen)
        while len(seen) < settled + 3 and looping.is_alive():  # and it stays on the new one
            time.sleep(0.05)
    finally:
        stop.set()
        looping.join()
    assert not failures, failures[:3]
    assert seen[0] == first and seen[-1] == second
    assert seen == sorted(seen)  # never back to the old version once the new one answered
    with client.ServingClient(target, configs.MODEL_NAME) as serving:
        deadline = time.monotonic() + RELOAD_WAIT_S
        while {s.version: s.state for s in serving.model_status()}.get(first) != "END" \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        states = {s.version: s.state for s in serving.model_status()}
    assert states[second] == "AVAILABLE"
    assert states.get(first, "END") == "END"  # TF Serving may forget an unloaded version


@pytest.fixture
def manager(tmp_path):
    """A manager that does not poll on its own: each test calls refresh()."""
    made = []

    def make(**options):
        made.append(versions.ModelManager(configs.MODEL_NAME, _base_path(tmp_path),
                                          poll_interval_s=3600, **options))
        made[-1].start()
        return made[-1]
    yield make
    for each in made:
        each.stop()
        each.unload_all()


def _push(model, tmp_path):
    return atomic_pusher.push_version_atomically(model, _base_path(tmp_path))[0]


def test_a_request_in_flight_keeps_its_version_until_it_is_done(manager, sample_saved_model,
                                                                 sample_images, tmp_path):
    first = _push(sample_saved_model, tmp_path)
    models = manager()
    with models.acquire() as held:
        second = _push(sample_saved_model, tmp_path)
        models.refresh()
        assert models.available_versions() == [second]
        assert models.statuses(first)[0].state == versions.UNLOADING
        outputs = held.functions["serving_raw_image"](image=sample_images[:1])  # still works
        assert held.version == first and outputs["mask"].shape[0] == 1
    assert models.statuses(first)[0].state == versions.END
    assert held.functions == {}


def test_version_policies(manager, sample_saved_model, tmp_path):
    pushed = [_push(sample_saved_model, tmp_path) for _ in range(3)]
    assert manager().available_versions() == pushed[-1:]
    assert manager(policy=versions.VersionPolicy(latest=2)).available_versions() == pushed[-2:]
    assert manager(policy=versions.VersionPolicy(all_versions=True)).available_versions() == pushed
    specific = manager(policy=versions.VersionPolicy(specific=frozenset([pushed[0]])))
    assert specific.available_versions() == pushed[:1]
    with specific.acquire() as latest_of_policy:
        assert latest_of_policy.version == pushed[0]


def test_a_broken_new_version_leaves_the_old_one_serving(manager, sample_saved_model, tmp_path):
    good = _push(sample_saved_model, tmp_path)
    models = manager(max_load_retries=1, load_retry_interval_s=0.0)
    broken = os.path.join(_base_path(tmp_path), str(good + 1))
    os.makedirs(broken)
    with open(os.path.join(broken, versions.SAVED_MODEL_FILE), "wb") as f:
        f.write(b"not a SavedModel")
    models.refresh()  # the first attempt fails: retried later, LOADING meanwhile
    assert models.available_versions() == [good]
    assert models.statuses(good + 1)[0].state == versions.LOADING
    models.refresh()  # the one retry fails too: given up
    assert models.available_versions() == [good]
    failed = models.statuses(good + 1)[0]
    assert failed.state == versions.END and "DecodeError" in failed.error
    assert failed.error_code == grpc.StatusCode.UNKNOWN  # a parse error has no status of its own


def test_staging_folders_and_incomplete_versions_are_ignored(manager, sample_saved_model,
                                                             tmp_path):
    good = _push(sample_saved_model, tmp_path)
    base_path = _base_path(tmp_path)
    os.makedirs(os.path.join(base_path, f".abc{atomic_pusher.INCOMPLETE_MARK}123", "variables"))
    os.makedirs(os.path.join(base_path, str(good + 5), "variables"))  # no saved_model.pb yet
    os.makedirs(os.path.join(base_path, "notes"))
    models = manager()
    assert versions.servable_versions(base_path) == [good]
    assert models.available_versions() == [good]
