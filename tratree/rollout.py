"""The agent loop: many episodes in flight, one batched generation call per round.

Each round asks the backend for one reply for every running episode at once, parses
"Thought: ... Action: ..." and steps each episode's own environment (in threads: the
environments are JVMs behind sockets). A finished episode frees its slot for the next one.
A reply with no parseable action is answered as ETO answers it ("Invalid format. The input must
contains 'Action: '", the environment not stepped, the step counted) and recorded: its first line
stands as the step's action and the trajectory's ``unparsed_replies`` counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tratree.envs import Environment, EnvPool, Outcome
from tratree.formats import Step, Trajectory
from tratree.policy.base import Backend, GenerationRequest
from tratree.policy.prompts import conversation
from tratree.react import parse_reply


@dataclass(frozen=True)
class Episode:
    """One episode to run: a task, sampling settings, a seed and what to record in ``meta``."""

    task_id: str
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass
class _Running:
    episode: Episode
    env: Environment
    instruction: str
    observation: str
    steps: list[Step] = field(default_factory=list)
    last: Outcome | None = None
    unparsed: int = 0


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
            "step_limit_reached": not last.done and len(run.steps) >= max_steps,
        },
    )


# ETO's answer to a reply without "Action:": the environment is not stepped, the step still counts
INVALID_FORMAT = "Invalid format. The input must contains 'Action: '"


def _act(run: _Running, action: str | None) -> Outcome:
    if action is not None:
        return run.env.step(action)
    last = run.last
    return Outcome(observation=INVALID_FORMAT, score=last.score if last else 0.0, done=False,
                   success=last.success if last else False)


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
                env = pool.acquire()
                start = env.reset(ep.task_id)
                running.append(_Running(ep, env, start.instruction, start.observation))
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
