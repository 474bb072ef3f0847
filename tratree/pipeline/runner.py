"""Running stages against a store: one stage (what a Kubernetes Job runs) or the whole graph.

A stage whose manifest exists and whose files match it is cached and skipped. Otherwise its
inputs are fetched (checked against their sha256), its code runs into a work directory, and
its outputs are committed with the manifest last. For a file:// store the work directory is
the stage's own folder in the store, so an interrupted stage resumes where it stopped (the
exploration's partial file is there); for s3:// it is a local cache folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tratree.errors import UserError
from tratree.pipeline.graph import STAGE_VERSIONS, Stage, UnknownStage, cache_key, code_version, plan, select
from tratree.spec.experiment import ExperimentSpec
from tratree.store.artifacts import Store, StoreError, open_store


class StageNotReady(UserError, RuntimeError):
    """A stage was asked to run before one of its inputs was done."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "cached" or "done"
    key: str
    manifest: dict[str, Any]
    seconds: float


def work_root() -> Path:
    return Path(os.environ.get("TRATREE_WORK", Path.home() / ".cache" / "tratree" / "work"))


def _done(store: Store, prefix: str) -> dict[str, Any] | None:
    """The manifest at ``prefix`` if it is done and its files are intact; a corrupted one is invalidated."""
    manifest = store.read_manifest(prefix)
    if manifest is None:
        return None
    try:
        store.verify(prefix, manifest)
    except StoreError:
        store.invalidate(prefix)
        return None
    return manifest


def shard_prefix(stage: Stage, key: str, index: int) -> str:
    """Where shard ``index`` of a sharded stage keeps its outputs: beside the stage's own, by shard count."""
    return f"{stage.prefix(key)}.shards/{stage.shards}/{index}"


def done_manifests(
    store: Store, stages: list[Stage], read: Callable[[str], dict[str, Any] | None] | None = None
) -> dict[str, dict[str, Any]]:
    """The manifest of every stage that is done in the store, for stages in plan order.

    A stage's cache key is known once its inputs are done, so the walk follows the graph;
    ``read`` replaces ``store.read_manifest`` (a cache, say). StoreError when the store cannot be read.
    """
    read = read or store.read_manifest
    done: dict[str, dict[str, Any]] = {}
    for stage in stages:
        if all(n in done for n in stage.inputs):
            key = cache_key(stage, {n: done[n]["digest"] for n in stage.inputs})
            manifest = read(stage.prefix(key))
            if manifest is not None:
                done[stage.name] = manifest
    return done


def stage_key(store: Store, stages: dict[str, Stage], stage: Stage) -> tuple[str, dict[str, dict[str, Any]]]:
    """(cache key, input manifests) of a stage whose inputs are done; StageNotReady otherwise."""
    order = select(list(stages.values()), [stage.name])
    done = done_manifests(store, order)
    missing = [n for n in stage.inputs if n not in done]
    if missing:
        raise StageNotReady(f"stage {stage.name} needs {missing[0]}, which is not done")
    inputs = {n: done[n] for n in stage.inputs}
    return cache_key(stage, {n: m["digest"] for n, m in inputs.items()}), inputs


