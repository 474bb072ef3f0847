"""Benchmark of sharded exploration: the weak model's exploration stage as one run, as 4 shards in
turn (what `tratree run` does), and as 4 shards side by side (4 `tratree stage explore --shard K`
processes, as the Pods of an Indexed Job run them, here sharing one machine's cores).

    python bench/shards.py [--tasks 16] [--samples 4]

A tiny weak model (1 epoch of SFT: it acts, badly, which is what costs) on TextWorldExpress
CookingWorld. Every variant starts from the same store holding expert data, tokenizer and model,
and each checks that its merged trajectories have the one-run digest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tratree.pipeline.runner import run_pipeline, run_stage
from tratree.spec.experiment import parse_experiment


def spec_body(tasks: int, samples: int, shards: int, store: Path) -> dict:
    return {
        "environment": {"name": "textworldexpress", "tasks": ["cookingworld"], "maxSteps": 10, "trainTasks": tasks,
                        "testTasks": 2, "iclExample": False,
                        "gameParams": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,"
                                      "limitInventorySize=0"},
        "weak": {"model": "tiny:weak", "sft": {"epochs": 1, "learningRate": 5e-3, "batchSize": 4,
                                               "microBatchSize": 4, "maxLength": 1536}},
        "strong": {"model": "tiny:strong"},
        "policy": {"batchSize": 24, "maxNewTokens": 24},
        "exploration": {"trajectoriesPerTask": samples, "shards": shards},
        "methods": ["w2s-mcts"],
        "artifacts": f"file://{store}",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        spec = parse_experiment(spec_body(args.tasks, args.samples, 1, base)).spec
        run_pipeline(spec, only=["sft-weak"])
        variants = (("1 shard", 1, False), ("4 shards in turn", 4, False), ("4 shards side by side", 4, True))
        digest = None
        for name, shards, side_by_side in variants:
            store = Path(tmp) / name.replace(" ", "-")
            shutil.copytree(base, store)
            body = spec_body(args.tasks, args.samples, shards, store)
            spec = parse_experiment(body).spec
            t0 = time.perf_counter()
            if side_by_side:
                spec_file = store / "spec.json"
                spec_file.write_text(json.dumps(body))
                # each process gets its share of the cores, as each Pod would get its own device
                threads = str(max(1, (os.cpu_count() or 1) // shards))
                env = {**os.environ, "TRATREE_WORK": str(store / "work"), "OMP_NUM_THREADS": threads}
                procs = [subprocess.Popen([sys.executable, "-m", "tratree", "stage", "explore", "--spec", str(spec_file),
                                           "--shard", str(k)], env=env, stderr=subprocess.DEVNULL)
                         for k in range(shards)]
                assert all(p.wait() == 0 for p in procs)
                outcome = run_stage(spec, "explore")  # cached: one of the shards merged
            else:
                outcome = run_stage(spec, "explore")
            seconds = time.perf_counter() - t0
            digest = digest or outcome.manifest["digest"]
            same = outcome.manifest["digest"] == digest
            rows.append((name, seconds, same))
    table = Table(title=f"weak-model exploration, {args.tasks} tasks x {args.samples} samples (tiny:weak, CPU)")
    for col in ("variant", "wall s", "speed-up", "same digest as 1 shard"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for name, seconds, same in rows:
        table.add_row(name, f"{seconds:.1f}", f"{rows[0][1] / seconds:.2f}x", "yes" if same else "NO")
    Console().print(table)


if __name__ == "__main__":
    main()
