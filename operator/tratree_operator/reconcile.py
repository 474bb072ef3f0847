"""Every decision the operator makes, as one pure function.

``reconcile(observed, config)`` takes what the cluster and the store say now (the experiment
with its spec and status, the Jobs labelled with its name, the manifests of the stages that
are done, the report's results) and returns what to do: Jobs to create and delete, the new
status, Events, and when to look again. It does no I/O, so every case is a unit test, and a
restarted operator decides from the same inputs what the old one would have.

Each stage has a plan key (``tratree.pipeline.graph.fingerprints``): a digest of its spec slice, its
inputs' keys and the code version. Jobs carry it, so a spec edit that changes a stage's key
re-runs that stage and everything after it, and leaves the rest standing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from tratree.pipeline.graph import W2SG_METHODS, Stage, fingerprints, plan
from tratree.spec.experiment import API_VERSION, KIND, Experiment, ExperimentSpec, SpecError, parse_experiment
from tratree_operator.config import OperatorConfig
from tratree_operator.jobs import (
    ANNOTATION_KEY,
    LABEL_ATTEMPT,
    LABEL_STAGE,
    configmap_manifest,
    job_manifest,
    job_name,
)

DONE = ("Succeeded", "Cached")


@dataclass
class Observed:
    """What the cluster and the store say about one experiment right now."""

    body: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)  # the stage Jobs' Pods (they carry the labels)
    manifests: dict[str, dict[str, Any]] | None = field(default_factory=dict)  # None: store unreachable
    results: dict[str, Any] | None = None  # the report stage's results.json
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    store_problem: str | None = None  # why the store was not read, when it was not


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str
    stage: str | None = None


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)  # the ConfigMap first, then Jobs
    delete: list[str] = field(default_factory=list)  # Job names
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def timestamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class JobView:
    """The parts of a Job the reconciler reads."""

    name: str
    stage: str
    key: str
    attempt: int
    outcome: str  # Running, Succeeded or Failed
    start: str | None
    finish: str | None
    message: str
    deleting: bool
    stuck: tuple[str, str] | None = None  # (since, why): its Pod cannot start
    exit: str = ""  # its last Pod's exit code and termination message
    shards: str = ""  # an Indexed Job's shards done / total

    @classmethod
    def of(cls, job: dict[str, Any], pods: list[dict[str, Any]] = ()) -> JobView:  # type: ignore[assignment]
        meta, status = job.get("metadata", {}), job.get("status") or {}
        outcome, finish, message = "Running", None, ""
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                outcome, finish = "Succeeded", status.get("completionTime") or cond.get("lastTransitionTime")
            elif cond.get("type") == "Failed":
                outcome, finish = "Failed", cond.get("lastTransitionTime")
                message = f"{cond.get('reason') or 'Failed'}: {cond.get('message') or 'the Job failed'}"
        labels = meta.get("labels") or {}
        try:
            attempt = int(labels.get(LABEL_ATTEMPT, "1"))
        except ValueError:
            attempt = 1
        mine = [p for p in pods if any(o.get("uid") == meta.get("uid") for o in p["metadata"].get("ownerReferences") or [])]
        newest = max(mine, key=lambda p: p["metadata"].get("creationTimestamp") or "") if mine else None
        stuck, exit_text = _pod_trouble(newest) if newest else (None, "")
        spec = job.get("spec") or {}
        shards = (f"{status.get('succeeded') or 0}/{spec.get('completions')}"
                  if spec.get("completionMode") == "Indexed" else "")
        return cls(meta["name"], labels.get(LABEL_STAGE, ""), (meta.get("annotations") or {}).get(ANNOTATION_KEY, ""),
                   attempt, outcome, status.get("startTime"), finish, message, bool(meta.get("deletionTimestamp")),
                   stuck, exit_text, shards)


# Waiting reasons of a container that will not start by itself
CANNOT_START = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError", "RunContainerError")


def _pod_trouble(pod: dict[str, Any]) -> tuple[tuple[str, str] | None, str]:
    """(since, why) when the Pod cannot start; and its container's exit code and termination message."""
    status = pod.get("status") or {}
    since = pod["metadata"].get("creationTimestamp") or ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return (cond.get("lastTransitionTime") or since, f"Unschedulable: {cond.get('message', '')}"), ""
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting, done = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason") in CANNOT_START:
            return (since, f"{waiting['reason']}: {waiting.get('message', '')}"), ""
        if done and done.get("exitCode"):
            tail = (done.get("message") or "").strip().splitlines()[-3:]
            return None, f"exit code {done['exitCode']}" + (f": {' | '.join(tail)[-400:]}" if tail else "")
    return None, ""


