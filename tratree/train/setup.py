"""What SFT and DPO share: loading the model to train, LoRA, training arguments, saving."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from tratree.spec import LoraSpec, TrainingSpec
from tratree.train import tiny
from tratree.train.models import load_causal_lm

# tratree passes gradient_checkpointing=False explicitly (TRL 1.16 on CPU needs it); transformers 5
# warns that the name is deprecated on every stage, which says nothing to the person watching.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)


def world_size() -> int:
    """Processes training together (set by ``accelerate launch`` / ``torchrun``), 1 when run plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_policy(ref: str, tokenizer: Any | None = None, seed: int = 0, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) to train: a tiny preset is built from config with the given tokenizer."""
    preset = tiny.preset_name(ref)
    if preset is not None:
        if tokenizer is None:
            raise ValueError(f"{ref} is built from config and needs the experiment's tokenizer")
        return tiny.build_model(preset, tokenizer, seed), tokenizer
    return load_causal_lm(ref, dtype=dtype)


def lora_config(lora: LoraSpec | None) -> Any:
    """A PEFT LoraConfig for causal LMs, or None for full fine-tuning."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules,
        task_type="CAUSAL_LM",
    )


def common_args(training: TrainingSpec, out_dir: str | Path, seed: int) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO: the spec's optimiser settings, effective batch by accumulation."""
    import sys

    import torch

    per_step = training.micro_batch_size * world_size()
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": training.micro_batch_size,
        "gradient_accumulation_steps": max(1, training.batch_size // per_step),
        "learning_rate": training.learning_rate,
        "lr_scheduler_type": training.lr_scheduler,
        "warmup_steps": training.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of all steps
        "num_train_epochs": training.epochs,
        "weight_decay": training.weight_decay,
        "optim": "adamw_torch",
        "max_length": training.max_length,
        "seed": seed,
        "data_seed": seed,
        "bf16": bf16,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": not sys.stderr.isatty(),
        "remove_unused_columns": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def loss_history(trainer: Any) -> list[float]:
    """The training loss logged at each step."""
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def quiet(trainer: Any) -> Any:
    """Drop the callback that prints every log line to stdout; progress and logs stay in the trainer state."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
