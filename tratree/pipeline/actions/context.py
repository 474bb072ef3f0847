"""What a stage's code gets (its context) and the one-line error of a stage that cannot give an output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tratree.errors import UserError
from tratree.pipeline.graph import Stage
from tratree.spec.experiment import ExperimentSpec


class StageError(UserError, RuntimeError):
    """A stage whose inputs cannot give a meaningful output (nothing to train on, say); one line."""


@dataclass
class StageContext:
    """What a stage's code gets: the spec, its stage, its inputs' directories and its output directory;
    for a sharded stage, which shard it runs (index, count), or the shards' outputs it merges; what the
    stages upstream of it cost."""

    spec: ExperimentSpec
    stage: Stage
    inputs: dict[str, Path]
    out: Path
    shard: tuple[int, int] | None = None
    merge_from: list[Path] | None = None
    upstream_device_seconds: dict[str, float] | None = None  # every stage its inputs came from: device-seconds

    def input(self, name: str) -> Path:
        return self.inputs[name]

    def input_of(self, action: str) -> Path:
        """The directory of the (single) input stage named like ``action`` (e.g. 'mcts', 'explore')."""
        matches = [p for n, p in self.inputs.items() if n == action or n.startswith(action + "-")]
        if len(matches) != 1:
            raise KeyError(f"{self.stage.name}: expected one input named {action!r}, got {list(self.inputs)}")
        return matches[0]


Action = Callable[[StageContext], dict[str, Any]]
