"""Beta schedules: values at several rounds, bounds, the factory's errors and the per-env draw."""

from __future__ import annotations

import numpy as np
import pytest

from policydistill.distill.schedules import (
    AdaptiveBeta,
    ConstantBeta,
    ExponentialBeta,
    LinearBeta,
    StepBeta,
    draw_actor,
    make_schedule,
)


def test_constant() -> None:
    s = ConstantBeta(0.3)
    assert [s(r) for r in (0, 1, 50)] == [0.3, 0.3, 0.3]


def test_linear() -> None:
    s = LinearBeta(rounds=4)
    assert [s(r) for r in range(7)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0, 0])
    up = LinearBeta(start=0.2, end=0.6, rounds=2)
    assert [up(r) for r in (0, 1, 2, 9)] == pytest.approx([0.2, 0.4, 0.6, 0.6])


def test_exponential() -> None:
    assert [ExponentialBeta()(r) for r in range(4)] == pytest.approx([1, 0.5, 0.25, 0.125])
    assert ExponentialBeta(decay=0.9, start=0.5)(2) == pytest.approx(0.5 * 0.81)


def test_step() -> None:
    s = StepBeta(switch_round=2)
    assert [s(r) for r in range(5)] == [1, 1, 0, 0, 0]
    assert StepBeta(switch_round=0)(0) == 0


def test_adaptive() -> None:
    s = AdaptiveBeta()
    assert s(0) == 1 and s(3, student_return=5.0) == 1 and s(3, 5.0, 0.0) == 1 and s(3, 5.0, -2.0) == 1
    assert s(1, 25.0, 100.0) == pytest.approx(0.75)
    assert s(1, 120.0, 100.0) == 0 and s(1, -50.0, 100.0) == 1
    assert AdaptiveBeta(floor=0.1)(1, 99.0, 100.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="student_return"):
        s(1, float("nan"), 100.0)


@pytest.mark.parametrize("schedule", [ConstantBeta(1.0), LinearBeta(start=0.9, end=0.1, rounds=3),
                                      ExponentialBeta(decay=0.7), StepBeta(switch_round=3), AdaptiveBeta(floor=0.2)])
def test_bounds_and_config_round_trip(schedule) -> None:
    values = [schedule(r, s, 10.0) for r in range(8) for s in (None, -5.0, 3.0, 30.0)]
    assert all(0.0 <= v <= 1.0 for v in values)
    cfg = schedule.config()
    assert make_schedule(**cfg) == schedule


@pytest.mark.parametrize("build", [lambda: ConstantBeta(1.5), lambda: ConstantBeta(-0.1), lambda: LinearBeta(rounds=0),
                                   lambda: LinearBeta(start=2, rounds=3), lambda: ExponentialBeta(decay=1.1),
                                   lambda: StepBeta(switch_round=-1), lambda: StepBeta(switch_round=1.5),
                                   lambda: AdaptiveBeta(floor=True)])
def test_bad_params(build) -> None:
    with pytest.raises(ValueError, match="must be"):
        build()


def test_bad_round() -> None:
    with pytest.raises(ValueError, match="round"):
        ConstantBeta(0.5)(-1)


def test_make_schedule_errors_list_valid_choices() -> None:
    assert make_schedule("linear", rounds=5) == LinearBeta(rounds=5)
    with pytest.raises(ValueError, match=r"unknown beta schedule 'lineer'.*'linear'"):
        make_schedule("lineer")
    with pytest.raises(ValueError, match=r"unknown params \['decy'\].*'decay'"):
        make_schedule("exponential", decy=0.3)
    with pytest.raises(ValueError, match=r"missing params \['rounds'\]"):
        make_schedule("linear", start=1.0)


def test_draw_actor() -> None:
    rng = np.random.default_rng(0)
    assert draw_actor(1.0, 5, rng).all() and not draw_actor(0.0, 5, rng).any()
    who = draw_actor(0.25, 20_000, rng)
    assert who.dtype == np.bool_ and who.shape == (20_000,) and abs(who.mean() - 0.25) < 0.02
    assert draw_actor(0.5, 0, rng).shape == (0,)
    with pytest.raises(ValueError, match="beta"):
        draw_actor(1.2, 3, rng)
