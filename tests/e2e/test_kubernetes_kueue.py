"""The operator under Kueue on the real control plane: Kueue v0.17 built from the Go module proxy
(cluster/kueue.sh), its controller and webhooks serving the tests' apiserver (tests/e2e/cluster/kueue.py).

The set-up the README describes: a ResourceFlavor, a ClusterQueue with a quota of one `nvidia.com/gpu`
(preemption within it by priority), a LocalQueue in the team's namespace, and the chart with
`stages.queueName` and `kueue.enabled`. The node has 8 GPUs, so the quota, not the node, is what makes
stages wait. The operator runs under the chart's ServiceAccount and ClusterRole.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from tests.e2e.cluster.kueue import Kueue
from tests.e2e.test_kubernetes import (
    FAST,
    OPERATOR_NS,
    TEST_VALUES,
    Operator,
    experiment,
    holding,
    install,
    job_of,
    jobs_made,
    namespace,
    s3_secret,
    status,
    wait_phase,
)
from tests.unit.test_chart import render, rule_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NS, QUEUE = "queued", "team"
VALUES = {**TEST_VALUES, "kueue": {"enabled": True}, "stages": {"queueName": QUEUE}}
KUEUE = "kueue.x-k8s.io/v1beta2"


@pytest.fixture(scope="module")
def kueue(kube, tmp_path_factory):
    with Kueue(kube, tmp_path_factory.mktemp("kueue")) as k:
        kube.apply([
            {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": "default"}},
            {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": "gpus"}, "spec": {
                "namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [
                    {"name": "default", "resources": [{"name": "cpu", "nominalQuota": 1000},
                                                      {"name": "memory", "nominalQuota": "10Ti"},
                                                      {"name": "nvidia.com/gpu", "nominalQuota": 1}]}]}]}},
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "urgent"},
             "value": 1000},
        ])
        namespace(kube, NS)
        kube.apply({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": NS},
                    "spec": {"clusterQueue": "gpus"}})
        yield k


@pytest.fixture(scope="module")
def operator(kube, kueue, tmp_path_factory):
    config = install(kube, VALUES)
    op = Operator(kube, tmp_path_factory.mktemp("operator"), kube.service_account_kubeconfig(OPERATOR_NS, "tratree"),
                  {**config, **FAST}, ("--standalone",))
    yield op
    op.stop()


def store_secret(kube) -> None:
    """The docs' S3 Secret in the team's namespace, made afresh for this test's store."""
    kube.kubectl("-n", NS, "delete", "secret", "tratree-s3", "--ignore-not-found")
    s3_secret(kube, NS)


def stage_message(kube, name: str, stage: str) -> str:
    return (status(kube, name, NS).get("stages", {}).get(stage) or {}).get("message") or ""


def workloads_of(kube, job: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in kube.list("workloads.kueue.x-k8s.io", NS)
            if any(o.get("uid") == job["metadata"]["uid"] for o in w["metadata"].get("ownerReferences") or [])]


def jobs_touched(kube) -> set[str]:
    """The verbs the operator used on Jobs: it may make and read them, never change one Kueue holds."""
    return {e["verb"] for e in kube.requests_by(f"system:serviceaccount:{OPERATOR_NS}:tratree")
            if e["objectRef"]["resource"] == "jobs" and e["objectRef"].get("namespace", NS) == NS}


