"""Benchmark of training throughput: SFT and DPO tokens/s for the tiny presets, full vs LoRA.

    python bench/train.py

Data: gold CookingWorld trajectories (SFT) and TreeDPO-shaped pairs built from them (DPO:
the shared prefix, and the gold continuation against a shuffled one). Tokens/s counts every
token the model processes (prompt, observations and replies; chosen and rejected for DPO).
"""

from __future__ import annotations

import random
import tempfile
import time

from rich.console import Console
from rich.table import Table

from tratree.agent.expert import expert_trajectories
from tratree.models.tiny import build_model, corpus, train_tokenizer
from tratree.records.formats import Pair
from tratree.spec.experiment import DPOTrainingSpec, LoraSpec, TrainingSpec, parse_experiment
from tratree.train.datasets import dpo_example, sft_example
from tratree.train.dpo import train_dpo
from tratree.train.sft import train_sft

ENV = {"name": "textworldexpress", "tasks": ["cookingworld"], "maxSteps": 20,
       "gameParams": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,limitInventorySize=0"}


def pairs_from(trajs, rng: random.Random) -> list[Pair]:
    out = []
    for t in trajs:
        k = len(t.steps) // 2
        bad = list(t.steps[k:])
        rng.shuffle(bad)
        out.append(Pair(task_id=t.task_id, instruction=t.instruction, prefix=t.steps[:k], chosen=t.steps[k:],
                        rejected=bad, chosen_value=1.0, rejected_value=0.0, node=k))
    return out


def main() -> None:
    spec = parse_experiment({"weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"}, "environment": ENV}).spec
    trajs = expert_trajectories(spec, "train", 16)
    tok = train_tokenizer(corpus("textworldexpress", trajs))
    pairs = pairs_from(trajs, random.Random(0))
    sft_tokens = sum(len(sft_example(tok, "textworldexpress", t)["input_ids"]) for t in trajs)
    dpo_tokens = 0
    for p in pairs:
        ex = dpo_example(tok, "textworldexpress", p)
        dpo_tokens += 2 * len(ex["prompt_ids"]) + len(ex["chosen_ids"]) + len(ex["rejected_ids"])
    sft_spec = TrainingSpec(epochs=1, learning_rate=1e-3, batch_size=4, micro_batch_size=4, max_length=2048)
    dpo_spec = DPOTrainingSpec(epochs=1, learning_rate=1e-4, batch_size=4, micro_batch_size=4, max_length=2048)
    table = Table(title=f"training throughput, {len(trajs)} trajectories / {len(pairs)} pairs, 1 epoch, batch 4")
    for col in ("preset", "params", "mode", "SFT tokens/s", "DPO tokens/s (incl. reference pass)"):
        table.add_column(col, justify="right")
    for preset in ("weak", "strong"):
        for lora in (None, LoraSpec(r=16, alpha=32, dropout=0.0)):
            rates = []
            with tempfile.TemporaryDirectory() as tmp:
                model = build_model(preset, tok)
                params = sum(p.numel() for p in model.parameters())
                t0 = time.perf_counter()
                train_sft(model, tok, trajs, "textworldexpress", sft_spec, f"{tmp}/sft", lora)
                rates.append(sft_tokens / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                train_dpo(build_model(preset, tok), tok, pairs, "textworldexpress", dpo_spec, f"{tmp}/dpo",
                          ref_model=build_model(preset, tok, seed=1), ref_tokenizer=tok, lora=lora)
                rates.append(dpo_tokens / (time.perf_counter() - t0))
            table.add_row(f"tiny:{preset}", f"{params / 1e6:.1f}M", "LoRA r=16" if lora else "full",
                          f"{rates[0]:,.0f}", f"{rates[1]:,.0f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
