"""``lvseg kubeflow``: compile the pipeline for Kubeflow Pipelines, and start runs of it.

    lvseg kubeflow compile --image IMAGE --pipeline-root URI --data-root URI --serving-dir URI
                           [--target kfp|vertex] [--output FILE]
                           [training, gate, Beam and resource options]
    lvseg kubeflow submit --host URL [--package FILE] [--token T | --cookie C]
                          [--train-steps N --model M --min-dice D --param NAME=JSON]
    lvseg kubeflow submit --target vertex --project P --region R [--package FILE] [...]

``register(subparsers)`` adds the ``kubeflow`` command to the ``lvseg`` parser.
"""
import argparse
import sys

from pipeline import configs

EXIT_SUBMIT_FAILED = 1


def register(subparsers) -> None:
    kubeflow = subparsers.add_parser(
        "kubeflow", help="compile the pipeline for Kubeflow Pipelines, or start a run of it")
    commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    _add_compile_command(commands)
    _add_submit_command(commands)


def _add_compile_command(commands) -> None:
    from kubeflow import beam_settings, config, resources
    from pipeline import options

    compile_ = commands.add_parser(
        "compile", help="compile to a pipeline spec (no cloud access needed)",
        description="Compiles the pipeline for Kubeflow Pipelines 2 (TFX KubeflowV2DagRunner): "
                    "--target kfp for open-source Kubeflow Pipelines (default), vertex for "
                    "Vertex AI Pipelines. Nothing is read or uploaded: URIs may be gs:// on a "
                    "machine without network. The training and gate options set the defaults "
                    "of the run-time parameters, which a run can override.")
    compile_.add_argument("--target", choices=config.TARGETS, default=config.KFP,
                          help="kfp: open-source Kubeflow Pipelines 2 (default); vertex: Vertex "
                               "AI Pipelines")
    compile_.add_argument("--image", required=True,
                          help="the pipeline image (see Dockerfile), e.g. REGISTRY/lvseg:TAG")
    compile_.add_argument("--pipeline-root", required=True,
                          help="where every component writes its artifacts, e.g. gs://B/root")
    compile_.add_argument("--data-root", required=True, help="folder of lab-schema TFRecords")
    compile_.add_argument("--serving-dir", required=True,
                          help=f"serving root: versions are pushed to "
                               f"<serving-dir>/{configs.MODEL_NAME}/<version>/")
    compile_.add_argument("--output",
                          help="the compiled file: .yaml (PipelineSpec, as the Kubeflow UI and "
                               "client take it) or, for --target vertex, .json (PipelineJob); "
                               f"default {config.DEFAULT_OUTPUTS[config.KFP]} (kfp), "
                               f"{config.DEFAULT_OUTPUTS[config.VERTEX]} (vertex)")
    compile_.add_argument("--pipeline-name", default=configs.PIPELINE_NAME)
    compile_.add_argument("--hash-split", action="store_true",
                          help="read every file under the data root and hash-split it 9:1, "
                               "instead of its train/ and eval/ folders")
    options.add_schema_options(compile_, config.IMAGE_SCHEMA_PATH, "as the tasks see it")
    options.add_training_options(compile_)
    options.add_gate_options(compile_)
    compile_.add_argument("--no-cache", action="store_true", help="disable Kubeflow's task cache")

    beam = compile_.add_argument_group("Beam (ExampleGen, StatisticsGen, Transform, Evaluator)")
    beam.add_argument("--beam-runner", choices=beam_settings.BEAM_RUNNERS,
                      default=beam_settings.DIRECT)
    beam.add_argument("--direct-workers", type=int, default=1,
                      help="DirectRunner: 1 runs in memory, more in that many processes")
    beam.add_argument("--project", help="Dataflow, and a Vertex AI training job: GCP project")
    beam.add_argument("--region", help="Dataflow, and a Vertex AI training job: region")
    beam.add_argument("--temp-location", help="Dataflow: gs:// folder for temporary files")
    beam.add_argument("--job-endpoint", help="portable: Flink or Spark job server, host:port")
    beam.add_argument("--environment-type", choices=beam_settings.ENVIRONMENT_TYPES,
                      default=beam_settings.EXTERNAL,
                      help="portable: EXTERNAL (a worker pool beside each task manager) or "
                           "DOCKER (the runner starts the image)")
    beam.add_argument("--environment-config",
                      help=f"portable: worker pool address (default "
                           f"{beam_settings.DEFAULT_WORKER_POOL}) or image (default --image)")
    beam.add_argument("--beam-arg", action="append", dest="beam_args", default=[],
                      metavar="ARG", help="any other Beam option, repeatable")

    _add_resource_options(compile_, resources.DATA, "data stages (ImportExampleGen, "
                          "StatisticsGen, Transform, Evaluator)")
    _add_resource_options(compile_, resources.TRAINER, "the Trainer", gpus=True)
    _add_resource_options(compile_, resources.SERVING_CHECK, "ServingCheck")
    compile_.set_defaults(handler=_compile)


