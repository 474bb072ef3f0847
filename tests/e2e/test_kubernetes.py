"""The operator, the CRD and the chart's RBAC on a real Kubernetes control plane.

kube-apiserver (RBAC and Node authorizers, default admission plus NodeRestriction and
OwnerReferencesPermissionEnforcement), etcd, kube-controller-manager (the real Job controller,
garbage collector, TTL and namespace controllers) and kube-scheduler run on loopback; a node
agent runs the Pods' commands on this machine (see tests/e2e/cluster/node.py). The agent, not the
real node of test_real_node.py, because these tests need what no node here has or gives on cue:
stages that request `nvidia.com/gpu` (it advertises 8), image pulls that fail, Pods preempted at a
chosen moment, and each stage run as this checkout's code without an image build per change. The
operator runs as a subprocess under the chart's ServiceAccount token and ClusterRole, and people's
steps are real `kubectl` commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.e2e.cluster.harness import operator_command
from tests.unit.test_chart import render, rule_set
from tratree_operator.jobs import configmap_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")
OPERATOR_NS = "tratree-system"
FAST = {"retryBackoffSeconds": 0.5, "retryBackoffMaxSeconds": 2.0, "resyncSeconds": 2.0, "startTimeoutSeconds": 20.0}


class Operator:
    """`python -m tratree_operator` as the chart runs it, with the chart's ServiceAccount token."""

    def __init__(self, kube, folder: Path, kubeconfig: Path, config: dict[str, Any], args: tuple[str, ...],
                 root: Path = ROOT) -> None:
        self.kube, self.folder = kube, folder
        self.config = folder / "operator.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log_path = folder / "operator.log"
        # no AWS credentials of its own: an experiment's store is read with the experiment's Secret
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
               "KUBECONFIG": str(kubeconfig), "TRATREE_OPERATOR_CONFIG": str(self.config),
               "PYTHONPATH": os.pathsep.join([str(root), str(root / "operator")])}
        self.env = env
        self.command = operator_command("--liveness", "", "--metrics-port", "0", *args)
        self.restart()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def restart(self) -> None:
        """Start the same operator again (after ``stop``)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# the tests' admin lets experiments mount the node's temporary folders (their file:// stores) as hostPath
TEST_VALUES = {"policy": {"hostPathPrefixes": [tempfile.gettempdir()]}}


def install(kube, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `helm install` puts on the cluster, but the operator Deployment (its process runs here):
    the CRDs applied the docs' way (Kubernetes, Install), then the rendered ServiceAccount, RBAC, peering and
    config (the chart's values, ``TEST_VALUES`` when none are given)."""
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "charts" / "tratree" / "crds"))
    kube.wait_established("w2sgexperiments.tratree.io")
    kube.kubectl("create", "namespace", OPERATOR_NS, check=False)
    docs = [d for d in render(TEST_VALUES if values is None else values)
            if d["kind"] not in ("Deployment", "Service", "ServiceMonitor")]
    kube.apply(docs)
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    return yaml.safe_load(next(iter(config["data"].values())))


@pytest.fixture(scope="module")
def operator(kube, tmp_path_factory):
    config = install(kube)
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = kube.service_account_kubeconfig(OPERATOR_NS, "tratree")
    # verbose: kopf says at DEBUG when a watch restarts after 410 Gone
    op = Operator(kube, folder, kubeconfig, {**config, **FAST}, ("--peering=tratree", "--verbose"))
    yield op
    op.stop()


def namespace(kube, name: str) -> str:
    kube.kubectl("create", "namespace", name, check=False)
    kube.wait_for(lambda: kube.kubectl("get", "serviceaccount", "default", "-n", name, "-o", "name", check=False),
                  60, f"the default ServiceAccount of {name}")
    return name


def s3_secret(kube, ns: str) -> None:
    """The docs' Secret, made the docs' way."""
    kube.kubectl("-n", ns, "create", "secret", "generic", "tratree-s3", *(f"--from-literal={k}={os.environ[k]}" for k in AWS))


def experiment(name: str, bucket: str, **spec: Any) -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"].update({"methods": ["sft-weak"], "artifacts": f"s3://{bucket}/experiments/{name}",
                             "kubernetes": {"s3Secret": "tratree-s3"}, **spec})
    return manifest


def diagnose(kube, ns: str, operator: Operator) -> str:
    """What a person would look at when an experiment hangs: Jobs, Pods, the node and the operator."""
    logs = "\n".join(f"--- {k}\n{v[-1500:]}" for k, v in kube.node.logs.items())
    return (f"{kube.kubectl('-n', ns, 'get', 'jobs,pods', '-o', 'wide', check=False)}\n"
            f"{kube.kubectl('-n', ns, 'describe', 'pods', check=False)[-3000:]}\nnode errors: {kube.node.errors[-5:]}\n"
            f"--- operator\n{operator.log()[-3000:]}\n{logs}")


def status(kube, name: str, ns: str) -> dict[str, Any]:
    return (kube.get("w2sg", name, ns) or {}).get("status") or {}


def wait_stage(kube, name: str, ns: str, stage: str, state: str, operator: Operator, timeout: float = 300) -> None:
    """Wait until the experiment's stage is in ``state`` (mid-run checkpoints of a test)."""
    deadline = time.monotonic() + timeout
    while status(kube, name, ns).get("stages", {}).get(stage, {}).get("state") != state:
        assert time.monotonic() < deadline, diagnose(kube, ns, operator)
        time.sleep(0.3)


