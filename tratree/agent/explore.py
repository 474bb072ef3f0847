"""Exploration: M trajectories per training task over the spec's sampling grid (paper, Sec. 3.1)."""

from __future__ import annotations

from pathlib import Path

from tratree.agent.episodes import episode_seed, run_to_file
from tratree.agent.rollout import Episode
from tratree.envs import env_factory, env_pool, task_ids
from tratree.policy.base import Backend
from tratree.records.formats import Trajectory
from tratree.spec.experiment import ExperimentSpec


def split_tasks(spec: ExperimentSpec, split: str = "train", limit: int | None = None) -> list[str]:
    """The spec's tasks of a split, capped by the spec and then by ``limit``.

    Under ``protocol: eto`` with an expert file, the training tasks are the expert file's (ETO's
    training set is the tasks of its expert data), in the file's order.
    """
    env = spec.environment
    if split == "train" and env.protocol == "eto" and spec.expert.source == "file":
        from tratree.agent.expert import expert_trajectories

        tasks = list(dict.fromkeys(t.task_id for t in expert_trajectories(spec, "train")))
        tasks = tasks[: env.train_tasks] if env.train_tasks else tasks
    else:
        with env_pool(env_factory(env)) as pool:
            tasks = task_ids(pool.acquire(), env, split, spec.corpus_games(split))  # type: ignore[arg-type]
    return tasks if limit is None else tasks[:limit]


def exploration_episodes(spec: ExperimentSpec, tasks: list[str], policy: str, samples: int | None = None,
                         seed: int | None = None) -> list[Episode]:
    """M episodes per task (``samples`` overrides M); sample k uses grid entry k mod len(grid); ``seed``
    (default: the spec's) draws the samples."""
    grid = spec.exploration.sampling
    seed = spec.exploration.seed if seed is None else seed
    out = []
    for task in tasks:
        for k in range(samples or spec.exploration.trajectories_per_task):
            s = grid[k % len(grid)]
            out.append(Episode(task, s.temperature, s.top_p, episode_seed(seed, task, k),
                               {"policy": policy, "sample": k}))
    return out


def explore(spec: ExperimentSpec, backend: Backend, out: str | Path, *, model: str, prompt: str,
            policy: str = "sft-weak", limit: int | None = None, samples: int | None = None) -> list[Trajectory]:
    """Explore the training tasks with ``backend`` (serving ``model``, acting on ``prompt``) and write
    the trajectories to ``out``; an interrupted run resumes only under the same model and settings."""
    tasks = split_tasks(spec, "train", limit)
    return run_to_file(spec, backend, exploration_episodes(spec, tasks, policy, samples), out, "exploring", model,
                       prompt)


def best_per_task(trajectories: list[Trajectory]) -> list[Trajectory]:
    """Each task's best-scoring explored trajectory (the first among equals)."""
    best: dict[str, Trajectory] = {}
    for t in trajectories:
        if t.task_id not in best or t.score > best[t.task_id].score:
            best[t.task_id] = t
    return list(best.values())
