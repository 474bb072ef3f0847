"""Trajectory, tree, pair and path records, their JSONL I/O, and the ETO conversations import.

Every reader raises FormatError with a one-line message naming the file and line; every
writer is atomic (see :mod:`tratree.atomic`), so a failed run leaves no partial output.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tratree.atomic import atomic_write
from tratree.errors import UserError
from tratree.react import parse_reply

TREE_FORMAT = 1


class FormatError(UserError, ValueError):
    """A malformed input file; the message is one line: ``FILE:LINE: what is wrong``."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(Record):
    """One execution step: what the agent saw, what it thought, what it did."""

    observation: str
    thought: str = ""
    action: str


class Trajectory(Record):
    """One episode of an agent on one task, with the environment's final score G(e)."""

    task_id: str = Field(min_length=1)
    instruction: str
    steps: list[Step] = Field(min_length=1)
    final_observation: str = ""
    score: float = Field(ge=0.0, le=1.0)
    success: bool
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_success(cls, data: Any) -> Any:
        # Files from other tools often carry only the score; full score is success then.
        if isinstance(data, dict) and "success" not in data and isinstance(data.get("score"), (int, float)):
            data = {**data, "success": data["score"] >= 1.0}
        return data


class TreeNode(Record):
    """A node of a serialized tree; the root (index 0) has parent null and no step."""

    parent: int | None
    observation: str = ""
    thought: str = ""
    action: str = ""
    visits: int = Field(ge=0)
    total: float = Field(ge=0.0)
    ends: int = Field(0, ge=0, description="Trajectories that end at this node.")
    end_total: float = Field(0.0, ge=0.0)


class TreeRecord(Record):
    """One task's trajectory tree: nodes in insertion order, each after its parent."""

    format: Literal[1] = TREE_FORMAT
    task_id: str = Field(min_length=1)
    instruction: str
    similarity: float = Field(gt=0.0, le=1.0)
    nodes: list[TreeNode] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_parents(self) -> TreeRecord:
        if self.nodes[0].parent is not None:
            raise ValueError("nodes[0] must be the root (parent null)")
        for i, node in enumerate(self.nodes[1:], start=1):
            if node.parent is None or not 0 <= node.parent < i:
                raise ValueError(f"nodes[{i}].parent must be the index of an earlier node")
        return self


class Pair(Record):
    """A preference pair: shared prefix h, chosen continuation sigma+, rejected sigma-."""

    task_id: str = Field(min_length=1)
    instruction: str
    prefix: list[Step]
    chosen: list[Step] = Field(min_length=1)
    rejected: list[Step] = Field(min_length=1)
    chosen_value: float = Field(ge=0.0, le=1.0)
    rejected_value: float = Field(ge=0.0, le=1.0)
    kind: Literal["tree", "random", "eto", "ceiling"] = "tree"
    node: int | None = Field(None, description="Divergence node in the task's tree (tree pairs).")


class PathRecord(Record):
    """The MCTS path e* of one task's tree, as steps ready for SFT."""

    task_id: str = Field(min_length=1)
    instruction: str
    steps: list[Step] = Field(min_length=1)
    value: float = Field(ge=0.0, le=1.0)
    nodes: list[int] = Field(min_length=1)
    iterations: int = Field(ge=0)


R = TypeVar("R", bound=BaseModel)


def _validation_message(err: ValidationError) -> str:
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
        views.append(StepView(obs, thought, action))
    return TrajectoryView(task, instruction, views, final, float(score), success, meta)


def iter_jsonl(
    path: str | Path, model: type[R], convert: Callable[[R], Any] | None = None,
    fast: Callable[[Any], Any] | None = None,
) -> Iterator[Any]:
    """Stream validated records from a JSONL file; blank lines are skipped.

    ``convert`` turns each record into another object; a ValueError it raises becomes a
    FormatError naming the line. ``fast`` takes a line parsed by orjson and returns the finished
    item when the line is plainly valid, or None to leave it to pydantic (and its messages).
    """
    import orjson

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
                    with contextlib.suppress(orjson.JSONDecodeError):
                        item = fast(orjson.loads(line))
                if item is None:
                    rec = model.model_validate_json(line)
                    item = convert(rec) if convert else rec
            except ValidationError as err:
                raise FormatError(f"{path}:{lineno}: {_validation_message(err)}") from None
            except ValueError as err:
                raise FormatError(f"{path}:{lineno}: {err}") from None
            yield item


