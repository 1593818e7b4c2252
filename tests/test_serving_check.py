"""ServingCheck: blesses a model only if it serves both signatures over the local server."""
import os

from tfx.types import standard_artifacts

from components import serving_check


def _run_component(model_dir, blessing_dir):
    """Runs the component's executor as a TFX launcher would, on real artifacts."""
    model = standard_artifacts.Model()
    model.uri = model_dir
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = blessing_dir
    os.makedirs(blessing_dir)
    executor = serving_check.ServingCheck.EXECUTOR_SPEC.executor_class()
    executor.Do({"model": [model]}, {"blessing": [blessing]},
                {"num_slices": 1, "timeout_seconds": 30})
    return blessing


def _as_trainer_output(saved_model, tmp_path):
    """The Trainer's Model artifact layout: <uri>/Format-Serving/saved_model.pb."""
    uri = tmp_path / "model"
    uri.mkdir()
    os.symlink(saved_model, uri / "Format-Serving")
    return str(uri)


def test_a_servable_model_is_blessed(sample_saved_model, tmp_path):
    assert serving_check.check_servable(sample_saved_model) == []
    blessing = _run_component(_as_trainer_output(sample_saved_model, tmp_path),
                              str(tmp_path / "blessing"))
    assert blessing.get_int_custom_property(serving_check.BLESSED_KEY) == 1
    assert os.path.exists(os.path.join(blessing.uri, serving_check.BLESSED_FILE))


def test_a_model_that_does_not_load_is_not_blessed(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    uri = tmp_path / "model"
    uri.mkdir()
    os.symlink(broken, uri / "Format-Serving")
    blessing = _run_component(str(uri), str(tmp_path / "blessing"))
    assert blessing.get_int_custom_property(serving_check.BLESSED_KEY) == 0
    with open(os.path.join(blessing.uri, serving_check.NOT_BLESSED_FILE)) as f:
        assert "does not load" in f.read()


def test_its_blessing_is_what_the_pusher_takes_as_infra_blessing():
    """The wiring the pipeline uses: ServingCheck(model=...) -> Pusher(infra_blessing=...)."""
    from tfx import v1 as tfx

    from components.atomic_pusher import AtomicPusher

    model = tfx.dsl.Channel(type=standard_artifacts.Model)
    check = serving_check.ServingCheck(model=model)
    pusher = AtomicPusher(
        model=model, infra_blessing=check.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/tmp/unused")))
    assert pusher.inputs["infra_blessing"].type == standard_artifacts.InfraBlessing


def test_docker_infra_validator_uses_the_official_image_on_serving_default():
    import json

    from tfx import v1 as tfx

    from pipeline import configs
    from serving import models_config
    from trainer import signatures

    validator = serving_check.docker_infra_validator(
        tfx.dsl.Channel(type=standard_artifacts.Model),
        tfx.dsl.Channel(type=standard_artifacts.Examples))
    serving_spec = json.loads(validator.exec_properties["serving_spec"])
    image, tag = models_config.TF_SERVING_IMAGE.rsplit(":", 1)
    assert serving_spec["tensorflow_serving"] == {"image_name": image, "tags": [tag]}
    assert "local_docker" in serving_spec and serving_spec["model_name"] == configs.MODEL_NAME
    request_spec = json.loads(validator.exec_properties["request_spec"])
    assert request_spec["tensorflow_serving"]["signature_names"] == [signatures.SERVING_DEFAULT]
    assert request_spec["split_name"] in configs.SPLIT_PATTERNS
    assert validator.outputs["blessing"].type == standard_artifacts.InfraBlessing
