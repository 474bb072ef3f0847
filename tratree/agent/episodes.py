"""Running a list of episodes to a trajectories file, resumably, with a progress display."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from tratree.agent.rollout import Episode, run_episodes
from tratree.envs import env_factory, env_pool, step_limit
from tratree.policy.base import Backend
from tratree.records.formats import Trajectory, write_jsonl
from tratree.spec.experiment import ExperimentSpec


def episode_seed(base: int, task_id: str, sample: int) -> int:
    """A seed per (task, sample) that does not depend on which other tasks run."""
    return (zlib.crc32(f"{task_id}:{sample}".encode()) + 7919 * base) % (2**31)


def episode_key(meta: dict, task_id: str) -> tuple[str, int]:
    return task_id, int(meta.get("sample", 0))


def model_fingerprint(model: str) -> str:
    """What identifies a model's weights cheaply: for a local directory its resolved path and every
    file's name, size and modification time (a model retrained in place differs); else the reference."""
    path = Path(model)
    if not path.is_dir():
        return model
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def run_binding(spec: ExperimentSpec, model: str, prompt: str) -> str:
    """A digest of what produced a run's episodes besides their own sampling settings: the model, the
    acting prompt, the environment and the policy's generation settings. A partial file is resumed
    only under it."""
    blob = json.dumps({
        "model": model_fingerprint(model),
        "prompt": hashlib.sha256(prompt.encode()).hexdigest(),
        "environment": spec.environment.model_dump(mode="json"),
        "policy": spec.policy.model_dump(mode="json", include={"backend", "endpoint", "max_new_tokens"}),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_partial(path: Path, binding: str) -> tuple[list[Trajectory], str | None]:
    """The complete records of a partial file made under ``binding``, and why it was not used.

    A line cut off by an interruption is dropped; a file made under another binding (another
    model, environment or generation settings) is not used at all.
    """
    done: list[Trajectory] = []
    if not path.exists():
        return done, None
    with path.open("rb") as fh:
        header = fh.readline()
        try:
            made_under = json.loads(header).get("binding") if header.endswith(b"\n") else None
        except (json.JSONDecodeError, AttributeError):
            made_under = None
        if made_under != binding:
            return done, f"{path} was made by another model or other settings; starting afresh"
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                done.append(Trajectory.model_validate_json(line))
            except ValueError:
                break
    return done, None


def _same_sampling(traj: Trajectory, ep: Episode) -> bool:
    meta = traj.meta
    return (meta.get("temperature"), meta.get("top_p"), meta.get("seed")) == (ep.temperature, ep.top_p, ep.seed)


def run_to_file(
    spec: ExperimentSpec,
    backend: Backend,
    episodes: list[Episode],
    out: str | Path,
    description: str,
    model: str,
    prompt: str,
    on_trajectory: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Run episodes, streaming finished trajectories to ``OUT.partial``; resume from it if present.

    The partial file starts with a header binding it to ``model`` and the spec's environment and
    generation settings, and each kept trajectory must have its episode's sampling settings and
    seed, so a resume never mixes episodes of another model or setting into the output. When all
    are done the trajectories are written to ``out`` in episode order (atomically) and the
    partial file is removed.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    binding = run_binding(spec, model, prompt)
    found, refused = _read_partial(partial, binding)
    if refused:
        print(f"tratree: warning: {refused}", file=sys.stderr)
    wanted = {(ep.task_id, ep.meta.get("sample", 0)): ep for ep in episodes}
    done = []
    for t in found:
        ep = wanted.get(episode_key(t.meta, t.task_id))
        if ep is not None and _same_sampling(t, ep):
            done.append(t)
    keys = {episode_key(t.meta, t.task_id) for t in done}
    todo = [ep for ep in episodes if (ep.task_id, ep.meta.get("sample", 0)) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    # rewrite without any cut-off tail or foreign record before appending
    write_jsonl(partial, [{"partial": 1, "binding": binding, "model": model}, *done])
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                     transient=True)
        )
        bar = progress.add_task(description, total=len(episodes), completed=len(episodes) - len(todo))
        pool = stack.enter_context(env_pool(env_factory(spec.environment)))
        fh = stack.enter_context(partial.open("a", encoding="utf-8"))
        for traj in run_episodes(todo, pool, backend, prompt, step_limit(spec.environment), spec.policy.batch_size):
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
    from tratree.store.atomic import atomic_write

    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def shard_slice(episodes: list[Episode], shard: tuple[int, int] | None) -> list[Episode]:
    """Shard ``(index, count)``'s episodes: those of every count-th task (in order of first appearance)
    from ``index`` on, so a task's samples stay together and shards get tasks from the whole list."""
    if shard is None:
        return episodes
    index, count = shard
    position: dict[str, int] = {}
    for ep in episodes:
        position.setdefault(ep.task_id, len(position))
    return [ep for ep in episodes if position[ep.task_id] % count == index]


def merge_shards(episodes: list[Episode], parts: list[list[Trajectory]]) -> list[Trajectory]:
    """The shards' trajectories in ``episodes``' order: exactly one per episode, with its episode's
    sampling settings, else ValueError naming the first episode that is missing, repeated or foreign."""
    wanted = {(ep.task_id, ep.meta.get("sample", 0)): ep for ep in episodes}
    found: dict[tuple[str, int], Trajectory] = {}
    for part in parts:
        for traj in part:
            key = episode_key(traj.meta, traj.task_id)
            ep = wanted.get(key)
            if ep is None or not _same_sampling(traj, ep):
                raise ValueError(f"task {key[0]!r} sample {key[1]} is not one of its episodes")
            if key in found:
                raise ValueError(f"task {key[0]!r} sample {key[1]} comes twice")
            found[key] = traj
    missing = [k for k in wanted if k not in found]
    if missing:
        raise ValueError(f"task {missing[0][0]!r} sample {missing[0][1]} is missing ({len(missing)} episodes in all)")
    return [found[k] for k in wanted]