def wait_phase(kube, name: str, ns: str, phase: str, operator: Operator, timeout: float) -> dict[str, Any]:
    """Wait for the phase; fail at once, with what a person would look at, on the other end or a 403."""
    deadline = time.monotonic() + timeout
    # a 403 from now on (not one while an earlier test restarted the apiserver and its RBAC cache
    # was still filling) means the chart's RBAC lacks something
    since = len(operator.log())
    while time.monotonic() < deadline:
        st = status(kube, name, ns)
        if st.get("phase") == phase:
            return st
        if st.get("phase") in ("Succeeded", "Failed") or "(403)" in operator.log()[since:] \
                or operator.proc.poll() is not None:
            break
        time.sleep(1)
    raise AssertionError(f"{name} is {st.get('phase')}, not {phase}: {st}\n{diagnose(kube, ns, operator)}")


def test_the_readme_user_path_by_kubectl(kube, operator, s3_env, tmp_path):
    ns = namespace(kube, "lab")
    s3_secret(kube, ns)
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(experiment("e2e", s3_env)))
    kube.kubectl("-n", ns, "apply", "-f", str(path))
    wait_phase(kube, "e2e", ns, "Succeeded", operator, 600)
    run = kube.kubectl_run("-n", ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "w2sg/e2e", "--timeout=60s")
    assert run.returncode == 0, run.stderr
    st = status(kube, "e2e", ns)
    assert set(st["stages"]) == {"expert", "tokenizer", "sft-weak", "eval-sft-weak-s0", "report"}
    assert all(e["state"] == "Succeeded" for e in st["stages"].values())
    assert 0.0 <= st["results"]["sft-weak"]["averageReward"] <= 100.0
    # every stage really ran in a Pod that the real Job controller made and the scheduler bound
    pods = kube.list("pods", ns)
    assert {p["metadata"]["labels"]["tratree.io/stage"] for p in pods} == set(st["stages"])
    assert all(p["status"]["phase"] == "Succeeded" and p["spec"]["nodeName"] for p in pods)
    assert not re.search(r"\(403\)|[Ff]orbidden", operator.log()), operator.log()[-3000:]
    # kopf wrote nothing on the experiment: no copy of its spec, no finalizer
    meta = kube.get("w2sg", "e2e", ns)["metadata"]
    assert not meta.get("finalizers") and not [a for a in meta.get("annotations") or {} if "last-handled" in a]

    # `kubectl get w2sg` prints the docs' columns
    table = kube.kubectl("-n", ns, "get", "w2sg")
    shown = (ROOT / "docs/snippets/kubectl-get-w2sg.txt").read_text().splitlines()[1]  # the docs' example
    assert table.splitlines()[0].split() == shown.split()
    row = table.splitlines()[1].split()
    assert row[:2] == ["e2e", "Succeeded"]
    # what it cost: the GPU stages' Pods' run time × the GPU each requested, summed into GPU-hours
    used = {n: e.get("gpuSeconds") for n, e in st["stages"].items()}
    assert used["sft-weak"] > 0 and used["eval-sft-weak-s0"] > 0 and used["expert"] is None, used
    assert st["gpuHours"] == round(sum(v for v in used.values() if v) / 3600, 3) and str(st["gpuHours"]) in row
    describe = kube.kubectl("-n", ns, "describe", "w2sg", "e2e")
    assert "Phase:" in describe and "StageSucceeded" in describe and "ExperimentSucceeded" in describe
    explain = kube.kubectl("explain", "w2sgexperiment.spec.exploration")
    assert "trajectoriesPerTask" in explain and "sampling" in explain

    # the same experiment under another name: every stage is in the store, so no Job runs
    again = experiment("again", s3_env)
    again["spec"]["artifacts"] = f"s3://{s3_env}/experiments/e2e"
    kube.apply(again, "-n", ns)
    st2 = wait_phase(kube, "again", ns, "Succeeded", operator, 120)
    assert {e["state"] for e in st2["stages"].values()} == {"Cached"} and st2["results"] == st["results"]
    assert kube.list("jobs", ns, "tratree.io/experiment=again") == []
    kube.kubectl("-n", ns, "delete", "w2sg", "again")

    # deleted and applied again at once under the same name, on a fresh store: the old Jobs (not yet
    # collected) are another owner's, so nothing is adopted and every stage really runs again
    old_uid = kube.get("w2sg", "e2e", ns)["metadata"]["uid"]
    kube.kubectl("-n", ns, "delete", "w2sg", "e2e", "--wait=false")
    renewed = experiment("e2e", s3_env)
    renewed["spec"]["artifacts"] = f"s3://{s3_env}/experiments/e2e-again"
    kube.apply(renewed, "-n", ns)
    st3 = wait_phase(kube, "e2e", ns, "Succeeded", operator, 600)
    uid = kube.get("w2sg", "e2e", ns)["metadata"]["uid"]
    assert uid != old_uid and all(e["state"] == "Succeeded" for e in st3["stages"].values())
    owners = {o["uid"] for j in kube.list("jobs", ns, "tratree.io/experiment=e2e")
              for o in j["metadata"]["ownerReferences"]}
    assert owners == {uid}
    # its Pods read their own spec ConfigMap, not the old one's (which the collector deletes, and whose owner
    # the operator may not change: that needs `delete` on ConfigMaps, which its RBAC does not grant)
    assert kube.get("configmap", configmap_name("e2e", uid), ns)["metadata"]["ownerReferences"][0]["uid"] == uid
    assert configmap_name("e2e", uid) != configmap_name("e2e", old_uid)
    assert not re.search(r"\(403\)|[Ff]orbidden", operator.log()), operator.log()[-3000:]

    # deleting it: the real garbage collector removes its Jobs, Pods and spec ConfigMap
    kube.kubectl("-n", ns, "delete", "w2sg", "e2e", "--wait=true")
    kube.wait_for(lambda: not kube.list("jobs", ns) and not kube.list("pods", ns)
                  and not kube.list("configmaps", ns, "tratree.io/experiment=e2e"), 90, "garbage collection")


