"""Benchmark of the operator: many experiments applied at once against the emulated apiserver.

    python bench/operator.py [--experiments 100]

Each experiment is the miniature all-methods graph (24 stages, so 24 Jobs); the test kubelet
marks every Job succeeded as soon as it appears. Reported: time from applying them all to all
Succeeded, API requests per experiment (everything the operator sent, watches included), and
the operator process's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.cluster.harness import cluster, peak_rss_mib, print_operator_benchmark  # noqa: E402
from tests.e2e.cluster.kubelet import Kubelet, always  # noqa: E402


async def run(count: int) -> dict[str, float]:
    base = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        base["spec"]["artifacts"] = f"file://{tmp}/store"
        base["spec"]["kubernetes"] = {"volumes": [{"name": "store", "hostPath": {"path": tmp}}],
                                      "volumeMounts": [{"name": "store", "mountPath": tmp}]}
        async with cluster(Path(tmp), config={"resyncSeconds": 30}) as c, Kubelet(c.api, always("succeed"), poll=0.01):
            await asyncio.sleep(3)  # the operator is up and watching
            before = len(c.operator_requests())
            t0 = time.monotonic()
            for i in range(count):
                m = copy.deepcopy(base)
                m["metadata"]["name"] = f"exp-{i:03d}"
                await c.apply(m)
            names = [f"exp-{i:03d}" for i in range(count)]
            await c.wait(lambda: all(c.status(n).get("phase") == "Succeeded" for n in names), 1800,
                         "every experiment to succeed")
            elapsed = time.monotonic() - t0
            operator_requests = c.operator_requests()[before:]
            by_verb = collections.Counter(r.action.value.lower() for r in operator_requests)
            rss = peak_rss_mib(c.operator.pid)
            jobs = len(c.jobs())
    return {"experiments": count, "jobs": jobs, "seconds": elapsed, "requests": len(operator_requests),
            "by_verb": dict(by_verb), "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=100)
    args = parser.parse_args()
    r = asyncio.run(run(args.experiments))
    print_operator_benchmark(f"operator: {r['experiments']} experiments × 24 stages, instant-success Jobs", r)

if __name__ == "__main__":
    main()
