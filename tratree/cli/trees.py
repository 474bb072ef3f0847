"""The commands on records that need no model: importing ETO conversations, building, summarising and drawing
trees, TreeDPO and random pairs, offline MCTS. They import neither torch nor pydantic until a record needs it."""

from __future__ import annotations

import argparse
import json
import sys

from tratree.cli.args import (
    CLIError,
    add_command,
    non_negative_float,
    non_negative_int,
    positive_int,
    unit_float,
    write_lines,
)


def _trajectory_model() -> type:
    from tratree.records.formats import Trajectory

    return Trajectory


def _read_trajectories_or_trees(path: str):
    """Trees from a trees file, or built (exact match) from a trajectories file."""
    from tratree.method.tree import build_trees, read_trees
    from tratree.records.fast import iter_jsonl, record_kind, trajectory_view

    if record_kind(path) == "trajectory":
        return build_trees(iter_jsonl(path, _trajectory_model, fast=trajectory_view))
    return read_trees(path)


def cmd_import_eto(args: argparse.Namespace) -> None:
    from tratree.records.formats import read_eto, write_jsonl

    trajectories = read_eto(args.conversations)
    n = write_jsonl(args.output, trajectories)
    print(f"imported {n} trajectories from {args.conversations} -> {args.output}", file=sys.stderr)


def cmd_tree_build(args: argparse.Namespace) -> None:
    from tratree.method.tree import build_trees, summarize
    from tratree.progress import track
    from tratree.records.fast import iter_jsonl, trajectory_view

    embed = None
    if args.similarity < 1.0:
        from tratree.method.embeddings import load_embedder

        embed = load_embedder(args.embedding_model, show_progress=sys.stderr.isatty())
    trajectories = track(iter_jsonl(args.trajectories, _trajectory_model, fast=trajectory_view), "building trees")
    trees = build_trees(trajectories, similarity=args.similarity, embed=embed)
    write_lines(args.output, (t.to_json() for t in trees))
    s = summarize(trees)
    print(
        f"{s['trees']} trees from {s['trajectories']} trajectories: {s['nodes']} nodes, "
        f"{s['divergence_points']} divergence points -> {args.output}",
        file=sys.stderr,
    )


def cmd_tree_stats(args: argparse.Namespace) -> None:
    from tratree.method.tree import summarize

    trees = _read_trajectories_or_trees(args.trees)
    summary = summarize(trees)
    if args.json:
        print(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trees in {args.trees}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), str(value))
    Console().print(table)


def cmd_tree_render(args: argparse.Namespace) -> None:
    from tratree.method.mcts import search
    from tratree.method.tree import task_rng
    from tratree.method.treeview import render_html
    from tratree.store.atomic import atomic_write

    trees = {t.task_id: t for t in _read_trajectories_or_trees(args.trees)}
    tree = trees.get(args.task)
    if tree is None:
        known = ", ".join(list(trees)[:5])
        raise CLIError(f"{args.trees}: no tree for task {args.task!r} (tasks include: {known})")
    path = None
    if args.paths:
        from tratree.records.formats import PathRecord, iter_jsonl

        path = next((p.nodes for p in iter_jsonl(args.paths, PathRecord) if p.task_id == args.task), None)
        if path is None:
            raise CLIError(f"{args.paths}: no path for task {args.task!r}")
        if any(not 0 < v < len(tree) for v in path):
            raise CLIError(f"{args.paths}: the path of task {args.task!r} names nodes outside its tree")
    else:
        path = search(tree, args.iterations, args.exploration, task_rng(args.seed, tree.task_id)).nodes
    with atomic_write(args.output) as fh:
        fh.write(render_html(tree, path))
    print(f"wrote {args.output} ({len(tree) - 1} nodes)", file=sys.stderr)


