"""The pipeline on one machine: caching, invalidation, resume after a crash, corruption, S3."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import ROOT
from tratree.pipeline.graph import plan, select
from tratree.pipeline.runner import run_pipeline, run_stage
from tratree.spec.experiment import load_experiment, parse_experiment, spec_to_manifest
from tratree.store.artifacts import StoreError, open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MINI = ROOT / "tests" / "data" / "mini.yaml"
DETERMINISTIC = ["expert", "tokenizer", "sft-weak", "explore", "trees", "pairs", "random-pairs", "mcts"]


@pytest.fixture(scope="module")
def mini():
    return load_experiment(MINI)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, mini):
    """The whole miniature experiment on a file store, run once for the module."""
    root = tmp_path_factory.mktemp("store")
    outcomes = run_pipeline(mini.spec, f"file://{root}")
    return root, {o.stage: o for o in outcomes}


def statuses(outcomes):
    return {o.stage: o.status for o in outcomes}


def test_plan_covers_every_method_in_dependency_order(mini):
    stages = plan(mini.spec)
    seen = set()
    for s in stages:
        assert set(s.inputs) <= seen, s.name
        seen.add(s.name)
    names = [s.name for s in stages]
    for method in mini.spec.methods:
        assert f"eval-{method}-s0" in names
    assert names[-1] == "report"
    assert [s.name for s in select(stages, ["mcts"])] == ["expert", "tokenizer", "sft-weak", "explore", "trees", "mcts"]


def test_mcts_start_and_per_seed_exploration_shape_the_graph(mini):
    """mcts.init: sft-strong trains the e* paths from each seed's sft-strong; exploration.perSeed gives each
    seed its own exploration (its own sampling seed), trees, pairs and MCTS paths; off, one draw for all."""
    from tratree.pipeline.graph import fingerprints

    body = spec_to_manifest(mini)["spec"]
    one = {s.name: s for s in plan(mini.spec)}
    assert one["w2s-mcts-s0"].inputs == ("mcts", "tokenizer")  # base: the strong model as it comes
    assert set(one["report"].inputs) >= {"trees", "mcts", "pairs", "random-pairs"}
    assert one["random-pairs"].inputs == ("trees", "explore")  # drawn from the trajectories as explored
    body["mcts"]["init"] = "sft-strong"
    body["exploration"]["perSeed"] = True
    body["seeds"] = [0, 1]
    two = {s.name: s for s in plan(parse_experiment(body).spec)}
    for seed in (0, 1):
        assert two[f"w2s-mcts-s{seed}"].inputs == (f"mcts-s{seed}", "tokenizer", f"sft-strong-s{seed}")
        assert two[f"w2s-mcts-s{seed}"].params["init"] == f"sft-strong-s{seed}"
        assert two[f"explore-s{seed}"].params["exploration"]["seed"] == mini.spec.exploration.seed + seed
        assert two[f"w2s-treedpo-s{seed}"].inputs[1] == f"pairs-s{seed}"
        assert two[f"random-pairs-s{seed}"].inputs == (f"trees-s{seed}", f"explore-s{seed}")
    assert "explore" not in two and "trees" not in two
    assert {"trees-s0", "trees-s1", "mcts-s1", "random-pairs-s1"} <= set(two["report"].inputs)
    keys, again = fingerprints(plan(mini.spec)), fingerprints(plan(parse_experiment(body).spec))
    assert keys["sft-weak"] == again["sft-weak"] and keys["explore"] != again["explore-s1"]
    # the search itself does not depend on where its paths' SFT starts
    assert keys["mcts"] == fingerprints(plan(parse_experiment({**body, "exploration": {
        **body["exploration"], "perSeed": False}}).spec))["mcts"]


def test_full_run_reports_every_method_and_reruns_nothing(full_run, mini):
    root, outcomes = full_run
    assert all(o.status == "done" for o in outcomes.values())
    report = root / outcomes["report"].manifest["prefix"]
    results = json.loads((report / "results.json").read_text())
    assert set(results["methods"]) == set(mini.spec.methods)
    assert (report / "results.md").read_text().startswith("# W2SG results")
    assert (report / "results.png").stat().st_size > 1000
    assert list((report / "trees").glob("*.html"))
    # every trained arm says what its training did; the random pairs are counted against the tree pairs
    for method in ("sft-strong", "w2s-mcts", "w2s-treedpo", "eto"):
        row = results["methods"][method]
        assert row["optimizer_steps"] == [json.loads((root / outcomes[f"{method}-s0"].manifest["prefix"]
                                                      / "training.json").read_text())["steps"]]
        if method.startswith(("sft", "w2s-mcts")):  # an SFT always trains; a DPO with no pair does not
            assert row["optimizer_steps"][0] > 0 and row["weight_change"][0] > 0 and row["lr_sum"][0] > 0
        assert row["few_steps"] == (row["optimizer_steps"][0] < 10)
    # one machine trained everything here, and the report says which
    assert [c["device"] for c in results["compute"]] == ["cpu"]
    assert "## What the training ran on" in (report / "results.md").read_text()
    # what each method cost: on this machine no stage ran on an accelerator, and every manifest says so
    assert all(o.manifest["devices"] == 0 and o.manifest["device_seconds"] == 0 for o in outcomes.values())
    assert set(outcomes["report"].manifest["upstream_device_seconds"]) == set(outcomes) - {"report"}
    assert all(r["gpu_hours"] == {"total": 0, "shared": 0} for r in results["methods"].values())
    assert "## What each method cost" in (report / "results.md").read_text()
    random_stats = results["random-pairs"]
    assert random_stats == outcomes["random-pairs"].manifest["summary"]
    assert 0 <= random_stats["coinciding_with_tree_pairs"] <= random_stats["pairs"] <= random_stats["tree_pairs"]
    again = run_pipeline(mini.spec, f"file://{root}")
    assert set(statuses(again).values()) == {"cached"}


def test_changing_mcts_settings_reruns_only_mcts_and_what_follows(full_run, mini):
    root, _ = full_run
    data = spec_to_manifest(mini)
    data["spec"]["mcts"] = {"iterations": 7, "exploration": 0.0}
    changed = parse_experiment(data)
    rerun = {name for name, status in statuses(run_pipeline(changed.spec, f"file://{root}")).items() if status == "done"}
    assert "mcts" in rerun
    assert rerun <= {"mcts", "w2s-mcts-s0", "eval-w2s-mcts-s0", "report"}


def test_a_newer_code_version_reuses_every_output_and_a_bumped_stage_reruns_only_what_follows(
        full_run, mini, monkeypatch):
    import tratree.pipeline.graph as pipeline

    root, _ = full_run
    # another image: any change of tratree's code but a stage's own outputs keeps every stage
    monkeypatch.setattr(pipeline, "code_version", lambda: "9.9.9+elsewhere")
    assert set(statuses(run_pipeline(mini.spec, f"file://{root}")).values()) == {"cached"}
    # a new version of the pairs action: both stages of that action run again and nothing else; what
    # reads them is keyed by their outputs' digests, so it reruns only where those outputs changed
    monkeypatch.setitem(pipeline.STAGE_VERSIONS, "pairs", pipeline.STAGE_VERSIONS["pairs"] + 1)
    rerun = {n for n, st in statuses(run_pipeline(mini.spec, f"file://{root}")).items() if st == "done"}
    assert rerun == {"pairs", "random-pairs"}


def test_a_stage_reads_the_inputs_it_is_given(full_run, mini, cli):
    root, outcomes = full_run
    spec_file = MINI
    prefix = outcomes["explore"].manifest["prefix"]
    r = cli("stage", "trees", "--spec", str(spec_file), "--artifacts", f"file://{root}", f"--input=explore={prefix}")
    assert r.returncode == 0 and "trees: cached" in r.stderr, r.stderr
    r = cli("stage", "trees", "--spec", str(spec_file), "--artifacts", f"file://{root}",
            "--input=explore=stages/explore/nothing-here")
    assert r.returncode == 2 and "its input explore is not done at" in r.stderr
    r = cli("stage", "trees", "--spec", str(spec_file), "--artifacts", f"file://{root}", "--input=expert=x")
    assert r.returncode == 2 and "stage trees reads explore; --input named expert" in r.stderr


def test_run_copies_the_report_tables_and_plots_where_asked(full_run, cli, tmp_path):
    root, outcomes = full_run
    r = cli("run", str(MINI), "--artifacts", f"file://{root}", "--report-to", str(tmp_path / "docs"))
    assert r.returncode == 0, r.stderr
    copied = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert copied == ["results.json", "results.md", "results.png", "training.png"]
    report = root / outcomes["report"].manifest["prefix"]
    assert (tmp_path / "docs" / "results.md").read_bytes() == (report / "results.md").read_bytes()


def test_corrupted_artifact_is_detected_and_its_stage_rerun(full_run, mini):
    root, outcomes = full_run
    trees = root / outcomes["trees"].manifest["prefix"] / "trees.jsonl"
    original = trees.read_bytes()
    trees.write_bytes(original.replace(b'"visits":', b'"visits": ', 1))
    again = statuses(run_pipeline(mini.spec, f"file://{root}", only=["mcts"]))
    assert again["trees"] == "done" and again["explore"] == "cached"
    assert trees.read_bytes() == original  # rebuilt to the same content


@pytest.mark.parametrize("manifest", [b'{"files": "nope"}', b"\xff\xfe binary", b'{"files": {"x": 1}, "digest": "d"}'])
def test_a_malformed_manifest_counts_as_not_done_and_its_stage_runs_again(full_run, mini, manifest):
    root, outcomes = full_run
    path = root / outcomes["trees"].manifest["prefix"] / "manifest.json"
    good = path.read_bytes()
    path.write_bytes(manifest)
    again = statuses(run_pipeline(mini.spec, f"file://{root}", only=["mcts"]))
    assert again["trees"] == "done" and again["explore"] == "cached"  # redone, not a traceback on every run
    assert json.loads(path.read_bytes())["digest"] == json.loads(good)["digest"]


def test_crash_mid_stage_then_resume_gives_the_same_outputs(tmp_path, full_run, mini, monkeypatch):
    _, reference = full_run
    import tratree.agent.episodes as episodes

    real = episodes.run_episodes
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        for traj in real(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt  # Ctrl-C in the middle of exploration
            yield traj

    store = f"file://{tmp_path}"
    monkeypatch.setattr(episodes, "run_episodes", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(mini.spec, store, only=["explore"])
    monkeypatch.setattr(episodes, "run_episodes", real)
    explore_dir = tmp_path / reference["explore"].manifest["prefix"]
    assert not (explore_dir / "manifest.json").exists()  # not committed
    assert len((explore_dir / "trajectories.jsonl.partial").read_text().splitlines()) == 1 + 4  # header + 4
    # what a model save killed mid-write leaves beside a stage's directory goes on the next run
    stale = explore_dir.with_name(f".{explore_dir.name}.k1ll3d")
    (stale / "model").mkdir(parents=True)
    resumed = {o.stage: o for o in run_pipeline(mini.spec, store, only=["trees"])}
    assert not stale.exists()
    for name in ("expert", "sft-weak", "explore", "trees"):
        assert resumed[name].manifest["digest"] == reference[name].manifest["digest"], name


def test_s3_store_gives_the_same_digests(full_run, mini, s3_env):
    _, reference = full_run
    store = f"s3://{s3_env}/runs/mini"
    outcomes = {o.stage: o for o in run_pipeline(mini.spec, store, only=["mcts", "pairs", "random-pairs"])}
    for name in DETERMINISTIC:
        assert outcomes[name].manifest["digest"] == reference[name].manifest["digest"], name
    s3 = open_store(store)
    manifest = json.loads(s3.read_bytes(f"{outcomes['mcts'].manifest['prefix']}/manifest.json"))
    assert "paths.jsonl" in manifest["files"]
    # one stage on its own, as a Job runs it: cached now
    assert run_stage(mini.spec, "trees", store).status == "cached"
    # one byte flipped in S3, same size: found by its sha256, never used; the stage runs again
    prefix = outcomes["trees"].manifest["prefix"]
    key = f"runs/mini/{prefix}/trees.jsonl"
    body = s3.client.get_object(Bucket=s3_env, Key=key)["Body"].read()
    flipped = body.replace(b'"visits":', b'"visitz":', 1)
    assert len(flipped) == len(body) and flipped != body
    s3.client.put_object(Bucket=s3_env, Key=key, Body=flipped)
    with pytest.raises(StoreError, match="does not match its manifest"):
        s3.read_verified(prefix, outcomes["trees"].manifest, "trees.jsonl")
    again = statuses(run_pipeline(mini.spec, store, only=["mcts"]))
    assert again["trees"] == "done" and again["explore"] == "cached" and again["mcts"] == "cached"
    assert s3.client.get_object(Bucket=s3_env, Key=key)["Body"].read() == body


SHARDED = ["explore", "strong-explore-s0", "eval-sft-weak-s0", "eval-best-of-n-s0"]


@pytest.mark.parametrize("shards", [3, 8])
def test_sharded_acting_stages_merge_to_the_unsharded_bytes(tmp_path, full_run, mini, shards):
    """Exploration and evaluation split into 3 or 8 shards (8 is more than the 4 training tasks: some
    shards are empty) give the same bytes as one run, shard by shard as Indexed Job Pods run them."""
    root, reference = full_run
    store = tmp_path / "store"
    shutil.copytree(root, store)
    for name in SHARDED:
        shutil.rmtree(store / "stages" / name)
    body = mini.spec.model_dump(mode="json", by_alias=True)
    body["exploration"]["shards"] = body["evaluation"]["shards"] = shards
    spec = parse_experiment(body).spec
    assert {s.name: s.shards for s in plan(spec) if s.name in SHARDED} == dict.fromkeys(SHARDED, shards)

    # the weak model's exploration as its Pods run it: each shard alone, the last one merges
    for index in reversed(range(shards)):
        outcome = run_stage(spec, "explore", f"file://{store}", shard=index)
        if index:
            assert outcome.status.startswith(f"shard {index} done; waiting for shard(s) 0"), outcome.status
            assert outcome.manifest == {}
    assert outcome.status == "done" and outcome.manifest["shards"] == shards
    assert outcome.manifest["digest"] == reference["explore"].manifest["digest"]
    prefix = outcome.manifest["prefix"]
    assert sorted(p.name for p in (store / f"{prefix}.shards" / str(shards)).iterdir() if p.is_dir()) == [
        str(i) for i in range(shards)]
    assert run_stage(spec, "explore", f"file://{store}", shard=0).status == "cached"

    # the rest in turn, as `tratree run` does
    outcomes = {o.stage: o for o in run_pipeline(spec, f"file://{store}", only=SHARDED)}
    for name in SHARDED:
        assert outcomes[name].manifest["digest"] == reference[name].manifest["digest"], name
    assert outcomes["eval-best-of-n-s0"].status == "done"
    metrics = json.loads((store / outcomes["eval-sft-weak-s0"].manifest["prefix"] / "metrics.json").read_text())
    assert metrics["training"]["steps"] > 0  # the model's training record came through the shards


def test_a_shard_that_does_not_exist_is_one_line(cli, tmp_path):
    r = cli("stage", "explore", "--spec", str(MINI), "--artifacts", f"file://{tmp_path}", "--shard", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr


def test_stage_command_needs_its_inputs(cli, tmp_path):
    r = cli("stage", "trees", "--spec", str(MINI), "--artifacts", f"file://{tmp_path}")
    assert r.returncode == 2 and "needs explore, which is not done" in r.stderr
    r = cli("stage", "nope", "--spec", str(MINI), "--artifacts", f"file://{tmp_path}")
    assert r.returncode == 2 and "unknown stage 'nope'" in r.stderr
    r = cli("stage", "expert", "--spec", str(MINI), "--artifacts", f"file://{tmp_path}")
    assert r.returncode == 0 and "expert: done" in r.stderr
