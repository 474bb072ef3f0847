"""`tratree submit --wait` against the emulated cluster and operator; `tratree compare` as a CI gate."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster.harness import cluster
from tests.e2e.cluster.kubelet import Kubelet, always
from tests.integration.test_operator import small, stage_of


async def submit(c, path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tratree", "submit", str(path), *args,
        env={**os.environ, "KUBECONFIG": str(c.kubeconfig)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


def experiment_file(tmp_path, **spec) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(small(tmp_path, name="ci-run", **spec)))
    return path


@pytest.mark.integration
@pytest.mark.slow
async def test_submit_wait_streams_stages_and_exits_0_on_success(tmp_path):
    path = experiment_file(tmp_path)
    async with cluster(tmp_path) as c, Kubelet(c.api, always("succeed")):
        code, out = await submit(c, path, "--wait", "--timeout", "60", "--poll", "0.2")
        assert code == 0, out
        assert "created w2sg/ci-run in namespace default" in out
        assert "expert: Succeeded" in out and "report: Succeeded" in out and "phase: Succeeded" in out
        assert c.experiment("ci-run")["spec"]["methods"] == ["sft-weak"]
        code, out = await submit(c, path)
        assert code == 2 and "409" in out  # the name is taken
        code, out = await submit(c, path, "--name", "ci-run-2", "--namespace", "team-a")
        assert code == 0 and c.experiment("ci-run-2", "team-a") is not None


@pytest.mark.integration
@pytest.mark.slow
async def test_submit_wait_exits_1_when_the_experiment_fails(tmp_path):
    path = experiment_file(tmp_path, kubernetes={"stages": {"sft": {"retries": 0}}})
    async with cluster(tmp_path) as c, Kubelet(c.api, lambda job: "fail" if stage_of(job) == "sft-weak" else "succeed"):
        code, out = await submit(c, path, "--wait", "--timeout", "60", "--poll", "0.2")
        assert code == 1, out
        assert "sft-weak: Failed" in out and "phase: Failed" in out


@pytest.mark.integration
@pytest.mark.slow
async def test_submit_wait_exits_2_on_timeout(tmp_path):
    path = experiment_file(tmp_path)
    async with cluster(tmp_path) as c, Kubelet(c.api, always("hold")):
        code, out = await submit(c, path, "--wait", "--timeout", "3", "--poll", "0.2")
        assert code == 2 and "did not finish within 3s" in out


def test_submit_rejects_a_bad_file_before_touching_a_cluster(tmp_path, cli):
    path = tmp_path / "bad.yaml"
    path.write_text("weak: {model: tiny:weak}\n")
    r = cli("submit", str(path), env={"KUBECONFIG": str(tmp_path / "none")})
    assert r.returncode == 2 and "strong" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def report(**means: float) -> dict:
    return {"format": 1, "methods": {m: {"average_reward": {"mean": v, "std": 0.0}, "success_rate": {"mean": 0.0}}
                                     for m, v in means.items()}}


def test_compare_passes_within_the_allowed_drop(tmp_path, cli):
    base = write(tmp_path, "base.json", report(**{"sft-strong": 50.0, "w2s-treedpo": 60.0}))
    now = write(tmp_path, "now.json", {"sft-strong": {"averageReward": 49.0}, "w2s-treedpo": {"averageReward": 61.0},
                                       "w2s-mcts": {"averageReward": 55.0}})
    r = cli("compare", now, "--baseline", base, "--max-drop", "1.5")
    assert r.returncode == 0, r.stderr
    assert "sft-strong" in r.stdout and "-1.0" in r.stdout and "w2s-mcts" in r.stdout


def test_compare_fails_on_a_regression_or_a_missing_method(tmp_path, cli):
    base = write(tmp_path, "base.json", report(**{"sft-strong": 50.0, "w2s-treedpo": 60.0}))
    now = write(tmp_path, "now.json", {"status": {"results": {"sft-strong": {"averageReward": 50.0},
                                                              "w2s-treedpo": {"averageReward": 57.9}}}})
    r = cli("compare", now, "--baseline", base, "--max-drop", "2")
    assert r.returncode == 1 and "w2s-treedpo" in r.stderr and "regressed" in r.stdout
    missing = write(tmp_path, "missing.json", report(**{"sft-strong": 50.0}))
    r = cli("compare", missing, "--baseline", base, "--max-drop", "2")
    assert r.returncode == 1 and "missing" in r.stdout


def test_compare_names_a_bad_file(tmp_path, cli):
    base = write(tmp_path, "base.json", report(**{"sft-strong": 50.0}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = cli("compare", str(bad), "--baseline", base)
    assert r.returncode == 2 and "bad.json:1: not JSON" in r.stderr
    r = cli("compare", write(tmp_path, "x.json", {"m": {"reward": 1}}), "--baseline", base)
    assert r.returncode == 2 and "m: no average reward" in r.stderr


@pytest.mark.parametrize("reward", ["1e999", "-1e999", "NaN", "Infinity", "150.0", "-3"])
def test_compare_refuses_rewards_that_are_not_numbers_in_range(tmp_path, cli, reward):
    base = write(tmp_path, "base.json", report(**{"sft-strong": 50.0}))
    bad = tmp_path / "bad.json"
    bad.write_text('{"sft-strong": {"averageReward": ' + reward + '}}')
    r = cli("compare", str(bad), "--baseline", base)
    assert r.returncode == 2 and "bad.json" in r.stderr and "not a number" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_ci_workflow_example_runs_commands_that_exist():
    import shlex

    from tratree.cli import build_parser

    root = Path(__file__).resolve().parents[2]
    workflow = yaml.safe_load((root / "examples/ci/github-actions.yaml").read_text())
    runs = [step["run"] for step in workflow["jobs"]["regression"]["steps"] if "run" in step]
    commands = [shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "x", r)) for r in runs if r.startswith("tratree")]
    assert [c[1] for c in commands] == ["submit", "compare"]
    for command in commands:
        build_parser().parse_args(command[1:])  # exits on an unknown option
    assert (root / commands[0][2]).is_file()
