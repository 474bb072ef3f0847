"""The CLI contract: flags, `stats --json` keys, exit status 2 on bad input, no partial output, no torch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_traj
from tests.unit.test_formats import conversation
from tratree.records.formats import Trajectory


@pytest.fixture
def traj_file(tmp_path):
    trajs = [
        make_traj("t1", ["open", "take", "cook"], 1.0),
        make_traj("t1", ["open", "take", "go"], 0.0),
        make_traj("t1", ["open", "go"], 0.25),
        make_traj("t2", ["go", "<b>bold</b>"], 0.5),
        make_traj("t2", ["go", "open"], 0.0),
    ]
    p = tmp_path / "traj.jsonl"
    p.write_text("".join(t.model_dump_json() + "\n" for t in trajs))
    return p


def test_build_stats_pairs_mcts_render_pipeline(cli, tmp_path, traj_file):
    trees = tmp_path / "trees.jsonl"
    r = cli("tree", "build", str(traj_file), "-o", str(trees))
    assert r.returncode == 0, r.stderr
    r = cli("tree", "stats", str(trees), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"trees": 2, "trajectories": 5, "nodes": 8, "leaves": 5, "max_depth": 3,
                                    "divergence_points": 3}
    # a trajectories file gives the same statistics
    assert json.loads(cli("tree", "stats", str(traj_file), "--json").stdout) == json.loads(r.stdout)
    human = cli("tree", "stats", str(trees))
    assert "divergence points" in human.stdout and human.returncode == 0

    pairs = tmp_path / "pairs.jsonl"
    r = cli("pairs", str(trees), "-o", str(pairs), "--min-gap", "0.1")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) == 3 and all(p["chosen_value"] - p["rejected_value"] > 0.1 for p in rows)
    # random pairs come from the explored trajectories: a trees file alone is refused, in one line, with no output
    pairs.unlink()
    r = cli("pairs", str(trees), "-o", str(pairs), "--mode", "random", "--seed", "3")
    assert r.returncode == 2 and "--trajectories" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not pairs.exists()
    explored = {tuple(s.action for s in t.steps): t.score for t in map(Trajectory.model_validate_json,
                                                                       traj_file.read_text().splitlines())}
    for args in (["--trajectories", str(traj_file)], []):
        source = str(trees) if args else str(traj_file)
        r = cli("pairs", source, *args, "-o", str(pairs), "--mode", "random", "--seed", "3")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(x) for x in pairs.read_text().splitlines()]
        assert rows and all(p["kind"] == "random" and p["prefix"] == [] for p in rows)
        for p in rows:  # whole explored trajectories with their own scores
            assert explored[tuple(s["action"] for s in p["chosen"])] == p["chosen_value"] > p["rejected_value"]

    paths = tmp_path / "paths.jsonl"
    r = cli("mcts", str(trees), "-o", str(paths), "--iterations", "200", "--exploration", "1.0", "--seed", "1")
    assert r.returncode == 0, r.stderr
    best = {json.loads(x)["task_id"]: json.loads(x) for x in paths.read_text().splitlines()}
    assert [s["action"] for s in best["t1"]["steps"]] == ["open", "take", "cook"]
    assert best["t1"]["value"] == 1.0

    html = tmp_path / "t2.html"
    r = cli("tree", "render", str(trees), "--task", "t2", "-o", str(html), "--paths", str(paths))
    assert r.returncode == 0, r.stderr
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "Trajectory tree · t2" in page
    assert 'class="node div' in page  # the divergence point is highlighted
    assert page.count('class="edge epath"') == 2  # e* is two steps long
    assert "<b>bold</b>" not in page.split("<script>")[0]  # actions are escaped
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops\n", r"traj\.jsonl:1: not valid JSON"),
        ('{"task_id": "t", "instruction": "i", "steps": [{"observation": "o", "action": "a"}]}\n',
         r"traj\.jsonl:1: missing field 'score'"),
        ('{"task_id": "t", "instruction": "i", "steps": [{"observation": "o", "action": "a"}], "score": 2}\n',
         r"traj\.jsonl:1: score: Input should be less than or equal to 1"),
    ],
)
@pytest.mark.parametrize("command", [["tree", "build"], ["pairs"], ["mcts"], ["tree", "stats"]])
def test_bad_input_exits_2_with_one_line_and_no_output(cli, tmp_path, traj_file, content, message, command):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(traj_file.read_text().splitlines()[0] + "\n" + content)
    out = tmp_path / "out.jsonl"
    args = [*command, str(bad)] + ([] if command == ["tree", "stats"] else ["-o", str(out)])
    r = cli(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tratree: error: ")
    import re

    assert re.search(message.replace("traj", "bad").replace(":1:", ":2:"), r.stderr), r.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_bad_tree_file_and_unknown_task(cli, tmp_path, traj_file):
    trees = tmp_path / "trees.jsonl"
    cli("tree", "build", str(traj_file), "-o", str(trees))
    rec = json.loads(trees.read_text().splitlines()[0])
    rec["nodes"][0]["parent"] = 3
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rec) + "\n")
    r = cli("mcts", str(broken), "-o", str(tmp_path / "p.jsonl"))
    assert r.returncode == 2 and "broken.jsonl:1: nodes[0] must be the root" in r.stderr
    r = cli("tree", "render", str(trees), "--task", "nope", "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "no tree for task 'nope'" in r.stderr and not (tmp_path / "x.html").exists()
    r = cli("tree", "build", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "missing.jsonl: cannot read" in r.stderr


def test_flag_values_are_checked(cli, tmp_path, traj_file):
    for args in (["tree", "build", str(traj_file), "-o", "x", "--similarity", "1.5"],
                 ["mcts", str(traj_file), "-o", "x", "--iterations", "0"],
                 ["pairs", str(traj_file), "-o", "x", "--min-gap", "-1"]):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_numbers_are_bad_input_everywhere(cli, tmp_path, traj_file, value):
    for args in (["pairs", str(traj_file), "-o", "x", f"--min-gap={value}"],
                 ["mcts", str(traj_file), "-o", "x", f"--exploration={value}"],
                 ["tree", "build", str(traj_file), "-o", "x", f"--similarity={value}"],
                 ["compare", str(traj_file), "--baseline", str(traj_file), f"--max-drop={value}"],
                 ["submit", str(traj_file), "--wait", f"--timeout={value}"]):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and "finite" in r.stderr and not (tmp_path / "x").exists(), (args, r.stderr)
    r = cli("submit", str(traj_file), "--wait", "--poll", "0", cwd=tmp_path)
    assert r.returncode == 2 and "below 0.1 s" in r.stderr


def test_import_eto(cli, tmp_path):
    src = tmp_path / "eto.json"
    src.write_text(json.dumps([conversation("1", ["Thought: t\nAction: search[a]"], [], reward=0.5)]))
    out = tmp_path / "traj.jsonl"
    r = cli("import", "eto", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())
    assert row["steps"][0]["action"] == "search[a]" and row["score"] == 0.5
    src.write_text("[{}]")
    r = cli("import", "eto", str(src), "-o", str(tmp_path / "new.jsonl"))
    assert r.returncode == 2 and "eto.json:1: missing field 'id'" in r.stderr and not (tmp_path / "new.jsonl").exists()


@pytest.mark.parametrize(("environment", "message"), [
    ("{name: textworldexpress, tasks: [chess]}", "unknown textworldexpress task 'chess' (known: cookingworld"),
    ("{name: scienceworld, tasks: [alchemy]}", "unknown scienceworld task 'alchemy' (known: boil"),
])
def test_validate_checks_task_and_game_names_without_starting_an_environment(cli, tmp_path, environment, message):
    spec = tmp_path / "x.yaml"
    spec.write_text(f"weak: {{model: tiny:weak}}\nstrong: {{model: tiny:strong}}\nenvironment: {environment}\n")
    r = cli("validate", str(spec))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_validate(cli):
    r = cli("validate", "examples/quickstart.yaml")
    assert r.returncode == 0 and "valid W2SGExperiment 'quickstart'" in r.stdout
    r = cli("validate", "examples/quickstart.yaml", "--print")
    # every default is written out (the cosine schedule and the seeds are not in the file)
    assert "apiVersion: tratree.io/v1alpha1" in r.stdout and "lrScheduler: cosine" in r.stdout and "seed: 0" in r.stdout


BODY = "weak: {model: tiny:weak}\nstrong: {model: tiny:strong}\n"


@pytest.mark.parametrize(("content", "message"), [
    (BODY + "weak: {model: x}\n", r"x\.yaml:3: not valid YAML: duplicate key 'weak'"),
    (BODY.encode("utf-16"), r"x\.yaml: not UTF-8 text"),
    (b"\x00\xff\x13binary" * 50, r"x\.yaml: not UTF-8 text"),
    (BODY + "seeds: [" + "9" * 5000 + "]\n", r"x\.yaml:3: not valid YAML: integer too long \(5000 digits\)"),
    (BODY + "training: {sft: {epochs: .inf}}\n", r"spec\.training\.sft\.epochs: Input should be a finite number"),
    ("weak: {model: tiny:huge}\nstrong: {model: tiny:strong}\n", r"spec\.weak\.model: unknown tiny preset 'tiny:huge'"),
    (BODY + "expert: {path: eto.json}\n", r"spec\.expert: path 'eto\.json' is given but source is 'environment'"),
])
def test_a_bad_experiment_file_is_one_line_and_exit_2(cli, tmp_path, content, message):
    import re

    path = tmp_path / "x.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (["validate", str(path)], ["run", str(path), "--artifacts", f"file://{tmp_path}/store"]):
        r = cli(*command)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and re.search(message, r.stderr), (command, r.stderr)
    assert not (tmp_path / "store").exists()


def test_model_references_are_checked_before_the_first_stage(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for ref, why in ((str(tmp_path / "nope"), "no such directory"),
                     (str(tmp_path / "empty"), "not a model directory (no config.json or adapter_config.json)"),
                     (str(adapter), "a LoRA adapter without its weights (adapter_model.safetensors or adapter_model.bin)")):
        path = tmp_path / "x.yaml"
        path.write_text(f"weak: {{model: '{ref}'}}\nstrong: {{model: tiny:strong}}\n")
        r = cli("run", str(path), "--artifacts", f"file://{tmp_path}/store")
        assert r.returncode == 2 and r.stderr == f"tratree: error: {path}: weak.model: {ref}: {why}\n", r.stderr
        assert not (tmp_path / "store").exists()
        # validate cannot know whether the path is one inside a stage image: it warns
        r = cli("validate", str(path))
        assert r.returncode == 0 and f"warning: weak.model: {ref}: {why} on this machine" in r.stderr
    path.write_text("weak: {model: meta-llama/Llama-2-7b-hf}\nstrong: {model: tiny:strong}\n")
    r = cli("validate", str(path))
    assert r.returncode == 0 and "weak.model: meta-llama/Llama-2-7b-hf: a Hugging Face hub id, not checked here" in r.stderr
    # run asks the hub (briefly) before any stage: no network is one line, at once
    r = cli("run", str(path), "--artifacts", f"file://{tmp_path}/store", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "the hub cannot be reached from here" in r.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command", [["tree", "stats"], ["pairs", "-o", "o.jsonl"], ["mcts", "-o", "o.jsonl"],
                                     ["tree", "render", "--task", "t", "-o", "o.html"]])
def test_a_binary_file_given_as_jsonl_is_one_line(cli, tmp_path, command):
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(bytes(range(256)) * 8)
    r = cli(command[0], *command[1:2], str(binary), *command[2:], cwd=tmp_path) if command[0] == "tree" else \
        cli(command[0], str(binary), *command[1:], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "b.jsonl:1: not" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl"]


@pytest.mark.parametrize(("environment", "env", "message"), [
    ("{name: textworldexpress, tasks: [chess]}", {}, "unknown TextWorldExpress game 'chess'"),
    ("{name: scienceworld, tasks: [alchemy]}", {}, "unknown ScienceWorld task 'alchemy'"),
    ("{name: textworldexpress, tasks: [], gameParams: 'numLocations=1'}", {},
     "gameParams 'numLocations=1' for "),
    ("{name: textworldexpress, tasks: [cookingworld]}", {"PATH": str(Path(sys.executable).parent), "JAVA_HOME": ""},
     "java is not on PATH"),
    ("{name: textworldexpress, tasks: [cookingworld]}", {"JAVA_TOOL_OPTIONS": "-Xmx1m"},
     "TextWorldExpress's JVM did not start (Error occurred during initialization of VM)"),
])
def test_environment_faults_are_one_line(cli, tmp_path, environment, env, message):
    spec = tmp_path / "x.yaml"
    spec.write_text(f"weak: {{model: tiny:weak}}\nstrong: {{model: tiny:strong}}\nenvironment: {environment}\n")
    r = cli("expert", str(spec), "-o", str(tmp_path / "x.jsonl"), "--limit", "1", env={"JAVA_TOOL_OPTIONS": "-Xmx384m", **env})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x.jsonl").exists()


def test_ctrl_c_while_environments_start_or_run_says_interrupted_and_exits_130(tmp_path):
    """Wherever Ctrl-C lands (in Python, or inside a call into an environment's JVM, which py4j turns
    into another error), the command says "interrupted" once, after at most its own warnings, and exits 130,
    writing nothing."""
    import time

    spec = tmp_path / "x.yaml"
    spec.write_text("weak: {model: tiny:weak}\nstrong: {model: tiny:strong}\n"
                    "environment: {name: textworldexpress}\n")
    # the gold runs of every game's training tasks keep the command busy for ~19 s here, far past the
    # last delay (CookingWorld's alone took ~1.5 s, and under 1.4 s on CI's machine), so every
    # interrupt lands while it works
    for delay in (0.8, 1.1, 1.4, 1.8):  # from the start of main() (interpreter start-up is ~0.2 s)
        # as from a terminal: a run started in the background (nohup, `&`) inherits SIGINT ignored
        p = subprocess.Popen([sys.executable, "-m", "tratree", "expert", str(spec), "-o", str(tmp_path / "x.jsonl")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        assert p.poll() is None, f"the command ended before its interrupt at {delay} s"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        # warnings the work printed before the interrupt may come first (on a fast machine the expert
        # stage has already dropped CookingWorld's partial gold runs); then one "interrupted", no traceback
        *before, last = err.splitlines() or [""]
        assert (p.returncode, last) == (130, "tratree: interrupted"), (delay, p.returncode, err[-2000:])
        assert all(line.startswith("tratree: warning: ") for line in before), (delay, err[-2000:])
        assert not (tmp_path / "x.jsonl").exists()


def test_a_ctrl_c_a_library_swallowed_still_commits_nothing(tmp_path):
    """py4j can lose a KeyboardInterrupt raised inside a JVM call; the latched Ctrl-C still keeps the
    output from being committed."""
    out = tmp_path / "out.txt"
    code = f"""