def test_the_crd_schema_rejects_unknown_keys_and_out_of_range_values(kube, operator, s3_env, tmp_path):
    ns = namespace(kube, "schema")
    bad = experiment("bad", s3_env)
    bad["spec"]["exploration"]["bogusKey"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    run = kube.kubectl_run("-n", ns, "apply", "--validate=strict", "-f", str(path))
    assert run.returncode != 0 and "spec.exploration.bogusKey" in run.stderr, run.stderr
    bad["spec"]["exploration"] = {"trajectoriesPerTask": 0}
    path.write_text(yaml.safe_dump(bad))
    run = kube.kubectl_run("-n", ns, "apply", "-f", str(path))
    assert run.returncode != 0 and "spec.exploration.trajectoriesPerTask" in run.stderr, run.stderr
    assert kube.list("w2sg", ns) == []
    # what the apiserver stores (after pruning and the schema's defaults) is the pydantic spec
    good = experiment("good", s3_env, suspend=True)
    del good["spec"]["exploration"]
    kube.apply(good, "-n", ns)
    stored = kube.get("w2sg", "good", ns)["spec"]
    from tratree.spec.experiment import ExperimentSpec

    expected = ExperimentSpec.model_validate(good["spec"]).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert ExperimentSpec.model_validate(stored).model_dump(mode="json", by_alias=True, exclude_none=True) == expected
    for key in set(stored) - set(good["spec"]):
        assert stored[key] == expected[key], key  # a server-side default equals the spec's
    kube.kubectl("-n", ns, "delete", "w2sg", "good")


def test_job_realities_reach_the_stage_message(kube, operator, s3_env):
    """A failing container, a GPU request no node has, a missing Secret and an image that cannot be
    pulled: each shows in its stage's message instead of an endless "Running"; the GPU request fails at once."""
    ns = namespace(kube, "faults")
    s3_secret(kube, ns)
    broken = experiment("broken", s3_env)
    broken["spec"]["environment"]["gameParams"] = "numLocations=banana"
    broken["spec"]["kubernetes"]["stages"] = {"expert": {"retries": 0}}
    greedy = experiment("greedy", s3_env)
    greedy["spec"]["kubernetes"]["stages"] = {"expert": {"gpus": 64}}  # the node has 8
    secretless = experiment("secretless", s3_env)
    secretless["spec"]["kubernetes"]["s3Secret"] = "no-such-secret"
    unpullable = experiment("unpullable", s3_env)
    unpullable["spec"]["kubernetes"]["stages"] = {"expert": {"image": "registry.example.org/unpullable:1"}}
    kube.apply([broken, greedy, secretless, unpullable], "-n", ns)

    st = wait_phase(kube, "broken", ns, "Failed", operator, 180)
    message = st["stages"]["expert"]["message"]
    assert "exit code 2" in message and "no expert trajectories" in message, message
    # more GPUs than any node has: failed within a pass, no Job made, the resource named
    st = wait_phase(kube, "greedy", ns, "Failed", operator, 60)
    assert st["stages"]["expert"]["message"] == ("cannot run: it requests 64 nvidia.com/gpu and no node today has "
                                                 "that much allocatable (the most: 8 nvidia.com/gpu, on tratree-node)")
    assert jobs_made(kube, ns, "greedy") == []
    expected = {"secretless": 'secret "no-such-secret" not found', "unpullable": "ImagePullBackOff"}
    deadline = time.monotonic() + 60
    seen: dict[str, str] = {}
    while len(seen) < len(expected) and time.monotonic() < deadline:
        for name, why in expected.items():
            entry = status(kube, name, ns).get("stages", {}).get("expert", {})
            if entry.get("state") == "Running" and why in entry.get("message", ""):
                seen[name] = entry["message"]
        time.sleep(1)
    assert set(seen) == set(expected), f"{seen}\n{diagnose(kube, ns, operator)}"
    assert all(m.startswith("cannot start: ") for m in seen.values())
    kube.kubectl("-n", ns, "delete", "w2sg", "--all")


def test_a_stage_waiting_for_busy_gpus_waits_past_the_start_timeout_and_runs_when_they_free(kube, operator, s3_env):
    """The node's 8 GPUs are held by another experiment's stage: the waiting stage stays Running,
    "waiting for resources" with the scheduler's words, well past stages.startTimeoutSeconds (20 s here),
    and runs in its first attempt once they are free."""
    ns = namespace(kube, "busy")
    s3_secret(kube, ns)
    holder = experiment("holder", s3_env)
    holder["spec"]["kubernetes"]["stages"] = {"expert": {"gpus": 8}}
    waiter = experiment("waiter", s3_env)
    waiter["spec"]["kubernetes"]["stages"] = {"expert": {"gpus": 1}}
    with holding(kube, "holder/expert"):
        kube.apply(holder, "-n", ns)
        kube.wait_for(lambda: (p := next(iter(kube.list("pods", ns, "tratree.io/experiment=holder")), None)) and
                      p["spec"].get("nodeName"), 120, "the holder's Pod bound to the node")
        kube.apply(waiter, "-n", ns)
        message = kube.wait_for(lambda: (m := status(kube, "waiter", ns).get("stages", {}).get("expert", {})
                                         .get("message") or "") and m.startswith("waiting for resources since ") and m,
                                120, "the waiting message")
        assert "Insufficient nvidia.com/gpu" in message, message
        time.sleep(FAST["startTimeoutSeconds"] + 10)
        entry = status(kube, "waiter", ns)["stages"]["expert"]
        assert (entry["state"], entry["attempts"]) == ("Running", 1), entry
        assert entry["message"].startswith("waiting for resources since "), entry
    for name in ("holder", "waiter"):
        st = wait_phase(kube, name, ns, "Succeeded", operator, 300)
    assert st["stages"]["expert"]["attempts"] == 1 and jobs_made(kube, ns, "waiter").count("expert") == 1
    kube.kubectl("-n", ns, "delete", "w2sg", "--all")


def test_job_settings_behave_as_set_on_the_real_job_controller(kube, operator, s3_env):
    """ttlSecondsAfterFinished: 0 (Jobs gone the moment they finish) never makes the operator loop;
    a stage that exits 2 (bad input) fails its Job at once whatever its backoffLimit (podFailurePolicy);
    activeDeadlineSeconds ends a Job."""
    ns = namespace(kube, "jobs")
    s3_secret(kube, ns)
    quick = experiment("quick", s3_env)
    quick["spec"]["kubernetes"]["ttlSecondsAfterFinished"] = 0
    retried = experiment("retried", s3_env)
    retried["spec"]["environment"]["gameParams"] = "numLocations=banana"
    retried["spec"]["kubernetes"]["stages"] = {"expert": {"retries": 0, "backoffLimit": 1}}
    late = experiment("late", s3_env)
    late["spec"]["kubernetes"]["stages"] = {"expert": {"retries": 0, "activeDeadlineSeconds": 1}}
    kube.apply([quick, retried, late], "-n", ns)

    st = wait_phase(kube, "quick", ns, "Succeeded", operator, 300)
    assert all(e["state"] == "Succeeded" for e in st["stages"].values())
    kube.wait_for(lambda: not kube.list("jobs", ns, "tratree.io/experiment=quick"), 60, "the TTL controller")
    made = [e for e in kube.requests_by(f"system:serviceaccount:{OPERATOR_NS}:tratree")
            if e["verb"] == "create" and e["objectRef"]["resource"] == "jobs" and e["objectRef"].get("namespace") == ns
            and e["objectRef"].get("name", "").startswith("quick-")]
    assert len(made) == len(st["stages"]), [e["objectRef"]["name"] for e in made]  # one Job per stage, no loop

    st = wait_phase(kube, "retried", ns, "Failed", operator, 180)
    assert "exit code 2" in st["stages"]["expert"]["message"] and "PodFailurePolicy" in st["stages"]["expert"]["message"]
    pods = kube.list("pods", ns, "tratree.io/experiment=retried,tratree.io/stage=expert")
    assert len(pods) == 1  # backoffLimit 1, but bad input: the Job controller did not run it again
    assert len(kube.list("jobs", ns, "tratree.io/experiment=retried")) == 1

    st = wait_phase(kube, "late", ns, "Failed", operator, 180)
    assert "DeadlineExceeded" in st["stages"]["expert"]["message"], st["stages"]["expert"]
    kube.kubectl("-n", ns, "delete", "w2sg", "--all")


def succeeds_with_a_pod_preempted(kube, ns: str, manifest: dict[str, Any], stage: str, operator: Operator
                                  ) -> dict[str, Any]:
    """Apply the experiment with the node agent preempting the stage's first Pod; its status once Succeeded."""
    kube.node.disrupt[stage] = 1
    try:
        kube.apply(manifest, "-n", ns)
        return wait_phase(kube, manifest["metadata"]["name"], ns, "Succeeded", operator, 300)
    finally:
        kube.node.disrupt.pop(stage, None)


def test_a_preempted_pod_is_replaced_without_using_a_retry(kube, operator, s3_env):
    """A GPU node's Pod preempted (DisruptionTarget) is replaced by the Job controller inside the same
    Job, without counting against backoffLimit or the stage's retries."""
    ns = namespace(kube, "preempted")
    s3_secret(kube, ns)
    spot = experiment("spot", s3_env)
    spot["spec"]["kubernetes"]["stages"] = {"sft": {"backoffLimit": 0, "retries": 0}}
    st = succeeds_with_a_pod_preempted(kube, ns, spot, "sft-weak", operator)
    assert st["stages"]["sft-weak"]["attempts"] == 1 and jobs_made(kube, ns, "spot").count("sft-weak") == 1
    pods = kube.list("pods", ns, "tratree.io/experiment=spot,tratree.io/stage=sft-weak")
    assert sorted(p["status"]["phase"] for p in pods) == ["Failed", "Succeeded"]  # preempted, then ran
    kube.kubectl("-n", ns, "delete", "w2sg", "spot")


def test_a_sharded_evaluation_is_one_indexed_job_whose_preempted_shard_reruns_alone(kube, operator, s3_env):
    """evaluation.shards: 2 makes the evaluation one Indexed Job (a Pod per shard, each reading
    JOB_COMPLETION_INDEX from the Job controller); a shard's preempted Pod is replaced on its own, the
    finished shard is kept, the last shard merges, and the status shows shards done / total."""
    ns = namespace(kube, "sharded")
    s3_secret(kube, ns)
    split = experiment("split", s3_env, evaluation={"bestOfN": 2, "shards": 2, "parallelism": 1})
    st = succeeds_with_a_pod_preempted(kube, ns, split, "eval-sft-weak-s0", operator)
    entry = st["stages"]["eval-sft-weak-s0"]
    assert entry["shards"] == "2/2" and entry["attempts"] == 1, entry
    assert "shards" not in st["stages"]["sft-weak"]
    job = job_of(kube, ns, "split", "eval-sft-weak-s0")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 1)
    pods = kube.list("pods", ns, "tratree.io/experiment=split,tratree.io/stage=eval-sft-weak-s0")
    index = "batch.kubernetes.io/job-completion-index"
    ran = sorted((p["metadata"]["annotations"][index], p["status"]["phase"]) for p in pods)
    assert ran in ([("0", "Failed"), ("0", "Succeeded"), ("1", "Succeeded")],
                   [("0", "Succeeded"), ("1", "Failed"), ("1", "Succeeded")]), ran
    logs = "".join(v for k, v in kube.node.logs.items() if "eval-sft-weak-s0" in k)
    assert "waiting for shard(s)" in logs and "eval-sft-weak-s0: done" in logs, logs[-2000:]
    kube.kubectl("-n", ns, "delete", "w2sg", "split")


