"""TreeDPO pairs at divergence points, and the random-pair baseline."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_traj
from tests.strategies import trajectories
from tratree.pairs import random_pairs, tree_pairs
from tratree.tree import build_trees


def step_tuple(steps):
    return [(s.observation, s.thought, s.action) for s in steps]


def brute_force_count(tree, gap):
    n = 0
    for cs in tree.children:
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                n += abs(tree.value(cs[i]) - tree.value(cs[j])) > gap
    return n


def test_pairs_of_a_small_tree():
    tree, = build_trees([
        make_traj("t", ["open", "take", "cook"], 1.0),
        make_traj("t", ["open", "take", "go"], 0.0),
        make_traj("t", ["open", "go"], 0.25),
        make_traj("t", ["go"], 0.5),
    ])
    pairs = tree_pairs(tree)
    # root: open (0.4167) vs go (0.5); after open: take (0.5) vs go (0.25); after take: cook (1) vs go (0)
    assert len(pairs) == 3
    by_node = {p.node: p for p in pairs}
    root = by_node[0]
    assert root.prefix == [] and root.chosen[0].action == "go" and root.rejected[0].action == "open"
    # the rejected continuation runs to a leaf along the best values: open > take > cook
    assert [s.action for s in root.rejected] == ["open", "take", "cook"]
    deep = by_node[2]
    assert [s.action for s in deep.prefix] == ["open", "take"]
    assert (deep.chosen[0].action, deep.rejected[0].action) == ("cook", "go")
    assert (deep.chosen_value, deep.rejected_value) == (1.0, 0.0)
    first = tree_pairs(tree, continuation="first-step")
    assert all(len(p.chosen) == len(p.rejected) == 1 for p in first)
    assert [s.action for s in by_node[1].chosen] == ["take", "cook"]


def test_min_gap_and_cap():
    tree, = build_trees([make_traj("t", [a], s) for a, s in [("a", 1.0), ("b", 0.9), ("c", 0.2), ("d", 0.0)]])
    assert len(tree_pairs(tree)) == 6
    assert len(tree_pairs(tree, min_gap=0.5)) == 4  # a-c, a-d, b-c, b-d
    capped = tree_pairs(tree, max_pairs=2)
    # the widest gaps survive: a-d (1.0) and b-d (0.9)
    assert [(p.chosen[0].action, p.rejected[0].action) for p in capped] == [("a", "d"), ("b", "d")]


def test_no_pairs_without_a_score_difference():
    tree, = build_trees([make_traj("t", ["a"], 0.5), make_traj("t", ["b"], 0.5)])
    assert tree_pairs(tree) == []


@settings(max_examples=200, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=14), gap=st.sampled_from([0.0, 0.1, 0.3]),
       continuation=st.sampled_from(["leaf", "first-step"]))
def test_every_pair_is_a_divergence_with_the_gap_and_a_shared_prefix(trajs, gap, continuation):
    tree, = build_trees(trajs)
    pairs = tree_pairs(tree, gap, continuation)
    assert len(pairs) == brute_force_count(tree, gap)
    for p in pairs:
        assert p.chosen_value - p.rejected_value > gap
        v = p.node
        assert len(tree.children[v]) >= 2
        assert step_tuple(p.prefix) == step_tuple(tree.steps(tree.path_to(v)))
        # chosen and rejected start at two different children of the divergence point
        kids = [(tree.observation[c], tree.thought[c], tree.action[c]) for c in tree.children[v]]
        assert step_tuple(p.chosen[:1])[0] in kids and step_tuple(p.rejected[:1])[0] in kids
        assert p.chosen[0] is not p.rejected[0]
        if continuation == "leaf":
            # both continuations end at leaves of the tree: the full sequences are root paths
            for cont in (p.chosen, p.rejected):
                full = step_tuple(p.prefix) + step_tuple(cont)
                leaf_paths = {
                    tuple(step_tuple(tree.steps(tree.path_to(leaf))))
                    for leaf in range(1, len(tree)) if not tree.children[leaf]
                }
                assert tuple(full) in leaf_paths


@settings(max_examples=150, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=14), seed=st.integers(0, 5))
def test_random_pairs_are_whole_trajectories_with_different_scores(trajs, seed):
    tree, = build_trees(trajs)
    pairs = random_pairs(tree, random.Random(seed))
    assert pairs == random_pairs(tree, random.Random(seed))  # seeded
    used = []
    # a whole trajectory, as the tree keeps it: the first trajectory's thoughts on merged nodes
    whole = {tuple(step_tuple(tree.steps(tree.path_to(v)))) for v in range(1, len(tree)) if tree.ends[v]}
    for p in pairs:
        assert p.prefix == [] and p.kind == "random"
        assert p.chosen_value > p.rejected_value
        assert tuple(step_tuple(p.chosen)) in whole and tuple(step_tuple(p.rejected)) in whole
        used += [tuple(step_tuple(p.chosen)), tuple(step_tuple(p.rejected))]
    assert len(used) == len(set(used))  # each trajectory in at most one pair
    distinct_scores = {round(tree.end_total[v] / tree.ends[v], 12) for v in range(1, len(tree)) if tree.ends[v]}
    if len(distinct_scores) >= 2:
        assert pairs
