"""Chaos on the real control plane: the operator, kube-apiserver, etcd, kube-controller-manager and
kube-scheduler are SIGKILLed at random moments (and brought back) while several experiments run. Each
must still end Succeeded with exactly one Job per stage and one attempt per stage: no crash of any part
may make the operator repeat work, lose a transition or count a failure that did not happen."""

from __future__ import annotations

import collections
import time

import pytest

from tests.e2e.cluster.chaos import Chaos
from tests.e2e.test_kubernetes import FAST, OPERATOR_NS, Operator, experiment, install, namespace, s3_secret

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NS = "chaos"


def test_experiments_survive_random_kills_of_every_control_plane_part_with_one_job_and_attempt_per_stage(
        kube, s3_env, tmp_path):
    config = install(kube)
    op = Operator(kube, tmp_path, kube.service_account_kubeconfig(OPERATOR_NS, "tratree"), {**config, **FAST},
                  ("--peering=tratree",))
    names = [f"run-{i}" for i in range(3)]
    chaos = Chaos(kube, op, kills=15, seed=25, gap=(1.0, 4.0), outage=(0.0, 2.0))
    try:
        namespace(kube, NS)
        s3_secret(kube, NS)
        kube.apply([experiment(n, s3_env) for n in names], "-n", NS)
        chaos.start()
        deadline = time.monotonic() + 900
        phases: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            # kubectl fails while the apiserver or etcd is down: that is the point
            out = kube.kubectl_run("-n", NS, "get", "w2sg", "-o", "jsonpath={range .items[*]}{.metadata.name}="
                                   "{.status.phase}{'\\n'}{end}")
            if out.returncode == 0:
                phases = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
                if not chaos.is_alive() and all(phases.get(n) == "Succeeded" for n in names):
                    break
            time.sleep(2)
        chaos.stop()
        assert not chaos.errors, chaos.errors
        assert len(chaos.done) == 15 and {c for _, c in chaos.done} >= {"operator", "kube-apiserver", "etcd"}, chaos.done
        assert all(phases.get(n) == "Succeeded" for n in names), f"{phases}\nkills: {chaos.done}\n{op.log()[-3000:]}"
        for name in names:
            st = kube.get("w2sg", name, NS)["status"]
            assert {s: e["attempts"] for s, e in st["stages"].items()} == dict.fromkeys(st["stages"], 1), st["stages"]
            jobs = kube.list("jobs", NS, f"tratree.io/experiment={name}")
            made = collections.Counter(j["metadata"]["labels"]["tratree.io/stage"] for j in jobs)
            assert made == collections.Counter(list(st["stages"])), (name, made, chaos.done)
    finally:
        chaos.stop()
        op.stop()
        kube.kubectl("-n", NS, "delete", "w2sg", "--all", check=False)
