"""Trajectory trees: a task's trajectories merged on shared prefixes (paper, Sec. 3.1).

Pure and torch-free. A node is an execution step (o_v, th_v, a_v); the root is the
instruction. A new step reuses a child of the current parent when the child has the same
action string and an observation whose cosine similarity with the new one is >= xi_sim
(the most similar such child); xi_sim = 1.0 compares observations exactly, up to the order of
their indented object lists (see ``state_key``), and needs no embedding model. Nodes are stored in flat arrays, one entry per node, so trees
of millions of nodes stay compact.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tratree.records.fast import TREE_FORMAT, iter_jsonl

if TYPE_CHECKING:
    from tratree.records.formats import Step, Trajectory, TreeRecord

# (texts) -> L2-normalised embedding matrix, one row per text (numpy array)
Embedder = Callable[[list[str]], Any]

# Node values are means (sum / count), so equal scores can differ in the last bits (3x/3 != x); a
# difference this small is a tie, never a preference.
VALUE_TOLERANCE = 1e-9


def differ(a: float, b: float, by: float = 0.0) -> bool:
    """Whether value ``a`` exceeds ``b`` by more than ``by`` plus rounding noise."""
    return a - b > by + VALUE_TOLERANCE


class Tree:
    """One task's trajectory tree. Node 0 is the root; a node's parent always precedes it."""

    __slots__ = (
        "_by_action",
        "_children",
        "_obs_row",
        "action",
        "end_total",
        "ends",
        "instruction",
        "observation",
        "parent",
        "similarity",
        "task_id",
        "thought",
        "total",
        "visits",
    )

    def __init__(self, task_id: str, instruction: str, similarity: float = 1.0) -> None:
        self.task_id = task_id
        self.instruction = instruction
        self.similarity = similarity
        self.parent: list[int] = [-1]
        self.observation: list[str] = [""]
        self.thought: list[str] = [""]
        self.action: list[str] = [""]
        self.visits: list[int] = [0]
        self.total: list[float] = [0.0]
        self.ends: list[int] = [0]
        self.end_total: list[float] = [0.0]
        self._children: list[list[int]] | None = None
        # (parent, action) -> child id, or list of child ids when several share the action
        self._by_action: dict[tuple[int, str], int | list[int]] | None = None
        self._obs_row: list[int] | None = None

    # --- building --------------------------------------------------------------------

    def _action_index(self) -> dict[tuple[int, str], int | list[int]]:
        if self._by_action is None:
            index: dict[tuple[int, str], int | list[int]] = {}
            for v in range(1, len(self.parent)):
                _index_add(index, (self.parent[v], self.action[v]), v)
            self._by_action = index
        return self._by_action

    def _new_node(self, parent: int, step: Step, index: dict) -> int:
        v = len(self.parent)
        self.parent.append(parent)
        self.observation.append(step.observation)
        self.thought.append(step.thought)
        self.action.append(step.action)
        self.visits.append(0)
        self.total.append(0.0)
        self.ends.append(0)
        self.end_total.append(0.0)
        _index_add(index, (parent, step.action), v)
        return v

    def insert(self, trajectory: Trajectory) -> None:
        """Add one trajectory by exact observation match (xi_sim = 1.0)."""
        if self._obs_row is not None:
            raise ValueError("this tree merges by similarity; insert through build_trees")
        index = self._action_index()
        self._children = None
        observation, visits, total = self.observation, self.visits, self.total
        score = trajectory.score
        visits[0] += 1
        total[0] += score
        node = 0
        for step in trajectory.steps:
            found = index.get((node, step.action))
            child = -1
            if found is not None:
                obs = step.observation
                key = state_key(obs)
                for c in (found,) if type(found) is int else found:
                    if observation[c] == obs or state_key(observation[c]) == key:
                        child = c
                        break
            if child < 0:
                child = self._new_node(node, step, index)
            visits[child] += 1
            total[child] += score
            node = child
        self.ends[node] += 1
        self.end_total[node] += score

    def _insert_similar(self, trajectory: Trajectory, rows: Sequence[int], emb: Any) -> None:
        """Add one trajectory, merging observations with cosine similarity >= xi_sim."""
        index = self._action_index()
        obs_row = self._obs_row
        assert obs_row is not None
        self._children = None
        score = trajectory.score
        self.visits[0] += 1
        self.total[0] += score
        node = 0
        for step, row in zip(trajectory.steps, rows, strict=True):
            found = index.get((node, step.action))
            child = -1
            if found is not None:
                cands = [found] if type(found) is int else found
                best_sim = -2.0
                for c in cands:
                    # identical rows are the same text: similarity 1, nothing can beat it
                    sim = 1.0 if obs_row[c] == row else float(emb[obs_row[c]] @ emb[row])
                    if sim > best_sim:
                        best_sim, best = sim, c
                if best_sim >= self.similarity:
                    child = best
            if child < 0:
                child = self._new_node(node, step, index)
                obs_row.append(row)
            self.visits[child] += 1
            self.total[child] += score
            node = child
        self.ends[node] += 1
        self.end_total[node] += score

    # --- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.parent)

    @property
    def children(self) -> list[list[int]]:
        """Child ids of every node, in insertion order."""
        if self._children is None:
            kids: list[list[int]] = [[] for _ in self.parent]
            parent = self.parent
            for v in range(1, len(parent)):
                kids[parent[v]].append(v)
            self._children = kids
        return self._children

    def value(self, v: int) -> float:
        """Mean score of the trajectories through node v."""
        n = self.visits[v]
        return self.total[v] / n if n else 0.0

    def depth(self) -> list[int]:
        """Depth of every node (root 0)."""
        d = [0] * len(self.parent)
        parent = self.parent
        for v in range(1, len(parent)):
            d[v] = d[parent[v]] + 1
        return d

    def path_to(self, v: int) -> list[int]:
        """Node ids from the root's child down to v (empty for the root)."""
        out = []
        while v > 0:
            out.append(v)
            v = self.parent[v]
        out.reverse()
        return out

    def step(self, v: int) -> Step:
        """The execution step of node v."""
        return self.steps((v,))[0]

    def steps(self, nodes: Iterable[int]) -> list[Step]:
        """The execution steps of a sequence of nodes."""
        from tratree.records.formats import Step

        return [Step.model_construct(observation=self.observation[v], thought=self.thought[v], action=self.action[v])
                for v in nodes]

    def end_value(self, v: int) -> float:
        """Mean score of the trajectories that end exactly at node v (0 when none does)."""
        n = self.ends[v]
        return self.end_total[v] / n if n else 0.0

    def extreme_end(self, v: int, best: bool) -> list[int]:
        """v and the path below it to the end of an explored trajectory: the best-scoring one
        (``best``) or the worst. Ties: the end more trajectories reached, then the earlier node.

        Unlike a greedy descent by node values, the result is a real trajectory's ending whose
        score bounds v's value: best >= value(v) >= worst.
        """
        kids = self.children
        sign = 1.0 if best else -1.0
        pick, key = v, None
        stack = [v]
        while stack:
            u = stack.pop()
            if self.ends[u]:
                k = (sign * self.end_value(u), self.ends[u], -u)
                if key is None or k > key:
                    pick, key = u, k
            stack.extend(kids[u])
        out = [pick]
        while pick != v:
            pick = self.parent[pick]
            out.append(pick)
        out.reverse()
        return out

    def stats(self) -> TreeStats:
        """Breadth, depth and divergence points of this tree."""
        # from child counts per parent (counted in C), not the children lists: `tree build` and
        # `tree stats` summarise 80,000-node files with this
        below = self.parent[1:]
        counts = Counter(below)
        inner = len(counts) - (0 in counts)  # nodes below the root with a child
        return TreeStats(
            trajectories=self.visits[0],
            nodes=len(below),
            leaves=len(below) - inner,
            max_depth=max(self.depth()),
            divergence_points=sum(1 for c in counts.values() if c >= 2),
        )

    # --- (de)serialisation -----------------------------------------------------------

    def to_json(self) -> str:
        """One JSONL line of this tree (see formats.TreeRecord)."""
        nodes = [
            {
                "parent": None if v == 0 else self.parent[v],
                "observation": self.observation[v],
                "thought": self.thought[v],
                "action": self.action[v],
                "visits": self.visits[v],
                "total": self.total[v],
                "ends": self.ends[v],
                "end_total": self.end_total[v],
            }
            for v in range(len(self.parent))
        ]
        rec = {
            "format": TREE_FORMAT,
            "task_id": self.task_id,
            "instruction": self.instruction,
            "similarity": self.similarity,
            "nodes": nodes,
        }
        return orjson.dumps(rec).decode()

    @classmethod
    def from_record(cls, rec: TreeRecord) -> Tree:
        """A tree from a validated record; its visit counts must add up."""
        tree = cls(rec.task_id, rec.instruction, rec.similarity)
        tree.parent = [-1] + [nd.parent for nd in rec.nodes[1:]]  # type: ignore[misc]
        tree.observation = [nd.observation for nd in rec.nodes]
        tree.thought = [nd.thought for nd in rec.nodes]
        tree.action = [nd.action for nd in rec.nodes]
        tree.visits = [nd.visits for nd in rec.nodes]
        tree.total = [nd.total for nd in rec.nodes]
        tree.ends = [nd.ends for nd in rec.nodes]
        tree.end_total = [nd.end_total for nd in rec.nodes]
        tree.check_counts()
        return tree

    def check_counts(self) -> None:
        """ValueError unless every node's visits are its ends plus its children's visits, and its
        total at most its visits."""
        through = list(self.ends)
        for v in range(len(self.parent) - 1, 0, -1):
            through[self.parent[v]] += through[v]
        for v in range(len(self.parent)):
            if through[v] != self.visits[v]:
                raise ValueError(f"nodes[{v}].visits ({self.visits[v]}) is not its ends plus its children's visits ({through[v]})")
            if self.total[v] > self.visits[v] + 1e-9:
                raise ValueError(f"nodes[{v}].total exceeds its visits (scores are at most 1)")


