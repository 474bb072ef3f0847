"""The `tratree` command line: one module per group of commands, each adding its own subcommands.

Heavy modules are imported inside the commands that need them, so the tree, pairs and
MCTS commands start without torch. Bad input exits with status 2 and a one-line error;
outputs are written atomically, so a failed command leaves no output file behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tratree import __version__
from tratree.cli import agent, experiments, results, submit, trees
from tratree.cli.args import EXIT_BAD_INPUT, CLIError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `tratree` command."""
    p = argparse.ArgumentParser(prog="tratree", description="Weak-to-strong generalization with trajectory trees.")
    p.add_argument("--version", action="version", version=f"tratree {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (experiments, trees, agent, submit, results):
        group.register(sub)
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
