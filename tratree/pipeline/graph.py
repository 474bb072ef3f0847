"""The stage graph: which stages a spec's methods need, what each reads, and its cache key.

A stage is a function of its inputs: its cache key hashes the spec fields it reads (its
``params``), the digests of its inputs' outputs and the version of its action's outputs
(``STAGE_VERSIONS``). Same key, same output: the stored one is reused. A change to the CLI, the
operator, the report or any other stage never invalidates a trained model, so an image upgrade
keeps every experiment in flight. The local runner and the operator's Jobs both plan with this
module and run the same stage code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tratree import __version__
from tratree.errors import UserError
from tratree.models.tiny import preset_name
from tratree.spec.experiment import ExperimentSpec, ModelSpec, ShardedSpec, StageKind

W2SG_METHODS = ("w2s-mcts", "w2s-treedpo", "w2s-random-dpo")


@dataclass(frozen=True)
class Stage:
    """One node of the graph. ``action`` names the code that runs it (see tratree.pipeline.actions)."""

    name: str
    action: str
    kind: StageKind
    inputs: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    gpu: bool = False
    shards: int = 1  # an acting stage split into this many slices of its tasks (not part of its key)
    parallelism: int | None = None

    def prefix(self, key: str) -> str:
        """Where its outputs live in the store."""
        return f"stages/{self.name}/{key}"


# The version of what each stage action writes. Bump an action's number when its outputs would
# differ for the same inputs and settings (an algorithm, a format, a default it reads); that stage
# and everything after it then runs again, and nothing else does.
STAGE_VERSIONS: dict[str, int] = {
    "expert": 2,  # 2: ScienceWorld episodes open with the task alone, as ETO's
    "corpus": 1,
    "tokenizer": 1,
    "pretrain": 2,  # 2: warmup floor(ratio x steps), not the library's ceiling; what the run did (training.json)
    "sft": 3,  # 2: the loss at every step kept (training.json); 3: as pretrain 2
    "explore": 2,  # 2: in-context example, per-task step limits
    "trees": 1,
    "pairs": 2,  # 2: random pairs of the explored trajectories as generated, not of tree paths; stats.json
    "mcts": 1,
    "dpo": 3,  # 2: the loss at every step kept (training.json); 3: as pretrain 2, fit to its pairs before/after
    "evaluate": 3,  # 2: in-context example, per-task step limits; 3: invalid actions, the model's losses
    "report": 4,  # 2: tree informativeness, invalid actions, training curves; 3: pretraining curves; 4: optimizer
    # steps, paired statistics over games with Holm's correction, random pairs coinciding with tree pairs
}


@cache
def code_version() -> str:
    """tratree's version and a digest of its sources, recorded in each manifest (never in a key)."""
    h = hashlib.sha256()
    root = Path(__file__).parents[1]  # the whole package, not this module's folder
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def cache_key(stage: Stage, input_digests: dict[str, str]) -> str:
    """The content address of a stage's outputs."""
    blob = json.dumps(
        {"action": stage.action, "version": STAGE_VERSIONS[stage.action], "params": stage.params,
         "inputs": input_digests},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def fingerprints(stages: list[Stage]) -> dict[str, str]:
    """A key per stage from the spec alone: its params and its inputs' fingerprints.

    Unlike the cache key it needs no input digests, so it is known before anything runs. The
    operator names Jobs by it and re-runs a stage when a spec edit changes it.
    """
    out: dict[str, str] = {}
    for stage in stages:
        blob = json.dumps(
            {"action": stage.action, "params": stage.params, "inputs": {n: out[n] for n in stage.inputs}},
            sort_keys=True,
        )
        out[stage.name] = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return out


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True) if model is not None else None


def _dump_model(model: ModelSpec) -> dict[str, Any]:
    # a model's pretraining reaches the stages after it as the digest of its pretrain stage
    return model.model_dump(mode="json", by_alias=True, exclude={"pretrain"})


