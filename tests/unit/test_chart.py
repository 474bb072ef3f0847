"""The Helm chart: renders and lints for the value sets users set, every manifest validates
against a current Kubernetes version, and its RBAC is exactly what the operator calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tratree_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tratree"
K8S_VERSION = kubernetes_validate.utils.latest_version()
# kinds of other projects' CRDs: checked by hand below, kubernetes-validate has no schema for them
FOREIGN = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespace-scoped": {"watchNamespaces": ["team-a", "team-b"]},
    "two-replicas": {"replicaCount": 2},
    "digest-pinned": {"image": {"digest": "sha256:" + "a" * 64},
                      "stages": {"images": {"trainer": "ghcr.io/tratree/tratree-trainer@sha256:" + "b" * 64}}},
    "metrics-on": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "standalone": {"peering": {"enabled": False}, "metrics": {"enabled": False}, "hfTokenSecret": "hf",
                   "stages": {"queueName": "gpu", "priorityClassName": "research"}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="tratree", namespace="tratree-system", is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def crd_docs() -> list[dict[str, Any]]:
    return [d for p in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_renders_lints_and_validates(name):
    values = VALUE_SETS[name]
    report = helm.lint(CHART, values, strict=True)
    assert not report["errors"] and all(m["severity"] < 2 for m in report["messages"]), report
    docs = render(values)
    for doc in [*docs, *crd_docs()]:
        if doc["kind"] in FOREIGN:
            assert doc["apiVersion"] in ("monitoring.coreos.com/v1", "kopf.dev/v1") and doc["metadata"]["name"]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False  # no TRATREE_METRICS_PORT=tcp://… from the release's own Service
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["port"] == container["readinessProbe"]["httpGet"]["port"] == "health"
    config = by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"]
    OperatorConfig.model_validate(yaml.safe_load(config))  # the operator accepts what the chart gives it


def test_values_reach_the_deployment_and_the_operator_config():
    docs = render(VALUE_SETS["digest-pinned"])
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/tratree/tratree-operator@sha256:" + "a" * 64
    config = OperatorConfig.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"]))
    assert config.images.trainer.endswith("@sha256:" + "b" * 64) and config.s3_secret == "tratree-s3"

    docs = render(VALUE_SETS["namespace-scoped"])
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert not by_kind(docs, "ClusterKopfPeering")
    # namespaced: only the cluster-scoped reads (kopf's CRDs and namespaces, the operator's Nodes) stay in a ClusterRole
    (reads,) = by_kind(docs, "ClusterRole")
    assert rule_set(reads["rules"]) == {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                                        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
                                        ("", "namespaces", "list"), ("", "namespaces", "watch"),
                                        ("", "nodes", "list"), ("", "nodes", "watch")}
    assert {r["metadata"]["namespace"] for r in by_kind(docs, "Role")} == {"team-a", "team-b"}
    assert {p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")} == {"team-a", "team-b"}

    docs = render(VALUE_SETS["standalone"])
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args and "--metrics-port=0" in args and not by_kind(docs, "Service")
    config = OperatorConfig.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"]))
    assert (config.queue_name, config.priority_class_name, config.hf_token_secret) == ("gpu", "research", "hf")

    docs = render({"policy": {"imagePrefixes": ["registry.lab/"], "secrets": ["tratree-s3"], "tolerations": False},
                   "namespacePolicies": {"admins": {}}})
    config = OperatorConfig.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"]))
    assert config.policy.image_prefixes == ["registry.lab/"] and not config.policy.tolerations
    assert config.policy_for("admins").image_prefixes == [] and config.policy_for("team-a") == config.policy

    docs = render(VALUE_SETS["metrics-on"])
    monitor = by_kind(docs, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and monitor["metadata"]["labels"]["release"] == "prom"


def test_replicas_without_peering_are_refused():
    with pytest.raises(helm.HelmError, match="peering"):
        render({"replicaCount": 2, "peering": {"enabled": False}})


def test_the_chart_ships_the_generated_crd():
    assert (CHART / "crds" / "w2sgexperiments.tratree.io.yaml").read_text() == \
        (ROOT / "crds" / "w2sgexperiments.tratree.io.yaml").read_text()


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_operator_takes_its_metrics_port_from_the_flag_whatever_the_kubelet_injects(monkeypatch):
    from tratree_operator.__main__ import parse_args

    # what the kubelet injects into a Pod of a namespace with a Service named tratree-metrics
    monkeypatch.setenv("TRATREE_METRICS_PORT", "tcp://10.0.0.12:9090")
    assert parse_args(["--metrics-port=9191"]).metrics_port == 9191
    assert parse_args([]).metrics_port == 9090


def test_a_stage_quantity_given_as_a_number_is_taken_as_kubernetes_takes_it():
    # `helm --set stages.resources.sft.cpu=4` and `cpu: 4` in YAML give a number, not a string: the
    # operator crash-looped on that (found by `helm install` on a real node)
    docs = render({"stages": {"resources": {"sft": {"cpu": 4, "memory": "6Gi", "gpus": 0}}}})
    config = OperatorConfig.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["config.yaml"]))
    assert config.resources["sft"].cpu == "4"
    (crd,) = [d for d in crd_docs() if d["metadata"]["name"] == "w2sgexperiments.tratree.io"]
    cpu = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "kubernetes"]["properties"]["stages"]["additionalProperties"]["properties"]["cpu"]
    assert cpu.get("x-kubernetes-int-or-string") is True and "type" not in cpu


def test_waiting_settings_reach_the_operator_config():
    """A busy cluster is waited for unless the admin bounds it; unfit requests fail unless turned off."""
    def config(values: dict) -> OperatorConfig:
        cm = by_kind(render(values), "ConfigMap")[0]
        return OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))

    default = config({})
    assert default.queue_timeout_seconds is None and default.fail_unfit_requests is True
    set_ = config({"stages": {"queueTimeoutSeconds": 3600, "failUnfitRequests": False}})
    assert set_.queue_timeout_seconds == 3600 and set_.fail_unfit_requests is False