@functools.lru_cache(maxsize=1 << 16)
def state_key(observation: str) -> str:
    """What exact merging compares: the observation with every indented list put in a canonical order.

    Environments list a room's objects in an order that can change from one reset (or JVM) to
    the next, so the same state reads differently; each item keeps the lines indented below it.
    The tree stores the raw text of the first trajectory; only the comparison is canonical.
    """
    if "\n\t" not in observation and "\n  " not in observation:
        return observation
    return "\n".join(_canonical(observation.split("\n")))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip("\t "))


def _canonical(lines: list[str]) -> list[str]:
    """Lines with each run of sibling items (same indentation, with their deeper lines) sorted."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        level = _indent(lines[i])
        if level == 0:
            out.append(lines[i])
            i += 1
            continue
        items: list[list[str]] = []
        while i < len(lines) and _indent(lines[i]) >= level and lines[i].strip():
            if _indent(lines[i]) == level:
                items.append([lines[i]])
            else:
                items[-1].append(lines[i])
            i += 1
        units = ["\n".join([item[0], *_canonical(item[1:])]) for item in items]
        out.extend(sorted(units))
        if i < len(lines) and _indent(lines[i]) > 0 and not lines[i].strip():
            out.append(lines[i])
            i += 1
    return out


def _index_add(index: dict, key: tuple[int, str], v: int) -> None:
    found = index.get(key)
    if found is None:
        index[key] = v
    elif type(found) is int:
        index[key] = [found, v]
    else:
        found.append(v)


@dataclass(frozen=True)
class TreeStats:
    trajectories: int
    nodes: int
    leaves: int
    max_depth: int
    divergence_points: int


def summarize(trees: Iterable[Tree]) -> dict[str, int]:
    """The `tratree tree stats --json` summary over many trees."""
    out = {"trees": 0, "trajectories": 0, "nodes": 0, "leaves": 0, "max_depth": 0, "divergence_points": 0}
    for tree in trees:
        s = tree.stats()
        out["trees"] += 1
        out["trajectories"] += s.trajectories
        out["nodes"] += s.nodes
        out["leaves"] += s.leaves
        out["max_depth"] = max(out["max_depth"], s.max_depth)
        out["divergence_points"] += s.divergence_points
    return out


def informativeness(trees: Iterable[Tree]) -> dict[str, float | int]:
    """How much the trees can teach (the paper's argument for failure trajectories): divergence
    points, how many of them separate children of different value (a TreeDPO pair needs a gap),
    the mean value spread (best child minus worst) there, and the tasks with at least one."""
    tasks = informative_tasks = points = informative = 0
    spread = 0.0
    for tree in trees:
        tasks += 1
        found = False
        for kids in tree.children:
            if len(kids) < 2:
                continue
            values = [tree.value(c) for c in kids]
            gap = max(values) - min(values)
            points += 1
            spread += gap
            if differ(max(values), min(values)):
                informative += 1
                found = True
        informative_tasks += found
    return {"tasks": tasks, "divergence_points": points, "divergence_points_with_value_gap": informative,
            "mean_value_spread": spread / points if points else 0.0, "tasks_with_value_gap": informative_tasks}


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Building allocates millions of small acyclic objects; the cyclic collector would
    # rescan the growing heap again and again for nothing (measured: 1.6x slower at 100k).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TreeBuilder:
    """Merges trajectories into one tree per task, incrementally (feed it in chunks).

    With ``similarity < 1`` an ``embed`` function is required; each call to ``add_all``
    embeds the observations it has not seen before, in one batched call.
    """

    def __init__(self, similarity: float = 1.0, embed: Embedder | None = None) -> None:
        if not 0.0 < similarity <= 1.0:
            raise ValueError("similarity must be in (0, 1]")
        if similarity < 1.0 and embed is None:
            raise ValueError("similarity below 1.0 needs an embedding function")
        self.similarity = similarity
        self._embed = embed
        self._trees: dict[str, Tree] = {}
        self._rows: dict[str, int] = {}
        self._emb: Any = None

    def _tree(self, traj: Trajectory) -> Tree:
        tree = self._trees.get(traj.task_id)
        if tree is None:
            tree = self._trees[traj.task_id] = Tree(traj.task_id, traj.instruction, self.similarity)
            if self.similarity < 1.0:
                tree._obs_row = [-1]
        return tree

    def add_all(self, trajectories: Iterable[Trajectory], on_trajectory: Callable[[], None] | None = None) -> None:
        """Insert trajectories in order."""
        with _gc_paused():
            if self.similarity >= 1.0:
                for traj in trajectories:
                    self._tree(traj).insert(traj)
                    if on_trajectory:
                        on_trajectory()
                return
            buffered = list(trajectories)
            self._embed_new(buffered)
            rows = self._rows
            for traj in buffered:
                self._tree(traj)._insert_similar(traj, [rows[st.observation] for st in traj.steps], self._emb)
                if on_trajectory:
                    on_trajectory()

    def _embed_new(self, trajectories: list[Trajectory]) -> None:
        new: dict[str, None] = {}
        for traj in trajectories:
            for st in traj.steps:
                if st.observation not in self._rows:
                    new[st.observation] = None
        if not new:
            return
        import numpy as np

        assert self._embed is not None
        vectors = np.asarray(self._embed(list(new)), dtype=np.float32)
        for text in new:
            self._rows[text] = len(self._rows)
        self._emb = vectors if self._emb is None else np.vstack([self._emb, vectors])

    def trees(self) -> list[Tree]:
        """The trees so far, in order of each task's first appearance."""
        return list(self._trees.values())


def build_trees(
    trajectories: Iterable[Trajectory],
    similarity: float = 1.0,
    embed: Embedder | None = None,
    on_trajectory: Callable[[], None] | None = None,
) -> list[Tree]:
    """Merge trajectories into one tree per task, in order of each task's first appearance."""
    builder = TreeBuilder(similarity, embed)
    builder.add_all(trajectories, on_trajectory)
    return builder.trees()


_TREE_KEYS = frozenset(("format", "task_id", "instruction", "similarity", "nodes"))
_NODE_KEYS = frozenset(("parent", "observation", "thought", "action", "visits", "total", "ends", "end_total"))


def _fast_tree(d: Any) -> Tree | None:
    """The tree of an already parsed line when it is plainly valid (exact types); None leaves the
    line to pydantic. Its counts are checked as ``Tree.from_record`` checks them."""
    if type(d) is not dict or not d.keys() <= _TREE_KEYS or d.get("format", TREE_FORMAT) != TREE_FORMAT:
        return None
    task, instruction, sim, nodes = d.get("task_id"), d.get("instruction"), d.get("similarity"), d.get("nodes")
    if type(task) is not str or not task or type(instruction) is not str or type(sim) not in (float, int) \
            or not 0.0 < sim <= 1.0 or type(nodes) is not list or not nodes:
        return None
    tree = Tree(task, instruction, float(sim))
    parent, obs, thought, action, visits, total, ends, end_total = [], [], [], [], [], [], [], []
    for i, nd in enumerate(nodes):
        if type(nd) is not dict or not nd.keys() <= _NODE_KEYS:
            return None
        par = nd.get("parent", -2)
        if (i == 0 and par is not None) or (i > 0 and (type(par) is not int or not 0 <= par < i)):
            return None
        o, t, a = nd.get("observation", ""), nd.get("thought", ""), nd.get("action", "")
        v, tot, e, et = nd.get("visits"), nd.get("total"), nd.get("ends", 0), nd.get("end_total", 0.0)
        if type(o) is not str or type(t) is not str or type(a) is not str or type(v) is not int or v < 0 \
                or type(e) is not int or e < 0 or type(tot) not in (float, int) or not tot >= 0.0 \
                or type(et) not in (float, int) or not et >= 0.0:
            return None
        parent.append(-1 if par is None else par)
        obs.append(o)
        thought.append(t)
        action.append(a)
        visits.append(v)
        total.append(float(tot))
        ends.append(e)
        end_total.append(float(et))
    tree.parent, tree.observation, tree.thought, tree.action = parent, obs, thought, action
    tree.visits, tree.total, tree.ends, tree.end_total = visits, total, ends, end_total
    tree.check_counts()
    return tree


def _tree_record() -> type[TreeRecord]:
    from tratree.records.formats import TreeRecord

    return TreeRecord


def read_trees(path: str | Path) -> list[Tree]:
    """Trees from a trees JSONL file; a tree whose counts do not add up is a FormatError."""
    return list(iter_jsonl(path, _tree_record, Tree.from_record, fast=_fast_tree))


def task_rng(seed: int, task_id: str) -> random.Random:
    """A generator seeded by (seed, task): results do not depend on the order of the trees."""
    return random.Random(f"{seed}:{task_id}")
