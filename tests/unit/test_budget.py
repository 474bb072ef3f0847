"""A training run's budget in optimizer steps and its warmup, counted by tratree before it starts."""

from __future__ import annotations

import pytest

from tratree.spec.experiment import TrainingSpec
from tratree.train.budget import optimizer_steps, warmup_steps


@pytest.mark.parametrize(("total", "warmup"), [(2, 0), (10, 0), (1000, 30)])
def test_warmup_is_the_floor_of_the_ratio_so_a_tiny_run_starts_at_its_learning_rate(total, warmup):
    from transformers import TrainingArguments

    assert warmup_steps(0.03, total) == warmup
    # what transformers' scheduler then uses: the whole number as given, where a ratio would round up
    args = TrainingArguments(output_dir="/nonexistent", warmup_steps=warmup_steps(0.03, total), report_to="none")
    assert args.get_warmup_steps(total) == warmup
    ratio = TrainingArguments(output_dir="/nonexistent", warmup_steps=0.03, report_to="none")
    assert ratio.get_warmup_steps(2) == 1  # the defect: the first of two steps at learning rate 0


@pytest.mark.parametrize(("examples", "micro", "batch", "epochs", "steps"), [
    (7, 4, 4, 1, 2),  # 7 TreeDPO pairs at batch 4: the old miniature's two steps
    (7, 4, 32, 1, 1),  # the paper's batch 32: one step an epoch
    (7, 2, 4, 1.5, 3),  # partial micro-batch, partial accumulation, a fractional epoch rounded up
    (100, 4, 8, 3, 39),
])
def test_optimizer_steps_count_as_the_trainer_does(examples, micro, batch, epochs, steps):
    assert optimizer_steps(examples, TrainingSpec(epochs=epochs, micro_batch_size=micro, batch_size=batch)) == steps
