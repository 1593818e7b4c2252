"""Querying the pushed model over TF Serving's APIs, and a local stand-in for the server.

config: names and defaults (no TensorFlow); client (gRPC) and rest_client: the clients;
model_server, versions, inference and rest_gateway: the local server; payloads: requests and
responses; predict: the predict CLI's inputs and PNGs; models_config: TF Serving's config files;
sample_model: an untrained model with the pipeline's signatures; cli: the ``serve``, ``predict``
and ``models-config`` subcommands; deploy/: docker-compose and Kubernetes files for the
official image. Request logs are written with ``monitoring.request_log``.
"""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
