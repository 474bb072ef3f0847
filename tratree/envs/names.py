"""The task and game names each environment knows, for checking a spec without starting a JVM."""

from __future__ import annotations

from tratree.spec.experiment import EnvironmentSpec


def unknown_tasks(spec: EnvironmentSpec) -> str | None:
    """What in ``spec.tasks`` the environment does not have, with the names it does; None when all
    are known (or the environment's package is not installed here to say)."""
    if spec.name == "textworldexpress":
        from tratree.envs.textworldexpress import GAMES

        known = list(GAMES)
    elif spec.name == "scienceworld":
        try:
            from scienceworld.constants import ID2TASK
        except ImportError:
            return None
        known = sorted(ID2TASK.values())
    else:
        return None  # ALFWorld and WebShop tasks are their data's, not names
    bad = [t for t in spec.tasks if t not in known]
    if not bad:
        return None
    return f"unknown {spec.name} task {bad[0]!r} (known: {', '.join(known)})"
