"""A test kubelet: plays the nodes for the emulator's Jobs.

It marks each new Job active, then asks ``decide`` what happens to it: ``"succeed"``, ``"fail"``
or ``"hold"`` (stays running until decided again), or ``"run"``: execute the Job's container
command locally, with its environment (Secrets resolved from ``secrets``) and its spec
ConfigMap written where the container would mount it, and finish by the exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.cluster.apiserver import ApiServer
from tests.e2e.cluster.node import local_command

Decide = Callable[[dict[str, Any]], str]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def always(outcome: str) -> Decide:
    return lambda job: outcome


class Kubelet:
    def __init__(self, api: ApiServer, decide: Decide, workdir: Path | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, poll: float = 0.02) -> None:
        self.api = api
        self.decide = decide
        self.workdir = workdir
        self.secrets = secrets or {}
        self.poll = poll
        self.finished: dict[str, str] = {}  # Job name -> outcome, in the order they finished
        self.logs: dict[str, str] = {}
        self._started: set[str] = set()
        self._done: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in [self._task, *self._running.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            for job in self.api.peek("jobs"):
                meta = job["metadata"]
                uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
                if uid in self._running or uid in self._done or meta.get("deletionTimestamp"):
                    continue
                if uid not in self._started:
                    self._started.add(uid)
                    await self.api.write("jobs", ns, name, {"status": {"startTime": _now(), "active": 1}}, "status")
                outcome = self.decide(job)
                if outcome == "run":
                    self._done.add(uid)
                    self._running[uid] = asyncio.create_task(self._run(job))
                elif outcome in ("succeed", "fail"):
                    self._done.add(uid)
                    await self.finish(ns, name, outcome == "succeed")
            await asyncio.sleep(self.poll)

    async def finish(self, namespace: str, name: str, ok: bool, message: str = "") -> None:
        now = _now()
        if ok:
            status = {"active": None, "succeeded": 1, "completionTime": now, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now}]}
        else:
            status = {"active": None, "failed": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "lastTransitionTime": now, "reason": "BackoffLimitExceeded",
                 "message": message or "Job has reached the specified backoff limit"}]}
        with contextlib.suppress(Exception):  # the Job may be gone meanwhile
            await self.api.write("jobs", namespace, name, {"status": status}, "status")
            self.finished[name] = "succeed" if ok else "fail"

    async def _run(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        root = (self.workdir or Path.cwd()) / meta["name"]
        env = dict(os.environ)
        for source in container.get("envFrom") or []:
            env.update(self.secrets.get(source["secretRef"]["name"], {}))
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self.secrets.get(ref["name"], {}).get(ref["key"], "")
        # the container's paths, mapped into this Job's folder
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            # a hostPath volume is this machine's folder; the others are the Job's own
            local = Path(volume["hostPath"]["path"]) if "hostPath" in volume else root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
            if "configMap" in volume:
                cm = self.api.get("configmaps", meta["namespace"], volume["configMap"]["name"])
                for key, text in (cm or {}).get("data", {}).items():
                    (local / key).write_text(text)

        env, command = local_command(mounts, env, container["command"])
        proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        self.logs[meta["name"]] = out.decode(errors="replace")
        await self.finish(meta["namespace"], meta["name"], proc.returncode == 0,
                          f"exit status {proc.returncode}")
