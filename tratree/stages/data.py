"""Stages that make data: expert trajectories, exploration, trees, pairs, MCTS paths."""

from __future__ import annotations

import json
from typing import Any

from tratree.formats import Trajectory, read_jsonl, write_jsonl
from tratree.stages import StageContext

TRAJECTORIES = "trajectories.jsonl"


def expert(ctx: StageContext) -> dict[str, Any]:
    from tratree.expert import expert_trajectories

    trajs = expert_trajectories(ctx.spec, "train")
    write_jsonl(ctx.out / TRAJECTORIES, trajs)
    return {"trajectories": len(trajs), "full_score": sum(t.score >= 1.0 for t in trajs)}


def explore(ctx: StageContext) -> dict[str, Any]:
    from tratree.explore import explore as run
    from tratree.policy import make_backend

    (model_dir,) = ctx.inputs.values()
    backend = make_backend(ctx.spec.policy, str(model_dir))
    trajs = run(ctx.spec, backend, ctx.out / TRAJECTORIES, ctx.stage.params["policy_name"],
                samples=ctx.stage.params["samples"])
    return {"trajectories": len(trajs), "successes": sum(t.success for t in trajs),
            "mean_score": sum(t.score for t in trajs) / max(1, len(trajs))}


def trees(ctx: StageContext) -> dict[str, Any]:
    from tratree.tree import build_trees, summarize

    trajs = read_jsonl(ctx.input("explore") / TRAJECTORIES, Trajectory)
    embed = None
    if ctx.spec.tree.similarity < 1.0:
        from tratree.embeddings import load_embedder

        embed = load_embedder(ctx.spec.tree.embedding_model, ctx.spec.tree.embedding_batch_size)
    built = build_trees(trajs, ctx.spec.tree.similarity, embed)
    with (ctx.out / "trees.jsonl").open("w") as fh:
        for t in built:
            fh.write(t.to_json() + "\n")
    stats = summarize(built)
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def pairs(ctx: StageContext) -> dict[str, Any]:
    from tratree.pairs import random_pairs, tree_pairs
    from tratree.tree import read_trees, task_rng

    cfg = ctx.spec.tree_dpo
    out = []
    for tree in read_trees(ctx.input("trees") / "trees.jsonl"):
        if ctx.stage.params["mode"] == "tree":
            out.extend(tree_pairs(tree, cfg.min_score_gap, cfg.continuation, cfg.max_pairs_per_tree))
        else:
            out.extend(random_pairs(tree, task_rng(cfg.seed, tree.task_id), cfg.max_pairs_per_tree))
    write_jsonl(ctx.out / "pairs.jsonl", out)
    return {"pairs": len(out)}


def mcts(ctx: StageContext) -> dict[str, Any]:
    from tratree.mcts import mcts_path
    from tratree.tree import read_trees

    cfg = ctx.spec.mcts
    paths = [mcts_path(t, cfg.iterations, cfg.exploration, cfg.seed) for t in read_trees(ctx.input("trees") / "trees.jsonl")]
    write_jsonl(ctx.out / "paths.jsonl", paths)
    return {"paths": len(paths), "mean_value": sum(p.value for p in paths) / max(1, len(paths))}
