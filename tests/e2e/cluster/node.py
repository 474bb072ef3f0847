"""A node agent for the real control plane: what a kubelet does, minus containers.

It registers a Node (with ``nvidia.com/gpu`` capacity) under a kubelet's credentials (user
``system:node:NAME``, so the Node authorizer and NodeRestriction apply), keeps its Lease and
Ready condition fresh, and takes the Pods the real kube-scheduler binds to it. For each Pod it
resolves the container's environment through the API (Secrets and ConfigMaps, as a kubelet
does), writes ConfigMap volumes into a folder of the Pod's, runs the container's command on
this machine with mount paths mapped into that folder, and reports Pod phase, container
statuses, exit codes and termination messages, so the real Job controller completes or fails
the Job. A Pod being deleted has its process killed and is then removed (grace 0), as a
kubelet confirms a deletion.

Faults a node can have are simulated: an image whose name contains ``unpullable`` never pulls
(``ErrImagePull``/``ImagePullBackOff``), and a missing Secret or ConfigMap keeps the container
waiting with ``CreateContainerConfigError``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.cluster.controlplane import ControlPlane

NODE = "tratree-node"
TERMINATION_LOG = "/dev/termination-log"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_command(mounts: dict[str, Path], env: dict[str, str], command: list[str]) -> tuple[dict[str, str], list[str]]:
    """A container's environment and command with its mount paths mapped into local folders, and
    ``tratree`` run by this Python (the images' entry point)."""

    def local(value: str) -> str:
        if value.startswith("file://"):  # a file:// store on a mounted volume
            return "file://" + local(value.removeprefix("file://"))
        for path, target in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(target) + value[len(path):]
        return value

    command = [local(a) for a in command]
    if command and command[0] == "tratree":
        command = [sys.executable, "-m", "tratree", *command[1:]]
    return {k: local(v) for k, v in env.items()}, command


class ConfigError(Exception):
    """The container cannot be configured (a Secret or ConfigMap it names is missing)."""


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    folder: Path
    log: Path
    started: str
    termination: Path
    container: str
    image: str
    fallback_to_logs: bool


@dataclass
class NodeAgent:
    cp: ControlPlane
    workdir: Path
    name: str = NODE
    gpus: int = 8
    poll: float = 0.2
    instant: bool = False  # every Pod succeeds at once without running (benchmarks of the control loop)
    pythonpath: Path | None = None  # where the "image's" tratree is (default: this checkout)
    # stages whose Pods are not started yet (like an image still being pulled): tests hold a stage
    # to act while it is in flight, then discard it from the set
    held: set[str] = field(default_factory=set)  # stages ("sft-weak", or "EXPERIMENT/sft-weak") not started yet
    # stage -> how many of its Pods to fail as a preemption would (DisruptionTarget), before running one
    disrupt: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)  # Pod name -> output, once finished
    _running: dict[str, _Running] = field(default_factory=dict)
    _finished: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> NodeAgent:
        from kubernetes import client, config

        api = config.new_client_from_config(str(self.cp.node_kubeconfig(self.name)))
        self.core = client.CoreV1Api(api)
        self.leases = client.CoordinationV1Api(api)
        self._register()
        self._thread = threading.Thread(target=self._loop, name="node-agent", daemon=True)
        self._thread.start()
        # the node lifecycle controller lifts the not-ready taint once it sees the Ready node
        self.cp.wait_for(self._schedulable, 90, f"node {self.name} to be schedulable")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for run in self._running.values():
            self._kill(run)

    def _schedulable(self) -> bool:
        node = self.core.read_node(self.name)
        return not any(t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or [])

    def _register(self) -> None:
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(self.gpus),
                    "ephemeral-storage": "500Gi"}
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name,
                                                           "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
        with contextlib.suppress(Exception):
            self.core.create_node(body)
        self._capacity = capacity
        self._heartbeat(force=True)

    def _heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - getattr(self, "_last_beat", 0.0) < 5:
            return
        self._last_beat = now
        stamp = _now()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node agent is posting ready status",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": getattr(self, "_ready_since", stamp)}
        self._ready_since = ready["lastTransitionTime"]
        status = {"capacity": self._capacity, "allocatable": self._capacity, "conditions": [ready],
                  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
                  "nodeInfo": {"kubeletVersion": "v1.37.2", "operatingSystem": "linux", "architecture": "amd64",
                               "containerRuntimeVersion": "tratree-node-agent://1", "kernelVersion": "", "osImage": "",
                               "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}
        self.core.patch_node_status(self.name, {"status": status})
        micro = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": micro}}
        try:
            self.leases.patch_namespaced_lease(self.name, "kube-node-lease", {"spec": lease["spec"]})
        except Exception:
            self.leases.create_namespaced_lease("kube-node-lease", lease)

    # --- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._heartbeat()
                # finished Pods need nothing more from a node (the apiserver deletes them at once)
                pods = self.core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.name},status.phase!=Succeeded,status.phase!=Failed").items
                for pod in pods:
                    self._sync(pod)
                self._reap()
            except Exception as err:  # keep going like a kubelet; the tests read .errors on failure
                self.errors.append(repr(err))
            self._stop.wait(self.poll)

    def _key(self, pod: Any) -> str:
        return f"{pod.metadata.namespace}/{pod.metadata.name}/{pod.metadata.uid}"

    def _sync(self, pod: Any) -> None:
        key = self._key(pod)
        if pod.metadata.deletion_timestamp:
            run = self._running.pop(key, None)
            if run is not None:
                self._kill(run)
            with contextlib.suppress(Exception):
                self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            return
        if key in self._running or key in self._finished or pod.status.phase in ("Succeeded", "Failed"):
            return
        stage = (pod.metadata.labels or {}).get("tratree.io/stage")
        if stage in self.held or f"{(pod.metadata.labels or {}).get('tratree.io/experiment')}/{stage}" in self.held:
            return
        if self.disrupt.get(stage):
            self.disrupt[stage] -= 1
            self._finished.add(key)
            self._preempted(pod)
            return
        container = pod.spec.containers[0]
        if "unpullable" in (container.image or ""):
            self._waiting(pod, "ImagePullBackOff", f'Back-off pulling image "{container.image}": ErrImagePull: '
                          f"failed to pull and unpack image: not found")
            return
        if self.instant:
            now = _now()
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
                "phase": "Succeeded", "startTime": now, "containerStatuses": [
                    {"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                                              "finishedAt": now}}} for c in pod.spec.containers]}})
            self._finished.add(key)  # only once the apiserver has it: a write lost to an outage is made again
            return
        try:
            self._start(pod, key)
        except ConfigError as err:
            self._waiting(pod, "CreateContainerConfigError", str(err))

    def _preempted(self, pod: Any) -> None:
        """Fail the Pod as the scheduler's preemption does: DisruptionTarget, then killed."""
        now = _now()
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
            "phase": "Failed", "startTime": now,
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                            "message": "a higher-priority Pod needed this node's GPUs", "lastTransitionTime": now}],
            "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": now,
                                                            "finishedAt": now}}} for c in pod.spec.containers]}})

    def _waiting(self, pod: Any, reason: str, message: str) -> None:
        status = {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                                   "state": {"waiting": {"reason": reason, "message": message}}}
                                  for c in pod.spec.containers]}
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})

    # --- running a container --------------------------------------------------------------

    def _env(self, pod: Any) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        ns = pod.metadata.namespace
        container = pod.spec.containers[0]

        def read(kind: str, name: str, optional: bool) -> dict[str, str]:
            try:
                if kind == "secret":
                    import base64

                    obj = self.core.read_namespaced_secret(name, ns)
                    return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
                return dict(self.core.read_namespaced_config_map(name, ns).data or {})
            except ApiException as err:
                if err.status in (403, 404) and not optional:
                    raise ConfigError(f'{kind} "{name}" not found') from None
                if err.status in (403, 404):
                    return {}
                raise

        env: dict[str, str] = {"PATH": os.environ.get("PATH", ""), "HOSTNAME": pod.metadata.name}
        for source in container.env_from or []:
            if source.secret_ref:
                env.update(read("secret", source.secret_ref.name, bool(source.secret_ref.optional)))
            if source.config_map_ref:
                env.update(read("configmap", source.config_map_ref.name, bool(source.config_map_ref.optional)))
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from and var.value_from.secret_key_ref:
                ref = var.value_from.secret_key_ref
                values = read("secret", ref.name, bool(ref.optional))
                if ref.key not in values and not ref.optional:
                    raise ConfigError(f"couldn't find key {ref.key} in Secret {ns}/{ref.name}")
                env[var.name] = values.get(ref.key, "")
            elif var.value_from and var.value_from.config_map_key_ref:
                ref = var.value_from.config_map_key_ref
                env[var.name] = read("configmap", ref.name, bool(ref.optional)).get(ref.key, "")
            elif var.value_from and var.value_from.field_ref:
                path = var.value_from.field_ref.field_path
                # the downward API: what the Job controller gives an Indexed Job's Pods (JOB_COMPLETION_INDEX)
                found = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
                if found:
                    env[var.name] = (getattr(pod.metadata, found[1]) or {}).get(found[2], "")
                else:
                    env[var.name] = {"metadata.name": pod.metadata.name, "metadata.namespace": ns,
                                     "spec.nodeName": self.name}.get(path, "")
        return env

    def _start(self, pod: Any, key: str) -> None:
        container = pod.spec.containers[0]
        env = self._env(pod)
        folder = self.workdir / pod.metadata.namespace / f"{pod.metadata.name}-{pod.metadata.uid[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        mounts: dict[str, Path] = {}
        volumes = {v.name: v for v in pod.spec.volumes or []}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            local = self._volume_folder(pod, volume) if volume is not None else None
            local = local or folder / "volumes" / mount.name
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount.mount_path] = local
            if volume is not None and volume.config_map is not None:
                for k, text in self._config_map(pod, volume.config_map.name).items():
                    (local / k).write_text(text)
        termination = folder / "termination-log"
        termination.touch()
        mounts[container.termination_message_path or TERMINATION_LOG] = termination

        env, command = local_command(mounts, env, [*(container.command or []), *(container.args or [])])
        from tests.e2e.cluster.controlplane import ROOT

        env["PYTHONPATH"] = str(self.pythonpath or ROOT)
        log = folder / "output.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
                                    start_new_session=True)
        started = _now()
        self._running[key] = _Running(proc, folder, log, started, termination, container.name, container.image,
                                      container.termination_message_policy == "FallbackToLogsOnError")
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
            "phase": "Running", "startTime": started, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
                           {"type": "ContainersReady", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "", "ready": True,
                                   "restartCount": 0, "started": True, "state": {"running": {"startedAt": started}}}],
        }})

    def _volume_folder(self, pod: Any, volume: Any) -> Path | None:
        """Where a shared volume lives on this machine: a hostPath is itself; a PersistentVolumeClaim is
        its bound PersistentVolume's hostPath (the real PV controller binds them). None: per Pod."""
        if volume.host_path is not None:
            return Path(volume.host_path.path)
        if volume.persistent_volume_claim is not None:
            claim = self.core.read_namespaced_persistent_volume_claim(volume.persistent_volume_claim.claim_name,
                                                                      pod.metadata.namespace)
            if not claim.spec.volume_name:
                raise ConfigError(f'persistentvolumeclaim "{claim.metadata.name}" is not bound')
            pv = self.core.read_persistent_volume(claim.spec.volume_name)
            if pv.spec.host_path is None:
                raise ConfigError(f"persistentvolume {pv.metadata.name}: this node agent serves hostPath volumes only")
            return Path(pv.spec.host_path.path)
        return None

    def _config_map(self, pod: Any, name: str) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.core.read_namespaced_config_map(name, pod.metadata.namespace).data or {})
        except ApiException as err:
            if err.status in (403, 404):
                raise ConfigError(f'configmap "{name}" not found') from None
            raise

    def _reap(self) -> None:
        for key, run in list(self._running.items()):
            code = run.proc.poll()
            if code is None:
                continue
            del self._running[key]
            self._finished.add(key)
            namespace, name, _ = key.split("/")
            output = run.log.read_text(errors="replace")
            self.logs[name] = output
            message = run.termination.read_text(errors="replace")[-4096:]
            if not message and code != 0 and run.fallback_to_logs:
                message = "\n".join(output.splitlines()[-80:])[-2048:]
            finished = _now()
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": run.started,
                          "finishedAt": finished}
            if message:
                terminated["message"] = message
            with contextlib.suppress(Exception):  # the Pod may be gone meanwhile
                self.core.patch_namespaced_pod_status(name, namespace, {"status": {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"},
                                   {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"}],
                    "containerStatuses": [{"name": run.container, "image": run.image, "imageID": "", "ready": False,
                                           "restartCount": 0, "started": False,
                                           "state": {"terminated": terminated}}],
                }})
            shutil.rmtree(run.folder / "volumes", ignore_errors=True)

    def _kill(self, run: _Running) -> None:
        if run.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
