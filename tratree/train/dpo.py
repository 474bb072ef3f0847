"""DPO on preference pairs (TreeDPO, random, ETO, ceiling) with TRL, scoring assistant tokens only.

TRL's preference collator trains every completion token; a TreeDPO continuation holds the
environment's observations between the agent's turns, which must not count. tratree
tokenizes the pairs itself with per-token masks and a collator applies them, to the loss and
to the reference log-probs alike. Reference log-probs are precomputed, so the reference model
is freed before training starts.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tratree.models.loading import save_model
from tratree.records.formats import Pair
from tratree.spec.experiment import DPOTrainingSpec, LoraSpec
from tratree.train.budget import optimizer_steps
from tratree.train.datasets import check_fits, check_same_tokenizer, dpo_example
from tratree.train.setup import common_args, fit, lora_config, loss_history


def _trainer_classes() -> tuple[type, type]:
    import torch
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class MaskedPreferenceCollator(DataCollatorForPreference):
        """TRL's collator with the completion mask replaced by tratree's assistant-only masks."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            width = out["completion_mask"].shape[1]
            rows = [[0] * len(e["prompt_ids"]) + e["chosen_mask"] for e in examples]
            rows += [[0] * len(e["prompt_ids"]) + e["rejected_mask"] for e in examples]
            mask = torch.zeros_like(out["completion_mask"])
            for i, row in enumerate(rows):
                row = row[: self.max_length] if self.max_length is not None else row
                mask[i, : min(len(row), width)] = torch.tensor(row[:width], dtype=mask.dtype)
            out["completion_mask"] = mask
            return out

    class MaskedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[override]
            return dataset  # tokenized by tratree (dpo_example), long prompts already dropped

    return MaskedPreferenceCollator, MaskedDPOTrainer


@contextlib.contextmanager
def bars_only_on_a_terminal() -> Iterator[None]:
    """tqdm bars off (TQDM_DISABLE) while stderr is no terminal; the variable is restored after."""
    saved = os.environ.get("TQDM_DISABLE")
    if not sys.stderr.isatty():
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


def _policy_logps(trainer: Any, dataset: Any, batch_size: int) -> tuple[list[float], list[float]]:
    """The policy's summed log-probs of each pair's chosen and rejected sides, masked as in training."""
    import torch
    from torch.utils.data import DataLoader

    model = trainer.model
    saved, trainer.ref_model = trainer.ref_model, model  # a non-None ref keeps a LoRA adapter switched on
    was_training = model.training
    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=trainer.data_collator, shuffle=False):
            batch = {k: v.to(trainer.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            c, r = trainer.compute_ref_log_probs(model, batch)
            chosen += c.float().cpu().tolist()
            rejected += r.float().cpu().tolist()
    finally:
        trainer.ref_model = saved
        model.train(was_training)
    return chosen, rejected


def preference_fit(policy: tuple[list[float], list[float]], ref: dict[str, list[float]], beta: float) -> dict[str, float]:
    """DPO's implicit reward margin beta*((pi_c - ref_c) - (pi_r - ref_r)) on the pairs: its mean, and the share
    of pairs the policy prefers the right way (margin > 0)."""
    margins = [beta * ((pc - rc) - (pr - rr))
               for pc, pr, rc, rr in zip(*policy, ref["chosen"], ref["rejected"], strict=True)]
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "margin": sum(margins) / len(margins)}


def train_dpo(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    env_name: str,
    training: DPOTrainingSpec,
    out_dir: str | Path,
    ref_model: Any | None = None,
    ref_tokenizer: Any | None = None,
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model`` on ``pairs`` against ``ref_model`` (None: the policy's own initial weights)."""
    import datasets
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig

    if not pairs:
        raise ValueError("DPO needs at least one preference pair")
    if ref_model is not None:
        check_same_tokenizer(tokenizer, ref_tokenizer if ref_tokenizer is not None else tokenizer)
    set_seed(seed)
    datasets.disable_progress_bars()  # per-map bars for a few dozen examples are noise
    collator_cls, trainer_cls = _trainer_classes()
    examples = [dpo_example(tokenizer, env_name, p) for p in pairs]
    check_fits([len(e["prompt_ids"]) for e in examples], training.max_length, "pair")
    # a pair whose prompt fills maxLength has nothing left to compare
    examples = [e for e in examples if len(e["prompt_ids"]) < training.max_length]
    dataset = Dataset.from_list(examples)
    planned = optimizer_steps(len(dataset), training)
    with tempfile.TemporaryDirectory() as work:
        args = DPOConfig(**common_args(training, work, seed, len(dataset)), beta=training.beta,
                         precompute_ref_log_probs=True)
        collator = collator_cls(pad_token_id=tokenizer.pad_token_id, max_length=training.max_length)
        with bars_only_on_a_terminal():  # TRL's reference pass draws a bar: a log gets one line a batch
            trainer = trainer_cls(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, data_collator=collator, peft_config=lora_config(lora))
        # the reference log-probs are in the dataset now: the reference model is no longer needed
        trainer.ref_model = None
        del ref_model
        gc.collect()
        ref_logps = {"chosen": list(trainer.train_dataset["ref_chosen_logps"]),
                     "rejected": list(trainer.train_dataset["ref_rejected_logps"])}
        before = preference_fit(_policy_logps(trainer, dataset, training.micro_batch_size), ref_logps, training.beta)
        report = fit(trainer, planned, f"DPO on {len(dataset)} pairs")
        after = preference_fit(_policy_logps(trainer, dataset, training.micro_batch_size), ref_logps, training.beta)
    save_model(trainer.model, tokenizer, out_dir, merge_lora=lora is None or lora.merge)
    history = [r for r in trainer.state.log_history if "loss" in r]
    margins = [r["rewards/margins"] for r in history if "rewards/margins" in r]
    return {"pairs": len(dataset), **report, "preference": {"before": before, "after": after},
            "losses": loss_history(trainer), "margins": margins, "ref_logps": ref_logps}
