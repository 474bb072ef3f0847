"""The results table: means over seeds, t-tests against sft-strong, performance gap recovered."""

from __future__ import annotations

import pytest

from tratree.pipeline.actions.report import markdown, results_table


def rows(method, rewards):
    return [{"method": method, "average_reward": r, "success_rate": r / 2, "seed": i} for i, r in enumerate(rewards)]


def test_table_means_pvalues_and_gap_recovered():
    metrics = rows("sft-weak", [40.0]) + rows("sft-strong", [50.0, 51.0, 52.0]) + rows("w2s-mcts", [58.0, 60.0, 59.0]) \
        + rows("ceiling", [60.0, 60.5, 59.5])
    table = results_table(metrics, ["sft-weak", "sft-strong", "w2s-mcts", "ceiling"])
    assert table["w2s-mcts"]["average_reward"]["mean"] == pytest.approx(59.0)
    assert table["w2s-mcts"]["average_reward"]["std"] == pytest.approx(1.0)
    assert table["w2s-mcts"]["p_value_vs_sft_strong"] < 0.01
    assert table["w2s-mcts"]["gap_recovered"] == pytest.approx((59 - 40) / (60 - 40))
    assert "p_value_vs_sft_strong" not in table["sft-weak"]
    # the paper's form: (R - R_sft-strong) / (R_ceiling - R_sft-strong)
    assert table["w2s-mcts"]["gap_recovered_vs_sft_strong"] == pytest.approx((59 - 51) / (60 - 51))
    assert "gap_recovered_vs_sft_strong" not in table["sft-strong"]
    text = markdown(table, "t")
    assert "| w2s-mcts | 59.0 ± 1.0 | 29.5 ± 0.5 |" in text and "| 95% | 89% |" in text
    assert "(R − R_sft-strong) / (R_ceiling − R_sft-strong)" in text


def test_dpo_pair_counts_and_the_finished_rate_reach_the_table():
    metrics = [{"method": "w2s-treedpo", "average_reward": 10.0, "success_rate": 0.0, "finished_rate": 50.0,
                "invalid_actions": 20.0 + 10 * s, "seed": s, "training": {"pairs": n, "steps": 3}}
               for s, n in enumerate([12, 0])]
    table = results_table(metrics, ["w2s-treedpo"])
    assert table["w2s-treedpo"]["pairs"] == [12, 0] and table["w2s-treedpo"]["finished_rate"]["mean"] == 50.0
    # DPO pairs and optimizer steps per seed, invalid actions (mean); three steps are flagged
    assert "| w2s-treedpo ⚠ |" in markdown(table, "t") and "| 12/0 | 3/3 | 25.0 | 2 |" in markdown(table, "t")


def test_no_p_value_with_one_seed_and_no_gap_when_the_ceiling_is_below_the_weak_model():
    table = results_table(rows("sft-weak", [17.8]) + rows("sft-strong", [0.0]) + rows("ceiling", [0.0])
                          + rows("w2s-mcts", [0.0]), ["sft-weak", "sft-strong", "w2s-mcts", "ceiling"])
    assert table["w2s-mcts"]["p_value_vs_sft_strong"] is None
    assert all("gap_recovered" not in row for row in table.values())
    assert "| w2s-mcts | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.0 | — | — | — | — | — | 0.0 | 1 |" in markdown(table, "t")


def test_invalid_actions_are_the_environments_refusals_and_replies_without_an_action():
    from tests.conftest import make_traj
    from tratree.agent.evaluate import invalid_rate

    t = make_traj("t", ["take knife", "fly", "eat meal"], 0.0)
    t.steps[1].observation = "You take the knife."
    t.steps[2].observation = "Unknown action: I'm not sure what you mean."
    t.final_observation = "Invalid format. The input must contains 'Action: '"
    assert invalid_rate([t], "textworldexpress") == pytest.approx(100 * 2 / 3)
    assert invalid_rate([t], "scienceworld") == pytest.approx(100 / 3)  # only tratree's own refusal is known there


def test_tree_informativeness_counts_divergence_points_with_a_value_gap():
    from tests.conftest import make_traj
    from tratree.method.tree import build_trees, informativeness

    trees = build_trees([make_traj("a", ["x", "y"], 1.0), make_traj("a", ["x", "z"], 0.0),  # gap 1 at x
                         make_traj("b", ["p"], 0.5), make_traj("b", ["q"], 0.5)])  # no gap at the root
    info = informativeness(trees)
    assert info == {"tasks": 2, "divergence_points": 2, "divergence_points_with_value_gap": 1,
                    "mean_value_spread": 0.5, "tasks_with_value_gap": 1}


def test_the_report_plots_every_trained_models_losses(tmp_path):
    from tratree.pipeline.actions.report import plot_training

    metrics = [{"method": m, "seed": 0, "training": {"losses": [3.0, 2.0, 1.5]}} for m in ("sft-strong", "w2s-treedpo")]
    assert plot_training(metrics, {}, tmp_path / "training.png")
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_training(metrics, {"pretrain-strong": [5.0, 2.0]}, tmp_path / "pretrained.png")
    import matplotlib.image

    # the pretraining curves get a panel of their own
    assert matplotlib.image.imread(tmp_path / "pretrained.png").shape[1] > matplotlib.image.imread(
        tmp_path / "training.png").shape[1]
    assert not plot_training([{"method": "sft-weak", "seed": 0}], {}, tmp_path / "none.png")


