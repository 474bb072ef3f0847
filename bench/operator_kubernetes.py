"""Benchmark of the operator on the real Kubernetes control plane (the one the tests start).

    python bench/operator_kubernetes.py [--experiments 100] [--chaos KILLS]

kube-apiserver, etcd, kube-controller-manager and kube-scheduler on loopback (built by
`make cluster`; the controller manager and scheduler allowed 200 requests a second, as large clusters
set them, since at their default 20 the Job controller alone would set the pace), a node agent whose
Pods succeed at once, and the operator under the chart's ServiceAccount and RBAC. Each experiment is the miniature all-methods graph (24 stages, so 24
Jobs and 24 Pods through the real Job controller and scheduler). Reported: time from applying
them all to all Succeeded, the operator's API requests per experiment (from the apiserver's
audit log, watches included), the operator's peak resident memory, and the CPU seconds
kube-apiserver and etcd spent. With ``--chaos KILLS``, the operator, kube-apiserver, etcd,
kube-controller-manager and kube-scheduler are SIGKILLed that many times at random moments during the
run (tests/e2e/cluster/chaos.py), and the table also says how many Jobs and attempts each stage took
(exactly one each is the goal).
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
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.cluster.chaos import Chaos  # noqa: E402
from tests.e2e.cluster.controlplane import control_plane  # noqa: E402
from tests.e2e.cluster.harness import peak_rss_mib, print_operator_benchmark  # noqa: E402
from tests.e2e.cluster.node import NodeAgent  # noqa: E402
from tests.e2e.test_kubernetes import FAST, OPERATOR_NS, Operator, install  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(count: int, kills: int = 0) -> dict[str, Any]:
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
        for i in range(0, count, 100):  # one kubectl for a thousand would outlast its timeout
            kube.apply(docs[i:i + 100])
        chaos = Chaos(kube, op, kills, seed=1) if kills else None
        if chaos is not None:
            chaos.start()
        deadline = t0 + 4 * 3600
        # the phases only, and less often the more experiments there are: a poll of whole objects every
        # 2 s would be much of the apiserver's work at 1,000 experiments
        poll = max(2.0, count / 100)
        while True:
            try:
                phases = collections.Counter(kube.kubectl("-n", "bench", "get", "w2sg", "-o",
                                                          "jsonpath={.items[*].status.phase}").split())
            except RuntimeError:  # kubectl failed: the apiserver or etcd is down
                phases = collections.Counter()
            if phases.get("Succeeded") == count and (chaos is None or not chaos.is_alive()):
                break
            if time.monotonic() > deadline or (chaos is None and op.proc.poll() is not None):
                raise SystemExit(f"not all Succeeded: {phases}\n{op.log()[-2000:]}")
            time.sleep(poll)
        elapsed = time.monotonic() - t0
        if chaos is not None:
            chaos.stop()
            if chaos.errors:
                raise SystemExit(f"chaos could not bring a component back: {chaos.errors}")
        procs = {name: p.pid for name, p in kube.procs}  # restarted ones have new pids
        jobs_per_stage = collections.Counter(
            collections.Counter((j["metadata"]["labels"]["tratree.io/experiment"], j["metadata"]["labels"]["tratree.io/stage"])
                                for j in kube.list("jobs", "bench")).values())
        attempts = collections.Counter(e["attempts"] for x in kube.list("w2sg", "bench")
                                       for e in x["status"]["stages"].values())
        requests = kube.requests_by(user)[before:]
        # a killed process's CPU time went with it: under chaos the numbers would be the last process's only
        cpu = {name: cpu_seconds(procs[name]) - cpu0[name] for name in cpu0} if not kills else None
        rss = peak_rss_mib(op.proc.pid)
        jobs = len(kube.list("jobs", "bench"))
        op.stop()
    return {"experiments": count, "jobs": jobs, "seconds": elapsed, "requests": len(requests),
            "by_verb": dict(collections.Counter(e["verb"] for e in requests)), "rss": rss, "cpu": cpu,
            "conflicts": sum(e.get("responseStatus", {}).get("code") == 409 for e in requests),
            "kills": chaos.done if chaos is not None else [], "jobs_per_stage": dict(jobs_per_stage),
            "attempts": dict(attempts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--chaos", type=int, default=0, metavar="KILLS",
                        help="SIGKILL a random control-plane part (or the operator) this many times during the run")
    args = parser.parse_args()
    r = run(args.experiments, args.chaos)
    extra = {"kube-apiserver CPU": f"{r['cpu']['kube-apiserver']:.1f} s", "etcd CPU": f"{r['cpu']['etcd']:.1f} s"} \
        if r["cpu"] else {}
    extra["409s / experiment"] = f"{r['conflicts'] / r['experiments']:.2f}"
    if args.chaos:
        kinds = collections.Counter(name for _, name in r["kills"])
        extra |= {"kills": ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
                  "Jobs per stage": " ".join(f"{k}×{v}" for k, v in sorted(r["jobs_per_stage"].items())),
                  "attempts per stage": " ".join(f"{k}×{v}" for k, v in sorted(r["attempts"].items()))}
    print_operator_benchmark(f"operator on a real control plane: {r['experiments']} experiments × 24 stages, "
                             "Pods that succeed at once" + (f", {args.chaos} kills" if args.chaos else ""), r, extra)

if __name__ == "__main__":
    main()
