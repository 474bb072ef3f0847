"""WebShop, where the user installed its ``web_agent_site`` package and product data.

The environment runs on WebShop's human-written goals (``human_goals=True``), as the paper and
ETO do; goals follow WebShop's own split of that list: 0-499 test, 500-1499 dev, the rest train.
An episode opens with the search page alone ("WebShop [SEP] Instruction: [SEP] ... [SEP] Search",
which holds the goal), as ETO's episodes and expert data do.
"""

from __future__ import annotations

from pathlib import Path

from tratree.envs.base import EnvironmentUnavailable, Outcome, Reset, Split, clamp_score, split_task_id

SPLITS = {"test": (0, 500), "dev": (500, 1500), "train": (1500, 12087)}
_DATA_FILES = ("items_shuffle.json", "items_ins_v2.json")


def split_of(index: int) -> str:
    """The split a human goal's index belongs to."""
    for split, (lo, hi) in SPLITS.items():
        if lo <= index < hi:
            return split
    raise ValueError(f"goal {index} is outside WebShop's {SPLITS['train'][1]} human goals")


def check_data(data_path: str | None) -> Path:
    """The WebShop data folder; EnvironmentUnavailable at once when it is missing."""
    hint = (
        "WebShop needs its package and data: install it from its repository (setup.sh -d all), "
        "then set spec.environment.dataPath to its data folder"
    )
    if not data_path:
        raise EnvironmentUnavailable(hint)
    root = Path(data_path).expanduser()
    missing = [f for f in _DATA_FILES if not (root / f).is_file()]
    if missing:
        raise EnvironmentUnavailable(f"WebShop: {root / missing[0]} not found. {hint}")
    return root


class WebShop:
    name = "webshop"

    def __init__(self, data_path: str | None, num_products: int | None = None) -> None:
        check_data(data_path)
        try:
            import gym
            import web_agent_site.envs  # noqa: F401  (registers WebAgentTextEnv-v0)
        except ImportError as err:
            raise EnvironmentUnavailable("WebShop's `web_agent_site` package is not installed") from err
        self._env = gym.make("WebAgentTextEnv-v0", observation_mode="text", num_products=num_products,
                             human_goals=True)

    def tasks(self, split: Split) -> dict[str, list[str]]:
        lo, hi = SPLITS[split]
        return {"webshop": [f"webshop/{split}/{i}" for i in range(lo, hi)]}

    def reset(self, task_id: str) -> Reset:
        _, _, index = split_task_id(task_id)
        obs, _ = self._env.reset(session=int(index))
        return Reset(instruction=obs.strip(), observation=obs.strip())

    def step(self, action: str) -> Outcome:
        obs, reward, done, _ = self._env.step(action)
        score = clamp_score(reward or 0.0)
        return Outcome(observation=(obs or "").strip(), score=score, done=bool(done), success=score >= 1.0)

    def gold_actions(self, task_id: str) -> list[str]:
        raise EnvironmentUnavailable("WebShop gold trajectories come from the expert file (spec.expert.path)")

    def close(self) -> None:
        self._env.close()
