"""TreeDPO pairs at divergence points, and the random-pair baseline."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_traj
from tests.strategies import trajectories
from tratree.method.pairs import (
    coinciding,
    count_tree_pairs,
    pairs_of_trees,
    random_pairs,
    random_pairs_of_tasks,
    tree_pairs,
)
from tratree.method.tree import build_trees, differ


def step_tuple(steps):
    return [(s.observation, s.thought, s.action) for s in steps]


def apart(a, b, gap):
    """Values further apart than ``gap``; closer than rounding noise is a tie (tratree.method.tree.differ)."""
    return differ(max(a, b), min(a, b), gap)


def brute_force_count(tree, gap):
    n = 0
    for cs in tree.children:
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                n += apart(tree.value(cs[i]), tree.value(cs[j]), gap)
    return n


def key_of(steps):
    return [(s.observation, s.action) for s in steps]


def mean_score_of(trajs, seq, whole):
    """Mean score of the trajectories that took exactly ``seq`` (whole) or start with it."""
    hits = [t.score for t in trajs if (key_of(t.steps) == seq if whole else key_of(t.steps)[: len(seq)] == seq)]
    assert hits, "a pair names a sequence no explored trajectory took"
    return sum(hits) / len(hits)


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
    # the rejected continuation is the worst trajectory under 'open', never its best (open > take > cook)
    assert [s.action for s in root.rejected] == ["open", "take", "go"]
    assert (root.chosen_value, root.rejected_value) == (0.5, 0.0)
    deep = by_node[2]
    assert [s.action for s in deep.prefix] == ["open", "take"]
    assert (deep.chosen[0].action, deep.rejected[0].action) == ("cook", "go")
    assert (deep.chosen_value, deep.rejected_value) == (1.0, 0.0)
    first = tree_pairs(tree, continuation="first-step")
    assert all(len(p.chosen) == len(p.rejected) == 1 for p in first)
    assert [s.action for s in by_node[1].chosen] == ["take", "cook"]
    assert [s.action for s in by_node[1].rejected] == ["go"]


def test_the_rejected_side_is_never_the_best_path_of_the_tree():
    # a->b scores 0.6 twice; c->d 1.0; c->e 0.0. 'a' (0.6) beats 'c' (0.5) at the root, but the
    # rejected side under 'c' must be the failure c->e, not c->d (the path MCTS returns as e*).
    trajs = [make_traj("t", ["a", "b"], 0.6), make_traj("t", ["a", "b"], 0.6),
             make_traj("t", ["c", "d"], 1.0), make_traj("t", ["c", "e"], 0.0)]
    tree, = build_trees(trajs)
    root = next(p for p in tree_pairs(tree) if p.node == 0)
    assert [s.action for s in root.chosen] == ["a", "b"]
    assert [s.action for s in root.rejected] == ["c", "e"]
    assert (root.chosen_value, root.rejected_value) == (0.6, 0.0)


@settings(max_examples=300, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=14), gap=st.sampled_from([0.0, 0.1, 0.3]),
       continuation=st.sampled_from(["leaf", "first-step"]))
def test_the_trajectories_behind_chosen_score_higher_than_those_behind_rejected(trajs, gap, continuation):
    tree, = build_trees(trajs)
    for p in tree_pairs(tree, gap, continuation):
        whole = continuation == "leaf"
        good = mean_score_of(trajs, key_of(p.prefix) + key_of(p.chosen), whole)
        bad = mean_score_of(trajs, key_of(p.prefix) + key_of(p.rejected), whole)
        assert good > bad
        assert abs(good - p.chosen_value) < 1e-9 and abs(bad - p.rejected_value) < 1e-9


def test_min_gap_and_cap():
    tree, = build_trees([make_traj("t", [a], s) for a, s in [("a", 1.0), ("b", 0.9), ("c", 0.2), ("d", 0.0)]])
    assert len(tree_pairs(tree)) == 6
    assert len(tree_pairs(tree, min_gap=0.5)) == 4  # a-c, a-d, b-c, b-d
    capped = tree_pairs(tree, max_pairs=2)
    # the widest gaps survive: a-d (1.0) and b-d (0.9)
    assert [(p.chosen[0].action, p.rejected[0].action) for p in capped] == [("a", "d"), ("b", "d")]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0]), min_size=2, max_size=30),
       cap=st.integers(1, 40), gap=st.sampled_from([0.0, 0.2]))
def test_a_nodes_cap_keeps_its_widest_pairs_as_listing_every_pair_would(values, cap, gap):
    from tratree.method.pairs import _node_pairs

    every = _node_pairs(values, gap, None)
    expect = sorted(sorted(every, key=lambda t: -t[0])[:cap], key=lambda t: (min(t[1:]), max(t[1:])))
    got = _node_pairs(values, gap, cap)
    assert len(got) == min(cap, len(every))
    # the same gaps (which of equal-gap pairs is kept may differ), each a real pair, better first
    assert sorted(g for g, _, _ in got) == sorted(g for g, _, _ in expect)
    assert all(values[a] - values[b] == g > gap for g, a, b in got) and len({(a, b) for _, a, b in got}) == len(got)


def test_a_root_with_a_hundred_thousand_children_gives_its_widest_pairs_not_five_billion():
    trajs = [make_traj("t", [f"a{i}"], (i % 11) / 10) for i in range(100_000)]
    tree, = build_trees(trajs)
    pairs = tree_pairs(tree)  # listing every pair would take the machine's memory (issue 16)
    assert len(pairs) == 15 and all(p.chosen_value == 1.0 and p.rejected_value == 0.0 for p in pairs)


def test_no_pairs_without_a_score_difference():
    tree, = build_trees([make_traj("t", ["a"], 0.5), make_traj("t", ["b"], 0.5)])
    assert tree_pairs(tree) == []


@settings(max_examples=200, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=14), gap=st.sampled_from([0.0, 0.1, 0.3]),
       continuation=st.sampled_from(["leaf", "first-step"]))
def test_every_pair_is_a_divergence_with_the_gap_and_a_shared_prefix(trajs, gap, continuation):
    tree, = build_trees(trajs)
    pairs = tree_pairs(tree, gap, continuation, max_per_node=None)
    assert len(pairs) == brute_force_count(tree, gap)
    for p in pairs:
        assert p.chosen_value > p.rejected_value
        v = p.node
        assert len(tree.children[v]) >= 2
        assert step_tuple(p.prefix) == step_tuple(tree.steps(tree.path_to(v)))
        # chosen and rejected start at two different children of the divergence point
        kids = {(tree.observation[c], tree.thought[c], tree.action[c]): c for c in tree.children[v]}
        good, bad = kids[step_tuple(p.chosen[:1])[0]], kids[step_tuple(p.rejected[:1])[0]]
        assert tree.value(good) - tree.value(bad) > gap  # labelled by the children's values
        assert p.chosen[0] is not p.rejected[0]
        if continuation == "leaf":
            # both continuations end where an explored trajectory ended
            ended = {tuple(step_tuple(tree.steps(tree.path_to(v)))) for v in range(1, len(tree)) if tree.ends[v]}
            for cont in (p.chosen, p.rejected):
                assert tuple(step_tuple(p.prefix) + step_tuple(cont)) in ended


@settings(max_examples=150, deadline=None)
@given(trajs=trajectories(tasks=1, max_size=14), seed=st.integers(0, 5), count=st.integers(0, 8),
       gap=st.sampled_from([0.0, 0.2]))
def test_random_pairs_are_whole_explored_trajectories_as_generated(trajs, seed, count, gap):
    pairs = random_pairs(trajs, random.Random(seed), count, gap)
    assert pairs == random_pairs(trajs, random.Random(seed), count, gap)  # seeded
    # each side is one explored trajectory exactly as generated: its own thoughts and observations
    raw = {(tuple(step_tuple(t.steps)), t.score) for t in trajs}
    first_of = {}
    for t in trajs:
        first_of.setdefault(tuple(s.action for s in t.steps), tuple(step_tuple(t.steps)))
    used = set()
    for p in pairs:
        assert p.prefix == [] and p.kind == "random"
        assert p.chosen_value - p.rejected_value > gap
        for side, value in ((p.chosen, p.chosen_value), (p.rejected, p.rejected_value)):
            assert (tuple(step_tuple(side)), value) in raw
            assert first_of[tuple(s.action for s in side)] == tuple(step_tuple(side))  # a sequence's first sample
        used.add(frozenset([tuple(step_tuple(p.chosen)), tuple(step_tuple(p.rejected))]))
    assert len(used) == len(pairs)  # no pair twice
    distinct = {}
    for t in trajs:
        if t.steps:
            distinct.setdefault(tuple(s.action for s in t.steps), t.score)  # a sequence's first sample
    scores = list(distinct.values())
    possible = sum(apart(a, b, gap) for i, a in enumerate(scores) for b in scores[i + 1 :])
    assert len(pairs) == min(count, possible)
    # pairs that share no first step come first: a pair sharing one means no apart pair was left unpicked
    firsts = [(p.chosen[0].action == p.rejected[0].action) for p in pairs]
    apart_possible = sum(apart(distinct[a], distinct[b], gap) and a[0] != b[0]
                         for i, a in enumerate(distinct) for b in list(distinct)[i + 1 :])
    assert firsts.count(False) == min(len(pairs), apart_possible)


@settings(max_examples=100, deadline=None)
@given(trajs=trajectories(tasks=3, max_size=20), gap=st.sampled_from([0.0, 0.2]))
def test_random_pairs_match_treedpo_pair_counts_per_task(trajs, gap):
    trees = build_trees(trajs)
    tree_counts = Counter(p.task_id for p in pairs_of_trees(trees, gap))
    counts = {t.task_id: count_tree_pairs(t, gap) for t in trees}
    random_counts = Counter(p.task_id for p in random_pairs_of_tasks(trajs, counts, gap, seed=3))
    for task in counts:
        first = {}
        for t in trajs:
            if t.task_id == task and t.steps:
                first.setdefault(tuple(s.action for s in t.steps), t.score)
        scores = list(first.values())
        possible = sum(apart(a, b, gap) for i, a in enumerate(scores) for b in scores[i + 1 :])
        assert random_counts[task] == min(tree_counts[task], possible)


def test_random_pairs_keep_their_own_thoughts_and_differ_from_tree_pairs_where_they_can():
    """A hand-made task: 'open fridge' then milk (1.0) or egg (0.0); 'look' then egg (0.0) or milk (0.5).
    The tree gives three pairs (root, fridge, look); the three random pairs are the three of different
    score whose first actions differ, each side a sample as generated, and only one of them (fridge-milk
    vs look-egg: the root's tree pair) compares what a tree pair compares."""
    def traj(actions, score, thought):
        t = make_traj("t", actions, score)
        return t.model_copy(update={"steps": [s.model_copy(update={"thought": f"{thought} {i}"})
                                              for i, s in enumerate(t.steps)]})

    trajs = [traj(["open fridge", "take milk"], 1.0, "first"), traj(["open fridge", "take egg"], 0.0, "second"),
             traj(["look", "take egg"], 0.0, "third"), traj(["look", "take milk"], 0.5, "fourth"),
             traj(["open fridge", "take milk"], 1.0, "copy")]
    tree, = build_trees(trajs)
    tree_side = tree_pairs(tree)
    assert len(tree_side) == count_tree_pairs(tree) == 3
    random_side = random_pairs(trajs, random.Random(0), 3)
    compared = {(tuple(s.action for s in p.chosen), tuple(s.action for s in p.rejected)) for p in random_side}
    assert compared == {(("open fridge", "take milk"), ("look", "take egg")),
                        (("open fridge", "take milk"), ("look", "take milk")),
                        (("look", "take milk"), ("open fridge", "take egg"))}
    assert all(p.chosen[0].action != p.rejected[0].action for p in random_side)
    assert coinciding(random_side, tree_side) == 1 and coinciding(tree_side, tree_side) == 3
    # the explored sample's own thoughts, where the tree keeps the first sample's on the merged 'open fridge'
    (egg,) = [p.rejected for p in random_side if p.rejected[1].action == "take egg" and p.rejected[0].action != "look"]
    assert [s.thought for s in egg] == ["second 0", "second 1"]
    node_pair = next(p for p in tree_side if p.node != 0)
    assert [s.thought for s in node_pair.prefix] == ["first 0"]
    # a sequence sampled twice counts once, as its first sample
    assert all(s.thought.startswith("first") for p in random_side for s in p.chosen if s.action == "take milk"
               and p.chosen[0].action == "open fridge")


def test_equal_scores_are_a_tie_even_where_a_mean_rounds_differently():
    """Hypothesis found it: three episodes of score x through one child and one through its sibling give
    the values 3x/3 and x, which differ in the last bit; that is a tie, so no pair and no value gap."""
    from tratree.method.tree import informativeness

    x = 0.43971993756989136
    trajs = [make_traj("t", ["go", "go"], x), make_traj("t", ["go", "go"], x), make_traj("t", ["go", "take"], x),
             make_traj("t", ["go", "go", "go"], x)]
    tree, = build_trees(trajs)
    assert tree_pairs(tree, 0.0, "leaf") == [] and tree_pairs(tree, 0.0, "first-step") == []
    assert random_pairs(trajs, random.Random(0), 5) == []
    assert informativeness([tree])["divergence_points_with_value_gap"] == 0
