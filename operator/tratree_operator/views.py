"""Watch-fed views of what the reconciler reads: the experiments, their Jobs and Pods, and the Nodes.

The operator's kopf watches already deliver every change of these objects; keeping the latest of each
here (as controller-runtime's informer cache does) lets a reconcile pass read nothing from the
apiserver. A view can lag the cluster by the watch's delay, so what the operator writes goes in at
once (the apiserver's answer to a create or a status patch), an object is only replaced by a newer
resourceVersion, and a deleted one leaves a tombstone so that an older copy (a create's answer that
arrives after the watch's DELETED) cannot bring it back. An experiment's Jobs and Pods are listed
from the apiserver once when the operator first reconciles it and then rarely (``resync``), which
also repairs anything a watch lost.

Of a Job or Pod the views keep what the reconciler reads (as controller-runtime's cache transforms
do), packed: a Pod's containers without their command, environment and mounts, its volumes not at
all. At 1,000 experiments whole objects as Python dicts (~22 KB each) had the operator at 866 MiB three
quarters of the way through (36,000 Jobs and Pods); packed, a Job or Pod is under a kilobyte. An
experiment is packed too: as dicts a 24-stage one with its status is ~29 KB, packed ~2.3 KB.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

from tratree_operator.types import LABEL_EXPERIMENT

Key = tuple[str, str]  # namespace, name
KINDS = ("experiments", "jobs", "pods", "nodes")
TOMBSTONE_SECONDS = 600.0
# kopf's listing after a watch restarts comes as a burst of events: one this long after the last begins
# another listing
LISTING_GAP_SECONDS = 5.0


def _version(body: dict[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("resourceVersion") or ""
    return int(value) if value.isdigit() else None


def _newer(new: int | None, old: int | None, held: bool = True) -> bool:
    """Whether resourceVersion ``new`` is at least as recent as ``old`` (etcd revisions; an opaque one,
    None, counts as newer, as the latest word); always when nothing is ``held``."""
    return not held or new is None or old is None or new >= old


def _pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """What is read of a Pod's spec (or a Job's Pod template): where it may go and what it requests."""
    kept = {k: spec[k] for k in ("nodeName", "nodeSelector", "tolerations") if k in spec}
    for k in ("containers", "initContainers"):
        if k in spec:
            kept[k] = [{"name": c.get("name"), "resources": c.get("resources") or {}} for c in spec[k]]
    return kept


def kept(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the views keep of an object: all but its managedFields (often half its size, never read),
    and of a Job's or Pod's spec only ``_pod_spec`` and a Job's completions, parallelism and suspension.
    The reconciler reads nothing else of them (its tests run on objects passed through here)."""
    meta = body.get("metadata") or {}
    out = {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    spec = body.get("spec") or {}
    if kind == "pods":
        out["spec"] = _pod_spec(spec)
    elif kind == "jobs":
        out["spec"] = {k: spec[k] for k in ("completionMode", "completions", "parallelism", "suspend") if k in spec}
        out["spec"]["template"] = {"spec": _pod_spec((spec.get("template") or {}).get("spec") or {})}
    return out


class _Packed:
    """An object as the views hold it: its resourceVersion, and the slimmed object as compressed JSON."""

    __slots__ = ("data", "version")

    def __init__(self, kind: str, body: dict[str, Any]) -> None:
        self.version = _version(body)
        self.data = zlib.compress(json.dumps(kept(kind, body), separators=(",", ":")).encode(), 1)

    def unpack(self) -> dict[str, Any]:
        return json.loads(zlib.decompress(self.data))


class Views:
    """The latest copy of each watched object, by kind; an experiment's Jobs and Pods by its key."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._experiments: dict[Key, _Packed] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._children: dict[str, dict[Key, dict[str, _Packed]]] = {"jobs": {}, "pods": {}}
        self._gone: dict[tuple[str, str, str], tuple[int | None, float]] = {}
        self._listed: dict[Key, float] = {}
        self._watch_listed, self._last_listing_event = float("-inf"), float("-inf")

    def _place(self, kind: str, body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """Where a Job, Pod or Node is kept, and its name there; None for a Job or Pod of no experiment."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta["name"]
        if kind == "nodes":
            return self.nodes, name
        experiment = (meta.get("labels") or {}).get(LABEL_EXPERIMENT)
        if experiment is None:
            return None
        return self._children[kind].setdefault((ns, experiment), {}), name

    def experiment(self, key: Key) -> dict[str, Any] | None:
        """The experiment as last seen (a copy of its own); None when none is held."""
        held = self._experiments.get(key)
        return None if held is None else held.unpack()

    def holds_experiment(self, key: Key) -> bool:
        """Whether the experiment is in the views."""
        return key in self._experiments

    @staticmethod
    def _held_version(held: _Packed | dict[str, Any]) -> int | None:
        return held.version if isinstance(held, _Packed) else _version(held)

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
        meta, version = body["metadata"], _version(body)
        if kind == "experiments":
            key = (meta.get("namespace") or "", meta["name"])
            held = self._experiments.get(key)
            if _newer(version, held and held.version, held is not None):
                self._experiments[key] = _Packed(kind, body)
            return
        place = self._place(kind, body)
        if place is None:
            return
        held = place[0].get(place[1])
        if _newer(version, held and self._held_version(held), held is not None):
            place[0][place[1]] = _Packed(kind, body) if kind in self._children else kept(kind, body)

    def remove(self, kind: str, body: dict[str, Any]) -> None:
        """An object the watch says is gone."""
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "", meta["name"]
        now = self._clock()
        # tombstones are kept in the order they were laid, so the expired ones are at the front: PodGC
        # deleting thousands of Pods must not cost a pass over every tombstone each
        while self._gone:
            oldest, (_, laid) = next(iter(self._gone.items()))
            if now - laid < TOMBSTONE_SECONDS:
                break
            del self._gone[oldest]
        version, stone = _version(body), self._gone.pop((kind, ns, name), None)
        if stone is not None and None not in (stone[0], version) and stone[0] > version:  # type: ignore[operator]
            version = stone[0]  # a late older DELETED does not lower the tombstone
        self._gone[(kind, ns, name)] = (version, now)
        # a copy newer than the deletion is another object under the same name (made again): it stays
        if kind == "experiments":
            held = self._experiments.get((ns, name))
            if held is not None and _newer(_version(body), held.version):
                self._experiments.pop((ns, name), None)
            return
        place = self._place(kind, body)
        if place is not None and (held := place[0].get(place[1])) is not None and \
                _newer(_version(body), self._held_version(held)):
            place[0].pop(place[1], None)

    def children(self, kind: str, key: Key) -> list[dict[str, Any]]:
        """The Jobs or Pods labelled with the experiment's name."""
        return [p.unpack() for p in self._children[kind].get(key, {}).values()]

    def watch_listed(self) -> None:
        """A watch has (re)listed its objects: kopf does that when it starts and after 410 Gone (events of
        type None), and no DELETED comes for what went while it was away. Every experiment listed before
        that listing began is listed again on its next pass (as an informer replaces its store)."""
        now = self._clock()
        if now - self._last_listing_event > LISTING_GAP_SECONDS:
            self._watch_listed = now
        self._last_listing_event = now

    def needs_listing(self, key: Key, every: float) -> bool:
        """Whether the experiment's Jobs and Pods have not been listed since the operator started, or since
        a watch last listed anew, or for ``every`` seconds."""
        listed = self._listed.get(key)
        return listed is None or listed < self._watch_listed or self._clock() - listed >= every

    def listed(self, kind: str, key: Key, items: list[dict[str, Any]], version: str | None) -> None:
        """What a list of the experiment's Jobs or Pods returned (at list resourceVersion ``version``):
        it replaces the view, but for copies the watch brought that are newer than the list."""
        held = self._children[kind].get(key, {})
        fresh = {i["metadata"]["name"]: _Packed(kind, i) for i in items if not self._buried(kind, i)}
        at = int(version) if version and version.isdigit() else None
        for name, packed in held.items():
            if name in fresh:
                if not _newer(fresh[name].version, packed.version):
                    fresh[name] = packed
            elif at is not None and (packed.version or 0) > at:
                fresh[name] = packed  # made after the list was taken
        self._children[kind][key] = fresh
        if kind == "pods":
            self._listed[key] = self._clock()

    def forget(self, key: Key) -> None:
        """The experiment is gone: drop it and what it owned."""
        self._experiments.pop(key, None)
        self._listed.pop(key, None)
        for kind in ("jobs", "pods"):
            self._children[kind].pop(key, None)
