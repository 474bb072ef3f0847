"""Preference pairs from trajectory trees: TreeDPO pairs at divergence points (paper, Sec. 3.2)
and the unstructured baseline of Table 5 (random pairs of whole trajectories).

Pure and torch-free.
"""

from __future__ import annotations

import random
from typing import Literal

from tratree.formats import Pair, Step, Trajectory
from tratree.tree import Tree

Continuation = Literal["leaf", "first-step"]


def tree_pairs(
    tree: Tree,
    min_gap: float = 0.0,
    continuation: Continuation = "leaf",
    max_pairs: int | None = None,
) -> list[Pair]:
    """TreeDPO pairs of one tree.

    At every divergence point (a node, the root included, with >= 2 children), each
    unordered pair of children whose values differ by more than ``min_gap`` gives one
    pair: the shared prefix h (root to the divergence point), the better child's
    continuation as chosen and the worse one's as rejected. A continuation is the child
    followed by the best-valued path below it (``leaf``) or the child alone
    (``first-step``). ``max_pairs`` keeps the pairs with the widest value gaps.
    """
    kids = tree.children
    found: list[tuple[float, int, int, int]] = []  # (gap, node, chosen, rejected)
    for v, cs in enumerate(kids):
        if len(cs) < 2:
            continue
        vals = [tree.value(c) for c in cs]
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                gap = vals[i] - vals[j]
                if gap > min_gap:
                    found.append((gap, v, cs[i], cs[j]))
                elif -gap > min_gap:
                    found.append((-gap, v, cs[j], cs[i]))
    if max_pairs is not None and len(found) > max_pairs:
        # widest gaps first; ties keep tree order, so the cap is deterministic
        order = sorted(range(len(found)), key=lambda k: (-found[k][0], k))[:max_pairs]
        found = [found[k] for k in sorted(order)]
    # Steps and best descents are shared by many pairs: build each once.
    step_cache: dict[int, Step] = {}
    descent_cache: dict[int, list[int]] = {}

    def steps(nodes: list[int]) -> list[Step]:
        out = []
        for v in nodes:
            s = step_cache.get(v)
            if s is None:
                s = step_cache[v] = tree.step(v)
            out.append(s)
        return out

    def cont(child: int) -> list[int]:
        if continuation == "first-step":
            return [child]
        d = descent_cache.get(child)
        if d is None:
            d = descent_cache[child] = tree.best_descent(child)
        return d

    prefixes: dict[int, list[Step]] = {}
    out = []
    for _, v, good, bad in found:
        prefix = prefixes.get(v)
        if prefix is None:
            prefix = prefixes[v] = steps(tree.path_to(v))
        out.append(
            Pair.model_construct(
                task_id=tree.task_id,
                instruction=tree.instruction,
                prefix=prefix,
                chosen=steps(cont(good)),
                rejected=steps(cont(bad)),
                chosen_value=tree.value(good),
                rejected_value=tree.value(bad),
                kind="tree",
                node=v,
            )
        )
    return out


def random_pairs(tree: Tree, rng: random.Random, max_pairs: int | None = None) -> list[Pair]:
    """Random pairs of whole trajectories of the tree's task with different scores (Table 5).

    Each distinct trajectory (a root-to-end path; its score is the mean of the episodes
    that ended there) is used in at most one pair: the trajectories are shuffled and each
    is matched with the first unmatched one of a different score.
    """
    ends = [v for v in range(1, len(tree)) if tree.ends[v]]
    rng.shuffle(ends)
    score = {v: tree.end_total[v] / tree.ends[v] for v in ends}
    waiting: list[int] = []
    matched: list[tuple[int, int]] = []
    for v in ends:
        partner = next((u for u in waiting if score[u] != score[v]), None)
        if partner is None:
            waiting.append(v)
            continue
        waiting.remove(partner)
        matched.append((v, partner) if score[v] > score[partner] else (partner, v))
        if max_pairs is not None and len(matched) >= max_pairs:
            break
    return [
        Pair.model_construct(
            task_id=tree.task_id,
            instruction=tree.instruction,
            prefix=[],
            chosen=tree.steps(tree.path_to(good)),
            rejected=tree.steps(tree.path_to(bad)),
            chosen_value=score[good],
            rejected_value=score[bad],
            kind="random",
            node=None,
        )
        for good, bad in matched
    ]


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