def test_watches_recover_from_410_gone_after_an_apiserver_restart_and_miss_nothing(kube, operator, s3_env):
    """The apiserver goes away mid-run and etcd's history is compacted meanwhile, so every watch
    resumes from a resource version that is gone: kopf restarts its streams (410 Gone), and the
    operator finishes the experiment with every stage's transitions on record."""
    ns = namespace(kube, "gone")
    s3_secret(kube, ns)
    kube.apply(experiment("gone", s3_env), "-n", ns)
    wait_stage(kube, "gone", ns, "sft-weak", "Running", operator)
    # the pass that started sft-weak posts the tokenizer's "succeeded" Event after its status: wait for
    # it, or the restart below can catch it in flight
    kube.wait_for(lambda: "stage tokenizer: succeeded" in kube.kubectl("-n", ns, "describe", "w2sg", "gone"), 60,
                  "the Event of the tokenizer's success")
    restarts = operator.log().count("Restarting the watch-stream")
    kube.restart("kube-apiserver", while_down=kube.compact_etcd)
    st = wait_phase(kube, "gone", ns, "Succeeded", operator, 300)
    assert operator.log().count("Restarting the watch-stream") > restarts, "no watch saw 410 Gone"
    described = kube.kubectl("-n", ns, "describe", "w2sg", "gone")
    for stage in st["stages"]:
        assert f"stage {stage}: succeeded" in described, stage
    kube.kubectl("-n", ns, "delete", "w2sg", "gone")


