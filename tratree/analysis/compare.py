"""Regression gate: compare an experiment's average rewards with a baseline's.

Both files may be a report's ``results.json`` (``{"methods": {m: {"average_reward": {"mean": …}}}}``),
the ``.status.results`` of a W2SGExperiment (``{m: {"averageReward": …}}``, what
``tratree submit --output`` and ``kubectl get w2sg NAME -o jsonpath='{.status.results}'`` write),
or a whole W2SGExperiment object as JSON. Rewards are ×100, as in the paper's tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ResultsError(ValueError):
    """A results file that cannot be read as average rewards per method."""


@dataclass(frozen=True)
class Row:
    method: str
    baseline: float | None
    current: float | None
    max_drop: float

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def ok(self) -> bool:
        """Missing from the results counts as a regression; new methods pass."""
        if self.baseline is None:
            return True
        return self.current is not None and self.current >= self.baseline - self.max_drop


def _reward(path: str, method: str, row: Any) -> float:
    value = None
    if isinstance(row, dict):
        if "averageReward" in row:
            value = row["averageReward"]
        elif isinstance(row.get("average_reward"), dict):
            value = row["average_reward"].get("mean")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ResultsError(f"{path}: {method}: no average reward")
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ResultsError(f"{path}: {method}: average reward {value!r} is not a number in [0, 100]")
    return float(value)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def load_results(path: str | Path) -> dict[str, float]:
    """Average reward per method from any of the accepted layouts."""
    try:
        data = json.loads(Path(path).read_text(), parse_constant=_no_constant)
    except OSError as err:
        raise ResultsError(f"{path}: cannot read: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}:{err.lineno}: not JSON: {err.msg}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not UTF-8 text") from None
    except ValueError as err:
        raise ResultsError(f"{path}: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("status"), dict):
        data = data["status"].get("results")
    if isinstance(data, dict) and isinstance(data.get("methods"), dict):
        data = data["methods"]
    if not isinstance(data, dict) or not data:
        raise ResultsError(f"{path}: no results per method")
    return {str(m): _reward(str(path), str(m), row) for m, row in data.items()}


def compare(current: dict[str, float], baseline: dict[str, float], max_drop: float) -> list[Row]:
    """One row per method of either side, baseline methods first."""
    methods = [*baseline, *(m for m in current if m not in baseline)]
    return [Row(m, baseline.get(m), current.get(m), max_drop) for m in methods]
