"""Reads an experiment's world, asks the reconciler, applies its decision; one experiment at a time.

Handlers feed the watch-fed ``Views`` and ``wake`` an experiment. Each experiment has one worker, so two
Job events never reconcile it concurrently; a wake during a reconcile runs it once more afterwards. A
pass reads the views, not the apiserver: it goes there to write, to list an experiment's Jobs and Pods
the first time and every ``relistSeconds``, and to read a status again after a 409 (someone wrote in
between). Errors are logged, counted and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tratree.pipeline.graph import plan
from tratree.pipeline.runner import done_manifests
from tratree.spec.experiment import SpecError
from tratree.store.artifacts import S3Store, Store, StoreError, open_store
from tratree_operator import metrics
from tratree_operator.config import OperatorConfig
from tratree_operator.decide import reconcile
from tratree_operator.kube import Conflict, Kube
from tratree_operator.observe import experiment_of
from tratree_operator.peering import Peering
from tratree_operator.status import merge_patch
from tratree_operator.types import Decision, Observed, parse_time
from tratree_operator.views import Views

log = logging.getLogger("tratree_operator")
Key = tuple[str, str]  # namespace, name


# how long a Secret read is kept: a found one a minute (a rotated key is picked up within it), a missing
# one seconds (the user is about to create it)
SECRET_SECONDS, MISSING_SECRET_SECONDS = 60.0, 5.0

# a Job without a single Pod this long after it was made: ask why (its Pods' creation may be refused)
PODLESS_SECONDS = 10.0
PODLESS_MAX_SECONDS = 160.0

# the variables of an experiment's S3 Secret that say where its store is and who reads it
S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


class StoreReader:
    """The store's view for the reconciler: done stages' manifests and the report's results.

    An s3:// store is read with the credentials of the experiment's own ``spec.kubernetes.s3Secret``
    (what its Jobs use), never the operator's: a team sees only stores its Secret opens. Manifests
    are content-addressed and never change once written, so found ones are kept, per credentials;
    S3 calls get short timeouts, so an unreachable store costs seconds, not minutes.
    """

    def __init__(self) -> None:
        self._manifests: dict[tuple[str, str], dict[str, Any]] = {}
        self._results: dict[tuple[str, str], dict[str, Any]] = {}
        self._clients: dict[str, Any] = {}

    def _store(self, uri: str, credentials: dict[str, str]) -> tuple[Store, str]:
        """The store and the identity its reads are cached under."""
        if not uri.startswith("s3://"):
            return open_store(uri), ""
        creds = {k: credentials[k] for k in S3_VARIABLES if credentials.get(k)}
        who = hashlib.sha256(json.dumps(creds, sort_keys=True).encode()).hexdigest()
        if who not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[who] = boto3.client(
                "s3", aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"), aws_session_token=creds.get("AWS_SESSION_TOKEN"),
                endpoint_url=creds.get("AWS_ENDPOINT_URL_S3") or creds.get("AWS_ENDPOINT_URL"),
                region_name=creds.get("AWS_REGION") or creds.get("AWS_DEFAULT_REGION") or "us-east-1",
                config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}))
        return S3Store(uri, client=self._clients[who]), who

    def read(self, body: dict[str, Any], credentials: dict[str, str] | None, missing: str | None = None
             ) -> tuple[dict[str, dict[str, Any]] | None, dict[str, Any] | None, str | None]:
        """(manifests by stage, results, None) of the experiment; (None, None, why) when the store is
        not read. ``credentials``: the data of the experiment's S3 Secret (None: ``missing`` says why)."""
        try:
            exp = experiment_of(body)
        except SpecError:
            return {}, None, None
        uri = exp.spec.artifacts
        if uri.startswith("s3://") and credentials is None:
            return None, None, missing or "no S3 Secret to read it with"
        try:
            store, who = self._store(uri, credentials or {})

            def cached(prefix: str) -> dict[str, Any] | None:
                url = (who, store.url(prefix))
                if url not in self._manifests:
                    manifest = store.read_manifest(prefix)
                    if manifest is None:
                        return None
                    self._manifests[url] = manifest
                return self._manifests[url]

            manifests = done_manifests(store, plan(exp.spec), read=cached)
            results = None
            report = manifests.get("report")
            if report is not None:
                url = (who, store.url(f"{report['prefix']}/results.json"))
                if url not in self._results:
                    data = store.read_verified(report["prefix"], report, "results.json")
                    self._results[url] = json.loads(data)
                results = self._results.get(url)
            return manifests, results, None
        except (StoreError, ValueError) as err:
            log.warning("store %s cannot be read: %s", uri, err)
            return None, None, str(err)


@dataclass
class _Slot:
    due: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    errors: int = 0


