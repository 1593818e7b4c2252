"""Removes the zero-byte "directory" objects TensorFlow writes on GCS under a task's outputs.

TensorFlow's GCS file system creates a directory by writing an empty object named ``dir/``
(``GcsFileSystem::CreateDir``); a SavedModel export leaves ``.../Format-Serving/``,
``.../variables/`` and ``.../assets/``, TensorBoard and tf.Transform leave others. Open-source
Kubeflow Pipelines' launcher copies every input artifact to the pod before a task starts
(``backend/src/v2/component/launcher_v2.go`` ``downloadArtifacts``) and writes each object of
the artifact's prefix as a file (``objectstore/object_store.go`` ``DownloadBlob``, which lists
by the prefix without a trailing slash, so sibling outputs such as ``model_run`` are listed for
``model`` too): the marker ``model/Format-Serving/`` becomes a file, and the next object,
``model/Format-Serving/saved_model.pb``, fails with "not a directory" (kubeflow/pipelines#13476,
open, with no fix released). So on the ``kfp`` target every task removes the markers under its
own outputs once its executor has finished; GCS has no real directories, and TensorFlow, TFX
and Beam find files by prefix, with or without the markers.
"""
import logging
from typing import Iterable, List, Tuple

GCS_SCHEME = "gs://"

log = logging.getLogger("lvseg.gcs_markers")


def split_gcs_uri(uri: str) -> Tuple[str, str]:
    if not uri.startswith(GCS_SCHEME):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, path = uri[len(GCS_SCHEME):].partition("/")
    return bucket, path.rstrip("/")


def directory_markers(objects: Iterable[Tuple[str, int]], prefix: str) -> List[str]:
    """Names of the zero-byte ``.../`` objects at or under ``prefix`` (an object path without a
    trailing slash), given (name, size) of the objects listed by that prefix."""
    return sorted(name for name, size in objects
                  if size == 0 and name.endswith("/")
                  and (name == prefix + "/" or name.startswith(prefix + "/")))


def remove_directory_markers(uri: str, client=None) -> List[str]:
    """Deletes the markers under the artifact ``uri``; returns their names."""
    bucket_name, prefix = split_gcs_uri(uri)
    if client is None:
        from google.cloud import storage
        client = storage.Client()
    bucket = client.bucket(bucket_name)
    blobs = list(client.list_blobs(bucket_name, prefix=prefix))
    markers = directory_markers(((b.name, b.size or 0) for b in blobs), prefix)
    for name in markers:
        bucket.blob(name).delete()
    if markers:
        log.info("removed %d GCS directory marker(s) under %s", len(markers), uri)
    return markers
