"""deploy/: the manifests validate against Kubernetes' and KServe's schemas, and agree with
the server they run (its port, its probe paths, its flags, its drain on SIGTERM).

No cluster runs here: the schemas are the published ones (kubernetes-validate's copies of
Kubernetes' OpenAPI, KServe's CRD in tests/data/), checked in a tool venv of their own.
"""

import http.client
import json
import re
import subprocess

import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.venvs import tool_python

DEPLOY_PINS = ["kubernetes-validate==1.37.0", "jsonschema==4.26.0"]
# the oldest and the newest Kubernetes the validator ships schemas for
KUBERNETES = ["1.25", "1.37"]
CRD_SCHEMA = ROOT / "tests" / "data" / "kserve-inferenceservice-crd-schema.json.gz"
KUBERNETES_YAML = ROOT / "deploy" / "kubernetes.yaml"
KSERVE_YAML = ROOT / "deploy" / "inferenceservice.yaml"
PORT = 8080  # the server's default port, which the manifests leave as it is


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def by_kind(path) -> dict:
    return {doc["kind"]: doc for doc in load(path)}


def pod_spec(doc: dict) -> dict:
    return (
        doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]["predictor"]
    )


def server_container(doc: dict) -> dict:
    (container,) = pod_spec(doc)["containers"]
    return container


@pytest.fixture(scope="module")
def validate():
    """A function that runs tests/deploy_check.py in the deploy venv on some manifest files
    and gives its result for each resource in them."""
    python = tool_python("deploy", DEPLOY_PINS)

    def run(*paths) -> list[dict]:
        args = [str(python), str(ROOT / "tests" / "deploy_check.py"), "--crd", str(CRD_SCHEMA)]
        for version in KUBERNETES:
            args += ["--kubernetes", version]
        proc = subprocess.run(
            [*args, *map(str, paths)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    return run


def test_the_manifests_validate(validate):
    results = validate(KUBERNETES_YAML, KSERVE_YAML)
    assert {r["kind"] for r in results} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "InferenceService",
    }
    for result in results:
        assert "error" not in result, result
        if result["kind"] == "InferenceService":
            assert result["checked"] == ["KServe CRD serving.kserve.io/v1beta1 InferenceService"]
        else:
            assert result["checked"] == [f"Kubernetes {v}" for v in KUBERNETES]


def test_the_validator_refuses_what_a_cluster_would(validate, tmp_path):
    """Strict: an unknown field or a wrong type is an error, in both kinds of schema."""
    isvc = load(KSERVE_YAML)[0]
    # `protocolVersion` belongs to predictor.model, not to a custom predictor
    isvc["spec"]["predictor"]["protocolVersion"] = "v2"
    (tmp_path / "isvc.yaml").write_text(yaml.safe_dump(isvc))
    docs = load(KUBERNETES_YAML)
    server_container(docs[0])["readinessProbe"]["httpGet"]["pth"] = "/v2/health/ready"
    docs[2]["spec"]["minReplicas"] = "two"
    (tmp_path / "k8s.yaml").write_text(yaml.safe_dump_all(docs))
    errors = {
        r["kind"]: r.get("error") for r in validate(tmp_path / "isvc.yaml", tmp_path / "k8s.yaml")
    }
    assert "'protocolVersion' was unexpected" in errors["InferenceService"]
    assert "readinessProbe.httpGet" in errors["Deployment"] and "'pth'" in errors["Deployment"]
    assert "minReplicas: 'two' is not of type" in errors["HorizontalPodAutoscaler"]
    assert errors["Service"] is None and errors["PodDisruptionBudget"] is None


def test_the_kubernetes_objects_point_at_each_other():
    kinds = by_kind(KUBERNETES_YAML)
    deployment = kinds["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        kinds["Service"]["spec"]["selector"],
        kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items(), selector
    ports = {p["name"]: p["containerPort"] for p in server_container(deployment)["ports"]}
    assert ports == {"http": PORT}
    assert [p["targetPort"] for p in kinds["Service"]["spec"]["ports"]] == ["http"]
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] >= 2 and deployment["spec"]["replicas"] == hpa["minReplicas"]
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]
    # the HPA's CPU utilisation is measured against the request: there must be one
    assert server_container(deployment)["resources"]["requests"]["cpu"]


