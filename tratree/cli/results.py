"""`tratree compare`: the regression gate of CI pipelines, one results table against a baseline's."""

from __future__ import annotations

import argparse
import sys

from tratree.cli.args import CLIError, add_command, non_negative_float


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


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `tratree` parser."""
    sp = add_command(sub, "compare", cmd_compare, "exit 1 when a method's average reward falls more than --max-drop")
    sp.add_argument("results", help="results.json, a status.results dump or a W2SGExperiment as JSON")
    sp.add_argument("--baseline", required=True, help="the same, from the run to compare with")
    sp.add_argument("--max-drop", type=non_negative_float, default=0.0, help="reward points (×100) allowed to drop")
