"""Stages that make data: expert trajectories, exploration, trees, pairs, MCTS paths."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tratree.agent.rollout import Episode
from tratree.pipeline.actions.context import StageContext, StageError
from tratree.records.formats import Pair, Trajectory, read_jsonl, write_jsonl

TRAJECTORIES = "trajectories.jsonl"


def expert(ctx: StageContext) -> dict[str, Any]:
    from tratree.agent.expert import expert_trajectories

    trajs = expert_trajectories(ctx.spec, "train")
    if not trajs:
        env = ctx.spec.environment
        where = ctx.spec.expert.path if ctx.spec.expert.source == "file" else (
            f"environment {env.name}, tasks {env.tasks}, gameParams {env.game_params!r}")
        raise StageError(f"expert: no expert trajectories from {where}")
    write_jsonl(ctx.out / TRAJECTORIES, trajs)
    return {"trajectories": len(trajs), "full_score": sum(t.score >= 1.0 for t in trajs)}


def corpus(ctx: StageContext) -> dict[str, Any]:
    from tratree.agent.corpus import noisy_expert_play

    trajs = list(noisy_expert_play(ctx.spec))
    if not trajs:
        env = ctx.spec.environment
        raise StageError(f"corpus: no dev-split games of {env.tasks} to play (gameParams {env.game_params!r})")
    write_jsonl(ctx.out / TRAJECTORIES, trajs)
    return {"trajectories": len(trajs), "successes": sum(t.success for t in trajs),
            "steps": sum(len(t.steps) for t in trajs)}


def acting_prompt(ctx: StageContext) -> str:
    """The stage's acting prompt, its in-context example from the expert stage when the spec wants one."""
    from tratree.records.prompts import acting_prompt as build

    env = ctx.spec.environment
    expert = read_jsonl(ctx.input("expert") / TRAJECTORIES, Trajectory) if env.icl_example else None
    try:
        return build(env.name, env.icl_example, expert)
    except ValueError as err:
        raise StageError(f"{ctx.stage.name}: {err}") from None


def model_input(ctx: StageContext) -> Path:
    """The directory of the model a stage acts with: its one input that is not the expert data."""
    (model_dir,) = (p for name, p in ctx.inputs.items() if name != "expert")
    return model_dir


def act(ctx: StageContext, episodes: list[Episode], description: str) -> list[Trajectory]:
    """The stage's episodes run by its model (only its shard's slice of them, for a shard), or, for
    a merge, its shards' trajectories put in episode order; written to the stage's trajectories file."""
    from tratree.agent.episodes import merge_shards, run_to_file, shard_slice

    out = ctx.out / TRAJECTORIES
    if ctx.merge_from is not None:
        parts = [read_jsonl(d / TRAJECTORIES, Trajectory) for d in ctx.merge_from]
        try:
            trajs = merge_shards(episodes, parts)
        except ValueError as err:
            raise StageError(f"{ctx.stage.name}: the shards do not add up to the stage's episodes: {err}") from None
        write_jsonl(out, trajs)
        return trajs
    from tratree.policy import make_backend

    model_dir = model_input(ctx)
    backend = make_backend(ctx.spec.policy, str(model_dir))
    return run_to_file(ctx.spec, backend, shard_slice(episodes, ctx.shard), out, description, str(model_dir),
                       acting_prompt(ctx))


def explore(ctx: StageContext) -> dict[str, Any]:
    from tratree.agent.explore import exploration_episodes, split_tasks

    params = ctx.stage.params
    episodes = exploration_episodes(ctx.spec, split_tasks(ctx.spec, "train"), params["policy_name"], params["samples"],
                                    params["exploration"]["seed"])
    trajs = act(ctx, episodes, "exploring" if ctx.shard is None else f"exploring (shard {ctx.shard[0]})")
    if ctx.shard is not None:
        return {"episodes": len(trajs), "successes": sum(t.success for t in trajs)}
    if not trajs:
        raise StageError(f"{ctx.stage.name}: no episodes: the environment has no training tasks for this spec")
    return {"trajectories": len(trajs), "successes": sum(t.success for t in trajs),
            "mean_score": sum(t.score for t in trajs) / max(1, len(trajs))}


def trees(ctx: StageContext) -> dict[str, Any]:
    from tratree.method.tree import build_trees, summarize

    trajs = read_jsonl(ctx.input_of("explore") / TRAJECTORIES, Trajectory)
    embed = None
    if ctx.spec.tree.similarity < 1.0:
        from tratree.method.embeddings import load_embedder

        embed = load_embedder(ctx.spec.tree.embedding_model, ctx.spec.tree.embedding_batch_size)
    built = build_trees(trajs, ctx.spec.tree.similarity, embed)
    with (ctx.out / "trees.jsonl").open("w") as fh:
        for t in built:
            fh.write(t.to_json() + "\n")
    stats = summarize(built)
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


PAIR_STATS = "stats.json"


def pairs(ctx: StageContext) -> dict[str, Any]:
    """TreeDPO pairs of the trees, or (random mode) as many random pairs per task of the explored
    trajectories as they were generated; random mode counts the pairs that coincide with a tree pair."""
    from tratree.method.pairs import coinciding, pairs_of_trees, random_pairs_like_trees
    from tratree.method.tree import read_trees

    cfg = ctx.spec.tree_dpo
    tasks: set[str] = set()
    trees = read_trees(ctx.input_of("trees") / "trees.jsonl")

    def counted(pairs: Iterator[Pair]) -> Iterator[Pair]:
        for pair in pairs:  # streamed to the file: memory stays that of one tree's pairs
            tasks.add(pair.task_id)
            yield pair

    tree_pairs = pairs_of_trees(trees, cfg.min_score_gap, cfg.continuation, cfg.max_pairs_per_tree,
                                cfg.max_pairs_per_node)
    stats: dict[str, Any] = {}
    if ctx.stage.params["mode"] == "random":
        explored = read_jsonl(ctx.input_of("explore") / TRAJECTORIES, Trajectory)
        made = random_pairs_like_trees(trees, explored, cfg.min_score_gap, cfg.max_pairs_per_tree,
                                       cfg.max_pairs_per_node, cfg.seed)
        n = write_jsonl(ctx.out / "pairs.jsonl", counted(iter(made)))
        tree_side = list(tree_pairs)
        stats = {"tree_pairs": len(tree_side), "coinciding_with_tree_pairs": coinciding(made, tree_side)}
    else:
        n = write_jsonl(ctx.out / "pairs.jsonl", counted(tree_pairs))
    if not n:
        print(f"tratree: warning: {ctx.stage.name}: the trees gave no preference pairs (no divergence point with a "
              f"value gap above {cfg.min_score_gap}); DPO will return its initial policy unchanged", file=sys.stderr)
    stats = {"pairs": n, "tasks": len(tasks), **stats}
    (ctx.out / PAIR_STATS).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def mcts(ctx: StageContext) -> dict[str, Any]:
    from tratree.method.mcts import mcts_path, path_line
    from tratree.method.tree import read_trees
    from tratree.store.atomic import atomic_write

    cfg = ctx.spec.mcts
    paths = [mcts_path(t, cfg.iterations, cfg.exploration, cfg.seed) for t in read_trees(ctx.input_of("trees") / "trees.jsonl")]
    with atomic_write(ctx.out / "paths.jsonl") as fh:
        fh.writelines(path_line(p) + "\n" for p in paths)
    return {"paths": len(paths), "mean_value": sum(p["value"] for p in paths) / max(1, len(paths))}