def test_a_stage_over_quota_waits_queued_with_kueues_reason_and_runs_when_quota_frees(kube, kueue, operator, s3_env):
    """The second experiment's GPU stage waits suspended by Kueue, its status in Kueue's words, past the
    start timeout; the experiment's own spec.suspend meanwhile stops new Jobs without touching the one
    Kueue holds; both finish with one Job and one attempt per stage."""
    store_secret(kube)
    with holding(kube, "first/sft-weak"):
        kube.apply(experiment("first", s3_env), "-n", NS)
        kube.wait_for(lambda: (j := job_of(kube, NS, "first", "sft-weak")) and not j["spec"].get("suspend"), 300,
                      "the first experiment's training admitted by Kueue")
        kube.apply(experiment("second", s3_env), "-n", NS)
        message = kube.wait_for(lambda: (m := stage_message(kube, "second", "sft-weak")).startswith("queued: ") and
                                "insufficient unused quota for nvidia.com/gpu" in m and m, 300,
                                "the second's training queued with Kueue's reason")
        job = job_of(kube, NS, "second", "sft-weak")
        assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
        (workload,) = workloads_of(kube, job)
        kube.kubectl("-n", NS, "patch", "w2sg", "second", "--type=merge", "-p", '{"spec": {"suspend": true}}')
        time.sleep(FAST["startTimeoutSeconds"] + 5)
        entry = status(kube, "second", NS)["stages"]["sft-weak"]
        assert (entry["state"], entry["attempts"]) == ("Running", 1) and entry["message"].startswith("queued: "), \
            (entry, message)
    # the quota frees: Kueue admits the held Job (the operator, suspended, makes no new one meanwhile)
    kube.wait_for(lambda: status(kube, "second", NS)["stages"]["sft-weak"]["state"] == "Succeeded", 300,
                  "the queued training to run once admitted")
    assert status(kube, "second", NS)["stages"]["eval-sft-weak-s0"]["state"] == "Pending"  # spec.suspend holds it
    kube.kubectl("-n", NS, "patch", "w2sg", "second", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    for name in ("first", "second"):
        st = wait_phase(kube, name, NS, "Succeeded", operator, 300)
        assert all(e["attempts"] == 1 for e in st["stages"].values()), st["stages"]
        assert sorted(jobs_made(kube, NS, name)) == sorted(st["stages"])
    assert kube.get("workloads.kueue.x-k8s.io", workload["metadata"]["name"], NS) is not None
    assert jobs_touched(kube) <= {"create", "list", "watch"}, jobs_touched(kube)
    # every call the operator made is in the chart's ClusterRole with kueue.enabled, Workloads read among them
    calls = kube.calls_by(f"system:serviceaccount:{OPERATOR_NS}:tratree")
    rules = rule_set(next(d for d in render(VALUES) if d["kind"] == "ClusterRole")["rules"])
    assert calls <= rules and ("kueue.x-k8s.io", "workloads", "list") in calls, calls - rules
    kube.kubectl("-n", NS, "delete", "w2sg", "--all")


def test_a_higher_priority_workload_preempts_a_running_stage_which_finishes_without_a_retry(kube, kueue, operator,
                                                                                          s3_env):
    """Kueue evicts the running training for an urgent Job of another team member: the stage says it was
    evicted and requeued, its Job is not failed, and it finishes in its first attempt, in the same Job."""
    store_secret(kube)
    with holding(kube, "low/sft-weak"):
        kube.apply(experiment("low", s3_env), "-n", NS)
        first = kube.wait_for(lambda: (j := job_of(kube, NS, "low", "sft-weak")) and not j["spec"].get("suspend") and
                              kube.list("pods", NS, f"job-name={j['metadata']['name']}") and j, 300,
                              "the training admitted and its Pod made")
        urgent = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
            "name": "urgent", "namespace": NS, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "priorityClassName": "urgent", "containers": [{
                "name": "main", "image": "busybox", "command": [sys.executable, "-c", "import time; time.sleep(5)"],
                "resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                              "limits": {"nvidia.com/gpu": "1"}}}]}}}}
        kube.apply(urgent)
        kube.wait_for(lambda: "evicted and requeued by Kueue" in stage_message(kube, "low", "sft-weak"), 300,
                      "the training evicted for the urgent Job")
        kube.wait_for(lambda: any(c["type"] == "Complete" and c["status"] == "True"
                                  for c in (kube.get("job", "urgent", NS) or {}).get("status", {}).get("conditions", [])),
                      300, "the urgent Job to finish")
    st = wait_phase(kube, "low", NS, "Succeeded", operator, 300)
    assert st["stages"]["sft-weak"]["attempts"] == 1 and st["stages"]["sft-weak"]["job"] == first["metadata"]["name"]
    assert jobs_made(kube, NS, "low").count("sft-weak") == 1
    kube.kubectl("-n", NS, "delete", "w2sg", "--all")
    kube.kubectl("-n", NS, "delete", "job", "urgent")


def test_a_sharded_stage_is_admitted_as_one_workload(kube, kueue, operator, s3_env):
    """An Indexed Job's shards are one Workload of as many Pods, admitted together."""
    store_secret(kube)
    split = experiment("split", s3_env, evaluation={"bestOfN": 2, "shards": 2, "parallelism": 2})
    split["spec"]["kubernetes"]["stages"] = {"evaluate": {"gpus": 0}}  # two Pods at once within a 1-GPU quota
    kube.apply(split, "-n", NS)
    st = wait_phase(kube, "split", NS, "Succeeded", operator, 600)
    assert st["stages"]["eval-sft-weak-s0"]["shards"] == "2/2"
    job = job_of(kube, NS, "split", "eval-sft-weak-s0")
    (workload,) = workloads_of(kube, job)
    assert [p["count"] for p in workload["spec"]["podSets"]] == [2]
    kube.kubectl("-n", NS, "delete", "w2sg", "--all")
