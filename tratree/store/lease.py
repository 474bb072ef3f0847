"""Stage leases: one runner at a time works on a stage's outputs in a store.

Two ``tratree run`` on one store, or Jobs of two experiments that share a store, would otherwise
both run a stage that is not done yet, and clear each other's files. Before running, a runner
takes the stage's lease, ``<stage prefix>.lease`` (its owner and an expiry), with a create that
fails when the lease exists (an exclusive create on a file store, a conditional put on S3). It
renews the lease while it works and deletes it when done. Another runner that finds a live lease
waits, and uses the stage's output once the holder commits it; a lease whose holder stopped
renewing (a killed process) expires, and a process found dead on this host frees it at once;
either is taken over by compare-and-swap, so only one waiter wins.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tratree.store.artifacts import Store

HOST = socket.gethostname()


def lease_seconds() -> float:
    """How long a lease lives without renewal (``TRATREE_LEASE_SECONDS``, default 120)."""
    return float(os.environ.get("TRATREE_LEASE_SECONDS", "120"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(holder: dict[str, Any], now: float) -> bool:
    """Whether a lease no longer protects anyone: expired, or its process is gone from this host."""
    if float(holder.get("expires", 0)) <= now:
        return True
    return holder.get("host") == HOST and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])


class Lease:
    """A held lease; ``renew`` keeps it alive, ``lost`` says whether another runner took it over."""

    def __init__(self, store: Store, key: str, token: str, body: dict[str, Any], ttl: float) -> None:
        self.store, self.key, self.token, self.body, self.ttl = store, key, token, body, ttl
        self.lost = False

    def renew(self) -> None:
        body = {**self.body, "expires": time.time() + self.ttl}
        token = self.store.swap(self.key, json.dumps(body).encode(), self.token)
        if token is None:
            self.lost = True
        else:
            self.token, self.body = token, body

    def release(self) -> None:
        """Delete the lease if it is still this runner's."""
        if self.lost:
            return
        found = self.store.read_versioned(self.key)
        if found is not None and found[1] == self.token:
            self.store.delete(self.key)


def _read(store: Store, key: str) -> tuple[dict[str, Any], str] | None:
    found = store.read_versioned(key)
    if found is None:
        return None
    data, token = found
    try:
        holder = json.loads(data)
    except ValueError:
        holder = {}  # a torn lease protects nothing
    return (holder if isinstance(holder, dict) else {}), token


def acquire(store: Store, key: str, done: Callable[[], Any], what: str, poll: float = 2.0) -> Lease | None:
    """Take the lease at ``key``, waiting while a live holder has it. None when ``done()`` (checked
    before each try) says the work was finished meanwhile: the caller uses it instead."""
    ttl = lease_seconds()
    said = False
    while True:
        if done():
            return None
        body = {"owner": uuid.uuid4().hex, "host": HOST, "pid": os.getpid(), "since": time.time(),
                "expires": time.time() + ttl}
        data = json.dumps(body).encode()
        token = store.create_new(key, data)
        if token is not None:
            return Lease(store, key, token, body, ttl)
        found = _read(store, key)
        if found is None:
            continue  # released between the two calls
        holder, token = found
        if stale(holder, time.time()):
            token = store.swap(key, data, token)
            if token is not None:
                print(f"tratree: {what}: took over a lease left by {holder.get('host')}:{holder.get('pid')}",
                      file=sys.stderr)
                return Lease(store, key, token, body, ttl)
            continue
        if not said:
            print(f"tratree: {what}: being run by {holder.get('host')}:{holder.get('pid')}; waiting for it",
                  file=sys.stderr)
            said = True
        time.sleep(poll)


@contextmanager
def held(store: Store, key: str, done: Callable[[], Any], what: str) -> Iterator[Lease | None]:
    """The lease for the block, renewed in the background every quarter of its life; None (and no
    lease) when the work was done by another runner while this one waited."""
    lease = acquire(store, key, done, what)
    if lease is None:
        yield None
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease.ttl / 4):
            try:
                lease.renew()
            except Exception as err:  # a store hiccup: the next renewal tries again before expiry
                print(f"tratree: {what}: could not renew its lease: {err}", file=sys.stderr)

    thread = threading.Thread(target=renew, name=f"lease {key}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        lease.release()
