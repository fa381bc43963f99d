"""The Kubernetes manifests in deploy/k8s point at the service as it is: probes at real routes,
ports that the image serves, settings that exist, a shutdown grace period that covers the drain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
BENTOML_PORT = 3000  # what `bentoml serve` in BentoML's image listens on (and EXPOSEs)


def documents() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return documents()


@pytest.fixture(scope="module")
def container(manifests) -> dict[str, Any]:
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_kustomization_lists_every_manifest(manifests):
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == on_disk
    assert set(manifests) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_probes_point_at_routes_the_service_answers(container, service_client):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": BENTOML_PORT}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/livez" and probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["port"] in ports, f"{kind} names port {probe['port']!r}, not a container port"
        assert service_client.get(probe["path"]).status_code == 200, f"{kind}: {probe['path']} does not answer 200"


def test_readiness_follows_the_service_state(container, service_instance, service_client):
    path = container["readinessProbe"]["httpGet"]["path"]
    service_instance.lifecycle.draining = True
    try:
        assert service_client.get(path).status_code == 503  # what Kubernetes sees during a shutdown
        assert service_client.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200  # not restarted
    finally:
        service_instance.lifecycle.draining = False
    assert service_client.get(path).status_code == 200


def test_service_and_autoscaler_target_the_deployment(manifests, container):
    deployment, service, hpa, pdb = (manifests[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                                            "PodDisruptionBudget"))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    container_ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]  # a node drain never takes the last pod
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == BENTOML_PORT and annotations["prometheus.io/path"] == "/metrics"


def test_configured_settings_exist_and_validate(manifests, container, monkeypatch):
    config = manifests["ConfigMap"]
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    names = set(config["data"]) | {e["name"] for e in container.get("env", [])}
    from bertserve.registry import tasks

    known = {f"BERTSERVE_{field.upper()}" for field in ServiceSettings.model_fields}
    known |= {f"BERTSERVE_MODEL_{task.upper()}" for task in tasks()}  # a task's default model
    ours = {n for n in names if n.startswith("BERTSERVE_")}
    assert ours <= known, f"unknown settings: {sorted(ours - known)}"
    assert {"BERTSERVE_MODEL_CLASSIFICATION", "BERTSERVE_MODEL_SIMILARITY"} <= ours
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings()  # raises if a value is out of range
    assert settings.workers * settings.threads == int(float(container["resources"]["limits"]["cpu"]))  # one thread per core


def test_shutdown_grace_covers_the_drain(manifests, container, monkeypatch):
    spec = manifests["Deployment"]["spec"]["template"]["spec"]
    for name, value in manifests["ConfigMap"]["data"].items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings()
    readiness = container["readinessProbe"]
    # unready (seen by the probe) before the server stops accepting
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < settings.shutdown_drain_s
    # after the drain, the requests in flight end within their time budget (504 at worst)
    assert spec["terminationGracePeriodSeconds"] > settings.shutdown_drain_s + settings.request_timeout_s
    args = container["args"]
    assert int(args[args.index("--timeout-keep-alive") + 1]) > 60  # outlives common load-balancer idle timeouts
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
