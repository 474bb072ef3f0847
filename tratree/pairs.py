"""Preference pairs from trajectory trees: TreeDPO pairs at divergence points (paper, Sec. 3.2)
and the unstructured baseline of Table 5 (random pairs of whole trajectories).

Pure and torch-free.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Iterator
from typing import Literal

from tratree.formats import Pair, Step, Trajectory
from tratree.tree import Tree, differ, task_rng

Continuation = Literal["leaf", "first-step"]
PairMode = Literal["tree", "random"]

# Every pair of 6 children (the paper's M = 6 trajectories per task): the cap binds only where a
# node has more children than that, e.g. a root with thousands of one-step episodes.
MAX_PAIRS_PER_NODE = 15


def pairs_of_trees(
    trees: Iterable[Tree],
    mode: PairMode = "tree",
    min_gap: float = 0.0,
    continuation: Continuation = "leaf",
    max_pairs: int | None = None,
    seed: int = 0,
    max_per_node: int | None = MAX_PAIRS_PER_NODE,
) -> Iterator[Pair]:
    """The pairs of many trees, tree by tree: TreeDPO pairs, or as many random pairs per task
    as TreeDPO gives it (seeded per task, so the result does not depend on the trees' order)."""
    for tree in trees:
        if mode == "tree":
            yield from tree_pairs(tree, min_gap, continuation, max_pairs, max_per_node)
        else:
            count = count_tree_pairs(tree, min_gap, max_pairs, max_per_node)
            yield from random_pairs(tree, task_rng(seed, tree.task_id), count, min_gap)


def _node_pairs(vals: list[float], min_gap: float, cap: int | None) -> list[tuple[float, int, int]]:
    """(gap, better, worse) positions of the children pairs wider than ``min_gap``, in children order;
    past ``cap`` pairs, the ``cap`` widest (ties by position), found without listing every pair."""
    n = len(vals)
    if cap is None or n * (n - 1) // 2 <= cap:
        out = []
        for i in range(n):
            for j in range(i + 1, n):
                if differ(vals[i], vals[j], min_gap):
                    out.append((vals[i] - vals[j], i, j))
                elif differ(vals[j], vals[i], min_gap):
                    out.append((vals[j] - vals[i], j, i))
        return out
    # children by value, best first: the widest gaps pair the front with the back, so walk the
    # (front, back) grid from its widest corner with a heap
    order = sorted(range(n), key=lambda k: (-vals[k], k))
    heap = [(-(vals[order[0]] - vals[order[-1]]), 0, n - 1)]
    seen = {(0, n - 1)}
    picked = []
    while heap and len(picked) < cap:
        neg, a, b = heapq.heappop(heap)
        if not differ(vals[order[a]], vals[order[b]], min_gap):
            break
        picked.append((-neg, order[a], order[b]))
        for na, nb in ((a + 1, b), (a, b - 1)):
            if na < nb and (na, nb) not in seen:
                seen.add((na, nb))
                heapq.heappush(heap, (-(vals[order[na]] - vals[order[nb]]), na, nb))
    return sorted(picked, key=lambda t: (min(t[1], t[2]), max(t[1], t[2])))


def _divergences(tree: Tree, min_gap: float, max_pairs: int | None,
                 max_per_node: int | None = MAX_PAIRS_PER_NODE) -> list[tuple[float, int, int, int]]:
    """(gap, divergence node, better child, worse child) of every sibling pair wider than ``min_gap``
    (at most ``max_per_node`` per node, the widest)."""
    found: list[tuple[float, int, int, int]] = []
    for v, cs in enumerate(tree.children):
        if len(cs) < 2:
            continue
        for gap, good, bad in _node_pairs([tree.value(c) for c in cs], min_gap, max_per_node):
            found.append((gap, v, cs[good], cs[bad]))
    if max_pairs is not None and len(found) > max_pairs:
        # widest gaps first; ties keep tree order, so the cap is deterministic
        order = sorted(range(len(found)), key=lambda k: (-found[k][0], k))[:max_pairs]
        found = [found[k] for k in sorted(order)]
    return found


def count_tree_pairs(tree: Tree, min_gap: float = 0.0, max_pairs: int | None = None,
                     max_per_node: int | None = MAX_PAIRS_PER_NODE) -> int:
    """How many TreeDPO pairs ``tree_pairs`` gives for this tree with these settings."""
    return len(_divergences(tree, min_gap, max_pairs, max_per_node))


def tree_pairs(
    tree: Tree,
    min_gap: float = 0.0,
    continuation: Continuation = "leaf",
    max_pairs: int | None = None,
    max_per_node: int | None = MAX_PAIRS_PER_NODE,
) -> list[Pair]:
    """TreeDPO pairs of one tree.

    At every divergence point (a node, the root included, with >= 2 children), each
    unordered pair of children whose values differ by more than ``min_gap`` gives one
    pair: the shared prefix h (root to the divergence point), the better child's
    continuation as chosen and the worse one's as rejected. ``max_per_node`` keeps a node's widest
    pairs (a root with thousands of children gives that many, not millions), and ``max_pairs`` the
    tree's widest.

    With ``leaf``, the chosen continuation runs from the better child to the end of its
    best-scoring explored trajectory and the rejected one from the worse child to the end
    of its worst-scoring one, so the rejected side is a real failure under the worse branch
    and never the best path of the tree. Since best >= value(better) > value(worse) >= worst,
    the trajectories that took prefix+chosen always scored higher than those that took
    prefix+rejected; ``chosen_value``/``rejected_value`` are those trajectories' mean scores.
    With ``first-step`` each side is the child alone and the values are the children's.
    """
    found = _divergences(tree, min_gap, max_pairs, max_per_node)
    # Steps and best descents are shared by many pairs: build each once.
    step_cache: dict[int, Step] = {}
    descent_cache: dict[tuple[int, bool], list[int]] = {}

    def steps(nodes: list[int]) -> list[Step]:
        out = []
        for v in nodes:
            s = step_cache.get(v)
            if s is None:
                s = step_cache[v] = tree.step(v)
            out.append(s)
        return out

    def cont(child: int, best: bool) -> list[int]:
        if continuation == "first-step":
            return [child]
        d = descent_cache.get((child, best))
        if d is None:
            d = descent_cache[(child, best)] = tree.extreme_end(child, best)
        return d

    def value(nodes: list[int]) -> float:
        return tree.value(nodes[0]) if continuation == "first-step" else tree.end_value(nodes[-1])

    prefixes: dict[int, list[Step]] = {}
    out = []
    for _, v, good, bad in found:
        prefix = prefixes.get(v)
        if prefix is None:
            prefix = prefixes[v] = steps(tree.path_to(v))
        chosen, rejected = cont(good, True), cont(bad, False)
        out.append(
            Pair.model_construct(
                task_id=tree.task_id,
                instruction=tree.instruction,
                prefix=prefix,
                chosen=steps(chosen),
                rejected=steps(rejected),
                chosen_value=value(chosen),
                rejected_value=value(rejected),
                kind="tree",
                node=v,
            )
        )
    return out


def random_pairs(tree: Tree, rng: random.Random, count: int, min_gap: float = 0.0) -> list[Pair]:
    """Random pairs of whole explored trajectories of the tree's task (the baseline of Table 5).

    The rule that keeps the baseline comparable with TreeDPO: ``count`` pairs per task (the
    number of TreeDPO pairs the same tree gives), drawn uniformly without replacement from all
    unordered pairs of distinct trajectories (root-to-end paths; a path's score is the mean of
    the episodes that ended there) whose scores differ by more than ``min_gap``; fewer when
    fewer such pairs exist. Each pair is two whole trajectories from the root (empty prefix),
    labelled by score, with no regard to where they diverge.
    """
    ends = [v for v in range(1, len(tree)) if tree.ends[v]]
    score = {v: tree.end_value(v) for v in ends}
    picked: list[tuple[int, int]] = []
    if count > 0 and len(ends) >= 2:
        total = len(ends) * (len(ends) - 1) // 2
        if total <= max(4 * count, 50_000):
            candidates = [(a, b) for i, a in enumerate(ends) for b in ends[i + 1 :]
                          if differ(max(score[a], score[b]), min(score[a], score[b]), min_gap)]
            picked = rng.sample(candidates, min(count, len(candidates)))
        else:
            # too many trajectories to list every pair: draw pairs until enough distinct ones
            seen: set[tuple[int, int]] = set()
            for _ in range(20 * count):
                a, b = rng.sample(ends, 2)
                key = (min(a, b), max(a, b))
                if key not in seen and differ(max(score[a], score[b]), min(score[a], score[b]), min_gap):
                    seen.add(key)
                    picked.append(key)
                    if len(picked) == count:
                        break
    out = []
    for a, b in picked:
        good, bad = (a, b) if score[a] > score[b] else (b, a)
        out.append(Pair.model_construct(
            task_id=tree.task_id, instruction=tree.instruction, prefix=[],
            chosen=tree.steps(tree.path_to(good)), rejected=tree.steps(tree.path_to(bad)),
            chosen_value=score[good], rejected_value=score[bad], kind="random", node=None,
        ))
    return out


def expert_pairs(expert: list[Trajectory], explored: list[Trajectory], mode: Literal["eto", "ceiling"]) -> list[Pair]:
    """Whole-trajectory pairs of each task's expert run against the model's own exploration.

    As in ETO (Song et al., 2024), one own trajectory per task (its first) meets the expert's.
    ``eto``: whichever of the two scored higher is chosen; ties give no pair.
    ``ceiling``: the expert trajectory is always chosen (identical trajectories excepted).
    """
    gold = {t.task_id: t for t in expert}
    out = []
    seen: set[str] = set()
    for own in explored:
        ref = gold.get(own.task_id)
        if ref is None or own.task_id in seen:
            continue
        seen.add(own.task_id)
        if [s.action for s in own.steps] == [s.action for s in ref.steps]:
            continue
        if mode == "ceiling":
            good, bad = ref, own
        elif ref.score != own.score:
            good, bad = (ref, own) if ref.score > own.score else (own, ref)
        else:
            continue
        out.append(Pair.model_construct(
            task_id=own.task_id, instruction=ref.instruction, prefix=[], chosen=good.steps, rejected=bad.steps,
            chosen_value=good.score, rejected_value=bad.score, kind=mode, node=None,
        ))
    return out
