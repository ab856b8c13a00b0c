"""The loss menu: closed-form values, gradients to the student only, weights and validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from policydistill.distill.losses import (
    LOSSES,
    forward_kl,
    huber,
    jeffreys,
    make_loss,
    mse,
    precision_weighted,
    reverse_kl,
    valid_losses,
)


def batch(n: int = 6, d: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"student_mean": torch.randn(n, d, generator=g), "teacher_mean": torch.randn(n, d, generator=g),
            "student_log_std": 0.3 * torch.randn(n, d, generator=g),
            "teacher_std": torch.rand(n, d, generator=g) + 0.2}


def test_mse_and_huber_match_torch() -> None:
    b = batch()
    assert mse(b["student_mean"], b["teacher_mean"]) == pytest.approx(
        F.mse_loss(b["student_mean"], b["teacher_mean"]).item())
    assert huber(b["student_mean"], b["teacher_mean"], delta=0.5) == pytest.approx(
        F.huber_loss(b["student_mean"], b["teacher_mean"], delta=0.5).item())


def test_kl_of_equal_gaussians_is_zero() -> None:
    b = batch()
    same = {"student_mean": b["teacher_mean"], "teacher_mean": b["teacher_mean"],
            "student_log_std": b["teacher_std"].log(), "teacher_std": b["teacher_std"]}
    for fn in (forward_kl, reverse_kl, jeffreys):
        assert abs(fn(**same).item()) < 1e-6


def test_kl_closed_form() -> None:
    # 1-d: teacher N(0, 1), student N(1, 2^2).
    s_mean, t_mean = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    s_log_std, t_std = torch.tensor([[math.log(2.0)]]), torch.tensor([[1.0]])
    kw = {"student_log_std": s_log_std, "teacher_std": t_std}
    fwd = math.log(2.0) + (1 + 1) / 8 - 0.5  # KL(N(0,1) || N(1,4))
    rev = -math.log(2.0) + (4 + 1) / 2 - 0.5  # KL(N(1,4) || N(0,1))
    assert forward_kl(s_mean, t_mean, **kw).item() == pytest.approx(fwd, abs=1e-6)
    assert reverse_kl(s_mean, t_mean, **kw).item() == pytest.approx(rev, abs=1e-6)
    assert jeffreys(s_mean, t_mean, **kw).item() == pytest.approx(fwd + rev, abs=1e-6)
    # dims are summed: two identical dims double the KL; a (d,) student log std broadcasts
    two = forward_kl(s_mean.repeat(1, 2), t_mean.repeat(1, 2), student_log_std=s_log_std[0].repeat(2),
                     teacher_std=t_std.repeat(1, 2))
    assert two.item() == pytest.approx(2 * fwd, abs=1e-6)


def test_precision_weighted() -> None:
    s_mean = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    t_mean = torch.zeros(2, 2)
    t_std = torch.tensor([[1.0, 0.5], [1.0, 0.5]])  # precisions 1 and 4, mean 2.5 -> weights 0.4 and 1.6
    assert precision_weighted(s_mean, t_mean, teacher_std=t_std).item() == pytest.approx((0.4 + 1.6) / 2)
    err = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert precision_weighted(err, t_mean, teacher_std=t_std).item() == pytest.approx(0.4 / 2)
    # a uniform teacher std gives plain MSE; a zero std is clamped, not infinite
    b = batch()
    flat = precision_weighted(b["student_mean"], b["teacher_mean"], teacher_std=torch.full((6, 3), 0.3))
    assert flat.item() == pytest.approx(mse(b["student_mean"], b["teacher_mean"]).item(), rel=1e-5)
    assert torch.isfinite(precision_weighted(b["student_mean"], b["teacher_mean"], teacher_std=torch.zeros(6, 3)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weights_respected(name: str) -> None:
    b = batch()
    fn = LOSSES[name]
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.0])
    keep = w > 0
    ones = fn(**b, weight=torch.ones(6))
    assert ones.item() == pytest.approx(fn(**b).item(), rel=1e-6)
    if name == "precision_weighted":  # the precision normalisation is over the whole batch
        return
    sub = {k: v[keep] for k, v in b.items()}
    expected = fn(**{k: v[[0, 2, 2, 4]] for k, v in b.items()})  # weight 2 counts a sample twice
    assert fn(**b, weight=w).item() == pytest.approx(expected.item(), rel=1e-5)
    assert fn(**b, weight=keep.float()).item() == pytest.approx(fn(**sub).item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_dims_contribute_nothing(name: str) -> None:
    """A padded dim (mask False) changes nothing, whatever it holds; a full mask is no mask."""
    b = batch(d=3)
    fn = LOSSES[name]
    mask = torch.tensor([[True, True, False]] * 6)
    assert fn(**b, mask=torch.ones(6, 3, dtype=torch.bool)).item() == pytest.approx(fn(**b).item(), rel=1e-6)
    two_dims = fn(**{k: v[:, :2] for k, v in b.items()})
    assert fn(**b, mask=mask).item() == pytest.approx(two_dims.item(), rel=1e-5)
    noisy = {k: v.clone() for k, v in b.items()}
    noisy["student_mean"][:, 2], noisy["teacher_mean"][:, 2], noisy["teacher_std"][:, 2] = 1e3, -1e3, 1e-6
    assert fn(**noisy, mask=mask).item() == pytest.approx(two_dims.item(), rel=1e-5)
    with pytest.raises(ValueError, match="mask"):
        fn(**b, mask=mask[:, :2])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_student_only(name: str) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    log_std = torch.nn.Parameter(torch.zeros(3))
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    loss = LOSSES[name](net(x), teacher(x), student_log_std=log_std, teacher_std=torch.full((8, 3), 0.5))
    assert loss.ndim == 0
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    if name in ("forward_kl", "reverse_kl", "jeffreys"):
        assert log_std.grad is not None and log_std.grad.abs().sum() > 0
    assert teacher.weight.grad is None


def test_shape_errors() -> None:
    b = batch()
    with pytest.raises(ValueError, match="teacher_mean"):
        mse(b["student_mean"], b["teacher_mean"][:, :2])
    with pytest.raises(ValueError, match="weight"):
        mse(b["student_mean"], b["teacher_mean"], weight=torch.ones(5))
    with pytest.raises(ValueError, match="student_log_std"):
        forward_kl(b["student_mean"], b["teacher_mean"], student_log_std=torch.zeros(2), teacher_std=b["teacher_std"])
    with pytest.raises(ValueError, match=r"needs \['student_log_std'\]"):
        forward_kl(b["student_mean"], b["teacher_mean"], teacher_std=b["teacher_std"])


def test_make_loss_validates_against_teacher_and_student() -> None:
    b = batch()
    assert valid_losses(False, True) == ["huber", "mse"]
    assert valid_losses(True, False) == ["huber", "mse", "precision_weighted"]
    assert valid_losses(True, True) == sorted(LOSSES)
    loss = make_loss("huber", teacher_has_std=False, student_has_std=False, delta=0.5)
    assert loss(b["student_mean"], b["teacher_mean"]).item() == pytest.approx(
        huber(b["student_mean"], b["teacher_mean"], delta=0.5).item())
    kl = make_loss("jeffreys", teacher_has_std=True, student_has_std=True, min_std=0.01)
    assert kl(**b).item() == pytest.approx(jeffreys(**b).item())
    with pytest.raises(ValueError, match=r"needs a teacher std and a student std.*deterministic teacher.*'mse'\]"):
        make_loss("forward_kl", teacher_has_std=False, student_has_std=True)
    with pytest.raises(ValueError, match=r"student std; valid for a teacher with a std.*'precision_weighted'\]"):
        make_loss("reverse_kl", teacher_has_std=True, student_has_std=False)
    with pytest.raises(ValueError, match="needs a teacher std;"):
        make_loss("precision_weighted", teacher_has_std=False, student_has_std=False)
    with pytest.raises(ValueError, match=r"unknown loss 'kl'.*forward_kl"):
        make_loss("kl", teacher_has_std=True, student_has_std=True)
    with pytest.raises(ValueError, match=r"no params \['delt'\].*'delta'"):
        make_loss("huber", teacher_has_std=False, student_has_std=False, delt=2.0)
    with pytest.raises(ValueError, match="delta must be"):
        make_loss("huber", teacher_has_std=False, student_has_std=False, delta=0.0)
