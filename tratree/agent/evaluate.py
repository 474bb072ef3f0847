"""Evaluation on held-out tasks: average reward x100 and success rate, per task and overall."""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

from tratree.agent.episodes import episode_seed, run_to_file
from tratree.agent.explore import split_tasks
from tratree.agent.rollout import Episode
from tratree.policy.base import Backend
from tratree.records.formats import Trajectory
from tratree.spec.experiment import ExperimentSpec


def evaluation_episodes(spec: ExperimentSpec, tasks: list[str], best_of: int | None) -> list[Episode]:
    ev = spec.evaluation
    if not best_of:
        return [Episode(t, ev.temperature, ev.top_p, episode_seed(0, t, 0), {"sample": 0}) for t in tasks]
    s = ev.best_of_n_sampling
    return [
        Episode(t, s.temperature, s.top_p, episode_seed(0, t, k), {"sample": k})
        for t in tasks
        for k in range(best_of)
    ]


def invalid_rate(trajectories: list[Trajectory], env_name: str) -> float:
    """Actions the environment refused (or replies with no action) as a share of all actions, x100."""
    from tratree.envs import invalid_action

    answers = [obs for t in trajectories for obs in [*(s.observation for s in t.steps[1:]), t.final_observation]
               if t.steps]
    return 100 * sum(invalid_action(env_name, o) for o in answers) / len(answers) if answers else 0.0


def metrics(trajectories: list[Trajectory], split: str, best_of: int | None = None,
            env_name: str | None = None) -> dict[str, Any]:
    """Scores per task (the best of its episodes under best-of-N) and their means x100; with
    ``env_name``, the share of actions the environment refused."""
    best: dict[str, Trajectory] = {}
    for t in trajectories:
        if t.task_id not in best or t.score > best[t.task_id].score:
            best[t.task_id] = t
    per_task = {k: {"score": v.score, "success": v.success, "steps": len(v.steps),
                    "finished": not v.meta.get("step_limit_reached", False)} for k, v in best.items()}
    scores = [v["score"] for v in per_task.values()]
    return {
        "split": split,
        "tasks": len(per_task),
        "episodes": len(trajectories),
        "best_of": best_of or 1,
        "average_reward": 100 * mean(scores) if scores else 0.0,
        "success_rate": 100 * mean(float(v["success"]) for v in per_task.values()) if per_task else 0.0,
        # ETO's "success" on WebShop and ScienceWorld: the episode ended before its step limit
        "finished_rate": 100 * mean(float(v["finished"]) for v in per_task.values()) if per_task else 0.0,
        "unparsed_replies": sum(t.meta.get("unparsed_replies", 0) for t in trajectories),
        **({"invalid_actions": invalid_rate(trajectories, env_name)} if env_name else {}),
        "per_task": per_task,
    }


def evaluate(spec: ExperimentSpec, backend: Backend, trajectories_out: str | Path, *, model: str, prompt: str,
             split: str | None = None, limit: int | None = None, best_of: int | None = None) -> dict[str, Any]:
    """Run the held-out episodes of ``model`` acting on ``prompt`` (resumable under the same model and
    settings) and return the metrics."""
    split = split or spec.environment.test_split
    tasks = split_tasks(spec, split, limit)
    trajs = run_to_file(spec, backend, evaluation_episodes(spec, tasks, best_of), trajectories_out,
                        f"evaluating ({split})", model, prompt)
    return metrics(trajs, split, best_of, spec.environment.name)
