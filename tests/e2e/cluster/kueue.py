"""Kueue's controller manager against the tests' control plane, as a cluster admin installs it.

The binary, the release's CRDs and its webhook configurations come from ``cluster/kueue.sh`` (built from
the Go module proxy). Kueue runs on this machine like the other control-plane processes, under the admin's
credentials (in a mount namespace whose /etc holds the certificates it reads from a fixed path there); its
webhooks (the Job defaulter that suspends a queued Job, the validators, the CRDs'
conversion) are served over TLS on loopback with a certificate from the tests' CA, and the webhook
configurations point at that address (``clientConfig.url``) instead of an in-cluster Service. Only the
webhooks of what these tests use are registered: batch Jobs and Kueue's own kinds (a Pod or Deployment
webhook would put every Pod of the cluster behind Kueue). Stopping removes them, so a cluster without
Kueue running never has its Job creations refused.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.cluster.controlplane import ControlPlane, free_port
from tests.e2e.cluster.service import Service, end

ROOT = Path(__file__).resolve().parents[3]
# the CRDs whose versions Kueue converts (its kustomization's webhook_in_* patches)
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")


def build() -> Path:
    """Kueue's binary, CRDs and webhook configurations (built once, then cached)."""
    out = subprocess.run(["bash", str(ROOT / "cluster" / "kueue.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cluster/kueue.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _wanted(webhook: dict[str, Any]) -> bool:
    path = webhook["clientConfig"]["service"]["path"]
    return path.endswith("-batch-v1-job") or "-kueue-x-k8s-io-" in path


class Kueue(Service):
    """``kueue`` serving the control plane, its webhooks registered by URL."""

    def __init__(self, cp: ControlPlane, folder: Path, home: Path | None = None) -> None:
        self.cp, self.folder = cp, folder
        self.home = home or build()
        self.port, self.health = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 120.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        certs = self.folder / "certs"
        certs.mkdir(exist_ok=True)
        pair = self.cp.ca.issue("kueue-webhook", "kueue-webhook", server=True)
        shutil.copy(pair.cert, certs / "tls.crt")
        shutil.copy(pair.key, certs / "tls.key")
        # Kueue without its internal cert manager reads its metrics certificate from a fixed path,
        # /etc/kueue/metrics/certs: it runs in a mount namespace of its own whose /etc is this folder's
        etc = self.folder / "etc"
        (etc / "kueue" / "metrics").mkdir(parents=True, exist_ok=True)
        shutil.copytree(certs, etc / "kueue" / "metrics" / "certs", dirs_exist_ok=True)
        ca = base64.b64encode(Path(self.cp.ca.pair.cert).read_bytes()).decode()
        self.cp.kubectl("create", "namespace", "kueue-system", check=False)
        crds = []
        for path in sorted((self.home / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if crd["spec"]["names"]["plural"] in CONVERTED:
                crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                    "clientConfig": {"url": self.url("/convert"), "caBundle": ca},
                    "conversionReviewVersions": ["v1"]}}
            crds.append(crd)
        self.cp.apply(crds, "--server-side")
        for crd in crds:
            self.cp.wait_established(crd["metadata"]["name"])
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": "kueue-system",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": self.port, "host": "127.0.0.1", "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job"]},
        }
        path = self.folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.folder / "kueue.log", "ab")  # noqa: SIM115 - the process holds it
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /etc && exec "$@"',
             str(etc), str(self.home / "bin" / "kueue"), f"--config={path}",
             f"--kubeconfig={self.cp.admin_kubeconfig}", "--feature-gates=VisibilityOnDemand=false",
             "--zap-log-level=2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout)
        docs = []
        for doc in yaml.safe_load_all((self.home / "webhooks.yaml").read_text()):
            if not doc:
                continue
            doc = copy.deepcopy(doc)
            doc["metadata"]["name"] = f"kueue-{doc['metadata']['name']}"
            doc["webhooks"] = [w for w in doc["webhooks"] if _wanted(w)]
            for w in doc["webhooks"]:
                w["clientConfig"] = {"url": self.url(w["clientConfig"]["service"]["path"]), "caBundle": ca}
            docs.append(doc)
        self.webhooks = [(d["kind"], d["metadata"]["name"]) for d in docs]
        self.cp.apply(docs)

    def _wait_ready(self, timeout: float) -> None:
        """Until Kueue's readiness probe (which waits for its webhook server) answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kueue exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://127.0.0.1:{self.health}/readyz", timeout=3) as r:
                if r.status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"kueue not ready after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = self.folder / "kueue.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for kind, name in getattr(self, "webhooks", []):
            self.cp.kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
        end(self.proc)
