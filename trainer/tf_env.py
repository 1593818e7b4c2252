"""TensorFlow's environment for this project, set in one place before TensorFlow is imported.

Every package of the project imports this module first (see each ``__init__.py``); it imports
nothing heavy, so configuration modules and ``lvseg --help`` stay quick. Processes that import
TensorFlow before our code (the Kubeflow entry point, Beam workers) get the same variables from
the image's environment instead (``ENV`` in the Dockerfile).

- Keras 2. TFX 1.16, TFMA 0.47 and tf.Transform 1.16 are built on Keras 2 (``tf_keras``), while
  TensorFlow 2.16 defaults to Keras 3. TensorFlow reads ``TF_USE_LEGACY_KERAS`` once, at its
  import, so it is set here, and a TensorFlow imported earlier with Keras 3 is an error.
- Quiet start-up: TensorFlow's C++ INFO and WARNING lines (CUDA probing on CPU machines) and
  Google client libraries' warnings about Python 3.10 say nothing about a run; ``lvseg`` also
  hides the C++ "Unable to register cuDNN/cuFFT/cuBLAS factory" errors unless ``-v``
  (:func:`set_cpp_log_level`). An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment wins.
- AutoGraph skips tf_keras' own code (:func:`skip_autograph_for_tf_keras`, applied by
  ``trainer.nets``, which every module that builds or trains a Keras model imports).
"""
import os
import sys
import warnings

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"
CPP_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET, ERRORS_TOO, EVERYTHING = "2", "3", "0"  # hide INFO+WARNING, also ERROR, hide nothing

_tf = sys.modules.get("tensorflow")
if _tf is not None and not getattr(_tf, "_tf_uses_legacy_keras", True):
    raise ImportError(
        "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set, so it uses Keras 3, "
        "which TFX 1.16 does not support. Import this project's packages before TensorFlow, "
        "or export TF_USE_LEGACY_KERAS=1 in the environment.")
os.environ[LEGACY_KERAS_ENV] = "1"
_LOG_LEVEL_FROM_USER = CPP_LOG_LEVEL_ENV in os.environ
os.environ.setdefault(CPP_LOG_LEVEL_ENV, QUIET)
warnings.filterwarnings("ignore", message=".*non-supported Python version.*")
warnings.filterwarnings("ignore", message=".*google-cloud-storage < 3.0.0.*")


def set_cpp_log_level(level: str) -> None:
    """TensorFlow's C++ log level for this process and its children, unless the user set one;
    effective only before TensorFlow is imported."""
    if not _LOG_LEVEL_FROM_USER:
        os.environ[CPP_LOG_LEVEL_ENV] = level


def skip_autograph_for_tf_keras() -> None:
    """TensorFlow's AutoGraph rules skip the ``keras`` package but predate ``tf_keras``, so every
    trace of a Keras model re-wrote Keras internals from source: the first training step of the
    U-Net took ~50 s on 2 CPUs, ~13 s with this rule. Idempotent."""
    from tensorflow.python.autograph.core import config as autograph_config

    rules = tuple(autograph_config.CONVERSION_RULES)
    if any(isinstance(rule, autograph_config.DoNotConvert) and rule._prefix == "tf_keras"
           for rule in rules):
        return
    autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"),) + rules
