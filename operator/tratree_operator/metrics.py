"""Prometheus metrics: experiments by phase, stage durations, Job failures, reconcile errors."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Running", "Succeeded", "Failed")

EXPERIMENTS = Gauge("tratree_experiments", "W2SGExperiments this operator watches, by phase", ["phase"])
STAGE_SECONDS = Histogram(
    "tratree_stage_duration_seconds", "Wall time of a stage's successful Job, start to finish", ["stage"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400),
)
JOB_FAILURES = Counter("tratree_job_failures_total", "Stage Jobs that failed", ["stage"])
JOBS_CREATED = Counter("tratree_jobs_created_total", "Stage Jobs the operator created")
RECONCILE_ERRORS = Counter("tratree_reconcile_errors_total", "Reconciles that raised (retried with backoff)")
RECONCILE_SECONDS = Histogram("tratree_reconcile_seconds", "Time to read, decide and apply one reconcile")


class PhaseBook:
    """Which phase each experiment is in, mirrored into the experiments-by-phase gauge."""

    def __init__(self) -> None:
        self._phase: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            EXPERIMENTS.labels(phase).set(0)

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        if phase is None:
            self._phase.pop(key, None)
        else:
            self._phase[key] = phase
        for p in PHASES:
            EXPERIMENTS.labels(p).set(sum(1 for v in self._phase.values() if v == p))


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: not at all)."""
    if port:
        start_http_server(port)
