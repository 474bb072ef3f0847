"""Running a list of episodes to a trajectories file, resumably, with a progress display."""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path

from tratree.envs import env_factory, env_pool
from tratree.formats import Trajectory, write_jsonl
from tratree.policy.base import Backend
from tratree.policy.prompts import PROMPTS
from tratree.rollout import Episode, run_episodes
from tratree.spec import ExperimentSpec


def episode_seed(base: int, task_id: str, sample: int) -> int:
    """A seed per (task, sample) that does not depend on which other tasks run."""
    return (zlib.crc32(f"{task_id}:{sample}".encode()) + 7919 * base) % (2**31)


def episode_key(meta: dict, task_id: str) -> tuple[str, int]:
    return task_id, int(meta.get("sample", 0))


def _read_partial(path: Path) -> list[Trajectory]:
    """The complete records of a partial file; a line cut off by an interruption is dropped."""
    done = []
    if not path.exists():
        return done
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                done.append(Trajectory.model_validate_json(line))
            except ValueError:
                break
    return done


def run_to_file(
    spec: ExperimentSpec,
    backend: Backend,
    episodes: list[Episode],
    out: str | Path,
    description: str,
    on_trajectory: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Run episodes, streaming finished trajectories to ``OUT.partial``; resume from it if present.

    When all are done the trajectories are written to ``out`` in episode order (atomically)
    and the partial file is removed.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    done = _read_partial(partial)
    keys = {episode_key(t.meta, t.task_id) for t in done}
    todo = [ep for ep in episodes if (ep.task_id, ep.meta.get("sample", 0)) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    # rewrite without any cut-off tail before appending
    write_jsonl(partial, done)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                     transient=True)
        )
        bar = progress.add_task(description, total=len(episodes), completed=len(episodes) - len(todo))
        pool = stack.enter_context(env_pool(env_factory(spec.environment)))
        fh = stack.enter_context(partial.open("a", encoding="utf-8"))
        for traj in run_episodes(todo, pool, backend, PROMPTS[spec.environment.name], spec.environment.max_steps,
                                 spec.policy.batch_size):
            fh.write(traj.model_dump_json() + "\n")
            fh.flush()
            done.append(traj)
            progress.advance(bar)
            if on_trajectory:
                on_trajectory(traj)
    order = {(ep.task_id, ep.meta.get("sample", 0)): i for i, ep in enumerate(episodes)}
    done.sort(key=lambda t: order.get(episode_key(t.meta, t.task_id), len(order)))
    write_jsonl(out, done)
    partial.unlink()
    return done


def dump_json(path: str | Path, data: dict) -> None:
    """Write a JSON document atomically."""
    from tratree.atomic import atomic_write

    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
