"""Tiny models' pretraining: the corpus of noisy-expert play on dev games, and the base it gives SFT."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tratree.agent.corpus import noisy_expert_play
from tratree.agent.explore import split_tasks
from tratree.envs import make_env
from tratree.envs.base import spread
from tratree.pipeline.graph import fingerprints, plan
from tratree.pipeline.runner import run_pipeline
from tratree.spec.experiment import SpecError, load_experiment, parse_experiment

BASE = {
    "environment": {"name": "textworldexpress", "tasks": ["cookingworld"], "maxSteps": 14, "trainTasks": 4,
                    "testTasks": 2,
                    "gameParams": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,"
                                  "limitInventorySize=0"},
    "weak": {"model": "tiny:weak", "pretrain": {"epochs": 1, "learningRate": 5e-3, "batchSize": 2,
                                                "microBatchSize": 2, "maxLength": 1024}},
    "strong": {"model": "tiny:strong"},
    "pretraining": {"games": 6},
}


def spec_with(**changes):
    body = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return parse_experiment(body).spec


@pytest.mark.parametrize(("changes", "message"), [
    ({"pretraining": None}, "weak.pretrain: needs spec.pretraining"),
    ({"weak.pretrain": None}, "neither weak.pretrain nor strong.pretrain"),
    ({"strong.model": "Qwen/Qwen2.5-0.5B", "strong.pretrain": {"epochs": 1}}, "only a tiny: preset is pretrained"),
    ({"environment.name": "scienceworld", "environment.tasks": [], "environment.gameParams": ""},
     "plays TextWorldExpress games only"),
])
def test_a_pretraining_spec_that_cannot_work_is_refused_naming_the_field(changes, message):
    with pytest.raises(SpecError, match=message):
        spec_with(**changes)


def test_pretrained_models_start_every_sft_of_their_side_and_keys_without_it_are_unchanged():
    spec = spec_with(**{"strong.pretrain": {"epochs": 2}})
    stages = {s.name: s for s in plan(spec)}
    assert stages["corpus"].inputs == ()
    assert stages["tokenizer"].inputs == ("corpus",)
    assert stages["pretrain-weak"].inputs == ("corpus", "tokenizer")
    assert "pretrain-weak" in stages["sft-weak"].inputs
    for name in ("sft-strong-s0", "w2s-mcts-s0"):
        assert "pretrain-strong" in stages[name].inputs
    # the pretraining settings reach later stages only through the pretrain stage's digest
    assert "pretrain" not in stages["sft-strong-s0"].params["model"]

    # experiments that differ only in their training or test tasks share the corpus and the pretrained models
    # and so do experiments that differ in how the pretrained models are fine-tuned
    other = {s.name: s for s in plan(spec_with(**{"strong.pretrain": {"epochs": 2}, "environment.trainTasks": 9,
                                                  "environment.testTasks": 7, "weak.sft": {"epochs": 3},
                                                  "strong.sft": {"epochs": 5}, "strong.lora": {"r": 8}}))}
    prints, other_prints = fingerprints(list(stages.values())), fingerprints(list(other.values()))
    for name in ("corpus", "tokenizer", "pretrain-weak", "pretrain-strong"):
        assert prints[name] == other_prints[name], name
    assert prints["sft-weak"] != other_prints["sft-weak"]

    # evaluated on dev-split games, the test tasks depend on how many the corpus played, so their key does
    assert "corpus_games" not in stages["eval-sft-weak-s0"].params
    on_dev = {s.name: s for s in plan(spec_with(**{"strong.pretrain": {"epochs": 2}, "environment.testSplit": "dev"}))}
    assert on_dev["eval-sft-weak-s0"].params["corpus_games"] == 6

    plain = parse_experiment({k: v for k, v in BASE.items() if k != "pretraining"} | {"weak": {"model": "tiny:weak"}})
    names = [s.name for s in plan(plain.spec)]
    assert not [n for n in names if n.startswith(("corpus", "pretrain"))]


@pytest.mark.parametrize("name", ["quickstart", "miniature"])
def test_the_cpu_examples_pretrain_both_models_on_one_shared_corpus(name):
    stages = {s.name: s for s in plan(load_experiment(ROOT / "examples" / f"{name}.yaml").spec)}
    assert [n for n in stages if n.startswith("corpus")] == ["corpus"]
    assert {n for n in stages if n.startswith("pretrain")} == {"pretrain-weak", "pretrain-strong"}
    assert all("corpus" in stages[n].inputs for n in ("pretrain-weak", "pretrain-strong"))
    # and what each model starts from downstream is its pretrained weights, not the bare config
    assert "pretrain-weak" in stages["sft-weak"].inputs and "pretrain-strong" in stages["sft-strong-s0"].inputs


def test_the_miniature_shares_the_quickstarts_corpus_and_tokenizer_not_its_shorter_pretraining():
    quick, mini = (fingerprints(plan(load_experiment(ROOT / "examples" / f"{n}.yaml").spec))
                   for n in ("quickstart", "miniature"))
    for name in ("corpus", "tokenizer"):
        assert quick[name] == mini[name], name
    for name in ("pretrain-weak", "pretrain-strong"):
        assert quick[name] != mini[name], name


@pytest.mark.integration
def test_noisy_expert_play_is_dev_games_only_reproducible_and_gold_at_zero_noise():
    spec = spec_with()
    corpus = list(noisy_expert_play(spec))
    assert len(corpus) == 6
    assert all(t.task_id.split("/")[1] == "dev" for t in corpus)
    assert corpus == list(noisy_expert_play(spec))  # same seed, same transcripts
    # dev-split evaluation (testSplit: dev, or tratree evaluate --split dev) starts after the corpus's games
    dev = split_tasks(spec, "dev")
    assert len(dev) == 2 and set(dev).isdisjoint(t.task_id for t in corpus)

    gold = spec_with(**{"pretraining.randomActions": 0.0})
    played = list(noisy_expert_play(gold))
    assert all(t.success for t in played)
    noisy = list(noisy_expert_play(spec_with(**{"pretraining.randomActions": 1.0})))
    env = make_env(spec.environment)
    try:
        assert dev == spread(env.tasks("dev"), None)[6:8]
        assert [[s.action for s in t.steps] for t in played] == [env.gold_actions(t.task_id) for t in played]
        for t in noisy:
            env.reset(t.task_id)
            for step in t.steps:  # every random action is one the game accepts, and not an idle one
                assert step.action in env.valid_actions()
                assert not step.action.startswith(("look", "inventory", "examine"))
                env.step(step.action)
    finally:
        env.close()
    assert [[s.action for s in t.steps] for t in noisy] != [[s.action for s in t.steps] for t in played]


@pytest.mark.integration
@pytest.mark.slow
def test_sft_starts_from_the_pretrained_base(tmp_path):
    """The weak SFT of a pretrained run starts at a far lower loss than the same SFT from scratch."""
    body = BASE | {"methods": ["sft-weak"], "training": {"sft": {"epochs": 1, "learningRate": 5e-3, "batchSize": 2,
                                                                "microBatchSize": 2, "maxLength": 1024}}}
    body["weak"] = {**body["weak"], "pretrain": {"epochs": 4, "learningRate": 5e-3, "batchSize": 2,
                                                 "microBatchSize": 2, "maxLength": 1024}}
    first = {}
    for name, spec in (("pretrained", body), ("scratch", {k: v for k, v in body.items() if k != "pretraining"}
                                              | {"weak": {"model": "tiny:weak"}})):
        outcomes = {o.stage: o for o in run_pipeline(parse_experiment(spec).spec, f"file://{tmp_path / name}",
                                                     only=["sft-weak"])}
        training = json.loads((tmp_path / name / outcomes["sft-weak"].manifest["prefix"] / "training.json").read_text())
        first[name] = training["losses"][0]
    corpus = outcomes.get("corpus")
    assert corpus is None  # the scratch run has no corpus stage
    assert first["pretrained"] < first["scratch"] - 1.0, first