def _dump_acting(model: ShardedSpec, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    # how a stage is split across Pods does not change what it makes, so it stays out of its key
    return model.model_dump(mode="json", by_alias=True, exclude={*ShardedSpec.model_fields, *exclude})


def _exploration(spec: ExperimentSpec, seed: int) -> dict[str, Any]:
    """The exploration settings of one draw: perSeed is in the stage names and the sampling seed, not the key."""
    params = _dump_acting(spec.exploration, ("per_seed",))
    return params | {"seed": spec.exploration.seed + seed}


def plan(spec: ExperimentSpec) -> list[Stage]:
    """The stages the spec's methods need, in an order where every input comes first."""
    methods = set(spec.methods)
    env = _dump(spec.environment)
    policy = {k: v for k, v in _dump(spec.policy).items() if k in ("backend", "endpoint", "maxNewTokens")}
    tiny = any(preset_name(m.model) for m in (spec.weak, spec.strong))
    tok = ("tokenizer",) if tiny else ()
    stages: dict[str, Stage] = {}

    def add(name: str, action: str, kind: StageKind, inputs: tuple[str, ...], gpu: bool = False,
            split: ShardedSpec | None = None, **params: Any) -> str:
        shards, parallelism = (split.shards, split.parallelism) if split is not None else (1, None)
        stages[name] = Stage(name, action, kind, inputs, params, gpu, shards, parallelism)
        return name

    def sft(name: str, data: str, seed: int, data_stage: str, init: str | None = None) -> str:
        # ``init``: the stage whose model it starts from, instead of the strong model's (pretrained) base
        start = {"init": init} if init else {}
        return add(name, "sft", "sft", (data_stage, *tok, *((init,) if init else pretrained["strong"])), True,
                   model=_dump_model(spec.strong), data=data, seed=seed,
                   training=_dump(spec.strong.sft or spec.training.sft), env=spec.environment.name, **start)

    # acting stages read the in-context example from the expert data
    example = ("expert",) if spec.environment.icl_example else ()

    # dev-split test tasks start after the games a pretraining corpus played (in the key only then)
    skipped = spec.corpus_games(spec.environment.test_split)
    corpus_games = {"corpus_games": skipped} if skipped else {}

    def evaluate(method: str, model_stage: str, seed: int, best_of: int | None = None) -> None:
        add(f"eval-{method}-s{seed}", "evaluate", "evaluate", (model_stage, *example), True, spec.evaluation, env=env,
            policy=policy, evaluation=_dump_acting(spec.evaluation), best_of=best_of, method=method, seed=seed,
            **corpus_games)

    add("expert", "expert", "expert", (), env=env, expert=_dump(spec.expert))
    if spec.pretraining is not None:
        # what the corpus depends on, and no more: experiments that differ in their training or test
        # tasks share the corpus, the tokenizer trained on it and the pretrained models
        played = {k: env[k] for k in ("name", "tasks", "gameParams", "maxSteps")}
        add("corpus", "corpus", "expert", (), env=played, pretraining=_dump(spec.pretraining))
    if tiny:
        add("tokenizer", "tokenizer", "sft", ("corpus",) if "corpus" in stages else ("expert",),
            env=spec.environment.name)
    # a pretrained tiny model is the base of every SFT of that model (seed 0: one base, as a hub model is)
    pretrained: dict[str, tuple[str, ...]] = {"weak": (), "strong": ()}
    for role, model in (("weak", spec.weak), ("strong", spec.strong)):
        if model.pretrain is not None:
            # the model and nothing about its later fine-tuning: experiments differing in SFT share it
            base = model.model_dump(mode="json", by_alias=True, include={"model", "dtype"})
            pretrained[role] = (add(f"pretrain-{role}", "pretrain", "sft", ("corpus", *tok), True, model=base,
                              training=_dump(model.pretrain), seed=0, env=spec.environment.name),)
    needs_weak = bool(methods & {"sft-weak", *W2SG_METHODS})
    if needs_weak:
        add("sft-weak", "sft", "sft", ("expert", *tok, *pretrained["weak"]), True, model=_dump_model(spec.weak), data="expert", seed=0,
            training=_dump(spec.weak.sft or spec.training.sft), env=spec.environment.name)
    # the weak side's data: one draw for every seed, or (exploration.perSeed) one per seed
    draws = {seed: f"-s{seed}" if spec.exploration.per_seed else "" for seed in spec.seeds}
    for seed, suffix in draws.items():
        if not methods & set(W2SG_METHODS) or f"explore{suffix}" in stages:
            continue
        draw = seed if suffix else 0
        add(f"explore{suffix}", "explore", "explore", ("sft-weak", *example), True, spec.exploration, env=env,
            policy=policy, exploration=_exploration(spec, draw), policy_name="sft-weak",
            samples=spec.exploration.trajectories_per_task)
        add(f"trees{suffix}", "trees", "trees", (f"explore{suffix}",), tree=_dump(spec.tree))
        if "w2s-treedpo" in methods:
            add(f"pairs{suffix}", "pairs", "trees", (f"trees{suffix}",), mode="tree", treeDpo=_dump(spec.tree_dpo))
        if "w2s-random-dpo" in methods:
            add(f"random-pairs{suffix}", "pairs", "trees", (f"trees{suffix}", f"explore{suffix}"), mode="random",
                treeDpo=_dump(spec.tree_dpo))
        if "w2s-mcts" in methods:
            # where its paths' SFT starts is the SFT's business, not the search's
            add(f"mcts{suffix}", "mcts", "trees", (f"trees{suffix}",),
                mcts=spec.mcts.model_dump(mode="json", by_alias=True, exclude={"init"}))
    if "sft-weak" in methods:
        evaluate("sft-weak", "sft-weak", 0)
    dpo = _dump(spec.training.dpo)
    for seed in spec.seeds:
        base = f"sft-strong-s{seed}"
        suffix = draws[seed]
        dpo_from_sft = bool(methods & {"w2s-treedpo", "w2s-random-dpo"}) and spec.tree_dpo.init == "sft-strong"
        mcts_from_sft = "w2s-mcts" in methods and spec.mcts.init == "sft-strong"
        if methods & {"sft-strong", "best-of-n", "eto", "ceiling"} or dpo_from_sft or mcts_from_sft:
            sft(base, "expert", seed, "expert")
        if "sft-strong" in methods:
            evaluate("sft-strong", base, seed)
        if "best-of-n" in methods:
            evaluate("best-of-n", base, seed, spec.evaluation.best_of_n)
        if "w2s-mcts" in methods:
            evaluate("w2s-mcts", sft(f"w2s-mcts-s{seed}", "mcts", seed, f"mcts{suffix}",
                                     base if mcts_from_sft else None), seed)
        if methods & {"w2s-treedpo", "w2s-random-dpo"}:
            init = base if dpo_from_sft else sft(f"w2s-init-s{seed}", "best-explored", seed, f"explore{suffix}")
            ref = ("sft-weak",) if spec.tree_dpo.reference == "weak-sft" else ()
            for method, pairs in (("w2s-treedpo", f"pairs{suffix}"), ("w2s-random-dpo", f"random-pairs{suffix}")):
                if method in methods:
                    name = add(f"{method}-s{seed}", "dpo", "dpo", (init, pairs, *ref), True, training=dpo,
                               lora=_dump(spec.strong.lora), seed=seed, env=spec.environment.name)
                    evaluate(method, name, seed)
        if methods & {"eto", "ceiling"}:
            # ETO pairs one own trajectory per task with the expert's
            own = add(f"strong-explore-s{seed}", "explore", "explore", (base, *example), True, spec.exploration,
                      env=env, policy=policy, exploration=_exploration(spec, 0),
                      policy_name=f"sft-strong-s{seed}", samples=1)
            for method in ("eto", "ceiling"):
                if method in methods:
                    name = add(f"{method}-s{seed}", "dpo", "dpo", (base, own, "expert"), True, training=dpo,
                               lora=_dump(spec.strong.lora), seed=seed, env=spec.environment.name, pairs=method)
                    evaluate(method, name, seed)
    evals = tuple(n for n in stages if n.startswith("eval-"))
    extras = tuple(n for n in stages if re.fullmatch(r"(trees|mcts|pairs|random-pairs)(-s\d+)?|pretrain-(weak|strong)", n))
    add("report", "report", "report", (*evals, *extras), methods=list(spec.methods), seeds=list(spec.seeds))
    return list(stages.values())


class UnknownStage(UserError, ValueError):
    """A stage name that is not in the experiment's graph."""


def select(stages: list[Stage], only: list[str]) -> list[Stage]:
    """The named stages and everything they need; unknown names are a ValueError listing the known ones."""
    by_name = {s.name: s for s in stages}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise UnknownStage(f"unknown stage {unknown[0]!r} (stages: {', '.join(by_name)})")
    wanted: set[str] = set()
    todo = list(only)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].inputs)
    return [s for s in stages if s.name in wanted]
