"""The report stage: the paper's Table 1 for this experiment, a plot, and tree viewers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from tratree.stages import StageContext
from tratree.stages.train import TRAINING

W2SG = ("w2s-mcts", "w2s-treedpo", "w2s-random-dpo")


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean": mean(values), "std": stdev(values) if len(values) > 1 else 0.0, "values": values}


def _ttest(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value; None when either side has fewer than two values or no spread."""
    if len(a) < 2 or len(b) < 2 or (stdev(a) == 0 and stdev(b) == 0):
        return None
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def results_table(metrics: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: average reward and success rate over seeds, p-value vs sft-strong, gap recovered."""
    by_method: dict[str, dict[str, list[float]]] = {}
    pairs: dict[str, list[int]] = {}
    for m in metrics:
        row = by_method.setdefault(m["method"], {"average_reward": [], "success_rate": [], "finished_rate": [],
                                                 "invalid_actions": []})
        row["average_reward"].append(m["average_reward"])
        row["success_rate"].append(m["success_rate"])
        row["finished_rate"].append(m.get("finished_rate", 0.0))
        row["invalid_actions"].append(m.get("invalid_actions", 0.0))
        if "pairs" in (m.get("training") or {}):
            pairs.setdefault(m["method"], []).append(m["training"]["pairs"])
    table: dict[str, Any] = {}
    for method in methods:
        if method not in by_method:
            continue
        row = by_method[method]
        table[method] = {
            "average_reward": _summary(row["average_reward"]),
            "success_rate": _summary(row["success_rate"]),
            "finished_rate": _summary(row["finished_rate"]),
            "invalid_actions": _summary(row["invalid_actions"]),
            "seeds": len(row["average_reward"]),
        }
        if method in pairs:
            table[method]["pairs"] = pairs[method]  # per seed: a DPO method that trained on nothing shows 0
    base = by_method.get("sft-strong", {}).get("average_reward")
    weak = table.get("sft-weak", {}).get("average_reward", {}).get("mean")
    strong = table.get("sft-strong", {}).get("average_reward", {}).get("mean")
    ceiling = table.get("ceiling", {}).get("average_reward", {}).get("mean")
    for method, row in table.items():
        if method in W2SG or method in ("best-of-n", "eto", "ceiling"):
            row["p_value_vs_sft_strong"] = _ttest(row["average_reward"]["values"], base) if base else None
        mean_reward = row["average_reward"]["mean"]
        # a gap is only a gap when the ceiling beats its floor
        if weak is not None and ceiling is not None and ceiling > weak and method != "sft-weak":
            row["gap_recovered"] = (mean_reward - weak) / (ceiling - weak)
        if strong is not None and ceiling is not None and ceiling > strong and method not in ("sft-weak", "sft-strong"):
            row["gap_recovered_vs_sft_strong"] = (mean_reward - strong) / (ceiling - strong)
    return table


def markdown(table: dict[str, Any], title: str) -> str:
    """The results as a Markdown table in the paper's layout."""
    lines = [f"# {title}", "",
             "| method | average reward | success rate | finished | p vs sft-strong | gap recovered (weak) | "
             "gap recovered (sft-strong) | DPO pairs | invalid actions | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.0f}%"

    for method, row in table.items():
        ar, sr, fr = row["average_reward"], row["success_rate"], row.get("finished_rate", {"mean": 0.0, "std": 0.0})
        p = row.get("p_value_vs_sft_strong")
        pairs = "/".join(str(n) for n in row["pairs"]) if "pairs" in row else "—"
        lines.append(
            f"| {method} | {ar['mean']:.1f} ± {ar['std']:.1f} | {sr['mean']:.1f} ± {sr['std']:.1f} | "
            f"{fr['mean']:.1f} | {'—' if p is None else f'{p:.3g}'} | {pct(row.get('gap_recovered'))} | "
            f"{pct(row.get('gap_recovered_vs_sft_strong'))} | {pairs} | "
            f"{row.get('invalid_actions', {'mean': 0.0})['mean']:.1f} | {row['seeds']} |"
        )
    lines += ["", "Average reward, success rate (score 1, or the environment's own success) and finished (episodes "
              "the environment ended before the step limit: ETO's and the paper's \"success\" on WebShop and "
              "ScienceWorld) ×100 on held-out tasks, mean ± std over training seeds; p: two-sided Welch t-test "
              "against sft-strong; gap recovered (weak): (R − R_sft-weak) / (R_ceiling − R_sft-weak); gap recovered "
              "(sft-strong), the paper's form: (R − R_sft-strong) / (R_ceiling − R_sft-strong); DPO pairs: the "
              "preference pairs each seed's DPO trained on (0: it returned its initial policy); invalid actions: the "
              "share of actions the environment refused (or replies with no action), ×100."]
    return "\n".join(lines) + "\n"


def trees_markdown(info: dict[str, Any]) -> str:
    """What the weak model's trees offer to learn from."""
    return (
        "\n## The weak model's trees\n\n"
        f"{info['tasks']} tasks; {info['divergence_points']} divergence points, "
        f"{info['divergence_points_with_value_gap']} of them between children of different value (where TreeDPO "
        f"finds its pairs), in {info['tasks_with_value_gap']} tasks; mean value spread at a divergence point "
        f"(best child minus worst) {info['mean_value_spread']:.3f}. Trees without value gaps teach TreeDPO "
        "nothing, and MCTS then only reproduces the weak model's paths.\n")


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
    extras: dict[str, Any] = {}
    text = markdown(table, "W2SG results")
    if "trees" in ctx.inputs:
        from tratree.tree import informativeness, read_trees

        extras["trees"] = json.loads((ctx.input("trees") / "stats.json").read_text())
        extras["informativeness"] = informativeness(read_trees(ctx.input("trees") / "trees.jsonl"))
        text += trees_markdown(extras["informativeness"])
        _tree_pages(ctx)
    pretraining = {n: json.loads((d / TRAINING).read_text())["losses"] for n, d in ctx.inputs.items()
                   if n.startswith("pretrain-")}
    if plot_training(metrics, pretraining, ctx.out / "training.png"):
        text += "\n## Training\n\n![training losses](training.png)\n"
    results = {"format": 1, "methods": table, **extras}
    (ctx.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (ctx.out / "results.md").write_text(text)
    if table:
        plot(table, ctx.out / "results.png")
    return {m: round(r["average_reward"]["mean"], 2) for m, r in table.items()}


def _tree_pages(ctx: StageContext, count: int = 3) -> None:
    """Viewer pages of the trees with the most divergence points, with their MCTS paths where there are some."""
    from tratree.formats import PathRecord, iter_jsonl
    from tratree.tree import read_trees
    from tratree.treeview import render_html

    trees = read_trees(ctx.input("trees") / "trees.jsonl")
    paths = {}
    if "mcts" in ctx.inputs:
        paths = {p.task_id: p.nodes for p in iter_jsonl(ctx.input("mcts") / "paths.jsonl", PathRecord)}
    trees.sort(key=lambda t: -t.stats().divergence_points)
    folder = ctx.out / "trees"
    folder.mkdir(exist_ok=True)
    for tree in trees[:count]:
        name = tree.task_id.replace("/", "_")
        (folder / f"{name}.html").write_text(render_html(tree, paths.get(tree.task_id)))
