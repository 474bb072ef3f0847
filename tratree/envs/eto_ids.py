"""ETO's task ids and names, mapped to the environments' own task ids.

ETO (Song et al., 2024) and the paper's released data name tasks in their own way:
ScienceWorld conversations carry ``"<task number>_<variation>"`` ("18_9") where the number
comes from ETO's ``taskname2id`` table of names such as
``task-5-chemistry-mix-paint-(secondary-color)``; WebShop conversations carry the goal
index ("1600"); ALFWorld ones the game's index in its split. tratree's ids are
``<task>/<split>/<index>`` ("chemistry-mix-paint-secondary-color/train/9",
"webshop/train/1600"), so expert files imported from ETO are mapped here, or the ETO and
ceiling baselines would find no expert trajectory for any explored task.
"""

from __future__ import annotations

import re

# ETO's eval_agent/data/sciworld/taskname2id.json (number 5 is unused there).
ETO_SCIWORLD_TASKS: dict[str, int] = {
    "task-1-boil": 0,
    "task-1-change-the-state-of-matter-of": 1,
    "task-1-freeze": 2,
    "task-1-melt": 3,
    "task-10-measure-melting-point-(known-substance)": 4,
    "task-10-use-thermometer": 6,
    "task-2-power-component": 7,
    "task-2-power-component-(renewable-vs-nonrenewable-energy)": 8,
    "task-2a-test-conductivity": 9,
    "task-2a-test-conductivity-of-unknown-substances": 10,
    "task-3-find-animal": 11,
    "task-3-find-living-thing": 12,
    "task-3-find-non-living-thing": 13,
    "task-3-find-plant": 14,
    "task-4-grow-fruit": 15,
    "task-4-grow-plant": 16,
    "task-5-chemistry-mix": 17,
    "task-5-chemistry-mix-paint-(secondary-color)": 18,
    "task-5-chemistry-mix-paint-(tertiary-color)": 19,
    "task-6-lifespan-(longest-lived)": 20,
    "task-6-lifespan-(longest-lived-then-shortest-lived)": 21,
    "task-6-lifespan-(shortest-lived)": 22,
    "task-7-identify-life-stages-1": 23,
    "task-7-identify-life-stages-2": 24,
    "task-8-inclined-plane-determine-angle": 25,
    "task-8-inclined-plane-friction-(named-surfaces)": 26,
    "task-8-inclined-plane-friction-(unnamed-surfaces)": 27,
    "task-9-mendellian-genetics-(known-plant)": 28,
    "task-9-mendellian-genetics-(unknown-plant)": 29,
}
_SCIWORLD_BY_NUMBER = {n: name for name, n in ETO_SCIWORLD_TASKS.items()}


def sciworld_task_name(name: str) -> str:
    """ScienceWorld's own name of a task named the ETO way (or already its own name)."""
    name = name.replace("mendellian", "mendelian")  # a typo ScienceWorld fixed later
    return re.sub(r"task-(\d|a|b)+-|[()]", "", name)


def environment_task_id(env: str, eto_id: str, split: str) -> str:
    """The environment's task id of an ETO id; ids already in tratree's form are kept.

    ValueError when the id is not one ETO's data uses for that environment.
    """
    if "/" in eto_id:
        return eto_id
    if env == "scienceworld":
        number, sep, variation = eto_id.partition("_")
        if not sep or not number.isdigit() or not variation.isdigit() or int(number) not in _SCIWORLD_BY_NUMBER:
            raise ValueError(f"id {eto_id!r} is not an ETO ScienceWorld id ('<task number>_<variation>')")
        return f"{sciworld_task_name(_SCIWORLD_BY_NUMBER[int(number)])}/{split}/{int(variation)}"
    if env in ("webshop", "alfworld"):
        if not eto_id.isdigit():
            raise ValueError(f"id {eto_id!r} is not an ETO {env} id (an index)")
        if env == "webshop":
            from tratree.envs.webshop import split_of

            return f"webshop/{split_of(int(eto_id))}/{int(eto_id)}"
        return f"alfworld/{split}/{int(eto_id)}"
    return eto_id