def _add_resource_options(parser, group: str, what: str, gpus: bool = False) -> None:
    """--GROUP-cpus, --GROUP-memory-gb, --GROUP-node-selector, --GROUP-toleration (and, for the
    trainer, --trainer-gpus and --gpu-type): resources.TaskResources of one group of tasks."""
    flag = group.replace("_", "-")
    options = parser.add_argument_group(f"resources of {what} (default: the cluster's)")
    options.add_argument(f"--{flag}-cpus", type=float, metavar="CPUS")
    options.add_argument(f"--{flag}-memory-gb", type=float, metavar="GB")
    if gpus:
        options.add_argument(f"--{flag}-gpus", type=int, default=0, metavar="N",
                             help="per machine (each replica of a training job)")
        options.add_argument("--gpu-type", help="kfp: the Kubernetes resource name (default "
                             "nvidia.com/gpu); vertex: a GPU model (default NVIDIA_TESLA_T4)")
        options.add_argument(f"--{flag}-replicas", type=int, default=1, metavar="N",
                             help="train on N machines in sync (MultiWorkerMirroredStrategy): "
                                  "kfp a TFJob of the Kubeflow Training Operator, each pod with "
                                  "the trainer's resources; vertex a Vertex AI custom job")
        options.add_argument(f"--{flag}-machine-type", metavar="TYPE",
                             help="vertex: the training job's machines (default "
                                  "n1-standard-8)")
        options.add_argument(f"--{flag}-namespace", metavar="NAMESPACE",
                             help="kfp: where the TFJob runs (default: the Trainer task's)")
    options.add_argument(f"--{flag}-node-selector", action="append", default=[],
                         metavar="LABEL=VALUE", help="kfp only; repeatable")
    options.add_argument(f"--{flag}-toleration", action="append", default=[],
                         metavar="KEY[=VALUE]:EFFECT", help="kfp only; repeatable (GPU tasks "
                         "tolerate nvidia.com/gpu:NoSchedule without being told)")


def _task_resources(args) -> dict:
    from kubeflow import resources

    groups = {}
    for group in resources.TASKS:
        def option(name, default=None):
            return getattr(args, f"{group}_{name}", default)
        groups[group] = resources.TaskResources(
            cpus=option("cpus"), memory_gb=option("memory_gb"), gpus=option("gpus", 0),
            gpu_type=args.gpu_type if group == resources.TRAINER else None,
            node_selector=resources.parse_node_selector(option("node_selector", [])),
            tolerations=[resources.Toleration.parse(t) for t in option("toleration", [])])
    return groups


def _add_submit_command(commands) -> None:
    from kubeflow import config
    from trainer import config as trainer_config

    submit = commands.add_parser(
        "submit", help="start a run of a compiled pipeline",
        description="Starts a run of a compiled pipeline on open-source Kubeflow Pipelines "
                    "(--host) or Vertex AI Pipelines (--target vertex --project --region). "
                    "Every override is checked before anything is sent.")
    submit.add_argument("--target", choices=config.TARGETS, default=config.KFP)
    submit.add_argument("--package", help="the compiled file (default: what `compile` writes "
                                          "for the target)")
    submit.add_argument("--run-name")
    submit.add_argument("--experiment", default=configs.PIPELINE_NAME)
    overrides = submit.add_argument_group(
        "run-time overrides (the package's defaults otherwise)")
    overrides.add_argument("--train-steps", type=int, help="training steps (train_args)")
    overrides.add_argument("--model", choices=trainer_config.MODEL_NAMES,
                           help="(training_config)")
    overrides.add_argument("--min-dice", type=float, help="the gate's Dice threshold, in [0, 1] "
                           "(eval_config)")
    overrides.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                           help="set a run-time parameter to a whole JSON value, repeatable; "
                                "not together with the option that edits the same parameter")
    overrides.add_argument("--no-cache", action="store_true", help="recompute every task")
    kfp = submit.add_argument_group("open-source Kubeflow Pipelines (--target kfp)")
    kfp.add_argument("--host", help="the Kubeflow Pipelines API, e.g. http://localhost:8080 after "
                                    "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
                                    "8080:80`")
    kfp.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    kfp.add_argument("--token", help="bearer token (default: $KF_PIPELINES_TOKEN, else the "
                                     "in-cluster service-account token file, if any)")
    kfp.add_argument("--cookie", help="a session cookie, e.g. 'authservice_session=...' from a "
                                      "browser logged in to a multi-user Kubeflow")
    kfp.add_argument("--service-account", help="Kubernetes service account the run's pods use")
    kfp.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                     help="give up on a call the server does not answer within this (default 30)")
    vertex = submit.add_argument_group("Vertex AI Pipelines (--target vertex)")
    vertex.add_argument("--project")
    vertex.add_argument("--region")
    vertex.add_argument("--vertex-service-account", help="service account the job runs as")
    submit.set_defaults(handler=_submit)


