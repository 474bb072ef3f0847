"""Supervised fine-tuning on trajectories (expert data, MCTS paths, best explored) on the assistant turns,
and tiny models' pretraining on whole transcripts."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tratree.models.loading import save_model
from tratree.records.formats import Trajectory
from tratree.spec.experiment import LoraSpec, TrainingSpec
from tratree.train.budget import optimizer_steps
from tratree.train.datasets import check_fits, sft_example
from tratree.train.setup import common_args, fit, lora_config, loss_history


def train_sft(
    model: Any,
    tokenizer: Any,
    trajectories: Sequence[Trajectory],
    env_name: str,
    training: TrainingSpec,
    out_dir: str | Path,
    lora: LoraSpec | None = None,
    seed: int = 0,
    whole_text: bool = False,
) -> dict[str, Any]:
    """Train with TRL's SFTTrainer and save to ``out_dir``; returns the loss history and counts.

    ``whole_text``: language modelling on every token of the transcripts (pretraining), not only
    on the replies."""
    import datasets
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    if not trajectories:
        raise ValueError("SFT needs at least one trajectory")
    set_seed(seed)
    datasets.disable_progress_bars()  # per-map bars for a few dozen examples are noise
    examples = [sft_example(tokenizer, env_name, t) for t in trajectories]
    if whole_text:
        examples = [{**e, "assistant_masks": [1] * len(e["input_ids"])} for e in examples]
    check_fits([e["assistant_masks"].index(1) if 1 in e["assistant_masks"] else len(e["assistant_masks"])
                for e in examples], training.max_length, "trajectory")
    dataset = Dataset.from_list(examples)
    planned = optimizer_steps(len(dataset), training)
    with tempfile.TemporaryDirectory() as work:
        args = SFTConfig(**common_args(training, work, seed, len(dataset)))
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora_config(lora))
        report = fit(trainer, planned, f"{'pretraining' if whole_text else 'SFT'} on {len(dataset)} trajectories")
    save_model(trainer.model, tokenizer, out_dir, merge_lora=lora is None or lora.merge)
    losses = loss_history(trainer)
    return {"examples": len(dataset), **report, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "losses": losses}
