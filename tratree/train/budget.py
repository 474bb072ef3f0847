"""A training run's budget in optimizer steps, counted before it starts (torch-free: the report reads it)."""

from __future__ import annotations

import math
import os

from tratree.spec.experiment import TrainingSpec


def world_size() -> int:
    """Processes training together (set by ``accelerate launch`` / ``torchrun``), 1 when run plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# A training run with fewer optimizer steps than this is flagged in its log and in the report.
FEW_STEPS = 10


def accumulation(training: TrainingSpec) -> int:
    """Micro-batches accumulated into one optimizer step."""
    return max(1, training.batch_size // (training.micro_batch_size * world_size()))


def optimizer_steps(examples: int, training: TrainingSpec) -> int:
    """Optimizer steps a run over ``examples`` takes, counted as transformers' Trainer counts them:
    micro-batches per epoch (the last one partial), an update per ``accumulation`` of them (the last
    one partial), and a fractional last epoch rounded up."""
    batches = math.ceil(examples / (training.micro_batch_size * world_size()))
    per_epoch = max(1, math.ceil(batches / accumulation(training)))
    return math.ceil(training.epochs * per_epoch)


def warmup_steps(ratio: float, total: int) -> int:
    """floor(ratio x total): a run of a few steps gets no warmup, so its first update is not at
    learning rate 0 (transformers rounds a ratio up, which made the first of two DPO steps a no-op)."""
    return math.floor(ratio * total)