import os, signal, time
from tratree import interrupts
from tratree.store.atomic import atomic_write
interrupts.latch()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
except KeyboardInterrupt:
    pass  # what a library that swallows it does
try:
    with atomic_write({str(out)!r}) as fh:
        fh.write("done")
except KeyboardInterrupt:
    print("refused")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (r.returncode, r.stdout, r.stderr) == (0, "refused\n", "")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temp file


def test_a_ctrl_c_in_a_finalizer_prints_no_traceback_and_is_still_seen():
    """A Ctrl-C that lands in a finalizer (py4j cleans up Java objects from the garbage collector) cannot
    propagate; Python would print "Exception ignored in" and a traceback. Latched, it prints nothing and
    the next check raises (seen in CI: a traceback before "tratree: interrupted")."""
    code = """
import os, signal, time, weakref
from tratree import interrupts
interrupts.latch()
class Java:
    pass
def cleanup(_):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
obj = Java()
ref = weakref.ref(obj, cleanup)
del obj
try:
    interrupts.check()
except KeyboardInterrupt:
    print("stopped")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (r.returncode, r.stdout, r.stderr) == (0, "stopped\n", "")


def test_tree_commands_never_import_torch_and_the_tree_and_mcts_commands_not_pydantic(tmp_path, traj_file):
    trees = str(tmp_path / "trees.jsonl")
    code = f"""
