"""The commands on a whole experiment: checking its file, running its stages on this machine, running one stage
(what a Kubernetes Job runs)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from tratree.cli.args import CLIError, add_command, experiment, non_negative_int


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


def cmd_run(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tratree.models import refs as modelref
    from tratree.pipeline.runner import run_pipeline
    from tratree.policy import backend_problem

    exp = experiment(args.experiment)
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

    exp = experiment(args.spec)
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `tratree` parser."""
    sp = add_command(sub, "validate", cmd_validate, "check an experiment file against the spec")
    sp.add_argument("experiment", help="EXPERIMENT.yaml (bare spec or W2SGExperiment manifest)")
    sp.add_argument("--print", action="store_true", help="print the full manifest with defaults")
    sp = add_command(sub, "run", cmd_run, "the whole pipeline on this machine (resumable, cached)")
    sp.add_argument("experiment")
    sp.add_argument("--artifacts", help="store URI (default: the spec's artifacts)")
    sp.add_argument("--only", nargs="+", metavar="STAGE", help="run these stages and what they need")
    sp.add_argument("--report-to", metavar="DIR", help="also copy the report's tables and plots into DIR (e.g. docs/)")

    sp = add_command(sub, "stage", cmd_stage, "run one stage against a store (what a Kubernetes Job runs)")
    sp.add_argument("name")
    sp.add_argument("--spec", required=True, help="EXPERIMENT.yaml")
    sp.add_argument("--artifacts", help="store URI (default: the spec's artifacts)")
    sp.add_argument("--input", action="append", metavar="STAGE=PREFIX",
                    help="where an input stage's outputs are in the store (repeat for each; the operator passes them)")
    sp.add_argument("--shard", type=non_negative_int, metavar="K",
                    help="run shard K of a sharded stage (default: $JOB_COMPLETION_INDEX in an Indexed Job's Pod, "
                         "else every shard in turn); the run that finds every shard done merges them")
