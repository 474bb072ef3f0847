"""The README's install path on a real node: images built here, `helm install`, and an experiment run in containers.

The control plane listens on this machine's address; one real node (containerd, runc, the CNI
bridge, kubelet, kube-proxy: see tests/e2e/cluster/realnode.py) runs every Pod in a container of
the images ``images/build.sh`` built from a local Debian base. Nothing is pulled: the images are
imported into containerd, every pull policy is ``Never``, and the test reads containerd's log for
any pull tried. S3 is moto, on this machine's address so that Pods reach it.

Explore and evaluate stages run in the cpu image here: the explorer image (vLLM) is built by
``make images`` only (several GB more, and vLLM needs a GPU); the tiny models generate with
transformers, which the cpu image has.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster.controlplane import ControlPlane, control_plane
from tests.e2e.cluster.realnode import RealNode, host_address

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
RELEASE, OPERATOR_NS, NS = "tratree", "tratree-system", "lab"
IMAGES = ("operator", "cpu", "trainer")
NEXT_TAG = "0.1.0-next"


def build_images() -> dict[str, Path]:
    """images/build.sh (cached layers make a rebuild seconds): image name -> its OCI archive."""
    out = subprocess.run(["bash", str(ROOT / "images" / "build.sh"), *IMAGES], check=True, capture_output=True,
                         text=True, timeout=3600)
    pairs = [line.split() for line in out.stdout.splitlines()]
    return {pair[0]: Path(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].endswith(".oci.tar")}


def next_operator_image(image: str, folder: Path) -> tuple[str, Path]:
    """A new operator image for the upgrade: the built one with another label (so another image ID)."""
    new = image.rpartition(":")[0] + f":{NEXT_TAG}"
    ctr = subprocess.run(["buildah", "from", "--pull=never", image], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["buildah", "config", "--label", "io.tratree.test=upgrade", ctr], check=True)
        subprocess.run(["buildah", "commit", "--quiet", ctr, new], check=True, capture_output=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], check=False, capture_output=True)
    archive = folder / "operator-next.oci.tar"
    subprocess.run(["buildah", "push", "--quiet", new, f"oci-archive:{archive}:{new}"], check=True)
    return new, archive


class Lab:
    """The control plane, the real node, moto S3 and Helm, as one cluster for the tests below."""

    def __init__(self, cp: ControlPlane, node: RealNode, s3: str, images: dict[str, str]) -> None:
        self.cp, self.node, self.s3, self.images = cp, node, s3, images

    def helm(self, *args: str, timeout: float = 600) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.cp.admin_kubeconfig), "HOME": str(self.cp.folder),
               "HELM_CACHE_HOME": str(self.cp.folder / "helm-cache"), "HELM_CONFIG_HOME": str(self.cp.folder / "helm")}
        proc = subprocess.run([str(self.node.bin / "helm"), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
        assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}\n{self.diagnose()}"
        return proc.stdout

    def operator_pods(self) -> list[dict[str, Any]]:
        return self.cp.list("pods", OPERATOR_NS, "app.kubernetes.io/name=tratree")

    def diagnose(self) -> str:
        kubectl = self.cp.kubectl
        return (f"{kubectl('get', 'pods,jobs', '-A', '-o', 'wide', check=False)}\n"
                f"{kubectl('describe', 'pods', '-A', check=False)[-4000:]}\n"
                f"--- operator\n{kubectl('logs', '-n', OPERATOR_NS, '-l', 'app.kubernetes.io/name=tratree', '--tail=60', check=False)}\n"
                f"--- kubelet\n{self.node.log('kubelet')[-3000:]}\n--- containerd\n{self.node.log('containerd')[-2000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    from moto.server import ThreadedMotoServer

    archives = build_images()
    folder = tmp_path_factory.mktemp("lab")
    address = host_address()
    server = ThreadedMotoServer(ip_address=address, port=0, verbose=False)
    server.start()
    try:
        with control_plane(folder / "cp", advertise=address) as cp, RealNode(cp, folder / "node") as node:
            operator_image = next(i for i in archives if "-operator:" in i)
            new, new_archive = next_operator_image(operator_image, folder)
            for archive in [*archives.values(), new_archive]:
                node.import_archive(archive)
            images = {name: next(i for i in archives if f"tratree-{name}:" in i) for name in IMAGES}
            yield Lab(cp, node, f"http://{address}:{server._server.server_address[1]}", {**images, "next": new})
    finally:
        server.stop()


def s3(lab: Lab):
    import boto3

    return boto3.client("s3", endpoint_url=lab.s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


def wait(lab: Lab, what: Any, timeout: float, message: str) -> Any:
    """The control plane's wait, checking the node's processes too, and on a timeout what a person would read."""
    try:
        return lab.cp.wait_for(lambda: lab.node.check_alive() or what(), timeout, message)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{lab.diagnose()}") from None


def test_helm_install_runs_the_operator_and_an_experiment_in_the_images_and_upgrade_keeps_it(lab):
    cp, node = lab.cp, lab.node
    assert set(lab.images.values()) <= node.images()
    values = ["--set", f"image.tag={lab.images['operator'].rpartition(':')[2]}", "--set", "image.pullPolicy=Never",
              "--set", f"stages.images.cpu={lab.images['cpu']}", "--set", f"stages.images.trainer={lab.images['trainer']}",
              "--set", f"stages.images.explorer={lab.images['cpu']}", "--set", "stages.images.pullPolicy=Never",
              "--set", "stages.retryBackoffSeconds=1", "--set", "stages.resyncSeconds=5",
              # this node has 2 CPUs and no GPU: the GPU kinds' stages get a CPU's worth (tiny models)
              *(f"--set=stages.resources.{kind}.{key}={value}" for kind in ("sft", "dpo", "explore", "evaluate")
                for key, value in (("cpu", "1"), ("memory", "6Gi"), ("gpus", "0")))]
    # the README's install: the chart with its CRDs, release name tratree
    lab.helm("install", RELEASE, str(ROOT / "charts" / "tratree"), "--namespace", OPERATOR_NS, "--create-namespace",
             *values, "--wait", "--timeout", "5m")
    first = lab.operator_pods()
    assert len(first) == 1 and first[0]["spec"]["containers"][0]["image"] == lab.images["operator"]
    assert {c["type"]: c["status"] for c in first[0]["status"]["conditions"]}["Ready"] == "True"

    # a person's experiment, the docs' way: a namespace, its S3 Secret, kubectl apply
    cp.kubectl("create", "namespace", NS)
    bucket = "lab"
    s3(lab).create_bucket(Bucket=bucket)
    cp.kubectl("-n", NS, "create", "secret", "generic", "tratree-s3", f"--from-literal=AWS_ENDPOINT_URL={lab.s3}",
               "--from-literal=AWS_ACCESS_KEY_ID=testing", "--from-literal=AWS_SECRET_ACCESS_KEY=testing",
               "--from-literal=AWS_REGION=us-east-1", "--from-literal=AWS_DEFAULT_REGION=us-east-1")
    manifest = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    manifest["spec"].update(methods=["sft-weak"], artifacts=f"s3://{bucket}/experiments/mini",
                            kubernetes={"s3Secret": "tratree-s3"})
    cp.wait_for(lambda: cp.kubectl("get", "serviceaccount", "default", "-n", NS, "-o", "name", check=False), 60,
                "the namespace's ServiceAccount")
    cp.apply(manifest, "-n", NS)

    def stages() -> dict[str, Any]:
        return ((cp.get("w2sg", "mini", NS) or {}).get("status") or {}).get("stages") or {}

    # mid-run, the operator is upgraded to a new image
    wait(lab, lambda: any(s.get("state") == "Succeeded" for s in stages().values()), 600, "a first stage to succeed")
    assert lab.operator_pods()[0]["status"]["containerStatuses"][0]["restartCount"] == 0
    lab.helm("upgrade", RELEASE, str(ROOT / "charts" / "tratree"), "--namespace", OPERATOR_NS, *values,
             "--set", f"image.tag={NEXT_TAG}", "--wait", "--timeout", "5m")
    wait(lab, lambda: [p for p in lab.operator_pods() if p["spec"]["containers"][0]["image"] == lab.images["next"]
                       and p["metadata"].get("deletionTimestamp") is None
                       and (p.get("status") or {}).get("phase") == "Running"], 300, "the upgraded operator")

    status = wait(lab, lambda: (st := (cp.get("w2sg", "mini", NS) or {}).get("status") or {})
                  .get("phase") in ("Succeeded", "Failed") and st, 1200, "the experiment to end")
    assert status["phase"] == "Succeeded", f"{status}\n{lab.diagnose()}"
    shown = cp.kubectl("get", "w2sg", "-n", NS)
    assert "mini" in shown and "Succeeded" in shown
    (current,) = lab.operator_pods()
    assert current["spec"]["containers"][0]["image"] == lab.images["next"]
    assert current["status"]["containerStatuses"][0]["restartCount"] == 0, "the operator Pod restarted"

    # each stage ran in the image of its kind, in a container of this node
    images = {job["metadata"]["labels"]["tratree.io/stage"]: job["spec"]["template"]["spec"]["containers"][0]["image"]
              for job in cp.list("jobs", NS)}
    assert images, "no stage Jobs"
    assert {images[s] for s in images if s.startswith(("expert", "eval", "report"))} == {lab.images["cpu"]}
    assert {images[s] for s in images if s.startswith(("sft", "tokenizer"))} == {lab.images["trainer"]}
    pods = cp.list("pods", NS)
    assert pods and all(p["spec"]["nodeName"] == "tratree-real-node" for p in pods)
    assert all(c["imageID"] for p in pods for c in p["status"].get("containerStatuses", []))
    results = json.loads(s3(lab).get_object(Bucket=bucket, Key=next(
        o["Key"] for o in s3(lab).list_objects_v2(Bucket=bucket, Prefix="experiments/mini/")["Contents"]
        if o["Key"].endswith("results.json")))["Body"].read())
    assert "sft-weak" in results["methods"]

    # uninstall leaves the CRD and the experiments
    lab.helm("uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait")
    assert cp.kubectl("get", "crd", "w2sgexperiments.tratree.io", "-o", "name").strip()
    assert cp.get("w2sg", "mini", NS) is not None
    assert node.pulls() == [], "an image pull was tried"
