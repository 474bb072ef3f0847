"""Trajectory JSONL and the ETO conversations import: good files load, bad ones name the line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_traj
from tratree.records.formats import FormatError, Trajectory, read_eto, read_jsonl, write_jsonl

GOOD = {
    "task_id": "cookingworld/train/17",
    "instruction": "You are hungry!",
    "steps": [{"observation": "You are in the kitchen.", "thought": "I need the cookbook.", "action": "read cookbook"}],
    "final_observation": "You read the recipe.",
    "score": 0.5,
    "success": False,
    "meta": {"policy": "sft-weak", "temperature": 0.7, "top_p": 0.9, "sample": 3},
}


def test_design_example_trajectory_round_trips(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(GOOD) + "\n\n")
    (traj,) = read_jsonl(p, Trajectory)
    assert traj.steps[0].action == "read cookbook" and traj.meta["sample"] == 3
    out = tmp_path / "o.jsonl"
    assert write_jsonl(out, [traj]) == 1
    assert json.loads(out.read_text()) == GOOD


def test_success_defaults_to_full_score(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [{k: v for k, v in GOOD.items() if k != "success"} | {"score": s} for s in (1.0, 0.4)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [t.success for t in read_jsonl(p, Trajectory)] == [True, False]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"t\.jsonl:2: not valid JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "score"}), r"t\.jsonl:2: missing field 'score'"),
        (json.dumps(GOOD | {"score": 1.5}), r"t\.jsonl:2: score: Input should be less than or equal to 1"),
        (json.dumps(GOOD | {"score": -0.1}), r"t\.jsonl:2: score: Input should be greater than or equal to 0"),
        (json.dumps(GOOD | {"steps": []}), r"t\.jsonl:2: steps: List should have at least 1 item"),
        (json.dumps(GOOD | {"steps": [{"observation": "o"}]}), r"t\.jsonl:2: missing field 'steps\.0\.action'"),
        (json.dumps(GOOD | {"colour": "red"}), r"t\.jsonl:2: unknown field 'colour'"),
        ("[1, 2]", r"t\.jsonl:2: "),
    ],
)
def test_bad_trajectory_lines_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(FormatError, match=message) as info:
        read_jsonl(p, Trajectory)
    assert "\n" not in str(info.value)


def test_write_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "o.jsonl"

    def records():
        yield make_traj("a", ["x"], 1.0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(out, records())
    assert list(tmp_path.iterdir()) == []


def conversation(id_, replies, observations, reward=None, meta_reward=None, final=None):
    turns = [{"from": "human", "value": "You are web shopping. ..."}, {"from": "gpt", "value": "OK"},
             {"from": "human", "value": "WebShop [SEP] i need a red shirt [SEP] Search"}]
    for k, reply in enumerate(replies):
        turns.append({"from": "gpt", "value": reply})
        if k < len(observations):
            turns.append({"from": "human", "value": "Observation: " + observations[k]})
    if final is not None:
        turns.append({"from": "human", "value": final})
    item = {"id": id_, "conversations": turns}
    if reward is not None:
        item["reward"] = reward
    if meta_reward is not None:
        item["meta"] = {"reward": meta_reward}
    return item


@pytest.mark.parametrize(("errno_", "reason"), [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_naming_the_output_and_leaves_nothing(tmp_path, monkeypatch, errno_,
                                                                                    reason):
    import os

    from tratree.store.atomic import OutputError

    out = tmp_path / "out.jsonl"
    out.write_text("old\n")

    def fsync(fd):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match=rf"out\.jsonl: cannot write: {reason}"):
        write_jsonl(out, [make_traj("t", ["a"], 1.0)])
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_an_output_that_is_a_directory_is_refused(tmp_path):
    from tratree.store.atomic import OutputError

    with pytest.raises(OutputError, match="cannot write: it is a directory"):
        write_jsonl(tmp_path, [])


def test_eto_import_maps_turns_to_steps(tmp_path):
    data = [
        conversation("7", ["Thought: search it.\nAction: search[red shirt]", "Thought: buy.\nAction: click[b01]"],
                     ["Results: b01 red shirt"], reward=0.75, final="Observation: Thank you"),
        conversation("8", ["Action: search[x]"], [], meta_reward=0.0),
        conversation("9", ["Thought: t\nAction: click[buy now]"], []),
    ]
    p = tmp_path / "eto.json"
    p.write_text(json.dumps(data, indent=2))
    a, b, c = read_eto(p)
    assert a.task_id == "7" and a.instruction == "WebShop [SEP] i need a red shirt [SEP] Search"
    assert [s.action for s in a.steps] == ["search[red shirt]", "click[b01]"]
    assert a.steps[0].observation == a.instruction  # the task turn is the first observation
    assert a.steps[1].observation == "Results: b01 red shirt"
    assert a.steps[0].thought == "search it." and a.final_observation == "Thank you"
    assert (a.score, a.success) == (0.75, False)
    assert (b.score, b.steps[0].thought) == (0.0, "")
    assert (c.score, c.success) == (1.0, True)  # success files carry no reward


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[1].pop("id"), r"eto\.json:\d+: missing field 'id'"),
        (lambda d: d[1].update(reward=3), r"eto\.json:\d+: reward: must be a number in \[0, 1\]"),
        (lambda d: d[1]["conversations"][3].update(value="I will click"), r"eto\.json:\d+: conversations\[3\]: no 'Action:'"),
        (lambda d: d[1]["conversations"][3].update({"from": "human"}), r"eto\.json:\d+: conversations\[3\]\.from"),
        (lambda d: d[1].update(conversations=d[1]["conversations"][:3]), r"eto\.json:\d+: conversations need"),
    ],
)
def test_bad_eto_entries_name_the_line_of_the_entry(tmp_path, mutate, message):
    data = [conversation(str(i), ["Action: a"], []) for i in range(3)]
    mutate(data)
    p = tmp_path / "eto.json"
    p.write_text(json.dumps(data, indent=1))
    with pytest.raises(FormatError, match=message) as info:
        read_eto(p)
    # entry 1 starts on the line after entry 0's closing brace
    line = int(str(info.value).split(":")[1])
    assert p.read_text().splitlines()[line - 1].strip() == "{"
    assert line > 3


def test_eto_file_that_is_not_a_list_or_not_json(tmp_path):
    p = tmp_path / "eto.json"
    p.write_text('{"id": 1}')
    with pytest.raises(FormatError, match=r"eto\.json:1: expected a JSON list"):
        read_eto(p)
    p.write_text('[\n{"id": 1,\n')
    with pytest.raises(FormatError, match=r"eto\.json:\d+: not valid JSON"):
        read_eto(p)


def test_gold_runs_below_full_score_are_dropped_and_counted_by_task_type(monkeypatch, capsys):
    """ScienceWorld's own gold path can end below full score under ETO's simplifications: that is not expert
    data, so it is dropped with a warning naming how many and which task types; keepPartial keeps it; a
    stage left with none fails in one line."""
    from tests.conftest import make_traj, small_spec
    from tratree.agent import expert

    gold = [make_traj("grow-fruit/train/93", ["look"], 0.46), make_traj("boil/train/1", ["look"], 1.0),
            make_traj("grow-fruit/train/94", ["look"], 0.2), make_traj("melt/train/2", ["look"], 1.0)]
    monkeypatch.setattr(expert, "gold_trajectories", lambda spec, split, limit: iter(gold))
    kept = expert.expert_trajectories(small_spec(), "train")
    assert [t.task_id for t in kept] == ["boil/train/1", "melt/train/2"]
    assert "dropped 2 of 4 gold runs that end below full score (2 grow-fruit)" in capsys.readouterr().err
    assert len(expert.expert_trajectories(small_spec(expert={"keepPartial": True}), "train")) == 4
    gold[1:] = [make_traj("boil/train/1", ["look"], 0.9)]
    with pytest.raises(expert.NoExpertData, match=r"all 2 gold runs .* \(1 boil, 1 grow-fruit\).*keepPartial"):
        expert.expert_trajectories(small_spec(), "train")
