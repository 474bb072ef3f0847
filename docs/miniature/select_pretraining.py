"""Choose the miniature's pretraining epochs (and SFT budgets on top of them) on dev games, never on test.

Each row pretrains a side for some epochs, evaluates the pretrained model itself and its expert SFT
greedily on the dev-split games after the pretraining corpus's (the strong side over three seeds),
reusing ``select_budget``'s stage runs and cached evaluations. Prints the table and writes it as
markdown. The round recorded in ``selection.md`` ran on an H100 (bf16 mixed-precision training, about
16 minutes); on 2 CPU cores the strong side's 6- and 12-epoch pretraining alone take 25 and 50 minutes.

    python docs/miniature/select_pretraining.py --artifacts file://./artifacts -o selection-pretraining.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_budget import dev_reward, fmt, selection_args, sft_rewards, table, variant

# (side, pretraining epochs, (SFT epochs, learning rate)): the rows of the recorded round
GRID: list[tuple[str, int, tuple[int, float]]] = [
    ("strong", 2, (20, 1e-3)), ("strong", 6, (20, 1e-3)), ("strong", 6, (5, 1e-3)), ("strong", 6, (10, 1e-3)),
    ("weak", 2, (40, 5e-3)), ("weak", 6, (40, 5e-3)), ("weak", 6, (20, 5e-3)),
]


def main() -> None:
    args, base, work = selection_args(__doc__.splitlines()[0])
    rows = []
    for side, epochs, (sft_epochs, lr) in GRID:
        changes = {f"{side}.pretrain": {"epochs": epochs}, f"{side}.sft": {"epochs": sft_epochs, "learningRate": lr}}
        pretrained = dev_reward(variant(base, f"sft-{side}", 0, **changes), args.artifacts, f"pretrain-{side}",
                                work, args.dev_games)
        rows.append((side, str(epochs), f"{pretrained:.1f}", f"{sft_epochs} at {lr:g}",
                     *fmt(sft_rewards(base, side, args, work, **changes))))
    lines = [f"Dev average reward ×100 on {args.dev_games} dev-split games after the pretraining corpus's.", ""]
    lines += table("Pretraining epochs", ("model", "pretraining epochs", "pretrained alone", "SFT epochs at lr",
                                          "after SFT, per seed", "mean"), rows)
    Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