def test_the_inference_service_runs_the_same_server_over_v2():
    deployment = by_kind(KUBERNETES_YAML)["Deployment"]
    isvc = by_kind(KSERVE_YAML)["InferenceService"]
    container, same = server_container(isvc), server_container(deployment)
    assert container["name"] == "kserve-container"  # KServe's name for the model server
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    for key in ("args", "resources", "lifecycle", "securityContext", "volumeMounts"):
        assert container[key] == same[key], key
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == same[probe]["httpGet"]["path"], probe
        assert container[probe]["httpGet"]["port"] == PORT
    predictor = isvc["spec"]["predictor"]
    assert (
        predictor["terminationGracePeriodSeconds"]
        == pod_spec(deployment)["terminationGracePeriodSeconds"]
    )
    assert predictor["annotations"] == deployment["spec"]["template"]["metadata"]["annotations"]


def kill_margin() -> int:
    """Seconds the server waits past --timeout before it kills a busy worker on SIGTERM."""
    source = (ROOT / "cali_reg" / "serve.py").read_text()
    found = re.findall(r"workers_kill_timeout=args\.timeout \+ (\d+)", source)
    assert len(found) == 1, "cali_reg/serve.py's drain changed: update this test and deploy/"
    return int(found[0])


def option(args: list[str], name: str, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default


@pytest.mark.parametrize("path", [KUBERNETES_YAML, KSERVE_YAML])
def test_the_grace_period_outlasts_the_drain(path):
    """Kubernetes sends SIGKILL after terminationGracePeriodSeconds, counted from the start
    of preStop: it must cover preStop's sleep, then the server's whole drain."""
    from cali_reg.serve import TIMEOUT

    doc = load(path)[0]
    container = server_container(doc)
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = option(container["args"], "--timeout", TIMEOUT) + kill_margin()
    assert pod_spec(doc)["terminationGracePeriodSeconds"] >= int(sleep[1]) + drain


@pytest.mark.parametrize("path", [KUBERNETES_YAML, KSERVE_YAML])
def test_the_prometheus_annotations_name_the_metrics_endpoint(path):
    doc = load(path)[0]
    meta = doc["spec"]["template"]["metadata"] if doc["kind"] == "Deployment" else pod_spec(doc)
    annotations = meta["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("path", [KUBERNETES_YAML, KSERVE_YAML])
def test_the_server_takes_the_manifests_arguments_and_answers_their_probes(built_repo, path):
    """The container's args start the real server; every path Kubernetes will ask answers 200."""
    from tests.helpers.server import Server

    container = server_container(load(path)[0])
    args = container["args"]
    assert args[0] == "serve" and "--port" not in args and "--host" not in args
    paths = [
        container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    ]
    assert set(paths) == {"/v2/health/live", "/v2/health/ready"}
    srv = Server(built_repo, *args[1:])
    try:
        for probe_path in [*paths, "/metrics"]:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            conn.request("GET", probe_path)
            assert conn.getresponse().status == 200, probe_path
            conn.close()
    finally:
        assert srv.stop() == 0


def test_the_image_healthcheck_asks_what_the_readiness_probe_asks():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (url,) = re.findall(r"HEALTHCHECK .*?urlopen\('([^']+)'", dockerfile, flags=re.S)
    readiness = server_container(by_kind(KUBERNETES_YAML)["Deployment"])["readinessProbe"]
    assert url == f"http://127.0.0.1:{PORT}{readiness['httpGet']['path']}"