@dataclass
class _Want:
    """A Job the stage needs, once its inputs are done and nothing blocks it."""

    attempt: int
    reason: str  # StageStarted, StageRetried or JobRecreated
    due: dt.datetime | None = None


def _condition(old: list[dict[str, Any]], kind: str, ok: bool, reason: str, message: str, gen: int | None,
               now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = next((c for c in old if c.get("type") == kind), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status and prev.get("lastTransitionTime") else now
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since,
            "observedGeneration": gen}


def _invalid(observed: Observed, old: dict[str, Any], message: str, reason: str = "InvalidSpec") -> Decision:
    gen = observed.body["metadata"].get("generation")
    now = timestamp(observed.now)
    conds = old.get("conditions") or []
    status = {
        **old,
        "phase": "Failed",
        "observedGeneration": gen,
        "conditions": [
            _condition(conds, "SpecValid", False, reason, message, gen, now),
            _condition(conds, "Progressing", False, reason, "no Job is made for an invalid spec", gen, now),
            _condition(conds, "Succeeded", False, reason, "", gen, now),
            _condition(conds, "Failed", True, reason, message, gen, now),
            _condition(conds, "Finished", True, "Failed", "", gen, now),
        ],
    }
    was_invalid = any(c.get("type") == "SpecValid" and c.get("status") == "False" and c.get("message") == message
                      for c in conds)
    events = [] if was_invalid else [Event("Warning", reason, message)]
    return Decision(status, events=events)


def _unshared_store(spec: ExperimentSpec) -> str | None:
    """Why a file:// store cannot work on a cluster (each stage runs in a fresh Pod), if it cannot."""
    if not spec.artifacts.startswith("file://"):
        return None
    path = spec.artifacts.removeprefix("file://")
    mount = spec.kubernetes.mount_of(path) if path.startswith("/") else None
    if mount is None:
        return (f"spec.artifacts: {spec.artifacts} is a file:// store, but every stage runs in a fresh Pod: put it "
                "on a volume all of them mount (spec.kubernetes.volumes and volumeMounts, e.g. a ReadWriteMany "
                "PersistentVolumeClaim, with an absolute path under its mountPath), or use an s3:// store")
    if mount.read_only:
        return f"spec.artifacts: {spec.artifacts} is on volume {mount.name!r}, mounted read-only"
    return None


def plan_keys(spec: ExperimentSpec, stages: list[Stage]) -> dict[str, str]:
    """Each stage's plan key: its fingerprint and the store. A new store (``spec.artifacts`` edited)
    re-plans every stage against it: Cached where it has the output, run again where not."""
    return {n: hashlib.sha256(f"{k}@{spec.artifacts}".encode()).hexdigest()[:24]
            for n, k in fingerprints(stages).items()}


RETRY_ANNOTATION = "tratree.io/retry"


def _stage_entry(prev: dict[str, Any], key: str) -> dict[str, Any]:
    entry = {"state": "Pending", "key": key, "attempts": 0}
    if prev.get("key") == key:
        entry.update({k: v for k, v in prev.items() if k in ("state", "job", "startTime", "finishTime", "attempts",
                                                               "message", "retryBase", "shards")})
    return entry


def _retry_failed(entries: dict[str, dict[str, Any]], token: str) -> list[Event]:
    """A user's retry (a new ``tratree.io/retry`` annotation): every Failed stage gets its retries
    again, its attempts counting on from where they stopped; what follows it runs after it."""
    events = []
    for name, entry in entries.items():
        if entry["state"] == "Failed":
            entry.update(state="Pending", retryBase=entry["attempts"],
                         message=f"retried ({RETRY_ANNOTATION}={token}) after: {entry.get('message', '')}")
            entry.pop("finishTime", None)
            events.append(Event("Normal", "StageRetriedByUser", f"stage {name}: retried ({RETRY_ANNOTATION}={token})",
                                name))
    return events


def _attempts_left(entry: dict[str, Any], attempt: int, retries: int) -> bool:
    """Whether ``attempt`` (the one that just failed) leaves a retry since the last user retry."""
    return attempt - entry.get("retryBase", 0) <= retries


def _results(results: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """The results table as the status holds it, and the two printer-column values."""
    table = {}
    for method, row in (results.get("methods") or {}).items():
        entry = {"averageReward": round(row["average_reward"]["mean"], 2),
                 "averageRewardStd": round(row["average_reward"]["std"], 2),
                 "successRate": round(row["success_rate"]["mean"], 2),
                 "seeds": row.get("seeds", 1)}
        if row.get("p_value_vs_sft_strong") is not None:
            entry["pValueVsSftStrong"] = round(row["p_value_vs_sft_strong"], 4)
        if row.get("gap_recovered") is not None:
            entry["gapRecovered"] = round(row["gap_recovered"], 3)
        if row.get("gap_recovered_vs_sft_strong") is not None:
            entry["gapRecoveredVsSftStrong"] = round(row["gap_recovered_vs_sft_strong"], 3)
        if "finished_rate" in row:
            entry["finishedRate"] = round(row["finished_rate"]["mean"], 2)
        if "pairs" in row:
            entry["dpoPairs"] = list(row["pairs"])  # per seed; 0 means that DPO trained on nothing
        if "optimizer_steps" in row:  # per seed; a CI gate can refuse a row that barely trained
            entry["optimizerSteps"] = list(row["optimizer_steps"])
            entry["fewSteps"] = bool(row.get("few_steps"))
        if "paired_mean" in row:  # the paired comparison with sft-strong over held-out games
            entry["pairedDiffVsSftStrong"] = round(row["paired_mean"], 2)
            entry["pairedCIVsSftStrong"] = [round(v, 2) for v in row["paired_ci"]]
            if row.get("paired_p") is not None:
                entry["pairedPVsSftStrong"] = round(row["paired_p"], 4)
            if row.get("holm_p") is not None:
                entry["holmP"] = round(row["holm_p"], 4)
        table[method] = entry
    w2sg = [table[m]["averageReward"] for m in W2SG_METHODS if m in table]
    best = f"{max(w2sg):.1f}" if w2sg else None
    sft = f"{table['sft-strong']['averageReward']:.1f}" if "sft-strong" in table else None
    return table, best, sft


def experiment_of(body: dict[str, Any]) -> Experiment:
    """The experiment a W2SGExperiment object describes; SpecError naming the field when invalid."""
    meta = body["metadata"]
    return parse_experiment({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": meta["name"]},
                             "spec": body.get("spec")}, source=f"{KIND} {meta.get('namespace')}/{meta['name']}")


def _owned(jobs: list[dict[str, Any]], uid: str | None) -> list[dict[str, Any]]:
    """The Jobs this very experiment owns. A Job of a deleted experiment of the same name (the garbage
    collector has not removed it yet) carries the label but another owner's uid: never adopted."""
    return [j for j in jobs if any(o.get("uid") == uid and o.get("controller")
                                   for o in j.get("metadata", {}).get("ownerReferences") or [])]


def reconcile(observed: Observed, config: OperatorConfig) -> Decision:
    """What to do about one experiment, given what is observed now."""
    body = observed.body
    meta = body["metadata"]
    old: dict[str, Any] = dict(body.get("status") or {})
    gen = meta.get("generation")
    now_t = observed.now
    now = timestamp(now_t)
    try:
        exp = experiment_of(body)
    except SpecError as err:
        return _invalid(observed, old, str(err))
    refused = config.violations(exp.spec, meta.get("namespace", ""))
    if refused:
        return _invalid(observed, old, "; ".join(refused), "PolicyViolation")
    unshared = _unshared_store(exp.spec)
    if unshared:
        return _invalid(observed, old, unshared, "StoreNotShared")
    spec = exp.spec
    stages = plan(spec)
    keys = plan_keys(spec, stages)
    by_name = {s.name: s for s in stages}
    jobs_of: dict[str, list[JobView]] = defaultdict(list)
    for job in _owned(observed.jobs, meta.get("uid")):
        view = JobView.of(job, observed.pods)
        jobs_of[view.stage].append(view)

    decision = Decision(status={})
    old_stages: dict[str, dict[str, Any]] = old.get("stages") or {}
    entries: dict[str, dict[str, Any]] = {}
    wants: dict[str, _Want] = {}
    for stage in stages:
        key = keys[stage.name]
        prev = old_stages.get(stage.name) or {}
        entry = _stage_entry(prev, key)
        if prev and prev.get("key") != key and prev.get("state") != "Pending":
            decision.events.append(Event("Normal", "StageReplanned", f"stage {stage.name}: the spec changed; it runs again",
                                         stage.name))
        mine = [j for j in jobs_of.get(stage.name, []) if j.key == key]
        decision.delete += [j.name for j in jobs_of.get(stage.name, [])
                            if j.key != key and j.outcome == "Running" and not j.deleting]
        current = max(mine, key=lambda j: j.attempt) if mine else None
        if current is not None and current.outcome == "Running" and current.stuck and not current.deleting:
            since = parse_time(current.stuck[0]) or now_t
            if (now_t - since).total_seconds() >= config.start_timeout_seconds:
                # a Pod that cannot start is a failed attempt, not "Running" for ever
                decision.delete.append(current.name)
                current = replace(current, outcome="Failed", finish=now, message=(
                    f"could not start within {config.start_timeout_seconds:g}s: {current.stuck[1]}"))
        want = _settle(entry, current, (observed.manifests or {}).get(stage.name), stage, spec, config, now_t)
        if want is not None:
            wants[stage.name] = want
        entries[stage.name] = entry
    # Jobs of stages a spec edit removed from the graph
    for stage_name, views in jobs_of.items():
        if stage_name not in by_name:
            decision.delete += [j.name for j in views if j.outcome == "Running" and not j.deleting]

    token = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
    if token and token != old.get("retried"):
        decision.events += _retry_failed(entries, token)
        for name, entry in entries.items():
            if entry.get("retryBase") == entry["attempts"] and entry["state"] == "Pending" and name not in wants:
                wants[name] = _Want(entry["attempts"] + 1, "StageRetried")
    failed = [n for n, e in entries.items() if e["state"] == "Failed"]
    blocked = bool(failed) or spec.suspend
    created = False
    started: dict[str, Event] = {}
    waits: list[float] = []
    for name, want in wants.items():
        stage = by_name[name]
        if blocked or not all(entries[i]["state"] in DONE for i in stage.inputs):
            continue
        if want.due is not None and want.due > now_t:
            waits.append((want.due - now_t).total_seconds())
            continue
        found = observed.manifests or {}
        # the exact outputs its inputs left in the store, when the operator could read them: the Job
        # reads those, whichever code version made them
        inputs = {n: found[n]["prefix"] for n in stage.inputs} if all(n in found for n in stage.inputs) else None
        job = job_manifest(meta, spec, stage, keys[name], want.attempt, config, inputs)
        decision.create.append(job)
        created = True
        entry = entries[name]
        entry.update(state="Running", job=job["metadata"]["name"], startTime=now, attempts=want.attempt)
        entry.pop("finishTime", None)
        if want.reason == "StageStarted":
            entry.pop("message", None)
            text = f"stage {name} started: Job {entry['job']}"
        elif want.reason == "StageRetried":
            text = f"stage {name}: attempt {want.attempt} started: Job {entry['job']} ({entry.get('message', '')})"
        else:
            text = f"stage {name}: its Job vanished before it finished; attempt {want.attempt}: {entry['job']}"
        started[name] = Event("Warning" if want.reason == "JobRecreated" else "Normal", want.reason, text, name)
    if created:
        decision.create.insert(0, configmap_manifest(meta, spec))
    decision.events += _transitions(old_stages, entries, started)

    decision.status = _status(observed, old, spec, stages, entries, failed, now, gen, token or old.get("retried"))
    for ev in _phase_events(old, decision.status, observed):
        decision.events.append(ev)
    if waits:
        decision.requeue_after = min(waits)
    elif decision.status["phase"] in ("Pending", "Running") and not spec.suspend:
        decision.requeue_after = config.resync_seconds
    return decision


def _transitions(old_stages: dict[str, dict[str, Any]], entries: dict[str, dict[str, Any]],
                 started: dict[str, Event]) -> list[Event]:
    """Events for what changed since the status the cluster holds.

    They come from comparing statuses, not from what this pass did: when a status write is
    lost (a 409, a crash) the next pass, seeing the old status again, tells the same story.
    """
    events = []
    for name, entry in entries.items():
        prev = old_stages.get(name) or {}
        before, before_job = (prev.get("state"), prev.get("job")) if prev.get("key") == entry["key"] else (None, None)
        state, job = entry["state"], entry.get("job")
        message = entry.get("message", "")
        if message.endswith("retrying") and message != prev.get("message"):
            events.append(Event("Warning", "StageAttemptFailed", f"stage {name}: {message}", name))
        if name in started:
            events.append(started[name])
        elif job and state in ("Running", "Succeeded", "Failed") and before not in DONE and \
                (before, before_job) != ("Running", job) and not (before == "Failed" and before_job == job):
            # a Job this status has not seen yet: made by a pass whose status write was lost
            events.append(Event("Normal", "StageStarted", f"stage {name} started: Job {job}", name))
        if state == before or state in ("Running", "Pending"):
            continue
        if state == "Failed":
            events.append(Event("Warning", "StageFailed", f"stage {name} failed: {message}", name))
        else:
            events.append(Event("Normal", f"Stage{state}", f"stage {name}: {state.lower()}", name))
    return events


def _settle(entry: dict[str, Any], job: JobView | None, manifest: dict[str, Any] | None, stage: Stage,
            spec: ExperimentSpec, config: OperatorConfig, now: dt.datetime) -> _Want | None:
    """Bring the stage's entry up to what is observed; the Job it needs next, if any.

    A finished stage stays finished. Otherwise its newest Job decides; without one, the store
    (Cached, or Succeeded if its Job is gone); a Failed verdict stands when its Job is gone
    (ttlSecondsAfterFinished); a Running stage whose Job vanished gets it again; the rest wait.
    """
    state = entry["state"]
    if state in DONE:
        return None
    if job is not None:
        return _from_job(entry, job, stage, spec, config, now)
    if manifest is not None:
        entry["state"] = "Succeeded" if state == "Running" else "Cached"
        entry["finishTime"] = entry.get("finishTime") or timestamp(now)
        return None
    if state == "Failed":
        # its Job is gone (or collected by its TTL): raising `retries` still gives it another attempt
        retries = config.resources_for(stage.kind, spec.kubernetes.stages.get(stage.kind)).retries
        if _attempts_left(entry, entry["attempts"], retries):
            entry.update(state="Pending", message=f"{entry.get('message', '')}; retrying")
            return _Want(entry["attempts"] + 1, "StageRetried")
        return None
    if state == "Running" and entry.get("job"):
        # Its Job is gone and the store has no output: someone deleted it, or it failed and
        # ttlSecondsAfterFinished removed it before it was read. The two look alike, so the
        # attempt counts as failed: a short TTL can never replay an attempt for ever.
        attempt = max(1, entry["attempts"])
        retries = config.resources_for(stage.kind, spec.kubernetes.stages.get(stage.kind)).retries
        message = (f"attempt {attempt} of {entry.get('retryBase', 0) + retries + 1}: its Job {entry['job']} "
                   "vanished before it finished")
        if not _attempts_left(entry, attempt, retries):
            entry.update(state="Failed", message=message, finishTime=timestamp(now))
            return None
        entry.update(state="Pending", message=f"{message}; retrying")
        return _Want(attempt + 1, "JobRecreated")
    return _Want(entry["attempts"] + 1, "StageRetried" if entry["attempts"] else "StageStarted")


def _from_job(entry: dict[str, Any], job: JobView, stage: Stage, spec: ExperimentSpec, config: OperatorConfig,
              now: dt.datetime) -> _Want | None:
    """The stage's state from its newest Job; a failed one is retried while the policy allows."""
    entry["attempts"] = max(entry["attempts"], job.attempt)
    entry["job"] = job.name
    entry["startTime"] = job.start or entry.get("startTime") or timestamp(now)
    if job.shards:
        entry["shards"] = job.shards
    if job.outcome == "Running":
        entry["state"] = "Running"
        if job.stuck:
            entry["message"] = f"cannot start: {job.stuck[1]}"
        else:
            entry.pop("message", None)  # an earlier attempt's "retrying" or a start problem now gone
        return None
    entry["finishTime"] = job.finish or timestamp(now)
    if job.outcome == "Succeeded":
        entry["state"] = "Succeeded"
        entry.pop("message", None)
        return None
    retries = config.resources_for(stage.kind, spec.kubernetes.stages.get(stage.kind)).retries
    message = (f"attempt {job.attempt} of {entry.get('retryBase', 0) + retries + 1}: {job.message}"
               + (f"; {job.exit}" if job.exit else ""))
    if not _attempts_left(entry, job.attempt, retries):
        entry["state"] = "Failed"
        entry["message"] = message
        return None
    entry["state"] = "Pending"
    entry["message"] = f"{message}; retrying"
    failed_at = parse_time(job.finish) or now
    return _Want(job.attempt + 1, "StageRetried", failed_at + dt.timedelta(seconds=config.backoff(job.attempt)))


def _status(observed: Observed, old: dict[str, Any], spec: ExperimentSpec, stages: list[Stage],
            entries: dict[str, dict[str, Any]], failed: list[str], now: str, gen: int | None,
            retried: str | None = None) -> dict[str, Any]:
    running = [n for n, e in entries.items() if e["state"] == "Running"]
    retrying = [n for n, e in entries.items() if e["state"] == "Pending" and e.get("message")]
    done = all(e["state"] in DONE for e in entries.values())
    if failed:
        phase = "Failed"
    elif done:
        phase = "Succeeded"
    elif running or retrying or any(e["state"] in DONE for e in entries.values()):
        phase = "Running"
    else:
        phase = "Pending"
    conds = old.get("conditions") or []
    if failed:
        progressing = (False, "StageFailed", f"stage {failed[0]} failed")
    elif done:
        progressing = (False, "Completed", "every stage is done")
    elif spec.suspend:
        progressing = (False, "Suspended", "spec.suspend is true: no new Job is made")
    elif running:
        progressing = (True, "StagesRunning", ", ".join(running))
    elif retrying:
        progressing = (True, "Retrying", ", ".join(retrying))
    else:
        progressing = (True, "Waiting", "waiting for stages to start")
    reachable = observed.manifests is not None
    conditions = [
        _condition(conds, "SpecValid", True, "Valid", "", gen, now),
        _condition(conds, "Progressing", *progressing, gen, now),
        _condition(conds, "Succeeded", done, "AllStagesDone" if done else "StageFailed" if failed else "InProgress",
                   "", gen, now),
        _condition(conds, "Failed", bool(failed), "StageFailed" if failed else "NoFailure",
                   f"stage {failed[0]}: {entries[failed[0]].get('message', '')}" if failed else "", gen, now),
        # either end, for `kubectl wait --for=condition=Finished` (kubectl cannot wait for one of two)
        _condition(conds, "Finished", bool(failed) or done, "Failed" if failed else "Succeeded" if done else
                   "InProgress", "", gen, now),
        _condition(conds, "StoreReachable", reachable, "Reachable" if reachable else "Unreachable",
                   "" if reachable else f"{spec.artifacts} cannot be read"
                   f"{': ' + observed.store_problem if observed.store_problem else ''}; Jobs are made anyway", gen, now),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": gen,
        "stages": entries,
        "conditions": conditions,
    }
    if retried:
        status["retried"] = retried
    current = running or retrying or failed
    if current:
        status["currentStage"] = ",".join(current)
    if observed.manifests is not None:
        base = spec.artifacts.rstrip("/")
        status["artifacts"] = {n: f"{base}/{m['prefix']}" for n, m in observed.manifests.items() if n in entries}
    elif old.get("artifacts"):
        status["artifacts"] = {n: u for n, u in old["artifacts"].items() if n in entries}
    report_done = entries.get("report", {}).get("state") in DONE
    if report_done and observed.results is not None:
        table, best, sft = _results(observed.results)
        status["results"] = table
        if best is not None:
            status["w2sgReward"] = best
        if sft is not None:
            status["sftStrongReward"] = sft
    elif report_done:
        for k in ("results", "w2sgReward", "sftStrongReward"):
            if k in old:
                status[k] = old[k]
    return status


def _phase_events(old: dict[str, Any], new: dict[str, Any], observed: Observed) -> list[Event]:
    events = []
    if new["phase"] != old.get("phase"):
        if new["phase"] == "Succeeded":
            extra = f"; W2SG {new['w2sgReward']}, sft-strong {new.get('sftStrongReward', '—')}" if "w2sgReward" in new else ""
            events.append(Event("Normal", "ExperimentSucceeded", f"every stage is done{extra}"))
        elif new["phase"] == "Failed":
            fail = next(c for c in new["conditions"] if c["type"] == "Failed")
            events.append(Event("Warning", "ExperimentFailed", fail["message"]))
    was = next((c.get("status") for c in old.get("conditions") or [] if c.get("type") == "StoreReachable"), "True")
    if observed.manifests is None and was != "False":
        msg = next(c["message"] for c in new["conditions"] if c["type"] == "StoreReachable")
        events.append(Event("Warning", "StoreUnreachable", msg))
    return events


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new``; ``{}`` when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_patch(old[key], value)
            if isinstance(value, dict) and isinstance(old[key], dict) and not sub:
                continue
            patch[key] = sub
    return patch


__all__ = ["Decision", "Event", "JobView", "Observed", "job_name", "merge_patch", "reconcile"]
