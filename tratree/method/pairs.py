"""Preference pairs: TreeDPO pairs at divergence points of trajectory trees (paper, Sec. 3.2), the
unstructured baseline of Table 5 (random pairs of whole explored trajectories) and ETO's pairs.

Pure and torch-free.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from tratree.method.tree import Tree, differ, task_rng
from tratree.records.formats import Pair, Step, Trajectory

Continuation = Literal["leaf", "first-step"]

# Every pair of 6 children (the paper's M = 6 trajectories per task): the cap binds only where a
# node has more children than that, e.g. a root with thousands of one-step episodes.
MAX_PAIRS_PER_NODE = 15


def pairs_of_trees(
    trees: Iterable[Tree],
    min_gap: float = 0.0,
    continuation: Continuation = "leaf",
    max_pairs: int | None = None,
    max_per_node: int | None = MAX_PAIRS_PER_NODE,
) -> Iterator[Pair]:
    """The TreeDPO pairs of many trees, tree by tree."""
    for tree in trees:
        yield from tree_pairs(tree, min_gap, continuation, max_pairs, max_per_node)


def random_pairs_like_trees(
    trees: Iterable[Tree],
    trajectories: Iterable[Trajectory],
    min_gap: float = 0.0,
    max_pairs: int | None = None,
    max_per_node: int | None = MAX_PAIRS_PER_NODE,
    seed: int = 0,
) -> list[Pair]:
    """Table 5's random pairs, as many per task as its tree gives TreeDPO pairs with these settings."""
    counts = {t.task_id: count_tree_pairs(t, min_gap, max_pairs, max_per_node) for t in trees}
    return list(random_pairs_of_tasks(trajectories, counts, min_gap, seed))


def random_pairs_of_tasks(
    trajectories: Iterable[Trajectory],
    counts: dict[str, int],
    min_gap: float = 0.0,
    seed: int = 0,
) -> Iterator[Pair]:
    """Table 5's random pairs for every task of ``counts``: ``counts[task]`` pairs (the TreeDPO pairs its
    tree gives, so both arms see as many comparisons) of its explored trajectories, seeded per task so
    the result does not depend on the order of the tasks."""
    by_task: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_task.setdefault(t.task_id, []).append(t)
    for task, trajs in by_task.items():
        yield from random_pairs(trajs, task_rng(seed, task), counts.get(task, 0), min_gap)


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


def _actions(steps: Iterable[Step]) -> tuple[str, ...]:
    return tuple(s.action for s in steps)


def random_pairs(trajectories: Sequence[Trajectory], rng: random.Random, count: int, min_gap: float = 0.0) -> list[Pair]:
    """Random pairs of one task's whole explored trajectories, as they were generated (Table 5's ablation:
    "two complete weak trajectories … based solely on reward … [that] do not share a common prefix").

    Each distinct action sequence counts once (its first sample, with that sample's own thoughts and
    observations). Of the unordered pairs whose scores differ by more than ``min_gap``, ``count`` are
    drawn uniformly without replacement, first among pairs whose first actions differ (no shared prefix
    at all), then, if too few, among the rest; fewer when fewer exist. The better-scored side is chosen;
    the prefix is empty.
    """
    distinct: dict[tuple[str, ...], Trajectory] = {}
    for t in trajectories:
        if t.steps:
            distinct.setdefault(_actions(t.steps), t)
    trajs = list(distinct.values())
    if count <= 0 or len(trajs) < 2:
        return []
    apart, shared = [], []
    for i, a in enumerate(trajs):
        for b in trajs[i + 1:]:
            if differ(max(a.score, b.score), min(a.score, b.score), min_gap):
                (apart if a.steps[0].action != b.steps[0].action else shared).append((a, b))
    picked = rng.sample(apart, min(count, len(apart)))
    picked += rng.sample(shared, min(count - len(picked), len(shared)))
    out = []
    for a, b in picked:
        good, bad = (a, b) if a.score > b.score else (b, a)
        out.append(Pair.model_construct(
            task_id=good.task_id, instruction=good.instruction, prefix=[], chosen=list(good.steps),
            rejected=list(bad.steps), chosen_value=good.score, rejected_value=bad.score, kind="random", node=None,
        ))
    return out


def coinciding(drawn: Iterable[Pair], tree: Iterable[Pair]) -> int:
    """How many random pairs compare the same two action sequences as some tree pair of their task
    (chosen and rejected alike): where they do, both arms learn the same comparison."""
    seen = {(p.task_id, _actions([*p.prefix, *p.chosen]), _actions([*p.prefix, *p.rejected])) for p in tree}
    return sum((p.task_id, _actions([*p.prefix, *p.chosen]), _actions([*p.prefix, *p.rejected])) in seen
               for p in drawn)


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
