"""The real operator (a `python -m tratree_operator` subprocess) against the emulated apiserver.

Everything a cluster does runs on the real control plane (tests/test_kubernetes*.py). Two things
stay here, where the emulator is the right tool: injected API faults (409 conflicts, 500 and 503
answers on chosen calls, which a real apiserver cannot be made to give on cue), and the whole
24-stage miniature in dependency order with the operator's metrics and liveness endpoints, for
which the emulator's kubelet finishes Jobs without running them (on the real cluster each stage
is a real training or evaluation process: minutes instead of seconds).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.cluster.harness import cluster
from tests.e2e.cluster.kubelet import Kubelet, always
from tratree.pipeline.graph import plan
from tratree.spec.experiment import parse_experiment
from tratree_operator.jobs import configmap_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def shared_store(tmp: Path) -> dict[str, Any]:
    """A file:// store on a volume every stage Pod mounts (a hostPath here), as a cluster needs it."""
    return {"volumes": [{"name": "store", "hostPath": {"path": str(tmp)}}],
            "volumeMounts": [{"name": "store", "mountPath": str(tmp)}]}


def small(tmp: Path, name: str = "small", **spec: Any) -> dict[str, Any]:
    """A five-stage experiment: expert, tokenizer, sft-weak, its evaluation, the report."""
    kubernetes = {**shared_store(tmp), **spec.pop("kubernetes", {})}
    body = {"weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"}, "methods": ["sft-weak"],
            "artifacts": f"file://{tmp}/store", "kubernetes": kubernetes, **spec}
    return {"apiVersion": "tratree.io/v1alpha1", "kind": "W2SGExperiment", "metadata": {"name": name}, "spec": body}


def stage_of(job: dict[str, Any]) -> str:
    return job["metadata"]["labels"]["tratree.io/stage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_full_experiment_runs_every_stage_in_dependency_order(tmp_path):
    manifest = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    manifest["spec"]["artifacts"] = f"file://{tmp_path}/store"
    manifest["spec"]["kubernetes"] = shared_store(tmp_path)
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
        # one Event per stage, for its outcome: a first start is in the status and the Job's own Events
        assert reasons.count("StageSucceeded") == len(stages) and "StageStarted" not in reasons
        assert reasons[-1] == "ExperimentSucceeded"
        cm = c.api.get("configmaps", "default", configmap_name("mini", c.experiment("mini")["metadata"]["uid"]))
        assert cm["metadata"]["ownerReferences"][0]["name"] == "mini"
        assert not c.experiment("mini")["metadata"].get("finalizers")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics}/metrics") as r:
                text = await r.text()
            async with http.get(f"http://127.0.0.1:{health}/healthz") as r:
                assert r.status == 200
        assert 'tratree_experiments{phase="Succeeded"} 1.0' in text
        assert f"tratree_jobs_created_total {float(len(stages))}" in text


async def test_api_conflicts_transient_errors_and_a_refused_token_are_retried(tmp_path):
    async with cluster(tmp_path, start=False) as c, Kubelet(c.api, always("succeed")):
        # a 401 is a token that expired or was rotated: the operator logs in again and repeats the call
        c.api.faults += [("patch", "w2sgexperiments", "status", 409), ("create", "jobs", None, 503),
                         ("patch", "w2sgexperiments", "status", 500), ("create", "jobs", None, 500),
                         ("create", "jobs", None, 401), ("create", "configmaps", None, 429)]
        await c.start_operator()
        await c.apply(small(tmp_path))
        await c.wait_phase("small", "Succeeded", 90)
        assert not c.api.faults, "every fault was hit"
        assert "failed; again in" not in c.log(), "each fault was retried within its call, no pass failed"
        stages = [stage_of(j) for j in c.jobs("small")]
        assert sorted(stages) == sorted(set(stages))
