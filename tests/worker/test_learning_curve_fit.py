"""The learning-curve fit (worker.learning_curve): it recovers a known curve, its bootstrap
interval covers the truth at the sizes it forecasts, and it says when more data cannot reach a
target. Synthetic data with known answers; no Django."""

from __future__ import annotations

import numpy as np
import pytest

from worker.learning_curve import CurveFit, fit_power_law, forecast

A, B, C = 0.9, 3.0, 0.5  # quality(n) = 0.9 - 3 n^-0.5: 0.60 at 100, 0.83 at 2,000


def truth(n: float) -> float:
    return A - B * n ** (-C)


def test_exact_points_give_back_the_curve_they_came_from() -> None:
    sizes = [100, 200, 400, 800, 1600]
    fit = fit_power_law(sizes, [truth(n) for n in sizes])
    assert fit.a == pytest.approx(A, abs=0.005)
    assert fit.b == pytest.approx(B, rel=0.05)
    assert fit.c == pytest.approx(C, abs=0.02)
    assert fit.predict(5000) == pytest.approx(truth(5000), abs=0.002)
    # Inverting it: the examples a quality needs, and None at or above where it levels off.
    assert fit.examples_for(truth(3000)) == pytest.approx(3000, rel=0.05)
    assert fit.examples_for(0.95) is None


def test_a_curve_above_the_ceiling_is_held_at_it() -> None:
    # Points still rising fast near 100 %: the level is pinned at the ceiling, not past it.
    sizes = [10, 20, 40]
    fit = fit_power_law(sizes, [0.5, 0.8, 0.97], ceiling=1.0)
    assert fit.a <= 1.0
    assert fit.predict(10_000) <= 1.0


def test_fewer_than_three_sizes_make_no_curve() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law([100, 200], [0.5, 0.6])
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law([100, 100, 200], [0.5, 0.52, 0.6])


def simulated(sizes: list[int], m: int, seed: int) -> list[list[float]]:
    """Per-example right/wrong of students at ``sizes`` on ``m`` test examples: each example
    has a difficulty, and a student gets it right when it is below the student's quality — so
    bigger students get right what smaller ones did (as real nested students mostly do)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(m)
    return [(difficulty < truth(n)).astype(float).tolist() for n in sizes]


def test_the_interval_covers_the_true_quality_at_the_forecast_size() -> None:
    sizes, target_n = [150, 300, 600, 1200], 2400
    covered = 0
    trials = 20
    for seed in range(trials):
        fc = forecast(sizes, simulated(sizes, 300, seed), resamples=400, seed=seed)
        _, low, high = fc.predict_interval(target_n)
        covered += low <= truth(target_n) <= high
    # A 95 % interval; with 20 trials anything from 16 up is consistent with that.
    assert covered >= 16, covered


def test_forecast_against_the_teacher_is_a_share_of_the_teachers_quality() -> None:
    sizes = [150, 300, 600, 1200]
    scores = simulated(sizes, 400, 1)
    teacher = [1.0] * 300 + [0.0] * 100  # a teacher right on 75 % of the examples
    fc = forecast(sizes, scores, teacher=teacher, resamples=200)
    level = sum(scores[-1]) / len(scores[-1])
    assert fc.measured[-1] == pytest.approx(level / 0.75)
    # A student can beat an imperfect teacher: the ceiling is 1 / 0.75, not 1.
    assert fc.fit.a <= 1 / 0.75 + 1e-9


def test_a_target_above_where_the_curve_levels_off_is_out_of_reach() -> None:
    sizes = [150, 300, 600, 1200]
    fc = forecast(sizes, simulated(sizes, 2000, 3), resamples=300)
    _, low, high = fc.plateau_interval()
    assert low <= A <= high
    unreachable = fc.examples_needed(0.99)
    assert unreachable["n"] is None
    assert unreachable["reachable_share"] < 0.2
    reachable = fc.examples_needed(truth(3000))
    assert reachable["n"] is not None and reachable["reachable_share"] >= 0.8
    assert reachable["low"] <= 3000 <= reachable["high"]


def test_the_same_rows_and_seed_give_the_same_numbers() -> None:
    sizes = [150, 300, 600]
    scores = simulated(sizes, 200, 5)
    one, two = forecast(sizes, scores, seed=7), forecast(sizes, scores, seed=7)
    assert one.predict_interval(1200) == two.predict_interval(1200)
    assert one.to_json() == two.to_json()
    assert isinstance(one.fit, CurveFit)
