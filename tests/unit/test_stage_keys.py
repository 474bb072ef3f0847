"""A store keeps working across tratree upgrades: the stages of every example spec keep their cache keys.

``tests/data/stage_keys.json`` was recorded with tratree before its modules moved into layered packages
(commit 7f246cc; the miniature's entry re-recorded by that same code when its random-pair arm was dropped,
and again when its test games went from 100 to 200). A stage's key hashes its action, the version of that
action's outputs, its spec slice and its inputs' digests; with the inputs' digests held fixed, the same keys
mean that a store made then is reused stage for stage now. A deliberate change (a bumped stage version)
re-records the file.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tratree.pipeline.graph import cache_key, fingerprints, plan
from tratree.spec.experiment import load_experiment

RECORDED = json.loads((ROOT / "tests/data/stage_keys.json").read_text())


@pytest.mark.parametrize("example", sorted(RECORDED))
def test_every_stage_keeps_its_cache_key_and_plan_key(example):
    stages = plan(load_experiment(ROOT / example).spec)
    plan_keys = fingerprints(stages)
    now = {s.name: {"key": cache_key(s, {n: f"sha256-of-{n}" for n in s.inputs}), "fingerprint": plan_keys[s.name]}
           for s in stages}
    assert now == RECORDED[example]
