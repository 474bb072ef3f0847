"""The results table: means over seeds, t-tests against sft-strong, performance gap recovered."""

from __future__ import annotations

import pytest

from tratree.stages.report import markdown, results_table


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
                "seed": s, "training": {"pairs": n, "steps": 3}} for s, n in enumerate([12, 0])]
    table = results_table(metrics, ["w2s-treedpo"])
    assert table["w2s-treedpo"]["pairs"] == [12, 0] and table["w2s-treedpo"]["finished_rate"]["mean"] == 50.0
    assert "| 12/0 | 2 |" in markdown(table, "t")


def test_no_p_value_with_one_seed_and_no_gap_when_the_ceiling_is_below_the_weak_model():
    table = results_table(rows("sft-weak", [17.8]) + rows("sft-strong", [0.0]) + rows("ceiling", [0.0])
                          + rows("w2s-mcts", [0.0]), ["sft-weak", "sft-strong", "w2s-mcts", "ceiling"])
    assert table["w2s-mcts"]["p_value_vs_sft_strong"] is None
    assert all("gap_recovered" not in row for row in table.values())
    assert "| w2s-mcts | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.0 | — | — | — | — | 1 |" in markdown(table, "t")
