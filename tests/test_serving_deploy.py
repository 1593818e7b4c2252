"""The deployment files agree with the pipeline: model name, paths, ports, image, configs."""
import glob
import os
import re
from importlib import metadata

import yaml

from pipeline import configs
from serving import models_config

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving",
                      "deploy")
MODEL_BASE_PATH = f"{models_config.CONTAINER_MODELS_ROOT}/{configs.MODEL_NAME}"


def _read(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return f.read()


def _manifests():
    documents = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                documents[document["kind"]] = document
    return documents


def _flags(args):
    return dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--"))


def test_shipped_configs_are_the_generators_output():
    expected = models_config.models_config_text(
        models_config.build_models_config([configs.MODEL_NAME]))
    assert _read("config", "models.config") == expected
    assert _read("config", "monitoring.config") == models_config.monitoring_config_text()
    config_map = _manifests()["ConfigMap"]["data"]
    assert config_map["models.config"] == expected
    assert config_map["monitoring.config"] == models_config.monitoring_config_text()


def test_models_config_serves_the_pushed_layout():
    (model,) = models_config.parse_models_config(
        _read("config", "models.config")).model_config_list.config
    assert model.name == configs.MODEL_NAME
    assert model.base_path == MODEL_BASE_PATH
    assert model.model_version_policy.latest.num_versions == 1
    # The pipeline pushes to <output root>/serving/<model name>/: mounting <output root>/serving
    # at /models gives the base path above.
    output_root = configs.DEFAULT_OUTPUT_ROOT
    assert configs.serving_model_dir(output_root) == os.path.join(output_root, "serving",
                                                                  model.name)


def test_image_matches_the_locked_serving_api():
    api_version = metadata.version("tensorflow-serving-api")
    assert models_config.TF_SERVING_IMAGE == f"tensorflow/serving:{api_version}"


def test_docker_compose_serves_the_pushed_models():
    service = yaml.safe_load(_read("docker-compose.yml"))["services"]["tf-serving"]
    assert service["image"] == models_config.TF_SERVING_IMAGE
    assert set(service["ports"]) == {f"{p}:{p}" for p in (models_config.GRPC_PORT,
                                                          models_config.REST_PORT)}
    flags = _flags(service["command"])
    assert (int(flags["port"]), int(flags["rest_api_port"])) == (models_config.GRPC_PORT,
                                                                 models_config.REST_PORT)
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in service["volumes"])
    assert flags["model_config_file"] == "/config/models.config" and mounts["./config"] == "/config"
    models_source = next(src for src, dst in mounts.items()
                         if dst == models_config.CONTAINER_MODELS_ROOT)
    default_source = re.fullmatch(r"\$\{LVSEG_SERVING_ROOT:-(.+)\}", models_source).group(1)
    assert os.path.normpath(os.path.join(DEPLOY, default_source)) == os.path.normpath(
        os.path.join(DEPLOY, "..", "..", os.path.dirname(configs.serving_model_dir(
            configs.DEFAULT_OUTPUT_ROOT))))
    assert f"/v1/models/{configs.MODEL_NAME}" in " ".join(service["healthcheck"]["test"])


def test_kubernetes_manifests_agree():
    manifests = _manifests()
    assert set(manifests) >= {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"}
    pod = manifests["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == models_config.TF_SERVING_IMAGE
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": models_config.GRPC_PORT, "http": models_config.REST_PORT}
    flags = _flags(container["args"])
    assert (int(flags["port"]), int(flags["rest_api_port"])) == (ports["grpc"], ports["http"])
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": f"/v1/models/{configs.MODEL_NAME}", "port": "http"}

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["models"] == models_config.CONTAINER_MODELS_ROOT
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == \
        manifests["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert flags["model_config_file"] == mounts["config"] + "/models.config"
    assert flags["monitoring_config_file"] == mounts["config"] + "/monitoring.config"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == models_config.PROMETHEUS_PATH

    service = manifests["Service"]["spec"]
    assert service["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["ports"]} == {
        "grpc": (models_config.GRPC_PORT, "grpc"), "http": (models_config.REST_PORT, "http")}
