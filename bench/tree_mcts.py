"""Benchmark of the pure algorithms: tree build (exact mode), TreeDPO pairs, offline MCTS.

    python bench/tree_mcts.py            # sizes 1k, 10k, 12k (WebShop-sized), 100k, 1M trajectories
    python bench/tree_mcts.py --quick    # without 1M

Synthetic tasks have 6 trajectories of 10 steps each (WebShop: 1,824 tasks x 6). A
trajectory follows its task's canonical action sequence and at each step deviates with
probability 0.15 to one of three other actions; after a deviation its observations
differ, so trajectories share prefixes up to their first deviation, as explored agent
trajectories do. Every size runs in its own process, so "peak RSS" is that size's own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from tratree.records.formats import Step, Trajectory

PER_TASK, STEPS, CHUNK = 6, 10, 10_000
_FILLER = " You see a counter, a fridge, a stove and a table. Exits lead north and east."


def synthetic(n: int, seed: int = 0, start: int = 0):
    """Trajectories start..start+n-1 of a deterministic synthetic data set."""
    rng = random.Random(seed * 1_000_003 + start)
    for i in range(start, start + n):
        task = i // PER_TASK
        steps = []
        branch = "m"
        deviated_at = -1
        for d in range(STEPS):
            obs = f"[task {task}] state {branch} at depth {d}.{_FILLER}"
            if rng.random() < 0.15:
                k = rng.randrange(3)
                action = f"click[option {k} of step {d}]"
                branch += str(k)
                deviated_at = d if deviated_at < 0 else deviated_at
            else:
                action = f"click[item {task}-{d}]"
                branch += "m"
            steps.append(Step.model_construct(observation=obs, thought="I should keep going.", action=action))
        score = 1.0 if deviated_at < 0 else round(deviated_at / STEPS * rng.random(), 3)
        yield Trajectory.model_construct(
            task_id=f"task-{task}",
            instruction=f"Buy item {task}.",
            steps=steps,
            final_observation="",
            score=score,
            success=score >= 1.0,
            meta={},
        )


def worker(n: int, mcts_trees: int) -> dict:
    """Measure one size in this process."""
    from tratree.method.mcts import search
    from tratree.method.pairs import tree_pairs
    from tratree.method.tree import TreeBuilder, summarize, task_rng

    builder = TreeBuilder()
    build = 0.0
    for start in range(0, n, CHUNK):
        chunk = list(synthetic(min(CHUNK, n - start), start=start))
        t0 = time.perf_counter()
        builder.add_all(chunk)
        build += time.perf_counter() - t0
        del chunk
    all_trees = builder.trees()
    stats = summarize(all_trees)
    t0 = time.perf_counter()
    n_pairs = sum(len(tree_pairs(t)) for t in all_trees)
    pairs_s = time.perf_counter() - t0
    sample = all_trees[:mcts_trees]
    for t in sample:
        t.children  # noqa: B018 - built once, like after reading a trees file
    t0 = time.perf_counter()
    for t in sample:
        search(t, 100, 1.41, task_rng(0, t.task_id))
    mcts_s = time.perf_counter() - t0
    return {
        "trajectories": n,
        "trees": stats["trees"],
        "nodes": stats["nodes"],
        "build_s": build,
        "pairs": n_pairs,
        "pairs_s": pairs_s,
        "mcts_trees": len(sample),
        "mcts_s": mcts_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def wide_root(children: int) -> dict:
    """TreeDPO pairs of one task whose root has ``children`` one-step episodes (measured in this process)."""
    from tratree.method.pairs import tree_pairs
    from tratree.method.tree import build_trees

    trajs = [Trajectory.model_construct(task_id="wide", instruction="i", final_observation="", meta={}, success=False,
                                        score=(i % 11) / 10,
                                        steps=[Step.model_construct(observation="o", thought="", action=f"a{i}")])
             for i in range(children)]
    (tree,) = build_trees(trajs)
    t0 = time.perf_counter()
    n = len(tree_pairs(tree))
    return {"children": children, "pairs": n, "pairs_s": time.perf_counter() - t0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def whole_commands(n: int = 12_000) -> dict[str, float]:
    """Wall time (best of 3) of `tratree tree build`, `tree stats --json` and `mcts --iterations 100`
    on an n-trajectory file, each as a whole command (interpreter start-up and imports included)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "traj.jsonl")
        with open(path, "w") as fh:
            for traj in synthetic(n):
                fh.write(traj.model_dump_json() + "\n")
        trees, paths = os.path.join(tmp, "trees.jsonl"), os.path.join(tmp, "paths.jsonl")
        cli = [sys.executable, "-m", "tratree"]
        for name, args in (("tree build", ["tree", "build", path, "-o", trees]),
                           ("tree stats --json", ["tree", "stats", trees, "--json"]),
                           ("mcts --iterations 100", ["mcts", trees, "-o", paths, "--iterations", "100"])):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run([*cli, *args], check=True, capture_output=True)
                best = min(best, time.perf_counter() - t0)
            out[name] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 1M-trajectory size")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--wide", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, 2000)))
        return
    if args.wide:
        print(json.dumps(wide_root(args.wide)))
        return
    sizes = [1_000, 10_000, 12_000, 100_000] + ([] if args.quick else [1_000_000])
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tree / pairs / MCTS ({STEPS} steps per trajectory, {PER_TASK} per task)")
    for col in ("trajectories", "trees", "nodes", "build s", "traj/s", "pairs", "pairs/s", "MCTS trees", "MCTS s (100 it)", "MCTS it/s", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--worker", str(n)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout)
        table.add_row(
            f"{n:,}", f"{r['trees']:,}", f"{r['nodes']:,}", f"{r['build_s']:.3f}", f"{n / r['build_s']:,.0f}",
            f"{r['pairs']:,}", f"{r['pairs'] / r['pairs_s']:,.0f}", f"{r['mcts_trees']:,}", f"{r['mcts_s']:.3f}",
            f"{r['mcts_trees'] * 100 / r['mcts_s']:,.0f}", f"{r['peak_rss_mib']:,.0f}",
        )
    console = Console(width=200)
    console.print(table)
    wide = Table(title="TreeDPO pairs at one root with many children (maxPairsPerNode 15)")
    for col in ("children", "pairs", "pairs s", "peak RSS MiB"):
        wide.add_column(col, justify="right")
    for children in (5_000, 100_000):
        out = subprocess.run([sys.executable, __file__, "--wide", str(children)], check=True, capture_output=True,
                             text=True)
        r = json.loads(out.stdout)
        wide.add_row(f"{r['children']:,}", f"{r['pairs']:,}", f"{r['pairs_s']:.3f}", f"{r['peak_rss_mib']:,.0f}")
    console.print(wide)
    whole = Table(title="whole commands on 12,000 trajectories (best of 3, start-up and imports included)")
    whole.add_column("command")
    whole.add_column("s", justify="right")
    for name, seconds in whole_commands().items():
        whole.add_row(f"tratree {name}", f"{seconds:.2f}")
    console.print(whole)


if __name__ == "__main__":
    main()