def _compile(args) -> int:
    from kubeflow import beam_settings, runner, trainer_job
    from pipeline import options

    training_job, task_resources = trainer_job.plan(
        args.target, args.image, args.trainer_replicas, args.trainer_machine_type,
        _task_resources(args), project=args.project, region=args.region,
        namespace=args.trainer_namespace)
    run = runner.KubeflowCompile(
        image=args.image,
        pipeline_root=args.pipeline_root,
        data_root=args.data_root,
        serving_root=args.serving_dir,
        settings=options.settings_from_args(args, pipeline_name=args.pipeline_name),
        split_by_folders=not args.hash_split,
        beam=beam_settings.BeamSettings(
            runner=args.beam_runner, direct_workers=args.direct_workers, project=args.project,
            region=args.region, temp_location=args.temp_location,
            job_endpoint=args.job_endpoint, environment_type=args.environment_type,
            environment_config=args.environment_config, extra_args=args.beam_args),
        target=args.target,
        task_resources=task_resources,
        training_job=training_job)
    output = args.output or runner.DEFAULT_OUTPUTS[args.target]
    compiled = runner.compile_pipeline(run, output)
    print(f"compiled {runner.count_tasks(compiled)} tasks for {args.target} -> {output}\n"
          f"  image          {run.image}\n"
          f"  code version   {compiled.code_version} (the image must hold the same code: "
          "build it from this commit)\n"
          f"  pipeline root  {run.pipeline_root}\n"
          f"  pushes to      {run.serving_model_dir}/<version>/\n"
          + (f"  trains as      {training_job.describe()}\n" if training_job else "")
          + "  parameters     " + ", ".join(
              sorted(compiled.spec["root"]["inputDefinitions"]["parameters"])))
    return 0


def _submit(args) -> int:
    from kubeflow import run_parameters, submit
    from kubeflow.config import DEFAULT_OUTPUTS, KFP

    package_path = args.package or DEFAULT_OUTPUTS[args.target]
    if args.target == KFP and not args.host:
        raise ValueError("--host is required with --target kfp")
    if args.target != KFP and not (args.project and args.region):
        raise ValueError("--project and --region are required with --target vertex")
    package = submit.load_package(package_path)
    arguments = run_parameters.overrides(
        package.parameter_defaults(), train_steps=args.train_steps, model=args.model,
        min_dice=args.min_dice, params=_parse_params(args.param))
    try:
        if args.target == KFP:
            run_id = submit.submit(
                args.host, package_path, arguments=arguments, run_name=args.run_name,
                experiment_name=args.experiment, namespace=args.namespace,
                no_cache=args.no_cache, token=args.token, cookie=args.cookie,
                service_account=args.service_account, timeout_s=args.timeout)
            where = args.host
        else:
            run_id = submit.submit_to_vertex(
                package_path, project=args.project, region=args.region, arguments=arguments,
                run_name=args.run_name, no_cache=args.no_cache,
                service_account=args.vertex_service_account)
            where = f"Vertex AI ({args.project}, {args.region})"
    except (submit.KubeflowUnreachableError, submit.SubmitError) as exc:
        print(f"lvseg: error: {exc}", file=sys.stderr)
        return EXIT_SUBMIT_FAILED
    print(f"started run {run_id} of {package_path} on {where}")
    if arguments:
        print("  overrides      " + ", ".join(sorted(arguments)))
    return 0


def _parse_params(pairs) -> dict:
    params = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise ValueError(f"--param takes NAME=JSON, got {pair!r}")
        if name in params:
            raise ValueError(f"--param {name} is given twice")
        params[name] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    """A parser with just this command, for tests (``lvseg kubeflow`` runs through
    ``lvseg.cli.main``, which reports bad input)."""
    parser = argparse.ArgumentParser(prog="lvseg")
    register(parser.add_subparsers(dest="command", required=True))
    return parser

