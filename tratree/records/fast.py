"""Reading JSONL records without pydantic where a line is plainly valid.

The tree commands read thousands of trajectories or trees: per-record pydantic objects, and
importing pydantic at all, were most of their time. Lines are parsed with orjson and checked for
exact types here; a line that is not plainly valid goes to its pydantic model (tratree.records.formats, which the caller names),
which accepts what it may coerce or says, in one line, what is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson

from tratree.errors import UserError

TREE_FORMAT = 1


class FormatError(UserError, ValueError):
    """A malformed input file; the message is one line: ``FILE:LINE: what is wrong``."""


def validation_message(err: ValueError) -> str:
    """One line for what is wrong with a record: pydantic's first error, named by its field."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    first = err.errors()[0]
    if first["type"] == "json_invalid":
        detail = re.sub(r" at line \d+ column \d+$", "", (first.get("ctx") or {}).get("error", "parse error"))
        return f"not valid JSON ({detail})"
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "missing":
        return f"missing field '{loc}'"
    if first["type"] == "extra_forbidden":
        return f"unknown field '{loc}'"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


_TRAJECTORY_KEYS = frozenset(("task_id", "instruction", "steps", "final_observation", "score", "success", "meta"))
_STEP_KEYS = frozenset(("observation", "thought", "action"))


class StepView(NamedTuple):
    """A step read for building trees, without a pydantic object per step."""

    observation: str
    thought: str
    action: str


_new_tuple = tuple.__new__


class TrajectoryView(NamedTuple):
    """A trajectory read for building trees: what ``Trajectory`` holds, as a plain tuple."""

    task_id: str
    instruction: str
    steps: list[StepView]
    final_observation: str
    score: float
    success: bool
    meta: dict[str, Any]


def trajectory_view(d: Any) -> TrajectoryView | None:
    """The view of an already parsed line when it is plainly a valid trajectory (exact types, no
    coercion needed); None leaves the line to pydantic, which accepts what it may coerce, or says
    what is wrong. The tree commands read trajectories this way: per-step pydantic objects were
    most of their time."""
    if type(d) is not dict or not d.keys() <= _TRAJECTORY_KEYS:
        return None
    task, instruction, score, steps = d.get("task_id"), d.get("instruction"), d.get("score"), d.get("steps")
    if type(task) is not str or not task or type(instruction) is not str or type(steps) is not list or not steps:
        return None
    if type(score) not in (float, int) or not 0.0 <= score <= 1.0:
        return None
    success, final, meta = d.get("success", score >= 1.0), d.get("final_observation", ""), d.get("meta", {})
    if type(success) is not bool or type(final) is not str or type(meta) is not dict:
        return None
    views = []
    for st in steps:
        if type(st) is not dict or not st.keys() <= _STEP_KEYS:
            return None
        obs, action, thought = st.get("observation"), st.get("action"), st.get("thought", "")
        if type(obs) is not str or type(action) is not str or type(thought) is not str:
            return None
        views.append(_new_tuple(StepView, (obs, thought, action)))  # StepView(...) without its Python __new__
    return TrajectoryView(task, instruction, views, final, float(score), success, meta)


def _model(model: Any) -> Any:
    return model if isinstance(model, type) else model()


def _fast_item(fast: Callable[[Any], Any], line: bytes) -> Any:
    """``fast`` of the parsed line; None for a line that is not JSON, so that pydantic's parse says where."""
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return fast(parsed)


def iter_jsonl(
    path: str | Path, model: Any, convert: Callable[[Any], Any] | None = None,
    fast: Callable[[Any], Any] | None = None,
) -> Iterator[Any]:
    """Stream validated records from a JSONL file; blank lines are skipped.

    ``model`` is the pydantic model of a record, or a function that imports and returns it, called only when
    a line needs it: the tree commands read plain lines without importing pydantic.

    ``convert`` turns each record into another object; a ValueError it raises becomes a
    FormatError naming the line. ``fast`` takes a line parsed by orjson and returns the finished
    item when the line is plainly valid, or None to leave it to pydantic (and its messages).
    """
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as err:
        raise FormatError(f"{path}: cannot read: {err.strerror}") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = None
                if fast is not None:
                    item = _fast_item(fast, line)
                if item is None:
                    rec = _model(model).model_validate_json(line)
                    item = convert(rec) if convert else rec
            except ValueError as err:  # pydantic's ValidationError is one
                raise FormatError(f"{path}:{lineno}: {validation_message(err)}") from None
            yield item


def record_kind(path: str | Path) -> Literal["trajectory", "tree", "empty"]:
    """Whether a JSONL file holds trajectories or trees, judged by its first record."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    first = json.loads(line)
                except json.JSONDecodeError as err:
                    raise FormatError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                except UnicodeDecodeError:
                    raise FormatError(f"{path}:{lineno}: not UTF-8 text (is it a JSONL file?)") from None
                if isinstance(first, dict) and "nodes" in first:
                    return "tree"
                return "trajectory"
    except OSError as err:
        raise FormatError(f"{path}: cannot read: {err.strerror}") from None
    return "empty"
