"""ETO's ScienceWorld protocol (the paper follows it): 24 task types, their step limits and splits.

Facts from ETO's ``eval_agent/data/sciworld/`` (``max_steps.json``, ``test_indices.json``,
``dev_indices.json``), keyed by ScienceWorld's own task names. Test ("unseen", 211 variations)
is the first ten of each task type's ScienceWorld test variations (fewer where a type has
fewer); dev ("seen", 194) is ETO's sample of ScienceWorld's dev variations. ETO's 1,483
training variations are the tasks of its expert file (``sciworld_sft.json``), so tratree
explores the expert file's tasks under this protocol rather than keeping a third list.
"""

from __future__ import annotations

from tratree.catalog import SCIWORLD_MAX_STEPS, SCIWORLD_TASKS

# first and last variation of each type's test list (consecutive in ETO's file)
_TEST: dict[str, tuple[int, int]] = {
    "boil": (21, 29),
    "change-the-state-of-matter-of": (21, 29),
    "freeze": (21, 29),
    "melt": (21, 29),
    "measure-melting-point-known-substance": (327, 336),
    "use-thermometer": (405, 414),
    "power-component": (15, 19),
    "power-component-renewable-vs-nonrenewable-energy": (15, 19),
    "test-conductivity": (675, 684),
    "test-conductivity-of-unknown-substances": (450, 459),
    "find-animal": (225, 234),
    "find-living-thing": (225, 234),
    "find-non-living-thing": (225, 234),
    "find-plant": (225, 234),
    "grow-fruit": (93, 102),
    "grow-plant": (93, 102),
    "chemistry-mix": (24, 31),
    "chemistry-mix-paint-secondary-color": (27, 35),
    "chemistry-mix-paint-tertiary-color": (27, 35),
    "lifespan-longest-lived": (93, 102),
    "lifespan-longest-lived-then-shortest-lived": (93, 102),
    "lifespan-shortest-lived": (93, 102),
    "identify-life-stages-1": (9, 13),
    "identify-life-stages-2": (6, 9),
}

_DEV: dict[str, list[int]] = {
    "boil": [14, 15, 16, 17, 19, 20],
    "change-the-state-of-matter-of": [14, 15, 16, 17, 18, 19, 20],
    "freeze": [14, 15, 16, 17, 18, 19, 20],
    "melt": [14, 15, 16, 17, 18, 19, 20],
    "measure-melting-point-known-substance": [253, 280, 281, 286, 287, 292, 299, 300, 325, 326],
    "use-thermometer": [284, 285, 291, 314, 358, 360, 364, 378, 384, 385],
    "power-component": [11, 12, 13],
    "power-component-renewable-vs-nonrenewable-energy": [10, 13, 14],
    "test-conductivity": [474, 479, 485, 523, 528, 579, 587, 640, 655, 662],
    "test-conductivity-of-unknown-substances": [313, 352, 376, 386, 389, 394, 409, 413, 418, 448],
    "find-animal": [159, 173, 176, 188, 193, 211, 213, 216, 218, 221],
    "find-living-thing": [161, 180, 186, 202, 206, 209, 214, 216, 218, 221],
    "find-non-living-thing": [150, 158, 179, 184, 185, 187, 192, 198, 209, 214],
    "find-plant": [154, 164, 165, 175, 177, 179, 181, 203, 206, 209],
    "grow-fruit": [62, 65, 68, 71, 72, 80, 84, 85, 88, 90],
    "grow-plant": [64, 65, 68, 77, 78, 84, 85, 86, 87, 88],
    "chemistry-mix": [16, 17, 18, 19, 20, 21, 22, 23],
    "chemistry-mix-paint-secondary-color": [18, 19, 20, 21, 22, 23, 24, 25, 26],
    "chemistry-mix-paint-tertiary-color": [18, 19, 20, 21, 22, 23, 24, 25, 26],
    "lifespan-longest-lived": [66, 68, 72, 73, 78, 80, 83, 84, 88, 92],
    "lifespan-longest-lived-then-shortest-lived": [64, 66, 67, 68, 69, 72, 78, 80, 85, 87],
    "lifespan-shortest-lived": [69, 70, 71, 76, 80, 82, 84, 85, 87, 91],
    "identify-life-stages-1": [6, 7, 8],
    "identify-life-stages-2": [4, 5],
}


def variations(task: str, split: str) -> list[int] | None:
    """ETO's variations of ``task`` in ``split`` ("test" or "dev"); None for "train" (the expert file's)."""
    if task not in SCIWORLD_MAX_STEPS:
        raise ValueError(f"ScienceWorld task {task!r} is not one of ETO's {len(SCIWORLD_TASKS)} task types")
    if split == "test":
        lo, hi = _TEST[task]
        return list(range(lo, hi + 1))
    if split == "dev":
        return list(_DEV[task])
    return None
