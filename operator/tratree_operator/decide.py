"""Decide: every decision the operator makes, as one pure function.

``reconcile(observed, config)`` takes what the cluster and the store say now (the experiment
with its spec and status, the Jobs labelled with its name, the manifests of the stages that
are done, the report's results) and returns what to do: Jobs to create and delete, the new
status, Events, and when to look again. It does no I/O, so every case is a unit test, and a
restarted operator decides from the same inputs what the old one would have. It goes in four
steps: validate the spec, settle each stage from its Jobs and the store, act on a user's retry,
schedule the Jobs whose inputs are done.

Each stage has a plan key (``tratree.pipeline.graph.fingerprints``): a digest of its spec slice, its
inputs' keys and the code version. Jobs carry it, so a spec edit that changes a stage's key
re-runs that stage and everything after it, and leaves the rest standing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from tratree.pipeline.graph import Stage, fingerprints, plan
from tratree.spec.experiment import Experiment, ExperimentSpec, SpecError
from tratree.spec.status import DONE, ExperimentStatus, StageStatus
from tratree_operator import status as render
from tratree_operator.capacity import no_node_fits
from tratree_operator.config import OperatorConfig
from tratree_operator.jobs import configmap_manifest, job_manifest
from tratree_operator.observe import FAILED_CREATE, UNSCHEDULABLE, JobView, experiment_of, owned
from tratree_operator.types import Decision, Event, Observed, parse_time, timestamp

RETRY_ANNOTATION = "tratree.io/retry"


@dataclass
class _Want:
    """A Job the stage needs, once its inputs are done and nothing blocks it."""

    attempt: int
    reason: str  # StageStarted, StageRetried or JobRecreated (only the last two are Events)
    due: dt.datetime | None = None


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


def _validate(observed: Observed, old: ExperimentStatus, config: OperatorConfig) -> Experiment | Decision:
    """The experiment, or the decision for a spec no Job is made for (invalid, refused by policy, unshared store)."""
    meta = observed.body["metadata"]
    try:
        exp = experiment_of(observed.body)
    except SpecError as err:
        return _invalid(observed, old, str(err), "InvalidSpec")
    refused = config.violations(exp.spec, meta.get("namespace", ""))
    if refused:
        return _invalid(observed, old, "; ".join(refused), "PolicyViolation")
    unshared = _unshared_store(exp.spec)
    if unshared:
        return _invalid(observed, old, unshared, "StoreNotShared")
    return exp


def _invalid(observed: Observed, old: ExperimentStatus, message: str, reason: str) -> Decision:
    gen = observed.body["metadata"].get("generation")
    status, said = render.invalid(old, message, reason, gen, timestamp(observed.now))
    return Decision(status.dump(), events=[] if said else [Event("Warning", reason, message)])


def _attempts_left(entry: StageStatus, attempt: int, retries: int) -> bool:
    """Whether ``attempt`` (the one that just failed) leaves a retry since the last user retry."""
    return attempt - (entry.retry_base or 0) <= retries


def _retries(stage: Stage, spec: ExperimentSpec, config: OperatorConfig) -> int:
    return config.resources_for(stage.kind, spec.kubernetes.stages.get(stage.kind)).retries


def reconcile(observed: Observed, config: OperatorConfig) -> Decision:
    """What to do about one experiment, given what is observed now."""
    meta = observed.body["metadata"]
    old = ExperimentStatus.model_validate(observed.body.get("status") or {})
    exp = _validate(observed, old, config)
    if isinstance(exp, Decision):
        return exp
    spec = exp.spec
    stages = plan(spec)
    keys = plan_keys(spec, stages)
    decision = Decision(status={})
    entries, wants = _settle_stages(observed, old, spec, stages, keys, config, decision)
    token = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
    if token and token != old.retried:
        decision.events += _user_retry(entries, wants, token)
    failed = [n for n, e in entries.items() if e.state == "Failed"]
    started, waits = _schedule(observed, spec, stages, keys, entries, wants, bool(failed) or spec.suspend, config,
                               decision)
    failed = [n for n, e in entries.items() if e.state == "Failed"]  # a request no node can meet fails it here
    decision.events += _transitions(old.stages, entries, started)

    new = render.render(observed, old, spec, entries, failed, timestamp(observed.now), meta.get("generation"),
                        token or old.retried)
    decision.events += render.phase_events(old, new, observed)
    decision.status = new.dump()
    if waits:
        decision.requeue_after = min(waits)
    elif new.phase in ("Pending", "Running") and not spec.suspend:
        decision.requeue_after = config.resync_seconds
    return decision


def _settle_stages(observed: Observed, old: ExperimentStatus, spec: ExperimentSpec, stages: list[Stage],
                   keys: dict[str, str], config: OperatorConfig,
                   decision: Decision) -> tuple[dict[str, StageStatus], dict[str, _Want]]:
    """Every stage's entry brought up to its Jobs and the store; the Jobs stages need next. Jobs of an old
    plan key, or of a stage no longer in the graph, go on ``decision.delete``."""
    now_t = observed.now
    by_name = {s.name: s for s in stages}
    jobs_of: dict[str, list[JobView]] = defaultdict(list)
    for job in owned(observed.jobs, observed.body["metadata"].get("uid")):
        view = JobView.of(job, observed.pods, config.gpu_resource, observed.workloads, observed.refusals)
        jobs_of[view.stage].append(view)
    entries: dict[str, StageStatus] = {}
    wants: dict[str, _Want] = {}
    for stage in stages:
        key = keys[stage.name]
        prev = old.stages.get(stage.name)
        entry = prev.model_copy(deep=True) if prev is not None and prev.key == key else StageStatus(key=key)
        if prev is not None and prev.key != key and prev.state != "Pending":
            decision.events.append(Event("Normal", "StageReplanned", f"stage {stage.name}: the spec changed; it runs again",
                                         stage.name))
        mine = [j for j in jobs_of.get(stage.name, []) if j.key == key]
        decision.delete += [j.name for j in jobs_of.get(stage.name, [])
                            if j.key != key and j.outcome == "Running" and not j.deleting]
        current = max(mine, key=lambda j: j.attempt) if mine else None
        if current is not None and current.outcome == "Running" and current.stuck and not current.deleting:
            current = _stuck(current, observed, config, decision)
        want = _settle(entry, current, (observed.manifests or {}).get(stage.name), _retries(stage, spec, config),
                       config, now_t)
        if want is not None:
            wants[stage.name] = want
        entries[stage.name] = entry
    for stage_name, views in jobs_of.items():
        if stage_name not in by_name:
            decision.delete += [j.name for j in views if j.outcome == "Running" and not j.deleting]
    return entries, wants


def _stuck(job: JobView, observed: Observed, config: OperatorConfig, decision: Decision) -> JobView:
    """A Job whose Pod cannot start: still Running while it waits for resources some node has (a busy
    cluster is no error) or for less than the start timeout (an image pull, a missing Secret); failed when
    no node today could ever hold it, or when it has waited past the timeout that applies."""
    since, why = job.stuck  # type: ignore[misc]
    waited = (observed.now - (parse_time(since) or observed.now)).total_seconds()
    failed = None
    if why.startswith(FAILED_CREATE) and "violates PodSecurity" in why:
        # the namespace's Pod Security level refuses the Pod as the operator makes it: no retry can pass
        decision.delete.append(job.name)
        return replace(job, outcome="Failed", finish=timestamp(observed.now), hopeless=True,
                       message=f"cannot run: the namespace refuses its Pods: {why.removeprefix(FAILED_CREATE)}")
    if why.startswith(UNSCHEDULABLE):
        never = no_node_fits(job.pod_spec, observed.nodes) if config.fail_unfit_requests else None
        if never:
            decision.delete.append(job.name)
            return replace(job, outcome="Failed", finish=timestamp(observed.now), message=f"cannot run: {never}",
                           hopeless=True)
        if config.queue_timeout_seconds is not None and waited >= config.queue_timeout_seconds:
            failed = f"waited {config.queue_timeout_seconds:g}s for resources (stages.queueTimeoutSeconds): {why}"
    elif waited >= config.start_timeout_seconds:
        failed = f"could not start within {config.start_timeout_seconds:g}s: {why}"
    if failed is None:
        return job
    # a Pod that cannot start is a failed attempt, not "Running" for ever
    decision.delete.append(job.name)
    return replace(job, outcome="Failed", finish=timestamp(observed.now), message=failed)


def _user_retry(entries: dict[str, StageStatus], wants: dict[str, _Want], token: str) -> list[Event]:
    """A user's retry (a new ``tratree.io/retry`` annotation): every Failed stage gets its retries
    again, its attempts counting on from where they stopped; what follows it runs after it."""
    events = []
    for name, entry in entries.items():
        if entry.state != "Failed":
            continue
        entry.state, entry.retry_base, entry.finish_time, entry.final = "Pending", entry.attempts, None, None
        entry.message = f"retried ({RETRY_ANNOTATION}={token}) after: {entry.message or ''}"
        events.append(Event("Normal", "StageRetriedByUser", f"stage {name}: retried ({RETRY_ANNOTATION}={token})",
                            name))
        if name not in wants:
            wants[name] = _Want(entry.attempts + 1, "StageRetried")
    return events


def _schedule(observed: Observed, spec: ExperimentSpec, stages: list[Stage], keys: dict[str, str],
              entries: dict[str, StageStatus], wants: dict[str, _Want], blocked: bool, config: OperatorConfig,
              decision: Decision) -> tuple[dict[str, Event], list[float]]:
    """A Job for every wanted stage whose inputs are done, unless a failure or spec.suspend blocks new Jobs;
    the Events of the starts, and how long until a backed-off retry is due."""
    meta = observed.body["metadata"]
    now = timestamp(observed.now)
    by_name = {s.name: s for s in stages}
    started: dict[str, Event] = {}
    waits: list[float] = []
    for name, want in wants.items():
        stage = by_name[name]
        if blocked or not all(entries[i].state in DONE for i in stage.inputs):
            continue
        if want.due is not None and want.due > observed.now:
            waits.append((want.due - observed.now).total_seconds())
            continue
        found = observed.manifests or {}
        # the exact outputs its inputs left in the store, when the operator could read them: the Job
        # reads those, whichever code version made them
        inputs = {n: found[n]["prefix"] for n in stage.inputs} if all(n in found for n in stage.inputs) else None
        job = job_manifest(meta, spec, stage, keys[name], want.attempt, config, inputs)
        entry = entries[name]
        never = no_node_fits(job["spec"]["template"]["spec"], observed.nodes) if config.fail_unfit_requests else None
        if never:
            # no Job: its Pod could only wait for ever
            entry.state, entry.message, entry.finish_time, entry.final = "Failed", f"cannot run: {never}", now, True
            continue
        decision.create.append(job)
        entry.state, entry.job, entry.start_time, entry.attempts = "Running", job["metadata"]["name"], now, want.attempt
        entry.finish_time = None
        if want.reason == "StageStarted":
            # no Event for a first start: the stage's status names its Job and the Job controller's own
            # SuccessfulCreate Event says it; a 24-stage experiment writes 24 fewer Events
            entry.message = None
            continue
        if want.reason == "StageRetried":
            text = f"stage {name}: attempt {want.attempt} started: Job {entry.job} ({entry.message or ''})"
        else:
            text = f"stage {name}: its Job vanished before it finished; attempt {want.attempt}: {entry.job}"
        started[name] = Event("Warning" if want.reason == "JobRecreated" else "Normal", want.reason, text, name)
    if decision.create:
        decision.create.insert(0, configmap_manifest(meta, spec))
    return started, waits


def _transitions(old_stages: dict[str, StageStatus], entries: dict[str, StageStatus],
                 started: dict[str, Event]) -> list[Event]:
    """Events for what changed since the status the cluster holds.

    They come from comparing statuses, not from what this pass did: when a status write is
    lost (a 409, a crash) the next pass, seeing the old status again, tells the same story.
    """
    events = []
    for name, entry in entries.items():
        prev = old_stages.get(name)
        before, before_job = (prev.state, prev.job) if prev is not None and prev.key == entry.key else (None, None)
        state, job = entry.state, entry.job
        message = entry.message or ""
        if message.endswith("retrying") and message != (prev.message if prev is not None else None):
            events.append(Event("Warning", "StageAttemptFailed", f"stage {name}: {message}", name))
        if name in started:
            events.append(started[name])
        elif job and entry.attempts > 1 and state in ("Running", "Succeeded", "Failed") and before not in DONE \
                and (before, before_job) != ("Running", job) and not (before == "Failed" and before_job == job):
            # a later attempt's Job this status has not seen yet: made by a pass whose status write was lost
            events.append(Event("Normal", "StageRetried", f"stage {name}: attempt {entry.attempts} started: Job {job}",
                                name))
        if state == before or state in ("Running", "Pending"):
            continue
        if state == "Failed":
            events.append(Event("Warning", "StageFailed", f"stage {name} failed: {message}", name))
        else:
            events.append(Event("Normal", f"Stage{state}", f"stage {name}: {state.lower()}", name))
    return events


def _settle(entry: StageStatus, job: JobView | None, manifest: dict[str, Any] | None, retries: int,
            config: OperatorConfig, now: dt.datetime) -> _Want | None:
    """Bring the stage's entry up to what is observed; the Job it needs next, if any.

    A finished stage stays finished. Otherwise its newest Job decides; without one, the store
    (Cached, or Succeeded if its Job is gone); a Failed verdict stands when its Job is gone
    (ttlSecondsAfterFinished); a Running stage whose Job vanished gets it again; the rest wait.
    """
    state = entry.state
    if state in DONE:
        return None
    if job is not None:
        return _from_job(entry, job, retries, config, now)
    if manifest is not None:
        entry.state = "Succeeded" if state == "Running" else "Cached"
        entry.finish_time = entry.finish_time or timestamp(now)
        return None
    if state == "Failed":
        # its Job is gone (or collected by its TTL): raising `retries` still gives it another attempt,
        # unless no attempt could help
        if not entry.final and _attempts_left(entry, entry.attempts, retries):
            entry.state, entry.message = "Pending", f"{entry.message or ''}; retrying"
            return _Want(entry.attempts + 1, "StageRetried")
        return None
    if state == "Running" and entry.job:
        # Its Job is gone and the store has no output: someone deleted it, or it failed and
        # ttlSecondsAfterFinished removed it before it was read. The two look alike, so the
        # attempt counts as failed: a short TTL can never replay an attempt for ever.
        attempt = max(1, entry.attempts)
        message = (f"attempt {attempt} of {(entry.retry_base or 0) + retries + 1}: its Job {entry.job} "
                   "vanished before it finished")
        if not _attempts_left(entry, attempt, retries):
            entry.state, entry.message, entry.finish_time = "Failed", message, timestamp(now)
            return None
        entry.state, entry.message = "Pending", f"{message}; retrying"
        return _Want(attempt + 1, "JobRecreated")
    return _Want(entry.attempts + 1, "StageRetried" if entry.attempts else "StageStarted")


def _from_job(entry: StageStatus, job: JobView, retries: int, config: OperatorConfig,
              now: dt.datetime) -> _Want | None:
    """The stage's state from its newest Job; a failed one is retried while the policy allows."""
    entry.attempts = max(entry.attempts, job.attempt)
    entry.job = job.name
    entry.start_time = job.start or entry.start_time or timestamp(now)
    if job.gpu_seconds:
        # per Job, the most ever seen: its Pods may be gone (TTL, a retry) by the next pass
        by_job = dict(entry.gpu_seconds_by_job or {})
        by_job[job.name] = max(by_job.get(job.name, 0.0), round(job.gpu_seconds, 1))
        entry.gpu_seconds_by_job, entry.gpu_seconds = by_job, round(sum(by_job.values()), 1)
    if job.shards:
        entry.shards = job.shards
    if job.outcome == "Running":
        entry.state = "Running"
        # a start problem, or nothing: an earlier attempt's "retrying" or a start problem now gone is cleared
        entry.message = None
        if job.queued is not None:
            # a queue holds it: not started, not failing; the queue's own word on why
            entry.message = f"queued: {job.queued}"
        elif job.stuck and job.stuck[1].startswith(UNSCHEDULABLE):
            entry.message = f"waiting for resources since {job.stuck[0]}: {job.stuck[1].removeprefix(UNSCHEDULABLE)}"
        elif job.stuck:
            entry.message = f"cannot start: {job.stuck[1]}"
        return None
    entry.finish_time = job.finish or timestamp(now)
    if job.outcome == "Succeeded":
        entry.state, entry.message = "Succeeded", None
        return None
    message = (f"attempt {job.attempt} of {(entry.retry_base or 0) + retries + 1}: {job.message}"
               + (f"; {job.exit}" if job.exit else ""))
    if job.hopeless or not _attempts_left(entry, job.attempt, retries):
        entry.state, entry.message, entry.final = "Failed", message, job.hopeless or None
        return None
    entry.state, entry.message = "Pending", f"{message}; retrying"
    failed_at = parse_time(job.finish) or now
    return _Want(job.attempt + 1, "StageRetried", failed_at + dt.timedelta(seconds=config.backoff(job.attempt)))
