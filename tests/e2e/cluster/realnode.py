"""A real node for the real control plane: containerd with runc, the CNI bridge, kubelet and kube-proxy.

The kubelet and kube-proxy come from ``cluster/build.sh`` (the control plane's Kubernetes module),
containerd, its runc shim, ``ctr``, Helm and the Pod sandbox image from ``cluster/node.sh``; runc and
the CNI plugins are Debian's (``make node``). Pods run in containers of images imported into
containerd from OCI archives (``images/build.sh``): nothing is ever pulled, the tests set every pull
policy to ``Never``, and :meth:`RealNode.pulls` reads containerd's log for any pull that was tried.

Pods reach the API server as they would on any cluster: the control plane listens on this machine's
address and advertises it, so the ``kubernetes`` Service's endpoints are that address, and kube-proxy
(iptables mode) sends the Service's cluster IP there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from tests.e2e.cluster.controlplane import ROOT, ControlPlane, free_port
from tests.e2e.cluster.service import Service, end

NAME = "tratree-real-node"
POD_CIDR = "10.244.0.0/24"
NAMESPACE = "k8s.io"  # the containerd namespace of the CRI plugin, where the kubelet's images live


def node_binaries() -> Path:
    """The folder of containerd, its shim, ctr, Helm and the pause archive, built first when not cached."""
    out = subprocess.run(["bash", str(ROOT / "cluster" / "node.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def host_address() -> str:
    """This machine's address on its default route: Pods reach it through the bridge's gateway."""
    out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.255"], check=True, capture_output=True, text=True)
    match = re.search(r"\bsrc (\S+)", out.stdout)
    if not match:
        raise RuntimeError(f"no source address in `ip route get`: {out.stdout!r}")
    return match.group(1)


class RealNode(Service):
    """containerd, kubelet and kube-proxy as subprocesses, joined to ``cp`` as node ``NAME``."""

    def __init__(self, cp: ControlPlane, folder: Path, node_bin: Path | None = None) -> None:
        self.cp = cp
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.node_dir = node_bin or node_binaries()
        self.bin = self.node_dir / "bin"
        # sockets have a 108-byte path limit: containerd's state (its socket, the shims') lives in /run
        self.state = Path(tempfile.mkdtemp(prefix="tratree-node-", dir="/run"))
        self.socket = self.state / "containerd.sock"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        release = re.search(r"k8s\.io/kubernetes v([\d.]+)", (ROOT / "cluster" / "go.mod").read_text())
        assert release, "no k8s.io/kubernetes in cluster/go.mod"
        self.pause = f"localhost/tratree/pause:{release.group(1)}"
        if not cp.advertise:
            raise ValueError("a real node needs a control plane started with advertise=ADDRESS (Pods must reach it)")
        self.address = cp.advertise

    # processes ------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process holds it
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **(env or {})})

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 600) -> str:
        """Run containerd's ``ctr`` in the CRI namespace; its stdout."""
        proc = subprocess.run([str(self.bin / "ctr"), "--address", str(self.socket), "--namespace", NAMESPACE, *args],
                              input=input, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    # configuration --------------------------------------------------------------------------

    def _containerd_config(self) -> Path:
        cni = self.folder / "cni"
        cni.mkdir(exist_ok=True)
        (cni / "10-tratree.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "tratree", "plugins": [
                {"type": "bridge", "bridge": "tratree0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": str(self.folder / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}))
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        config = self.folder / "containerd.toml"
        config.write_text(f"""version = 3
root = "{self.folder / 'containerd'}"
state = "{self.state / 'state'}"

[grpc]
  address = "{self.socket}"

[{runtime}]
  # no CAP_SYS_RESOURCE here: a container's OOM score may only be raised
  restrict_oom_score_adj = true
  [{runtime}.containerd]
    default_runtime_name = "runc"
    [{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
        SystemdCgroup = false
  [{runtime}.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni}"

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{self.pause}"
""")
        return config

    def _kubelet_config(self) -> Path:
        config = self.folder / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this host's cgroups are v1
            "cgroupDriver": "cgroupfs", "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": self.address, "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.cp.ca.pair.cert)}},
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False, "podLogsDir": str(self.folder / "pod-logs"), "resolvConf": "/etc/resolv.conf",
            # a test machine's disk and memory are shared: evict only when they are truly gone, and
            # never collect the images the tests imported (they cannot be pulled back)
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "maxPods": 30,
        }))
        return config

    def _proxy_config(self) -> Path:
        config = self.folder / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NAME,
            "clientConnection": {"kubeconfig": str(self.cp.admin_kubeconfig)},
            "metricsBindAddress": f"127.0.0.1:{free_port()}", "healthzBindAddress": f"127.0.0.1:{free_port()}",
            # leave the host's conntrack and localnet sysctls as they are
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }))
        return config

    # lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        env = {"PATH": f"{self.bin}:{os.environ['PATH']}"}
        self._start("containerd", [str(self.bin / "containerd"), "--config", str(self._containerd_config())], env)
        self.cp.wait_for(lambda: self.socket.exists() or self.check_alive(), 60, "containerd's socket")
        self.import_archive(self.node_dir / "pause.tar")
        self._start("kubelet", [
            str(self.cp.bin / "kubelet"), f"--config={self._kubelet_config()}",
            f"--kubeconfig={self.cp.node_kubeconfig(NAME)}", f"--root-dir={self.folder / 'kubelet'}",
            f"--cert-dir={self.folder / 'kubelet-pki'}", f"--hostname-override={NAME}", f"--node-ip={self.address}",
            "--v=1",
        ], env)
        self._start("kube-proxy", [str(self.cp.bin / "kube-proxy"), f"--config={self._proxy_config()}", "--v=1"], env)
        self.cp.wait_for(self._ready, timeout, f"node {NAME} Ready")

    def _ready(self) -> bool:
        self.check_alive()
        node = self.cp.get("node", NAME, namespace="")
        conditions = {c["type"]: c["status"] for c in ((node or {}).get("status") or {}).get("conditions", [])}
        return conditions.get("Ready") == "True"

    def import_archive(self, archive: Path) -> None:
        """Import an OCI archive into the kubelet's containerd namespace (layers already there are kept)."""
        self.ctr("images", "import", "--local", str(archive))

    def images(self) -> set[str]:
        return {line.split()[0] for line in self.ctr("images", "list").splitlines()[1:] if line.strip()}

    def pulls(self) -> list[str]:
        """containerd's log lines of every image pull that was tried (there must be none)."""
        return [line for line in self.log("containerd").splitlines() if "PullImage" in line]

    def stop(self) -> None:
        """Stop the kubelet and kube-proxy, kill every container, stop containerd and undo the network."""
        for name in ("kubelet", "kube-proxy"):
            end(self.procs.pop(name, None), grace=15)
        if "containerd" in self.procs and self.procs["containerd"].poll() is None:
            with contextlib.suppress(Exception):
                self._remove_containers()
            self.procs["containerd"].terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.procs["containerd"].wait(15)
            if self.procs["containerd"].poll() is None:
                self.procs["containerd"].kill()
        self.procs.clear()
        subprocess.run([str(self.cp.bin / "kube-proxy"), "--cleanup"], capture_output=True, check=False)
        _remove_kubelet_chains()
        subprocess.run(["ip", "link", "delete", "tratree0"], capture_output=True, check=False)
        _unmount_under(self.folder)
        _unmount_under(self.state)
        shutil.rmtree(self.state, ignore_errors=True)
        # the imported images take gigabytes: gone with the node, not left to pytest's kept folders
        shutil.rmtree(self.folder / "containerd", ignore_errors=True)

    def _remove_containers(self) -> None:
        for task in self.ctr("tasks", "list", "--quiet").split():
            with contextlib.suppress(RuntimeError):
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        deadline = time.monotonic() + 20
        while self.ctr("tasks", "list", "--quiet").split() and time.monotonic() < deadline:
            time.sleep(0.5)
        for container in self.ctr("containers", "list", "--quiet").split():
            with contextlib.suppress(RuntimeError):
                self.ctr("tasks", "delete", "--force", container)
            with contextlib.suppress(RuntimeError):
                self.ctr("containers", "delete", container)
        for line in Path("/proc/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith("/run/netns/cni-"):
                subprocess.run(["umount", point], capture_output=True, check=False)
                with contextlib.suppress(OSError):
                    os.remove(point)


def _remove_kubelet_chains() -> None:
    """Remove the iptables chains the kubelet makes (its canaries and the localnet firewall)."""
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
        for rule in rules.splitlines():
            if rule.startswith("-A ") and "-j KUBE-" in rule and not rule.split()[1].startswith("KUBE-"):
                subprocess.run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True, check=False)
        chains = re.findall(r"^-N (KUBE-\S+)$", rules, re.MULTILINE)
        for verb in ("-F", "-X"):  # every chain emptied before any is deleted: they refer to each other
            for chain in chains:
                subprocess.run(["iptables", "-t", table, verb, chain], capture_output=True, check=False)


def _unmount_under(folder: Path) -> None:
    """Unmount what the kubelet and containerd mounted under ``folder`` (deepest first)."""
    prefix = str(folder.resolve()) + "/"
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
