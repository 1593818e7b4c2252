"""Serving subcommands of ``lvseg``: ``serve``, ``predict``, ``models-config``.

    lvseg serve [--model-base-path DIR --port 8500]     the local stand-in for TF Serving
          [--request-log-dir DIR --request-log-sampling 0.1 --request-log-max-mb 512]
    lvseg predict --target HOST:PORT FILES...           mask and overlay PNGs, LV area
    lvseg models-config [--serving-root DIR]             TF Serving's models.config

:func:`register` adds them to an argparse subparsers object; ``python -m serving.cli`` runs them
on their own.
"""
import argparse
import logging
import os
import sys

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server failed or could not be reached
EXIT_BAD_INPUT = 2  # as `lvseg`: some input was unusable (the others were processed)


def register(subparsers) -> None:
    """Adds ``serve``, ``predict`` and ``models-config`` to ``subparsers``."""
    from monitoring import request_log
    from pipeline import configs
    from serving import config as serving_config

    default_base_path = configs.serving_model_dir(configs.DEFAULT_OUTPUT_ROOT)

    serve = subparsers.add_parser(
        "serve", help="serve pushed models over TF Serving's gRPC API (local stand-in for "
                      "tensorflow_model_server)")
    serve.add_argument("--model-base-path", default=default_base_path,
                       help="folder of integer-named versions (default: %(default)s)")
    serve.add_argument("--model-name", default=configs.MODEL_NAME)
    serve.add_argument("--port", type=int, default=serving_config.GRPC_PORT,
                       help="gRPC port (0: any free port)")
    serve.add_argument("--rest-port", type=int,
                       help=f"also serve TF Serving's REST API on this port (the image uses "
                            f"{serving_config.REST_PORT}; default: no REST)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    policy = serve.add_mutually_exclusive_group()
    policy.add_argument("--latest", type=int, default=1, metavar="N",
                        help="serve the newest N versions (default 1)")
    policy.add_argument("--versions", type=int, nargs="+", metavar="V",
                        help="serve these versions only")
    policy.add_argument("--all-versions", action="store_true", help="serve every version")
    serve.add_argument("--version-label", action="append", default=[], metavar="LABEL=VERSION",
                       help="a version label (repeatable), e.g. stable=1700000000")
    serve.add_argument("--poll-seconds", type=float, default=serving_config.DEFAULT_POLL_INTERVAL_S,
                       help="how often the base path is checked for new versions")
    serve.add_argument("--max-load-retries", type=int,
                       default=serving_config.DEFAULT_MAX_LOAD_RETRIES, metavar="N",
                       help="retries of a failed load (TF Serving's --max_num_load_retries, "
                            "default %(default)s)")
    serve.add_argument("--load-retry-seconds", type=float,
                       default=serving_config.DEFAULT_LOAD_RETRY_INTERVAL_S, metavar="S",
                       help="between load retries (TF Serving's --load_retry_interval_micros, "
                            "default %(default)s s)")
    serve.add_argument("--max-message-bytes", type=int,
                       default=serving_config.TF_SERVING_MAX_MESSAGE_BYTES,
                       help="largest gRPC request or response, and what a request's tensors "
                            "may decode to (default %(default)s, TF Serving's 2 GiB - 1; e.g. "
                            f"{serving_config.DEFAULT_MAX_MESSAGE_BYTES}, a batch of "
                            f"{serving_config.MAX_BATCH_IMAGES} slices, to protect the server)")
    serve.add_argument("--response-encoding", choices=("proto_field", "tensor_content"),
                       default="proto_field",
                       help="Predict outputs in TF Serving's typed fields (float_val, int_val; "
                            "its default) or as raw tensor_content")
    serve.add_argument("--workers", type=int, default=serving_config.DEFAULT_WORKERS,
                       help="requests handled at once")
    serve.add_argument("--grace-seconds", type=float, default=serving_config.DEFAULT_GRACE_S,
                       help="on SIGTERM: 0 (default) ends at once, as TF Serving does; above 0, "
                            "requests in flight may finish for up to this long")
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve over TLS")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    logging_options = serve.add_argument_group(
        "request logging", "log a sample of the answered Predict calls as TF Serving "
                           "PredictionLog TFRecords (read by `lvseg drift`)")
    logging_options.add_argument("--request-log-dir", metavar="DIR",
                                 help="write the request log here (default: no logging)")
    logging_options.add_argument("--request-log-sampling", type=float, metavar="RATE",
                                 default=request_log.DEFAULT_SAMPLING_RATE,
                                 help="share of Predict requests logged, 0..1 (default "
                                      "%(default)s)")
    logging_options.add_argument("--request-log-max-mb", type=float, metavar="MB",
                                 default=request_log.DEFAULT_MAX_MB,
                                 help="cap on all log files in the folder; logging stops there "
                                      "(default %(default)s)")
    logging_options.add_argument("--request-log-response", choices=request_log.RESPONSE_MODES,
                                 default=request_log.DEFAULT_RESPONSE_MODE,
                                 help="what of the response is logged: summary (the version and "
                                      "the LV pixels per image, default), full (the 256x256 "
                                      "maps too), none (the version only)")
    serve.set_defaults(handler=serve_command)

    predict = subparsers.add_parser(
        "predict", help="segment DICOM, PNG, NPY or TFRecord files with a served model")
    predict.add_argument("files", nargs="+", metavar="FILE",
                         help="input files or folders (every file under a folder is tried)")
    predict.add_argument("--target", default=f"localhost:{serving_config.GRPC_PORT}",
                         help="HOST:PORT of the server's gRPC API (its REST API with --rest)")
    predict.add_argument("--out", default="predictions", help="folder for the PNGs")
    predict.add_argument("--model-name", default=configs.MODEL_NAME)
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--model-version", type=int, help="a version (default: the latest)")
    which.add_argument("--version-label", help="a version label, e.g. stable")
    predict.add_argument("--signature", choices=serving_config.PREDICTION_SIGNATURES,
                         default=serving_config.CLIENT_DEFAULT_SIGNATURE)
    predict.add_argument("--batch-size", type=int, default=8, help="slices per request")
    predict.add_argument("--timeout", type=float, default=serving_config.DEFAULT_TIMEOUT_S,
                         help="deadline of each call, seconds")
    predict.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                         help="wait up to this long for the model to be available first (a "
                              "server just started is still loading it); default: do not wait")
    predict.add_argument("--tls-ca", help="PEM CA bundle: connect over TLS")
    predict.add_argument("--rest", action="store_true",
                         help="use TF Serving's REST API "
                              f"(--target HOST:{serving_config.REST_PORT})")
    predict.set_defaults(handler=predict_command)

    config = subparsers.add_parser(
        "models-config", help="write TF Serving's models.config for the pushed models")
    config.add_argument("--serving-root", default=os.path.dirname(default_base_path),
                        help="folder of <model name>/<version>/ (default: %(default)s)")
    config.add_argument("--model-name", action="append", dest="model_names", metavar="NAME",
                        help="models to list (default: those pushed)")
    config.add_argument("--base-path-root", default=serving_config.CONTAINER_MODELS_ROOT,
                        help="the serving root as the server sees it: the container mount "
                             "(default %(default)s) or a bucket, gs://BUCKET/serving")
    config.add_argument("--out", help="write models.config here (default: stdout)")
    config.add_argument("--monitoring-out",
                        help="also write a Prometheus monitoring config here")
    config.set_defaults(handler=models_config_command)


