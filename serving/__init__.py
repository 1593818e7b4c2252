"""Querying the pushed model over TF Serving's APIs, and a local stand-in for the server.

client (gRPC) and rest_client: the clients; model_server, versions and rest_gateway: the local
server; predict: the predict CLI's inputs and PNGs; models_config: TF Serving's config files;
cli: the ``serve``, ``predict`` and ``models-config`` subcommands; deploy/: docker-compose and
Kubernetes files for the official image.
"""
from trainer import tf_env  # noqa: F401  (must run before TensorFlow is imported)
