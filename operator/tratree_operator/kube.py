"""The Kubernetes API calls the operator makes, with transient errors retried.

The official ``kubernetes`` client runs in worker threads; responses are read as plain JSON
(``_preload_content=False``), the same dicts the reconciler sees in tests. Every verb used
here is listed in the Helm chart's RBAC rules, and nothing else is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from tratree.spec.crd import PLURAL, VERSION
from tratree.spec.experiment import API_GROUP, API_VERSION, KIND
from tratree_operator.types import LABEL_EXPERIMENT, Event

log = logging.getLogger("tratree_operator")
TRANSIENT = {429, 500, 502, 503, 504}


class Conflict(RuntimeError):
    """The object changed since it was read (HTTP 409): read again and decide again."""


def load_client_config() -> None:
    """In-cluster credentials in a Pod, the kubeconfig elsewhere."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    """What the controller reads and writes, as coroutines."""

    def __init__(self, api_client: client.ApiClient | None = None, attempts: int = 5) -> None:
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.attempts = attempts

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        delay = 0.5
        for attempt in range(self.attempts):
            try:
                resp = await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)
                data = resp.data
                return json.loads(data) if data else {}
            except ApiException as err:
                if err.status not in TRANSIENT or attempt == self.attempts - 1:
                    raise
                log.warning("API %s answered %s; retrying in %.1fs", fn.__name__, err.status, delay)
            except HTTPError as err:
                if attempt == self.attempts - 1:
                    raise
                log.warning("API %s unreachable (%s); retrying in %.1fs", fn.__name__, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    async def peering_object(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """kopf's peering object NAME (cluster-wide, or in NAMESPACE), found by a list (the RBAC has no get)."""
        selector = f"metadata.name={name}"
        if namespace is None:
            found = await self._call(self.custom.list_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings",
                                     field_selector=selector)
        else:
            found = await self._call(self.custom.list_namespaced_custom_object, "kopf.dev", "v1", namespace,
                                     "kopfpeerings", field_selector=selector)
        items = found.get("items") or []
        return items[0] if items else None

    async def missing_peering(self, name: str, namespaces: list[str]) -> list[str]:
        """Where kopf's peering object NAME does not exist: ["cluster"], or the namespaces that lack it
        (a namespace given as a glob pattern is not checked)."""
        if not namespaces:
            return [] if await self.peering_object(name, None) else ["cluster"]
        patterns = [ns for ns in namespaces if not any(c in ns for c in "*?![]")]
        return [ns for ns in patterns if await self.peering_object(name, ns) is None]

    async def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(self.custom.get_namespaced_custom_object, API_GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data; None when it does not exist."""
        import base64

        try:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}

    async def list_jobs(self, namespace: str, experiment: str) -> tuple[list[dict[str, Any]], str | None]:
        """The Jobs of an experiment, and the list's resourceVersion."""
        resp = await self._call(self.batch.list_namespaced_job, namespace,
                                label_selector=f"{LABEL_EXPERIMENT}={experiment}")
        return resp.get("items") or [], (resp.get("metadata") or {}).get("resourceVersion")

    async def list_pods(self, namespace: str, experiment: str) -> tuple[list[dict[str, Any]], str | None]:
        """The stage Pods of an experiment (Jobs copy their template's labels onto them), and the list's
        resourceVersion."""
        resp = await self._call(self.core.list_namespaced_pod, namespace,
                                label_selector=f"{LABEL_EXPERIMENT}={experiment}")
        return resp.get("items") or [], (resp.get("metadata") or {}).get("resourceVersion")

    async def list_workloads(self, namespace: str, job_uids: list[str]) -> list[dict[str, Any]]:
        """Kueue's Workloads for these Jobs (by Kueue's job-uid label); none where Kueue is not installed."""
        try:
            resp = await self._call(self.custom.list_namespaced_custom_object, "kueue.x-k8s.io", "v1beta2", namespace,
                                    "workloads", label_selector=f"kueue.x-k8s.io/job-uid in ({','.join(job_uids)})")
        except ApiException as err:
            if err.status == 404:
                return []
            raise
        return resp.get("items") or []

    async def pod_creation_refused(self, namespace: str, job_uid: str) -> str | None:
        """The Job controller's latest word on why it could not create the Job's Pods (its FailedCreate
        Event: an admission refusal, an exhausted quota); None when it has said nothing."""
        resp = await self._call(self.core.list_namespaced_event, namespace,
                                field_selector=f"involvedObject.uid={job_uid},reason=FailedCreate")
        events = sorted(resp.get("items") or [], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return events[-1].get("message") if events else None

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a Job or ConfigMap: the object as the apiserver made it; None when one of that name
        exists already."""
        ns = manifest["metadata"]["namespace"]
        fn = self.batch.create_namespaced_job if manifest["kind"] == "Job" else self.core.create_namespaced_config_map
        try:
            return await self._call(fn, ns, manifest)
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    async def apply_configmap(self, manifest: dict[str, Any]) -> None:
        """Create the ConfigMap, or bring an existing one's data up to date (a spec edited mid-run). Its
        name holds its owner's uid, so an existing one always has this owner already."""
        if await self.create(manifest):
            return
        meta = manifest["metadata"]
        patch = {"metadata": {"labels": meta["labels"]}, "data": manifest["data"]}
        try:
            await self._call(self.core.patch_namespaced_config_map, meta["name"], meta["namespace"], patch,
                             _content_type="application/merge-patch+json")
        except ApiException as err:
            if err.status != 404:
                raise
            await self.create(manifest)  # collected between the two calls

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await self._call(self.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise

    async def patch_status(self, namespace: str, name: str, resource_version: str,
                           status_patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status, only if the object is still at ``resource_version``: the object after."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        try:
            return await self._call(self.custom.patch_namespaced_custom_object_status, API_GROUP, VERSION, namespace,
                             PLURAL, name, body)
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"{namespace}/{name} changed while it was reconciled") from None
            raise

    async def post_event(self, experiment: dict[str, Any], event: Event) -> None:
        """A Kubernetes Event on the experiment (what `kubectl describe` lists); best effort."""
        meta = experiment["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": "tratree-operator"},
            "reportingComponent": "tratree-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call(self.core.create_namespaced_event, meta["namespace"], body)
        except (ApiException, HTTPError) as err:
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], err)
