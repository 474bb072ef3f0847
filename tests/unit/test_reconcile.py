"""The operator's decisions, one pure function: every case without a cluster."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity as reference_quantity

from tratree.pipeline.graph import plan
from tratree.spec.experiment import parse_experiment
from tratree_operator.capacity import parse_quantity
from tratree_operator.config import OperatorConfig
from tratree_operator.decide import reconcile
from tratree_operator.jobs import job_name
from tratree_operator.status import merge_patch
from tratree_operator.types import ANNOTATION_KEY, LABEL_ATTEMPT, LABEL_EXPERIMENT, LABEL_STAGE, Observed
from tratree_operator.views import kept

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
CONFIG = OperatorConfig(retryBackoffSeconds=10, retryBackoffMaxSeconds=300, resyncSeconds=60)


def spec(**extra: Any) -> dict[str, Any]:
    return {"weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"},
            "methods": ["sft-weak", "w2s-treedpo"], "artifacts": "s3://bucket/exp", **extra}


class World:
    """An experiment, its Jobs and its store, changed by applying each decision as the controller would."""

    def __init__(self, body_spec: dict[str, Any] | None = None) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "tratree.io/v1alpha1", "kind": "W2SGExperiment",
            "metadata": {"name": "exp", "namespace": "lab", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
            "spec": body_spec or spec(),
        }
        self.jobs: dict[str, dict[str, Any]] = {}
        self.manifests: dict[str, dict[str, Any]] | None = {}
        self.results: dict[str, Any] | None = None
        self.now = T0
        self.pods: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.events: list[Any] = []
        self.last = None

    def step(self, config: OperatorConfig = CONFIG):
        # the Jobs and Pods as the operator's views keep them: what the reconciler reads must survive that
        d = reconcile(Observed(copy.deepcopy(self.body), [kept("jobs", j) for j in copy.deepcopy(self.jobs).values()],
                               [kept("pods", p) for p in copy.deepcopy(list(self.pods.values()))],
                               copy.deepcopy(self.manifests), self.results, self.now, nodes=copy.deepcopy(self.nodes)),
                      config)
        for obj in d.create:
            if obj["kind"] == "Job":
                assert obj["metadata"]["name"] not in self.jobs, "a Job was made twice"
                obj["metadata"]["uid"] = f"uid-{obj['metadata']['name']}"  # the apiserver sets one
                self.jobs[obj["metadata"]["name"]] = obj
                self.created.append(obj["metadata"]["name"])
        for name in d.delete:
            self.jobs.pop(name)
        self.body["status"] = d.status
        self.events += d.events
        self.last = d
        return d

    def finish(self, stage: str, ok: bool = True, at: dt.datetime | None = None) -> None:
        job = self.running(stage)
        when = (at or self.now).strftime("%Y-%m-%dT%H:%M:%SZ")
        kind = "Complete" if ok else "Failed"
        job["status"] = {"startTime": when, "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": when, "reason": None if ok else "BackoffLimitExceeded",
             "message": None if ok else "Job has reached the specified backoff limit"}]}
        if ok:
            job["status"]["completionTime"] = when

    def pod(self, stage: str, status: dict[str, Any], created: dt.datetime | None = None) -> None:
        """The Pod the Job controller made for the stage's running Job, with this status."""
        job = self.running(stage)
        name = f"{job['metadata']['name']}-pod"
        self.pods[name] = {"metadata": {"name": name, "labels": job["spec"]["template"]["metadata"]["labels"],
                                        "creationTimestamp": (created or self.now).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                        "ownerReferences": [{"kind": "Job", "uid": job["metadata"]["uid"]}]},
                           "status": status}

    def running(self, stage: str) -> dict[str, Any]:
        jobs = [j for j in self.jobs.values() if j["metadata"]["labels"][LABEL_STAGE] == stage
                and not (j.get("status") or {}).get("conditions")]
        assert len(jobs) == 1, f"{stage}: {len(jobs)} running Jobs"
        return jobs[0]

    def stage(self, name: str) -> dict[str, Any]:
        return self.body["status"]["stages"][name]

    def run_all(self) -> None:
        """Let every Job succeed until nothing is left to run."""
        for _ in range(50):
            d = self.step()
            live = [j for j in self.jobs.values() if not (j.get("status") or {}).get("conditions")]
            if not live and not d.create:
                return
            for job in live:
                self.finish(job["metadata"]["labels"][LABEL_STAGE])
        raise AssertionError("did not settle")


def manifest(stage: str, digest: str = "d") -> dict[str, Any]:
    return {"digest": f"{digest}-{stage}", "prefix": f"stages/{stage}/k", "files": {}}


