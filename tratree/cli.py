"""The `tratree` command line.

Heavy modules are imported inside the commands that need them, so the tree, pairs and
MCTS commands start without torch. Bad input exits with status 2 and a one-line error;
outputs are written atomically, so a failed command leaves no output file behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tratree import __version__

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user error the CLI reports in one line with exit status 2."""


def _read_trajectories_or_trees(path: str):
    """Trees from a trees file, or built (exact match) from a trajectories file."""
    from tratree.method.tree import build_trees, read_trees
    from tratree.records.fast import iter_jsonl, record_kind, trajectory_view

    if record_kind(path) == "trajectory":
        return build_trees(iter_jsonl(path, "Trajectory", fast=trajectory_view))
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
    trajectories = track(iter_jsonl(args.trajectories, "Trajectory", fast=trajectory_view), "building trees")
    trees = build_trees(trajectories, similarity=args.similarity, embed=embed)
    _write_lines(args.output, (t.to_json() for t in trees))
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
    from tratree.records.formats import PathRecord, iter_jsonl
    from tratree.store.atomic import atomic_write

    trees = {t.task_id: t for t in _read_trajectories_or_trees(args.trees)}
    tree = trees.get(args.task)
    if tree is None:
        known = ", ".join(list(trees)[:5])
        raise CLIError(f"{args.trees}: no tree for task {args.task!r} (tasks include: {known})")
    path = None
    if args.paths:
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
    n = _write_lines(args.output, (p.model_dump_json() for p in pairs))
    print(f"{n} {args.mode} pairs from {len(trees)} trees -> {args.output}", file=sys.stderr)


