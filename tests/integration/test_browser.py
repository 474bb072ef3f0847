"""The tree viewer as a person sees it: `tratree tree render` pages opened in headless Chromium
(Debian's package, which `make setup` installs) driven by Playwright."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import make_traj
from tratree.records.formats import write_jsonl

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root on a machine with no outside network: no sandbox, no background connections to Google
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make setup` installs Debian's chromium package"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _branching_trajectories(task: str, n: int, depth: int) -> list:
    """``n`` trajectories of one task whose actions branch at every step (binary digits of k), so the
    tree has divergence points at every depth and both successes and failures."""
    return [make_traj(task, [f"go {(k >> (depth - 1 - d)) & 1} at {d}" for d in range(depth)], float(k % 3 == 0))
            for k in range(n)]


def _render(cli, tmp_path: Path, trajs: list, task: str) -> Path:
    write_jsonl(tmp_path / "t.jsonl", trajs)
    r = cli("tree", "build", str(tmp_path / "t.jsonl"), "-o", str(tmp_path / "trees.jsonl"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "tree.html"
    r = cli("tree", "render", str(tmp_path / "trees.jsonl"), "--task", task, "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _open(browser, page_file: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(page_file.as_uri(), wait_until="load")
    return page, problems


def test_a_rendered_tree_shows_a_clicked_nodes_step_without_console_errors(browser, cli, tmp_path):
    trajs = _branching_trajectories("t1", 8, 3)
    trajs[0].steps[1].thought = "the <fridge> & the knife"  # markup in text stays text
    page, problems = _open(browser, _render(cli, tmp_path, trajs, "t1"))
    assert page.title() == "Trajectory tree · t1"
    assert page.locator("g.node").count() == 1 + 2 + 4 + 8
    assert page.locator("g.div").count() == 1 + 2 + 4  # every inner node branches
    assert page.locator("path.epath").count() == 3  # the MCTS path, root to leaf

    node = page.locator("g.node", has_text="go 0 at 1").first
    node.locator("circle").click()
    detail = page.locator("#detail")
    assert "go 0 at 1" in detail.inner_text()
    assert "the <fridge> & the knife" in detail.inner_text()
    assert "Path: go 0 at 0 › go 0 at 1" in detail.inner_text()  # the actions that lead to it
    assert detail.locator("fridge").count() == 0
    assert page.locator("g.sel").count() == 1

    page.locator("g.node", has_text="ROOT").locator("circle").click()
    assert "solve t1" in detail.inner_text()  # the root shows the task
    assert page.locator("g.sel").count() == 1
    page.screenshot(path=str(tmp_path / "tree.png"))
    assert problems == []


def test_a_2000_node_tree_renders_within_2_seconds_and_stays_clickable(browser, cli, tmp_path):
    trajs = _branching_trajectories("big", 1024, 10)  # 2 + 4 + ... + 1024 = 2,046 nodes below the root
    page_file = _render(cli, tmp_path, trajs, "big")
    page, problems = _open(browser, page_file)
    # from the start of navigation to the first frame painted after the page loaded
    rendered_ms = page.evaluate(
        "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now()))))")
    assert page.locator("g.node").count() == 2047
    assert rendered_ms < 2000, f"the 2,000-node page took {rendered_ms:.0f} ms to render"

    start = time.perf_counter()
    page.locator("g.node[data-id='2000'] circle").click()
    page.locator("#detail", has_text="node 2000 ").wait_for()
    clicked_s = time.perf_counter() - start
    assert clicked_s < 2, f"a click took {clicked_s:.2f} s to show its node"

    tall = page.locator("svg#tree").bounding_box()["height"]
    page.get_by_role("button", name="fit").click()  # the whole tree at once
    fitted = page.locator("svg#tree").bounding_box()
    assert fitted["height"] < 900 < tall, (fitted, tall)
    page.get_by_role("button", name="100%").click()
    assert page.locator("svg#tree").bounding_box()["height"] == tall
    assert problems == []
