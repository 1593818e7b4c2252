"""Serving's names and defaults, importable without TensorFlow: the ``lvseg serve``,
``predict`` and ``models-config`` parsers read them, and the server and clients use them."""
from dataset import records
from trainer.config import SERVING_DEFAULT, SERVING_RAW_IMAGE

TF_SERVING_IMAGE = "tensorflow/serving:2.16.1"
GRPC_PORT = 8500
REST_PORT = 8501
CONTAINER_MODELS_ROOT = "/models"  # where the serving root is mounted in the container

DEFAULT_POLL_INTERVAL_S = 1.0  # how often the local server looks for new versions
# TF Serving's defaults (model_servers/main.cc): a failed load is retried 5 times, 60 s apart.
DEFAULT_MAX_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_S = 60.0
DEFAULT_WORKERS = 8
# TF Serving installs no signal handler (model_servers/main.cc): SIGTERM ends it at once. A grace
# above 0 lets requests in flight finish first, for up to that many seconds.
DEFAULT_GRACE_S = 0.0
DEFAULT_TIMEOUT_S = 30.0  # the clients' deadline of a call

PREDICTION_SIGNATURES = (SERVING_RAW_IMAGE, SERVING_DEFAULT)
# Two defaults with two meanings: what this project's clients call unless told otherwise, and
# what TF Serving runs when a request names no signature (kDefaultServingSignatureDefKey).
CLIENT_DEFAULT_SIGNATURE = SERVING_RAW_IMAGE
SERVER_DEFAULT_SIGNATURE = SERVING_DEFAULT

# Largest batch the default message limits are sized for. Per pixel, a request carries at most
# 9 bytes (int64 pixels plus the uint8 label of a full lab-schema example) and a response 8
# (float32 probability plus int32 mask); protobuf framing adds little on top.
MAX_BATCH_IMAGES = 64
_BYTES_PER_PIXEL = records.IMAGE_DTYPE.itemsize + records.LABEL_DTYPE.itemsize
_FRAMING_BYTES = 1 << 20


def message_bytes_for(batch_size: int) -> int:
    """gRPC message size (bytes) that fits a request or a response of ``batch_size`` slices."""
    return batch_size * records.NUM_PIXELS * _BYTES_PER_PIXEL + _FRAMING_BYTES


DEFAULT_MAX_MESSAGE_BYTES = message_bytes_for(MAX_BATCH_IMAGES)  # a protective limit, on request
# TF Serving's own: gRPC messages up to 2 GiB - 1 each way (model_servers/server.cc, kint32max).
TF_SERVING_MAX_MESSAGE_BYTES = (1 << 31) - 1
# What a default gRPC client accepts (grpc's GRPC_DEFAULT_MAX_RECV_MESSAGE_LENGTH, 4 MiB): the
# clients split larger batches into requests whose answers fit.
GRPC_CLIENT_DEFAULT_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
# The largest Predict response per image whichever encoding the server uses: a float32
# probability and an int32 mask per pixel as tensor_content (typed fields take less).
_RESPONSE_BYTES_PER_IMAGE = records.NUM_PIXELS * 8


def images_per_response(max_receive_bytes: int) -> int:
    """How many images one Predict may carry for its answer to fit ``max_receive_bytes``."""
    return max(1, (max_receive_bytes - _FRAMING_BYTES // 16) // _RESPONSE_BYTES_PER_IMAGE)
