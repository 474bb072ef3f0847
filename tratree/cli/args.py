"""What every command shares: the one-line user error, argument types that say what is wrong, the
experiment file, and atomic output of lines."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user error the CLI reports in one line with exit status 2."""


def write_lines(path: str, lines) -> int:
    """Write lines atomically; how many."""
    from tratree.store.atomic import atomic_write

    n = 0
    with atomic_write(path) as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")
            n += 1
    return n


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def checked(ok: Callable[[float], bool], why: str) -> Callable[[str], float]:
    """An argparse type: a finite number for which ``ok`` holds, else '<text> <why>'."""

    def parse(text: str) -> float:
        value = finite(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} {why}")
        return value

    return parse


unit_float = checked(lambda v: 0.0 < v <= 1.0, "is not in (0, 1]")

non_negative_float = checked(lambda v: v >= 0, "is negative")

positive_float = checked(lambda v: v > 0, "is not positive")

poll_interval = checked(lambda v: v >= 0.1, "is below 0.1 s: the API server is not polled faster")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def experiment(path: str):
    """The experiment file at ``path``, checked against the spec (a SpecError names what is wrong)."""
    from tratree.spec.experiment import load_experiment

    return load_experiment(path)


def add_command(parent: argparse._SubParsersAction, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
    """A subcommand whose help is also its description, run by ``func``."""
    sp = parent.add_parser(name, help=help, description=help)
    sp.set_defaults(func=func)
    return sp
