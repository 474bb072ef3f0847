"""Whether this replica may act: kopf's peering rule, read from the peering object itself.

kopf pauses its own handlers when a live peer of higher (or equal) priority exists, but the
controller's work queue keeps running reconciles it had scheduled. Before any write the
controller asks here, so a paused replica makes none. The rule is kopf's: this replica acts
unless another live peer (last seen within its lifetime) has a priority at least its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from tratree_operator.kube import Kube


def active_among(status: dict[str, Any], me: str, priority: int, now: dt.datetime) -> bool:
    """kopf's rule over a peering object's ``.status`` ({identity: {priority, lifetime, lastseen}})."""
    for peer, info in (status or {}).items():
        if peer == me or not isinstance(info, dict):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=dt.UTC)
            alive = seen + dt.timedelta(seconds=float(info.get("lifetime", 60))) > now
        except (KeyError, ValueError):
            continue
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True


@dataclass
class Peering:
    """This replica's place among its peers, read at most every ``ttl`` seconds per namespace."""

    kube: Kube
    name: str
    identity: str
    priority: int
    clusterwide: bool
    ttl: float = 1.0
    _cache: dict[str, tuple[float, bool]] = field(default_factory=dict)
    _reading: dict[str, asyncio.Task[bool]] = field(default_factory=dict)

    async def active(self, namespace: str) -> bool:
        """Whether this replica may write in NAMESPACE now. Concurrent reconciles that find the answer
        out of date share one read of the peering object (else each would list it)."""
        scope = "" if self.clusterwide else namespace
        hit = self._cache.get(scope)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        task = self._reading.get(scope)
        if task is None:
            task = self._reading[scope] = asyncio.create_task(self._read(scope))
            task.add_done_callback(lambda _: self._reading.pop(scope, None))
        return await asyncio.shield(task)

    async def _read(self, scope: str) -> bool:
        body = await self.kube.peering_object(self.name, scope or None)
        ok = body is not None and active_among(body.get("status") or {}, self.identity, self.priority,
                                               dt.datetime.now(dt.UTC))
        self._cache[scope] = (time.monotonic(), ok)
        return ok
