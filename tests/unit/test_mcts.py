"""Offline MCTS on static trees: paths are root-to-leaf, seeded, and find a clearly best trajectory."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_traj
from tests.strategies import ACTIONS, trajectories
from tratree.method.mcts import _compress, mcts_path, search
from tratree.method.tree import build_trees
from tratree.records.formats import PathRecord


def uncompressed_search(tree, iterations, exploration, rng):
    """Eq. 7 on the full tree, node by node: the reference the collapsed search must equal."""
    import math

    count = [0] * len(tree)
    reward = [0.0] * len(tree)
    kids = tree.children
    unvisited = [list(k) for k in kids]
    for _ in range(iterations):
        v, path = 0, [0]
        while kids[v]:
            if len(kids[v]) == 1:  # no choice to make, and no random draw
                v = kids[v][0]
            elif unvisited[v]:
                pend = unvisited[v]
                k = rng.randrange(len(pend))
                pend[k], pend[-1] = pend[-1], pend[k]
                v = pend.pop()
            else:
                scale = exploration * math.sqrt(math.log(count[v]))
                v = max(kids[v], key=lambda c: (reward[c] / count[c] + scale / math.sqrt(count[c]), -c))
            path.append(v)
        value = tree.value(v)
        for w in path:
            count[w] += 1
            reward[w] += value
    nodes, v = [], 0
    while kids[v]:
        v = max((c for c in kids[v] if count[c]), key=lambda c: (reward[c] / count[c], count[c], -c))
        nodes.append(v)
    return nodes, count


@settings(max_examples=200, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=14), iterations=st.integers(1, 60), seed=st.integers(0, 3))
def test_path_is_a_root_to_leaf_path(trajs, iterations, seed):
    tree, = build_trees(trajs)
    r = search(tree, iterations, 1.41, random.Random(seed))
    assert r.nodes, "a tree with steps has a non-empty path"
    assert tree.parent[r.nodes[0]] == 0
    for a, b in zip(r.nodes, r.nodes[1:], strict=False):
        assert tree.parent[b] == a
    assert tree.children[r.nodes[-1]] == []
    assert r.value == tree.value(r.nodes[-1])
    assert search(tree, iterations, 1.41, random.Random(seed)).nodes == r.nodes  # seeded


@settings(max_examples=150, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=12), iterations=st.integers(1, 80), seed=st.integers(0, 3))
def test_collapsed_search_equals_the_node_by_node_search(trajs, iterations, seed):
    tree, = build_trees(trajs)
    fast = search(tree, iterations, 1.41, random.Random(seed))
    nodes, count = uncompressed_search(tree, iterations, 1.41, random.Random(seed))
    assert fast.nodes == nodes
    assert all(fast.visits[v] == count[v] for v in range(len(tree)))


@st.composite
def one_clearly_best(draw):
    n = draw(st.integers(2, 10))
    seqs = draw(st.lists(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=5), min_size=n, max_size=n,
                         unique_by=tuple))
    # distinct leaves: no sequence may be a prefix of another
    seqs = [s for s in seqs if not any(o != s and o[: len(s)] == s for o in seqs)]
    best = draw(st.integers(0, len(seqs) - 1))
    scores = [1.0 if i == best else draw(st.floats(0.0, 0.4)) for i in range(len(seqs))]
    return [make_traj("t", s, sc) for s, sc in zip(seqs, scores, strict=True)], seqs[best]


@settings(max_examples=150, deadline=None)
@given(case=one_clearly_best(), seed=st.integers(0, 3))
def test_enough_iterations_find_the_clearly_best_trajectory(case, seed):
    trajs, best = case
    tree, = build_trees(trajs)
    r = search(tree, 3000, 1.41, random.Random(seed))
    assert [tree.action[v] for v in r.nodes] == list(best)
    assert r.value == 1.0


def test_chains_collapse_to_branch_points():
    tree, = build_trees([make_traj("t", ["a", "b", "c"], 1.0), make_traj("t", ["a", "b", "d", "e"], 0.0)])
    chains, kids = _compress(tree)
    assert [[tree.action[v] for v in ch] for ch in chains] == [["", "a", "b"], ["c"], ["d", "e"]]
    assert kids == [[1, 2], [], []]


def test_mcts_path_record_is_ready_for_sft():
    tree, = build_trees([make_traj("t", ["a", "b"], 1.0), make_traj("t", ["a", "c"], 0.0)])
    rec = PathRecord.model_validate(mcts_path(tree, 50, 1.41, seed=3))
    assert [s.action for s in rec.steps] == ["a", "b"]
    assert rec.steps[0].thought == "think 0" and rec.value == 1.0 and rec.iterations == 50
    assert rec.task_id == "t" and rec.instruction == "solve t"
