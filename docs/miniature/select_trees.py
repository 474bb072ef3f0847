"""Round 3 of the miniature's selection, on dev games only: M (trajectories per task) and the MCTS iterations.

Each candidate is the pre-registered miniature (examples/miniature.yaml) with seed 0 alone, one draw of the
weak model's exploration, the arms the choice is about (sft-strong, w2s-mcts, w2s-treedpo) and the held-out
split replaced by the first ``--dev-games`` dev-split games after the pretraining corpus's. Candidates share
every stage they have in common through the store (one sft-strong, one weak SFT, an exploration per M; an
MCTS search that finds the same paths at 400 iterations as at 100 gives the same SFT, which is reused).
Rules, fixed before the run (docs/miniature/protocol.md): M is the one whose mean dev reward of w2s-treedpo
and w2s-mcts (100 iterations) is higher; then the iterations with the higher w2s-mcts dev reward at that M;
ties go to the cheaper setting. It also records what the power analysis needs: the per-game SD of each W2SG
arm's difference from sft-strong, and each DPO arm's pairs and optimizer steps.

    python docs/miniature/select_trees.py --artifacts file://./artifacts -o docs/miniature/selection-trees.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tratree.spec.experiment import load_experiment, spec_to_manifest

ROOT = Path(__file__).resolve().parents[2]
TRAJECTORIES = (8, 16)
ITERATIONS = (100, 400)


def candidate(base: dict, samples: int, iterations: int, dev_games: int) -> dict:
    """The miniature as a dev candidate: seed 0, the selection's arms, dev games for the held-out split."""
    body = json.loads(json.dumps(base))
    spec = body["spec"]
    spec["environment"] |= {"testSplit": "dev", "testTasks": dev_games}
    spec["exploration"] |= {"trajectoriesPerTask": samples, "perSeed": False}
    spec["mcts"] |= {"iterations": iterations}
    spec["methods"], spec["seeds"] = ["sft-strong", "w2s-mcts", "w2s-treedpo"], [0]
    return body


def results(body: dict, store: str, work: Path) -> dict:
    """Run the candidate with `tratree run` (whatever the store lacks) and return its report's results.json."""
    spec = body["spec"]
    name = f"m{spec['exploration']['trajectoriesPerTask']}-i{spec['mcts']['iterations']}"
    (work / f"{name}.yaml").write_text(json.dumps(body))
    subprocess.run([sys.executable, "-m", "tratree", "run", str(work / f"{name}.yaml"), "--artifacts", store,
                    "--report-to", str(work / name)], check=True)
    return json.loads((work / name / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "examples" / "miniature.yaml"))
    parser.add_argument("--artifacts", required=True, help="store URI (file://...)")
    parser.add_argument("--dev-games", type=int, default=48)
    parser.add_argument("--work", default="artifacts/select-trees", help="candidates' specs and reports")
    parser.add_argument("-o", "--output", required=True, help="markdown table and the choice")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = spec_to_manifest(load_experiment(args.experiment))
    rows, reward = [], {}
    for samples in TRAJECTORIES:
        for iterations in ITERATIONS:
            res = results(candidate(base, samples, iterations, args.dev_games), args.artifacts, work)
            m = res["methods"]
            reward[samples, iterations] = {k: m[k]["average_reward"]["mean"] for k in m}
            info = res["informativeness"]
            rows.append(
                f"| {samples} | {iterations} | {m['sft-strong']['average_reward']['mean']:.1f} | "
                f"{m['w2s-treedpo']['average_reward']['mean']:.1f} | {m['w2s-mcts']['average_reward']['mean']:.1f} | "
                f"{m['w2s-treedpo']['paired_sd']:.1f} / {m['w2s-mcts']['paired_sd']:.1f} | "
                f"{res['trees']['trajectories']} | {res['trees']['leaves']} | {info['divergence_points_with_value_gap']} | "
                f"{m['w2s-treedpo']['pairs'][0]} | {m['w2s-treedpo']['optimizer_steps'][0]} |")
    by_m = {s: (reward[s, 100]["w2s-treedpo"] + reward[s, 100]["w2s-mcts"]) / 2 for s in TRAJECTORIES}
    samples = max(TRAJECTORIES, key=lambda s: (by_m[s], -s))
    iterations = max(ITERATIONS, key=lambda i: (reward[samples, i]["w2s-mcts"], -i))
    lines = [f"Dev average reward ×100 on {args.dev_games} dev-split games after the pretraining corpus's, seed 0.", "",
             "| M | MCTS iterations | sft-strong | w2s-treedpo | w2s-mcts | per-game SD of the difference from sft-strong "
             "(treedpo / mcts) | trajectories | distinct (leaves) | divergence points with a value gap | TreeDPO pairs "
             "| TreeDPO optimizer steps |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
             "Mean of w2s-treedpo and w2s-mcts at 100 iterations: " + ", ".join(
                 f"M={s}: {v:.1f}" for s, v in by_m.items()) + ".",
             f"Chosen: M = {samples}, MCTS iterations = {iterations}."]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