def execute(store: Store, spec: ExperimentSpec, stage: Stage, key: str, inputs: dict[str, dict[str, Any]],
            shard: int | None = None) -> StageOutcome:
    """Run one stage whose inputs are done and commit its outputs; cached if already done.

    A sharded stage runs ``shard`` alone (a Pod of its Indexed Job) or, without one, every shard in
    turn; whichever run finds every shard done merges them into the stage's outputs (the merge is
    deterministic, so two runs that both merge write the same bytes).
    """
    from tratree.store.lease import held

    t0 = time.monotonic()
    prefix = stage.prefix(key)
    manifest = _done(store, prefix)
    if manifest is not None:
        return StageOutcome(stage.name, "cached", key, manifest, time.monotonic() - t0)
    if shard is not None and not 0 <= shard < stage.shards:
        raise StageNotReady(f"stage {stage.name} has {stage.shards} shard(s); there is no shard {shard}")
    if stage.shards > 1:
        for index in range(stage.shards) if shard is None else (shard,):
            sp = shard_prefix(stage, key, index)
            if _done(store, sp) is None:
                with held(store, f"{sp}.lease", lambda sp=sp: _done(store, sp) is not None,
                          f"stage {stage.name} shard {index}") as lease:
                    if lease is not None:
                        _run_into(store, spec, stage, key, inputs, sp, shard=index)
        shards = [_done(store, shard_prefix(stage, key, i)) for i in range(stage.shards)]
        waiting = [i for i, m in enumerate(shards) if m is None]
        if waiting:
            return StageOutcome(stage.name, f"shard {shard} done; waiting for shard(s) "
                                f"{', '.join(map(str, waiting))} before the merge", key, {}, time.monotonic() - t0)
    found: list[dict[str, Any]] = []

    def done_meanwhile() -> bool:
        m = _done(store, prefix)
        if m is not None:
            found.append(m)
        return m is not None

    with held(store, f"{prefix}.lease", done_meanwhile, f"stage {stage.name}") as lease:
        if lease is None:  # another runner made it while this one waited
            return StageOutcome(stage.name, "cached", key, found[0], time.monotonic() - t0)
        manifest = _run_into(store, spec, stage, key, inputs, prefix, merge=stage.shards > 1)
        return StageOutcome(stage.name, "done", key, manifest, time.monotonic() - t0)


def _run_into(store: Store, spec: ExperimentSpec, stage: Stage, key: str, inputs: dict[str, dict[str, Any]],
              prefix: str, shard: int | None = None, merge: bool = False) -> dict[str, Any]:
    """Run the stage's code (one shard of it, or the merge of its shards) and commit what it writes at
    ``prefix``, manifest last."""
    from tratree.pipeline.actions import action
    from tratree.pipeline.actions.context import StageContext

    work = work_root() / stage.name / key
    if merge or shard is not None:
        work = work / ("merge" if merge else f"shard-{shard}")
    local_inputs = {}
    merged_from = None
    shard_seconds = 0.0
    if merge:  # a merge reads the shards' outputs, not the stage's inputs (a model need not be fetched)
        merged_from = []
        for index in range(stage.shards):
            sp = shard_prefix(stage, key, index)
            m = _done(store, sp)
            if m is None:
                raise StoreError(f"stage {stage.name}: shard {index} at {store.url(sp)} vanished before the merge")
            shard_seconds += m.get("device_seconds") or 0.0
            merged_from.append(store.fetch(sp, m, work_root() / "inputs" / sp))
    else:
        for name, m in inputs.items():
            dep_prefix = m["prefix"]
            try:
                local_inputs[name] = store.fetch(dep_prefix, m, work_root() / "inputs" / dep_prefix)
            except StoreError:
                store.invalidate(dep_prefix)  # found corrupted: it reruns on the next plan
                raise
    out = store.local_path(prefix) or work
    clear_stale(out)
    started = time.time()
    upstream = upstream_device_seconds(inputs)
    ctx = StageContext(spec, stage, local_inputs, out,
                       shard=(shard, stage.shards) if shard is not None else None, merge_from=merged_from,
                       upstream_device_seconds=upstream)
    summary = action(stage.action)(ctx)
    seconds = time.time() - started
    devices = devices_used(stage)
    meta = {
        "stage": stage.name,
        "action": stage.action,
        "key": key,
        "prefix": prefix,
        "params": stage.params,
        "inputs": {n: m["digest"] for n, m in inputs.items()},
        "stage_version": STAGE_VERSIONS[stage.action],
        "code_version": code_version(),  # for the record: what made it, not part of the key
        "started": started,
        "seconds": seconds,
        # what it cost in accelerator time: its wall time × the devices it ran on (a merge adds its shards')
        "devices": devices,
        "device_seconds": seconds * devices + shard_seconds,
        "upstream_device_seconds": upstream,
        "summary": summary,
    }
    if shard is not None:
        meta["shard"] = [shard, stage.shards]
    if merge:
        meta["shards"] = stage.shards
    manifest = store.commit(out, prefix, meta)
    if out == work:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def devices_used(stage: Stage) -> int:
    """The accelerators a GPU stage ran on: the CUDA devices its process sees, once its code has loaded
    torch; 0 for a CPU stage, or where there is none."""
    torch = sys.modules.get("torch")
    if not stage.gpu or torch is None or not torch.cuda.is_available():
        return 0
    return int(torch.cuda.device_count())


