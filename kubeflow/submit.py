"""Starts a run of a compiled pipeline: open-source Kubeflow Pipelines (its REST API) or Vertex AI.

Kubeflow Pipelines: the same three calls the ``kfp`` 2.5 client makes (find the experiment by
name, create it if missing, create the run with the PipelineSpec and platform config inline),
over plain HTTP so that every call has a timeout, the server's reason is shown when it refuses,
and authentication is explicit:

- a bearer token from ``--token``, else ``$KF_PIPELINES_TOKEN``, else the service-account token
  file the kfp client reads in a cluster (``$KF_PIPELINES_SA_TOKEN_PATH``, default
  ``/var/run/secrets/kubeflow/pipelines/token``), when it exists;
- a session cookie (``--cookie``), what a multi-user Kubeflow behind Dex / oauth2-proxy wants
  from a browser session.

Every override is checked (``kubeflow/run_parameters.py``) and the package read before the
first request, so a bad value fails in seconds, not after the data stages of a run.
"""
import dataclasses
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

import yaml

from kubeflow import run_parameters

API = "/apis/v2beta1"
DEFAULT_TIMEOUT_S = 30.0
TOKEN_ENV = "KF_PIPELINES_TOKEN"
# What the kfp client reads in a cluster (kfp/client/__init__.py): the projected token of the
# pod's service account, which a multi-user Kubeflow accepts.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
MAX_ERROR_CHARS = 2000
JSON_SUFFIX = ".json"


class KubeflowUnreachableError(ConnectionError):
    """The Kubeflow Pipelines host did not answer (in time)."""


class SubmitError(RuntimeError):
    """Kubeflow Pipelines answered but did not start the run; the message has its reason."""


@dataclasses.dataclass(frozen=True)
class Package:
    """A compiled pipeline as submitted: the PipelineSpec and the Kubernetes platform config."""

    path: str
    spec: Dict[str, Any]
    platform_spec: Optional[Dict[str, Any]]
    runtime_config: Dict[str, Any]  # a PipelineJob's runtimeConfig ({} for a YAML package)

    def parameter_defaults(self) -> Dict[str, Any]:
        parameters = self.spec["root"].get("inputDefinitions", {}).get("parameters", {})
        return {name: parameter["defaultValue"] for name, parameter in parameters.items()
                if "defaultValue" in parameter}


