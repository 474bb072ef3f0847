"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, built from the Go module proxy by ``cluster/build.sh`` (``make cluster``).

The apiserver serves TLS with certificates made at start, authenticates client certificates and
ServiceAccount tokens, authorizes with the Node and RBAC authorizers, and runs the default
admission plugins plus NodeRestriction and OwnerReferencesPermissionEnforcement. The controller
manager runs its default controllers (job, garbage collector, ttl-after-finished, namespace,
serviceaccount, node lifecycle, ...). No kubelet runs here: see :mod:`tests.e2e.cluster.node`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]

# The controller manager's and scheduler's own request rate to the apiserver. Their defaults (20/s with
# bursts of 30, and 50/100) are for small clusters: at 20 requests a second the Job controller makes
# about 3.5 Jobs a second, whatever the operator does, and a benchmark of the operator would measure
# that. Large clusters raise them; so do these.
CLIENT_RATE = ("--kube-api-qps=200", "--kube-api-burst=400")


def binaries() -> Path:
    """The directory of the control plane's binaries, building them first when they are not cached."""
    out = subprocess.run(["bash", str(ROOT / "cluster" / "build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- certificates ------------------------------------------------------------------------


@dataclass
class KeyPair:
    cert: Path
    key: Path


def _write_pair(folder: Path, name: str, cert: Any, key: Any) -> KeyPair:
    from cryptography.hazmat.primitives import serialization

    pair = KeyPair(folder / f"{name}.crt", folder / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pair


class Authority:
    """A throwaway certificate authority that signs the apiserver's and the clients' certificates."""

    def __init__(self, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder = folder
        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tratree-test-ca")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
                     .not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.pair = _write_pair(folder, "ca", self.cert, self.key)

    def issue(self, name: str, common_name: str, groups: tuple[str, ...] = (), server: bool = False,
              addresses: tuple[str, ...] = ()) -> KeyPair:
        x509, oid = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(oid.ORGANIZATION_NAME, g) for g in groups]
                            + [x509.NameAttribute(oid.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2)))
        usage = x509.oid.ExtendedKeyUsageOID
        if server:
            sans = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                                "kubernetes.default.svc")]
            sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.0.0.1", *addresses)]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage.SERVER_AUTH]), False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage.CLIENT_AUTH]), False)
        return _write_pair(self.folder, name, builder.sign(self.key, self._hashes.SHA256()), key)


def _service_account_keys(folder: Path) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = KeyPair(folder / "sa.pub", folder / "sa.key")
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pair.cert.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    return pair


# --- the control plane -------------------------------------------------------------------


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler as subprocesses."""

    def __init__(self, folder: Path, bin_dir: Path | None = None, advertise: str | None = None) -> None:
        """``advertise``: an address of this machine that Pods reach; the apiserver then listens on it
        too and publishes it as the ``kubernetes`` Service's endpoint (a real node's Pods need that)."""
        self.folder = folder
        self.advertise = advertise
        self.bin = bin_dir or binaries()
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.args: dict[str, list[str]] = {}
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.certs = folder / "pki"
        self.certs.mkdir(parents=True, exist_ok=True)
        self.ca = Authority(self.certs)
        self.sa_keys = _service_account_keys(self.certs)
        self.admin_kubeconfig = self._client_kubeconfig("admin", "kubernetes-admin", ("system:masters",))

    # kubeconfigs ----------------------------------------------------------------------------

    def _kubeconfig(self, name: str, user: dict[str, Any], namespace: str = "default") -> Path:
        path = self.folder / f"{name}.kubeconfig"
        ca = base64.b64encode(self.ca.pair.cert.read_bytes()).decode()
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": namespace}}],
        }))
        path.chmod(0o600)
        return path

    def _client_kubeconfig(self, name: str, common_name: str, groups: tuple[str, ...] = (),
                           namespace: str = "default") -> Path:
        pair = self.ca.issue(name, common_name, groups)
        return self._kubeconfig(name, {"client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
                                       "client-key-data": base64.b64encode(pair.key.read_bytes()).decode()}, namespace)

    def node_kubeconfig(self, node: str) -> Path:
        """Credentials of a kubelet: user system:node:NODE in group system:nodes (Node authorizer)."""
        return self._client_kubeconfig(f"node-{node}", f"system:node:{node}", ("system:nodes",))

    def user_kubeconfig(self, user: str, namespace: str = "default") -> Path:
        """Credentials of a person in no group: whatever RBAC grants USER, nothing more."""
        return self._client_kubeconfig(f"user-{user}", user, (), namespace)

    def service_account_kubeconfig(self, namespace: str, name: str, seconds: int = 7200) -> Path:
        """A kubeconfig with a token of the ServiceAccount from the TokenRequest API."""
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": seconds}}
        out = self.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                           "-f", "-", input=json.dumps(request))
        token = json.loads(out)["status"]["token"]
        return self._kubeconfig(f"sa-{namespace}-{name}", {"token": token}, namespace)

    # processes ------------------------------------------------------------------------------

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process holds it
        proc = subprocess.Popen([str(self.bin / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs = [(n, p) for n, p in self.procs if n != name] + [(name, proc)]
        self.args[name] = args

    def restart(self, name: str, while_down: Any = None, timeout: float = 120.0) -> None:
        """SIGKILL one of the control plane's processes (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler), run ``while_down``, start it again with the same flags; for etcd and the
        apiserver, wait until the apiserver is ready again."""
        proc = dict(self.procs)[name]
        proc.kill()
        proc.wait(30)
        if while_down is not None:
            while_down()
        self._start(name, self.args[name])
        if name in ("etcd", "kube-apiserver"):
            self._wait_ready(timeout)


    def etcd(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """etcd's JSON gateway (``/v3/<method>``): for what no Kubernetes API can do, such as compaction."""
        request = urllib.request.Request(f"{self.etcd_url}/v3/{method}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def compact_etcd(self) -> int:
        """Write a key outside Kubernetes' prefix and compact etcd's history up to it: every resource
        version handed out before is then too old to watch from (410 Gone). Returns the revision."""
        key = base64.b64encode(b"/tratree-test/compaction").decode()
        revision = int(self.etcd("kv/put", {"key": key, "value": key})["header"]["revision"])
        self.etcd("kv/compaction", {"revision": revision, "physical": True})
        return revision

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 120.0) -> None:
        etcd_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._start("etcd", [
            f"--data-dir={self.folder / 'etcd'}", f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}", f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        serving = self.ca.issue("apiserver", "kube-apiserver", server=True,
                                addresses=(self.advertise,) if self.advertise else ())
        kubelet_client = self.ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
        if self.advertise:
            # a node's name is not in DNS here: the apiserver reaches kubelets (logs, exec) by their IP
            listen = ["--bind-address=0.0.0.0", f"--advertise-address={self.advertise}", "--endpoint-reconciler-type=lease",
                      "--kubelet-preferred-address-types=InternalIP,Hostname"]
        else:
            listen = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        policy = self.folder / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                          "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
        self.audit_log = self.folder / "audit.log"
        self._start("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}", *listen, f"--secure-port={self.port}",
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}", f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={self.ca.pair.cert}", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--service-account-issuer={self.url}", f"--service-account-key-file={self.sa_keys.cert}",
            f"--service-account-signing-key-file={self.sa_keys.key}", "--service-cluster-ip-range=10.0.0.0/24",
            f"--cert-dir={self.certs}", "--allow-privileged=false", "--v=1",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
            "--audit-log-maxbackup=0",
        ])
        self._wait_ready(timeout)
        self._start("kube-controller-manager", [
            f"--kubeconfig={self.admin_kubeconfig}", f"--authentication-kubeconfig={self.admin_kubeconfig}",
            f"--authorization-kubeconfig={self.admin_kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--controllers=*",
            f"--service-account-private-key-file={self.sa_keys.key}", f"--root-ca-file={self.ca.pair.cert}",
            "--use-service-account-credentials=false", "--concurrent-job-syncs=10",
            "--node-monitor-grace-period=60s", "--v=1", *CLIENT_RATE,
        ])
        self._start("kube-scheduler", [
            f"--kubeconfig={self.admin_kubeconfig}", f"--authentication-kubeconfig={self.admin_kubeconfig}",
            f"--authorization-kubeconfig={self.admin_kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--v=1", *CLIENT_RATE,
        ])
        # the namespace's ServiceAccount comes from the controller manager: Pods need it to be admitted
        self.wait_for(lambda: self.kubectl("get", "serviceaccount", "default", "-o", "name", check=False),
                      timeout, "the default ServiceAccount")

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca.pair.cert))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=5) as r:
                if r.status == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s:\n{self.log('kube-apiserver')[-3000:]}")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def wait_for(self, what: Any, timeout: float, message: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            self.check_alive()
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {message}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def requests_by(self, user: str) -> list[dict[str, Any]]:
        """The audit log's events of USER's requests on objects (one per request), the rotated files'
        (every 100 MB, named audit-TIME.log) included, oldest first."""
        files = [*sorted(self.folder.glob("audit-*.log")), self.audit_log]
        events = [json.loads(line) for f in files for line in f.read_text().splitlines()]
        return [e for e in events if e["user"].get("username") == user and (e.get("objectRef") or {}).get("resource")]

    def calls_by(self, user: str) -> set[tuple[str, str, str]]:
        """(API group, resource[/subresource], verb) of every request USER made, from the audit log."""
        out = set()
        for event in self.requests_by(user):
            ref = event["objectRef"]
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            out.add((ref.get("apiGroup", ""), resource, event["verb"]))
        return out

    # kubectl --------------------------------------------------------------------------------

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None,
                check: bool = True) -> str:
        """Run the real kubectl; its stdout, or on failure (when ``check``) a RuntimeError with stderr."""
        proc = self.kubectl_run(*args, kubeconfig=kubeconfig, input=input)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else ""

    def kubectl_run(self, *args: str, kubeconfig: Path | None = None, input: str | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.admin_kubeconfig), "HOME": str(self.folder)}
        return subprocess.run([str(self.bin / "kubectl"), *args], input=input, capture_output=True, text=True,
                              env=env, timeout=timeout)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], *args: str, kubeconfig: Path | None = None) -> str:
        docs = manifest if isinstance(manifest, list) else [manifest]
        return self.kubectl("apply", *args, "-f", "-", kubeconfig=kubeconfig, input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(out) if out else None

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Until the apiserver serves CRD (its Established condition). Not `kubectl wait`: asked before the
        CRD has any conditions, it fails at once (".status.conditions accessor error") instead of waiting."""
        def established() -> bool:
            conditions = ((self.get("crd", crd) or {}).get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
        self.wait_for(established, timeout, f"the CRD {crd} to be established")

    def list(self, kind: str, namespace: str = "default", selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args))["items"]


@contextlib.contextmanager
def control_plane(folder: Path, advertise: str | None = None) -> Iterator[ControlPlane]:
    """A started control plane, stopped (and its etcd data removed) at exit."""
    cp = ControlPlane(folder, advertise=advertise)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
        shutil.rmtree(folder / "etcd", ignore_errors=True)
