"""Minibatch row draws: task balancing and the same draws as ``rng.choice`` at O(b) per draw."""

from __future__ import annotations

import numpy as np
import pytest

from policydistill.data.sampling import RowSampler, task_weights


def test_task_weights_give_every_task_the_same_share():
    task = np.array([0, 0, 0, 1, 2, 2])
    p = task_weights(task)
    assert np.isclose(p.sum(), 1.0)
    assert np.allclose([p[task == k].sum() for k in range(3)], 1 / 3)


@pytest.mark.parametrize("balanced", [True, False])
def test_row_sampler_draws_what_rng_choice_draws(balanced):
    task = np.random.default_rng(0).integers(0, 4, 1000)
    p = task_weights(task) if balanced else None
    ours, theirs = np.random.default_rng(7), np.random.default_rng(7)
    sampler = RowSampler(len(task), p)
    for b in (256, 1, 33):
        np.testing.assert_array_equal(sampler(ours, b), theirs.choice(len(task), size=b, p=p))
    assert ours.random() == theirs.random()  # the generators are left in the same state
    with pytest.raises(ValueError, match="length 1000, expected 5"):
        RowSampler(5, task_weights(task))
