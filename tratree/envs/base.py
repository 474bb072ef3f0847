"""The environment protocol every adapter implements, and the bits they share."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from tratree.errors import UserError

Split = Literal["train", "dev", "test"]


class EnvironmentUnavailable(UserError, RuntimeError):
    """The environment's package or data is missing; the message says what to install and where."""


class EnvironmentSpecError(UserError, ValueError):
    """The spec names a game, task or parameter the environment does not have; one line."""


@dataclass(frozen=True)
class Reset:
    """The start of an episode: the task's instruction and the first observation."""

    instruction: str
    observation: str


@dataclass(frozen=True)
class Outcome:
    """What one action led to: the observation, the score so far in [0, 1], and whether it is over."""

    observation: str
    score: float
    done: bool
    success: bool


class Environment(Protocol):
    """One live instance of an agent environment (not thread-safe: one episode at a time)."""

    name: str

    def tasks(self, split: Split) -> dict[str, list[str]]:
        """Task ids of a split grouped by game or task type, e.g. ``cookingworld/train/17``."""
        ...

    def reset(self, task_id: str) -> Reset:
        """Start an episode of a task."""
        ...

    def step(self, action: str) -> Outcome:
        """Take an action (any text: invalid actions get the environment's own answer)."""
        ...

    def gold_actions(self, task_id: str) -> list[str]:
        """The environment's gold action sequence for a task."""
        ...

    def close(self) -> None:
        """Free the instance (its JVM, where it has one)."""
        ...


@contextlib.contextmanager
def jvm_started(name: str) -> Iterator[None]:
    """EnvironmentUnavailable, one line, when the environment's JVM does not start (too small a
    heap in JAVA_TOOL_OPTIONS, no memory left): py4j reports it as an unreadable port number."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as err:
        if isinstance(err, EnvironmentUnavailable):
            raise
        text = str(err)
        said = re.search(r"b'([^'\\]*)", text)  # what the JVM printed, as py4j quotes it
        detail = said.group(1).strip() if said else text.splitlines()[0] if text else ""
        raise EnvironmentUnavailable(f"{name}'s JVM did not start ({detail or type(err).__name__}); check "
                                     f"JAVA_TOOL_OPTIONS={os.environ.get('JAVA_TOOL_OPTIONS', '')!r} and free "
                                     "memory") from None


def clamp_score(value: float) -> float:
    """Scores outside [0, 1] (failure penalties) are clamped, as G(e) is defined on [0, 1]."""
    return min(1.0, max(0.0, float(value)))


# Perf-data files are named by PID under /tmp/hsperfdata_<user>; where /tmp is shared across PID
# namespaces (CI containers) a JVM finds "its" file locked and warns on stdout, which py4j then reads as
# its port number. No perf file, and every JVM log line to stderr, keep stdout for the port alone.
JVM_QUIET = "-XX:-UsePerfData -Xlog:disable -Xlog:all=warning:stderr"

# Environments start their JVMs from several threads at once; the options are set once for all of them
# and the user's own value restored when the last one has started (per-thread save/restore interleaved
# and appended the options again at every start).
_jvm_lock = threading.Lock()
_jvm_starting = 0
_jvm_user_options: str | None = None


@contextlib.contextmanager
def jvm_options(heap: str, extra: str = "") -> Iterator[None]:
    """Options for JVMs started inside the block: the user's JAVA_TOOL_OPTIONS, a bounded heap unless
    they set -Xmx, JVM_QUIET, and ``extra``. Safe to enter from several threads at once.

    EnvironmentUnavailable at once when there is no ``java`` to start.
    """
    global _jvm_starting, _jvm_user_options
    home = os.environ.get("JAVA_HOME")
    if not shutil.which("java") and not (home and os.access(os.path.join(home, "bin", "java"), os.X_OK)):
        raise EnvironmentUnavailable("the environment runs on Java 17, and java is not on PATH (install "
                                     "openjdk-17-jre-headless, or set JAVA_HOME)")
    with _jvm_lock:
        if _jvm_starting == 0:
            _jvm_user_options = os.environ.get("JAVA_TOOL_OPTIONS")
        _jvm_starting += 1
        user = _jvm_user_options
        opts = [user] if user else []
        if not (user and "-Xmx" in user):
            opts.append(f"-Xmx{heap}")
        opts.append(JVM_QUIET)
        if extra:
            opts.append(extra)
        os.environ["JAVA_TOOL_OPTIONS"] = " ".join(opts)
    try:
        yield
    finally:
        with _jvm_lock:
            _jvm_starting -= 1
            if _jvm_starting == 0:
                if _jvm_user_options is None:
                    os.environ.pop("JAVA_TOOL_OPTIONS", None)
                else:
                    os.environ["JAVA_TOOL_OPTIONS"] = _jvm_user_options


def split_task_id(task_id: str, parts: int = 3) -> list[str]:
    """``game/split/index`` pieces of a task id; ValueError naming the id when malformed."""
    pieces = task_id.rsplit("/", parts - 1)
    if len(pieces) != parts or not pieces[-1].isdigit():
        raise ValueError(f"task id {task_id!r} is not of the form NAME/SPLIT/INDEX")
    return pieces


def spread(per_game: dict[str, list[str]], limit: int | None) -> list[str]:
    """Interleave the tasks of several games (so a cap keeps every game), then cap."""
    out: list[str] = []
    lists = list(per_game.values())
    for i in range(max((len(x) for x in lists), default=0)):
        for tasks in lists:
            if i < len(tasks):
                out.append(tasks[i])
    return out if limit is None else out[:limit]
