"""The Kubernetes API calls the operator makes, with transient errors retried.

Plain HTTP through aiohttp (kopf's own client library) with the credentials kopf logs in with, not the
official ``kubernetes`` client: that package alone is ~60 MiB of the operator's memory (and kopf imports
it whenever it is installed), so the operator's image leaves it out. Responses are read as plain JSON,
the same dicts the reconciler sees in tests. Every verb used here is listed in the Helm chart's RBAC
rules, and nothing else is.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from tratree.spec.crd import PLURAL, VERSION
from tratree.spec.experiment import API_GROUP, API_VERSION, KIND
from tratree_operator.types import LABEL_EXPERIMENT, Event

log = logging.getLogger("tratree_operator")
TRANSIENT = {429, 500, 502, 503, 504}
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXPERIMENTS = f"/apis/{API_GROUP}/{VERSION}"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(RuntimeError):
    """The apiserver refused a request: its HTTP status and what it said."""

    def __init__(self, status: int, what: str, message: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.status = status


class Conflict(RuntimeError):
    """The object changed since it was read (HTTP 409): read again and decide again."""


def login(logger: logging.Logger | logging.LoggerAdapter[Any] = log) -> kopf.ConnectionInfo:
    """The credentials the operator and its kopf watches use, in client-go's order: in a Pod, the
    service account at ``KUBERNETES_SERVICE_HOST:PORT`` (an address, so no cluster DNS is needed);
    elsewhere the kubeconfig, through the ``kubernetes`` package where it is installed (it runs exec
    plugins, as cloud clusters' kubeconfigs need) and kopf's reader otherwise."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if host and port and token.exists():
        namespace = SERVICE_ACCOUNT / "namespace"
        ca = SERVICE_ACCOUNT / "ca.crt"
        return kopf.ConnectionInfo(
            server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
            ca_path=str(ca) if ca.exists() else None,
            token=token.read_text().strip() or None,
            default_namespace=namespace.read_text().strip() if namespace.exists() else None)
    settings = kopf.OperatorSettings()
    info = (kopf.login_via_client(logger=logger, settings=settings)
            or kopf.login_with_kubeconfig(settings=settings))
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: no service account (not in a Pod) and no kubeconfig "
                              "($KUBECONFIG or ~/.kube/config)")
    return info