class Controller:
    """The operator's work queue and the read-decide-apply step."""

    def __init__(self, kube: Kube, config: OperatorConfig, concurrency: int = 8, peering: Peering | None = None) -> None:
        self.kube = kube
        self.config = config
        self.peering = peering  # None: the only replica
        self.store = StoreReader()
        self.phases = metrics.PhaseBook()
        self._failures_counted: set[tuple[Any, ...]] = set()
        self._noticed: dict[Key, tuple[Any, ...]] = {}
        self._configmaps: dict[Key, str] = {}  # the spec ConfigMap content last written, per experiment
        self._slots: dict[Key, _Slot] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self.views = Views()
        self._stale: set[Key] = set()  # a status write met a 409: read the experiment again
        self._secrets: dict[Key, tuple[dict[str, str] | None, float]] = {}
        # Job uid -> (FailedCreate message, when to ask again, the wait after that)
        self._refused: dict[str, tuple[str | None, float, float]] = {}

    def wake(self, namespace: str, name: str, delay: float = 0.0) -> None:
        """Reconcile the experiment after ``delay`` seconds (sooner if already due sooner)."""
        key = (namespace, name)
        slot = self._slots.setdefault(key, _Slot())
        due = time.monotonic() + delay
        if slot.due is None or due < slot.due:
            slot.due = due
            slot.changed.set()
        if slot.task is None or slot.task.done():
            slot.task = asyncio.create_task(self._worker(key, slot), name=f"reconcile {namespace}/{name}")

    def notice(self, namespace: str, name: str, generation: int | None, annotations: dict[str, str]) -> None:
        """An event of the experiment: wake its queue when what a person set changed (a new spec
        generation, an annotation such as a retry), or when it was not known yet."""
        seen = (generation, tuple(sorted(annotations.items())))
        if self._noticed.get((namespace, name)) != seen:
            self._noticed[(namespace, name)] = seen
            self.wake(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """The experiment is gone: stop its worker and drop it from the metrics."""
        self._noticed.pop((namespace, name), None)
        self._configmaps.pop((namespace, name), None)
        self._stale.discard((namespace, name))
        self.views.forget((namespace, name))
        slot = self._slots.pop((namespace, name), None)
        if slot is not None and slot.task is not None and slot.task is not asyncio.current_task():
            slot.task.cancel()
        self.phases.set((namespace, name), None)

    async def stop(self) -> None:
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self, key: Key, slot: _Slot) -> None:
        while slot.due is not None:
            wait = slot.due - time.monotonic()
            if wait > 0:
                slot.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(slot.changed.wait(), wait)
                continue
            slot.due = None
            async with self._limit:
                requeue = await self._reconcile_safely(key, slot)
            if requeue is not None and self._slots.get(key) is slot:
                due = time.monotonic() + requeue
                if slot.due is None or due < slot.due:
                    slot.due = due

    async def _reconcile_safely(self, key: Key, slot: _Slot) -> float | None:
        started = time.monotonic()
        try:
            requeue = await self.reconcile_once(*key)
            slot.errors = 0
            return requeue
        except Conflict:
            self._stale.add(key)
            return 0.05
        except asyncio.CancelledError:
            raise
        except Exception:
            slot.errors += 1
            metrics.RECONCILE_ERRORS.inc()
            delay = min(60.0, 0.5 * 2 ** slot.errors)
            log.exception("reconciling %s/%s failed; again in %.1fs", *key, delay)
            return delay
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    async def reconcile_once(self, namespace: str, name: str) -> float | None:
        """Read the experiment, its Jobs and the store; apply what ``reconcile`` decides.

        A replica paused by its peers (see ``peering``) writes nothing and looks again later."""
        if self.peering is not None and not await self.peering.active(namespace):
            return min(self.config.resync_seconds, 5.0)
        key = (namespace, name)
        if key in self._stale or not self.views.holds_experiment(key) or \
                self.views.needs_listing(key, self.config.relist_seconds):
            await self._resync(key)
        body = self.views.experiment(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        credentials, missing = await self._store_credentials(body)
        manifests, results, problem = await asyncio.to_thread(self.store.read, body, credentials, missing)
        jobs = self.views.children("jobs", key)
        held = [j["metadata"]["uid"] for j in jobs if (j.get("spec") or {}).get("suspend") and j["metadata"].get("uid")]
        workloads = await self.kube.list_workloads(namespace, held) if held and self.config.kueue else []
        pods = self.views.children("pods", key)
        observed = Observed(body, jobs, pods, manifests, results, store_problem=problem,
                            nodes=list(self.views.nodes.values()), workloads=workloads,
                            refusals=await self._refusals(namespace, jobs, pods))
        decision = reconcile(observed, self.config)
        await self.apply(body, decision)
        return decision.requeue_after

    async def _refusals(self, namespace: str, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[str, str]:
        """Why the Job controller could not create the Pods of a Job it started ``PODLESS_SECONDS`` ago and
        that has none, active or ended (its FailedCreate Event): rare, so read only then, first after
        ``PODLESS_SECONDS`` and then ever less often (the wait doubles, to at most ``PODLESS_MAX_SECONDS``),
        since a Job controller that is merely slow on a busy cluster says nothing and a refusal is said
        once and kept."""
        owners = {o.get("uid") for p in pods for o in p["metadata"].get("ownerReferences") or []}
        now, wall = time.monotonic(), time.time()
        self._refused = {uid: v for uid, v in self._refused.items() if v[1] > now - 600}  # Jobs long gone
        found = {}
        for job in jobs:
            meta, status = job["metadata"], job.get("status") or {}
            started = parse_time(status.get("startTime"))  # the Job controller has synced it (not suspended)
            if meta.get("uid") in owners or status.get("conditions") or started is None or \
                    any(status.get(k) for k in ("active", "succeeded", "failed", "terminating")) or \
                    wall - started.timestamp() < PODLESS_SECONDS:
                continue
            said, until, wait = self._refused.get(meta["uid"], (None, 0.0, PODLESS_SECONDS))
            if until <= now:
                said = await self.kube.pod_creation_refused(namespace, meta["uid"])
                self._refused[meta["uid"]] = (said, now + wait, min(2 * wait, PODLESS_MAX_SECONDS))
            if said:
                found[meta["uid"]] = said
        return found

    async def _resync(self, key: Key) -> None:
        """Read the experiment, its Jobs and its Pods from the apiserver into the views."""
        body = await self.kube.get_experiment(*key)
        if body is None:
            self.views.forget(key)
            return
        self._stale.discard(key)
        self.views.put("experiments", body)
        for kind, lister in (("jobs", self.kube.list_jobs), ("pods", self.kube.list_pods)):
            items, version = await lister(*key)
            self.views.listed(kind, key, items, version)

    async def _store_credentials(self, body: dict[str, Any]) -> tuple[dict[str, str] | None, str | None]:
        """The data of the S3 Secret the experiment's Jobs use (its ``spec.kubernetes.s3Secret``, else the
        operator's default name), from the experiment's own namespace; else None and why."""
        ns = body["metadata"]["namespace"]
        name = ((body.get("spec") or {}).get("kubernetes") or {}).get("s3Secret") or self.config.s3_secret
        if not name:
            return None, "no S3 Secret to read it with (spec.kubernetes.s3Secret; the operator never uses its own)"
        data, until = self._secrets.get((ns, name), (None, 0.0))
        if until <= time.monotonic():
            data = await self.kube.read_secret(ns, name)
            keep = SECRET_SECONDS if data is not None else MISSING_SECRET_SECONDS
            self._secrets[(ns, name)] = (data, time.monotonic() + keep)
        if data is None:
            return None, f"its Secret {ns}/{name} does not exist (the operator never uses its own credentials)"
        return data, None

    async def apply(self, body: dict[str, Any], decision: Decision) -> None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for manifest in decision.create:
            if manifest["kind"] == "ConfigMap":
                # the spec ConfigMap comes with every new Job; write it only when its content or its
                # owner (a new experiment under the same name) changed
                written = hashlib.sha256(json.dumps([manifest["data"], meta.get("uid")], sort_keys=True).encode()
                                         ).hexdigest()
                if self._configmaps.get((ns, name)) != written:
                    await self.kube.apply_configmap(manifest)
                    self._configmaps[(ns, name)] = written
            elif (job := await self.kube.create(manifest)) is not None:
                # in the view at once: the next pass must not find the stage without its Job
                self.views.put("jobs", job)
                metrics.JOBS_CREATED.inc()
                log.info("%s/%s: created Job %s", ns, name, manifest["metadata"]["name"])
        for job in decision.delete:
            await self.kube.delete_job(ns, job)
            log.info("%s/%s: deleted Job %s (no longer in the plan)", ns, name, job)
        old = body.get("status") or {}
        patch = merge_patch(old, decision.status)
        if patch:
            self.views.put("experiments", await self.kube.patch_status(ns, name, meta["resourceVersion"], patch))
        self.phases.set((ns, name), decision.status.get("phase"))
        self._observe(old, decision.status)
        for event in decision.events:
            if event.reason in ("StageAttemptFailed", "StageFailed"):
                self._count_failure(ns, name, event.stage, decision.status)
            await self.kube.post_event(body, event)

    def _count_failure(self, ns: str, name: str, stage: str | None, status: dict[str, Any]) -> None:
        """Count a failed Job attempt once, however often its Event is told again (a pass whose status
        write was lost tells the same story again)."""
        entry = (status.get("stages") or {}).get(stage or "") or {}
        mark = (ns, name, stage, entry.get("key"), entry.get("attempts"))
        if mark not in self._failures_counted:
            self._failures_counted.add(mark)
            metrics.JOB_FAILURES.labels(stage).inc()

    @staticmethod
    def _observe(old: dict[str, Any], new: dict[str, Any]) -> None:
        before = old.get("stages") or {}
        for stage, entry in (new.get("stages") or {}).items():
            prev = before.get(stage) or {}
            same = prev.get("key") == entry.get("key")
            if entry["state"] == "Succeeded" and not (same and prev.get("state") == "Succeeded"):
                start, end = parse_time(entry.get("startTime")), parse_time(entry.get("finishTime"))
                if start and end:
                    metrics.STAGE_SECONDS.labels(stage).observe(max(0.0, (end - start).total_seconds()))