def cmd_pairs(args: argparse.Namespace) -> None:
    from tratree.method.pairs import pairs_of_trees, random_pairs_like_trees
    from tratree.records.fast import record_kind

    trees = _read_trajectories_or_trees(args.trees)
    cap = None if args.max_pairs_per_node == 0 else args.max_pairs_per_node
    if args.mode == "tree":
        pairs = pairs_of_trees(trees, args.min_gap, args.continuation, args.max_pairs_per_tree, cap)
    else:
        from tratree.records.formats import Trajectory, read_jsonl

        source = args.trajectories or (args.trees if record_kind(args.trees) == "trajectory" else None)
        if source is None:
            raise CLIError(f"{args.trees}: random pairs are drawn from the explored trajectories: give them with "
                           "--trajectories TRAJ.jsonl (or pass the trajectories file instead of the trees)")
        pairs = random_pairs_like_trees(trees, read_jsonl(source, Trajectory), args.min_gap, args.max_pairs_per_tree,
                                        cap, args.seed)
    n = write_lines(args.output, (p.model_dump_json() for p in pairs))
    print(f"{n} {args.mode} pairs from {len(trees)} trees -> {args.output}", file=sys.stderr)


def cmd_mcts(args: argparse.Namespace) -> None:
    from tratree.method.mcts import mcts_path, path_line
    from tratree.progress import track

    trees = _read_trajectories_or_trees(args.trees)
    paths = [
        mcts_path(t, args.iterations, args.exploration, args.seed) for t in track(trees, "MCTS", total=len(trees))
    ]
    write_lines(args.output, map(path_line, paths))
    mean = sum(p["value"] for p in paths) / len(paths) if paths else 0.0
    print(f"{len(paths)} MCTS paths (mean value {mean:.3f}) -> {args.output}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `tratree` parser."""
    imp = sub.add_parser("import", help="import trajectories from other tools")
    imp_sub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    sp = add_command(imp_sub, "eto", cmd_import_eto, "ETO/TraTree conversations JSON -> trajectories JSONL")
    sp.add_argument("conversations")
    sp.add_argument("-o", "--output", required=True)

    tree = sub.add_parser("tree", help="build, summarise and draw trajectory trees")
    tree_sub = tree.add_subparsers(dest="tree_command", required=True, metavar="ACTION")
    sp = add_command(tree_sub, "build", cmd_tree_build, "merge trajectories into one tree per task")
    sp.add_argument("trajectories")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--similarity", type=unit_float, default=1.0, help="xi_sim; 1.0 = exact observation match")
    sp.add_argument("--embedding-model", default="sentence-transformers/all-MiniLM-L6-v2", help="id or path")
    sp = add_command(tree_sub, "stats", cmd_tree_stats, "summarise trees (or a trajectories file, built exactly)")
    sp.add_argument("trees")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp = add_command(tree_sub, "render", cmd_tree_render, "draw one task's tree as a self-contained HTML page")
    sp.add_argument("trees")
    sp.add_argument("--task", required=True)
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--paths", help="PATHS.jsonl whose path to mark (default: run MCTS)")
    sp.add_argument("--iterations", type=positive_int, default=100)
    sp.add_argument("--exploration", type=non_negative_float, default=1.41)
    sp.add_argument("--seed", type=int, default=0)

    sp = add_command(sub, "pairs", cmd_pairs, "preference pairs from trees")
    sp.add_argument("trees")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--min-gap", type=non_negative_float, default=0.0)
    sp.add_argument("--mode", choices=["tree", "random"], default="tree",
                    help="random: Table 5's baseline, whole explored trajectories of different score, as many per "
                    "task as its tree gives TreeDPO pairs")
    sp.add_argument("--trajectories", help="the explored trajectories random pairs are drawn from (random mode, "
                    "when TREES is a trees file)")
    sp.add_argument("--continuation", choices=["leaf", "first-step"], default="leaf")
    sp.add_argument("--max-pairs-per-tree", type=positive_int, default=None)
    sp.add_argument("--max-pairs-per-node", type=non_negative_int, default=15,
                    help="the widest pairs kept at one divergence point (default 15; 0: every pair)")
    sp.add_argument("--seed", type=int, default=0)

    sp = add_command(sub, "mcts", cmd_mcts, "offline MCTS on each tree -> e* paths")
    sp.add_argument("trees")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--iterations", type=positive_int, default=100)
    sp.add_argument("--exploration", type=non_negative_float, default=1.41)
    sp.add_argument("--seed", type=int, default=0)
