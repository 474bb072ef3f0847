"""Trajectory trees: prefix merging, counts, similarity merging, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_traj, obs_after
from tests.strategies import trajectories
from tratree.method.tree import Tree, TreeBuilder, build_trees, read_trees, summarize
from tratree.records.formats import FormatError, Step, Trajectory


def node_paths(tree: Tree) -> dict[tuple, tuple[int, float]]:
    """(action, observation) sequence of every node -> (visits, total)."""
    out = {}
    for v in range(1, len(tree)):
        key = tuple((tree.action[u], tree.observation[u]) for u in tree.path_to(v))
        out[key] = (tree.visits[v], round(tree.total[v], 9))
    return out


def test_shared_prefix_is_merged_and_divergence_counted():
    trees = build_trees([
        make_traj("t", ["open", "take", "cook"], 1.0),
        make_traj("t", ["open", "take", "go"], 0.0),
        make_traj("t", ["open", "go"], 0.5),
        make_traj("u", ["go"], 0.2),
    ])
    t, u = trees
    assert (t.task_id, u.task_id) == ("t", "u")
    assert len(t) - 1 == 5  # open, take, cook, go(after take), go(after open)
    open_ = t.children[0][0]
    assert t.visits[open_] == 3 and math.isclose(t.value(open_), 0.5)
    s = t.stats()
    assert (s.trajectories, s.nodes, s.leaves, s.max_depth, s.divergence_points) == (3, 5, 3, 3, 2)
    assert summarize(trees) == {"trees": 2, "trajectories": 4, "nodes": 6, "leaves": 4, "max_depth": 3, "divergence_points": 2}


def test_same_action_from_different_observation_is_a_new_branch():
    t, = build_trees([make_traj("t", ["open"], 1.0), make_traj("t", ["open"], 0.0, variants=[1])])
    assert len(t.children[0]) == 2
    # ... and the first trajectory's observation and thought stay on a merged node
    t2, = build_trees([make_traj("t", ["open"], 1.0), make_traj("t", ["open"], 0.0)])
    assert len(t2) == 2 and t2.observation[1] == obs_after([]) and t2.visits[1] == 2


@settings(max_examples=150, deadline=None)
@given(trajs=trajectories(tasks=2, max_size=14), perm=st.randoms(use_true_random=False))
def test_exact_merging_is_order_independent(trajs, perm):
    shuffled = list(trajs)
    perm.shuffle(shuffled)
    a = {t.task_id: t for t in build_trees(trajs)}
    b = {t.task_id: t for t in build_trees(shuffled)}
    assert a.keys() == b.keys()
    for task in a:
        assert len(a[task]) == len(b[task])
        assert node_paths(a[task]) == node_paths(b[task])


@settings(max_examples=150, deadline=None)
@given(trajs=trajectories(tasks=2, max_size=14))
def test_visits_and_totals_add_up_to_the_inputs(trajs):
    for tree in build_trees(trajs):
        mine = [t for t in trajs if t.task_id == tree.task_id]
        assert tree.visits[0] == len(mine) == sum(tree.ends)
        assert math.isclose(tree.total[0], sum(t.score for t in mine), abs_tol=1e-9)
        assert math.isclose(sum(tree.end_total), tree.total[0], abs_tol=1e-9)
        for v in range(len(tree)):
            kids = tree.children[v]
            assert tree.visits[v] == tree.ends[v] + sum(tree.visits[c] for c in kids)
            assert math.isclose(tree.total[v], tree.end_total[v] + sum(tree.total[c] for c in kids), abs_tol=1e-9)
            assert 0.0 <= tree.value(v) <= 1.0
        # the summary, as its definitions read on the children lists
        kids, stats = tree.children, tree.stats()
        assert stats.nodes == len(tree) - 1 and stats.trajectories == len(mine)
        assert stats.leaves == sum(1 for v in range(1, len(tree)) if not kids[v])
        assert stats.divergence_points == sum(1 for k in kids if len(k) >= 2)
        # every trajectory is a root path of the tree
        paths = node_paths(tree)
        for t in mine:
            assert tuple((s.action, s.observation) for s in t.steps) in paths


@settings(max_examples=60, deadline=None)
@given(trajs=trajectories(tasks=2, max_size=10))
def test_serialisation_round_trips(tmp_path_factory, trajs):
    path = tmp_path_factory.mktemp("t") / "trees.jsonl"
    trees = build_trees(trajs)
    path.write_text("".join(t.to_json() + "\n" for t in trees))
    again = read_trees(path)
    for a, b in zip(trees, again, strict=True):
        for field in ("parent", "observation", "thought", "action", "visits", "total", "ends", "end_total"):
            assert getattr(a, field) == getattr(b, field)
        assert (a.task_id, a.instruction, a.similarity) == (b.task_id, b.instruction, b.similarity)


def test_a_loaded_tree_can_take_more_trajectories(tmp_path):
    t, = build_trees([make_traj("t", ["open", "take"], 1.0)])
    p = tmp_path / "t.jsonl"
    p.write_text(t.to_json() + "\n")
    loaded, = read_trees(p)
    loaded.insert(make_traj("t", ["open", "go"], 0.0))
    assert len(loaded) == 4 and loaded.visits[1] == 2 and len(loaded.children[1]) == 2


def test_tree_file_with_inconsistent_counts_is_rejected(tmp_path):
    t, = build_trees([make_traj("t", ["open", "take"], 1.0)])
    rec = json.loads(t.to_json())
    rec["nodes"][1]["visits"] = 5
    p = tmp_path / "trees.jsonl"
    p.write_text(t.to_json() + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(FormatError, match=r"trees\.jsonl:2: nodes\[1\]\.visits \(5\)"):
        read_trees(p)
    rec = json.loads(t.to_json())
    rec["nodes"][2]["parent"] = 7
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(FormatError, match=r"trees\.jsonl:1: .*nodes\[2\]\.parent must be the index of an earlier node"):
        read_trees(p)


class FakeEmbedder:
    """Embeds texts onto fixed unit vectors by keyword, and counts what it was asked."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            vec = next(v for k, v in self.vectors.items() if k in text)
            rows.append(np.asarray(vec) / np.linalg.norm(vec))
        return np.stack(rows)


