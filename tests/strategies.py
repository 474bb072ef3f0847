"""Hypothesis strategies: trajectory sets of one or more tasks in the toy environment."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.conftest import make_traj

ACTIONS = ["go", "take", "open", "cook"]
scores = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) | st.floats(0.0, 1.0)


@st.composite
def trajectory(draw, task: str = "t"):
    n = draw(st.integers(1, 5))
    actions = draw(st.lists(st.sampled_from(ACTIONS), min_size=n, max_size=n))
    # mostly the deterministic observation, sometimes a variant (a non-deterministic env)
    variants = draw(st.lists(st.sampled_from([0, 0, 0, 1]), min_size=n, max_size=n))
    return make_traj(task, actions, draw(scores), variants)


@st.composite
def trajectories(draw, tasks: int = 1, min_size: int = 1, max_size: int = 12):
    names = [f"task{i}" for i in range(tasks)]
    return draw(st.lists(st.sampled_from(names).flatmap(lambda t: trajectory(t)), min_size=min_size, max_size=max_size))
