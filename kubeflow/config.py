"""Names and defaults of the Kubeflow deployment, importable without TensorFlow or TFX (the
``lvseg kubeflow`` parsers read them)."""
import os
import posixpath

from pipeline import configs

KFP = "kfp"  # open-source Kubeflow Pipelines 2
VERTEX = "vertex"  # Vertex AI Pipelines
TARGETS = (KFP, VERTEX)

# Where the Dockerfile puts the project's source in the image (the curated schema is read there).
IMAGE_PROJECT_DIR = "/opt/lvseg/src"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(configs.__file__)))
IMAGE_SCHEMA_PATH = posixpath.join(
    IMAGE_PROJECT_DIR, os.path.relpath(configs.CURATED_SCHEMA_PATH, _REPO_ROOT))

# What each target's client uploads: the kfp client takes YAML only (the PipelineSpec, then the
# Kubernetes platform config); Vertex AI takes TFX's PipelineJob JSON or the YAML.
DEFAULT_OUTPUTS = {KFP: f"{configs.PIPELINE_NAME}.yaml", VERTEX: f"{configs.PIPELINE_NAME}.json"}
