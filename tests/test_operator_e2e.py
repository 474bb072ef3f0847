"""End to end: the operator drives a tiny experiment whose Jobs really run `tratree stage` against S3.

The test kubelet executes each Job's container command on this machine, with the Job's
environment (the S3 Secret resolved to moto's endpoint and keys) and its spec ConfigMap
where the container would mount it; the operator reads the same store to mark stages and
to put the results on the resource.
"""

from __future__ import annotations

import os

import pytest
import yaml

from tests.cluster.harness import ROOT, cluster
from tests.cluster.kubelet import Kubelet, always

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")


async def test_jobs_run_the_stages_against_s3_and_the_results_land_in_the_status(tmp_path, s3_env):
    manifest = yaml.safe_load((ROOT / "tests/data/mini.yaml").read_text())
    manifest["metadata"]["name"] = "e2e"
    spec = manifest["spec"]
    spec["methods"] = ["sft-weak"]
    spec["artifacts"] = f"s3://{s3_env}/experiments/e2e"
    spec["kubernetes"] = {"s3Secret": "store-credentials"}
    secrets = {"store-credentials": {k: os.environ[k] for k in AWS}}
    async with cluster(tmp_path) as c, Kubelet(c.api, always("run"), tmp_path / "nodes", secrets) as kubelet:
        await c.apply(manifest)
        try:
            status = await c.wait_phase("e2e", "Succeeded", 600)
        except AssertionError:
            for name, log in kubelet.logs.items():
                print(f"--- {name}\n{log[-2000:]}")
            raise
        assert set(status["stages"]) == {"expert", "tokenizer", "sft-weak", "eval-sft-weak-s0", "report"}
        assert all(e["state"] == "Succeeded" for e in status["stages"].values())
        row = status["results"]["sft-weak"]
        assert 0.0 <= row["averageReward"] <= 100.0 and row["seeds"] == 1
        assert status["artifacts"]["report"].startswith(f"s3://{s3_env}/experiments/e2e/stages/report/")
        assert next(x for x in status["conditions"] if x["type"] == "StoreReachable")["status"] == "True"
        assert set(kubelet.finished.values()) == {"succeed"}

        # the same experiment under another name: every stage is in the store, so no Job runs
        manifest["metadata"]["name"] = "again"
        await c.apply(manifest)
        status = await c.wait_phase("again", "Succeeded", 60)
        assert {e["state"] for e in status["stages"].values()} == {"Cached"}
        assert c.jobs("again") == [] and status["results"] == c.status("e2e")["results"]
