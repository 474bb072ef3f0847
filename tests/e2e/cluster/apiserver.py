"""kmock's Kubernetes emulator, made to behave like an apiserver where the operator depends on it.

kmock serves HTTP, parses Kubernetes URLs, answers API discovery and records every request;
its emulator stores objects as plain dicts. This subclass adds what kopf, the ``kubernetes``
client and the operator rely on: server-set ``uid``/``resourceVersion``/``generation``/
``creationTimestamp``; 201 on create and 409 on a name taken or a stale ``resourceVersion``;
merge and JSON patches with 422 on a failed ``test``; ``/status`` writes isolated from the rest
(and the rest from status); label selectors; finalizers and owner-reference garbage
collection; and watches that resume from a ``resourceVersion`` without losing events.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import apps
from kmock._internal.k8s import KubernetesError

from tratree.spec.crd import PLURAL, VERSION
from tratree.spec.experiment import API_GROUP, KIND

Res = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[Res, str | None, str]  # resource, namespace, name

# resource -> (kind, namespaced, has a status subresource)
RESOURCES: dict[Res, tuple[str, bool, bool]] = {
    (API_GROUP, VERSION, PLURAL): (KIND, True, True),
    ("batch", "v1", "jobs"): ("Job", True, True),
    ("", "v1", "configmaps"): ("ConfigMap", True, False),
    ("", "v1", "events"): ("Event", True, False),
    ("", "v1", "namespaces"): ("Namespace", False, True),
    ("", "v1", "pods"): ("Pod", True, True),
    ("kopf.dev", "v1", "clusterkopfpeerings"): ("ClusterKopfPeering", False, False),
    ("kopf.dev", "v1", "kopfpeerings"): ("KopfPeering", True, False),
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _error(status: int, reason: str, message: str) -> KubernetesError:
    return KubernetesError(status=status, reason=reason, message=message, details={})


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


_TERM = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(==|=|!=|\s+in\s+|\s+notin\s+)\s*(.*?))?\s*$")


def _split_selector(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [t for t in [*terms, cur] if t.strip()]


def label_match(labels: dict[str, str], selector: str | None) -> bool:
    """Kubernetes label selector syntax: ``k=v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``."""
    if not selector:
        return True
    for term in _split_selector(selector):
        m = _TERM.match(term)
        if not m:
            raise _error(400, "BadRequest", f"unable to parse requirement: {term!r}")
        neg, key, op, value = m.groups()
        op = (op or "").strip()
        if not op:
            if (key in labels) == bool(neg):
                return False
        elif op in ("=", "=="):
            if labels.get(key) != value:
                return False
        elif op == "!=":
            if labels.get(key) == value:
                return False
        else:
            values = {v.strip() for v in value.strip("()").split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
    return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer(kmock.KubernetesEmulator):
    """An in-memory apiserver for the resources the operator and its tests use."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store: dict[ObjKey, dict[str, Any]] = {}
        self.rv = 0
        # every change in resourceVersion order; a watch keeps its position in it
        self.log: list[tuple[int, Res, str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        # (verb, plural, subresource, HTTP status): answered once each, in order, instead of serving
        self.faults: list[tuple[str, str, str | None, int]] = []
        self.closing = False  # ends open watches, so the server stops without waiting for them
        for (group, version, plural), (kind, namespaced, status) in RESOURCES.items():
            name = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
            self.resources[name] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, singular=kind.lower(), verbs=VERBS,
                subresources=["status"] if status else [])

    async def _handle(self, request: kmock.Request) -> Any:
        """Object requests go straight to the store below; the rest (discovery) through kmock's reactions.

        kmock's own object tracking is bypassed, and so is its reaction matching for object
        requests, which costs milliseconds a request once thousands of Jobs come and go.
        """
        r = request.resource
        verbs = {kmock.action.LIST: self._serve_list, kmock.action.WATCH: self._serve_watch,
                 kmock.action.FETCH: self._serve_fetch, kmock.action.CREATE: self._serve_create,
                 kmock.action.UPDATE: self._serve_update, kmock.action.DELETE: self._serve_delete}
        if r is not None and request.action in verbs and (r.group or "", r.version or "", r.plural or "") in RESOURCES:
            serve = verbs[request.action]
            payload = serve(request) if request.action == kmock.action.WATCH else await serve(request)
            return await kmock.Response(payload=payload)(request)
        return await apps.RawHandler._handle(self, request)

    # --- the store -----------------------------------------------------------------------

    @staticmethod
    def _res(request: kmock.Request) -> Res:
        r = request.resource
        res = (r.group or "", r.version or "", r.plural or "")
        if res not in RESOURCES:
            raise _error(404, "NotFound", f"the server could not find the requested resource {res}")
        return res

    def _emit(self, res: Res, kind: str, obj: dict[str, Any]) -> None:
        self.log.append((self.rv, res, kind, copy.deepcopy(obj)))

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def peek(self, plural: str) -> Iterable[dict[str, Any]]:
        """Stored objects of a resource, not copied: for readers that only look."""
        return [o for (res, _, _), o in self.store.items() if res[2] == plural]

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects of a resource, for test assertions (copies)."""
        return [copy.deepcopy(o) for (res, ns, _), o in self.store.items()
                if res[2] == plural and (namespace is None or ns == namespace)]

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        for (res, ns, n), obj in self.store.items():
            if res[2] == plural and ns == namespace and n == name:
                return copy.deepcopy(obj)
        return None

    async def write(self, plural: str, namespace: str | None, name: str, patch: dict[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        """Merge-patch an object as a client would (the test kubelet writes Job status this way)."""
        res = next(r for r in RESOURCES if r[2] == plural)
        obj = self._patch(res, namespace, name, patch, "application/merge-patch+json", subresource)
        await self._notify()
        return obj

    def _fault(self, verb: str, request: kmock.Request) -> None:
        for i, (v, plural, sub, status) in enumerate(self.faults):
            if v == verb and plural == (request.resource.plural or "") and sub == request.subresource:
                del self.faults[i]
                reason = {401: "Unauthorized", 409: "Conflict", 429: "TooManyRequests",
                          503: "ServiceUnavailable"}.get(status, "InternalError")
                raise _error(status, reason, f"injected fault: {verb} {plural} answers {status}")

    # --- verbs ---------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> Any:
        res = self._res(request)
        self._fault("create", request)
        _kind, namespaced, has_status = RESOURCES[res]
        obj = copy.deepcopy(request.data or {})
        meta = obj.setdefault("metadata", {})
        ns = request.namespace or meta.get("namespace") if namespaced else None
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value")
        key = (res, ns, name)
        if key in self.store:
            raise _error(409, "AlreadyExists", f'{res[2]} "{name}" already exists')
        if ns is not None:
            meta["namespace"] = ns
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("deletionTimestamp", None)
        if has_status and res != ("", "v1", "namespaces"):
            obj.pop("status", None)  # a status subresource is written through /status only
        self._bump(obj)
        self.store[key] = obj
        self._emit(res, "ADDED", obj)
        await self._notify()
        return kmock.Response(status=201, payload=copy.deepcopy(obj))

    def _get(self, res: Res, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get((res, ns, name))
        if obj is None:
            raise _error(404, "NotFound", f'{res[2]} "{name}" not found')
        return obj

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        return copy.deepcopy(self._get(self._res(request), request.namespace, request.name))

    def _matching(self, request: kmock.Request, res: Res) -> Iterable[dict[str, Any]]:
        selector = request.params.get("labelSelector")
        for (r, ns, _), obj in self.store.items():
            if r == res and (request.namespace is None or ns == request.namespace) and \
                    label_match(obj["metadata"].get("labels") or {}, selector):
                yield obj

    async def _serve_list(self, request: kmock.Request) -> Any:
        res = self._res(request)
        kind = RESOURCES[res][0]
        items = [copy.deepcopy(o) for o in self._matching(request, res)]
        return {"apiVersion": f"{res[0]}/{res[1]}" if res[0] else res[1], "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        res = self._res(request)
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 1800)
        yield b""
        if since in (None, "", "0"):
            position = len(self.log)
            for obj in list(self._matching(request, res)):
                yield {"type": "ADDED", "object": copy.deepcopy(obj)}
        else:
            position = bisect.bisect_right(self.log, int(since), key=lambda entry: entry[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while position < len(self.log):
                _, r, kind, obj = self.log[position]
                position += 1
                if r != res:
                    continue
                meta = obj["metadata"]
                if (request.namespace is None or meta.get("namespace") == request.namespace) and \
                        label_match(meta.get("labels") or {}, selector):
                    yield {"type": kind, "object": obj}
            if loop.time() >= deadline or self.closing:
                return
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), max(0.01, min(5.0, deadline - loop.time())))

    async def _serve_update(self, request: kmock.Request) -> Any:
        res = self._res(request)
        self._fault("patch", request)
        ctype = (request.headers.get("Content-Type") or "application/merge-patch+json").split(";")[0]
        obj = self._patch(res, request.namespace, request.name, request.data, ctype, request.subresource)
        await self._notify()
        return copy.deepcopy(obj)

    def _patch(self, res: Res, ns: str | None, name: str, patch: Any, ctype: str,
               subresource: str | None) -> dict[str, Any]:
        old = self._get(res, ns, name)
        if ctype == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict,
                    jsonpointer.JsonPointerException) as err:
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {err}") from None
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            want_rv = (patch or {}).get("metadata", {}).get("resourceVersion")
            if want_rv is not None and want_rv != old["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", f"Operation cannot be fulfilled on {res[2]} \"{name}\": "
                                              "the object has been modified; please apply your changes to the latest version")
            new = merge(old, patch)
        else:
            raise _error(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
        has_status = RESOURCES[res][2]
        if has_status and subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
        elif has_status:
            new["status"] = copy.deepcopy(old.get("status"))
        if new.get("status") is None:
            new.pop("status", None)
        # the server owns identity: whatever a patch says, these stay
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        body_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if body_of(new) != body_of(old):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        if new == old:
            return old
        self._bump(new)
        self.store[(res, ns, name)] = new
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(res, ns, name)
        else:
            self._emit(res, "MODIFIED", new)
        return new

    async def _serve_delete(self, request: kmock.Request) -> Any:
        res = self._res(request)
        obj = self._get(res, request.namespace, request.name)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                self._bump(obj)
                self.store[(res, request.namespace, request.name)] = obj
                self._emit(res, "MODIFIED", obj)
        else:
            self._remove(res, request.namespace, request.name)
        await self._notify()
        return copy.deepcopy(obj)

    def _remove(self, res: Res, ns: str | None, name: str) -> None:
        """Delete an object, then its dependents (owner-reference garbage collection)."""
        obj = self.store.pop((res, ns, name))
        self._bump(obj)
        self._emit(res, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for (r, dns, dname), dep in list(self.store.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if dns == ns and any(o.get("uid") == uid for o in owners):
                if dep["metadata"].get("finalizers"):
                    dep = copy.deepcopy(dep)
                    dep["metadata"]["deletionTimestamp"] = _now()
                    self._bump(dep)
                    self.store[(r, dns, dname)] = dep
                    self._emit(r, "MODIFIED", dep)
                elif (r, dns, dname) in self.store:
                    self._remove(r, dns, dname)


@contextlib.asynccontextmanager
async def serve(kubeconfig: Path) -> AsyncIterator[ApiServer]:
    """Start the emulator on 127.0.0.1 and write a kubeconfig pointing at it."""
    async with ApiServer() as api, kmock.Server(api) as server:
        url = f"http://{server.host}:{server.port}"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            "users": [{"name": "tester", "user": {"token": "test"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": "default"}}],
        }))
        try:
            yield api
        finally:
            api.closing = True
            await api._notify()
