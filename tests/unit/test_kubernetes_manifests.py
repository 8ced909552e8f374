"""deploy/kubernetes.yaml and deploy/kserve-inferenceservice.yaml: not run here (no cluster), so each is
checked against what it relies on.

- The Deployment and the Service are validated strictly (no unknown field, every type right)
  against Kubernetes' own JSON schemas, bundled offline by `kubernetes-validate` (dev extra).
- The InferenceService is a KServe CRD, whose schema no installable package bundles: its apiVersion
  and kind are checked, and its predictor, which inlines a Pod spec (KServe's PredictorSpec:
  PodSpec plus ComponentExtensionSpec), is validated as a Pod spec once KServe's own keys are set aside.
- Against this repo: the image and its EXPOSE'd port (docker/Dockerfile), the command's flags
  (`embedserve serve`'s own parser) and variables (Settings), and every probe path a real route
  that answers 200 without an API key on a server that has keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from embedserve.api.app import ROUTERS
from embedserve.api.routing import Scope, route_scope
from embedserve.cli import app as cli
from embedserve.settings import Settings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY, KSERVE = ROOT / "deploy" / "kubernetes.yaml", ROOT / "deploy" / "kserve-inferenceservice.yaml"
IMAGE = "embedserve:cpu"  # the README's `docker build -f docker/Dockerfile -t embedserve:cpu .`
# KServe's ComponentExtensionSpec keys, inlined beside the Pod spec in a predictor (v1beta1 component.go)
COMPONENT_EXTENSION = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy", "autoScaling",
}


def documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}


def validate(resource: dict) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def exposed_port() -> int:
    (port,) = re.findall(r"^EXPOSE (\d+)$", (ROOT / "docker" / "Dockerfile").read_text(), re.MULTILINE)
    return int(port)


def check_container(container: dict, probes: dict[str, str]) -> None:
    """The image, its port, a command `embedserve serve` parses, variables Settings reads, the probes' paths."""
    assert container["image"] == IMAGE
    (port,) = container["ports"]
    assert port["containerPort"] == exposed_port() == 8000
    assert container["command"] == ["embedserve", "serve"]
    cli.commands["serve"].make_context("serve", list(container["args"]))  # raises on an unknown flag
    flags = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    assert int(flags["--port"]) == port["containerPort"]
    for env in container["env"]:
        name = env["name"]
        if name.startswith("EMBEDSERVE_"):
            assert name.removeprefix("EMBEDSERVE_").lower() in Settings.model_fields, name
    assert {"/app/cache"} <= {mount["mountPath"] for mount in container["volumeMounts"]}  # the image's VOLUME
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] in (port["containerPort"], port.get("name"))


def test_deployment_and_service_validate_against_kubernetes_schemas():
    docs = documents(DEPLOY)
    assert set(docs) == {"Deployment", "Service"}
    for resource in docs.values():
        validate(resource)
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["apiVersion"] == "apps/v1" and service["apiVersion"] == "v1"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    check_container(container, {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"})
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in (container["ports"][0]["name"], container["ports"][0]["containerPort"])
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000  # the image's USER 1000:1000
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert {v["name"] for v in pod["spec"]["volumes"]} == {m["name"] for m in container["volumeMounts"]}


def test_a_broken_manifest_fails_the_schema():
    """The strict schema check really checks: a misspelt field and a wrongly typed port are refused."""
    deployment = documents(DEPLOY)["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["pth"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    del container["readinessProbe"]["httpGet"]["pth"]
    container["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_inference_service_is_a_v2_custom_predictor_of_our_image():
    docs = documents(KSERVE)
    isvc = docs["InferenceService"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in COMPONENT_EXTENSION}
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec})
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # what KServe takes as the custom predictor's container
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROTOCOL"] == "v2"  # a custom predictor's protocolVersion (KServe: predictor_custom.go)
    check_container(container, {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"})


def test_every_probe_path_is_an_open_route_that_answers_without_a_key(make_client):
    client = make_client(api_keys=("sk-test",))
    routes = {route.path: route for router in ROUTERS for route in router.routes}
    paths = set()
    for path in (DEPLOY, KSERVE):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"].get("predictor", {})
            for container in spec.get("containers", []):
                paths |= {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in container}
    assert paths == {"/ready", "/health", "/v2/health/ready", "/v2/health/live"}
    for path in paths:
        assert route_scope(routes[path]) is Scope.OPEN, path
        assert client.get(path).status_code == 200, path
