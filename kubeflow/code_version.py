"""The code version: one digest of everything a Kubeflow task runs that an image rebuild can change.

Kubeflow Pipelines' task cache is keyed on the task spec (image reference, command, arguments,
inputs), and the components name this project's functions by dotted path. Rebuilding
``REGISTRY/lvseg:0.1.0`` with a changed Transform or Trainer leaves that key as it was, so a run
would reuse outputs of the old code. ``lvseg kubeflow compile`` therefore writes the digest of
the code it compiles from into every task's arguments (a different key when the code changes),
and the task entry point (:mod:`kubeflow.container_entrypoint`) refuses to run when the image's
code has another digest (the image was not rebuilt, or the spec not recompiled). A cached output
is thus always the output of the code its key names.

The digest covers this project's Python modules (the packages ``setup.py`` installs) and the
versions of the libraries that compute the results. It is computed from the installed files, so
the source tree and the image (``pip install .``) give the same digest for the same commit and
lock.
"""
import glob
import hashlib
import importlib.metadata
import importlib.util
import os
from typing import Iterator, Mapping, Optional, Tuple

# The packages setup.py installs (its find_packages include list) and their package data.
PACKAGES = ("components", "dataset", "kubeflow", "lvseg", "monitoring", "pipeline", "report",
            "serving", "trainer")
PACKAGE_DATA = {"pipeline": ("schema/*.pbtxt",)}
# Libraries whose version changes what a task computes (requirements.lock pins each).
RUNTIME_DISTRIBUTIONS = (
    "apache-beam", "keras", "ml-metadata", "numpy", "protobuf", "pyarrow", "tensorflow",
    "tensorflow-data-validation", "tensorflow-metadata", "tensorflow-model-analysis",
    "tensorflow-serving-api", "tensorflow-transform", "tf-keras", "tfx", "tfx-bsl")
DIGEST_LENGTH = 16  # hex characters shown and compared: 64 bits


def installed_package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed")
    return list(spec.submodule_search_locations)[0]


def _package_files(package: str, root: str) -> Iterator[Tuple[str, str]]:
    """(path relative to the package's parent, absolute path) of the package's files as
    setuptools installs them: modules of folders that are packages, and the package data."""
    parent = os.path.dirname(root)
    paths = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        if "__init__.py" in names:
            paths += [os.path.join(folder, name) for name in names if name.endswith(".py")]
    for pattern in PACKAGE_DATA.get(package, ()):
        paths += glob.glob(os.path.join(root, pattern))
    for path in sorted(paths):
        yield os.path.relpath(path, parent).replace(os.sep, "/"), path


def code_version(package_dirs: Optional[Mapping[str, str]] = None) -> str:
    """The digest of the project's sources and its runtime libraries' versions; the sources of
    the installed packages unless ``package_dirs`` (package name -> folder) names others."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        root = (package_dirs or {}).get(package) or installed_package_dir(package)
        for relative, path in _package_files(package, root):
            with open(path, "rb") as f:
                content = f.read()
            digest.update(f"{relative}\0{len(content)}\0".encode())
            digest.update(content)
    for distribution in RUNTIME_DISTRIBUTIONS:
        digest.update(f"{distribution}=={importlib.metadata.version(distribution)}\n".encode())
    return digest.hexdigest()[:DIGEST_LENGTH]
