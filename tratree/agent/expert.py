"""Expert trajectories D_expert: the environment's gold action sequences, or a given file."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator

from tratree.envs import env_factory, env_pool, task_ids
from tratree.errors import UserError
from tratree.records.formats import Step, Trajectory, read_eto, read_jsonl
from tratree.spec.experiment import ExperimentSpec


class NoExpertData(UserError, ValueError):
    """Every gold run ended below full score: there is no expert data to train on."""


def templated_thought(action: str) -> str:
    return f"I should {action}."


def gold_trajectories(spec: ExperimentSpec, split: str = "train", limit: int | None = None) -> Iterator[Trajectory]:
    """Replay each task's gold actions; thoughts are empty or templated, as the spec says."""
    with env_pool(env_factory(spec.environment)) as pool:
        env = pool.acquire()
        tasks = task_ids(env, spec.environment, split, spec.corpus_games(split))  # type: ignore[arg-type]
        for task in tasks if limit is None else tasks[:limit]:
            actions = env.gold_actions(task)
            start = env.reset(task)
            steps, observation, last = [], start.observation, None
            for action in actions:
                thought = templated_thought(action) if spec.expert.thoughts == "templated" else ""
                steps.append(Step(observation=observation, thought=thought, action=action))
                last = env.step(action)
                observation = last.observation
                if last.done:
                    break
            if last is None:
                continue
            yield Trajectory(task_id=task, instruction=start.instruction, steps=steps,
                             final_observation=last.observation, score=last.score, success=last.success,
                             meta={"policy": "expert"})


def with_environment_ids(trajs: list[Trajectory], env: str, split: str, source: str) -> list[Trajectory]:
    """ETO-imported trajectories under the environment's task ids (ETO's id kept in meta.eto_id)."""
    from tratree.envs.eto_ids import environment_task_id
    from tratree.records.formats import FormatError

    out = []
    for t in trajs:
        try:
            task_id = environment_task_id(env, t.task_id, split)
        except ValueError as err:
            raise FormatError(f"{source}: {err}") from None
        out.append(t.model_copy(update={"task_id": task_id, "meta": {**t.meta, "eto_id": t.task_id}}))
    return out


def task_type(task_id: str) -> str:
    """The game or task type of a task id ('cookingworld/train/17' -> 'cookingworld')."""
    return task_id.split("/", 1)[0]


def full_score_only(trajs: list[Trajectory], keep_partial: bool = False) -> tuple[list[Trajectory], Counter[str]]:
    """The gold runs at full score, and how many of each task type were dropped (none with ``keep_partial``)."""
    if keep_partial:
        return trajs, Counter()
    dropped = Counter(task_type(t.task_id) for t in trajs if t.score < 1.0)
    return [t for t in trajs if t.score >= 1.0], dropped


def expert_trajectories(spec: ExperimentSpec, split: str = "train", limit: int | None = None) -> list[Trajectory]:
    """D_expert as the spec says: gold runs of the environment, or the file it names.

    Gold runs that end below full score are not expert data: they are dropped with a warning naming how
    many and which task types (``expert.keepPartial`` keeps them), and none left is an error. A file is
    taken as it is."""
    if spec.expert.source == "file":
        assert spec.expert.path is not None
        if spec.expert.format == "eto":
            trajs = with_environment_ids(read_eto(spec.expert.path), spec.environment.name, split, spec.expert.path)
        else:
            trajs = read_jsonl(spec.expert.path, Trajectory)
        return trajs if limit is None else trajs[:limit]
    gold = list(gold_trajectories(spec, split, limit))
    kept, dropped = full_score_only(gold, spec.expert.keep_partial)
    if dropped:
        types = ", ".join(f"{n} {name}" for name, n in sorted(dropped.items()))
        if not kept:
            raise NoExpertData(f"expert: all {len(gold)} gold runs of the {split} tasks end below full score ({types}); "
                               "nothing to train on (expert.keepPartial: true keeps them)")
        print(f"tratree: warning: expert: dropped {sum(dropped.values())} of {len(gold)} gold runs that end below "
              f"full score ({types}); expert.keepPartial: true keeps them", file=sys.stderr)
    return kept
