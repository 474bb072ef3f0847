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


def test_there_is_an_image_for_each_kind_of_job():
    assert {p.name for p in DOCKERFILES} == {"operator.Dockerfile", "cpu.Dockerfile", "trainer.Dockerfile",
                                              "explorer.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_copies_what_exists_and_runs_as_non_root(path):
    steps = instructions(path)
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
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
