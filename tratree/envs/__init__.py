"""Agent environments behind one protocol (see :mod:`tratree.envs.base`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tratree.catalog import SCIWORLD_MAX_STEPS
from tratree.envs.base import Environment, EnvironmentUnavailable, Outcome, Reset, Split, spread
from tratree.spec.experiment import EnvironmentSpec

__all__ = ["Environment", "EnvironmentUnavailable", "Outcome", "Reset", "Split", "env_factory", "invalid_action",
           "make_env", "step_limit", "task_ids"]

# ETO's episode step limits where one limit holds for the whole environment
ETO_MAX_STEPS = {"webshop": 10, "alfworld": 40}


# How each environment answers an action it cannot take (its parser's refusal; ALFWorld's and
# WebShop's as ETO's data shows them), and tratree's answer to a reply without an action.
_INVALID_ANSWERS = {
    "textworldexpress": ("Unknown action",),
    "scienceworld": ("No known action matches that input",),
    "alfworld": ("Nothing happens",),
    "webshop": ("Invalid action",),
}
_UNPARSED = "Invalid format."


def invalid_action(env_name: str, observation: str) -> bool:
    """Whether ``observation`` is the environment refusing the action before it (or tratree
    refusing a reply with no action): the invalid-action rate of the report."""
    return observation.startswith((_UNPARSED, *_INVALID_ANSWERS.get(env_name, ())))


def make_env(spec: EnvironmentSpec) -> Environment:
    """A live instance of the spec's environment."""
    # generous step limit inside the environment: tratree enforces the step limit itself
    limit = max(spec.max_steps, *ETO_MAX_STEPS.values()) + 10
    if spec.name == "textworldexpress":
        from tratree.envs.textworldexpress import TextWorldExpress

        return TextWorldExpress(spec.tasks, spec.game_params, limit)
    if spec.name == "scienceworld":
        from tratree.envs.scienceworld import ScienceWorld

        return ScienceWorld(spec.tasks, spec.game_params, eto=spec.protocol == "eto")
    if spec.name == "alfworld":
        from tratree.envs.alfworld import ALFWorld

        return ALFWorld(spec.data_path, limit)
    from tratree.envs.webshop import WebShop

    return WebShop(spec.data_path)


def env_factory(spec: EnvironmentSpec) -> Callable[[], Environment]:
    return lambda: make_env(spec)


def step_limit(spec: EnvironmentSpec) -> Callable[[str], int]:
    """The step limit of a task's episodes: ``maxSteps``, or ETO's under ``protocol: eto``."""
    if spec.protocol == "eto":
        if spec.name == "scienceworld":
            return lambda task_id: SCIWORLD_MAX_STEPS[task_id.split("/", 1)[0]]
        if spec.name in ETO_MAX_STEPS:
            limit = ETO_MAX_STEPS[spec.name]
            return lambda task_id: limit
    return lambda task_id: spec.max_steps


def task_ids(env: Environment, spec: EnvironmentSpec, split: Split, skip: int = 0) -> list[str]:
    """The split's tasks, interleaved across games, the first ``skip`` left out, capped as the spec says.

    ``skip`` keeps out the dev-split games a pretraining corpus played (``ExperimentSpec.corpus_games``).
    """
    limit = spec.train_tasks if split == "train" else spec.test_tasks
    tasks = spread(env.tasks(split), None)[skip:]
    if skip and not tasks:
        raise ValueError(f"environment {spec.name}: no {split}-split task is left after the {skip} the "
                         "pretraining corpus plays")
    return tasks if limit is None else tasks[:limit]


class EnvPool:
    """Live environment instances, one per episode in flight; closed together."""

    def __init__(self, factory: Callable[[], Environment]) -> None:
        self._factory = factory
        self._free: list[Environment] = []
        self._all: list[Environment] = []

    def acquire(self) -> Environment:
        if self._free:
            return self._free.pop()
        env = self._factory()
        self._all.append(env)
        return env

    def prestart(self, n: int) -> None:
        """Start instances until n are free, in parallel (each may be a JVM taking a second to boot)."""
        from concurrent.futures import ThreadPoolExecutor

        missing = n - len(self._free)
        if missing <= 0:
            return
        with ThreadPoolExecutor(max_workers=min(missing, 8)) as threads:
            started = list(threads.map(lambda _: self._factory(), range(missing)))
        self._all.extend(started)
        self._free.extend(started)

    def release(self, env: Environment) -> None:
        self._free.append(env)

    def discard(self, env: Environment) -> None:
        """Close an instance that failed; the next ``acquire`` starts another."""
        with contextlib.suppress(Exception):
            env.close()
        with contextlib.suppress(ValueError):
            self._all.remove(env)

    def close(self) -> None:
        for env in self._all:
            with contextlib.suppress(Exception):
                env.close()
        self._all.clear()
        self._free.clear()


@contextlib.contextmanager
def env_pool(factory: Callable[[], Environment]) -> Iterator[EnvPool]:
    pool = EnvPool(factory)
    try:
        yield pool
    finally:
        pool.close()
