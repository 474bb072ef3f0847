"""The pretraining corpus of tiny models: transcripts of heuristic play on dev-split games.

Real weak and strong models come pretrained on text that looks like their tasks; a tiny model built
from config has seen nothing. Its stand-in for pretraining is language modelling on episodes of
games disjoint from the training and test tasks, played by a noisy expert: each step takes the
next gold action, or, with probability ``random_actions``, a random action the game accepts. The
transcripts hold successes, detours and failures, and every object name an action needs is in the
observations before it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tratree.agent.expert import templated_thought
from tratree.envs import make_env
from tratree.envs.base import spread
from tratree.records.formats import Step, Trajectory
from tratree.spec.experiment import ExperimentSpec

# Commands that only re-describe the state: a random pick among them teaches nothing about acting.
_IDLE = ("look", "inventory", "examine")


def noisy_expert_play(spec: ExperimentSpec) -> Iterator[Trajectory]:
    """One transcript per dev-split game (``spec.pretraining.games`` of them), reproducible from its seed."""
    settings = spec.pretraining
    if settings is None:
        raise ValueError("the spec has no pretraining section")
    env = make_env(spec.environment)
    try:
        valid_actions = getattr(env, "valid_actions", None)
        if valid_actions is None:
            raise ValueError(f"{spec.environment.name} does not list valid actions; pretraining needs them")
        rng = random.Random(settings.seed)
        for task in spread(env.tasks("dev"), settings.games):
            gold = env.gold_actions(task)
            start = env.reset(task)
            steps: list[Step] = []
            observation, last, next_gold = start.observation, None, 0
            for _ in range(spec.environment.max_steps):
                moves = [a for a in valid_actions() if not a.startswith(_IDLE)]
                if next_gold < len(gold) and (not moves or rng.random() >= settings.random_actions):
                    action, next_gold = gold[next_gold], next_gold + 1
                elif moves:
                    action = rng.choice(moves)
                else:
                    break
                steps.append(Step(observation=observation, thought=templated_thought(action), action=action))
                last = env.step(action)
                observation = last.observation
                if last.done:
                    break
            if last is not None:
                yield Trajectory(task_id=task, instruction=start.instruction, steps=steps,
                                 final_observation=last.observation, score=last.score, success=last.success,
                                 meta={"policy": "noisy-expert", "random_actions": settings.random_actions})
    finally:
        env.close()
