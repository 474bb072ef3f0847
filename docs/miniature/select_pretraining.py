"""Choose the miniature's pretraining epochs (and SFT budgets on top of them) on dev games, never on test.

Each row pretrains a side for some epochs, evaluates the pretrained model itself and its expert SFT
greedily on the dev-split games after the pretraining corpus's (the strong side over three seeds),
reusing ``select_budget``'s stage runs and cached evaluations. Prints the table and writes it as
markdown. The round recorded in ``selection.md`` ran on an H100 (bf16 mixed-precision training, about
16 minutes); on 2 CPU cores the strong side's 6- and 12-epoch pretraining alone take 25 and 50 minutes.

    python docs/miniature/select_pretraining.py --artifacts file://./artifacts -o selection-pretraining.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_budget import ROOT, base_body, dev_reward, table, variant

# (side, pretraining epochs, (SFT epochs, learning rate)): the rows of the recorded round
GRID: list[tuple[str, int, tuple[int, float]]] = [
    ("strong", 2, (20, 1e-3)), ("strong", 6, (20, 1e-3)), ("strong", 6, (5, 1e-3)), ("strong", 6, (10, 1e-3)),
    ("weak", 2, (40, 5e-3)), ("weak", 6, (40, 5e-3)), ("weak", 6, (20, 5e-3)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "examples" / "miniature.yaml"))
    parser.add_argument("--artifacts", required=True, help="store URI (file://...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="strong-side seeds")
    parser.add_argument("--dev-games", type=int, default=24)
    parser.add_argument("--work", default="artifacts/select-work", help="kept evaluations")
    parser.add_argument("-o", "--output", required=True, help="markdown table")
    args = parser.parse_args()
    base = base_body(args.experiment)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for side, epochs, sft in GRID:
        changes = {f"{side}.pretrain": {"epochs": epochs}, f"{side}.sft": {"epochs": sft[0], "learningRate": sft[1]}}
        seeds = [0] if side == "weak" else args.seeds
        pretrained = dev_reward(variant(base, f"sft-{side}", 0, **changes), args.artifacts, f"pretrain-{side}",
                                work, args.dev_games)
        stage = "sft-weak" if side == "weak" else "sft-strong-s{seed}"
        tuned = [dev_reward(variant(base, f"sft-{side}", s, **changes), args.artifacts, stage.format(seed=s), work,
                            args.dev_games) for s in seeds]
        rows.append((side, str(epochs), f"{pretrained:.1f}", f"{sft[0]} at {sft[1]:g}", " / ".join(f"{r:.1f}" for r in tuned),
                     f"{statistics.mean(tuned):.1f}"))
    lines = [f"Dev average reward ×100 on {args.dev_games} dev-split games after the pretraining corpus's.", ""]
    lines += table("Pretraining epochs", ("model", "pretraining epochs", "pretrained alone", "SFT epochs at lr",
                                          "after SFT, per seed", "mean"), rows)
    Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