def test_a_new_experiment_starts_its_first_stage_with_a_configmap_and_owned_labelled_job():
    w = World()
    d = w.step()
    assert [o["kind"] for o in d.create] == ["ConfigMap", "Job"]
    cm, job = d.create
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "tiny:weak" in cm["data"]["experiment.yaml"]
    meta = job["metadata"]
    assert meta["labels"][LABEL_EXPERIMENT] == "exp" and meta["labels"][LABEL_STAGE] == "expert"
    assert meta["ownerReferences"] == [{"apiVersion": "tratree.io/v1alpha1", "kind": "W2SGExperiment", "name": "exp",
                                        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "tratree", "stage", "expert", "--spec", "/spec/experiment.yaml", "--artifacts", "s3://bucket/exp"]
    assert d.status["phase"] == "Running"
    assert d.status["stages"]["expert"]["state"] == "Running"
    assert d.status["stages"]["sft-weak"]["state"] == "Pending"
    assert d.status["observedGeneration"] == 1
    assert d.status["currentStage"] == "expert"
    assert d.events == []  # a first start is in the status and on the Job's own Events, not one of ours
    # the name is a function of experiment, stage, plan key and attempt: a restart finds the same Job
    from tratree_operator.decide import plan_keys

    exp_spec = parse_experiment(spec()).spec
    key = plan_keys(exp_spec, plan(exp_spec))["expert"]
    assert meta["name"] == job_name("exp", "expert", key, 1, "uid-1") and meta["annotations"][ANNOTATION_KEY] == key


def test_job_settings_come_from_the_spec_over_the_operator_defaults():
    body = spec(kubernetes={
        "s3Secret": "s3-creds", "hfTokenSecret": "hf", "queueName": "gpu-queue", "priorityClassName": "research",
        "nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "ttlSecondsAfterFinished": 600, "serviceAccount": "trainer",
        "stages": {"expert": {"image": "my/cpu:1", "cpu": "2", "memory": "8Gi", "activeDeadlineSeconds": 3600,
                              "backoffLimit": 2}}})
    job = World(body).step().create[1]
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "my/cpu:1"
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}} in c["env"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["priorityClassName"] == "research" and pod["serviceAccountName"] == "trainer"
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["restartPolicy"] == "Never"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["backoffLimit"] == 2
    # preemption and eviction are not failures; bad input (exit 2) is final for the Job
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [2]
    assert rules[1]["onExitCodes"]["containerName"] == pod["containers"][0]["name"]
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == 600


def test_gpu_stages_request_gpus_on_the_trainer_image():
    w = World()
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    d = w.step()
    jobs = {j["metadata"]["labels"][LABEL_STAGE]: j for j in d.create if j["kind"] == "Job"}
    c = jobs["sft-weak"]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == CONFIG.images.trainer
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["command"][:3] == ["tratree", "stage", "sft-weak"]
    w = World(spec(kubernetes={"stages": {"sft": {"gpus": 4}}}))
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    c = w.step().create[1]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:7] == ["accelerate", "launch", "--num_processes", "4", "-m", "tratree", "stage"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_stages_done_in_the_store_are_cached_without_a_job():
    w = World()
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    d = w.step()
    # a Job is told exactly where its inputs are: it never recomputes their keys with its own code
    (sft,) = [j for j in d.create if j["kind"] == "Job" and j["metadata"]["labels"][LABEL_STAGE] == "sft-weak"]
    assert sft["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "--input=expert=stages/expert/k", "--input=tokenizer=stages/tokenizer/k"]
    assert w.stage("expert")["state"] == "Cached" and w.stage("tokenizer")["state"] == "Cached"
    # TreeDPO starts from the strong model's SFT: both SFTs wait only for the expert data and the tokenizer
    assert [j["metadata"]["labels"][LABEL_STAGE] for j in d.create if j["kind"] == "Job"] == ["sft-weak",
                                                                                             "sft-strong-s0"]
    assert d.status["artifacts"]["expert"] == "s3://bucket/exp/stages/expert/k"
    assert [e.reason for e in d.events] == ["StageCached", "StageCached"]


def test_a_whole_experiment_runs_in_dependency_order_and_succeeds():
    w = World()
    w.run_all()
    order = [w.jobs[n]["metadata"]["labels"][LABEL_STAGE] for n in w.created]
    stages = plan(parse_experiment(spec()).spec)
    assert sorted(order) == sorted(s.name for s in stages)
    for s in stages:
        for dep in s.inputs:
            assert order.index(dep) < order.index(s.name)
    assert w.body["status"]["phase"] == "Succeeded"
    conds = {c["type"]: c for c in w.body["status"]["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Progressing"]["reason"] == "Completed"
    assert (conds["Finished"]["status"], conds["Finished"]["reason"]) == ("True", "Succeeded")
    assert w.events[-1].reason == "ExperimentSucceeded"
    assert w.last.requeue_after is None


def test_results_reach_the_status_when_the_report_is_done():
    w = World()
    w.run_all()
    w.manifests = {"report": manifest("report")}
    w.results = {"methods": {
        "sft-weak": {"average_reward": {"mean": 30.0, "std": 0.0}, "success_rate": {"mean": 10.0, "std": 0}, "seeds": 1},
        "w2s-treedpo": {"average_reward": {"mean": 62.3, "std": 1.0}, "success_rate": {"mean": 40.0, "std": 0},
                        "finished_rate": {"mean": 80.0, "std": 0}, "seeds": 1, "p_value_vs_sft_strong": None,
                        "pairs": [0], "optimizer_steps": [0], "few_steps": True, "paired_mean": 4.123,
                        "paired_ci": [-1.0, 9.256], "paired_p": 0.12345, "holm_p": 0.2469}}}
    d = w.step()
    assert d.status["results"]["w2s-treedpo"]["averageReward"] == 62.3
    # a DPO that trained on nothing is visible on the resource, steps and all
    assert d.status["results"]["w2s-treedpo"]["dpoPairs"] == [0]
    assert d.status["results"]["w2s-treedpo"]["optimizerSteps"] == [0] and d.status["results"]["w2s-treedpo"]["fewSteps"]
    assert {k: d.status["results"]["w2s-treedpo"][k] for k in (
        "pairedDiffVsSftStrong", "pairedCIVsSftStrong", "pairedPVsSftStrong", "holmP")} == {
        "pairedDiffVsSftStrong": 4.12, "pairedCIVsSftStrong": [-1.0, 9.26], "pairedPVsSftStrong": 0.1235, "holmP": 0.2469}
    assert d.status["results"]["w2s-treedpo"]["finishedRate"] == 80.0
    assert d.status["w2sgReward"] == "62.3"
    assert "sftStrongReward" not in d.status


def test_a_failed_job_is_retried_after_backoff_then_the_experiment_fails_and_stops():
    w = World(spec(kubernetes={"stages": {"sft": {"retries": 1}}}))
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    w.step()
    first = w.running("sft-weak")["metadata"]["name"]
    w.finish("sft-weak", ok=False)
    d = w.step()
    assert not [o for o in d.create if o["kind"] == "Job"]
    assert w.stage("sft-weak")["state"] == "Pending" and "retrying" in w.stage("sft-weak")["message"]
    assert d.requeue_after == pytest.approx(10.0)
    assert "StageAttemptFailed" in [e.reason for e in d.events]
    w.now = T0 + dt.timedelta(seconds=11)
    d = w.step()
    second = w.running("sft-weak")
    assert second["metadata"]["name"] != first and second["metadata"]["labels"][LABEL_ATTEMPT] == "2"
    assert w.stage("sft-weak")["attempts"] == 2 and d.events[0].reason == "StageRetried"
    w.finish("sft-weak", ok=False)
    d = w.step()
    assert w.stage("sft-weak")["state"] == "Failed"
    assert d.status["phase"] == "Failed"
    conds = {c["type"]: c for c in d.status["conditions"]}
    failed = conds["Failed"]
    assert failed["status"] == "True" and "sft-weak" in failed["message"] and "BackoffLimitExceeded" in failed["message"]
    # a failure is not "in progress", and `kubectl wait --for=condition=Finished` sees either end
    assert (conds["Succeeded"]["status"], conds["Succeeded"]["reason"]) == ("False", "StageFailed")
    assert (conds["Finished"]["status"], conds["Finished"]["reason"]) == ("True", "Failed")
    assert {"StageFailed", "ExperimentFailed"} <= {e.reason for e in d.events}
    # nothing later starts, now or on later reconciles
    assert not d.create and not w.step().create
    assert w.stage("explore")["state"] == "Pending"


def test_backoff_doubles_and_is_capped():
    assert [CONFIG.backoff(n) for n in (1, 2, 3, 10)] == [10, 20, 40, 300]


def test_a_job_that_vanishes_mid_run_counts_as_an_attempt_and_is_made_again():
    w = World()
    w.step()
    name = w.running("expert")["metadata"]["name"]
    del w.jobs[name]  # deleted by someone, or failed and removed by ttlSecondsAfterFinished: 0
    d = w.step()
    (again,) = [o for o in d.create if o["kind"] == "Job"]
    assert again["metadata"]["labels"][LABEL_ATTEMPT] == "2" and again["metadata"]["name"] != name
    assert "JobRecreated" in [e.reason for e in d.events]
    assert w.stage("expert")["state"] == "Running" and w.stage("expert")["attempts"] == 2
    # it vanishes again: the retries (1 by default) are spent, the stage fails instead of looping
    del w.jobs[again["metadata"]["name"]]
    d = w.step()
    assert not [o for o in d.create if o["kind"] == "Job"]
    assert w.stage("expert")["state"] == "Failed" and "vanished before it finished" in w.stage("expert")["message"]
    assert w.body["status"]["phase"] == "Failed"


def test_a_restart_between_creating_a_job_and_writing_status_adopts_the_job():
    w = World()
    w.step()
    w.body.pop("status")  # the status write was lost
    d = w.step()  # World.step fails on a second Job with the same name
    assert not [o for o in d.create if o["kind"] == "Job"]
    assert w.stage("expert")["state"] == "Running"
    assert d.events == []  # adopting the Job of a first start says nothing: it was never an Event


def test_a_retry_whose_status_write_was_lost_is_still_told():
    w = World(spec(kubernetes={"stages": {"sft": {"retries": 1}}}))
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    w.step()
    w.finish("sft-weak", ok=False)
    w.step()
    lost = copy.deepcopy(w.body["status"])  # the retry is due; its Job is made and the status write lost
    w.now = T0 + dt.timedelta(seconds=11)
    w.step()
    w.body["status"] = lost
    d = w.step()
    assert not [o for o in d.create if o["kind"] == "Job"] and w.stage("sft-weak")["attempts"] == 2
    assert [e.reason for e in d.events if e.stage == "sft-weak"] == ["StageRetried"]


def test_a_restart_finds_finished_jobs_and_loses_no_transition():
    w = World()
    w.step()
    w.finish("expert")
    status = copy.deepcopy(w.body["status"])
    w.body["status"] = status  # the operator was down while the Job finished
    d = w.step()
    assert w.stage("expert")["state"] == "Succeeded" and "StageSucceeded" in [e.reason for e in d.events]
    assert [o["metadata"]["labels"][LABEL_STAGE] for o in d.create if o["kind"] == "Job"] == ["tokenizer"]


def test_reconciling_twice_changes_nothing_the_second_time():
    w = World()
    w.manifests = {"expert": manifest("expert")}
    w.step()
    before = copy.deepcopy(w.body["status"])
    d = w.step()
    assert not d.create and not d.delete and not d.events
    assert merge_patch(before, d.status) == {}


def test_a_spec_edit_reruns_the_stages_whose_key_changed_and_keeps_the_rest():
    w = World()
    w.manifests = None  # the store plays no part here
    for _ in range(4):
        w.step()
        for job in [j for j in w.jobs.values() if not (j.get("status") or {}).get("conditions")]:
            stage = job["metadata"]["labels"][LABEL_STAGE]
            if stage != "trees":
                w.finish(stage)
    w.step()
    running_trees = w.running("trees")["metadata"]["name"]
    kept = {n: copy.deepcopy(w.stage(n)) for n in ("expert", "sft-weak", "explore")}
    w.body["spec"]["tree"] = {"similarity": 0.9}
    w.body["metadata"]["generation"] = 2
    d = w.step()
    assert running_trees in d.delete
    new_trees = w.running("trees")["metadata"]["name"]
    assert new_trees != running_trees
    for name, entry in kept.items():
        assert w.stage(name) == entry
    assert w.stage("pairs")["state"] == "Pending"
    assert d.status["observedGeneration"] == 2
    assert "StageReplanned" in [e.reason for e in d.events]


def test_a_method_removed_from_the_spec_drops_its_stages_and_stops_their_jobs():
    w = World()
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer"), "sft-weak": manifest("sft-weak")}
    w.step()
    explore = w.running("explore")["metadata"]["name"]
    w.body["spec"]["methods"] = ["sft-weak"]
    d = w.step()
    assert explore in d.delete
    assert "explore" not in d.status["stages"]


def test_an_invalid_spec_is_a_condition_naming_the_field_and_makes_no_job():
    w = World(spec(training={"sft": {"epochs": 0}}))
    d = w.step()
    assert not d.create
    cond = next(c for c in d.status["conditions"] if c["type"] == "SpecValid")
    assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
    assert "spec.training.sft.epochs" in cond["message"]
    assert d.status["phase"] == "Failed"
    assert [e.reason for e in d.events] == ["InvalidSpec"]
    assert not w.step().events  # said once
    w.body["spec"] = spec()
    d = w.step()
    assert d.status["phase"] == "Running" and [o["kind"] for o in d.create] == ["ConfigMap", "Job"]


def test_suspend_stops_new_jobs_and_resuming_continues():
    w = World(spec(suspend=True))
    d = w.step()
    assert not d.create and d.status["phase"] == "Pending"
    prog = next(c for c in d.status["conditions"] if c["type"] == "Progressing")
    assert prog["status"] == "False" and prog["reason"] == "Suspended"
    w.body["spec"]["suspend"] = False
    assert [o["kind"] for o in w.step().create] == ["ConfigMap", "Job"]
    w.finish("expert")
    w.body["spec"]["suspend"] = True
    assert not w.step().create
    w.body["spec"]["suspend"] = False
    assert [o["metadata"]["labels"][LABEL_STAGE] for o in w.step().create if o["kind"] == "Job"] == ["tokenizer"]


def test_an_unreachable_store_still_makes_jobs_and_says_so_once():
    w = World()
    w.manifests = None
    d = w.step()
    assert [o["kind"] for o in d.create] == ["ConfigMap", "Job"]
    cond = next(c for c in d.status["conditions"] if c["type"] == "StoreReachable")
    assert cond["status"] == "False" and "s3://bucket/exp" in cond["message"]
    assert "StoreUnreachable" in [e.reason for e in d.events]
    assert "StoreUnreachable" not in [e.reason for e in w.step().events]


def test_a_finished_failed_stage_stays_failed_after_its_job_is_gone():
    w = World(spec(kubernetes={"stages": {"expert": {"retries": 0}}}))
    w.step()
    w.finish("expert", ok=False)
    w.step()
    w.jobs.clear()  # ttlSecondsAfterFinished
    d = w.step()
    assert not d.create and w.stage("expert")["state"] == "Failed" and d.status["phase"] == "Failed"


def test_job_names_are_short_and_distinct():
    long = "x" * 63
    a = job_name(long, "eval-w2s-random-dpo-s12", "k" * 24, 1, "u")
    b = job_name(long, "eval-w2s-random-dpo-s13", "k" * 24, 1, "u")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert job_name("e", "s", "k", 1, "u") != job_name("e", "s", "k", 2, "u")
    assert job_name("e", "s", "k", 1, "u") != job_name("e", "s", "k", 1, "another uid")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)
json_docs = st.dictionaries(st.text(max_size=3), json_values.filter(lambda v: v is not None), max_size=4)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    return value


@given(json_docs, json_docs)
def test_merge_patch_turns_old_into_new(old, new):
    from tests.e2e.cluster.apiserver import merge

    old, new = _strip_none(old), _strip_none(new)
    assert merge(old, merge_patch(old, new)) == new


def _pruned(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Paths the API server would prune: fields the structural schema does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or not isinstance(value, dict | list):
        return []
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _pruned(v, schema.get("items", {}), f"{path}[{i}]")]
    if "properties" in schema:
        out = [f"{path}.{k}" for k in value if k not in schema["properties"]]
        return out + [p for k, v in value.items() if k in schema["properties"]
                      for p in _pruned(v, schema["properties"][k], f"{path}.{k}")]
    extra = schema.get("additionalProperties")
    return [p for k, v in value.items() for p in _pruned(v, extra, f"{path}.{k}")] if isinstance(extra, dict) else []


def test_every_status_the_operator_writes_fits_the_crd_status_schema():
    from openapi_schema_validator import OAS30Validator

    from tratree.spec.crd import status_schema

    schema = status_schema()

    statuses = []
    w = World(spec(kubernetes={"stages": {"expert": {"retries": 1}}}))
    w.step()
    w.finish("expert", ok=False)
    statuses.append(w.step().status)
    w.now += dt.timedelta(seconds=60)
    w.run_all()
    w.manifests = {"report": manifest("report")}
    w.results = {"methods": {"w2s-treedpo": {"average_reward": {"mean": 50.0, "std": 1.0},
                                             "success_rate": {"mean": 20.0, "std": 0.0}, "seeds": 1,
                                             "p_value_vs_sft_strong": 0.04, "gap_recovered": 0.5,
                                             "gap_recovered_vs_sft_strong": 0.2, "finished_rate": {"mean": 90.0},
                                             "pairs": [12], "optimizer_steps": [24], "few_steps": False,
                                             "paired_mean": 3.0, "paired_ci": [0.5, 5.5], "paired_p": 0.01,
                                             "holm_p": 0.02}}}
    statuses.append(w.step().status)
    assert len(statuses[-1]["results"]["w2s-treedpo"]) == 15  # every field the report gives, none pruned
    statuses.append(World(spec(seeds=[])).step().status)  # invalid
    statuses.append(World(spec()).step().status)
    for status in statuses:
        assert _pruned(status, schema) == []
        OAS30Validator(schema).validate(status)


def test_a_failed_stage_says_its_exit_code_and_termination_message():
    w = World(spec(kubernetes={"stages": {"expert": {"retries": 0}}}))
    w.step()
    w.pod("expert", {"phase": "Failed", "containerStatuses": [{"name": "stage", "state": {"terminated": {
        "exitCode": 2, "message": "Traceback is not shown\ntratree: error: expert: no expert trajectories from "
                                  "environment textworldexpress"}}}]})
    w.finish("expert", ok=False)
    w.step()
    message = w.stage("expert")["message"]
    assert w.stage("expert")["state"] == "Failed" and "BackoffLimitExceeded" in message
    assert "exit code 2: " in message and "no expert trajectories" in message


@pytest.mark.parametrize(("status", "why"), [
    ({"phase": "Pending", "containerStatuses": [{"name": "stage", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}}]}, "ImagePullBackOff"),
    ({"phase": "Pending", "containerStatuses": [{"name": "stage", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "tratree-s3" not found'}}}]},
     'secret "tratree-s3" not found'),
])
def test_a_pod_that_cannot_start_shows_in_the_stage_and_fails_its_attempt_in_time(status, why):
    config = CONFIG.model_copy(update={"start_timeout_seconds": 120.0})
    w = World()
    w.step(config)
    w.pod("expert", status)
    w.step(config)
    entry = w.stage("expert")
    assert entry["state"] == "Running" and entry["message"].startswith("cannot start: ") and why in entry["message"]
    first = entry["job"]
    w.now += dt.timedelta(seconds=121)
    d = w.step(config)
    assert first in d.delete  # the stuck Job goes; the attempt counts as failed and is retried
    entry = w.stage("expert")
    assert entry["state"] == "Pending" and "could not start within 120s" in entry["message"] and why in entry["message"]
    assert "StageAttemptFailed" in [e.reason for e in d.events]


BUSY = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                           "lastTransitionTime": "2026-01-01T00:00:00Z",
                                           "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}


def gpu_node(name: str = "gpu-1", gpus: int = 8, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": extra.pop("labels", {})}, "spec": extra,
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": str(gpus)}}}


def test_a_stage_waiting_for_gpus_a_node_has_waits_past_the_start_timeout_and_only_a_queue_timeout_ends_it():
    config = CONFIG.model_copy(update={"start_timeout_seconds": 120.0})
    w = World(spec(methods=["sft-weak"]))
    w.nodes = [gpu_node()]
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    w.step(config)
    w.pod("sft-weak", BUSY)
    for _ in range(3):
        w.now += dt.timedelta(seconds=3600)
        d = w.step(config)
        entry = w.stage("sft-weak")
        assert not d.delete and entry["state"] == "Running" and entry["attempts"] == 1
        assert entry["message"] == ("waiting for resources since 2026-01-01T00:00:00Z: 0/1 nodes are available: "
                                    "1 Insufficient nvidia.com/gpu.")
    assert d.status["phase"] == "Running" and not [e for e in d.events if e.type == "Warning"]
    bounded = config.model_copy(update={"queue_timeout_seconds": 600.0})
    d = w.step(bounded)
    assert d.delete and "waited 600s for resources (stages.queueTimeoutSeconds)" in w.stage("sft-weak")["message"]
    assert w.stage("sft-weak")["state"] == "Pending"  # an attempt like any other: retried


def test_a_request_no_node_can_ever_meet_fails_at_once_naming_the_resource():
    config = OperatorConfig(retryBackoffSeconds=10, resources={"sft": {"cpu": "8", "memory": "64Gi", "gpus": 64}})
    w = World(spec(methods=["sft-weak"]))
    w.nodes = [gpu_node("gpu-1"), gpu_node("gpu-2", gpus=4)]
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    d = w.step(config)
    entry = w.stage("sft-weak")
    assert not [o for o in d.create if o["kind"] == "Job"] and entry["state"] == "Failed" and entry["attempts"] == 0
    assert entry["message"] == ("cannot run: it requests 64 nvidia.com/gpu and no node today has that much "
                                "allocatable (the most: 8 nvidia.com/gpu, on gpu-1)")
    assert d.status["phase"] == "Failed" and "StageFailed" in [e.reason for e in d.events]
    d = w.step(config)  # and it stays so: no retry, no Job, nothing new to say
    assert w.stage("sft-weak") == entry and not d.create and not d.events
    # no node known (no Nodes listed yet, or none readable): never judged
    w = World(spec(methods=["sft-weak"]))
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    assert [o["kind"] for o in w.step(config).create] == ["ConfigMap", "Job"]
    # its Pod already waiting when the big node goes: failed within the pass, no retry spent on it
    w.nodes = [gpu_node(gpus=4)]
    w.pod("sft-weak", BUSY)
    d = w.step(config)
    assert d.delete and w.stage("sft-weak")["state"] == "Failed" and "no node today" in w.stage("sft-weak")["message"]
    w.pods.clear()
    d = w.step(config)  # its Job deleted: the failure stands, no retry spent on what cannot run
    assert w.stage("sft-weak")["state"] == "Failed" and w.stage("sft-weak")["attempts"] == 1 and not d.create
    # an autoscaling cluster turns the check off: it waits
    w = World(spec(methods=["sft-weak"]))
    w.nodes = [gpu_node(gpus=4)]
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    assert w.step(config.model_copy(update={"fail_unfit_requests": False})).create


QUANTITY = st.builds(
    lambda sign, whole, frac, suffix: f"{sign}{whole}{frac}{suffix}",
    st.sampled_from(["", "+", "-"]), st.integers(0, 10**6).map(str),
    st.sampled_from(["", "."]) | st.integers(0, 999).map(lambda f: f".{f}"),
    st.sampled_from(["", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
    | st.integers(-9, 12).map(lambda e: f"e{e}"))


@given(QUANTITY | st.text(max_size=6))
def test_resource_quantities_read_as_the_kubernetes_client_reads_them(value):
    # the operator parses them itself (its image has no kubernetes package); the client is the reference
    try:
        expected = reference_quantity(value)
    except (ValueError, ArithmeticError):
        with pytest.raises(ValueError):
            parse_quantity(value)
        return
    assert parse_quantity(value) == expected


def test_fit_reads_selectors_taints_tolerations_and_requests_as_the_scheduler_does():
    from tratree_operator.capacity import no_node_fits, pod_requests

    def pod(gpus: int = 1, **extra: Any) -> dict[str, Any]:
        return {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "4Gi"},
                                              "limits": {"nvidia.com/gpu": str(gpus)}}}], **extra}

    assert pod_requests(pod(2)) == {"cpu": Decimal("0.5"), "memory": 4 * 2 ** 30, "nvidia.com/gpu": 2}
    assert no_node_fits(pod(8), [gpu_node()]) is None and no_node_fits(pod(64), []) is None
    a100 = gpu_node("a", labels={"gpu": "a100"}, taints=[{"key": "team", "value": "x", "effect": "NoSchedule"}])
    assert no_node_fits(pod(nodeSelector={"gpu": "h100"}), [a100]) == \
        "no node today matches its node selector (gpu=h100) and tolerations"
    assert "tolerations allow" in no_node_fits(pod(), [a100])
    assert no_node_fits(pod(tolerations=[{"key": "team", "operator": "Equal", "value": "x"}]), [a100]) is None
    assert no_node_fits(pod(tolerations=[{"operator": "Exists"}]), [a100]) is None
    # a cordoned or not-ready node comes back: it counts
    down = gpu_node(unschedulable=True, taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}])
    assert no_node_fits(pod(), [down]) is None
    # enough GPUs on one node, enough memory on another, neither both
    small = {"metadata": {"name": "cpu-1"}, "status": {"allocatable": {"cpu": "64", "memory": "1Ti"}}}
    big = pod(8)
    big["containers"][0]["resources"]["requests"]["memory"] = "600Gi"
    assert no_node_fits(big, [gpu_node(), small]) == \
        "no node today has 0.5 cpu, 600Gi memory, 8 nvidia.com/gpu allocatable together"


def test_gpu_seconds_count_every_attempts_run_and_survive_its_pods_going():
    def ran(w: World, seconds: int, ok: bool) -> None:
        job = w.running("sft-weak")
        pod = f"{job['metadata']['name']}-pod"
        start = w.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        w.now += dt.timedelta(seconds=seconds)
        end = w.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        w.pods[pod] = {"metadata": {"name": pod, "labels": job["spec"]["template"]["metadata"]["labels"],
                                    "creationTimestamp": start, "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                       "spec": job["spec"]["template"]["spec"],
                       "status": {"containerStatuses": [{"name": "stage", "state": {"terminated": {
                           "exitCode": 0 if ok else 1, "startedAt": start, "finishedAt": end}}}]}}
        w.finish("sft-weak", ok=ok)

    config = OperatorConfig(retryBackoffSeconds=1, resources={"sft": {"cpu": "8", "memory": "64Gi", "gpus": 2}})
    w = World(spec(methods=["sft-weak"]))
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    w.step(config)
    ran(w, 100, ok=False)
    w.step(config)
    assert w.stage("sft-weak")["gpuSeconds"] == 200  # 100 s × 2 GPUs
    w.pods.clear()  # the failed attempt's Job and Pod are gone before the next pass sees them again
    w.now += dt.timedelta(seconds=5)
    w.step(config)
    ran(w, 50, ok=True)
    w.step(config)
    entry = w.stage("sft-weak")
    assert entry["gpuSeconds"] == 300 and sorted(entry["gpuSecondsByJob"].values()) == [100, 200]
    assert w.body["status"]["gpuHours"] == round(300 / 3600, 3)
    # CPU stages use none
    assert "gpuSeconds" not in w.stage("expert")


def test_a_job_a_queue_holds_is_queued_with_kueues_reason_never_failed_or_timed_out():
    config = CONFIG.model_copy(update={"start_timeout_seconds": 60.0})
    w = World(spec(methods=["sft-weak"], kubernetes={"queueName": "team-gpus"}))
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    w.step(config)
    job = w.running("sft-weak")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    job["spec"]["suspend"] = True  # what Kueue's Job webhook does at creation
    assert w.stage("sft-weak")["state"] == "Running"
    w.step(config)
    assert w.stage("sft-weak")["message"] == "queued: its Job is suspended (a queue such as Kueue holds it)"
    workload = {"metadata": {"name": "job-x", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                           "message": "couldn't assign flavors to pod set main: insufficient unused "
                                                      "quota for nvidia.com/gpu in flavor gpu, 1 more needed"}]}}
    for _ in range(3):
        w.now += dt.timedelta(hours=1)
        d = reconcile(Observed(copy.deepcopy(w.body), list(w.jobs.values()), [], w.manifests, None, w.now,
                               workloads=[workload]), config)
        entry = d.status["stages"]["sft-weak"]
        assert not d.delete and not d.create and entry["state"] == "Running" and entry["attempts"] == 1
    assert entry["message"] == ("queued: couldn't assign flavors to pod set main: insufficient unused quota for "
                                "nvidia.com/gpu in flavor gpu, 1 more needed")
    workload["status"]["conditions"] = [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "waiting"},
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "Preempted to accommodate a workload "
         "(UID: u) due to prioritization in the ClusterQueue"}]
    d = reconcile(Observed(copy.deepcopy(w.body), list(w.jobs.values()), [], w.manifests, None, w.now,
                           workloads=[workload]), config)
    assert d.status["stages"]["sft-weak"]["message"].startswith("queued: evicted and requeued by Kueue: Preempted")
    # admitted: Kueue un-suspends it, and the stage is an ordinary running stage again
    job["spec"]["suspend"] = False
    w.step(config)
    assert w.stage("sft-weak").get("message") is None and w.stage("sft-weak")["attempts"] == 1


