"""Shared helpers: trajectories from a deterministic toy environment, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tratree.records.formats import Step, Trajectory

ROOT = Path(__file__).resolve().parents[1]


def obs_after(actions: Sequence[str], variant: int = 0) -> str:
    """The toy environment's observation after a sequence of actions (deterministic)."""
    base = "start" if not actions else "after " + " > ".join(actions)
    return base if variant == 0 else f"{base} (variant {variant})"


def make_traj(task: str, actions: Sequence[str], score: float, variants: Sequence[int] | None = None) -> Trajectory:
    """A trajectory of the toy environment; ``variants`` perturbs individual observations."""
    variants = variants or [0] * len(actions)
    steps = [
        Step(observation=obs_after(actions[:i], variants[i]), thought=f"think {i}", action=a)
        for i, a in enumerate(actions)
    ]
    return Trajectory(task_id=task, instruction=f"solve {task}", steps=steps, score=score, success=score >= 1.0)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tratree ARGS` and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tratree", *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=300
    )


@pytest.fixture
def cli():
    return run_cli


QUICK_ENV = {
    "name": "textworldexpress",
    "tasks": ["cookingworld"],
    "gameParams": "numLocations=1,numIngredients=2,numDistractorItems=2,includeDoors=0,limitInventorySize=0",
    "maxSteps": 6,
    "iclExample": False,
}


def small_spec(**overrides):
    """A small TextWorldExpress experiment spec for tests."""
    from tratree.spec.experiment import parse_experiment

    body = {
        "weak": {"model": "tiny:weak"},
        "strong": {"model": "tiny:strong"},
        "environment": QUICK_ENV,
        "policy": {"batchSize": 6, "maxNewTokens": 16},
        "exploration": {"trajectoriesPerTask": 3},
    }
    for key, value in overrides.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_experiment(body).spec


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A tokenizer trained on a few gold CookingWorld trajectories (shared by the tiny models)."""
    from tratree.agent.expert import expert_trajectories
    from tratree.models.tiny import corpus, train_tokenizer

    return train_tokenizer(corpus("textworldexpress", expert_trajectories(small_spec(), "train", 8)))


@pytest.fixture(scope="session")
def tiny_weak_dir(tmp_path_factory, tiny_tokenizer):
    """An untrained tiny:weak model saved to disk."""
    from tratree.models.tiny import create

    return create("weak", tiny_tokenizer, tmp_path_factory.mktemp("models") / "weak")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 on 127.0.0.1 over real HTTP; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS variables pointing boto3 at the moto server, and a fresh bucket; yields the bucket name."""
    import uuid

    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    bucket = f"tratree-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """The real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on
    loopback with one node agent; built from the Go module proxy on first use (``make cluster``)."""
    from tests.e2e.cluster.controlplane import control_plane
    from tests.e2e.cluster.node import NodeAgent

    folder = tmp_path_factory.mktemp("kube")
    with control_plane(folder) as cp, NodeAgent(cp, folder / "node") as node:
        cp.node = node
        yield cp