def cmd_mcts(args: argparse.Namespace) -> None:
    from tratree.method.mcts import mcts_path, path_line
    from tratree.progress import track

    trees = _read_trajectories_or_trees(args.trees)
    paths = [
        mcts_path(t, args.iterations, args.exploration, args.seed) for t in track(trees, "MCTS", total=len(trees))
    ]
    _write_lines(args.output, map(path_line, paths))
    mean = sum(p["value"] for p in paths) / len(paths) if paths else 0.0
    print(f"{len(paths)} MCTS paths (mean value {mean:.3f}) -> {args.output}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> None:
    from tratree.spec.experiment import load_experiment, spec_to_manifest

    exp = load_experiment(args.experiment)
    if args.print:
        import yaml

        print(yaml.safe_dump(spec_to_manifest(exp), sort_keys=False), end="")
        return
    from tratree.envs.names import unknown_tasks
    from tratree.models import refs as modelref

    if unknown := unknown_tasks(exp.spec.environment):
        raise CLIError(f"{args.experiment}: spec.environment.tasks: {unknown}")
    for role, ref in (("weak", exp.spec.weak.model), ("strong", exp.spec.strong.model)):
        why = modelref.problem(ref)
        if why:  # a path that may exist only inside a stage image: said, not refused
            print(f"{args.experiment}: warning: {role}.model: {why} on this machine", file=sys.stderr)
        elif note := modelref.unchecked(ref):
            print(f"{args.experiment}: note: {role}.model: {note}", file=sys.stderr)
    print(f"{args.experiment}: valid W2SGExperiment '{exp.name}' (methods: {', '.join(exp.spec.methods)})")


def _experiment(path: str):
    from tratree.spec.experiment import load_experiment

    return load_experiment(path)


def _backend(exp, model: str):
    from tratree.policy import make_backend

    if exp.spec.policy.backend != "openai" and not model.startswith("s3://") and not Path(model).is_dir():
        raise CLIError(f"--model: {model} is not a model directory")
    return make_backend(exp.spec.policy, model)



def cmd_run(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tratree.models import refs as modelref
    from tratree.pipeline.runner import run_pipeline
    from tratree.policy import backend_problem

    exp = _experiment(args.experiment)
    if problem := backend_problem(exp.spec.policy):
        raise CLIError(f"{args.experiment}: {problem}")
    for role, ref in (("weak", exp.spec.weak.model), ("strong", exp.spec.strong.model)):
        # before the first stage, not hours into the run
        if why := modelref.problem(ref) or modelref.unreachable(ref):
            raise CLIError(f"{args.experiment}: {role}.model: {why}")
    store = args.artifacts or exp.spec.artifacts
    console = Console(stderr=True)
    console.print(f"[bold]{exp.name}[/]: artifacts in {store}")

    def show(event, stage, outcome, i, n):
        tag = f"[{i + 1:>2}/{n}] {stage.name}"
        if event == "start":
            console.print(f"{tag} …", highlight=False)
        elif outcome.status == "cached":
            console.print(f"{tag} [dim]cached[/]", highlight=False)
        else:
            console.print(f"{tag} [green]done[/] in {outcome.seconds:.1f}s", highlight=False)

    t0 = time.monotonic()
    outcomes = run_pipeline(exp.spec, store, args.only, show)
    table = Table(title=f"{exp.name}: {len(outcomes)} stages in {time.monotonic() - t0:.1f}s")
    for col in ("stage", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for o in outcomes:
        table.add_row(o.stage, o.status, f"{o.seconds:.1f}")
    console.print(table)
    report = next((o for o in outcomes if o.stage == "report"), None)
    if report is not None:
        from tratree.store.artifacts import open_store

        text = open_store(store).read_verified(report.manifest["prefix"], report.manifest, "results.md")
        print(text.decode(), file=sys.stderr)
        console.print(f"report: {open_store(store).url(report.manifest['prefix'])}/")
        if args.report_to:
            _copy_report(open_store(store), report.manifest, Path(args.report_to))
            console.print(f"report copied to {args.report_to}/")


def _copy_report(store: Any, manifest: dict[str, Any], folder: Path) -> None:
    """The report's tables and plots (not its tree pages), checked against the manifest, into ``folder``."""
    from tratree.store.artifacts import MANIFEST
    from tratree.store.atomic import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(manifest["files"]):
        if "/" not in name and name != MANIFEST:
            with atomic_write(folder / name, "wb") as f:
                f.write(store.read_verified(manifest["prefix"], manifest, name))


def cmd_stage(args: argparse.Namespace) -> None:
    from tratree.pipeline.runner import run_stage

    exp = _experiment(args.spec)
    inputs = None
    if args.input:
        inputs = {}
        for item in args.input:
            name, sep, prefix = item.partition("=")
            if not sep or not name or not prefix:
                raise CLIError(f"--input: {item!r} is not STAGE=PREFIX")
            inputs[name] = prefix
    shard = args.shard
    if shard is None and os.environ.get("JOB_COMPLETION_INDEX", "").isdigit():
        shard = int(os.environ["JOB_COMPLETION_INDEX"])  # a Pod of an Indexed Job: its shard
    outcome = run_stage(exp.spec, args.name, args.artifacts, inputs, shard)
    print(f"{args.name}: {outcome.status} ({outcome.key}) in {outcome.seconds:.1f}s", file=sys.stderr)


def cmd_expert(args: argparse.Namespace) -> None:
    from tratree.agent.expert import expert_trajectories
    from tratree.records.formats import write_jsonl

    exp = _experiment(args.experiment)
    trajs = expert_trajectories(exp.spec, args.split, args.limit)
    write_jsonl(args.output, trajs)
    full = sum(t.score >= 1.0 for t in trajs)
    print(f"{len(trajs)} expert trajectories ({full} at full score) -> {args.output}", file=sys.stderr)


def _acting_prompt(exp, expert_file: str | None) -> str:
    """The acting prompt of the experiment; its in-context example comes from ``expert_file`` (expert
    trajectories JSONL) or else from the spec's expert source."""
    from tratree.records.prompts import acting_prompt

    env = exp.spec.environment
    expert = None
    if env.icl_example:
        if expert_file:
            from tratree.records.formats import Trajectory, read_jsonl

            expert = read_jsonl(expert_file, Trajectory)
        else:
            from tratree.agent.expert import expert_trajectories

            expert = expert_trajectories(exp.spec, "train")
    try:
        return acting_prompt(env.name, env.icl_example, expert)
    except ValueError as err:
        raise CLIError(f"{expert_file or exp.spec.expert.path or 'expert'}: {err}") from None


def cmd_explore(args: argparse.Namespace) -> None:
    from tratree.agent.explore import explore

    exp = _experiment(args.experiment)
    trajs = explore(exp.spec, _backend(exp, args.model), args.output, model=args.model,
                    prompt=_acting_prompt(exp, args.expert), policy=args.policy_name, limit=args.limit)
    ok = sum(t.success for t in trajs)
    print(f"{len(trajs)} trajectories ({ok} successful) -> {args.output}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tratree.agent.episodes import dump_json
    from tratree.agent.evaluate import evaluate

    exp = _experiment(args.experiment)
    out = Path(args.output)
    trajs = args.trajectories or str(out.with_name(out.stem + ".trajectories.jsonl"))
    result = evaluate(exp.spec, _backend(exp, args.model), trajs, model=args.model,
                      prompt=_acting_prompt(exp, args.expert), split=args.split, limit=args.limit, best_of=args.best_of)
    result["model"] = args.model
    dump_json(out, result)
    print(f"{result['split']}: average reward {result['average_reward']:.1f}, success rate "
          f"{result['success_rate']:.1f}% over {result['tasks']} tasks -> {out}", file=sys.stderr)


def cmd_model_init(args: argparse.Namespace) -> None:
    from tratree.models import tiny

    name = tiny.preset_name(args.preset)
    if name is None:
        raise CLIError(f"--preset: {args.preset!r} is not a tiny:<preset> reference")
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from tratree.agent.expert import expert_trajectories

        exp = _experiment(args.experiment)
        trajs = expert_trajectories(exp.spec, "train", args.limit)
        tokenizer = tiny.train_tokenizer(tiny.corpus(exp.spec.environment.name, trajs))
    tiny.create(name, tokenizer, args.output, seed=args.seed)
    print(f"{args.preset} ({len(tokenizer)}-token vocabulary) -> {args.output}", file=sys.stderr)


def cmd_submit(args: argparse.Namespace) -> int:
    from datetime import datetime

    exp = _experiment(args.experiment)
    if args.name:
        from tratree.spec.experiment import EXPERIMENT_NAME, NAME_RULE

        if not EXPERIMENT_NAME.match(args.name):
            raise CLIError(f"--name: {args.name!r} is not a valid experiment name ({NAME_RULE})")
        exp = exp.model_copy(update={"name": args.name})
    try:
        from tratree.submit import SubmitError, submit, wait
    except ImportError as err:
        raise CLIError(f"tratree submit needs the Kubernetes client ({err.name}): pip install 'tratree[operator]'") from None
    try:
        api, ns = submit(exp, args.namespace)
        print(f"created w2sg/{exp.name} in namespace {ns}", file=sys.stderr)
        if not args.wait:
            print(f"follow it: kubectl get w2sg {exp.name} -n {ns} -w", file=sys.stderr)
            return 0

        def show(line: str) -> None:
            print(f"[{datetime.now().strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

        status = wait(api, ns, exp.name, args.timeout, show, poll=args.poll)
    except SubmitError as err:
        raise CLIError(str(err)) from None
    if status is None:
        print(f"tratree: error: w2sg/{exp.name} did not finish within {args.timeout:g}s", file=sys.stderr)
        return EXIT_BAD_INPUT
    if status.get("results"):
        _results_table(status["results"])
        if args.output:
            from tratree.store.atomic import atomic_write

            with atomic_write(args.output) as fh:
                json.dump(status["results"], fh, indent=2)
    if status["phase"] == "Failed":
        failed = next((c for c in status.get("conditions") or [] if c.get("type") in ("Failed",)), {})
        print(f"tratree: w2sg/{exp.name} failed: {failed.get('message', '')}", file=sys.stderr)
        return 1
    return 0


def _results_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="results (average reward and success rate ×100)")
    for col in ("method", "average reward", "success rate", "seeds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, row in results.items():
        table.add_row(method, f"{row.get('averageReward', 0):.1f} ± {row.get('averageRewardStd', 0):.1f}",
                      f"{row.get('successRate', 0):.1f}", str(row.get("seeds", "")))
    Console().print(table)


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tratree.analysis.compare import ResultsError, compare, load_results

    try:
        rows = compare(load_results(args.results), load_results(args.baseline), args.max_drop)
    except ResultsError as err:
        raise CLIError(str(err)) from None
    table = Table(title=f"{args.results} against {args.baseline} (max drop {args.max_drop:g})")
    for col in ("method", "baseline", "now", "change", "verdict"):
        table.add_column(col, justify="left" if col in ("method", "verdict") else "right")

    def num(value: float | None, sign: bool = False) -> str:
        return "—" if value is None else f"{value:+.1f}" if sign else f"{value:.1f}"

    for row in rows:
        verdict = "[green]ok[/]" if row.ok else "[red]missing[/]" if row.current is None else "[red]regressed[/]"
        table.add_row(row.method, num(row.baseline), num(row.current), num(row.delta, sign=True), verdict)
    Console().print(table)
    bad = [r.method for r in rows if not r.ok]
    if bad:
        print(f"tratree: regression in {', '.join(bad)} (more than {args.max_drop:g} below the baseline)", file=sys.stderr)
        return 1
    return 0


def _write_lines(path: str, lines) -> int:
    """Write lines atomically; how many."""
    from tratree.store.atomic import atomic_write

    n = 0
    with atomic_write(path) as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")
            n += 1
    return n


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _checked(ok: Callable[[float], bool], why: str) -> Callable[[str], float]:
    """An argparse type: a finite number for which ``ok`` holds, else '<text> <why>'."""

    def parse(text: str) -> float:
        value = _finite(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} {why}")
        return value

    return parse


_unit_float = _checked(lambda v: 0.0 < v <= 1.0, "is not in (0, 1]")
_non_negative_float = _checked(lambda v: v >= 0, "is negative")
_positive_float = _checked(lambda v: v > 0, "is not positive")
_poll_interval = _checked(lambda v: v >= 0.1, "is below 0.1 s: the API server is not polled faster")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `tratree` command."""
    p = argparse.ArgumentParser(prog="tratree", description="Weak-to-strong generalization with trajectory trees.")
    p.add_argument("--version", action="version", version=f"tratree {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    sp = add(sub, "validate", cmd_validate, "check an experiment file against the spec")
    sp.add_argument("experiment", help="EXPERIMENT.yaml (bare spec or W2SGExperiment manifest)")
    sp.add_argument("--print", action="store_true", help="print the full manifest with defaults")

    imp = sub.add_parser("import", help="import trajectories from other tools")
    imp_sub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    sp = add(imp_sub, "eto", cmd_import_eto, "ETO/TraTree conversations JSON -> trajectories JSONL")
    sp.add_argument("conversations")
    sp.add_argument("-o", "--output", required=True)

    tree = sub.add_parser("tree", help="build, summarise and draw trajectory trees")
    tree_sub = tree.add_subparsers(dest="tree_command", required=True, metavar="ACTION")
    sp = add(tree_sub, "build", cmd_tree_build, "merge trajectories into one tree per task")
    sp.add_argument("trajectories")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--similarity", type=_unit_float, default=1.0, help="xi_sim; 1.0 = exact observation match")
    sp.add_argument("--embedding-model", default="sentence-transformers/all-MiniLM-L6-v2", help="id or path")
    sp = add(tree_sub, "stats", cmd_tree_stats, "summarise trees (or a trajectories file, built exactly)")
    sp.add_argument("trees")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp = add(tree_sub, "render", cmd_tree_render, "draw one task's tree as a self-contained HTML page")
    sp.add_argument("trees")
    sp.add_argument("--task", required=True)
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--paths", help="PATHS.jsonl whose path to mark (default: run MCTS)")
    sp.add_argument("--iterations", type=_positive_int, default=100)
    sp.add_argument("--exploration", type=_non_negative_float, default=1.41)
    sp.add_argument("--seed", type=int, default=0)

    sp = add(sub, "pairs", cmd_pairs, "preference pairs from trees")
    sp.add_argument("trees")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--min-gap", type=_non_negative_float, default=0.0)
    sp.add_argument("--mode", choices=["tree", "random"], default="tree",
                    help="random: Table 5's baseline, whole explored trajectories of different score, as many per "
                    "task as its tree gives TreeDPO pairs")
    sp.add_argument("--trajectories", help="the explored trajectories random pairs are drawn from (random mode, "
                    "when TREES is a trees file)")
    sp.add_argument("--continuation", choices=["leaf", "first-step"], default="leaf")
    sp.add_argument("--max-pairs-per-tree", type=_positive_int, default=None)
    sp.add_argument("--max-pairs-per-node", type=_non_negative_int, default=15,
                    help="the widest pairs kept at one divergence point (default 15; 0: every pair)")
    sp.add_argument("--seed", type=int, default=0)

    sp = add(sub, "mcts", cmd_mcts, "offline MCTS on each tree -> e* paths")
    sp.add_argument("trees")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--iterations", type=_positive_int, default=100)
    sp.add_argument("--exploration", type=_non_negative_float, default=1.41)
    sp.add_argument("--seed", type=int, default=0)

    sp = add(sub, "run", cmd_run, "the whole pipeline on this machine (resumable, cached)")
    sp.add_argument("experiment")
    sp.add_argument("--artifacts", help="store URI (default: the spec's artifacts)")
    sp.add_argument("--only", nargs="+", metavar="STAGE", help="run these stages and what they need")
    sp.add_argument("--report-to", metavar="DIR", help="also copy the report's tables and plots into DIR (e.g. docs/)")

    sp = add(sub, "stage", cmd_stage, "run one stage against a store (what a Kubernetes Job runs)")
    sp.add_argument("name")
    sp.add_argument("--spec", required=True, help="EXPERIMENT.yaml")
    sp.add_argument("--artifacts", help="store URI (default: the spec's artifacts)")
    sp.add_argument("--input", action="append", metavar="STAGE=PREFIX",
                    help="where an input stage's outputs are in the store (repeat for each; the operator passes them)")
    sp.add_argument("--shard", type=_non_negative_int, metavar="K",
                    help="run shard K of a sharded stage (default: $JOB_COMPLETION_INDEX in an Indexed Job's Pod, "
                         "else every shard in turn); the run that finds every shard done merges them")

    sp = add(sub, "expert", cmd_expert, "gold trajectories of the experiment's environment")
    sp.add_argument("experiment")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--split", choices=["train", "dev", "test"], default="train")
    sp.add_argument("--limit", type=_positive_int, default=None)

    sp = add(sub, "explore", cmd_explore, "sample trajectories of a model on the training tasks (resumable)")
    sp.add_argument("experiment")
    sp.add_argument("--model", required=True, help="model directory (or served name for the openai backend)")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--limit", type=_positive_int, default=None, help="at most N tasks")
    sp.add_argument("--policy-name", default="sft-weak", help="recorded in each trajectory's meta.policy")
    sp.add_argument("--expert", metavar="EXPERT.jsonl",
                    help="expert trajectories to take the in-context example from (default: the spec's expert)")

    sp = add(sub, "evaluate", cmd_evaluate, "average reward and success rate on held-out tasks")
    sp.add_argument("experiment")
    sp.add_argument("--model", required=True)
    sp.add_argument("-o", "--output", required=True, help="METRICS.json")
    sp.add_argument("--split", choices=["train", "dev", "test"], default=None, help="default: the spec's testSplit")
    sp.add_argument("--limit", type=_positive_int, default=None, help="at most N tasks")
    sp.add_argument("--best-of", type=_positive_int, default=None, help="N sampled episodes per task, best kept")
    sp.add_argument("--trajectories", help="where the episodes go (default: beside METRICS.json)")
    sp.add_argument("--expert", metavar="EXPERT.jsonl",
                    help="expert trajectories to take the in-context example from (default: the spec's expert)")

    sp = add(sub, "submit", cmd_submit, "create the W2SGExperiment on a cluster; --wait follows it to the end")
    sp.add_argument("experiment")
    sp.add_argument("-n", "--namespace", help="default: the manifest's, else the kubeconfig context's")
    sp.add_argument("--name", help="metadata.name to use instead of the file's (unique names for CI runs)")
    sp.add_argument("--wait", action="store_true", help="stream stage transitions; exit 0 Succeeded, 1 Failed")
    sp.add_argument("--timeout", type=_positive_float, default=86400.0, help="seconds --wait waits (exit 2 after)")
    sp.add_argument("--poll", type=_poll_interval, default=2.0, help="seconds between reads of the resource (>= 0.1)")
    sp.add_argument("-o", "--output", help="with --wait: write the results table here (JSON)")

    sp = add(sub, "compare", cmd_compare, "exit 1 when a method's average reward falls more than --max-drop")
    sp.add_argument("results", help="results.json, a status.results dump or a W2SGExperiment as JSON")
    sp.add_argument("--baseline", required=True, help="the same, from the run to compare with")
    sp.add_argument("--max-drop", type=_non_negative_float, default=0.0, help="reward points (×100) allowed to drop")

    model = sub.add_parser("model", help="create models")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    sp = add(model_sub, "init", cmd_model_init, "a tiny model from config, tokenizer trained on the environment")
    sp.add_argument("experiment")
    sp.add_argument("--preset", required=True, help="tiny:weak or tiny:strong")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--tokenizer", help="reuse this tokenizer directory instead of training one")
    sp.add_argument("--limit", type=_positive_int, default=200, help="gold trajectories to train the tokenizer on")
    sp.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `tratree` command; returns the exit status."""
    import logging

    # py4j logs a traceback of its own for a Ctrl-C that lands in a JVM call; "interrupted" says it
    logging.getLogger().addFilter(lambda r: not r.getMessage().startswith("KeyboardInterrupt while sending command"))
    from tratree import interrupts

    interrupts.latch()
    try:
        code = _run(argv)
        interrupts.check()  # a Ctrl-C the command's libraries swallowed still ends it as one
        return code
    except BaseException as err:
        if not _interrupted(err):
            raise
        # environments half-started when Ctrl-C came complain as they are collected: say it once
        sys.unraisablehook = lambda _: None
        print("tratree: interrupted", file=sys.stderr)
        return 130


def _run(argv: Sequence[str] | None) -> int:
    # the mark every user-facing error carries: catching it imports none of the modules behind them
    from tratree.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (CLIError, UserError) as err:
        # half-started environments complain as they are collected; the line below says it all
        sys.unraisablehook = lambda _: None
        print(f"tratree: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code or 0


def _interrupted(err: BaseException | None) -> bool:
    """Whether Ctrl-C caused ``err``: py4j (the environments' JVM bridge) turns a KeyboardInterrupt
    that lands in a call into another error raised while handling it."""
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, KeyboardInterrupt):
            return True
        err, seen = err.__context__, seen + 1
    return False


if __name__ == "__main__":
    sys.exit(main())