def test_a_job_whose_pods_the_namespace_refuses_fails_at_once_and_a_full_quota_times_out():
    config = CONFIG.model_copy(update={"start_timeout_seconds": 120.0})

    def step(w: World, why: str):
        uid = w.running("expert")["metadata"]["uid"]
        d = reconcile(Observed(copy.deepcopy(w.body), list(w.jobs.values()), [], w.manifests, None, w.now,
                               refusals={uid: why}), config)
        w.body["status"] = d.status
        return d

    psa = ('Error creating: pods "exp-expert-1-x" is forbidden: violates PodSecurity "restricted:latest": '
           'restricted volume types (volume "data" uses restricted volume type "hostPath")')
    w = World()
    w.step(config)
    d = step(w, psa)
    entry = d.status["stages"]["expert"]
    assert d.delete and entry["state"] == "Failed" and d.status["phase"] == "Failed"
    assert entry["message"].endswith(f"cannot run: the namespace refuses its Pods: {psa}")
    for name in d.delete:
        w.jobs.pop(name)
    assert not w.step(config).create and w.stage("expert")["state"] == "Failed"  # stands once its Job is gone
    w.body["metadata"]["annotations"] = {"tratree.io/retry": "1"}  # the user fixed the namespace: retried
    assert [o["kind"] for o in w.step(config).create] == ["ConfigMap", "Job"] and not w.stage("expert").get("final")
    quota = 'Error creating: pods "exp-expert-1-x" is forbidden: exceeded quota: lab, requested: nvidia.com/gpu=1'
    w = World()
    w.step(config)
    w.running("expert")["metadata"]["creationTimestamp"] = w.now.strftime("%Y-%m-%dT%H:%M:%SZ")  # the apiserver's
    d = step(w, quota)
    assert not d.delete and d.status["stages"]["expert"]["message"] == f"cannot start: FailedCreate: {quota}"
    w.now += dt.timedelta(seconds=121)
    d = step(w, quota)
    assert d.delete and "could not start within 120s" in d.status["stages"]["expert"]["message"]
    assert d.status["stages"]["expert"]["state"] == "Pending"  # retried, as any start problem


