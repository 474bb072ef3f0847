"""Observe: the Jobs and Pods of an experiment, decoded into the views its decisions read.

A Job's outcome comes from its conditions, its attempt from its label, its plan key from its annotation;
its newest Pod says whether it cannot start (unschedulable, an image that will not pull) and, when its
container failed, the exit code and the last lines of its termination message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tratree.spec.experiment import API_VERSION, KIND, Experiment, parse_experiment
from tratree_operator.capacity import pod_requests
from tratree_operator.types import ANNOTATION_KEY, LABEL_ATTEMPT, LABEL_STAGE, parse_time


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
    pod_spec: dict[str, Any] = field(default_factory=dict, compare=False)  # its Pods' template
    hopeless: bool = False  # failed for a reason no retry can help

    gpu_seconds: float = 0.0  # what its Pods that ended used: run time × GPUs requested
    queued: str | None = None  # why it is suspended (a queue such as Kueue holds it); None: not suspended

    @classmethod
    def of(cls, job: dict[str, Any], pods: list[dict[str, Any]] = (),  # type: ignore[assignment]
           gpu_resource: str = "nvidia.com/gpu", workloads: list[dict[str, Any]] = (),  # type: ignore[assignment]
           refusals: dict[str, str] | None = None) -> JobView:
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
        stuck, exit_text = pod_trouble(newest) if newest else (None, "")
        refused = (refusals or {}).get(meta.get("uid") or "")
        if newest is None and refused:
            # no Pod at all: the Job controller's Pod creations are refused (admission, a quota)
            stuck = (meta.get("creationTimestamp") or "", f"{FAILED_CREATE}{refused}")
        spec = job.get("spec") or {}
        shards = (f"{status.get('succeeded') or 0}/{spec.get('completions')}"
                  if spec.get("completionMode") == "Indexed" else "")
        return cls(meta["name"], labels.get(LABEL_STAGE, ""), (meta.get("annotations") or {}).get(ANNOTATION_KEY, ""),
                   attempt, outcome, status.get("startTime"), finish, message, bool(meta.get("deletionTimestamp")),
                   stuck, exit_text, shards, (spec.get("template") or {}).get("spec") or {},
                   gpu_seconds=sum(pod_gpu_seconds(p, gpu_resource) for p in mine),
                   queued=queue_reason(meta.get("uid"), workloads) if spec.get("suspend") else None)


UNSCHEDULABLE = "Unschedulable: "  # how a stuck Pod's reason starts when the scheduler found no room for it
FAILED_CREATE = "FailedCreate: "  # and when the Job controller could not even create it

# Waiting reasons of a container that will not start by itself
CANNOT_START = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError", "RunContainerError")


def pod_trouble(pod: dict[str, Any]) -> tuple[tuple[str, str] | None, str]:
    """(since, why) when the Pod cannot start; and its container's exit code and termination message."""
    status = pod.get("status") or {}
    since = pod["metadata"].get("creationTimestamp") or ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return (cond.get("lastTransitionTime") or since, f"{UNSCHEDULABLE}{cond.get('message', '')}"), ""
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting, done = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason") in CANNOT_START:
            return (since, f"{waiting['reason']}: {waiting.get('message', '')}"), ""
        if done and done.get("exitCode"):
            tail = (done.get("message") or "").strip().splitlines()[-3:]
            return None, f"exit code {done['exitCode']}" + (f": {' | '.join(tail)[-400:]}" if tail else "")
    return None, ""


def pod_gpu_seconds(pod: dict[str, Any], gpu_resource: str) -> float:
    """GPU-seconds a Pod used once its container ended (its run, start to finish, × the GPUs it requested);
    0 while it runs or when it never started."""
    gpus = pod_requests(pod.get("spec") or {}).get(gpu_resource)
    if not gpus:
        return 0.0
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        done = (cs.get("state") or {}).get("terminated") or {}
        start, end = parse_time(done.get("startedAt")), parse_time(done.get("finishedAt"))
        if start and end:
            return max(0.0, (end - start).total_seconds()) * float(gpus)
    return 0.0


def queue_reason(job_uid: str | None, workloads: list[dict[str, Any]]) -> str:
    """Why a suspended Job waits, in Kueue's words from the Workload that stands for it: evicted (preempted
    by a higher-priority workload, say) and requeued, or not admitted yet and why."""
    for wl in workloads:
        if not any(o.get("uid") == job_uid for o in wl.get("metadata", {}).get("ownerReferences") or []):
            continue
        conditions = {c.get("type"): c for c in (wl.get("status") or {}).get("conditions") or []}
        evicted, reserved = conditions.get("Evicted") or {}, conditions.get("QuotaReserved") or {}
        if evicted.get("status") == "True" and reserved.get("status") != "True":
            return f"evicted and requeued by Kueue: {evicted.get('message') or evicted.get('reason')}"
        if reserved.get("status") == "False":
            return f"{reserved.get('message') or reserved.get('reason') or 'waiting for quota'}"
        if reserved.get("status") == "True":
            return "admitted by Kueue; starting"
        return "Kueue has not considered it yet"
    return "its Job is suspended (a queue such as Kueue holds it)"


def experiment_of(body: dict[str, Any]) -> Experiment:
    """The experiment a W2SGExperiment object describes; SpecError naming the field when invalid."""
    meta = body["metadata"]
    return parse_experiment({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": meta["name"]},
                             "spec": body.get("spec")}, source=f"{KIND} {meta.get('namespace')}/{meta['name']}")


def owned(jobs: list[dict[str, Any]], uid: str | None) -> list[dict[str, Any]]:
    """The Jobs this very experiment owns. A Job of a deleted experiment of the same name (the garbage
    collector has not removed it yet) carries the label but another owner's uid: never adopted."""
    return [j for j in jobs if any(o.get("uid") == uid and o.get("controller")
                                   for o in j.get("metadata", {}).get("ownerReferences") or [])]
