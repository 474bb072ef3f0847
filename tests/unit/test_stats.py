"""The miniature's statistics: the paired comparison over games, its bootstrap CI, Holm's correction."""

from __future__ import annotations

import math
from statistics import mean

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tratree.analysis.stats import bootstrap_ci, detectable_difference, holm, paired_t, per_game_differences


def test_per_game_differences_average_over_seeds_and_keep_only_games_every_seed_has():
    method = [{"a": 1.0, "b": 0.5, "c": 0.0}, {"a": 0.0, "b": 1.0}]
    base = [{"a": 0.0, "b": 0.5, "c": 1.0}, {"a": 0.0, "b": 0.0, "c": 1.0}]
    # game a: (1 - 0 + 0 - 0) / 2 = 0.5; game b: (0 + 1) / 2 = 0.5; c is missing from the method's seed 1
    assert per_game_differences(method, base) == [0.5, 0.5]
    with pytest.raises(ValueError, match="same seeds"):
        per_game_differences(method[:1], base)


def test_paired_t_against_a_hand_computed_example():
    # differences 0.1, 0.2, 0.3, 0.6: mean 0.3, sd sqrt(0.14/3), t = 0.3 / (sd / 2) = 2.7775, 3 degrees of freedom
    diffs = [0.1, 0.2, 0.3, 0.6]
    sd = math.sqrt(sum((d - 0.3) ** 2 for d in diffs) / 3)
    t = 0.3 / (sd / 2)
    assert t == pytest.approx(2.7775, abs=1e-4)
    from scipy.stats import t as student

    assert paired_t(diffs) == pytest.approx(2 * student.sf(t, 3))
    assert paired_t(diffs) == pytest.approx(0.0691, abs=1e-4)
    assert paired_t([0.2, 0.2, 0.2]) is None  # no spread: no test
    assert paired_t([0.2]) is None


def test_holm_adjusts_in_order_and_never_lowers_a_p_value():
    assert holm({"a": 0.01, "b": 0.04}) == {"a": 0.02, "b": 0.04}
    assert holm({"a": 0.03, "b": 0.02}) == {"b": 0.04, "a": 0.04}  # monotone: a's 0.03 would be below b's 0.04
    assert holm({"a": 0.4, "b": None}) == {"a": 0.4, "b": None}
    assert holm({"a": 0.7, "b": 0.6}) == {"b": 1.0, "a": 1.0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=2, max_size=40))
def test_the_bootstrap_interval_is_seeded_and_holds_the_mean(diffs):
    lo, hi = bootstrap_ci(diffs, resamples=500)
    assert (lo, hi) == bootstrap_ci(diffs, resamples=500)
    assert min(diffs) - 1e-9 <= lo <= mean(diffs) + 1e-9 and mean(diffs) - 1e-9 <= hi <= max(diffs) + 1e-9


def test_detectable_difference_shrinks_with_the_square_root_of_the_games():
    one = detectable_difference(0.3, 100)
    assert one == pytest.approx((1.984 + 0.8416) * 0.03, rel=1e-3)
    assert detectable_difference(0.3, 400) < one / 1.9
    assert detectable_difference(0.3, 1) is None