def upstream_device_seconds(inputs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The device-seconds of every stage a stage's inputs came from, by stage (from their manifests; a
    manifest written before tratree counted them has none)."""
    out: dict[str, float] = {}
    for manifest in inputs.values():
        out.update(manifest.get("upstream_device_seconds") or {})
        if "device_seconds" in manifest:
            out[manifest["stage"]] = manifest["device_seconds"]
    return out


def clear_stale(out: Path) -> None:
    """Remove what an earlier, unfinished run left in a stage's output directory, except partial
    files a stage resumes from, and the temp directories of a model save killed mid-write beside it
    (``.<key>.*``, which nothing else would ever remove)."""
    for left in out.parent.glob(f".{out.name}.*") if out.parent.is_dir() else ():
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.name.endswith(".partial"):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def given_inputs(store: Store, stage: Stage, prefixes: dict[str, str]) -> tuple[str, dict[str, dict[str, Any]]]:
    """(cache key, input manifests) of a stage whose inputs' locations are given (``--input``), as
    the operator passes them: the Job reads exactly those outputs, whatever code made them."""
    if set(prefixes) != set(stage.inputs):
        raise StageNotReady(f"stage {stage.name} reads {', '.join(stage.inputs) or 'nothing'}; "
                            f"--input named {', '.join(sorted(prefixes)) or 'nothing'}")
    inputs = {}
    for name in stage.inputs:
        manifest = store.read_manifest(prefixes[name])
        if manifest is None:
            raise StageNotReady(f"stage {stage.name}: its input {name} is not done at {store.url(prefixes[name])}")
        inputs[name] = manifest
    return cache_key(stage, {n: m["digest"] for n, m in inputs.items()}), inputs


def run_stage(spec: ExperimentSpec, name: str, store_uri: str | None = None,
              inputs: dict[str, str] | None = None, shard: int | None = None) -> StageOutcome:
    """``tratree stage NAME``: run one stage of the spec's graph against the store (one ``shard`` of a
    sharded stage). Its inputs are where ``inputs`` says (stage name -> prefix in the store), or
    found by their cache keys."""
    stages = {s.name: s for s in plan(spec)}
    if name not in stages:
        raise UnknownStage(f"unknown stage {name!r} (stages: {', '.join(stages)})")
    store = open_store(store_uri or spec.artifacts)
    if inputs is not None:
        key, found = given_inputs(store, stages[name], inputs)
    else:
        key, found = stage_key(store, stages, stages[name])
    return execute(store, spec, stages[name], key, found, shard)


def run_pipeline(
    spec: ExperimentSpec,
    store_uri: str | None = None,
    only: list[str] | None = None,
    on_event: Callable[[str, Stage, StageOutcome | None, int, int], None] | None = None,
) -> list[StageOutcome]:
    """Run the graph in dependency order; ``only`` runs those stages and what they need."""
    stages = plan(spec)
    if only:
        stages = select(stages, only)  # with everything they need, so every input runs first
    store = open_store(store_uri or spec.artifacts)
    outcomes: list[StageOutcome] = []
    manifests: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(stages):
        inputs = {n: manifests[n] for n in stage.inputs}
        key = cache_key(stage, {n: m["digest"] for n, m in inputs.items()})
        if on_event:
            on_event("start", stage, None, i, len(stages))
        outcome = execute(store, spec, stage, key, inputs)
        manifests[stage.name] = outcome.manifest
        outcomes.append(outcome)
        if on_event:
            on_event("end", stage, outcome, i, len(stages))
    return outcomes
