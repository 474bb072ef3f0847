"""The ETO and ceiling baselines meet their expert data: ETO-format experts, mapped to the
environment's task ids, pair with live explorations; with no pair at all the stage fails loudly."""

from __future__ import annotations

import json

import pytest

from tratree.agent.expert import expert_trajectories
from tratree.agent.explore import explore
from tratree.method.pairs import expert_pairs
from tratree.records.prompts import PROMPTS, acting_prompt, conversation
from tratree.spec.experiment import parse_experiment

pytestmark = pytest.mark.integration


class Scripted:
    """A policy that always looks around: enough to explore live episodes without a model."""

    max_new_tokens = 16

    def generate(self, requests):
        return ["Thought: I should look.\nAction: look around" for _ in requests]

    def close(self):
        """Nothing to release."""


def eto_conversation(eto_id: str, task: str, steps: list[tuple[str, str]], reward: float) -> dict:
    turns = [{"from": "human", "value": "You are a helpful assistant to do some scientific experiment."},
             {"from": "gpt", "value": "OK"}, {"from": "human", "value": task}]
    for k, (action, observation) in enumerate(steps):
        turns.append({"from": "gpt", "value": f"Thought: step {k}.\nAction: {action}"})
        turns.append({"from": "human", "value": f"Observation: {observation}"})
    return {"id": eto_id, "conversations": turns, "reward": reward}


