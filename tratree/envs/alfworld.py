"""ALFWorld, where the user installed ``alfworld`` and its data (``alfworld-download``).

Tasks are the game files under ``<data>/json_2.1.1/<split>``: train, valid_seen (dev) and
valid_unseen (test; the paper evaluates on unseen). The data is checked before any game is
registered, because TextWorld spins forever in ``reset`` when it has no games.

Episodes are laid out as ETO's data is, so live prompts match the expert conversations models
are trained on: the first turn is the room's description followed by the task (the welcome
banner dropped), and "You arrive at loc N. " is stripped from observations.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tratree.envs.base import EnvironmentUnavailable, Outcome, Reset, Split, split_task_id

SPLIT_DIRS = {"train": "train", "dev": "valid_seen", "test": "valid_unseen"}
_ARRIVAL = re.compile(r"^You arrive at loc \d+\. ")


def first_turn(observation: str) -> str:
    """ETO's first turn of an episode: the reset observation without its welcome banner."""
    return "\n".join(observation.strip().split("\n\n")[1:]) or observation.strip()


def clean_observation(observation: str) -> str:
    """An observation as ETO's episodes show it: without the "You arrive at loc N. " prefix."""
    return _ARRIVAL.sub("", observation.strip())


def game_files(data_path: str | None, split: Split) -> list[Path]:
    """The sorted game files of a split; EnvironmentUnavailable at once when there are none."""
    root = data_path or os.environ.get("ALFWORLD_DATA")
    if not root:
        raise EnvironmentUnavailable(
            "ALFWorld needs its data: run `pip install alfworld && alfworld-download`, then set "
            "spec.environment.dataPath (or ALFWORLD_DATA) to the download folder"
        )
    base = Path(root).expanduser() / "json_2.1.1" / SPLIT_DIRS[split]
    files = sorted(base.glob("**/game.tw-pddl")) if base.is_dir() else []
    if not files:
        raise EnvironmentUnavailable(
            f"ALFWorld: no games under {base} (expected */game.tw-pddl); run `alfworld-download` "
            "and point spec.environment.dataPath at its folder"
        )
    return files


class ALFWorld:
    name = "alfworld"

    def __init__(self, data_path: str | None, step_limit: int = 50) -> None:
        self.data_path = data_path
        self.step_limit = step_limit
        self._files = {split: game_files(data_path, split) for split in ("train",)}
        try:
            import textworld
            import textworld.gym
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        except ImportError as err:
            raise EnvironmentUnavailable("ALFWorld needs `pip install alfworld` (and its TextWorld)") from err
        self._textworld = textworld
        self._wrappers = [AlfredDemangler(), AlfredInfos]
        self._env = None

    def _files_of(self, split: Split) -> list[Path]:
        if split not in self._files:
            self._files[split] = game_files(self.data_path, split)
        return self._files[split]

    def tasks(self, split: Split) -> dict[str, list[str]]:
        return {"alfworld": [f"alfworld/{split}/{i}" for i in range(len(self._files_of(split)))]}

    def reset(self, task_id: str) -> Reset:
        _, split, index = split_task_id(task_id)
        files = self._files_of(split)  # type: ignore[arg-type]
        if int(index) >= len(files):
            raise ValueError(f"task {task_id!r}: the {split} split has {len(files)} games")
        if self._env is not None:
            self._env.close()
        infos = self._textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
        env_id = self._textworld.gym.register_game(
            str(files[int(index)]), infos, max_episode_steps=self.step_limit, wrappers=self._wrappers
        )
        self._env = self._textworld.gym.make(env_id)
        obs, _ = self._env.reset()
        text = first_turn(obs)
        return Reset(instruction=text, observation=text)

    def step(self, action: str) -> Outcome:
        if self._env is None:
            raise RuntimeError("step before reset")
        obs, _, done, infos = self._env.step(action)
        won = bool(infos.get("won"))
        return Outcome(observation=clean_observation(obs), score=1.0 if won else 0.0, done=bool(done or won),
                       success=won)

    def gold_actions(self, task_id: str) -> list[str]:
        raise EnvironmentUnavailable("ALFWorld gold trajectories come from the expert file (spec.expert.path)")

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