def load_package(path: str) -> Package:
    """A compiled package: a PipelineSpec YAML (then optionally its platform config) or a
    PipelineJob JSON."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(JSON_SUFFIX):
            documents = [json.load(f)]
        else:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
    if not documents or not isinstance(documents[0], dict):
        raise ValueError(f"{path} is not a compiled pipeline (empty or not a mapping)")
    job = documents[0]
    spec = job.get("pipelineSpec", job)
    if "root" not in spec or "deploymentSpec" not in spec:
        raise ValueError(f"{path} is not a compiled pipeline (no root DAG or deployment "
                         "spec); compile one with `lvseg kubeflow compile`")
    platform = {}
    for document in documents[1:]:
        platform.update(document)
    return Package(path=path, spec=spec, platform_spec=platform or None,
                   runtime_config=job.get("runtimeConfig", {}) if spec is not job else {})


def load_pipeline_spec(path: str) -> Dict[str, Any]:
    return load_package(path).spec


def bearer_token(token: Optional[str] = None) -> Optional[str]:
    """The token to send: given, from the environment, or the in-cluster token file."""
    if token:
        return token.strip()
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = os.environ.get(SA_TOKEN_PATH_ENV, DEFAULT_SA_TOKEN_PATH)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return None


def _server_reason(body: bytes) -> str:
    """The reason in a KFP error body (grpc-gateway's {"error", "message", ...}) or the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return text[:MAX_ERROR_CHARS]
    if isinstance(document, dict):
        reason = document.get("message") or document.get("error")
        if reason:
            return str(reason)[:MAX_ERROR_CHARS]
    return text[:MAX_ERROR_CHARS]


class PipelinesApi:
    """The Kubeflow Pipelines v2beta1 REST API, every call bounded by ``timeout_s``."""

    def __init__(self, host: str, token: Optional[str] = None, cookie: Optional[str] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"the host is an http:// or https:// URL, got {host!r}")
        self.host = host.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        if cookie:
            self.headers["Cookie"] = cookie

    def call(self, method: str, path: str, body: Optional[dict] = None,
             query: Optional[dict] = None) -> dict:
        url = f"{self.host}{API}{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            reason = _server_reason(exc.read())
            hint = (" (authenticate with --token, $KF_PIPELINES_TOKEN or --cookie)"
                    if exc.code in (401, 403) else "")
            raise SubmitError(f"Kubeflow Pipelines at {self.host} answered {method} {API}{path} "
                              f"with {exc.code} {exc.reason}: {reason}{hint}") from None
        except (socket.timeout, TimeoutError):
            raise KubeflowUnreachableError(
                f"Kubeflow Pipelines at {self.host} did not answer {method} {API}{path} within "
                f"{self.timeout_s:g} s" + ("; the run may or may not have been created: look "
                                           "in the UI before submitting again"
                                           if method == "POST" and path == "/runs" else "")
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise KubeflowUnreachableError(
                    f"Kubeflow Pipelines at {self.host} did not answer within "
                    f"{self.timeout_s:g} s") from None
            raise KubeflowUnreachableError(
                f"cannot reach Kubeflow Pipelines at {self.host}: {reason}") from None
        return json.loads(payload or b"{}")

    def experiment_id(self, name: str, namespace: Optional[str] = None) -> str:
        """The id of the experiment ``name``, created if missing (as the kfp client does)."""
        predicate = {"predicates": [{"operation": "EQUALS", "key": "display_name",
                                     "stringValue": name}]}
        found = self.call("GET", "/experiments",
                          query={"filter": json.dumps(predicate), "namespace": namespace})
        experiments = found.get("experiments") or []
        if len(experiments) > 1:
            raise SubmitError(f"several experiments are named {name!r}; name another")
        if experiments:
            return experiments[0]["experiment_id"]
        body = {"display_name": name}
        if namespace:
            body["namespace"] = namespace
        return self.call("POST", "/experiments", body)["experiment_id"]

    def create_run(self, body: dict) -> dict:
        return self.call("POST", "/runs", body)


def run_body(package: Package, *, experiment_id: str, run_name: str,
             arguments: Dict[str, str], enable_caching: Optional[bool],
             service_account: Optional[str] = None) -> dict:
    """The run the kfp 2.5 client would create (client.py run_pipeline / _create_job_config)."""
    spec = json.loads(json.dumps(package.spec))
    if enable_caching is not None:  # the client's _override_caching_options: every root task
        for task in spec["root"]["dag"]["tasks"].values():
            task["cachingOptions"] = {"enableCache": enable_caching}
    pipeline_spec = ({"pipeline_spec": spec, "platform_spec": package.platform_spec}
                     if package.platform_spec else spec)
    body = {"display_name": run_name, "experiment_id": experiment_id,
            "pipeline_spec": pipeline_spec,
            "runtime_config": {"parameters": dict(arguments),
                               "pipeline_root": spec.get("defaultPipelineRoot")}}
    if service_account:
        body["service_account"] = service_account
    return body


def submit(host: str, package_path: str, *, arguments: Optional[Dict[str, str]] = None,
           run_name: Optional[str] = None, experiment_name: str = "Default",
           namespace: Optional[str] = None, no_cache: bool = False,
           token: Optional[str] = None, cookie: Optional[str] = None,
           service_account: Optional[str] = None,
           timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Starts a run on Kubeflow Pipelines; returns the run id.

    ``no_cache`` recomputes every task. There is deliberately no way to force the cache on: the
    kfp client's ``enable_caching=True`` would also cache the tasks that must always run (the
    served model, the input fingerprint)."""
    package = load_package(package_path)
    arguments = dict(arguments or {})
    unknown = sorted(set(arguments) - set(package.parameter_defaults()))
    if unknown:
        raise run_parameters.ParameterError(
            f"the pipeline has no parameter(s) {unknown}; it has "
            f"{sorted(package.parameter_defaults())}")
    api = PipelinesApi(host, token=bearer_token(token), cookie=cookie, timeout_s=timeout_s)
    experiment_id = api.experiment_id(experiment_name, namespace)
    run = api.create_run(run_body(
        package, experiment_id=experiment_id,
        run_name=run_name or package.spec["pipelineInfo"]["name"], arguments=arguments,
        enable_caching=False if no_cache else None, service_account=service_account))
    return run["run_id"]


def vertex_pipeline_job(package_path: str, *, project: str, region: str,
                        arguments: Optional[Dict[str, str]] = None,
                        run_name: Optional[str] = None, no_cache: bool = False,
                        credentials=None):
    """The Vertex AI PipelineJob of the package (built offline: the SDK parses the template and
    merges the parameters locally); ``credentials`` None means application default ones."""
    from google.cloud import aiplatform

    package = load_package(package_path)
    return aiplatform.PipelineJob(
        display_name=run_name or package.spec["pipelineInfo"]["name"],
        template_path=package_path, pipeline_root=package.spec.get("defaultPipelineRoot"),
        parameter_values=dict(arguments or {}), enable_caching=False if no_cache else None,
        project=project, location=region, credentials=credentials)


def submit_to_vertex(package_path: str, *, project: str, region: str,
                     arguments: Optional[Dict[str, str]] = None, run_name: Optional[str] = None,
                     no_cache: bool = False, service_account: Optional[str] = None) -> str:
    """Starts a Vertex AI PipelineJob from the package; returns its resource name. Credentials
    are Google's application default credentials."""
    job = vertex_pipeline_job(package_path, project=project, region=region, arguments=arguments,
                              run_name=run_name, no_cache=no_cache)
    job.submit(service_account=service_account)
    return job.resource_name
