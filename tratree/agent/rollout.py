"""The agent loop: many episodes in flight, one batched generation call per round.

Each round asks the backend for one reply for every running episode at once, parses
"Thought: ... Action: ..." and steps each episode's own environment (in threads: the
environments are JVMs behind sockets). A finished episode frees its slot for the next one.
A reply with no parseable action is answered as ETO answers it ("Invalid format. The input must
contains 'Action: '", the environment not stepped, the step counted) and recorded: its first line
stands as the step's action and the trajectory's ``unparsed_replies`` counts it.

An environment instance that fails (its JVM out of memory or dead) is closed and replaced, and the
episode runs again from its start, at most ``ENV_RETRIES`` times; the trajectory's ``env_restarts``
records it. Past that, EnvironmentFailed names the task and the error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tratree.envs import Environment, EnvironmentUnavailable, EnvPool, Outcome
from tratree.policy.base import Backend, GenerationRequest
from tratree.records.formats import Step, Trajectory
from tratree.records.prompts import conversation
from tratree.records.react import parse_reply


@dataclass(frozen=True)
class Episode:
    """One episode to run: a task, sampling settings, a seed and what to record in ``meta``."""

    task_id: str
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


ENV_RETRIES = 2


class EnvironmentFailed(EnvironmentUnavailable):
    """An environment instance failed on the same episode more than ``ENV_RETRIES`` times."""


@dataclass
class _Running:
    episode: Episode
    env: Environment
    instruction: str
    observation: str
    steps: list[Step] = field(default_factory=list)
    last: Outcome | None = None
    unparsed: int = 0
    restarts: int = 0


def _finish(run: _Running, max_steps: int) -> Trajectory:
    last = run.last
    assert last is not None
    return Trajectory(
        task_id=run.episode.task_id,
        instruction=run.instruction,
        steps=run.steps,
        final_observation=last.observation,
        score=last.score,
        success=last.success,
        meta={
            **run.episode.meta,
            "temperature": run.episode.temperature,
            "top_p": run.episode.top_p,
            "seed": run.episode.seed,
            "unparsed_replies": run.unparsed,
            "env_restarts": run.restarts,
            "step_limit_reached": not last.done and len(run.steps) >= max_steps,
        },
    )


# ETO's answer to a reply without "Action:": the environment is not stepped, the step still counts
INVALID_FORMAT = "Invalid format. The input must contains 'Action: '"


def _act(run: _Running, action: str | None) -> Outcome | Exception:
    if action is not None:
        try:
            return run.env.step(action)
        except ValueError:
            raise  # bad input (an unknown task): not the instance's fault
        except Exception as err:  # the instance failed: the caller replaces it
            return err
    last = run.last
    return Outcome(observation=INVALID_FORMAT, score=last.score if last else 0.0, done=False,
                   success=last.success if last else False)


def _start(pool: EnvPool, episode: Episode, restarts: int = 0) -> _Running:
    """The episode on a fresh start, on a working instance (replacing failed ones, within the bound)."""
    while True:
        env = pool.acquire()
        try:
            start = env.reset(episode.task_id)
        except ValueError:
            pool.release(env)
            raise
        except Exception as err:
            restarts = _replace(pool, env, episode, restarts, err)
            continue
        return _Running(episode, env, start.instruction, start.observation, restarts=restarts)


def _replace(pool: EnvPool, env: Environment, episode: Episode, restarts: int, err: Exception) -> int:
    """Close a failed instance; the episode's restart count, or EnvironmentFailed past the bound."""
    pool.discard(env)
    if restarts >= ENV_RETRIES:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EnvironmentFailed(f"task {episode.task_id}: the environment failed {restarts + 1} times "
                                f"({type(err).__name__}: {detail[:200]})") from None
    return restarts + 1


def run_episodes(
    episodes: Iterable[Episode],
    pool: EnvPool,
    backend: Backend,
    prompt: str,
    step_limit: Callable[[str], int],
    batch_size: int,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[Trajectory]:
    """Run episodes with up to ``batch_size`` in flight, each ending at ``step_limit(task_id)`` steps
    at the latest; yields trajectories as they finish."""
    todo = list(episodes)
    pending = iter(todo)
    pool.prestart(min(batch_size, len(todo)))
    running: list[_Running] = []
    with ThreadPoolExecutor(max_workers=max(1, batch_size)) as threads:
        while True:
            while len(running) < batch_size:
                ep = next(pending, None)
                if ep is None:
                    break
                running.append(_start(pool, ep))
            if not running:
                return
            requests = [
                GenerationRequest(
                    messages=conversation(prompt, r.instruction, r.steps, r.observation),
                    temperature=r.episode.temperature,
                    top_p=r.episode.top_p,
                    seed=r.episode.seed * 1009 + len(r.steps),
                )
                for r in running
            ]
            replies = backend.generate(requests)
            actions: list[str | None] = []
            for r, reply in zip(running, replies, strict=True):
                thought, action = parse_reply(reply)
                recorded = action
                if action is None:
                    r.unparsed += 1
                    thought, recorded = "", reply.strip().splitlines()[0] if reply.strip() else ""
                r.steps.append(Step(observation=r.observation, thought=thought, action=recorded))
                actions.append(action)
            outcomes = list(threads.map(lambda ra: _act(*ra), zip(running, actions, strict=True)))
            still = []
            for r, out in zip(running, outcomes, strict=True):
                if isinstance(out, Exception):  # its instance failed: the episode starts again on a new one
                    still.append(_start(pool, r.episode, _replace(pool, r.env, r.episode, r.restarts, out)))
                    continue
                r.last, r.observation = out, out.observation
                limit = step_limit(r.episode.task_id)
                if out.done or len(r.steps) >= limit:
                    pool.release(r.env)
                    yield _finish(r, limit)
                else:
                    still.append(r)
            if on_step:
                on_step(len(running))
            running = still
