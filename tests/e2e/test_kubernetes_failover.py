"""Two operator replicas on the real control plane: only the active one writes; when it dies
mid-run, the standby finishes the experiment without making any Job twice."""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections import Counter

import pytest

from tests.e2e.test_kubernetes import FAST, OPERATOR_NS, Operator, diagnose, experiment, install, namespace, s3_secret
from tests.e2e.test_kubernetes import status as status_of
from tratree_operator.peering import active_among

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()}


def test_kopfs_rule_decides_who_acts():
    assert active_among({}, "me", 5, NOW)
    assert active_among({"me": peer(5, 0), "low": peer(1, 0)}, "me", 5, NOW)
    assert not active_among({"me": peer(5, 0), "high": peer(9, 0)}, "me", 5, NOW)
    assert not active_among({"me": peer(5, 0), "twin": peer(5, 0)}, "me", 5, NOW)  # kopf pauses both
    assert active_among({"me": peer(5, 0), "dead": peer(9, 61)}, "me", 5, NOW)  # past its lifetime


def test_concurrent_reconciles_share_one_read_of_the_peering_object():
    """A hundred reconciles asking at once cost one list of the peering object, not a hundred (at 100
    experiments they did: 5 lists per experiment); once its answer is out of date, one more."""
    import asyncio

    from tratree_operator.peering import Peering

    class Kube:
        reads = 0

        async def peering_object(self, name, namespace):
            Kube.reads += 1
            await asyncio.sleep(0.05)
            return {"status": {"me": {"priority": 5, "lifetime": 60, "lastseen": dt.datetime.now(dt.UTC).isoformat()},
                               "high": {"priority": 9, "lifetime": 60, "lastseen": dt.datetime.now(dt.UTC).isoformat()}}}

    async def ask() -> tuple[list[bool], list[bool]]:
        peering = Peering(Kube(), "tratree", "me", 5, clusterwide=True, ttl=0.2)
        first = await asyncio.gather(*(peering.active("bench") for _ in range(100)))
        await asyncio.sleep(0.3)
        return first, await asyncio.gather(*(peering.active("other") for _ in range(100)))

    first, later = asyncio.run(ask())
    assert first == later == [False] * 100  # a live peer of higher priority: this replica waits
    assert Kube.reads == 2


def test_a_paused_replica_writes_nothing_and_takes_over_without_duplicates(kube, tmp_path, s3_env):
    """B runs alone and starts the experiment; A (higher priority) joins and B pauses: from then on
    B writes nothing, its own queue included; A is killed mid-run and B finishes."""
    config = install(kube)
    kube.apply({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "failover"}})
    users = {}
    for replica in ("replica-a", "replica-b"):
        kube.kubectl("-n", OPERATOR_NS, "create", "serviceaccount", replica, check=False)
        kube.kubectl("create", "clusterrolebinding", replica, "--clusterrole=tratree",
                     f"--serviceaccount={OPERATOR_NS}:{replica}", check=False)
        users[replica] = f"system:serviceaccount:{OPERATOR_NS}:{replica}"
    common = ("--peering=failover", "--peering-lifetime=8")
    ns = namespace(kube, "failover")
    s3_secret(kube, ns)

    def writes(user: str, since: str = "") -> list[dict]:
        return [e for e in kube.requests_by(user) if e["verb"] in ("create", "patch", "update", "delete")
                and e["objectRef"]["resource"] != "clusterkopfpeerings" and e["objectRef"].get("namespace") == ns
                and e["requestReceivedTimestamp"] > since]

    def wait_for(what, message: str, operator: Operator) -> None:
        deadline = time.monotonic() + 300
        while not what():
            assert time.monotonic() < deadline, f"{message}\n{diagnose(kube, ns, operator)}"
            time.sleep(0.3)

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    b = Operator(kube, tmp_path / "b", kube.service_account_kubeconfig(OPERATOR_NS, "replica-b"),
                 {**config, **FAST}, (*common, "--priority=1"))
    a = None
    try:
        kube.apply(experiment("ha", s3_env), "-n", ns)
        wait_for(lambda: writes(users["replica-b"]), "B, alone, starts the experiment", b)
        a = Operator(kube, tmp_path / "a", kube.service_account_kubeconfig(OPERATOR_NS, "replica-a"),
                     {**config, **FAST}, (*common, "--priority=100"))
        wait_for(lambda: "Pausing operations" in b.log(), "B pauses for A", b)
        paused = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        wait_for(lambda: status_of(kube, "ha", ns).get("stages", {}).get("eval-sft-weak-s0", {}).get("state")
                 in ("Running", "Succeeded"), "A carries the experiment on", a)
        assert writes(users["replica-a"]), "A made the later Jobs"
        assert writes(users["replica-b"], since=paused) == [], [e["requestURI"] for e in writes(users["replica-b"], paused)]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        killed = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        wait_for(lambda: status_of(kube, "ha", ns).get("phase") == "Succeeded", "B finishes", b)
        assert writes(users["replica-b"], since=killed), "B took over"
        made = Counter(e["objectRef"]["name"] for user in users.values() for e in kube.requests_by(user)
                       if e["verb"] == "create" and e["objectRef"]["resource"] == "jobs"
                       and e.get("responseStatus", {}).get("code") == 201)
        assert made and max(made.values()) == 1, made
        kube.kubectl("-n", ns, "delete", "w2sg", "ha")
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()
