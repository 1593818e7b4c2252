"""TensorFlow's environment for this project, set in one place before TensorFlow is imported.

Every package of the project imports this module first (see each ``__init__.py``). Processes
that import TensorFlow before our code (the Kubeflow container entrypoint) get the same variables
from the image's environment instead (``ENV`` in the Dockerfile).

- Keras 2. TFX 1.16, TFMA 0.47 and tf.Transform 1.16 are built on Keras 2 (``tf_keras``), while
  TensorFlow 2.16 defaults to Keras 3. TensorFlow reads ``TF_USE_LEGACY_KERAS`` once, at its
  import, so it is set here, and a TensorFlow imported earlier with Keras 3 is an error.
- AutoGraph skips tf_keras' own code. TensorFlow's rules skip the ``keras`` package but predate
  ``tf_keras``, so every trace of a Keras model re-wrote Keras internals from source: the first
  training step of the U-Net took ~50 s on 2 CPUs, ~13 s with this rule.
- Quiet start-up: TensorFlow's C++ INFO and WARNING lines (CUDA probing on CPU machines) and
  Google client libraries' warnings about Python 3.10 say nothing about a run. An explicit
  ``TF_CPP_MIN_LOG_LEVEL`` in the environment wins.
"""
import os
import sys
import warnings

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"

_tf = sys.modules.get("tensorflow")
if _tf is not None and not getattr(_tf, "_tf_uses_legacy_keras", True):
    raise ImportError(
        "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set, so it uses Keras 3, "
        "which TFX 1.16 does not support. Import this project's packages before TensorFlow, "
        "or export TF_USE_LEGACY_KERAS=1 in the environment.")
os.environ[LEGACY_KERAS_ENV] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*non-supported Python version.*")
warnings.filterwarnings("ignore", message=".*google-cloud-storage < 3.0.0.*")

from tensorflow.python.autograph.core import config as _autograph_config  # noqa: E402

_autograph_config.CONVERSION_RULES = (
    (_autograph_config.DoNotConvert("tf_keras"),) + tuple(_autograph_config.CONVERSION_RULES))
