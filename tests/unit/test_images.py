"""The Dockerfiles: what they copy exists, base images are pinned, nothing runs as root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def base_of(path: Path, name: str) -> str:
    """A FROM's image with the build ARGs declared before the first FROM filled in from their defaults."""
    defaults = {}
    for word, args in instructions(path):
        if word == "FROM":
            break
        if word == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            defaults[key] = value
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], name)


def test_there_is_an_image_for_each_kind_of_job():
    assert {p.name for p in DOCKERFILES} == {"operator.Dockerfile", "cpu.Dockerfile", "trainer.Dockerfile",
                                              "explorer.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_copies_what_exists_and_runs_as_non_root(path):
    steps = instructions(path)
    bases = [base_of(path, args.split()[0]) for word, args in steps if word == "FROM"]
    assert bases
    for base in bases:
        tag = base.split("@")[0].rpartition(":")[2] if ":" in base.split("@")[0] else ""
        assert "@sha256:" in base or re.search(r"\d", tag), f"{base}: not pinned to a version"
        assert tag != "latest"
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file"
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path.name}: the last USER must not be root"
    run = " ".join(args for word, args in steps if word == "RUN")
    assert re.search(r"pip install [^&]*\"?\.\[", run), f"{path.name}: tratree is installed from the repository"
    if path.name in ("cpu.Dockerfile", "trainer.Dockerfile"):
        assert '"torch==2.13.0"' in run, f"{path.name}: torch pinned as in the Makefile"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_base_is_a_build_arg_with_a_public_default(path):
    steps = instructions(path)
    first = next(i for i, (word, _) in enumerate(steps) if word == "FROM")
    assert steps[first][1] == "${BASE}", f"{path.name}: FROM takes ARG BASE (a locally made base is passed in)"
    assert ("ARG", "BASE=python:3.11.11-slim-bookworm") in steps[:first]


@pytest.mark.parametrize("name", ["cpu.Dockerfile", "explorer.Dockerfile"])
def test_the_jre_installs_on_a_slim_base(name):
    run = [args for word, args in instructions(ROOT / "images" / name) if word == "RUN"]
    jre = next(r for r in run if "openjdk-17-jre-headless" in r)
    # update-alternatives exits 100 when /usr/share/man/man1 is missing, as it is on slim bases
    assert jre.index("mkdir -p /usr/share/man/man1") < jre.index("apt-get install")


def test_the_trainer_installs_a_cuda_build_that_torch_2_13_ships():
    args = dict(a.partition("=")[::2] for word, a in instructions(ROOT / "images/trainer.Dockerfile") if word == "ARG")
    assert args["TORCH_INDEX"].rsplit("/", 1)[1] in ("cu126", "cu130")


def test_the_explorer_runs_a_vllm_on_torch_2_13_and_transformers_5_with_peft():
    steps = instructions(ROOT / "images/explorer.Dockerfile")
    args = dict(a.partition("=")[::2] for word, a in steps if word == "ARG")
    # 0.29 and 0.30 pin torch 2.13.0 and transformers >= 5.10 (0.11 read transformers-5 configs wrongly)
    assert args["VLLM_VERSION"] in ("0.29.0", "0.30.0")
    run = " ".join(a for word, a in steps if word == "RUN")
    assert 'pip install "vllm==${VLLM_VERSION}"' in run and '"peft>=0.21,<1"' in run


def test_the_images_share_their_torch_layer_and_code_comes_last():
    # images/build.sh passes every image one TORCH_INDEX: identical steps up to torch are one cached layer
    # (about 4.3 GB) that cpu, trainer and explorer share; the code is the last layer, so a change of it
    # rebuilds seconds, not the dependencies
    heads = {}
    for name in ("cpu", "trainer", "explorer"):
        steps = instructions(ROOT / "images" / f"{name}.Dockerfile")
        torch = next(i for i, (word, args) in enumerate(steps) if word == "RUN" and '"torch==2.13.0"' in args)
        heads[name] = [(w, a) for w, a in steps[:torch + 1] if not (w == "ARG" and a.startswith("TORCH_INDEX="))]
    assert heads["cpu"] == heads["trainer"] == heads["explorer"]
    for path in DOCKERFILES:
        steps = instructions(path)
        copies = [i for i, (word, args) in enumerate(steps) if word == "COPY" and args.startswith("tratree ")]
        installs = [i for i, (word, args) in enumerate(steps) if word == "RUN" and "pip install" in args]
        assert copies and max(installs) > copies[0], f"{path.name}: tratree installed after its code is copied"
        if path.name != "explorer.Dockerfile":
            deps = [i for i in installs if "-c requirements/constraints.txt" in steps[i][1]]
            assert deps and deps[0] < copies[0], f"{path.name}: dependencies are a layer before the code"
            assert "--no-deps" in steps[max(installs)][1]
