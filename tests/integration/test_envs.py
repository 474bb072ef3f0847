"""Real environments: gold trajectories replay to full score, scores stay in [0, 1], guards fail fast."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from tests.conftest import QUICK_ENV
from tratree.envs import EnvironmentUnavailable, make_env, task_ids
from tratree.envs.base import JVM_QUIET, jvm_options
from tratree.spec.experiment import EnvironmentSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def twx():
    env = make_env(EnvironmentSpec(name="textworldexpress", tasks=["cookingworld", "coin", "mapreader", "arithmetic",
                                                                    "sorting", "twc"], max_steps=60))
    yield env
    env.close()


@pytest.mark.parametrize("game", ["cookingworld", "coin", "mapreader", "arithmetic", "sorting", "twc"])
def test_textworldexpress_gold_replays_to_full_score(twx, game):
    tasks = twx.tasks("train")[game][:3]
    for task in tasks:
        actions = twx.gold_actions(task)
        start = twx.reset(task)
        assert start.instruction and start.observation
        scores = []
        for action in actions:
            out = twx.step(action)
            scores.append(out.score)
        assert out.done and out.success and out.score == 1.0
        assert all(0.0 <= s <= 1.0 for s in scores)


def test_textworldexpress_is_deterministic_and_uses_its_folds(twx):
    task = twx.tasks("test")["coin"][0]
    assert task.startswith("coin/test/")
    a = (twx.reset(task), [twx.step(x).observation for x in ("look around", "inventory")])
    b = (twx.reset(task), [twx.step(x).observation for x in ("look around", "inventory")])
    assert a == b
    assert set(twx.tasks("train")["coin"]).isdisjoint(twx.tasks("test")["coin"])


def test_task_ids_interleave_games_and_respect_caps():
    spec = EnvironmentSpec(name="textworldexpress", tasks=["coin", "sorting"], train_tasks=5)
    env = make_env(spec)
    try:
        ids = task_ids(env, spec, "train")
    finally:
        env.close()
    assert ids == ["coin/train/0", "sorting/train/0", "coin/train/1", "sorting/train/1", "coin/train/2"]


def test_random_actions_earn_partial_credit_and_fail():
    """In the quickstart's one-room kitchen, random choices among the gold actions (plus noise)
    mostly fail, with partial credit."""
    twx = make_env(EnvironmentSpec(**{k: v for k, v in QUICK_ENV.items() if k != "maxSteps"}))
    rng = random.Random(0)
    partial, failures = 0, 0
    for task in twx.tasks("train")["cookingworld"][:12]:
        gold = twx.gold_actions(task)
        twx.reset(task)
        out = None
        for _ in range(20):
            out = twx.step(rng.choice([*gold, "dance"]))
            assert 0.0 <= out.score <= 1.0
            if out.done:
                break
        failures += not out.success
        partial += 0.0 < out.score < 1.0
    twx.close()
    assert failures >= 6 and partial >= 3


def test_jvm_options_set_from_many_threads_at_once_are_set_once_and_the_users_come_back(monkeypatch):
    """Episodes start their JVMs from a thread pool: each JVM sees the user's options once, ours once,
    and the user's value is back afterwards (interleaved save/restore appended them again and again)."""
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dmine=1")
    together = threading.Barrier(8)
    seen: list[str] = []

    def start() -> None:
        with jvm_options("384m", "-XX:+UseSerialGC"):
            together.wait(timeout=10)
            seen.append(os.environ["JAVA_TOOL_OPTIONS"])
            together.wait(timeout=10)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [f"-Dmine=1 -Xmx384m {JVM_QUIET} -XX:+UseSerialGC"] * 8
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Dmine=1"


def test_a_jvm_that_logs_on_stdout_still_starts(monkeypatch):
    """py4j reads the JVM's port from its stdout; a log line there (a perf-data file locked by a process of
    the same PID in another namespace, or the user's own -Xlog) went to stdout and the start failed."""
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx384m -Xlog:gc")
    env = make_env(EnvironmentSpec(name="textworldexpress", tasks=["coin"], max_steps=10))
    try:
        task = env.tasks("train")["coin"][0]
        assert env.reset(task).observation
    finally:
        env.close()
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Xmx384m -Xlog:gc"