class Kube:
    """What the controller reads and writes, as coroutines."""

    def __init__(self, info: kopf.ConnectionInfo, attempts: int = 5) -> None:
        self.info = info
        self.attempts = attempts
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # made in the running loop (aiohttp binds a session to it), and again after a re-login
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.info.server.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(limit=32, ssl=self.info.as_ssl_context()),
                headers={**self.info.as_http_headers(), "User-Agent": "tratree-operator",
                         "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=120, sock_connect=30))
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _relogin(self) -> None:
        # a service account's token is rotated by the kubelet, an exec plugin's expires
        await self.close()
        self.info = await asyncio.to_thread(login)

    async def _call(self, method: str, path: str, params: dict[str, str] | None = None,
                    body: dict[str, Any] | None = None, content_type: str = "application/json") -> dict[str, Any]:
        what = f"{method} {path}"
        delay = 0.5
        relogged = False
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            try:
                session = self._open()
                data = None if body is None else json.dumps(body)
                async with session.request(method, path.lstrip("/"), params=params, data=data,
                                           headers={"Content-Type": content_type}) as resp:
                    raw = await resp.read()
                    if resp.status < 300:
                        return json.loads(raw) if raw else {}
                    if resp.status == 401 and not relogged:
                        relogged = True
                        await self._relogin()
                        continue
                    err = ApiError(resp.status, what, _message(raw, resp.reason))
                    if resp.status not in TRANSIENT or last:
                        raise err
                    retry_after = resp.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        delay = max(delay, min(float(retry_after), 8.0))
                    log.warning("API %s answered %s; retrying in %.1fs", what, resp.status, delay)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
                if last:
                    raise
                log.warning("API %s unreachable (%s); retrying in %.1fs", what, err or type(err).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def peering_object(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """kopf's peering object NAME (cluster-wide, or in NAMESPACE), found by a list (the RBAC has no get)."""
        path = ("/apis/kopf.dev/v1/clusterkopfpeerings" if namespace is None
                else f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings")
        found = await self._call("GET", path, {"fieldSelector": f"metadata.name={name}"})
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
        """The W2SGExperiment as stored; None when it does not exist."""
        return await self._get_or_none(f"{EXPERIMENTS}/namespaces/{namespace}/{PLURAL}/{name}")

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data; None when it does not exist."""
        secret = await self._get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}

    async def _list(self, path: str, experiment: str) -> tuple[list[dict[str, Any]], str | None]:
        resp = await self._call("GET", path, {"labelSelector": f"{LABEL_EXPERIMENT}={experiment}"})
        return resp.get("items") or [], (resp.get("metadata") or {}).get("resourceVersion")

    async def list_jobs(self, namespace: str, experiment: str) -> tuple[list[dict[str, Any]], str | None]:
        """The Jobs of an experiment, and the list's resourceVersion."""
        return await self._list(f"/apis/batch/v1/namespaces/{namespace}/jobs", experiment)

    async def list_pods(self, namespace: str, experiment: str) -> tuple[list[dict[str, Any]], str | None]:
        """The stage Pods of an experiment (Jobs copy their template's labels onto them), and the list's
        resourceVersion."""
        return await self._list(f"/api/v1/namespaces/{namespace}/pods", experiment)

    async def list_workloads(self, namespace: str, job_uids: list[str]) -> list[dict[str, Any]]:
        """Kueue's Workloads for these Jobs (by Kueue's job-uid label); none where Kueue is not installed."""
        try:
            resp = await self._call("GET", f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads",
                                    {"labelSelector": f"kueue.x-k8s.io/job-uid in ({','.join(job_uids)})"})
        except ApiError as err:
            if err.status == 404:
                return []
            raise
        return resp.get("items") or []

    async def pod_creation_refused(self, namespace: str, job_uid: str) -> str | None:
        """The Job controller's latest word on why it could not create the Job's Pods (its FailedCreate
        Event: an admission refusal, an exhausted quota); None when it has said nothing."""
        resp = await self._call("GET", f"/api/v1/namespaces/{namespace}/events",
                                {"fieldSelector": f"involvedObject.uid={job_uid},reason=FailedCreate"})
        events = sorted(resp.get("items") or [], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return events[-1].get("message") if events else None

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a Job or ConfigMap: the object as the apiserver made it; None when one of that name
        exists already."""
        ns = manifest["metadata"]["namespace"]
        path = (f"/apis/batch/v1/namespaces/{ns}/jobs" if manifest["kind"] == "Job"
                else f"/api/v1/namespaces/{ns}/configmaps")
        try:
            return await self._call("POST", path, body=manifest)
        except ApiError as err:
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
            await self._call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/configmaps/{meta['name']}",
                             body=patch, content_type=MERGE_PATCH)
        except ApiError as err:
            if err.status != 404:
                raise
            await self.create(manifest)  # collected between the two calls

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its Pods; gone already is fine."""
        try:
            await self._call("DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                             body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise

    async def patch_status(self, namespace: str, name: str, resource_version: str,
                           status_patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status, only if the object is still at ``resource_version``: the object after."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        try:
            return await self._call("PATCH", f"{EXPERIMENTS}/namespaces/{namespace}/{PLURAL}/{name}/status",
                                    body=body, content_type=MERGE_PATCH)
        except ApiError as err:
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
            await self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], err)


def _message(raw: bytes, reason: str | None) -> str:
    """The apiserver's Status message, or the HTTP reason when the body is not one."""
    try:
        return str(json.loads(raw).get("message") or reason)
    except (ValueError, AttributeError):
        return reason or raw[:200].decode(errors="replace")