def _version_policy(args):
    from serving import versions
    if args.all_versions:
        return versions.VersionPolicy(all_versions=True)
    if args.versions:
        return versions.VersionPolicy(specific=frozenset(args.versions))
    return versions.VersionPolicy(latest=args.latest)


def _version_labels(pairs):
    labels = {}
    for pair in pairs:
        label, _, version = pair.partition("=")
        if not label or not version.isdigit():
            raise ValueError(f"--version-label takes LABEL=VERSION, got {pair!r}")
        labels[label] = int(version)
    return labels


def _show_server_log() -> None:
    """Load, unload and shutdown lines on stderr, unless logging is configured already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("serving").setLevel(logging.INFO)


def serve_command(args) -> int:
    import grpc
    from serving import model_server, versions

    labels = _version_labels(args.version_label)
    _show_server_log()
    credentials = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        with open(args.tls_key, "rb") as key, open(args.tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    manager = versions.ModelManager(args.model_name, os.path.abspath(args.model_base_path),
                                    policy=_version_policy(args),
                                    version_labels=labels,
                                    poll_interval_s=args.poll_seconds,
                                    max_load_retries=args.max_load_retries,
                                    load_retry_interval_s=args.load_retry_seconds)
    logger = _request_logger(args)
    server = model_server.LocalModelServer(
        [manager], port=args.port, host=args.host, max_workers=args.workers,
        max_message_bytes=args.max_message_bytes, server_credentials=credentials,
        rest_port=args.rest_port, request_log=logger, response_encoding=args.response_encoding)
    try:
        server.start()
    except BaseException:
        if logger is not None:
            logger.close()
        raise
    rest = "" if server.rest_port is None else f", REST on {args.host}:{server.rest_port}"
    logged = "" if logger is None else (
        f"; logging {args.request_log_sampling * 100:g}% of Predict requests to "
        f"{logger.directory}")
    print(f"serving {args.model_name} on {args.host}:{server.port} (gRPC){rest}{logged}; stop "
          "with Ctrl-C or SIGTERM", flush=True)
    model_server.serve_until_terminated(server, args.grace_seconds)
    return EXIT_OK


def _request_logger(args):
    """The RequestLogger of ``--request-log-*``, or None without ``--request-log-dir``."""
    from monitoring import request_log

    if not args.request_log_dir:
        return None
    if args.request_log_max_mb <= 0:
        raise ValueError(f"--request-log-max-mb must be positive, got {args.request_log_max_mb}")
    if not 0.0 <= args.request_log_sampling <= 1.0:
        raise ValueError("--request-log-sampling must be within 0..1, got "
                         f"{args.request_log_sampling}")
    return request_log.RequestLogger(
        args.request_log_dir, sampling_rate=args.request_log_sampling,
        max_bytes=int(args.request_log_max_mb * (1 << 20)),
        response=args.request_log_response)


def predict_command(args) -> int:
    from serving import client, predict

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    options = dict(version=args.model_version, version_label=args.version_label,
                   signature=args.signature, timeout_s=args.timeout)
    if args.rest:
        import ssl
        from serving import rest_client
        context = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
        serving_client = rest_client.RestServingClient(args.target, args.model_name,
                                                       ssl_context=context, **options)
    else:
        credentials = client.tls_credentials(args.tls_ca) if args.tls_ca else None
        serving_client = client.ServingClient(args.target, args.model_name,
                                              credentials=credentials, **options)
    with serving_client as serving:
        try:
            if args.wait > 0:
                serving.wait_until_available(args.wait)
            bad_files = predict.predict_files(
                args.files, lambda batch: serving.predict(batch)[0], args.out,
                args.batch_size, sys.stdout, sys.stderr)
        except (client.ServingError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_SERVER_ERROR
    if bad_files:
        print(f"{bad_files} file(s) could not be used (see the errors above)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def models_config_command(args) -> int:
    from serving import models_config

    names = args.model_names or models_config.pushed_model_names(args.serving_root)
    if not names:
        raise ValueError(f"no pushed models under {args.serving_root}; push one first or name "
                         "it with --model-name")
    text = models_config.models_config_text(
        models_config.build_models_config(names, args.base_path_root))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}: " + ", ".join(names), file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.monitoring_out:
        with open(args.monitoring_out, "w") as f:
            f.write(models_config.monitoring_config_text())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.cli",
                                     description=__doc__.split("\n")[0])
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
