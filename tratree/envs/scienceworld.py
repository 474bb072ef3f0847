"""ScienceWorld (PyPI ``scienceworld``), the paper's environment: G(e) = max(score, 0) / 100."""

from __future__ import annotations

from tratree.envs.base import EnvironmentUnavailable, Outcome, Reset, Split, jvm_options, split_task_id

# The paper's agents may teleport and find containers open: ScienceWorld's "easy" simplifications.
DEFAULT_SIMPLIFICATIONS = "easy"


class ScienceWorld:
    """Tasks are ``task-name/split/variation`` with the environment's own variation splits."""

    name = "scienceworld"

    def __init__(
        self, task_names: list[str], simplifications: str = "", step_limit: int = 100, heap: str = "1g"
    ) -> None:
        try:
            from scienceworld import ScienceWorldEnv
        except ImportError as err:
            raise EnvironmentUnavailable("ScienceWorld needs `pip install scienceworld` and Java 17") from err
        with jvm_options(heap):
            self._env = ScienceWorldEnv("", envStepLimit=step_limit)
        known = list(self._env.get_task_names())
        unknown = [t for t in task_names if t not in known]
        if unknown:
            self._env.close()
            raise ValueError(f"unknown ScienceWorld task {unknown[0]!r} (known: {', '.join(known)})")
        self.task_names = list(task_names) or known
        self.simplifications = simplifications or DEFAULT_SIMPLIFICATIONS
        self._loaded: tuple[str, int, bool] | None = None

    def _load(self, task: str, variation: int, gold: bool) -> None:
        if self._loaded != (task, variation, gold):
            self._env.load(task, variation, self.simplifications, generateGoldPath=gold)
            self._loaded = (task, variation, gold)

    def tasks(self, split: Split) -> dict[str, list[str]]:
        out = {}
        for task in self.task_names:
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
        return self._env.reset()

    def reset(self, task_id: str) -> Reset:
        obs, _ = self._start(task_id, gold=False)
        return Reset(instruction=self._env.get_task_description().strip(), observation=obs.strip())

    def step(self, action: str) -> Outcome:
        obs, _, done, info = self._env.step(action)
        score = info["score"]
        return Outcome(
            observation=obs.strip(),
            score=max(float(score), 0.0) / 100.0,
            done=bool(done),
            success=score >= 100,
        )

    def gold_actions(self, task_id: str) -> list[str]:
        self._start(task_id, gold=True)
        return list(self._env.get_gold_action_sequence())

    def close(self) -> None:
        self._env.close()