def test_the_readme_upgrade_keeps_an_experiment_in_flight(kube, operator, s3_env, tmp_path):
    """Mid-run, the docs' upgrade (Kubernetes, Operations): CRDs applied server-side, then the operator and the stage
    images move to a newer code version (a copy of tratree with one file changed). The experiment
    finishes; nothing done before runs again; later stages record the new code version."""
    import shutil

    from tratree.pipeline.graph import code_version

    ns = namespace(kube, "upgrade")
    s3_secret(kube, ns)
    kube.apply(experiment("inflight", s3_env), "-n", ns)
    wait_stage(kube, "inflight", ns, "sft-weak", "Succeeded", operator)
    before = {j["metadata"]["name"] for j in kube.list("jobs", ns)}

    newer = tmp_path / "newer"
    for part in ("tratree", "operator"):
        shutil.copytree(ROOT / part, newer / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (newer / "tratree" / "pipeline" / "actions" / "report.py").open("a") as fh:
        fh.write("\n# a newer release\n")
    operator.stop()
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "charts" / "tratree" / "crds"))
    upgraded = Operator(kube, tmp_path, kube.service_account_kubeconfig(OPERATOR_NS, "tratree"),
                        yaml.safe_load(operator.config.read_text()), ("--peering=tratree",), root=newer)
    kube.node.pythonpath = newer
    try:
        st = wait_phase(kube, "inflight", ns, "Succeeded", upgraded, 300)
    finally:
        kube.node.pythonpath = ROOT
        upgraded.stop()
        operator.restart()
    after = {j["metadata"]["name"]: j for j in kube.list("jobs", ns)}
    assert before <= set(after)
    redone = {after[n]["metadata"]["labels"]["tratree.io/stage"] for n in set(after) - before}
    assert redone and not redone & {"expert", "tokenizer", "sft-weak"}, redone
    import boto3

    report = st["artifacts"]["report"].removeprefix(f"s3://{s3_env}/")
    manifest = json.loads(boto3.client("s3").get_object(Bucket=s3_env, Key=f"{report}/manifest.json")["Body"].read())
    assert manifest["code_version"] != code_version()  # made by the newer release, on the older outputs
    kube.kubectl("-n", ns, "delete", "w2sg", "inflight")


def test_submit_waits_to_the_end_with_the_readme_ci_role(kube, operator, s3_env, tmp_path, cli):
    """`tratree submit --wait` as a CI job runs it: a kubeconfig user bound to the docs' CI Role only."""
    role = yaml.safe_load((ROOT / "docs/snippets/ci-role.yaml").read_text())  # the docs' CI Role
    ns = namespace(kube, role["metadata"]["namespace"])
    s3_secret(kube, ns)
    kube.apply(role)
    kube.kubectl("-n", ns, "create", "rolebinding", "w2sg-ci", f"--role={role['metadata']['name']}", "--user=ci-bot")
    kubeconfig = kube.user_kubeconfig("ci-bot", ns)
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(experiment("regression", s3_env)))
    out = tmp_path / "results.json"
    r = cli("submit", str(path), "--wait", "--timeout", "600", "--poll", "1", "-o", str(out),
            env={"KUBECONFIG": str(kubeconfig)})
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{diagnose(kube, ns, operator)}"
    assert "sft-weak" in json.loads(out.read_text())
    # the CI user can do nothing else
    denied = kube.kubectl_run("-n", ns, "get", "jobs", kubeconfig=kubeconfig)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    kube.kubectl("-n", ns, "delete", "w2sg", "regression")


@contextlib.contextmanager
def holding(kube, stage: str) -> Iterator[None]:
    """The node starts no Pod of ``stage`` (of every experiment, or "EXPERIMENT/STAGE") inside the block
    (tests act while it is in flight; its Pod is bound, so its resources are taken)."""
    kube.node.held.add(stage)
    try:
        yield
    finally:
        kube.node.held.discard(stage)