import sys
from tratree.cli import main
def loaded(*roots):
    return sorted(m for m in sys.modules if m.split(".")[0] in roots)
for args in (["tree", "build", {str(traj_file)!r}, "-o", {trees!r}], ["tree", "stats", {trees!r}, "--json"],
             ["mcts", {trees!r}, "-o", {str(tmp_path / 'm.jsonl')!r}],
             ["tree", "render", {trees!r}, "--task", "t1", "-o", {str(tmp_path / 't.html')!r}]):
    assert main(args) == 0
assert not loaded("pydantic"), loaded("pydantic")
assert main(["pairs", {trees!r}, "-o", {str(tmp_path / 'p.jsonl')!r}]) == 0
assert not loaded("torch", "transformers", "sentence_transformers", "numpy"), loaded("torch", "transformers", "numpy")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


def test_a_kubeconfig_with_bad_base64_is_one_line(cli, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', "
        "certificate-authority-data: '!!!notbase64'}}]\nusers: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
    r = cli("submit", "examples/quickstart.yaml", env={"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no usable Kubernetes configuration" in r.stderr, r.stderr


def test_the_vllm_backend_where_vllm_is_missing_is_one_line_before_any_stage(cli, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    spec = tmp_path / "x.yaml"
    spec.write_text("weak: {model: tiny:weak}\nstrong: {model: tiny:strong}\npolicy: {backend: vllm}\n")
    r = cli("run", str(spec), "--artifacts", f"file://{tmp_path}/store")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs vLLM" in r.stderr, r.stderr
    assert not (tmp_path / "store").exists()
