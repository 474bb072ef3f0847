"""What the operator's rooms hand each other: what was observed about one experiment, what was decided
about it, and the Events it tells. Pure data; every other module of the operator may import it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# the names the operator's objects carry: Jobs and ConfigMaps are found by these labels, a Job's plan key is its annotation
GROUP = "tratree.io"
LABEL_EXPERIMENT = f"{GROUP}/experiment"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_ATTEMPT = f"{GROUP}/attempt"
ANNOTATION_KEY = f"{GROUP}/plan-key"


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
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the cluster's Nodes (none known: no fit is judged)
    workloads: list[dict[str, Any]] = field(default_factory=list)  # Kueue's Workloads for its suspended Jobs
    refusals: dict[str, str] = field(default_factory=dict)  # Job uid -> why its Pods could not be created


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the experiment (what `kubectl describe` lists)."""

    type: str  # Normal or Warning
    reason: str
    message: str
    stage: str | None = None


@dataclass
class Decision:
    """What to do: the status to write (as the resource holds it), Jobs to make and delete, Events, when to look again."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)  # the ConfigMap first, then Jobs
    delete: list[str] = field(default_factory=list)  # Job names
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def timestamp(t: dt.datetime) -> str:
    """A time as Kubernetes writes it (RFC 3339, UTC, whole seconds)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """The time a Kubernetes timestamp names; None for none."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