def jobs_made(kube, ns: str, experiment_name: str) -> list[str]:
    """The stages of every Job the operator created for an experiment, from the apiserver's audit log
    (Jobs deleted since, or collected by their TTL, still count)."""
    names = [e["objectRef"].get("name", "") for e in kube.requests_by(f"system:serviceaccount:{OPERATOR_NS}:tratree")
             if e["verb"] == "create" and e["objectRef"]["resource"] == "jobs" and e["objectRef"].get("namespace") == ns
             and e.get("responseStatus", {}).get("code") == 201]
    prefix = f"{experiment_name}-"
    return [n[len(prefix):].rsplit("-", 1)[0] for n in names if n.startswith(prefix)]


def job_of(kube, ns: str, name: str, stage: str) -> dict[str, Any] | None:
    return next(iter(kube.list("jobs", ns, f"tratree.io/experiment={name},tratree.io/stage={stage}")), None)


def test_an_operator_killed_again_and_again_mid_run_makes_no_job_twice(kube, operator, s3_env):
    """SIGKILL, four times, while a stage runs; the stage then finishes while no operator runs. The
    restarted operator picks up where the last left off: each stage's Job was made once."""
    ns = namespace(kube, "killed")
    s3_secret(kube, ns)
    try:
        with holding(kube, "sft-weak"):
            kube.apply(experiment("killed", s3_env), "-n", ns)
            kube.wait_for(lambda: job_of(kube, ns, "killed", "sft-weak"), 300, "the sft-weak Job")
            for _ in range(4):
                operator.proc.kill()
                operator.proc.wait()
                operator.restart()
                time.sleep(1.5)
            operator.proc.kill()
            operator.proc.wait()
        # the stage finishes while no operator watches
        kube.wait_for(lambda: (job_of(kube, ns, "killed", "sft-weak") or {}).get("status", {}).get("succeeded"),
                      300, "sft-weak to finish")
    finally:
        if operator.proc.poll() is not None:
            operator.restart()
    st = wait_phase(kube, "killed", ns, "Succeeded", operator, 300)
    made = jobs_made(kube, ns, "killed")
    assert sorted(made) == sorted(st["stages"]), made  # one Job per stage, none twice
    assert "stage sft-weak: succeeded" in kube.kubectl("-n", ns, "describe", "w2sg", "killed")
    kube.kubectl("-n", ns, "delete", "w2sg", "killed")


def test_a_job_deleted_mid_run_is_made_again_as_the_next_attempt(kube, operator, s3_env):
    ns = namespace(kube, "deleted")
    s3_secret(kube, ns)
    with holding(kube, "tokenizer"):
        kube.apply(experiment("deleted", s3_env), "-n", ns)
        job = kube.wait_for(lambda: job_of(kube, ns, "deleted", "tokenizer"), 300, "the tokenizer Job")
        kube.kubectl("-n", ns, "delete", "job", job["metadata"]["name"])
        again = kube.wait_for(lambda: (j := job_of(kube, ns, "deleted", "tokenizer")) and
                              j["metadata"]["uid"] != job["metadata"]["uid"] and j, 120, "the Job to be made again")
        assert again["metadata"]["labels"]["tratree.io/attempt"] == "2"  # the next attempt, not a replay
    st = wait_phase(kube, "deleted", ns, "Succeeded", operator, 300)
    assert st["stages"]["tokenizer"]["attempts"] == 2
    assert "JobRecreated" in kube.kubectl("-n", ns, "describe", "w2sg", "deleted")
    kube.kubectl("-n", ns, "delete", "w2sg", "deleted")


def test_a_failing_stage_is_retried_then_fails_the_experiment_and_nothing_after_it_starts(kube, operator, s3_env):
    ns = namespace(kube, "retries")
    s3_secret(kube, ns)
    failing = experiment("failing", s3_env)
    failing["spec"]["environment"]["gameParams"] = "numLocations=banana"  # the expert stage exits 2
    failing["spec"]["kubernetes"]["stages"] = {"expert": {"retries": 1}}
    kube.apply(failing, "-n", ns)
    st = wait_phase(kube, "failing", ns, "Failed", operator, 300)
    entry = st["stages"]["expert"]
    assert entry["state"] == "Failed" and entry["attempts"] == 2 and "no expert trajectories" in entry["message"]
    assert {e["state"] for name, e in st["stages"].items() if name != "expert"} == {"Pending"}
    assert jobs_made(kube, ns, "failing") == ["expert", "expert"]
    conds = {x["type"]: x for x in st["conditions"]}
    assert conds["Failed"]["status"] == "True" and "expert" in conds["Failed"]["message"]
    assert (conds["Succeeded"]["status"], conds["Succeeded"]["reason"]) == ("False", "StageFailed")
    # the docs' wait for either end returns at once on a failure
    run = kube.kubectl_run("-n", ns, "wait", "--for=condition=Finished", "w2sg/failing", "--timeout=10s")
    assert run.returncode == 0, run.stderr
    events = kube.kubectl("-n", ns, "get", "events", "--field-selector", "involvedObject.name=failing",
                          "-o", "jsonpath={.items[*].reason}").split()
    assert {"StageAttemptFailed", "StageRetried", "StageFailed", "ExperimentFailed"} <= set(events), events
    # the docs' retry: the failed stage gets its retries again, even with its Jobs gone (as after a TTL)
    kube.kubectl("-n", ns, "delete", "jobs", "-l", "tratree.io/experiment=failing")
    kube.kubectl("-n", ns, "annotate", "w2sg", "failing", "tratree.io/retry=1", "--overwrite")
    kube.wait_for(lambda: status(kube, "failing", ns)["stages"]["expert"]["attempts"] == 4
                  and status(kube, "failing", ns)["phase"] == "Failed", 300, "the retried attempts to fail again")
    assert jobs_made(kube, ns, "failing") == ["expert"] * 4 and status(kube, "failing", ns)["retried"] == "1"
    kube.kubectl("-n", ns, "delete", "w2sg", "failing")


