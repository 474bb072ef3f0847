"""Watch-fed views of what the reconciler reads: the experiments, their Jobs and Pods, and the Nodes.

The operator's kopf watches already deliver every change of these objects; keeping the latest of each
here (as controller-runtime's informer cache does) lets a reconcile pass read nothing from the
apiserver. A view can lag the cluster by the watch's delay, so what the operator writes goes in at
once (the apiserver's answer to a create or a status patch), an object is only replaced by a newer
resourceVersion, and a deleted one leaves a tombstone so that an older copy (a create's answer that
arrives after the watch's DELETED) cannot bring it back. An experiment's Jobs and Pods are listed
from the apiserver once when the operator first reconciles it and then rarely (``resync``), which
also repairs anything a watch lost.
"""

from __future__ import annotations

import time
from typing import Any

from tratree_operator.types import LABEL_EXPERIMENT

Key = tuple[str, str]  # namespace, name
KINDS = ("experiments", "jobs", "pods", "nodes")
TOMBSTONE_SECONDS = 600.0


def _version(body: dict[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("resourceVersion") or ""
    return int(value) if value.isdigit() else None


def _newer(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether ``new`` is at least as recent as ``old`` (resourceVersions are etcd revisions; an opaque
    one counts as newer, as the latest word)."""
    if old is None:
        return True
    a, b = _version(new), _version(old)
    return a is None or b is None or a >= b


def _slim(body: dict[str, Any]) -> dict[str, Any]:
    """The object without its managedFields (often half its size, and never read), as controller-runtime's
    caches keep them."""
    meta = body.get("metadata") or {}
    if "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


class Views:
    """The latest copy of each watched object, by kind; an experiment's Jobs and Pods by its key."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.experiments: dict[Key, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._children: dict[str, dict[Key, dict[str, dict[str, Any]]]] = {"jobs": {}, "pods": {}}
        self._gone: dict[tuple[str, str, str], tuple[int | None, float]] = {}
        self._listed: dict[Key, float] = {}

    def _place(self, kind: str, body: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str] | None:
        """Where a Job, Pod or Node is kept, and its name there; None for a Job or Pod of no experiment."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta["name"]
        if kind == "nodes":
            return self.nodes, name
        experiment = (meta.get("labels") or {}).get(LABEL_EXPERIMENT)
        if experiment is None:
            return None
        return self._children[kind].setdefault((ns, experiment), {}), name

    def _buried(self, kind: str, body: dict[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        stone = self._gone.get((kind, meta.get("namespace") or "", meta["name"]))
        if stone is None:
            return False
        version = _version(body)
        return stone[0] is None or version is None or version <= stone[0]

    def put(self, kind: str, body: dict[str, Any]) -> None:
        """An object as a watch event or a write's answer gave it; kept if newer than the copy held."""
        if self._buried(kind, body):
            return
        body = _slim(body)
        meta = body["metadata"]
        if kind == "experiments":
            key = (meta.get("namespace") or "", meta["name"])
            if _newer(body, self.experiments.get(key)):
                self.experiments[key] = body
            return
        place = self._place(kind, body)
        if place is not None and _newer(body, place[0].get(place[1])):
            place[0][place[1]] = body

    def remove(self, kind: str, body: dict[str, Any]) -> None:
        """An object the watch says is gone."""
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "", meta["name"]
        now = self._clock()
        self._gone = {k: v for k, v in self._gone.items() if now - v[1] < TOMBSTONE_SECONDS}
        version, stone = _version(body), self._gone.get((kind, ns, name))
        if stone is not None and None not in (stone[0], version) and stone[0] > version:  # type: ignore[operator]
            version = stone[0]  # a late older DELETED does not lower the tombstone
        self._gone[(kind, ns, name)] = (version, now)
        # a copy newer than the deletion is another object under the same name (made again): it stays
        if kind == "experiments":
            if _newer(body, self.experiments.get((ns, name))):
                self.experiments.pop((ns, name), None)
            return
        place = self._place(kind, body)
        if place is not None and _newer(body, place[0].get(place[1])):
            place[0].pop(place[1], None)

    def children(self, kind: str, key: Key) -> list[dict[str, Any]]:
        """The Jobs or Pods labelled with the experiment's name."""
        return list(self._children[kind].get(key, {}).values())

    def needs_listing(self, key: Key, every: float) -> bool:
        """Whether the experiment's Jobs and Pods have not been listed since the operator started, or not
        for ``every`` seconds."""
        listed = self._listed.get(key)
        return listed is None or self._clock() - listed >= every

    def listed(self, kind: str, key: Key, items: list[dict[str, Any]], version: str | None) -> None:
        """What a list of the experiment's Jobs or Pods returned (at list resourceVersion ``version``):
        it replaces the view, but for copies the watch brought that are newer than the list."""
        held = self._children[kind].get(key, {})
        fresh = {i["metadata"]["name"]: _slim(i) for i in items if not self._buried(kind, i)}
        at = int(version) if version and version.isdigit() else None
        for name, body in held.items():
            if name in fresh:
                if not _newer(fresh[name], body):
                    fresh[name] = body
            elif at is not None and (_version(body) or 0) > at:
                fresh[name] = body  # made after the list was taken
        self._children[kind][key] = fresh
        if kind == "pods":
            self._listed[key] = self._clock()

    def forget(self, key: Key) -> None:
        """The experiment is gone: drop it and what it owned."""
        self.experiments.pop(key, None)
        self._listed.pop(key, None)
        for kind in ("jobs", "pods"):
            self._children[kind].pop(key, None)