def read_jsonl(path: str | Path, model: type[R]) -> list[R]:
    """All validated records of a JSONL file."""
    return list(iter_jsonl(path, model))


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write records as JSONL atomically; returns how many were written."""
    n = 0
    with atomic_write(path) as fh:
        for rec in records:
            if isinstance(rec, BaseModel):
                fh.write(rec.model_dump_json())
            else:
                fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


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


# --- ETO / TraTree "conversations" import -------------------------------------------------

_OBS_PREFIX = "Observation:"


def _iter_json_array(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, item) for each element of a top-level JSON array."""
    decoder = json.JSONDecoder()
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    counted = [0, 1]  # (position, line there): lines are counted forward only, so the whole read is linear

    def line_of(i: int) -> int:
        pos, line = counted
        if i < pos:
            return text.count("\n", 0, i) + 1
        counted[:] = [i, line + text.count("\n", pos, i)]
        return counted[1]

    i = skip(0)
    if i >= n or text[i] != "[":
        raise FormatError(f"{path}:{line_of(i)}: expected a JSON list of conversations")
    i = skip(i + 1)
    if i < n and text[i] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise FormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        yield line_of(i), item
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i < n and text[i] == "]":
            if skip(i + 1) != n:
                raise FormatError(f"{path}:{line_of(i + 1)}: unexpected data after the list")
            return
        else:
            raise FormatError(f"{path}:{line_of(i)}: expected ',' or ']' in the list")


def _strip_observation(text: str) -> str:
    text = text.strip()
    return text[len(_OBS_PREFIX) :].strip() if text.startswith(_OBS_PREFIX) else text


def _conversation_to_trajectory(item: Any) -> Trajectory:
    if not isinstance(item, dict):
        raise ValueError("each entry must be an object")
    if "id" not in item:
        raise ValueError("missing field 'id'")
    turns = item.get("conversations")
    if not isinstance(turns, list):
        raise ValueError("missing field 'conversations'")
    if len(turns) < 4:
        raise ValueError("conversations need the prompt, 'OK', the task and at least one reply")
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"conversations[{k}] needs 'from' and 'value'")
        if not isinstance(turn["value"], str):
            raise ValueError(f"conversations[{k}].value must be a string")
        expected = "human" if k % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise ValueError(f"conversations[{k}].from: expected '{expected}', got {turn['from']!r}")
    reward = item.get("reward", (item.get("meta") or {}).get("reward", 1.0))
    if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not 0.0 <= reward <= 1.0:
        raise ValueError(f"reward: must be a number in [0, 1], got {reward!r}")
    task = turns[2]["value"]
    steps = []
    for k in range(3, len(turns), 2):
        thought, action = parse_reply(turns[k]["value"])
        if action is None:
            raise ValueError(f"conversations[{k}]: no 'Action:' in the reply")
        observation = task if k == 3 else _strip_observation(turns[k - 1]["value"])
        steps.append(Step(observation=observation, thought=thought, action=action))
    final = _strip_observation(turns[-1]["value"]) if len(turns) % 2 == 1 and len(turns) > 3 else ""
    score = float(reward)
    return Trajectory(
        task_id=str(item["id"]),
        instruction=task,
        steps=steps,
        final_observation=final,
        score=score,
        success=score >= 1.0,
        meta={"source": "eto", "prompt": turns[0]["value"]},
    )


def read_eto(path: str | Path) -> list[Trajectory]:
    """Trajectories from an ETO/TraTree conversations JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise FormatError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    out = []
    for lineno, item in _iter_json_array(text, path):
        try:
            out.append(_conversation_to_trajectory(item))
        except (ValueError, ValidationError) as err:
            msg = _validation_message(err) if isinstance(err, ValidationError) else str(err)
            raise FormatError(f"{path}:{lineno}: {msg}") from None
    return out