@pytest.fixture(scope="module")
def sciworld(monkeypatch_module):
    monkeypatch_module.setenv("JAVA_TOOL_OPTIONS", "-Xmx384m")
    env = make_env(EnvironmentSpec(name="scienceworld", tasks=["find-living-thing", "lifespan-longest-lived"], game_params="easy",
                                   max_steps=40))
    yield env
    env.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["find-living-thing", "lifespan-longest-lived"])
def test_scienceworld_gold_replays_to_full_score(sciworld, task):
    task_id = sciworld.tasks("train")[task][0]
    actions = sciworld.gold_actions(task_id)
    start = sciworld.reset(task_id)
    assert "Your task is to" in start.instruction
    for action in actions:
        out = sciworld.step(action)
        assert 0.0 <= out.score <= 1.0
    assert out.score == 1.0 and out.success


@pytest.mark.slow
def test_scienceworld_runs_with_etos_simplifications_and_keeps_the_best_score(sciworld):
    task_id = sciworld.tasks("train")["lifespan-longest-lived"][0]
    gold = sciworld.gold_actions(task_id)
    start = sciworld.reset(task_id)
    # ETO's first turn: the task alone; the agent looks around itself
    assert start.observation == start.instruction and start.instruction.startswith("Your task is to")
    # as the prompt says: doors and containers are open from the start
    room = sciworld.step("look around").observation
    assert "(that is open)" in room and "closed" not in room
    sciworld.reset(task_id)
    for action in gold[:4]:  # to the animals outside: partial credit
        out = sciworld.step(action)
    assert 0.0 < out.score < 1.0 and not out.done
    partial = out.score
    out = sciworld.step("focus on air")  # the wrong thing: ScienceWorld ends the task at -100
    assert out.done and not out.success and out.score == partial  # the best score reached stands


def test_simplifications_leave_electrical_actions_to_the_circuit_tasks():
    from tratree.envs.scienceworld import simplifications_for

    assert "noElectricalAction" in simplifications_for("boil", "easy").split(",")
    assert "openContainers" in simplifications_for("boil", "").split(",")
    assert "noElectricalAction" not in simplifications_for("power-component", "easy").split(",")
    assert simplifications_for("boil", "openDoors") == "openDoors"


@pytest.mark.parametrize(("env", "eto_id", "expected"), [
    ("scienceworld", "18_9", "chemistry-mix-paint-secondary-color/train/9"),
    ("scienceworld", "28_3", "mendelian-genetics-known-plant/train/3"),
    ("scienceworld", "0_12", "boil/train/12"),
    ("webshop", "1600", "webshop/train/1600"),
    ("webshop", "7", "webshop/test/7"),
    ("alfworld", "41", "alfworld/train/41"),
    ("textworldexpress", "cookingworld/train/3", "cookingworld/train/3"),
])
def test_eto_ids_map_to_the_environments_task_ids(env, eto_id, expected):
    from tratree.envs.eto_ids import environment_task_id

    assert environment_task_id(env, eto_id, "train") == expected


def test_etos_scienceworld_task_names_are_scienceworlds():
    from scienceworld.constants import ID2TASK

    from tratree.envs.eto_ids import ETO_SCIWORLD_TASKS, sciworld_task_name

    known = set(ID2TASK.values())
    assert {sciworld_task_name(n) for n in ETO_SCIWORLD_TASKS} <= known
    assert sciworld_task_name("task-5-chemistry-mix-paint-(secondary-color)") == "chemistry-mix-paint-secondary-color"
    with pytest.raises(ValueError, match="not an ETO ScienceWorld id"):
        from tratree.envs.eto_ids import environment_task_id

        environment_task_id("scienceworld", "5_1", "train")  # number 5 is unused in ETO's table


