"""What SFT and DPO share: loading the model to train, LoRA, training arguments, saving."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

from tratree.models import tiny
from tratree.models.loading import load_causal_lm
from tratree.spec.experiment import LoraSpec, TrainingSpec
from tratree.train.budget import FEW_STEPS, accumulation, optimizer_steps, warmup_steps

# tratree passes gradient_checkpointing=False explicitly (TRL 1.16 on CPU needs it); transformers 5
# warns that the name is deprecated on every stage, which says nothing to the person watching.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)


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


def common_args(training: TrainingSpec, out_dir: str | Path, seed: int, examples: int) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO: the spec's optimiser settings, effective batch by
    accumulation, and warmup counted in whole steps of this run over ``examples``."""
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": training.micro_batch_size,
        "gradient_accumulation_steps": accumulation(training),
        "learning_rate": training.learning_rate,
        "lr_scheduler_type": training.lr_scheduler,
        "warmup_steps": warmup_steps(training.warmup_ratio, optimizer_steps(examples, training)),
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


class WeightSnapshot:
    """The weights a run starts from, to measure how far training moved them: ||theta - theta0|| / ||theta0||.

    A full fine-tune keeps a CPU copy of every trainable tensor; a LoRA model needs none, since its
    base weights stay fixed and each adapted layer's change is the adapter's delta weight."""

    def __init__(self, model: Any) -> None:
        self.lora = hasattr(model, "peft_config")
        self.start = {} if self.lora else {
            n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def relative_change(self, model: Any) -> float:
        """||theta - theta0|| / ||theta0|| over the model's weights (for LoRA, the merged weights)."""
        import torch

        moved = base = 0.0
        with torch.no_grad():
            if self.lora:
                for module in model.modules():
                    if hasattr(module, "get_delta_weight") and hasattr(module, "active_adapters"):
                        for name in module.active_adapters:
                            if name in getattr(module, "lora_A", {}):
                                moved += float(module.get_delta_weight(name).float().pow(2).sum())
                base = sum(float(p.detach().float().pow(2).sum()) for n, p in model.named_parameters()
                           if "lora_" not in n)
            else:
                for n, p in model.named_parameters():
                    if n in self.start:
                        start = self.start[n].float()
                        moved += float((p.detach().to("cpu").float() - start).pow(2).sum())
                        base += float(start.pow(2).sum())
        return math.sqrt(moved) / math.sqrt(base) if base > 0 else 0.0


def progress_lines(planned: int, what: str, every: int | None = None) -> Any:
    """A trainer callback that prints a progress line (step, loss, elapsed time) to stderr about twenty
    times a run: where stderr is no terminal (a Job's log, a background run) the progress bar is off."""
    import time

    from transformers import TrainerCallback

    every = every or max(1, planned // 20)

    class ProgressLines(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            step = state.global_step
            if logs and "loss" in logs and (step % every == 0 or step == planned):
                print(f"tratree: {what}: step {step}/{planned}, loss {logs['loss']:.4g}, "
                      f"{time.monotonic() - self.start:.0f}s", file=sys.stderr, flush=True)

    return ProgressLines()


def fit(trainer: Any, planned: int, what: str) -> dict[str, Any]:
    """Train quietly and report what the run did (``run_report``); ``planned``: the optimizer steps expected.
    Without a terminal, progress is a line about every twentieth of the run."""
    snapshot = WeightSnapshot(trainer.model)  # after PEFT wrapped it: LoRA's change is its adapters'
    quiet(trainer)
    if not sys.stderr.isatty():
        trainer.add_callback(progress_lines(planned, what))
    trainer.train()
    return run_report(trainer, snapshot, planned, what)


def run_report(trainer: Any, snapshot: WeightSnapshot, planned: int, what: str) -> dict[str, Any]:
    """What a finished run did: optimizer steps (checked against the plan), the learning rate summed over
    them, how far the weights moved; fewer than FEW_STEPS steps is said on stderr."""
    steps = trainer.state.global_step
    lrs = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row and "loss" in row]
    report = {"steps": steps, "planned_steps": planned, "lr_sum": float(sum(lrs)),
              "weight_change": snapshot.relative_change(trainer.model), "compute": compute(trainer.model)}
    if steps != planned:
        print(f"tratree: warning: {what}: took {steps} optimizer steps where {planned} were planned",
              file=sys.stderr)
    if steps < FEW_STEPS:
        report["few_steps"] = True
        print(f"tratree: warning: {what}: only {steps} optimizer step(s) (under {FEW_STEPS}): the model is "
              f"its start moved by {report['weight_change']:.2e} (relative); give it more data, epochs or a "
              "smaller batchSize", file=sys.stderr)
    return report


def compute(model: Any) -> dict[str, Any]:
    """What the run's arithmetic ran on. Training is bit-identical on one machine, not across machines:
    the kernels torch picks (CPU instruction set, thread count, GPU) change the rounding, and a small
    model trained for hundreds of steps carries that difference into its results."""
    import platform

    import torch

    device = next(model.parameters()).device
    return {"torch": torch.__version__, "device": str(device),
            "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu": _cpu_model() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def quiet(trainer: Any) -> Any:
    """Drop the callback that prints every log line to stdout; progress and logs stay in the trainer state."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
