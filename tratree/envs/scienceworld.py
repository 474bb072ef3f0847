"""ScienceWorld (PyPI ``scienceworld``), the paper's environment, run as ETO ran it.

An episode's G(e) is the best score it reached, / 100 (ETO keeps the highest score, so a fatal
last action does not erase partial credit). The simplifications are ETO's: teleporting, open
doors and containers, self-watering pots and no electrical actions (kept for the electrical
tasks, which need them); scienceworld 1.2's "easy" leaves containers closed, so they are
spelled out. ScienceWorld's own move limit is set far above any episode's: tratree ends
episodes at the spec's step limit, and gold runs play to their end. An episode opens with the
task description alone, as ETO's do: the agent looks around itself.

With ``eto=True`` the tasks are ETO's 24 task types and its test and dev variation lists
(:mod:`tratree.envs.eto_sciworld`); training variations stay ScienceWorld's own.
"""

from __future__ import annotations

from tratree.catalog import SCIWORLD_TASKS
from tratree.envs.base import (
    EnvironmentSpecError,
    EnvironmentUnavailable,
    Outcome,
    Reset,
    Split,
    jvm_options,
    jvm_started,
    split_task_id,
)

ETO_SIMPLIFICATIONS = ("teleportAction", "openDoors", "openContainers", "selfWateringFlowerPots", "noElectricalAction")
MOVE_LIMIT = 100_000


def simplifications_for(task: str, wanted: str) -> str:
    """The simplification string to load ``task`` with: ETO's set for "" or "easy", else ``wanted``;
    ScienceWorld refuses noElectricalAction for the tasks about circuits."""
    names = list(ETO_SIMPLIFICATIONS) if wanted in ("", "easy") else [n for n in wanted.split(",") if n]
    if "power-component" in task or "conductivity" in task:
        names = [n for n in names if n != "noElectricalAction"]
    return ",".join(names)


class ScienceWorld:
    """Tasks are ``task-name/split/variation`` with the environment's own variation splits."""

    name = "scienceworld"

    def __init__(self, task_names: list[str], simplifications: str = "", heap: str = "1g", eto: bool = False) -> None:
        try:
            from scienceworld import ScienceWorldEnv
        except ImportError as err:
            raise EnvironmentUnavailable("ScienceWorld needs `pip install scienceworld` and Java 17") from err
        with jvm_options(heap), jvm_started("ScienceWorld"):
            self._env = ScienceWorldEnv("", envStepLimit=MOVE_LIMIT)
        known = list(self._env.get_task_names())
        unknown = [t for t in task_names if t not in known]
        if unknown:
            self._env.close()
            raise EnvironmentSpecError(f"unknown ScienceWorld task {unknown[0]!r} (known: {', '.join(known)})")
        self.eto = eto
        if eto:
            self.task_names = list(task_names) or list(SCIWORLD_TASKS)
        else:
            self.task_names = list(task_names) or known
        self.simplifications = simplifications
        self._loaded: tuple[str, int, bool] | None = None
        self._best = 0.0

    def _load(self, task: str, variation: int, gold: bool) -> None:
        if self._loaded != (task, variation, gold):
            self._env.load(task, variation, simplifications_for(task, self.simplifications), generateGoldPath=gold)
            self._loaded = (task, variation, gold)

    def tasks(self, split: Split) -> dict[str, list[str]]:
        out = {}
        for task in self.task_names:
            if self.eto and split != "train":
                from tratree.envs.eto_sciworld import variations

                out[task] = [f"{task}/{split}/{v}" for v in variations(task, split) or []]
                continue
            self._load(task, 0, False)
            variations = {
                "train": self._env.get_variations_train,
                "dev": self._env.get_variations_dev,
                "test": self._env.get_variations_test,
            }[split]()
            out[task] = [f"{task}/{split}/{v}" for v in variations]
        return out

    def _start(self, task_id: str, gold: bool) -> tuple[str, dict]:
        task, _, variation = split_task_id(task_id)
        if task not in self.task_names:
            raise ValueError(f"task {task_id!r}: {task!r} is not in this experiment's tasks")
        self._load(task, int(variation), gold)
        self._best = 0.0
        return self._env.reset()

    def reset(self, task_id: str) -> Reset:
        self._start(task_id, gold=False)
        task = self._env.get_task_description().strip()
        return Reset(instruction=task, observation=task)

    def step(self, action: str) -> Outcome:
        obs, _, done, info = self._env.step(action)
        self._best = max(self._best, float(info["score"]) / 100.0)
        return Outcome(observation=obs.strip(), score=self._best, done=bool(done), success=self._best >= 1.0)

    def gold_actions(self, task_id: str) -> list[str]:
        self._start(task_id, gold=True)
        return list(self._env.get_gold_action_sequence())

    def close(self) -> None:
        self._env.close()