def test_jobs_of_a_deleted_experiment_of_the_same_name_are_never_adopted():
    w = World()
    w.step()
    old = w.running("expert")
    # the experiment is deleted and applied again at once: a new uid, the old Job not yet collected
    w.body["metadata"]["uid"] = "uid-2"
    w.body.pop("status")
    d = w.step()
    (made,) = [o for o in d.create if o["kind"] == "Job"]
    assert made["metadata"]["ownerReferences"][0]["uid"] == "uid-2"
    assert made["metadata"]["name"] != old["metadata"]["name"]  # its own name: no 409 against the old Job
    assert w.stage("expert")["state"] == "Running" and w.stage("expert")["attempts"] == 1
    # the old Job finishing (or failing) changes nothing for the new experiment
    old["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    w.step()
    assert w.stage("expert")["state"] == "Running" and w.stage("expert")["job"] == made["metadata"]["name"]


def test_a_failed_job_is_counted_once_however_often_its_event_is_told():
    import asyncio

    from tratree_operator import metrics
    from tratree_operator.controller import Controller
    from tratree_operator.types import Decision, Event

    class Kube:
        async def patch_status(self, ns, name, version, patch):
            """The status write (lost or not, the next pass tells the same story)."""
            return {"metadata": {"namespace": ns, "name": name, "resourceVersion": str(int(version) + 1)}}

        async def post_event(self, body, event):
            self.posted = [*getattr(self, "posted", []), event.reason]

    kube = Kube()
    controller = Controller(kube, OperatorConfig())
    body = {"metadata": {"namespace": "ns", "name": "exp", "resourceVersion": "1"}, "status": {}}
    counter = metrics.JOB_FAILURES.labels("sft-weak")
    before = counter._value.get()

    def told(attempts: int, reason: str) -> Decision:
        entry = {"state": "Running" if reason == "StageAttemptFailed" else "Failed", "key": "k", "attempts": attempts}
        return Decision(status={"phase": "Running", "stages": {"sft-weak": entry}},
                        events=[Event("Warning", reason, "m", "sft-weak")])

    async def passes() -> None:
        for attempts, reason in ((1, "StageAttemptFailed"), (1, "StageAttemptFailed"), (2, "StageFailed"),
                                 (2, "StageFailed")):
            await controller.apply(body, told(attempts, reason))

    asyncio.run(passes())
    assert counter._value.get() - before == 2  # two Jobs failed; their Events were told four times
    assert kube.posted.count("StageFailed") == 2  # the Events themselves still go out as told


def failed_world(ttl_gone: bool) -> World:
    """An experiment whose sft-weak failed both attempts (retries 1); its Jobs gone when ``ttl_gone``."""
    w = World()
    w.manifests = {"expert": manifest("expert"), "tokenizer": manifest("tokenizer")}
    w.step()
    for attempt in (1, 2):
        w.finish("sft-weak", ok=False)
        w.step()
        w.now += dt.timedelta(seconds=30 * attempt)
        w.step()
    assert w.stage("sft-weak")["state"] == "Failed" and w.body["status"]["phase"] == "Failed"
    if ttl_gone:
        w.jobs = {n: j for n, j in w.jobs.items() if j["metadata"]["labels"][LABEL_STAGE] != "sft-weak"}
        w.step()
        assert w.stage("sft-weak")["state"] == "Failed"  # a verdict without its Jobs still stands
    return w


@pytest.mark.parametrize("ttl_gone", [False, True])
def test_a_retry_annotation_retries_only_the_failed_stages_whatever_jobs_remain(ttl_gone):
    w = failed_world(ttl_gone)
    w.body["metadata"]["annotations"] = {"tratree.io/retry": "1700000000"}
    d = w.step()
    job = w.running("sft-weak")
    assert job["metadata"]["labels"][LABEL_ATTEMPT] == "3"  # on from where it stopped: no attempt replayed
    assert "StageRetriedByUser" in [e.reason for e in d.events] and d.status["retried"] == "1700000000"
    assert d.status["phase"] == "Running" and w.stage("expert")["state"] == "Cached"
    # it gets its retries again: one failure retries, the next fails
    w.finish("sft-weak", ok=False)
    w.step()
    assert w.stage("sft-weak")["state"] == "Pending" and "attempt 3 of 4" in w.stage("sft-weak")["message"]
    # the same annotation again is not a new retry
    w.now += dt.timedelta(seconds=60)
    w.step()
    w.finish("sft-weak", ok=False)
    w.step()
    assert w.stage("sft-weak")["state"] == "Failed" and not w.step().create
    # a finished stage runs on to the end once retried again
    w.body["metadata"]["annotations"] = {"tratree.io/retry": "1700000100"}
    w.step()
    w.run_all()
    assert w.body["status"]["phase"] == "Succeeded"


@pytest.mark.parametrize("ttl_gone", [False, True])
def test_raising_retries_retries_a_failed_stage_even_when_its_jobs_are_gone(ttl_gone):
    w = failed_world(ttl_gone)
    w.body["spec"] = spec(kubernetes={"stages": {"sft": {"retries": 2}}})
    w.now += dt.timedelta(seconds=300)
    w.step()
    assert w.running("sft-weak")["metadata"]["labels"][LABEL_ATTEMPT] == "3"


def test_a_spec_outside_the_admin_policy_is_refused_with_a_condition_and_no_job():
    policy = {"imagePrefixes": ["registry.lab/"], "serviceAccounts": ["trainer"], "secrets": ["team-s3"],
              "tolerations": False}
    config = OperatorConfig(retryBackoffSeconds=10, policy=policy, namespacePolicies={"admins": {}})
    chosen = {"serviceAccount": "cluster-admin", "s3Secret": "other-teams-s3",
              "tolerations": [{"key": "gpu", "operator": "Exists"}],
              "stages": {"sft": {"image": "docker.io/anyone/miner:1"}, "dpo": {"image": "registry.lab/trainer:2"}}}
    w = World(spec(kubernetes=chosen))
    d = w.step(config)
    assert not d.create and d.status["phase"] == "Failed"
    cond = next(c for c in d.status["conditions"] if c["type"] == "SpecValid")
    assert cond["status"] == "False" and cond["reason"] == "PolicyViolation"
    for part in ("spec.kubernetes.serviceAccount: 'cluster-admin' is not allowed here (allowed: trainer)",
                 "spec.kubernetes.s3Secret: 'other-teams-s3'", "spec.kubernetes.stages.sft.image",
                 "spec.kubernetes.tolerations"):
        assert part in cond["message"], part
    assert "stages.dpo.image" not in cond["message"]  # under an allowed prefix
    assert [e.reason for e in d.events] == ["PolicyViolation"]
    # what the policy allows runs; a namespace with its own (open) policy allows the rest
    w = World(spec(kubernetes={"serviceAccount": "trainer", "s3Secret": "team-s3",
                               "stages": {"sft": {"image": "registry.lab/trainer:2"}}}))
    assert [o["kind"] for o in w.step(config).create] == ["ConfigMap", "Job"]
    w = World(spec(kubernetes=chosen))
    w.body["metadata"]["namespace"] = "admins"
    assert w.step(config).create


def test_volume_sources_are_the_admins_to_allow_hostpath_and_nfs_refused_by_default():
    def refused(volumes: list[dict[str, Any]], **policy: Any) -> str:
        d = World(spec(kubernetes={"volumes": volumes})).step(OperatorConfig(policy=policy))
        cond = next((c for c in d.status.get("conditions", []) if c["type"] == "SpecValid"), {})
        assert bool(d.create) == (cond.get("status") != "False")
        return cond.get("message", "") if cond.get("reason") == "PolicyViolation" else ""

    node = [{"name": "n", "hostPath": {"path": "/etc"}}]
    assert refused(node).startswith("spec.kubernetes.volumes[0].hostPath.path: '/etc' is not allowed here "
                                    "(hostPath volumes are refused")
    share = [{"name": "pvc", "persistentVolumeClaim": {"claimName": "lab"}}, {"name": "cm", "configMap": {"name": "c"}},
             {"name": "s", "nfs": {"server": "nfs.evil.org", "path": "/"}}]
    assert refused(share).startswith("spec.kubernetes.volumes[2].nfs.server: 'nfs.evil.org'")  # PVC, ConfigMap: fine
    assert refused(share, nfsServers=["nfs.lab"]).endswith("(allowed: nfs.lab)")
    assert refused(share, nfsServers=["nfs.evil.org"]) == ""
    # a prefix is a folder: what is under it, not a sibling sharing its letters, and no way out by ".."
    lab = {"hostPathPrefixes": ["/data/lab/"]}
    for path, ok in (("/data/lab", True), ("/data/lab/a/b", True), ("/data/lab2", False),
                     ("/data/lab/../../etc", False), ("//data//lab/x", True)):
        assert (refused([{"name": "h", "hostPath": {"path": path}}], **lab) == "") == ok, path


@pytest.mark.parametrize(("kubernetes", "artifacts", "refused"), [
    ({}, "file://./artifacts", "every stage runs in a fresh Pod"),
    ({}, "file:///data/store", "every stage runs in a fresh Pod"),
    ({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}],
      "volumeMounts": [{"name": "d", "mountPath": "/data", "readOnly": True}]}, "file:///data/store", "read-only"),
    ({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}],
      "volumeMounts": [{"name": "d", "mountPath": "/data"}]}, "file:///data/store", None),
    ({}, "s3://bucket/exp", None),
])
def test_a_file_store_must_be_on_a_volume_every_stage_mounts(kubernetes, artifacts, refused):
    w = World(spec(artifacts=artifacts, kubernetes=kubernetes))
    d = w.step()
    cond = next(c for c in d.status["conditions"] if c["type"] == "SpecValid")
    if refused:
        assert cond["reason"] == "StoreNotShared" and refused in cond["message"] and not d.create
    else:
        assert cond["status"] == "True" and d.create
        job = next(o for o in d.create if o["kind"] == "Job")["spec"]["template"]["spec"]
        assert {"name": "d", "persistentVolumeClaim": {"claimName": "c", "readOnly": False}} in job["volumes"] \
            or not kubernetes