@pytest.mark.slow
def test_scienceworld_invalid_action_is_answered_not_raised(sciworld):
    task_id = sciworld.tasks("test")["lifespan-longest-lived"][0]
    sciworld.reset(task_id)
    out = sciworld.step("fly to the moon")
    assert "No known action" in out.observation and 0.0 <= out.score <= 1.0 and not out.done


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (EnvironmentSpec(name="alfworld"), "alfworld-download"),
        (EnvironmentSpec(name="alfworld", data_path="/nonexistent/alfworld"), "no games under"),
        (EnvironmentSpec(name="webshop"), "WebShop needs its package and data"),
        (EnvironmentSpec(name="webshop", data_path="/nonexistent/webshop"), "items_shuffle.json not found"),
    ],
)
def test_alfworld_and_webshop_without_data_fail_at_once(spec, message, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    t0 = time.monotonic()
    with pytest.raises(EnvironmentUnavailable, match=message):
        make_env(spec)
    assert time.monotonic() - t0 < 1.0


def test_alfworld_with_empty_data_folder_fails_instead_of_spinning(tmp_path):
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    t0 = time.monotonic()
    with pytest.raises(EnvironmentUnavailable, match="no games under"):
        make_env(EnvironmentSpec(name="alfworld", data_path=str(tmp_path)))
    assert time.monotonic() - t0 < 1.0


def test_cli_reports_missing_data_in_one_line(cli, tmp_path):
    exp = tmp_path / "alf.yaml"
    exp.write_text("weak: {model: tiny:weak}\nstrong: {model: tiny:strong}\nenvironment: {name: alfworld}\n")
    r = cli("expert", str(exp), "-o", str(tmp_path / "e.jsonl"), env={"ALFWORLD_DATA": ""})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "alfworld-download" in r.stderr


def test_unknown_games_are_refused():
    with pytest.raises(ValueError, match="unknown TextWorldExpress game 'chess'"):
        make_env(EnvironmentSpec(name="textworldexpress", tasks=["chess"]))


@pytest.mark.slow
def test_etos_scienceworld_protocol_has_its_task_types_splits_and_step_limits(monkeypatch):
    from tratree.catalog import SCIWORLD_TASKS as TASKS
    from tratree.envs import step_limit

    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx384m")
    spec = EnvironmentSpec(name="scienceworld", tasks=[], game_params="easy", protocol="eto")
    env = make_env(spec)
    try:
        test, dev = env.tasks("test"), env.tasks("dev")
        assert tuple(test) == TASKS and len(TASKS) == 24
        assert sum(map(len, test.values())) == 211 and sum(map(len, dev.values())) == 194
        own = make_env(EnvironmentSpec(name="scienceworld", tasks=list(TASKS), game_params="easy"))
        try:
            for task in TASKS:
                theirs = own.tasks("test")[task]
                # ETO's unseen test set: the first ten of each task type's own test variations
                assert test[task] == theirs[:10], task
                assert set(dev[task]) <= set(own.tasks("dev")[task]), task
        finally:
            own.close()
    finally:
        env.close()
    limit = step_limit(spec)
    assert limit("boil/test/21") == 100 and limit("lifespan-longest-lived/test/93") == 10
    assert step_limit(EnvironmentSpec(name="scienceworld", max_steps=7))("boil/test/21") == 7


def test_etos_step_limits_for_webshop_and_alfworld_and_maxsteps_otherwise():
    from tratree.envs import step_limit

    assert step_limit(EnvironmentSpec(name="webshop", protocol="eto"))("webshop/test/3") == 10
    assert step_limit(EnvironmentSpec(name="alfworld", protocol="eto", max_steps=9))("alfworld/test/3") == 40
    assert step_limit(EnvironmentSpec(name="alfworld", max_steps=9))("alfworld/test/3") == 9


@pytest.mark.parametrize(("env", "tasks", "message"), [
    ("scienceworld", ["inclined-plane-determine-angle"], "not one of ETO's ScienceWorld task types"),
    ("textworldexpress", ["cookingworld"], "ETO has no TextWorldExpress protocol"),
])
def test_eto_protocol_refuses_what_eto_never_ran(env, tasks, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        EnvironmentSpec(name=env, tasks=tasks, protocol="eto")


def test_alfworld_episodes_are_laid_out_as_etos_data():
    from tratree.envs.alfworld import clean_observation, first_turn

    reset = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
             "you see a cabinet 1, and a toilet 1.\n\nYour task is to: put some spraybottle on toilet.")
    assert first_turn(reset) == ("You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
                                 "and a toilet 1.\nYour task is to: put some spraybottle on toilet.")
    assert clean_observation("You arrive at loc 12. On the cabinet 1, you see a cloth 1.") == \
        "On the cabinet 1, you see a cloth 1."
    assert clean_observation("Nothing happens.") == "Nothing happens."
