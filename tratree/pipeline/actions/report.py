"""The report stage: the paper's Table 1 for this experiment, a plot, and tree viewers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from tratree.pipeline.actions.context import StageContext
from tratree.pipeline.actions.data import PAIR_STATS
from tratree.pipeline.actions.training import TRAINING
from tratree.train.budget import FEW_STEPS

W2SG = ("w2s-mcts", "w2s-treedpo", "w2s-random-dpo")
# the pre-declared primary hypotheses (each above sft-strong), Holm-corrected together
PRIMARY = ("w2s-treedpo", "w2s-mcts")


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean": mean(values), "std": stdev(values) if len(values) > 1 else 0.0, "values": values}


def _paired(rows: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The method against sft-strong game by game over the seeds both have: mean difference x100, its
    bootstrap 95% CI over games and the two-sided paired t-test's p."""
    from tratree.analysis.stats import bootstrap_ci, paired_t, per_game_differences

    base_by_seed = {m["seed"]: m for m in base}
    seeds = [m["seed"] for m in rows if m["seed"] in base_by_seed]
    if not seeds or any("per_task" not in m for m in (*rows, *base)):
        return None

    def scores(m: dict[str, Any]) -> dict[str, float]:
        return {g: v["score"] for g, v in m["per_task"].items()}

    by_seed = {m["seed"]: m for m in rows}
    diffs = per_game_differences([scores(by_seed[s]) for s in seeds], [scores(base_by_seed[s]) for s in seeds])
    if not diffs:
        return None
    lo, hi = bootstrap_ci(diffs)
    return {"paired_mean": 100 * mean(diffs), "paired_ci": [100 * lo, 100 * hi], "paired_p": paired_t(diffs),
            "paired_games": len(diffs), "paired_seeds": len(seeds),
            "paired_sd": 100 * stdev(diffs) if len(diffs) > 1 else 0.0}


