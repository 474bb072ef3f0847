"""A cluster for tests: the emulator, the operator as a real subprocess, and helpers to drive it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.cluster.apiserver import ApiServer, serve
from tratree.spec.crd import PLURAL

ROOT = Path(__file__).resolve().parents[3]
FAST = {"retryBackoffSeconds": 0.3, "retryBackoffMaxSeconds": 1.0, "resyncSeconds": 2.0}


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_operator_benchmark(title: str, r: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    """The operator benchmarks' table (plus ``extra`` columns) and their requests per experiment by verb."""
    from rich.console import Console
    from rich.table import Table

    columns = {"experiments": str(r["experiments"]), "Jobs": str(r["jobs"]),
               "time to all Succeeded": f"{r['seconds']:.1f} s", "Jobs/s": f"{r['jobs'] / r['seconds']:.1f}",
               "API requests / experiment": f"{r['requests'] / r['experiments']:.1f}",
               "operator peak RSS": f"{r['rss']:.0f} MiB", **(extra or {})}
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*columns.values())
    console = Console()
    console.print(table)
    verbs = ", ".join(f"{k} {v / r['experiments']:.1f}" for k, v in sorted(r["by_verb"].items()))
    console.print(f"requests per experiment by verb: {verbs}")


# The operator's image has no kubernetes package (kopf would import it whenever installed); the test
# environment has it, for `tratree submit`, so the operator is started with it hidden, as in its image.
AS_IN_IMAGE = ("import runpy, sys; sys.modules['kubernetes'] = None; "
               "runpy.run_module('tratree_operator', run_name='__main__', alter_sys=True)")


def operator_command(*args: str) -> list[str]:
    """`python -m tratree_operator ARGS` with the modules its image holds."""
    return [sys.executable, "-c", AS_IN_IMAGE, *args]


class Cluster:
    """The emulated apiserver with an operator attached."""

    def __init__(self, api: ApiServer, tmp: Path, kubeconfig: Path, env: dict[str, str] | None,
                 config: dict[str, Any] | None) -> None:
        self.api = api
        self.tmp = tmp
        self.kubeconfig = kubeconfig
        self.extra_env = env or {}
        self.config_path = tmp / "operator.yaml"
        # experiments here keep their file:// stores in temporary folders mounted as hostPath
        policy = {"policy": {"hostPathPrefixes": [tempfile.gettempdir()]}}
        self.config_path.write_text(yaml.safe_dump({**FAST, **policy, **(config or {})}))
        self.operator: asyncio.subprocess.Process | None = None
        self.log_path = tmp / "operator.log"
        self.starts = 0

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "TRATREE_OPERATOR_CONFIG": str(self.config_path),
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator")]), **self.extra_env}

    async def start_operator(self, *args: str, standalone: bool = True) -> None:
        self.starts += 1
        log = open(self.log_path, "a")  # noqa: SIM115 - the subprocess holds it
        log.write(f"--- operator start {self.starts}\n")
        log.flush()
        self.operator = await asyncio.create_subprocess_exec(
            *operator_command(*(["--standalone"] if standalone else []), "--liveness", "", "--metrics-port", "0",
                              *args),
            env=self.env(), stdout=log, stderr=log)

    async def stop_operator(self) -> None:
        if self.operator is None or self.operator.returncode is not None:
            return
        self.operator.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.operator.wait(), 20)
        except TimeoutError:
            self.operator.kill()
            await self.operator.wait()
        self.operator = None

    def operator_requests(self) -> list[Any]:
        """Object requests the operator sent (not discovery, not this harness's own)."""
        return [r for r in self.api._requests
                if r.resource is not None and r.resource.plural and r.action is not None
                and "kmock" not in r.headers.get("User-Agent", "").lower()]

    def operator_calls(self) -> set[tuple[str, str, str]]:
        """(API group, resource[/subresource], RBAC verb) of every request the operator sent."""
        verbs = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch",
                 "DELETE": "delete"}
        return {(r.resource.group or "", r.resource.plural + (f"/{r.subresource}" if r.subresource else ""),
                 verbs[r.action.name]) for r in self.operator_requests()}

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    # --- experiments ---------------------------------------------------------------------

    async def apply(self, manifest: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        body = copy.deepcopy(manifest)
        body["metadata"]["namespace"] = namespace
        existing = self.api.get(PLURAL, namespace, body["metadata"]["name"])
        if existing is None:
            async with self.api.post(f"/apis/tratree.io/v1alpha1/namespaces/{namespace}/{PLURAL}", json=body) as r:
                assert r.status == 201, await r.text()
                return await r.json()
        return await self.api.write(PLURAL, namespace, body["metadata"]["name"], {"spec": body["spec"]})

    async def delete(self, name: str, namespace: str = "default") -> None:
        async with self.api.delete(f"/apis/tratree.io/v1alpha1/namespaces/{namespace}/{PLURAL}/{name}") as r:
            assert r.status == 200, await r.text()

    def experiment(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.api.get(PLURAL, namespace, name)

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return (self.experiment(name, namespace) or {}).get("status") or {}

    def jobs(self, name: str | None = None, namespace: str = "default") -> list[dict[str, Any]]:
        jobs = self.api.objects("jobs", namespace)
        return [j for j in jobs if name is None or j["metadata"]["labels"].get("tratree.io/experiment") == name]

    def events(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        return [e for e in self.api.objects("events", namespace) if e["involvedObject"]["name"] == name]

    def reasons(self, name: str, namespace: str = "default") -> list[str]:
        return [e["reason"] for e in self.events(name, namespace)]

    async def wait(self, what: Callable[[], Any], timeout: float = 60.0, message: str = "") -> Any:
        """Poll ``what`` until it returns something truthy; fail with the operator's log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            if self.operator is not None and self.operator.returncode is not None:
                raise AssertionError(f"the operator exited ({self.operator.returncode}):\n{self.log()[-4000:]}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting: {message}\n--- operator log:\n{self.log()[-4000:]}")

    async def wait_event(self, name: str, reason: str, timeout: float = 30.0) -> list[str]:
        """Wait for an Event with this reason (Events are posted after the status they report)."""
        return await self.wait(lambda: reason in self.reasons(name) and self.reasons(name), timeout,
                               f"a {reason} event on {name}")

    async def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        return await self.wait(lambda: self.status(name).get("phase") == phase and self.status(name),
                               timeout, f"{name} to be {phase} (now {self.status(name).get('phase')})")


@contextlib.asynccontextmanager
async def cluster(tmp: Path, env: dict[str, str] | None = None, config: dict[str, Any] | None = None,
                  start: bool = True, operator_args: tuple[str, ...] = ()) -> AsyncIterator[Cluster]:
    """The emulator and (unless ``start`` is false) a running operator; both stopped at exit."""
    kubeconfig = tmp / "kubeconfig"
    async with serve(kubeconfig) as api:
        c = Cluster(api, tmp, kubeconfig, env, config)
        if start:
            await c.start_operator(*operator_args)
        try:
            yield c
        finally:
            await c.stop_operator()
