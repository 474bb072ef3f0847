"""Exploration and evaluation with a real (untrained) tiny model in TextWorldExpress."""

from __future__ import annotations

import json

import pytest

from tests.conftest import small_spec
from tratree.agent.evaluate import evaluate, metrics
from tratree.agent.explore import explore
from tratree.policy.base import GenerationRequest
from tratree.policy.transformers_backend import TransformersBackend
from tratree.records.formats import Trajectory, read_jsonl
from tratree.records.prompts import PROMPTS

pytestmark = pytest.mark.integration

P = PROMPTS["textworldexpress"]


@pytest.fixture(scope="module")
def backend(tiny_weak_dir):
    return TransformersBackend.from_pretrained(str(tiny_weak_dir), max_new_tokens=16, batch_size=6)


class Interrupting:
    """Passes through to a backend, then raises KeyboardInterrupt on the n-th generation round."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.calls = inner, after, 0
        self.max_new_tokens = inner.max_new_tokens

    def generate(self, requests):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.inner.generate(requests)


def test_exploration_writes_m_samples_per_task_and_resumes(tmp_path, backend, tiny_weak_dir):
    spec = small_spec()
    out = tmp_path / "explored.jsonl"
    with pytest.raises(KeyboardInterrupt):
        explore(spec, Interrupting(backend, after=9), out, model=str(tiny_weak_dir), prompt=P, limit=4)
    partial = tmp_path / "explored.jsonl.partial"
    assert not out.exists() and partial.exists()
    first = [Trajectory.model_validate_json(x) for x in partial.read_text().splitlines()[1:]]
    assert 0 < len(first) < 12
    # a line cut off by the interruption is dropped on resume
    with partial.open("a") as fh:
        fh.write('{"task_id": "cookingworld/tr')
    trajs = explore(spec, backend, out, model=str(tiny_weak_dir), prompt=P, limit=4)
    assert not partial.exists()
    assert len(trajs) == 12 == len(read_jsonl(out, Trajectory))
    keys = [(t.task_id, t.meta["sample"]) for t in trajs]
    assert len(set(keys)) == 12
    assert [k for k in keys if k[0] == "cookingworld/train/0"] == [("cookingworld/train/0", s) for s in range(3)]
    # what was done before the interruption is kept as it was
    kept = {(t.task_id, t.meta["sample"]): t for t in trajs}
    assert all(kept[(t.task_id, t.meta["sample"])] == t for t in first)
    for t in trajs:
        assert 1 <= len(t.steps) <= 6 and 0.0 <= t.score <= 1.0
        grid = spec.exploration.sampling[t.meta["sample"] % 3]
        assert (t.meta["temperature"], t.meta["top_p"]) == (grid.temperature, grid.top_p)
        assert t.meta["policy"] == "sft-weak"
        assert t.meta["unparsed_replies"] <= len(t.steps)


def test_evaluation_metrics_and_best_of_n(tmp_path, backend, tiny_weak_dir):
    spec = small_spec(environment={"testTasks": 3})
    result = evaluate(spec, backend, tmp_path / "ev.jsonl", model=str(tiny_weak_dir), prompt=P)
    assert result["split"] == "test" and result["tasks"] == 3 and result["episodes"] == 3
    assert all(k.startswith("cookingworld/test/") for k in result["per_task"]) and len(result["per_task"]) == 3
    assert 0 <= result["average_reward"] <= 100 and 0 <= result["success_rate"] <= 100
    best = evaluate(spec, backend, tmp_path / "bon.jsonl", model=str(tiny_weak_dir), prompt=P, best_of=2)
    assert best["episodes"] == 6 and best["best_of"] == 2 and best["tasks"] == 3


def _partial_count(path):
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["partial"] == 1  # the header binding the file to its model and settings
    return len(lines) - 1


@pytest.mark.parametrize("run", ["explore", "evaluate"])
def test_a_resume_never_mixes_episodes_of_another_model_or_setting(tmp_path, backend, tiny_weak_dir, capfd, run):
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(tiny_weak_dir, other)
    spec = small_spec(environment={"testTasks": 4})
    out = tmp_path / "episodes.jsonl"
    partial = tmp_path / "episodes.jsonl.partial"

    def go(model, inner, **kw):
        spec_, prompt = kw.pop("spec", spec), kw.pop("prompt", P)
        if run == "explore":
            return explore(spec_, inner, out, model=str(model), prompt=prompt, limit=4)
        return evaluate(spec_, inner, out, model=str(model), prompt=prompt, best_of=3)

    with pytest.raises(KeyboardInterrupt):
        go(tiny_weak_dir, Interrupting(backend, after=9))
    kept = _partial_count(partial)
    assert kept > 0  # some episodes finished in nine rounds: there is something to keep or throw away
    # the same model and settings: what was done is kept
    with pytest.raises(KeyboardInterrupt):
        go(tiny_weak_dir, Interrupting(backend, after=0))
    assert _partial_count(partial) == kept
    # another model: nothing of the first is used, and the user is told
    capfd.readouterr()
    with pytest.raises(KeyboardInterrupt):
        go(other, Interrupting(backend, after=0))
    assert _partial_count(partial) == 0
    assert "made by another model or other settings; starting afresh" in capfd.readouterr().err
    # another acting prompt (an in-context example) under the same model: afresh as well
    with pytest.raises(KeyboardInterrupt):
        go(other, Interrupting(backend, after=9))
    assert _partial_count(partial) == kept  # the same weights and settings make the same episodes
    with pytest.raises(KeyboardInterrupt):
        go(other, Interrupting(backend, after=0), prompt=P + "\n---\nHere is an example.")
    assert _partial_count(partial) == 0
    # other sampling settings under the same model: those episodes are redone too
    with pytest.raises(KeyboardInterrupt):
        go(other, Interrupting(backend, after=9))
    assert _partial_count(partial) == kept
    hotter = small_spec(environment={"testTasks": 4}, exploration={"sampling": [{"temperature": 1.3}]},
                        evaluation={"bestOfNSampling": {"temperature": 1.3}})
    with pytest.raises(KeyboardInterrupt):
        go(other, Interrupting(backend, after=0), spec=hotter)
    assert _partial_count(partial) == 0


def test_metrics_take_the_best_episode_per_task():
    def t(task, score):
        return Trajectory(task_id=task, instruction="i", steps=[{"observation": "o", "action": "a"}], score=score)

    m = metrics([t("a", 0.2), t("a", 1.0), t("b", 0.0), t("b", 0.5)], "test", best_of=2)
    assert m["average_reward"] == pytest.approx(75.0) and m["success_rate"] == pytest.approx(50.0)


def test_greedy_generation_is_deterministic_and_batching_does_not_change_it(backend):
    msgs = [{"role": "user", "content": "You are hungry!\nYou are in the kitchen."}]
    single = [backend.generate([GenerationRequest(msgs)])[0]]
    batch = backend.generate([GenerationRequest(msgs)] * 3 + [GenerationRequest(msgs, 0.9, 0.9, 1)])
    assert batch[:3] == single * 3


def test_cli_explore_and_evaluate(cli, tmp_path, tiny_weak_dir):
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({
        "weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"},
        "environment": {"name": "textworldexpress", "tasks": ["coin"], "maxSteps": 3},
        "policy": {"batchSize": 4, "maxNewTokens": 12}, "exploration": {"trajectoriesPerTask": 2},
    }))
    r = cli("explore", str(exp), "--model", str(tiny_weak_dir), "-o", str(tmp_path / "x.jsonl"), "--limit", "2")
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 4
    r = cli("evaluate", str(exp), "--model", str(tiny_weak_dir), "-o", str(tmp_path / "m.json"), "--limit", "2")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["tasks"] == 2 and (tmp_path / "m.trajectories.jsonl").exists()
    r = cli("explore", str(exp), "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "y.jsonl"))
    assert r.returncode == 2 and "is not a model directory" in r.stderr


def test_cli_expert_writes_ten_gold_trajectories(cli, tmp_path):
    from tests.conftest import ROOT

    out = tmp_path / "expert.jsonl"
    r = cli("expert", str(ROOT / "examples" / "quickstart.yaml"), "-o", str(out), "--limit", "10")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 10 and all(x["score"] == 1.0 and x["success"] for x in rows)
    assert all(s["thought"].startswith("I should ") for x in rows for s in x["steps"])