def test_a_spec_the_schema_admits_but_tratree_refuses_is_reported_and_makes_no_job(kube, operator, s3_env):
    """The CRD's schema checks types and ranges at admission; what only tratree can check (here an
    expert file source without a path) is the operator's to report, on the resource, before any Job; so is
    what the admin's policy refuses (a hostPath volume outside its prefixes: the node's /etc)."""
    ns = namespace(kube, "refused")
    bad = experiment("bad", s3_env)
    bad["spec"]["expert"] = {"source": "file"}
    kube.apply(bad, "-n", ns)
    st = wait_phase(kube, "bad", ns, "Failed", operator, 60)
    cond = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert cond["status"] == "False" and "spec.expert" in cond["message"] and "needs a path" in cond["message"]
    assert "InvalidSpec" in kube.kubectl("-n", ns, "describe", "w2sg", "bad")
    assert jobs_made(kube, ns, "bad") == [] and kube.list("jobs", ns) == []
    node = experiment("node", s3_env)
    node["spec"]["kubernetes"].update(volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}],
                                      volumeMounts=[{"name": "etc", "mountPath": "/host-etc"}])
    kube.apply(node, "-n", ns)
    cond = next(x for x in wait_phase(kube, "node", ns, "Failed", operator, 60)["conditions"] if x["type"] == "SpecValid")
    assert (cond["status"], cond["reason"]) == ("False", "PolicyViolation"), cond
    assert cond["message"].startswith("spec.kubernetes.volumes[0].hostPath.path: '/etc' is not allowed here"), cond
    assert kube.list("jobs", ns) == []
    kube.kubectl("-n", ns, "delete", "w2sg", "bad", "node")


def test_a_namespace_whose_pod_security_refuses_the_stage_pods_fails_the_stage_naming_the_rule(kube, operator, s3_env,
                                                                                                 tmp_path):
    """Pod Security "restricted" refuses a hostPath volume (the admin's policy allows this one): the Job
    controller can make no Pod, and the stage fails within a pass or two with the rule, not Running for ever."""
    ns = namespace(kube, "restricted")
    kube.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    s3_secret(kube, ns)
    mounted = experiment("mounted", s3_env)
    mounted["spec"]["kubernetes"].update(volumes=[{"name": "data", "hostPath": {"path": str(tmp_path)}}],
                                         volumeMounts=[{"name": "data", "mountPath": "/data"}])
    kube.apply(mounted, "-n", ns)
    st = wait_phase(kube, "mounted", ns, "Failed", operator, 120)
    message = st["stages"]["expert"]["message"]
    assert 'cannot run: the namespace refuses its Pods: Error creating: pods "mounted-expert-' in message, message
    assert message.startswith("attempt 1 of 2: cannot run: the namespace refuses its Pods: "), message
    assert ('violates PodSecurity "restricted:latest": restricted volume types (volume "data" uses restricted '
            'volume type "hostPath")') in message, message
    time.sleep(3)  # its Job deleted, the failure stands: no second attempt
    assert status(kube, "mounted", ns)["stages"]["expert"]["attempts"] == 1
    assert st["stages"]["expert"]["attempts"] == 1 and kube.list("pods", ns) == []
    kube.kubectl("-n", ns, "delete", "w2sg", "mounted")


def test_a_store_is_read_with_the_experiments_own_secret_or_not_at_all(kube, operator, s3_env):
    """The operator has no store credentials of its own (the docs' path above got Cached stages and
    results through the experiment's Secret): without the Secret its Jobs use (the chart's default
    name here), its store is not read, and the condition says so."""
    ns = namespace(kube, "nosecret")
    bare = experiment("bare", s3_env, suspend=True)
    del bare["spec"]["kubernetes"]["s3Secret"]
    kube.apply(bare, "-n", ns)
    cond = kube.wait_for(lambda: next((c for c in status(kube, "bare", ns).get("conditions", [])
                                       if c["type"] == "StoreReachable"), None), 60, "the StoreReachable condition")
    assert cond["status"] == "False" and "its Secret nosecret/tratree-s3 does not exist" in cond["message"], cond
    kube.kubectl("-n", ns, "delete", "w2sg", "bare")


def test_a_file_store_runs_on_a_volume_every_stage_mounts_and_is_refused_without_one(kube, operator, s3_env, tmp_path):
    """Each stage runs in a fresh Pod: the quickstart's file://./artifacts is refused with what to do;
    the same store on a ReadWriteMany claim (bound by the real PV controller) works, and the
    CPU-only tokenizer stage asks for no GPU."""
    ns = namespace(kube, "filestore")
    s3_secret(kube, ns)  # the stage Pods' default Secret (the chart's store.credentialsSecret)
    local = experiment("local", "unused")
    local["spec"]["artifacts"] = "file://./artifacts"
    kube.apply(local, "-n", ns)
    st = wait_phase(kube, "local", ns, "Failed", operator, 60)
    cond = next(c for c in st["conditions"] if c["type"] == "SpecValid")
    assert cond["reason"] == "StoreNotShared" and "a volume all of them mount" in cond["message"]
    assert kube.list("jobs", ns) == []

    disk = tmp_path / "nfs"
    disk.mkdir()
    disk.chmod(0o777)
    kube.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "lab-shared"},
         "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                  "hostPath": {"path": str(disk)}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                  "resources": {"requests": {"storage": "10Gi"}}}},
    ])
    kube.wait_for(lambda: (kube.get("pvc", "shared", ns) or {}).get("status", {}).get("phase") == "Bound", 60,
                  "the PV controller to bind the claim")
    shared = experiment("shared", "unused")
    shared["spec"]["artifacts"] = "file:///lab/stores/shared"
    shared["spec"]["kubernetes"] = {"volumes": [{"name": "lab", "persistentVolumeClaim": {"claimName": "shared"}}],
                                    "volumeMounts": [{"name": "lab", "mountPath": "/lab"}]}
    kube.apply(shared, "-n", ns)
    st = wait_phase(kube, "shared", ns, "Succeeded", operator, 300)
    done = {m.parent.parent.name for m in (disk / "stores" / "shared" / "stages").glob("*/*/manifest.json")}
    assert done == set(st["stages"])  # every stage's Pod wrote to, and read from, the one volume
    tokenizer = job_of(kube, ns, "shared", "tokenizer")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in tokenizer.get("requests", {}) and "nvidia.com/gpu" not in tokenizer.get("limits", {})
    sft = job_of(kube, ns, "shared", "sft-weak")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert sft["limits"]["nvidia.com/gpu"] == "1"
    kube.kubectl("-n", ns, "delete", "w2sg", "--all")