@pytest.mark.slow
def test_eto_format_experts_pair_with_live_scienceworld_explorations(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx384m")
    from tratree.envs import make_env
    from tratree.spec.experiment import EnvironmentSpec

    env_spec = {"name": "scienceworld", "tasks": ["find-animal"], "gameParams": "easy", "protocol": "eto"}
    env = make_env(EnvironmentSpec.model_validate(env_spec))
    try:
        task_ids = env.tasks("train")["find-animal"][:2]
        conversations = []
        for task_id in task_ids:
            gold = env.gold_actions(task_id)
            start = env.reset(task_id)
            steps = [(a, env.step(a).observation) for a in gold]
            variation = task_id.rsplit("/", 1)[1]
            # ETO's id for task-3-find-animal is 11: "<11>_<variation>"
            conversations.append(eto_conversation(f"11_{variation}", start.instruction, steps, 1.0))
    finally:
        env.close()
    path = tmp_path / "sciworld_sft.json"
    path.write_text(json.dumps(conversations))
    spec = parse_experiment({"weak": {"model": "w"}, "strong": {"model": "s"}, "environment": env_spec,
                             "expert": {"source": "file", "path": str(path), "format": "eto"},
                             "policy": {"batchSize": 2}}).spec
    expert = expert_trajectories(spec)
    assert [t.task_id for t in expert] == task_ids
    assert [t.meta["eto_id"] for t in expert] == [c["id"] for c in conversations]
    # ETO's protocol: exploration runs on the expert file's tasks, for ETO's step limit (find-animal: 15)
    prompt = acting_prompt("scienceworld", True, expert)
    own = explore(spec, Scripted(), tmp_path / "own.jsonl", model="scripted", prompt=prompt, samples=1)
    assert [t.task_id for t in own] == task_ids and all(len(t.steps) == 15 for t in own)
    # live episodes open as ETO's expert conversations do: the same task turn, the example in the prompt
    for live, gold in zip(own, expert, strict=True):
        assert conversation(prompt, live.instruction, live.steps)[2] == conversation(
            PROMPTS["scienceworld"], gold.instruction, gold.steps)[2] == {"role": "user", "content": gold.instruction}
    assert prompt.startswith(PROMPTS["scienceworld"] + "\n---\nHere is an example.\n" + expert[0].instruction)
    for mode in ("eto", "ceiling"):
        pairs = expert_pairs(expert, own, mode)
        assert len(pairs) == 2 and all(p.chosen_value > p.rejected_value for p in pairs), mode
        assert all([s.action for s in p.chosen] != [s.action for s in p.rejected] for p in pairs)


def test_an_eto_id_that_fits_no_environment_is_a_one_line_error(tmp_path):
    from tratree.records.formats import FormatError

    path = tmp_path / "x.json"
    path.write_text(json.dumps([eto_conversation("99_1", "task", [("look around", "a room")], 1.0)]))
    spec = parse_experiment({"weak": {"model": "w"}, "strong": {"model": "s"},
                             "environment": {"name": "scienceworld", "tasks": []},
                             "expert": {"source": "file", "path": str(path), "format": "eto"}}).spec
    with pytest.raises(FormatError, match=r"x.json: id '99_1' is not an ETO ScienceWorld id"):
        expert_trajectories(spec)


@pytest.mark.parametrize("mode", ["eto", "ceiling"])
def test_eto_and_ceiling_with_no_pair_fail_naming_the_mismatch(tmp_path, mode):
    from tests.conftest import make_traj, small_spec
    from tratree.pipeline.actions.context import StageContext, StageError
    from tratree.pipeline.actions.training import dpo
    from tratree.pipeline.graph import plan
    from tratree.records.formats import write_jsonl

    spec = small_spec(methods=[mode])
    stage = next(s for s in plan(spec) if s.name == f"{mode}-s0")
    dirs = {name: tmp_path / name for name in stage.inputs}
    for d in dirs.values():
        d.mkdir()
    # ETO's ids on the expert side, the environment's on the explored side: no task in common
    write_jsonl(dirs["expert"] / "trajectories.jsonl", [make_traj("1600", ["look"], 1.0)])
    write_jsonl(dirs["strong-explore-s0"] / "trajectories.jsonl", [make_traj("webshop/train/1600", ["go"], 0.0)])
    with pytest.raises(StageError, match=rf"{mode}-s0: no {mode} pairs: 1 expert and 1 explored trajectories share "
                                         r"no task id \(expert ids look like '1600', explored ones like "
                                         r"'webshop/train/1600'\)"):
        dpo(StageContext(spec, stage, dirs, tmp_path / "out"))


def test_eto_where_the_strong_model_already_matches_the_expert_keeps_it_and_says_so(tmp_path, capsys):
    """A strong model whose own runs score as the expert's on every task gives ETO no pair: its output is
    sft-strong unchanged, with a warning and 0 pairs on record (the report's DPO-pairs column)."""
    import json

    from tests.conftest import make_traj, small_spec
    from tratree.models.tiny import corpus, create, train_tokenizer
    from tratree.pipeline.actions.context import StageContext
    from tratree.pipeline.actions.training import dpo
    from tratree.pipeline.graph import plan
    from tratree.records.formats import write_jsonl

    spec = small_spec(methods=["eto"])
    stage = next(s for s in plan(spec) if s.name == "eto-s0")
    dirs = {name: tmp_path / name for name in stage.inputs}
    for d in dirs.values():
        d.mkdir()
    expert = [make_traj("cookingworld/train/0", ["look", "win"], 1.0)]
    write_jsonl(dirs["expert"] / "trajectories.jsonl", expert)
    write_jsonl(dirs["strong-explore-s0"] / "trajectories.jsonl", [make_traj("cookingworld/train/0", ["win"], 1.0)])
    create("strong", train_tokenizer(corpus(spec.environment.name, expert), vocab_size=300), dirs["sft-strong-s0"])
    dpo(StageContext(spec, stage, dirs, tmp_path / "out"))
    assert "eto-s0: no preference pairs; the output is the initial policy (sft-strong-s0) unchanged" in \
        capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "training.json").read_text())["pairs"] == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (dirs["sft-strong-s0"] / "model.safetensors").read_bytes()


class CountingEnv:
    """An environment that counts the actions it is given; the task is solved by 'win'."""

    def __init__(self):
        self.steps: list[str] = []

    def reset(self, task_id):
        from tratree.envs import Reset

        return Reset(instruction="Win the game.", observation="A room.")

    def step(self, action):
        from tratree.envs import Outcome

        self.steps.append(action)
        won = action == "win"
        return Outcome(observation="You won." if won else "Nothing happens.", score=1.0 if won else 0.25,
                       done=won, success=won)

    def close(self):
        """Nothing to release."""


