"""Trajectory, tree, pair and path records, their JSONL I/O, and the ETO conversations import.

Every reader raises FormatError with a one-line message naming the file and line; every
writer is atomic (see :mod:`tratree.store.atomic`), so a failed run leaves no partial output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tratree.records.fast import TREE_FORMAT as TREE_FORMAT
from tratree.records.fast import FormatError as FormatError
from tratree.records.fast import StepView as StepView
from tratree.records.fast import TrajectoryView as TrajectoryView
from tratree.records.fast import iter_jsonl as iter_jsonl
from tratree.records.fast import record_kind as record_kind
from tratree.records.fast import trajectory_view as trajectory_view
from tratree.records.fast import validation_message
from tratree.records.react import parse_reply
from tratree.store.atomic import atomic_write


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


# --- ETO / TraTree "conversations" import -------------------------------------------------

_OBS_PREFIX = "Observation:"


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
        except ValueError as err:  # pydantic's ValidationError is one
            raise FormatError(f"{path}:{lineno}: {validation_message(err)}") from None
    return out