def traj_with_obs(observations, actions, score):
    steps = [Step(observation=o, thought="", action=a) for o, a in zip(observations, actions, strict=True)]
    return Trajectory(task_id="t", instruction="i", steps=steps, score=score, success=score >= 1)


def test_similarity_merges_the_most_similar_child_above_the_threshold():
    embed = FakeEmbedder({"kitchen": [1, 0, 0], "cuisine": [0.95, 0.31, 0], "galley": [0.8, 0.6, 0], "garden": [0, 0, 1]})
    trajs = [
        traj_with_obs(["the kitchen"], ["open"], 1.0),
        traj_with_obs(["a galley"], ["open"], 0.0),          # cos 0.8 with kitchen: below 0.9, new node
        traj_with_obs(["the cuisine"], ["open"], 0.5),       # cos .95 kitchen, .95*.8+.31*.6=.946 galley -> kitchen
        traj_with_obs(["the kitchen again"], ["go"], 0.5),   # other action: never merged
        traj_with_obs(["the garden"], ["open"], 0.0),
    ]
    tree, = build_trees(trajs, similarity=0.9, embed=embed)
    kids = tree.children[0]
    assert [tree.observation[c] for c in kids] == ["the kitchen", "a galley", "the kitchen again", "the garden"]
    assert tree.visits[kids[0]] == 2 and math.isclose(tree.value(kids[0]), 0.75)
    # each distinct observation embedded once, in one call
    assert len(embed.calls) == 1 and sorted(embed.calls[0]) == sorted({t.steps[0].observation for t in trajs})


def test_builder_embeds_only_new_observations_chunk_by_chunk():
    embed = FakeEmbedder({"kitchen": [1, 0], "hall": [0, 1]})
    b = TreeBuilder(0.9, embed)
    b.add_all([traj_with_obs(["kitchen"], ["open"], 1.0)])
    b.add_all([traj_with_obs(["kitchen"], ["open"], 0.0), traj_with_obs(["hall"], ["open"], 0.0)])
    assert embed.calls == [["kitchen"], ["hall"]]
    tree, = b.trees()
    assert tree.visits[1] == 2 and len(tree) == 3


def test_similarity_below_one_needs_an_embedder_and_exact_mode_needs_none():
    with pytest.raises(ValueError, match="needs an embedding function"):
        build_trees([make_traj("t", ["a"], 1.0)], similarity=0.8)
    with pytest.raises(ValueError, match="similarity must be in"):
        build_trees([], similarity=0.0)


def test_observations_differing_only_in_list_order_are_one_state():
    from tratree.method.tree import state_key

    a = "This room is called the kitchen. In it, you see:\n\ta table. On the table is:\n\t\ta cup\n\t\ta knife\n\ta fridge\nYou also see:\n\tA door to the hallway"
    b = "This room is called the kitchen. In it, you see:\n\ta fridge\n\ta table. On the table is:\n\t\ta knife\n\t\ta cup\nYou also see:\n\tA door to the hallway"
    moved = "This room is called the kitchen. In it, you see:\n\ta table. On the table is:\n\t\ta cup\n\ta fridge\n\t\ta knife\nYou also see:\n\tA door to the hallway"
    assert state_key(a) == state_key(b)
    assert state_key(a) != state_key(moved)  # the knife is in another container: another state
    assert state_key("plain text") == "plain text"
    steps_a = [Step(observation=a, thought="t", action="open fridge")]
    steps_b = [Step(observation=b, thought="u", action="open fridge")]
    tree, = build_trees([Trajectory(task_id="t", instruction="i", steps=steps_a, score=1.0),
                         Trajectory(task_id="t", instruction="i", steps=steps_b, score=0.0)])
    assert len(tree) == 2 and tree.visits[1] == 2
    assert tree.observation[1] == a  # the first trajectory's raw text is kept


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.from_regex(r"[abcxyz][abc xyz]{0,5}", fullmatch=True), min_size=1, max_size=6),
       data=st.data())
def test_state_key_ignores_the_order_of_list_items_and_nothing_else(items, data):
    from tratree.method.tree import state_key

    order = data.draw(st.permutations(items))
    head = "In it, you see:\n"
    one, other = head + "\n".join(f"\t{x}" for x in items), head + "\n".join(f"\t{x}" for x in order)
    assert state_key(one) == state_key(other) == state_key(state_key(one))
    assert state_key(one) != state_key(head + "\n".join(f"\t{x}!" for x in items))