def test_a_reply_without_an_action_is_answered_as_eto_does_and_recorded():
    from tratree.agent.rollout import INVALID_FORMAT, Episode, run_episodes
    from tratree.envs import EnvPool

    replies = iter(["Thought: try.\nAction: look", "I am not sure what to do.", "Thought: go.\nAction: win"])

    class Backend:
        max_new_tokens = 16

        def generate(self, requests):
            return [next(replies) for _ in requests]

    env = CountingEnv()
    (traj,) = run_episodes([Episode("t/train/0")], EnvPool(lambda: env), Backend(), "prompt", lambda _: 10, 1)
    assert env.steps == ["look", "win"]  # the environment never saw the reply without an action
    assert [s.action for s in traj.steps] == ["look", "I am not sure what to do.", "win"]
    assert traj.steps[2].observation == INVALID_FORMAT  # what the agent saw after its bad reply
    assert traj.meta["unparsed_replies"] == 1 and traj.score == 1.0


class DyingEnv(CountingEnv):
    """An instance whose JVM dies at its ``dies_at``-th step (Py4J's error when the gateway is gone)."""

    def __init__(self, dies_at):
        super().__init__()
        self.dies_at, self.closed = dies_at, False

    def step(self, action):
        if len(self.steps) + 1 == self.dies_at:
            raise ConnectionRefusedError("An error occurred while trying to connect to the Java server")
        return super().step(action)

    def close(self):
        self.closed = True


def test_a_dying_environment_is_replaced_and_its_episode_run_again_within_a_bound():
    from tratree.agent.rollout import EnvironmentFailed, Episode, run_episodes
    from tratree.envs import EnvPool

    class Backend:
        max_new_tokens = 16

        def generate(self, requests):
            return ["Thought: go.\nAction: " + ("win" if len(r.messages) > 5 else "look") for r in requests]

    made = []

    def factory(plan):
        def make():
            made.append(DyingEnv(plan[len(made)] if len(made) < len(plan) else 0))
            return made[-1]
        return make

    (traj,) = run_episodes([Episode("t/train/0")], EnvPool(factory([2])), Backend(), "p", lambda _: 10, 1)
    assert traj.score == 1.0 and traj.meta["env_restarts"] == 1
    assert [s.action for s in traj.steps] == ["look", "look", "win"]  # the whole episode, on the new instance
    assert made[0].closed and len(made) == 2  # the dead instance was closed, a new one took the episode
    made.clear()
    with pytest.raises(EnvironmentFailed, match=r"task t/train/0: the environment failed 3 times \(ConnectionRefused"):
        list(run_episodes([Episode("t/train/0")], EnvPool(factory([1, 1, 1])), Backend(), "p", lambda _: 10, 1))


@pytest.mark.parametrize(("env", "eto_ids", "task_ids", "first_turn"), [
    ("webshop", ["1600", "2041"], ["webshop/train/1600", "webshop/train/2041"],
     "WebShop [SEP] Instruction: [SEP] i need a red shirt [SEP] Search"),
    ("alfworld", ["41", "7"], ["alfworld/train/41", "alfworld/train/7"],
     "You are in the middle of a room. Looking quickly around you, you see a cabinet 1.\nYour task is to: put a "
     "cloth in cabinet."),
])
def test_eto_files_of_webshop_and_alfworld_form_eto_and_ceiling_pairs(tmp_path, env, eto_ids, task_ids, first_turn):
    """ETO's data names WebShop goals and ALFWorld games by index; mapped to the environments' ids,
    they pair with explorations (written here as the live environments give them: same ids, same
    first turn)."""
    from tests.conftest import make_traj

    path = tmp_path / f"{env}_sft.json"
    path.write_text(json.dumps([eto_conversation(i, first_turn, [("click[buy now]" if env == "webshop" else
                                                                  "go to cabinet 1", "done")], 1.0) for i in eto_ids]))
    spec = parse_experiment({"weak": {"model": "w"}, "strong": {"model": "s"},
                             "environment": {"name": env, "protocol": "eto", "iclExample": False},
                             "expert": {"source": "file", "path": str(path), "format": "eto"}}).spec
    expert = expert_trajectories(spec)
    assert [t.task_id for t in expert] == task_ids and all(t.instruction == first_turn for t in expert)
    from tratree.agent.explore import split_tasks

    assert split_tasks(spec, "train") == task_ids  # ETO's protocol: exploration on the expert file's tasks
    explored = [make_traj(t, ["look"], 0.0) for t in task_ids]
    for mode in ("eto", "ceiling"):
        pairs = expert_pairs(expert, explored, mode)
        assert [p.task_id for p in pairs] == task_ids and all(p.chosen_value > p.rejected_value for p in pairs)