def test_cpu_only_stages_of_gpu_kinds_ask_for_no_gpu():
    w = World(spec(methods=["sft-weak"]))
    w.manifests = {"expert": manifest("expert")}
    d = w.step()
    tokenizer = next(o for o in d.create if o["kind"] == "Job")
    assert tokenizer["metadata"]["labels"][LABEL_STAGE] == "tokenizer"
    res = tokenizer["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in res["requests"] and res["requests"]["memory"] == "4Gi"


def test_volume_mounts_must_name_volumes_and_keep_off_the_pods_own_paths():
    from pydantic import ValidationError

    from tratree.spec.experiment import KubernetesSpec

    with pytest.raises(ValidationError, match="'x' is not one of volumes"):
        KubernetesSpec.model_validate({"volumeMounts": [{"name": "x", "mountPath": "/data"}]})
    for path in ("/work", "/work/x", "/dev/shm", "/", "/spec"):
        with pytest.raises(ValidationError, match="overlaps the stage Pod's own"):
            KubernetesSpec.model_validate({"volumes": [{"name": "d", "nfs": {"server": "s", "path": "/p"}}],
                                           "volumeMounts": [{"name": "d", "mountPath": path}]})
    with pytest.raises(ValidationError, match="exactly one of"):
        KubernetesSpec.model_validate({"volumes": [{"name": "d"}]})


def test_the_spec_configmap_is_written_when_its_content_changes_not_with_every_job():
    import asyncio

    from tratree_operator.controller import Controller
    from tratree_operator.types import Decision

    class Kube:
        def __init__(self):
            self.written: list[str] = []

        async def apply_configmap(self, manifest):
            self.written.append(manifest["data"]["experiment.yaml"])

        async def create(self, manifest):
            return manifest  # as the apiserver made it

        async def patch_status(self, ns, name, version, patch):
            """Status writes are not counted here."""
            return {"metadata": {"namespace": ns, "name": name, "resourceVersion": str(int(version) + 1)}}

    kube = Kube()
    controller = Controller(kube, OperatorConfig())
    body = {"metadata": {"namespace": "ns", "name": "exp", "resourceVersion": "1"}, "status": {}}

    def decision(text: str) -> Decision:
        cm = {"kind": "ConfigMap", "data": {"experiment.yaml": text}}
        return Decision(status={"phase": "Running"}, create=[cm, {"kind": "Job", "metadata": {"name": "j"}}])

    async def passes() -> None:
        for text in ("a", "a", "a", "b"):
            await controller.apply(body, decision(text))
        # deleted and applied again under the same name: the same content, a new owner
        body["metadata"]["uid"] = "new"
        await controller.apply(body, decision("b"))

    asyncio.run(passes())
    assert kube.written == ["a", "b", "b"]


def test_a_new_store_replans_every_stage_against_it():
    w = World()
    w.step()
    w.finish("expert")
    w.manifests = {"expert": manifest("expert")}
    w.step()
    assert w.stage("expert")["state"] == "Succeeded" and w.running("tokenizer")
    w.body["spec"] = spec(artifacts="s3://another-bucket/exp")
    w.body["metadata"]["generation"] = 2
    w.manifests = {}  # the new store has nothing yet
    d = w.step()
    assert {e.reason for e in d.events} >= {"StageReplanned"}
    # nothing is taken as done in a store that does not have it: expert runs again there, and the
    # tokenizer Job running against the old store is stopped
    assert w.stage("expert")["state"] == "Running" and w.running("expert")
    assert not [j for j in w.jobs.values() if j["metadata"]["labels"][LABEL_STAGE] == "tokenizer"
                and not (j.get("status") or {}).get("conditions")]
    # a store that has the outputs: Cached
    w2 = World(spec(artifacts="s3://another-bucket/exp"))
    w2.manifests = {"expert": manifest("expert")}
    assert w2.step() and w2.stage("expert")["state"] == "Cached"
