"""Instruction prompts (the paper's appendix) and the ReAct conversation of an episode.

An episode is one chat, in the layout of ETO's data: the instruction prompt, "OK", the task
with its first observation, then alternating replies ("Thought: ...\\nAction: ...") and
"Observation: ..." turns. Training and acting build it with the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tratree.records.formats import Step, Trajectory
from tratree.records.react import format_reply

_FORMAT = """Your response should use the following format:

Thought: I think ...
Action: ..."""

PROMPTS: dict[str, str] = {
    "webshop": """You are web shopping. I will give you instructions about what to do. You have to follow the instructions. Every round I will give you an observation and a list of available actions, you have to respond an action based on the state and instruction. You can use search action if search is available. You can click one of the buttons in clickables. An action should be of the following structure:

search[keywords]
click[value]

If the action is not valid, perform nothing. Keywords in search are up to you, but the value in click must be a value in the list of available actions. Remember that your keywords in search should be carefully designed.

"""
    + _FORMAT,
    "scienceworld": """You are a helpful assistant to do some scientific experiment in an environment. In the environment, there are several rooms: kitchen, foundry, workshop, bathroom, outside, living room, bedroom, greenhouse, art studio, hallway. You should explore the environment and find the items you need to complete the experiment. You can teleport to any room in one step. All containers in the environment have already been opened, you can directly get items from the containers.

The available actions are:

open OBJ: open a container
close OBJ: close a container
activate OBJ: activate a device
deactivate OBJ: deactivate a device
connect OBJ to OBJ: connect electrical components
disconnect OBJ: disconnect electrical components
use OBJ [on OBJ]: use a device/item
look around: describe the current room
examine OBJ: describe an object in detail
look at OBJ: describe a container's contents
read OBJ: read a note or book
move OBJ to OBJ: move an object to a container
pick up OBJ: move an object to the inventory
pour OBJ into OBJ: pour a liquid into a container
mix OBJ: chemically mix a container
teleport to LOC: teleport to a specific room
focus on OBJ: signal intent on a task object
wait: task no action for 10 steps
wait1: task no action for a step

"""
    + _FORMAT,
    "alfworld": """Interact with a household to solve a task. Imagine you are an intelligent agent in a household environment and your target is to perform actions to complete the task goal. At the beginning of your interactions, you will be given the detailed description of the current environment and your goal to accomplish. For each of your turn, you will be given the observation of the last turn. You should first think about the current condition and plan for your future actions, and then output your action in this turn. Your output must strictly follow this format:

Thought: your thoughts.
Action: your next action.

The available actions are:
1. go to recep
2. take obj from recep
3. put obj in/on recep
4. open recep
5. close recep
6. toggle obj recep
7. clean obj with recep
8. heat obj with recep
9. cool obj with recep
where obj and recep correspond to objects and receptacles.
After your each turn, the environment will give you immediate feedback based on which you plan your next few steps. if the environment output "Nothing happened", that means the previous action is invalid and you should try more options.""",
    # Not in the paper; written in the same style for the CPU quickstart's environment.
    "textworldexpress": """You are playing a text game. I will give you a task and, every round, an observation of the world; you answer with one action. Useful actions: look around, inventory, read OBJ, take OBJ, put OBJ in OBJ, open OBJ, close OBJ, examine OBJ, move to LOC, slice OBJ, dice OBJ, chop OBJ, cook OBJ in OBJ, prepare meal, eat OBJ. If an action is not understood, nothing happens.

"""
    + _FORMAT,
}


def choose_example(expert: Sequence[Trajectory]) -> Trajectory | None:
    """The in-context example: the shortest of the best-scoring expert trajectories (the first
    among equals), so it costs the fewest tokens; None when there is no expert trajectory."""
    if not expert:
        return None
    best = max(t.score for t in expert)
    return min((t for t in expert if t.score == best and t.steps), key=lambda t: len(t.steps), default=None)


def with_example(instruction: str, example: Trajectory | None) -> str:
    """The instruction followed by the example episode, laid out as ETO's prompts lay it out."""
    if example is None:
        return instruction
    lines = [task_turn(example.instruction, example.steps[0].observation)]
    for k, step in enumerate(example.steps):
        if k > 0:
            lines.append(f"Observation: {step.observation}\n")
        lines.append(format_reply(step.thought, step.action))
    return f"{instruction}\n---\nHere is an example.\n" + "\n".join(lines) + "\n---\n\nNow, it's your turn."


def acting_prompt(env_name: str, use_example: bool, expert: Sequence[Trajectory] | None) -> str:
    """The instruction turn of exploration and evaluation episodes: the environment's prompt, with
    the in-context example from ``expert`` (training tasks' trajectories) when ``use_example``.

    ValueError when an example is wanted and ``expert`` has none to give.
    """
    if not use_example:
        return PROMPTS[env_name]
    example = choose_example(expert or [])
    if example is None:
        raise ValueError("iclExample is on but there is no expert trajectory to take the example from")
    return with_example(PROMPTS[env_name], example)


def task_turn(instruction: str, first_observation: str) -> str:
    """The user turn that opens the task: the instruction and the first observation."""
    if first_observation == instruction or not first_observation:
        return instruction
    return f"{instruction}\n{first_observation}"


def conversation(
    prompt: str, instruction: str, steps: Sequence[Step], next_observation: str | None = None
) -> list[dict[str, str]]:
    """The chat of an episode: every step's reply; with ``next_observation``, ending on it for generation."""
    first = steps[0].observation if steps else (next_observation or "")
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "OK"},
        {"role": "user", "content": task_turn(instruction, first)},
    ]
    for k, step in enumerate(steps):
        if k > 0:
            messages.append({"role": "user", "content": f"Observation: {step.observation}"})
        messages.append({"role": "assistant", "content": format_reply(step.thought, step.action)})
    if steps and next_observation is not None:
        messages.append({"role": "user", "content": f"Observation: {next_observation}"})
    return messages


def fit(messages: list[dict[str, str]], length: Callable[[list[dict[str, str]]], int], limit: int) -> list[dict[str, str]]:
    """Drop the oldest (reply, observation) turn pairs after the task turn until ``length`` fits ``limit``.

    The prompt, the task and the latest turns are kept, so the model always sees what it
    must act on; what cannot fit even then is left to the backend to truncate.
    """
    head, rest = messages[:3], messages[3:]
    while len(rest) > 2 and length(head + rest) > limit:
        rest = rest[2:]
    return head + rest
