"""Stage leases: two runners on one store never run a stage twice or clear each other's files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tratree.store.artifacts import open_store
from tratree.store.lease import HOST, acquire


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(f"file://{tmp_path}/store")
    return open_store(f"s3://{request.getfixturevalue('s3_env')}/store")


def test_leases_change_only_by_compare_and_swap(store):
    first = store.create_new("stages/x/k.lease", b"one")
    assert first is not None and store.create_new("stages/x/k.lease", b"two") is None
    assert store.read_versioned("stages/x/k.lease") == (b"one", first)
    assert store.swap("stages/x/k.lease", b"three", "not-the-token") is None
    second = store.swap("stages/x/k.lease", b"three", first)
    assert second is not None and store.swap("stages/x/k.lease", b"four", first) is None  # first is spent
    assert store.read_versioned("stages/x/k.lease")[0] == b"three"


@pytest.mark.parametrize("holder", [
    {"host": "elsewhere", "pid": 1, "expires": 0},  # expired: its holder stopped renewing
    {"host": HOST, "pid": 2**22 + 12345, "expires": time.time() + 3600},  # its process is gone from this host
])
def test_a_stale_lease_is_taken_over_and_a_live_one_waited_for(store, holder, capsys):
    store.write_bytes("stages/x/k.lease", json.dumps(holder).encode())
    lease = acquire(store, "stages/x/k.lease", lambda: False, "stage x")
    assert lease is not None and "took over a lease left by" in capsys.readouterr().err
    # now live: another runner waits until the work is done, then takes nothing
    calls = {"n": 0}

    def done():
        calls["n"] += 1
        return calls["n"] > 2

    assert acquire(store, "stages/x/k.lease", done, "stage x", poll=0.01) is None
    assert "being run by" in capsys.readouterr().err
    lease.release()
    assert store.read_versioned("stages/x/k.lease") is None


@pytest.mark.integration
def test_two_runs_on_one_store_run_each_stage_once(tmp_path):
    """The second run waits for the first's stage and uses it; neither crashes, nothing runs twice."""
    spec = tmp_path / "x.yaml"
    spec.write_text((ROOT / "tests/data/mini.yaml").read_text())
    store = f"file://{tmp_path}/store"
    cmd = [sys.executable, "-m", "tratree", "run", str(spec), "--artifacts", store, "--only", "sft-weak"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err1 = first.communicate(timeout=600)
    _, err2 = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err1[-2000:] + err2[-2000:]
    assert "being run by" in err1 + err2
    done = [line for line in (err1 + err2).splitlines() if " done in " in line]
    assert len([line for line in done if "sft-weak" in line]) == 1, done  # one of them trained it
    assert not list((tmp_path / "store").rglob("*.lease"))  # released
