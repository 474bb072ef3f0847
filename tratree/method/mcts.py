"""Offline MCTS on a static trajectory tree (paper, eq. 7) and extraction of the path e*.

Pure and torch-free. Each iteration descends from the root: an unvisited child is taken
first (uniformly at random among the unvisited, from a seeded generator), otherwise the
child maximising UCB(v) = r_M(v)/c_M(v) + gamma * sqrt(ln C_M / c_M(v)), C_M being the
parent's count. The reached leaf's data value (mean score of its trajectories) is the
rollout value and is backed up along the path. After the iterations, e* follows the child
with the highest r_M/c_M from the root down to a leaf.

Chains of single-child nodes are collapsed before the search: every visit to the chain's
first node passes through all of it, so their statistics are identical and the search is
exactly the same as on the full tree, only cheaper.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import orjson

from tratree.method.tree import Tree, task_rng


@dataclass
class MCTSResult:
    """The extracted path (node ids below the root) and the search statistics."""

    nodes: list[int]
    value: float
    iterations: int
    visits: dict[int, int]
    reward: dict[int, float]


def _compress(tree: Tree) -> tuple[list[list[int]], list[list[int]]]:
    """Chains (tree node ids) and chain children of the collapsed tree; chain 0 holds the root."""
    kids = tree.children
    chains: list[list[int]] = []
    chain_kids: list[list[int]] = []
    stack = [(0, -1)]
    while stack:
        head, parent_chain = stack.pop()
        c = len(chains)
        chain = [head]
        while len(kids[chain[-1]]) == 1:
            chain.append(kids[chain[-1]][0])
        chains.append(chain)
        chain_kids.append([])
        if parent_chain >= 0:
            chain_kids[parent_chain].append(c)
        # reversed so children are numbered in the tree's order
        stack.extend((k, c) for k in reversed(kids[chain[-1]]))
    for ck in chain_kids:
        ck.sort(key=lambda k: chains[k][0])
    return chains, chain_kids


def search(tree: Tree, iterations: int = 100, exploration: float = 1.41, rng: random.Random | None = None) -> MCTSResult:
    """Run offline MCTS on one tree and extract e*."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    rng = rng or random.Random(0)
    chains, ckids = _compress(tree)
    n = len(chains)
    count = [0] * n
    reward = [0.0] * n
    leaf_value = [tree.value(ch[-1]) if not ckids[c] else 0.0 for c, ch in enumerate(chains)]
    unvisited = [list(k) for k in ckids]
    sqrt, log = math.sqrt, math.log
    if n > 1:
        for _ in range(iterations):
            u = 0
            path = [0]
            while ckids[u]:
                pending = unvisited[u]
                if pending:
                    k = rng.randrange(len(pending))
                    pending[k], pending[-1] = pending[-1], pending[k]
                    u = pending.pop()
                else:
                    scale = exploration * sqrt(log(count[u]))
                    best, best_ucb = -1, -math.inf
                    for k in ckids[u]:
                        ck = count[k]
                        ucb = reward[k] / ck + scale / sqrt(ck)
                        if ucb > best_ucb:
                            best, best_ucb = k, ucb
                    u = best
                path.append(u)
            value = leaf_value[u]
            for w in path:
                count[w] += 1
                reward[w] += value
    else:
        # no branch: the only path is e*, and its statistics are its value every time
        count[0], reward[0] = iterations, iterations * leaf_value[0]
    u = 0
    nodes = list(chains[0][1:])
    while ckids[u]:
        u = max((k for k in ckids[u] if count[k]), key=lambda k: (reward[k] / count[k], count[k], -k))
        nodes.extend(chains[u])
    visits = {v: count[c] for c, ch in enumerate(chains) for v in ch}
    rewards = {v: reward[c] for c, ch in enumerate(chains) for v in ch}
    return MCTSResult(nodes=nodes, value=leaf_value[u], iterations=iterations, visits=visits, reward=rewards)


def mcts_path(tree: Tree, iterations: int = 100, exploration: float = 1.41, seed: int = 0) -> dict[str, Any]:
    """The e* path of one tree, seeded by (seed, task): a path record (the fields of
    ``tratree.records.formats.PathRecord``) as plain data, so the `mcts` command needs no pydantic."""
    result = search(tree, iterations, exploration, task_rng(seed, tree.task_id))
    return {
        "task_id": tree.task_id,
        "instruction": tree.instruction,
        "steps": [{"observation": tree.observation[v], "thought": tree.thought[v], "action": tree.action[v]}
                  for v in result.nodes],
        "value": result.value,
        "nodes": result.nodes,
        "iterations": result.iterations,
    }


def path_line(path: dict[str, Any]) -> str:
    """One JSONL line of a path record (the bytes pydantic would write for a PathRecord)."""
    return orjson.dumps(path).decode()