def per_task_rows(method, per_seed, steps=None):
    """Metrics of one method: per seed, the scores of its games (and, given, its optimizer steps)."""
    out = []
    for seed, scores in enumerate(per_seed):
        row = {"method": method, "average_reward": 100 * sum(scores) / len(scores), "success_rate": 0.0, "seed": seed,
               "per_task": {f"g{i}": {"score": s} for i, s in enumerate(scores)}}
        if steps is not None:
            row["training"] = {"steps": steps[seed], "pairs": 5}
        out.append(row)
    return out


def test_the_paired_comparison_is_over_games_averaged_over_seeds_and_holm_corrected():
    base = [[0.0, 0.5, 1.0, 0.0], [0.0, 0.5, 0.5, 0.0]]
    dpo = [[0.5, 0.5, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5]]  # per game, over seeds: +0.25, +0.25, +0.25, +0.5
    mcts = [[0.0, 0.5, 1.0, 1.0], [1.0, 0.5, 0.5, 0.0]]  # +0.5, 0, 0, +0.5
    metrics = per_task_rows("sft-strong", base) + per_task_rows("w2s-treedpo", dpo, [30, 30]) \
        + per_task_rows("w2s-mcts", mcts, [40, 40])
    table = results_table(metrics, ["sft-strong", "w2s-mcts", "w2s-treedpo"])
    from tratree.analysis.stats import paired_t

    t = table["w2s-treedpo"]
    assert t["paired_mean"] == pytest.approx(31.25) and t["paired_games"] == 4 and t["paired_seeds"] == 2
    assert t["paired_p"] == pytest.approx(paired_t([0.25, 0.25, 0.25, 0.5]))
    assert t["paired_ci"][0] <= 31.25 <= t["paired_ci"][1]
    m = table["w2s-mcts"]
    assert m["paired_mean"] == pytest.approx(25.0) and m["paired_p"] == pytest.approx(paired_t([0.5, 0, 0, 0.5]))
    # Holm over the two primary hypotheses: the smaller p doubled, the larger kept (or the first, if larger)
    small, large = sorted([t["paired_p"], m["paired_p"]])
    assert sorted([t["holm_p"], m["holm_p"]]) == pytest.approx([min(1, 2 * small), max(min(1, 2 * small), large)])
    assert t["optimizer_steps"] == [30, 30] and not t["few_steps"]
    text = markdown(table, "t")
    assert "## Paired against sft-strong, game by game" in text and "| w2s-treedpo | +31.2 |" in text


def test_a_row_trained_in_fewer_than_ten_steps_is_marked():
    metrics = per_task_rows("sft-strong", [[0.0, 1.0]]) + per_task_rows("eto", [[0.0, 1.0]], [2])
    table = results_table(metrics, ["sft-strong", "eto"])
    assert table["eto"]["optimizer_steps"] == [2] and table["eto"]["few_steps"]
    text = markdown(table, "t")
    assert "| eto ⚠ |" in text and "eto: a training run of fewer than 10 optimizer steps" in text


def test_what_each_arms_training_did_is_a_table_of_its_own():
    metrics = per_task_rows("sft-strong", [[0.0, 1.0]])
    metrics += [{**per_task_rows("w2s-treedpo", [[1.0, 1.0]])[0], "training": {
        "steps": 34, "pairs": 134, "lr_sum": 0.0034, "weight_change": 1.5e-3,
        "preference": {"before": {"accuracy": 0.5, "margin": 0.0}, "after": {"accuracy": 0.9, "margin": 0.25}}}}]
    table = results_table(metrics, ["sft-strong", "w2s-treedpo"])
    assert table["w2s-treedpo"]["lr_sum"] == [0.0034] and table["w2s-treedpo"]["weight_change"] == [1.5e-3]
    text = markdown(table, "t")
    assert "| w2s-treedpo | 34 | 0.0034 | 1.50e-03 | 0.50 → 0.90 | +0.000 → +0.250 |" in text


def test_gpu_hours_follow_each_methods_stages_and_split_the_shared_ones():
    from types import SimpleNamespace as S

    from tratree.pipeline.actions.report import gpu_hours

    stages = [S(name="expert", inputs=()), S(name="sft-weak", inputs=("expert",)),
              S(name="sft-strong-s0", inputs=("expert",)), S(name="eval-sft-weak-s0", inputs=("sft-weak",)),
              S(name="eval-sft-strong-s0", inputs=("sft-strong-s0",)),
              S(name="dpo-s0", inputs=("sft-weak", "sft-strong-s0")), S(name="eval-w2s-treedpo-s0", inputs=("dpo-s0",)),
              S(name="report", inputs=("eval-sft-weak-s0", "eval-sft-strong-s0", "eval-w2s-treedpo-s0"))]
    hour = 3600.0
    costs = {"expert": 0.0, "sft-weak": 3 * hour, "sft-strong-s0": 2 * hour, "dpo-s0": hour,
             "eval-sft-weak-s0": hour, "eval-sft-strong-s0": hour, "eval-w2s-treedpo-s0": hour, "report": 0.0}
    got = gpu_hours(stages, costs, ["sft-weak", "sft-strong", "w2s-treedpo"])
    # sft-weak is needed by sft-weak and w2s-treedpo (1.5 h each), sft-strong-s0 by sft-strong and w2s-treedpo
    assert got == {"sft-weak": {"total": 2.5, "shared": 1.5}, "sft-strong": {"total": 2.0, "shared": 1.0},
                   "w2s-treedpo": {"total": 4.5, "shared": 2.5}}
    assert sum(c["total"] for c in got.values()) == 9.0  # every hour counted once, report and expert at 0
    del costs["dpo-s0"]  # a manifest from before the counts: no column rather than a wrong one
    assert gpu_hours(stages, costs, ["sft-weak", "w2s-treedpo"]) is None