def _training(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What each seed's training did, seed by seed (absent for arms that train nothing of their own)."""
    trained = [m.get("training") or {} for m in rows]
    if not any("steps" in t for t in trained):
        return {}
    out: dict[str, Any] = {
        "optimizer_steps": [t.get("steps", 0) for t in trained],
        "lr_sum": [t.get("lr_sum") for t in trained],
        "weight_change": [t.get("weight_change") for t in trained],
        "few_steps": any(t.get("few_steps", t.get("steps", 0) < FEW_STEPS) for t in trained),
    }
    if any("pairs" in t for t in trained):
        out["pairs"] = [t.get("pairs", 0) for t in trained]  # a DPO method that trained on nothing shows 0
    if any("preference" in t for t in trained):
        out["preference"] = [t.get("preference") for t in trained]
    return out


def results_table(metrics: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: average reward and success rate over seeds, what its training did, the paired comparison
    with sft-strong over games (Holm-corrected for the primary hypotheses), the Welch p over seeds, the gap
    recovered."""
    from tratree.analysis.stats import holm, welch_t

    by_method: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(metrics, key=lambda m: m["seed"]):
        by_method.setdefault(m["method"], []).append(m)
    table: dict[str, Any] = {}
    for method in methods:
        rows = by_method.get(method)
        if not rows:
            continue
        table[method] = {
            "average_reward": _summary([m["average_reward"] for m in rows]),
            "success_rate": _summary([m["success_rate"] for m in rows]),
            "finished_rate": _summary([m.get("finished_rate", 0.0) for m in rows]),
            "invalid_actions": _summary([m.get("invalid_actions", 0.0) for m in rows]),
            "seeds": len(rows),
            # best-of-n samples sft-strong: its training is sft-strong's, not an arm's own
            **(_training(rows) if method != "best-of-n" else {}),
        }
    base_rows = by_method.get("sft-strong")
    base = [m["average_reward"] for m in base_rows] if base_rows else None
    weak = table.get("sft-weak", {}).get("average_reward", {}).get("mean")
    strong = table.get("sft-strong", {}).get("average_reward", {}).get("mean")
    ceiling = table.get("ceiling", {}).get("average_reward", {}).get("mean")
    for method, row in table.items():
        if method in W2SG or method in ("best-of-n", "eto", "ceiling"):
            row["p_value_vs_sft_strong"] = welch_t(row["average_reward"]["values"], base) if base else None
            paired = _paired(by_method[method], base_rows) if base_rows else None
            if paired:
                row.update(paired)
        mean_reward = row["average_reward"]["mean"]
        # a gap is only a gap when the ceiling beats its floor
        if weak is not None and ceiling is not None and ceiling > weak and method != "sft-weak":
            row["gap_recovered"] = (mean_reward - weak) / (ceiling - weak)
        if strong is not None and ceiling is not None and ceiling > strong and method not in ("sft-weak", "sft-strong"):
            row["gap_recovered_vs_sft_strong"] = (mean_reward - strong) / (ceiling - strong)
    adjusted = holm({m: table[m].get("paired_p") for m in PRIMARY if m in table and "paired_mean" in table[m]})
    for method, p in adjusted.items():
        table[method]["holm_p"] = p
    return table


def gpu_hours(stages: list[Any], costs: dict[str, float], methods: list[str]) -> dict[str, dict[str, float]] | None:
    """Per method, the accelerator-hours of the stages its evaluations need (their inputs, all the way up):
    ``total``, and ``shared``, its equal share of the stages other methods need too (the expert data, the
    weak model, its exploration, sft-strong). None when a needed stage's manifest has no count (made by an
    older tratree)."""
    inputs = {s.name: s.inputs for s in stages}

    def closure(name: str, seen: set[str]) -> set[str]:
        if name not in seen:
            seen.add(name)
            for n in inputs.get(name, ()):
                closure(n, seen)
        return seen

    needs = {m: set().union(*(closure(n, set()) for n in inputs if re.fullmatch(rf"eval-{re.escape(m)}-s\d+", n)))
             for m in methods}
    users: dict[str, set[str]] = {}
    for method, names in needs.items():
        for name in names:
            users.setdefault(name, set()).add(method)
    if any(n not in costs for names in needs.values() for n in names):
        return None
    return {m: {"total": sum(costs[n] / len(users[n]) for n in names) / 3600,
                "shared": sum(costs[n] / len(users[n]) for n in names if len(users[n]) > 1) / 3600}
            for m, names in needs.items() if names}


def markdown(table: dict[str, Any], title: str) -> str:
    """The results as a Markdown table in the paper's layout, then the paired comparison with sft-strong."""
    lines = [f"# {title}", "",
             "| method | average reward | success rate | finished | p vs sft-strong (Welch) | gap recovered (weak) | "
             "gap recovered (sft-strong) | DPO pairs | optimizer steps | invalid actions | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.0f}%"

    def p_text(p: float | None) -> str:
        return "—" if p is None else f"{p:.3g}"

    flagged = []
    for method, row in table.items():
        ar, sr, fr = row["average_reward"], row["success_rate"], row.get("finished_rate", {"mean": 0.0, "std": 0.0})
        pairs = "/".join(str(n) for n in row["pairs"]) if "pairs" in row else "—"
        steps = "/".join(str(n) for n in row["optimizer_steps"]) if "optimizer_steps" in row else "—"
        name = method
        if row.get("few_steps"):
            name += " ⚠"
            flagged.append(method)
        lines.append(
            f"| {name} | {ar['mean']:.1f} ± {ar['std']:.1f} | {sr['mean']:.1f} ± {sr['std']:.1f} | "
            f"{fr['mean']:.1f} | {p_text(row.get('p_value_vs_sft_strong'))} | {pct(row.get('gap_recovered'))} | "
            f"{pct(row.get('gap_recovered_vs_sft_strong'))} | {pairs} | {steps} | "
            f"{row.get('invalid_actions', {'mean': 0.0})['mean']:.1f} | {row['seeds']} |"
        )
    lines += ["", "Average reward, success rate (score 1, or the environment's own success) and finished (episodes "
              "the environment ended before the step limit: ETO's and the paper's \"success\" on WebShop and "
              "ScienceWorld) ×100 on held-out tasks, mean ± std over training seeds; p (Welch): the paper's two-sided "
              "Welch t-test of seed means against sft-strong; gap recovered (weak): (R − R_sft-weak) / (R_ceiling − "
              "R_sft-weak); gap recovered (sft-strong), the paper's form: (R − R_sft-strong) / (R_ceiling − "
              "R_sft-strong); DPO pairs: the preference pairs each seed's DPO trained on (0: it returned its initial "
              "policy); optimizer steps: each seed's own training run; invalid actions: the share of actions the "
              "environment refused (or replies with no action), ×100."]
    if flagged:
        lines += ["", f"⚠ {', '.join(flagged)}: a training run of fewer than {FEW_STEPS} optimizer steps; the row is "
                  "(close to) its starting model, not evidence about its method."]
    trained = [(m, r) for m, r in table.items() if "optimizer_steps" in r]
    if trained:
        lines += ["", "## What each arm's training did", "",
                  "| method | optimizer steps | learning rate summed over them | weight change ‖θ − θ₀‖ / ‖θ₀‖ | "
                  "DPO preference accuracy before → after | DPO mean reward margin before → after |",
                  "|---|---:|---:|---:|---:|---:|"]

        def per_seed(values: list[Any], form: str) -> str:
            return "/".join("—" if v is None else format(v, form) for v in values)

        for method, r in trained:
            prefs = [p for p in r.get("preference", []) if p]
            acc = " / ".join(f"{p['before']['accuracy']:.2f} → {p['after']['accuracy']:.2f}" for p in prefs) or "—"
            margin = " / ".join(f"{p['before']['margin']:+.3f} → {p['after']['margin']:+.3f}" for p in prefs) or "—"
            lines.append(f"| {method} | {per_seed(r['optimizer_steps'], 'd')} | {per_seed(r['lr_sum'], '.3g')} | "
                         f"{per_seed(r['weight_change'], '.2e')} | {acc} | {margin} |")
        lines += ["", "Per seed, each arm's own training run (sft-weak's and sft-strong's SFT; w2s-mcts's SFT on the "
                  "e* paths; the DPO arms' DPO), from its `training.json`; DPO's preference accuracy and margin are "
                  "on its own pairs, against its reference."]
    costed = [(m, r["gpu_hours"]) for m, r in table.items() if "gpu_hours" in r]
    if costed:
        lines += ["", "## What each method cost", "", "| method | GPU-hours | of which shared |", "|---|---:|---:|"]
        lines += [f"| {m} | {c['total']:.3g} | {c['shared']:.3g} |" for m, c in costed]
        lines += ["", "Accelerator-hours (wall time × the devices each stage ran on, from the stages' manifests; 0 on "
                  "a machine without one) of the stages each method's evaluations need; a stage several methods need "
                  "(the expert data, the weak model and its trees, sft-strong) is split equally among them, and that "
                  "share is the second column. On Kubernetes the resource's `gpuHours` also counts failed attempts."]
    paired = [(m, r) for m, r in table.items() if "paired_mean" in r]
    if paired:
        lines += ["", "## Paired against sft-strong, game by game", "",
                  "| method | mean difference | 95% CI (bootstrap over games) | paired p | Holm p (primary) | games × seeds |",
                  "|---|---:|---:|---:|---:|---:|"]
        for method, r in paired:
            lo, hi = r["paired_ci"]
            holm_p = p_text(r["holm_p"]) if "holm_p" in r else "—"
            lines.append(f"| {method} | {r['paired_mean']:+.1f} | [{lo:+.1f}, {hi:+.1f}] | {p_text(r['paired_p'])} | "
                         f"{holm_p} | {r['paired_games']} × {r['paired_seeds']} |")
        lines += ["", "Per held-out game, the method's score minus sft-strong's averaged over the seeds both have (×100); "
                  "the CI resamples games (10,000 resamples, seeded); paired p: two-sided t-test of the per-game "
                  f"differences; Holm: adjusted over the primary hypotheses ({', '.join(PRIMARY)} above sft-strong)."]
    return "\n".join(lines) + "\n"


def compute_used(trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct machines the training runs ran on, in the order first met."""
    seen: list[dict[str, Any]] = []
    for c in (t["compute"] for t in trainings if "compute" in t):
        if c not in seen:
            seen.append(c)
    return seen


def compute_markdown(ran_on: list[dict[str, Any]]) -> str:
    """One line per machine the training ran on."""
    lines = ["", "## What the training ran on", ""]
    lines += [f"- {c['accelerator'] or c['cpu']} ({c['device']}, {c['cpu_capability']}, {c['threads']} thread(s)), "
              f"torch {c['torch']}" for c in ran_on]
    lines += ["", "Training is bit-identical on one machine, not across machines (`compute` in each `training.json`)."]
    return "\n".join(lines) + "\n"


def trees_markdown(draws: list[dict[str, Any]]) -> str:
    """What the weak model's trees offer to learn from, for each draw of its exploration."""
    text = "\n## The weak model's trees\n\n"
    for draw in draws:
        info, stats = draw["informativeness"], draw["trees"]
        where = f"`{draw['stage']}`: " if len(draws) > 1 else ""
        text += (
            f"{where}{info['tasks']} tasks, {stats['trajectories']} trajectories, {stats['leaves']} leaves; "
            f"{info['divergence_points']} divergence points, {info['divergence_points_with_value_gap']} of them "
            f"between children of different value (where TreeDPO finds its pairs), in {info['tasks_with_value_gap']} "
            f"tasks; mean value spread at a divergence point (best child minus worst) {info['mean_value_spread']:.3f}.")
        if "pairs" in draw:
            text += f" TreeDPO pairs: {draw['pairs']['pairs']}."
        if "random-pairs" in draw:
            r = draw["random-pairs"]
            text += (f" Random pairs (whole explored trajectories): {r['pairs']}, of which "
                     f"{r['coinciding_with_tree_pairs']} compare the same two action sequences as a tree pair.")
        text += "\n\n"
    return text + ("Trees without value gaps teach TreeDPO nothing, and MCTS then only reproduces the weak model's "
                   "paths.\n")


def plot_training(metrics: list[dict[str, Any]], pretraining: dict[str, list[float]], path: Path) -> bool:
    """Each trained model's loss at every step (pretraining, SFT and DPO apart); False when none was recorded."""
    dpo = ("w2s-treedpo", "w2s-random-dpo", "eto", "ceiling")
    curves = [("DPO loss" if m["method"] in dpo else "SFT loss (assistant tokens)", f"{m['method']} s{m['seed']}",
               m["training"]["losses"]) for m in metrics
              if (m.get("training") or {}).get("losses") and m["method"] != "best-of-n"]  # best-of-n: sft-strong's
    curves += [("pretraining loss (whole transcripts)", name, losses) for name, losses in pretraining.items() if losses]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = (["pretraining loss (whole transcripts)"] if any(losses for losses in pretraining.values()) else []) + [
        "SFT loss (assistant tokens)", "DPO loss"]
    fig, axes = plt.subplots(1, len(titles), figsize=(5.5 * len(titles), 4))
    panel = dict(zip(titles, axes, strict=True))
    for title, label, losses in sorted(curves):
        # a DPO on a handful of pairs takes one or two steps: points, or it would not show at all
        panel[title].plot(range(1, len(losses) + 1), losses, label=label, linewidth=1.2,
                          marker="o" if len(losses) < 10 else None, markersize=3)
    for title, ax in panel.items():
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    means = [table[m]["average_reward"]["mean"] for m in methods]
    stds = [table[m]["average_reward"]["std"] for m in methods]
    colours = ["#2e7d32" if m in W2SG else "#9e9e9e" if m.startswith("sft") else "#1565c0" for m in methods]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods)), 4))
    ax.bar(methods, means, yerr=stds, color=colours, capsize=4)
    ax.set_ylabel("average reward (×100)")
    ax.set_title("held-out average reward by method (green: weak-to-strong)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(ctx: StageContext) -> dict[str, Any]:
    metrics = [json.loads((d / "metrics.json").read_text()) for n, d in ctx.inputs.items() if n.startswith("eval-")]
    table = results_table(metrics, ctx.stage.params["methods"])
    from tratree.pipeline.graph import plan

    costs = gpu_hours(plan(ctx.spec), ctx.upstream_device_seconds or {}, list(table))
    for method, cost in (costs or {}).items():
        table[method]["gpu_hours"] = cost
    extras: dict[str, Any] = {}
    text = markdown(table, "W2SG results")
    draws = sorted(n for n in ctx.inputs if re.fullmatch(r"trees(-s\d+)?", n))
    if draws:
        from tratree.method.tree import informativeness, read_trees

        per_draw = []
        for name in draws:
            suffix = name.removeprefix("trees")
            draw: dict[str, Any] = {
                "stage": name,
                "trees": json.loads((ctx.input(name) / "stats.json").read_text()),
                "informativeness": informativeness(read_trees(ctx.input(name) / "trees.jsonl")),
            }
            for kind in ("pairs", "random-pairs"):
                if f"{kind}{suffix}" in ctx.inputs:
                    draw[kind] = json.loads((ctx.input(f"{kind}{suffix}") / PAIR_STATS).read_text())
            per_draw.append(draw)
        first = per_draw[0]
        extras.update({k: v for k, v in first.items() if k != "stage"})
        if len(per_draw) > 1:
            extras["draws"] = per_draw  # exploration.perSeed: each seed's own trees
        text += trees_markdown(per_draw)
        _tree_pages(ctx, draws[0])
    pretrained = {n: json.loads((d / TRAINING).read_text()) for n, d in ctx.inputs.items() if n.startswith("pretrain-")}
    pretraining = {n: t["losses"] for n, t in pretrained.items()}
    if plot_training(metrics, pretraining, ctx.out / "training.png"):
        text += "\n## Training\n\n![training losses](training.png)\n"
    ran_on = compute_used([*pretrained.values(), *(m.get("training") or {} for m in metrics)])
    if ran_on:
        extras["compute"] = ran_on
        text += compute_markdown(ran_on)
    results = {"format": 1, "methods": table, **extras}
    (ctx.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (ctx.out / "results.md").write_text(text)
    if table:
        plot(table, ctx.out / "results.png")
    return {m: round(r["average_reward"]["mean"], 2) for m, r in table.items()}


def _tree_pages(ctx: StageContext, trees_stage: str, count: int = 3) -> None:
    """Viewer pages of the trees with the most divergence points, with their MCTS paths where there are some."""
    from tratree.method.tree import read_trees
    from tratree.method.treeview import render_html
    from tratree.records.formats import PathRecord, iter_jsonl

    trees = read_trees(ctx.input(trees_stage) / "trees.jsonl")
    paths = {}
    mcts = "mcts" + trees_stage.removeprefix("trees")
    if mcts in ctx.inputs:
        paths = {p.task_id: p.nodes for p in iter_jsonl(ctx.input(mcts) / "paths.jsonl", PathRecord)}
    trees.sort(key=lambda t: -t.stats().divergence_points)
    folder = ctx.out / "trees"
    folder.mkdir(exist_ok=True)
    for tree in trees[:count]:
        name = tree.task_id.replace("/", "_")
        (folder / f"{name}.html").write_text(render_html(tree, paths.get(tree.task_id)))
