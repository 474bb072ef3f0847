"""The real operator (a `python -m tratree_operator` subprocess) against the emulated apiserver.

A test kubelet plays the nodes: it marks Jobs succeeded or failed, or holds them running.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.cluster.harness import cluster
from tests.cluster.kubelet import Kubelet, always
from tratree.pipeline import plan
from tratree.spec import parse_experiment

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def small(tmp: Path, name: str = "small", **spec: Any) -> dict[str, Any]:
    """A five-stage experiment: expert, tokenizer, sft-weak, its evaluation, the report."""
    body = {"weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"}, "methods": ["sft-weak"],
            "artifacts": f"file://{tmp}/store", **spec}
    return {"apiVersion": "tratree.io/v1alpha1", "kind": "W2SGExperiment", "metadata": {"name": name}, "spec": body}


def stage_of(job: dict[str, Any]) -> str:
    return job["metadata"]["labels"]["tratree.io/stage"]


def hold(*stages: str):
    """Succeed every Job except those of ``stages``, which stay running while the set is non-empty."""
    held = set(stages)

    def decide(job: dict[str, Any]) -> str:
        return "hold" if stage_of(job) in held else "succeed"

    return decide, held


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_full_experiment_runs_every_stage_in_dependency_order(tmp_path):
    manifest = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    manifest["spec"]["artifacts"] = f"file://{tmp_path}/store"
    metrics, health = free_port(), free_port()
    async with cluster(tmp_path, operator_args=("--metrics-port", str(metrics), "--liveness",
                                                f"http://127.0.0.1:{health}/healthz")) as c, \
            Kubelet(c.api, always("succeed")) as kubelet:
        await c.apply(manifest)
        status = await c.wait_phase("mini", "Succeeded", 120)
        stages = plan(parse_experiment(manifest).spec)
        finished = [stage_of(c.api.get("jobs", "default", n)) for n in kubelet.finished]
        assert sorted(finished) == sorted(s.name for s in stages)  # one Job per stage, none twice
        for s in stages:
            for dep in s.inputs:
                assert finished.index(dep) < finished.index(s.name), f"{s.name} ran before {dep}"
        assert all(e["state"] == "Succeeded" for e in status["stages"].values())
        assert "kopf" not in status  # kopf's bookkeeping stays in annotations: a real apiserver would prune it
        assert status["observedGeneration"] == 1
        conds = {x["type"]: x["status"] for x in status["conditions"]}
        assert conds["SpecValid"] == conds["Succeeded"] == "True" and conds["Failed"] == "False"
        reasons = await c.wait_event("mini", "ExperimentSucceeded")
        assert reasons.count("StageStarted") == len(stages) and reasons.count("StageSucceeded") == len(stages)
        assert reasons[-1] == "ExperimentSucceeded"
        cm = c.api.get("configmaps", "default", "mini-spec")
        assert cm["metadata"]["ownerReferences"][0]["name"] == "mini"
        assert not c.experiment("mini")["metadata"].get("finalizers")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics}/metrics") as r:
                text = await r.text()
            async with http.get(f"http://127.0.0.1:{health}/healthz") as r:
                assert r.status == 200
        assert 'tratree_experiments{phase="Succeeded"} 1.0' in text
        assert f"tratree_jobs_created_total {float(len(stages))}" in text


async def test_an_operator_restart_mid_run_resumes_without_duplicates(tmp_path):
    decide, held = hold("sft-weak")
    async with cluster(tmp_path) as c, Kubelet(c.api, decide) as kubelet:
        await c.apply(small(tmp_path))
        await c.wait(lambda: c.status("small").get("stages", {}).get("sft-weak", {}).get("state") == "Running",
                     60, "sft-weak to run")
        await c.stop_operator(kill=True)
        held.clear()  # the stage finishes while no operator watches
        await c.wait(lambda: len(kubelet.finished) == 3, 30, "sft-weak to finish")
        await c.start_operator()
        await c.wait_phase("small", "Succeeded", 60)
        stages = [stage_of(j) for j in c.jobs("small")]
        assert sorted(stages) == sorted(set(stages)), f"a Job was made twice: {stages}"
        assert "StageSucceeded" in [e["reason"] for e in c.events("small") if "sft-weak" in e["message"]]


async def test_a_job_deleted_mid_run_is_made_again_as_the_next_attempt(tmp_path):
    decide, held = hold("tokenizer")
    async with cluster(tmp_path) as c, Kubelet(c.api, decide):
        await c.apply(small(tmp_path))
        job = await c.wait(lambda: next((j for j in c.jobs("small") if stage_of(j) == "tokenizer"), None), 60)
        name = job["metadata"]["name"]
        async with c.api.delete(f"/apis/batch/v1/namespaces/default/jobs/{name}") as r:
            assert r.status == 200
        await c.wait(lambda: "JobRecreated" in c.reasons("small"), 30, "the Job to be made again")
        again = [j for j in c.jobs("small") if stage_of(j) == "tokenizer"]
        assert [j["metadata"]["labels"]["tratree.io/attempt"] for j in again] == ["2"]  # the next attempt
        held.clear()
        await c.wait_phase("small", "Succeeded", 60)


async def test_a_failing_stage_is_retried_then_fails_the_experiment_and_nothing_after_it_starts(tmp_path):
    def decide(job):
        return "fail" if stage_of(job) == "sft-weak" else "succeed"

    async with cluster(tmp_path) as c, Kubelet(c.api, decide):
        await c.apply(small(tmp_path, kubernetes={"stages": {"sft": {"retries": 1}}}))
        status = await c.wait_phase("small", "Failed", 60)
        entry = status["stages"]["sft-weak"]
        assert entry["state"] == "Failed" and entry["attempts"] == 2 and "BackoffLimitExceeded" in entry["message"]
        assert status["stages"]["eval-sft-weak-s0"]["state"] == "Pending"
        assert sorted(stage_of(j) for j in c.jobs("small")) == ["expert", "sft-weak", "sft-weak", "tokenizer"]
        failed = next(x for x in status["conditions"] if x["type"] == "Failed")
        assert failed["status"] == "True" and "sft-weak" in failed["message"]
        reasons = await c.wait_event("small", "ExperimentFailed")
        assert {"StageAttemptFailed", "StageRetried", "StageFailed", "ExperimentFailed"} <= set(reasons)


async def test_an_invalid_spec_is_reported_and_makes_no_job(tmp_path):
    bad = small(tmp_path, name="bad", training={"sft": {"learningRate": -1}})
    async with cluster(tmp_path) as c, Kubelet(c.api, always("succeed")):
        await c.apply(bad)
        status = await c.wait_phase("bad", "Failed", 30)
        cond = next(x for x in status["conditions"] if x["type"] == "SpecValid")
        assert cond["status"] == "False" and "spec.training.sft.learningRate" in cond["message"]
        await c.wait_event("bad", "InvalidSpec")
        assert c.jobs("bad") == []


async def test_a_mid_run_edit_reruns_only_the_changed_stages(tmp_path):
    decide, held = hold("eval-sft-weak-s0")
    async with cluster(tmp_path) as c, Kubelet(c.api, decide):
        manifest = small(tmp_path)
        await c.apply(manifest)
        old = await c.wait(lambda: next((j for j in c.jobs("small") if stage_of(j) == "eval-sft-weak-s0"), None), 60)
        await c.wait(lambda: c.status("small")["stages"]["eval-sft-weak-s0"]["state"] == "Running", 30)
        edited = copy.deepcopy(manifest)
        edited["spec"]["evaluation"] = {"temperature": 0.5}
        await c.apply(edited)
        await c.wait(lambda: c.api.get("jobs", "default", old["metadata"]["name"]) is None, 30, "the old Job to go")
        held.clear()
        status = await c.wait_phase("small", "Succeeded", 60)
        assert status["observedGeneration"] == 2
        stages = sorted(stage_of(j) for j in c.jobs("small"))
        assert stages == ["eval-sft-weak-s0", "expert", "report", "sft-weak", "tokenizer"]
        assert "StageReplanned" in c.reasons("small")
        assert "temperature: 0.5" in c.api.get("configmaps", "default", "small-spec")["data"]["experiment.yaml"]


async def test_deleting_the_experiment_takes_its_jobs_and_configmap(tmp_path):
    decide, _ = hold("sft-weak")
    async with cluster(tmp_path) as c, Kubelet(c.api, decide):
        await c.apply(small(tmp_path))
        await c.wait(lambda: any(stage_of(j) == "sft-weak" for j in c.jobs("small")), 60)
        await c.delete("small")
        assert c.experiment("small") is None  # no finalizer held it
        assert c.jobs("small") == [] and c.api.get("configmaps", "default", "small-spec") is None
        assert "Traceback" not in c.log()


async def test_suspend_stops_new_jobs_and_resuming_continues(tmp_path):
    async with cluster(tmp_path) as c, Kubelet(c.api, always("succeed")):
        manifest = small(tmp_path, suspend=True)
        await c.apply(manifest)
        status = await c.wait(lambda: c.status("small").get("conditions") and c.status("small"), 30)
        assert c.jobs("small") == [] and status["phase"] == "Pending"
        assert next(x for x in status["conditions"] if x["type"] == "Progressing")["reason"] == "Suspended"
        manifest["spec"]["suspend"] = False
        await c.apply(manifest)
        await c.wait_phase("small", "Succeeded", 60)


async def test_api_conflicts_and_transient_errors_are_retried(tmp_path):
    async with cluster(tmp_path, start=False) as c, Kubelet(c.api, always("succeed")):
        c.api.faults += [("patch", "w2sgexperiments", "status", 409), ("create", "jobs", None, 503),
                         ("patch", "w2sgexperiments", "status", 500), ("create", "jobs", None, 500)]
        await c.start_operator()
        await c.apply(small(tmp_path))
        await c.wait_phase("small", "Succeeded", 90)
        assert not c.api.faults, "every fault was hit"
        stages = [stage_of(j) for j in c.jobs("small")]
        assert sorted(stages) == sorted(set(stages))


async def test_an_operator_killed_again_and_again_never_makes_a_job_twice(tmp_path):
    manifest = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    manifest["spec"]["artifacts"] = f"file://{tmp_path}/store"
    seen: dict[str, float] = {}

    def slow(job: dict[str, Any]) -> str:
        first = seen.setdefault(job["metadata"]["uid"], time.monotonic())
        return "succeed" if time.monotonic() - first > 0.4 else "hold"

    async with cluster(tmp_path) as c, Kubelet(c.api, slow):
        await c.apply(manifest)
        for _ in range(4):
            await asyncio.sleep(1.0)
            await c.stop_operator(kill=True)
            await c.start_operator()
        await c.wait_phase("mini", "Succeeded", 120)
        stages = [stage_of(j) for j in c.jobs("mini")]
        assert sorted(stages) == sorted(set(stages))
        assert len(stages) == len(plan(parse_experiment(manifest).spec))  # one Job per stage, none twice

        assert c.starts == 5
