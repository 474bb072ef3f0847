"""Benchmark of the operator on the real Kubernetes control plane (the one the tests start).

    python bench/operator_kubernetes.py [--experiments 100]

kube-apiserver, etcd, kube-controller-manager and kube-scheduler on loopback (built by
`make cluster`), a node agent whose Pods succeed at once, and the operator under the chart's
ServiceAccount and RBAC. Each experiment is the miniature all-methods graph (24 stages, so 24
Jobs and 24 Pods through the real Job controller and scheduler). Reported: time from applying
them all to all Succeeded, the operator's API requests per experiment (from the apiserver's
audit log, watches included), the operator's peak resident memory, and the CPU seconds
kube-apiserver and etcd spent.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.cluster.controlplane import control_plane  # noqa: E402
from tests.e2e.cluster.harness import peak_rss_mib, print_operator_benchmark  # noqa: E402
from tests.e2e.cluster.node import NodeAgent  # noqa: E402
from tests.e2e.test_kubernetes import FAST, OPERATOR_NS, Operator, install  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(count: int) -> dict[str, float]:
    base = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp, control_plane(Path(tmp) / "kube") as kube, \
            NodeAgent(kube, Path(tmp) / "node", instant=True, gpus=10_000):
        config = install(kube)
        kube.kubectl("create", "namespace", "bench")
        kube.wait_for(lambda: kube.kubectl("-n", "bench", "get", "sa", "default", "-o", "name", check=False), 60, "sa")
        op = Operator(kube, Path(tmp), kube.service_account_kubeconfig(OPERATOR_NS, "tratree"),
                      {**config, **FAST, "resyncSeconds": 30}, ("--peering=tratree",))
        time.sleep(5)  # the operator is up and watching
        procs = {name: p.pid for name, p in kube.procs}
        cpu0 = {name: cpu_seconds(procs[name]) for name in ("kube-apiserver", "etcd")}
        user = f"system:serviceaccount:{OPERATOR_NS}:tratree"
        before = len(kube.requests_by(user))
        docs = []
        for i in range(count):
            m = copy.deepcopy(base)
            m["metadata"] = {"name": f"exp-{i:03d}", "namespace": "bench"}
            m["spec"]["artifacts"] = f"file://{tmp}/store"
            m["spec"]["kubernetes"] = {"volumes": [{"name": "store", "hostPath": {"path": str(tmp)}}],
                                       "volumeMounts": [{"name": "store", "mountPath": str(tmp)}]}
            docs.append(m)
        t0 = time.monotonic()
        kube.apply(docs)
        deadline = t0 + 3600
        while True:
            phases = collections.Counter(e.get("status", {}).get("phase") for e in kube.list("w2sg", "bench"))
            if phases.get("Succeeded") == count:
                break
            if time.monotonic() > deadline or op.proc.poll() is not None:
                raise SystemExit(f"not all Succeeded: {phases}\n{op.log()[-2000:]}")
            time.sleep(2)
        elapsed = time.monotonic() - t0
        requests = kube.requests_by(user)[before:]
        cpu = {name: cpu_seconds(procs[name]) - cpu0[name] for name in cpu0}
        rss = peak_rss_mib(op.proc.pid)
        jobs = len(kube.list("jobs", "bench"))
        op.stop()
    return {"experiments": count, "jobs": jobs, "seconds": elapsed, "requests": len(requests),
            "by_verb": dict(collections.Counter(e["verb"] for e in requests)), "rss": rss, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=100)
    r = run(parser.parse_args().experiments)
    print_operator_benchmark(f"operator on a real control plane: {r['experiments']} experiments × 24 stages, "
                             "Pods that succeed at once", r,
                             {"kube-apiserver CPU": f"{r['cpu']['kube-apiserver']:.1f} s",
                              "etcd CPU": f"{r['cpu']['etcd']:.1f} s"})

if __name__ == "__main__":
    main()
