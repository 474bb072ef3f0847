"""Choose the miniature's training budgets on held-out dev games, never on the test split.

First the expert SFT of each side: each candidate (epochs, learning rate) is trained from the
side's pretrained base and evaluated greedily on the dev-split games after the pretraining
corpus's (``tratree evaluate --split dev``: disjoint from the training, test and corpus games); the
candidate with the best mean dev reward over the seeds wins (ties: the smaller budget). Then, on the
chosen SFT models, TreeDPO's beta and epochs (the paper tunes beta, Table 3) the same way; every DPO
method (random pairs, ETO, ceiling) shares the chosen setting. Prints the tables, writes them as
markdown; evaluations are kept in --work so a rerun only does what is new.

    python docs/miniature/select_budget.py --artifacts file://./artifacts -o docs/miniature/selection.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tratree.pipeline.runner import run_pipeline
from tratree.spec.experiment import load_experiment, parse_experiment

ROOT = Path(__file__).resolve().parents[2]
SFT_GRID = {"weak": [(10, 5e-3), (20, 5e-3), (40, 5e-3), (20, 2e-3)],
            "strong": [(5, 1e-3), (10, 1e-3), (20, 1e-3), (5, 3e-3), (10, 3e-3), (20, 3e-3)]}
DPO_GRID = [(0.01, 1), (0.1, 1), (0.01, 4), (0.1, 4)]


def variant(base: dict, method: str, seed: int, **changes: dict) -> dict:
    """The miniature reduced to one method and seed, with some sections' fields replaced."""
    body = json.loads(json.dumps(base))
    spec = body["spec"]
    for path, fields in changes.items():
        node = spec
        for key in path.split("."):
            node = node[key]
        node |= fields
    spec["methods"], spec["seeds"] = [method], [seed]
    return body


def base_body(path: str) -> dict:
    """The experiment file as a resource body with its spec in full (defaults filled in)."""
    exp = load_experiment(path)
    return {"apiVersion": "tratree.io/v1alpha1", "kind": "W2SGExperiment", "metadata": {"name": exp.name},
            "spec": exp.spec.model_dump(mode="json", by_alias=True, exclude_none=True)}


def dev_reward(body: dict, store: str, stage: str, work: Path, dev_games: int) -> float:
    """Train what ``stage`` needs (cached in the store) and return its model's dev-split average reward."""
    spec = parse_experiment(body).spec
    outcome = {o.stage: o for o in run_pipeline(spec, store, only=[stage])}[stage]
    name = hashlib.sha256(json.dumps([body, stage, dev_games], sort_keys=True).encode()).hexdigest()[:16]
    out = work / f"{name}.metrics.json"
    if not out.exists():
        spec_file = work / f"{name}.json"
        spec_file.write_text(json.dumps(body))
        model = Path(store.removeprefix("file://")) / outcome.manifest["prefix"]
        subprocess.run([sys.executable, "-m", "tratree", "evaluate", str(spec_file), "--model", str(model),
                        "--split", "dev", "--limit", str(dev_games), "-o", str(out)], check=True)
    return json.loads(out.read_text())["average_reward"]


def best(rows: list[tuple[str, tuple, list[float]]], side: str) -> tuple:
    """The setting of ``side`` with the highest mean dev reward; on a tie the first (smallest) listed."""
    scored = [(statistics.mean(rewards), -i, setting) for i, (s, setting, rewards) in enumerate(rows) if s == side]
    return max(scored)[2]


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Print ``rows`` as a rich table and return them as markdown lines."""
    shown = Table(title=title)
    for col in header:
        shown.add_column(col)
    for row in rows:
        shown.add_row(*row)
    Console().print(shown)
    return [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def fmt(rewards: list[float]) -> tuple[str, str]:
    """Per-seed rewards and their mean, as table cells."""
    return " / ".join(f"{r:.1f}" for r in rewards), f"{statistics.mean(rewards):.1f}"


def selection_args(description: str) -> tuple[argparse.Namespace, dict, Path]:
    """The options every selection script takes; the experiment as a body; the kept-evaluations folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--experiment", default=str(ROOT / "examples" / "miniature.yaml"))
    parser.add_argument("--artifacts", required=True, help="store URI (file://...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="strong-side seeds")
    parser.add_argument("--dev-games", type=int, default=24, help="at most the spec's testTasks")
    parser.add_argument("--work", default="artifacts/select-work", help="kept evaluations")
    parser.add_argument("-o", "--output", required=True, help="markdown tables")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    return args, base_body(args.experiment), work


def sft_rewards(base: dict, side: str, args: argparse.Namespace, work: Path, **changes: dict) -> list[float]:
    """Dev rewards of a side's expert SFT under ``changes``: the weak side once, the strong side per seed."""
    seeds = [0] if side == "weak" else args.seeds
    stage = "sft-weak" if side == "weak" else "sft-strong-s{seed}"
    return [dev_reward(variant(base, f"sft-{side}", s, **changes), args.artifacts, stage.format(seed=s), work,
                       args.dev_games) for s in seeds]


def main() -> None:
    args, base, work = selection_args(__doc__.splitlines()[0])
    sft_rows = []
    for side in ("weak", "strong"):
        for epochs, lr in SFT_GRID[side]:
            rewards = sft_rewards(base, side, args, work, **{f"{side}.sft": {"epochs": epochs, "learningRate": lr}})
            sft_rows.append((side, (epochs, lr), rewards))
    chosen = {side: best(sft_rows, side) for side in ("weak", "strong")}
    sft = {f"{side}.sft": {"epochs": e, "learningRate": lr} for side, (e, lr) in chosen.items()}
    dpo_rows = []
    for beta, epochs in DPO_GRID:
        rewards = [dev_reward(variant(base, "w2s-treedpo", s, **sft, **{"training.dpo": {"beta": beta, "epochs": epochs}}),
                              args.artifacts, f"w2s-treedpo-s{s}", work, args.dev_games) for s in args.seeds]
        dpo_rows.append(("dpo", (beta, epochs), rewards))
    beta, epochs = best(dpo_rows, "dpo")
    lines = [f"Dev average reward ×100 on {args.dev_games} dev-split games after the pretraining corpus's.", ""]
    lines += table("Expert SFT budget", ("model", "epochs", "learning rate", "dev reward per seed", "mean"),
                   [(side, str(e), f"{lr:g}", *fmt(r)) for side, (e, lr), r in sft_rows])
    lines += table("TreeDPO on the chosen SFT models", ("beta", "epochs", "dev reward per seed", "mean"),
                   [(f"{b:g}", str(e), *fmt(r)) for _, (b, e), r in dpo_rows])
    lines.append("Chosen: " + "; ".join(f"{side} SFT {e} epochs at {lr:g}" for side, (e, lr) in chosen.items())
                 + f"; DPO beta {beta:g}, {epochs} epoch(s).")
    Console().print(lines[-1])
    Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
