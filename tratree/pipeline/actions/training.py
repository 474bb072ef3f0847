"""Stages that train: the shared tiny tokenizer, tiny models' pretraining, SFT and DPO."""

from __future__ import annotations

import json
import sys
from typing import Any

from tratree.pipeline.actions.context import StageContext, StageError
from tratree.pipeline.actions.data import TRAJECTORIES
from tratree.records.formats import Pair, PathRecord, Trajectory, read_jsonl

TRAINING = "training.json"


def tokenizer(ctx: StageContext) -> dict[str, Any]:
    from tratree.models.tiny import corpus, train_tokenizer

    # trained on the pretraining corpus where the graph has one (dev games), else on the expert data
    (source,) = ctx.inputs.values()
    trajs = read_jsonl(source / TRAJECTORIES, Trajectory)
    tok = train_tokenizer(corpus(ctx.spec.environment.name, trajs))
    tok.save_pretrained(ctx.out)
    return {"vocabulary": len(tok)}


def _tokenizer_of(ctx: StageContext) -> Any:
    if "tokenizer" not in ctx.inputs:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ctx.input("tokenizer"))


def _sft_data(ctx: StageContext) -> list[Trajectory]:
    data = ctx.stage.params["data"]
    if data == "expert":
        return read_jsonl(ctx.input("expert") / TRAJECTORIES, Trajectory)
    if data == "mcts":
        paths = read_jsonl(ctx.input_of("mcts") / "paths.jsonl", PathRecord)
        return [Trajectory(task_id=p.task_id, instruction=p.instruction, steps=p.steps, score=p.value,
                           success=p.value >= 1.0, meta={"source": "mcts"}) for p in paths]
    from tratree.agent.explore import best_per_task

    return best_per_task(read_jsonl(ctx.input_of("explore") / TRAJECTORIES, Trajectory))


def pretrain(ctx: StageContext) -> dict[str, Any]:
    """A tiny preset built from config and trained as a language model on the corpus's transcripts."""
    from tratree.spec.experiment import ModelSpec, TrainingSpec
    from tratree.train.setup import load_policy
    from tratree.train.sft import train_sft

    model_spec = ModelSpec.model_validate(ctx.stage.params["model"])
    model, tok = load_policy(model_spec.model, _tokenizer_of(ctx), ctx.stage.params["seed"], model_spec.dtype)
    trajs = read_jsonl(ctx.input("corpus") / TRAJECTORIES, Trajectory)
    if not trajs:
        raise StageError(f"{ctx.stage.name}: the pretraining corpus is empty")
    training = TrainingSpec.model_validate(ctx.stage.params["training"])
    result = train_sft(model, tok, trajs, ctx.spec.environment.name, training, ctx.out,
                       seed=ctx.stage.params["seed"], whole_text=True)
    return _record(ctx, {k: v for k, v in result.items() if k != "losses"}, result["losses"])


def _base_model(ctx: StageContext, model_spec: Any, seed: int) -> tuple[Any, Any]:
    """The model an SFT starts from: the stage its ``init`` names (w2s-mcts from sft-strong), else its
    pretrained base where the graph has one, else the spec's model."""
    from tratree.models.loading import load_causal_lm
    from tratree.train.setup import load_policy

    if ctx.stage.params.get("init"):
        return load_causal_lm(str(ctx.input(ctx.stage.params["init"])), trainable=True)
    base = [p for name, p in ctx.inputs.items() if name.startswith("pretrain-")]
    if base:
        return load_causal_lm(str(base[0]), trainable=True)
    return load_policy(model_spec.model, _tokenizer_of(ctx), seed, model_spec.dtype)


def sft(ctx: StageContext) -> dict[str, Any]:
    from tratree.spec.experiment import ModelSpec, TrainingSpec
    from tratree.train.sft import train_sft

    model_spec = ModelSpec.model_validate(ctx.stage.params["model"])
    seed = ctx.stage.params["seed"]
    model, tok = _base_model(ctx, model_spec, seed)
    trajs = _sft_data(ctx)
    if not trajs:
        raise StageError(f"{ctx.stage.name}: no {ctx.stage.params['data']} trajectories to train on "
                         f"(its input {ctx.stage.inputs[0]} is empty)")
    training = TrainingSpec.model_validate(ctx.stage.params["training"])
    result = train_sft(model, tok, trajs, ctx.spec.environment.name, training, ctx.out, model_spec.lora, seed)
    return _record(ctx, {k: v for k, v in result.items() if k != "losses"}, result["losses"])


def dpo(ctx: StageContext) -> dict[str, Any]:
    from tratree.models.loading import load_causal_lm
    from tratree.train.dpo import train_dpo

    names = list(ctx.inputs)
    mode = ctx.stage.params.get("pairs")
    if mode:
        from tratree.method.pairs import expert_pairs

        expert = read_jsonl(ctx.input("expert") / TRAJECTORIES, Trajectory)
        own = read_jsonl(ctx.input_of("strong-explore") / TRAJECTORIES, Trajectory)
        pairs = expert_pairs(expert, own, mode)
        shared = len({t.task_id for t in expert} & {t.task_id for t in own})
        if not shared:  # ids from two conventions: a wiring fault, not a finding
            hint = (f" (expert ids look like {expert[0].task_id!r}, explored ones like {own[0].task_id!r})"
                    if expert and own else "")
            raise StageError(f"{ctx.stage.name}: no {mode} pairs: {len(expert)} expert and {len(own)} explored "
                             f"trajectories share no task id{hint}")
    else:
        pairs = read_jsonl(ctx.inputs[names[1]] / "pairs.jsonl", Pair)
    model, tok = load_causal_lm(str(ctx.inputs[names[0]]), trainable=True)
    ref_model = ref_tok = None
    if "sft-weak" in ctx.inputs:
        ref_model, ref_tok = load_causal_lm(str(ctx.input("sft-weak")))
    if not pairs:
        # Uninformative trees: as the paper argues, TreeDPO then leaves the initial policy as it is.
        from tratree.models.loading import save_model

        print(f"tratree: warning: {ctx.stage.name}: no preference pairs; the output is the initial policy "
              f"({names[0]}) unchanged", file=sys.stderr)
        save_model(model, tok, ctx.out)
        return _record(ctx, {"pairs": 0, "steps": 0, "planned_steps": 0, "lr_sum": 0.0, "weight_change": 0.0,
                             "few_steps": True, "note": f"no preference pairs; the output is {names[0]} unchanged"})
    result = train_dpo(model, tok, pairs, ctx.spec.environment.name, ctx.spec.training.dpo, ctx.out,
                       ref_model, ref_tok, ctx.spec.strong.lora, ctx.stage.params["seed"])
    return _record(ctx, {k: v for k, v in result.items() if k not in ("losses", "ref_logps", "margins")}
                   | {"margins": result["margins"][-20:]}, result["losses"])


# what of a model's training.json its evaluation passes on to the report
REPORTED = ("pairs", "steps", "planned_steps", "examples", "lr_sum", "weight_change", "few_steps", "preference",
            "losses", "note", "compute")


def _record(ctx: StageContext, summary: dict[str, Any], losses: list[float] | None = None) -> dict[str, Any]:
    """Keep the training summary (optimizer steps, learning rate summed over them, how far the weights
    moved, DPO's fit to its pairs) and the loss at every step beside the model, so its evaluation and
    the report can show them; the stage's manifest gets the last 20 losses."""
    (ctx.out / TRAINING).write_text(json.dumps({**summary, "losses": losses or []}, indent=2) + "\n")
    return {**summary, "losses": (losses or [])[-20:]}