def test_suspend_holds_new_jobs_and_resuming_continues(kube, operator, s3_env):
    """Also: a name with a dot (valid for the resource) gives valid Job and ConfigMap names."""
    ns = namespace(kube, "suspended")
    s3_secret(kube, ns)
    kube.apply(experiment("paused.v1", s3_env, suspend=True), "-n", ns)
    kube.wait_for(lambda: status(kube, "paused.v1", ns).get("conditions"), 60, "the operator to see it")
    time.sleep(3)  # a few resyncs: still nothing runs
    st = status(kube, "paused.v1", ns)
    assert st["phase"] == "Pending" and kube.list("jobs", ns) == []
    assert next(x for x in st["conditions"] if x["type"] == "Progressing")["reason"] == "Suspended"
    kube.kubectl("-n", ns, "patch", "w2sg", "paused.v1", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    st = wait_phase(kube, "paused.v1", ns, "Succeeded", operator, 300)
    jobs = kube.list("jobs", ns, "tratree.io/experiment=paused.v1")
    assert len(jobs) == len(st["stages"]) and all(j["metadata"]["name"].startswith("paused-v1-") for j in jobs)
    uid = kube.get("w2sg", "paused.v1", ns)["metadata"]["uid"]
    assert kube.get("configmap", configmap_name("paused.v1", uid), ns)["metadata"]["name"].startswith("paused-v1-spec-")
    kube.kubectl("-n", ns, "delete", "w2sg", "paused.v1")


def test_an_operator_without_its_peering_object_says_so(kube, operator, tmp_path):
    kubeconfig = kube.service_account_kubeconfig(OPERATOR_NS, "tratree")
    other = Operator(kube, tmp_path, kubeconfig, FAST, ("--peering=no-such-peering",))
    try:
        deadline = time.monotonic() + 30
        while "WARNING" not in other.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "peering object 'no-such-peering' not found (cluster)" in other.log(), other.log()[-2000:]
        assert "--standalone" in other.log()
    finally:
        other.stop()


def test_rbac_is_exactly_what_the_operator_uses(kube, operator, s3_env):
    """With a spec edit mid-run (a running Job stopped, the spec ConfigMap patched) on top of the
    runs above, the apiserver's audit log holds every call of the operator's ServiceAccount:
    each is allowed by the rendered ClusterRole, and each rule was used, but the one admission checks."""
    ns = namespace(kube, "rbac")
    s3_secret(kube, ns)
    with holding(kube, "eval-sft-weak-s0"):
        kube.apply(experiment("edited", s3_env), "-n", ns)
        old = kube.wait_for(lambda: job_of(kube, ns, "edited", "eval-sft-weak-s0"), 300, "the evaluation Job")
        kube.kubectl("-n", ns, "patch", "w2sg", "edited", "--type=merge", "-p",
                     '{"spec": {"evaluation": {"temperature": 0.5}}}')
        kube.wait_for(lambda: (j := job_of(kube, ns, "edited", "eval-sft-weak-s0")) and
                      j["metadata"]["uid"] != old["metadata"]["uid"], 120, "the edited stage's new Job")
    st = wait_phase(kube, "edited", ns, "Succeeded", operator, 300)
    assert st["stages"]["eval-sft-weak-s0"]["state"] == "Succeeded" and st["observedGeneration"] == 2
    assert "StageReplanned" in kube.kubectl("-n", ns, "describe", "w2sg", "edited")
    # only the edited stage (and what follows it) ran again
    assert sorted(jobs_made(kube, ns, "edited")) == sorted([*st["stages"], "eval-sft-weak-s0"])
    uid = kube.get("w2sg", "edited", ns)["metadata"]["uid"]
    assert "temperature: 0.5" in kube.get("configmap", configmap_name("edited", uid), ns)["data"]["experiment.yaml"]
    calls = kube.calls_by(f"system:serviceaccount:{OPERATOR_NS}:tratree")
    rules = rule_set(next(d for d in render({}) if d["kind"] == "ClusterRole")["rules"])
    assert calls <= rules, f"called but not allowed: {calls - rules}"
    # the finalizers rule is no call: OwnerReferencesPermissionEnforcement checks it (see the chart)
    assert rules - calls == {("tratree.io", "w2sgexperiments/finalizers", "update")}, rules - calls
    # Jobs and Pods are listed and watched with a label selector the apiserver applies, never cluster-wide
    reads = [e for e in kube.requests_by(f"system:serviceaccount:{OPERATOR_NS}:tratree")
             if e["objectRef"]["resource"] in ("jobs", "pods") and e["verb"] in ("list", "watch")]
    selectors = [parse_qs(urlsplit(e["requestURI"]).query).get("labelSelector", [""])[0] for e in reads]
    assert reads and all(s.startswith("tratree.io/experiment") for s in selectors), selectors
