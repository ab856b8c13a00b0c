"""Gates: where the student acts and the teacher is asked for labels only where a gate says so.

A gate looks at every step of a collection where the student acts and returns, per env, why the teacher
should be asked (a code of :data:`REASONS`) or 0. Once asked, the teacher acts and labels for
``takeover_steps`` steps (reason ``takeover`` after the first). The reasons are stored with every step
(the episode store's ``query`` field), so each label says why it was asked for.

- :class:`UncertaintyGate` (EnsembleDAgger / ThriftyDAgger style): an ensemble of small heads trained on the
  labelled steps disagrees (``disagreement``: the variance of their predictions, in label stds), or a
  random-network-distillation predictor fails on the student's inputs (``novelty``). Each score is divided by
  its median on calibration inputs; the gate asks where the largest such ratio exceeds the threshold that
  makes it ask on ``rate`` of those inputs.
- :class:`InterventionGate` (HG-DAgger style): the teacher watches every step and takes over where the
  student's action is farther than ``intervene_at`` from its own (root mean square over the action dims, in
  half-ranges of the action bounds), and, given a ``rate``, only at the largest such distances of late.
  Watching is not labelling: only the takeover steps are stored as labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.data.batches import RowBatches, take_rows
from policydistill.data.shards import DISAGREEMENT, INTERVENTION, NOT_ASKED, NOVELTY, REASONS, TEACHER_ROUND
from policydistill.distill.fit import FitConfig, FitJob, adam, fit
from policydistill.runtime.monitor import ScoreNetworks
from policydistill.types import ObsGroups, concat_groups

SCORES = {"disagreement": DISAGREEMENT, "novelty": NOVELTY}
GATES = ("disagreement", "novelty", "disagreement+novelty", "intervention")


class Heads(nn.Module):
    """``k`` MLPs ``d_in -> hidden -> hidden -> d_out`` (tanh) side by side: x (n, d_in) -> (k, n, d_out)."""

    def __init__(self, k: int, d_in: int, d_out: int, hidden: int = 64) -> None:
        super().__init__()
        dims = [d_in, hidden, hidden, d_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(k, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(k, 1, b).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.tanh(h)
        return h


class GateModel(nn.Module):
    """What an :class:`UncertaintyGate` scores with: input and label statistics, ``k`` ensemble heads and a
    random-network-distillation pair (a frozen random ``target`` and a trained ``predictor``, 16 outputs), all
    three-layer tanh MLPs ``hidden`` wide."""

    def __init__(self, d_in: int, d_out: int, k: int, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(d_in))
        self.register_buffer("x_std", torch.ones(d_in))
        self.register_buffer("y_mean", torch.zeros(d_out))
        self.register_buffer("y_std", torch.ones(d_out))
        self.heads = Heads(k, d_in, d_out, hidden)
        self.target = Heads(1, d_in, 16, hidden).requires_grad_(False)
        self.predictor = Heads(1, d_in, 16, hidden)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x`` (B, d_in), ``y`` (B, d_out) labels, ``boot`` (B, k) each head's bootstrap counts: the heads'
        bootstrap-weighted MSE on normalised labels plus the predictor's MSE on the target."""
        x = self.normalise(batch["x"])
        y = (batch["y"] - self.y_mean) / self.y_std
        per_head = ((self.heads(x) - y) ** 2).mean(-1)  # (k, B)
        boot = batch["boot"].T
        heads = (boot * per_head).sum(1).div(boot.sum(1).clamp_min(1.0)).sum()
        rnd = ((self.predictor(x) - self.target(x)) ** 2).mean()
        return heads + rnd, {"loss": (heads + rnd).detach(), "heads": heads.detach(), "rnd": rnd.detach()}

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted networks as numpy arrays, as :class:`~policydistill.runtime.monitor.ScoreNetworks` (which
        scores with them, in gates and failure monitors alike) reads them."""
        out = {"x_mean": self.x_mean.cpu().numpy(), "x_std": self.x_std.cpu().numpy()}
        for name in ("heads", "target", "predictor"):
            part = getattr(self, name)
            for i, (w, b) in enumerate(zip(part.weights, part.biases, strict=True)):
                out[f"{name}.{i}.w"] = w.detach().cpu().numpy()
                out[f"{name}.{i}.b"] = b.detach().cpu().numpy()
        return out


def fit_gate_model(x: np.ndarray, y: np.ndarray, k: int, updates: int, rng: np.random.Generator,
                   device: torch.device | str = "cpu", hidden: int = 64) -> GateModel:
    """A :class:`GateModel` trained on labelled inputs x (N, d_in) and labels y (N, d_out), ``updates`` steps of
    the fit loop (batches of 256, Adam at 1e-3), every head on its own bootstrap resample (Poisson counts)."""
    torch.manual_seed(int(rng.integers(2**31)))
    model = GateModel(x.shape[1], y.shape[1], k, hidden).to(device)
    for name, value in (("x_mean", x.mean(0)), ("x_std", x.std(0) + 1e-6), ("y_mean", y.mean(0)),
                        ("y_std", y.std(0) + 1e-6)):
        getattr(model, name).copy_(torch.as_tensor(value, dtype=torch.float32))
    data = {"x": x, "y": y, "boot": rng.poisson(1.0, size=(len(x), k))}
    tensors = {n: torch.as_tensor(v, dtype=torch.float32, device=device) for n, v in data.items()}
    batches = RowBatches(len(x), min(256, len(x)), take_rows(tensors), device=device)
    job = FitJob(model, lambda m, batch: m.loss(batch), batches, FitConfig(steps=updates, lr=1e-3), adam(model, 1e-3))
    fit(job, rng, desc="gate", progress=False)
    return model


class TopShare:
    """A window of the last ``size`` values seen (None: every one), first ``values`` (W,): whether new values are
    within its top ``rate`` once they are in it."""

    def __init__(self, rate: float, values: np.ndarray, size: int | None) -> None:
        self.rate, self.size, self._at = rate, size, 0
        self.values = np.array(values, dtype=np.float64)

    def admits(self, values: np.ndarray) -> np.ndarray:
        """values (n,) -> (n,) bool, each within the top ``rate`` of the window."""
        if self.size is None:
            self.values = np.concatenate([self.values, values])
        else:
            self.values[(self._at + np.arange(len(values))) % self.size] = values
            self._at = (self._at + len(values)) % self.size
        return values > np.quantile(self.values, 1.0 - self.rate)


class UncertaintyGate:
    """Asks where the ensemble disagrees or the inputs are novel (see the module doc). ``kinds``: the scores it
    reads (``disagreement``, ``novelty``); ``medians``: each one's median on the calibration inputs;
    ``threshold``: on the largest score-over-median ratio. ``recent`` (W,) and ``rate``: a cap, the gate also asks
    only where the ratio is within the top ``rate`` of the last W ratios it saw (``recent``, first the calibration
    inputs'; see :class:`TopShare`), so that a student whose every state looks new is asked about the most uncertain
    of them, not about all; None: no cap."""

    watches = False

    def __init__(self, model: GateModel, groups: tuple[str, ...], kinds: tuple[str, ...], medians: dict[str, float],
                 threshold: float, recent: np.ndarray | None = None, rate: float | None = None) -> None:
        self.model, self.groups, self.kinds = model, groups, kinds
        self.medians, self.threshold = medians, threshold
        self.networks = ScoreNetworks(model.arrays())
        self.cap = None if recent is None or rate is None else TopShare(rate, recent, len(recent))

    @classmethod
    def calibrated(cls, model: GateModel, groups: tuple[str, ...], kinds: tuple[str, ...], x: np.ndarray,
                   rate: float, cap: bool = True) -> UncertaintyGate:
        """The gate that asks on a ``rate`` share of the calibration inputs x (N, d_in); ``cap``: and on at most that
        share of the last N inputs it is shown."""
        gate = cls(model, groups, kinds, {}, math.inf)
        scores = gate.networks.raw_scores(x)
        gate.medians = {k: max(float(np.median(scores[k])), 1e-12) for k in kinds}
        ratio = np.max([scores[k] / gate.medians[k] for k in kinds], axis=0)
        gate.threshold = float(np.quantile(ratio, 1.0 - rate))
        if cap:
            gate.cap = TopShare(rate, ratio, len(ratio))
        return gate

    def decide(self, obs: ObsGroups, student_action: np.ndarray, teacher_action: np.ndarray | None,
               bounds: spaces.Box) -> np.ndarray:
        """Per env, the reason code to ask the teacher (0: do not): (n,) uint8."""
        scores = self.networks.raw_scores(concat_groups(obs, self.groups))
        ratios = np.stack([scores[k] / self.medians[k] for k in self.kinds])  # (kinds, n)
        ratio = ratios.max(0)
        ask = ratio > self.threshold
        if self.cap is not None:
            ask &= self.cap.admits(ratio)
        codes = np.asarray([SCORES[k] for k in self.kinds], dtype=np.uint8)
        return np.where(ask, codes[ratios.argmax(0)], NOT_ASKED).astype(np.uint8)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "kinds": list(self.kinds), "medians": self.medians,
                "threshold": self.threshold, "shape": [len(self.model.x_mean), len(self.model.y_mean),
                                                       *self.model.heads.weights[0].shape[::2]],
                "recent": None if self.cap is None else self.cap.values.tolist(),
                "rate": None if self.cap is None else self.cap.rate}

    @classmethod
    def from_state(cls, state: dict[str, Any], groups: tuple[str, ...], device: torch.device | str) -> UncertaintyGate:
        model = GateModel(*state["shape"]).to(device)
        model.load_state_dict(state["model"])
        recent = state.get("recent")
        return cls(model, groups, tuple(state["kinds"]), dict(state["medians"]), float(state["threshold"]),
                   None if recent is None else np.asarray(recent, dtype=np.float64), state.get("rate"))


class InterventionGate:
    """Takes over where the student's action is farther than ``intervene_at`` from the teacher's (RMS over the
    action dims, in half-ranges of the bounds); the teacher watches every step. ``rate``: and only where the
    distance is within the top ``rate`` of the distances it watched lately (as many as in the round before, every
    one of the round in the first; see :meth:`new_round`), so that labels go to the student's largest errors, at
    about that rate, as long as the student keeps making them; None: wherever it is farther."""

    watches = True

    def __init__(self, intervene_at: float, rate: float | None = None) -> None:
        self.intervene_at, self.rate = intervene_at, rate
        self.window: TopShare | None = None if rate is None else TopShare(rate, np.zeros(0), None)
        self.round: list[np.ndarray] = []  # this round's distances

    def new_round(self) -> None:
        """Start a round: the window keeps as many distances as the last round watched."""
        if self.rate is not None and self.round:
            last = np.concatenate(self.round)
            self.window, self.round = TopShare(self.rate, last, len(last)), []

    def decide(self, obs: ObsGroups, student_action: np.ndarray, teacher_action: np.ndarray | None,
               bounds: spaces.Box) -> np.ndarray:
        assert teacher_action is not None
        half = np.where(np.isfinite(bounds.high - bounds.low), (bounds.high - bounds.low) / 2.0, 1.0)
        distance = np.sqrt(np.mean(((student_action - teacher_action) / half) ** 2, axis=1))
        ask = distance > self.intervene_at
        if self.window is not None:
            self.round.append(distance)
            ask &= self.window.admits(distance)
        return np.where(ask, INTERVENTION, NOT_ASKED).astype(np.uint8)

    def state(self) -> dict[str, Any]:
        """What :meth:`new_round` starts the next round from: this round's distances."""
        return {"round": np.concatenate(self.round).tolist() if self.round else []}

    def load_state(self, state: dict[str, Any]) -> None:
        self.round = [np.asarray(state["round"], dtype=np.float64)] if state["round"] else []


class AskAlways:
    """Asks on every step (a round where the teacher acts and labels throughout)."""

    watches = False

    def decide(self, obs: ObsGroups, student_action: np.ndarray, teacher_action: np.ndarray | None,
               bounds: spaces.Box) -> np.ndarray:
        return np.full(len(student_action), TEACHER_ROUND, dtype=np.uint8)


Gate = UncertaintyGate | InterventionGate | AskAlways


def query_counts(query: np.ndarray) -> dict[str, int]:
    """Labelled steps by reason, from ``query`` codes (N,)."""
    counts = np.bincount(np.asarray(query, dtype=np.int64), minlength=len(REASONS) + 1)
    return {name: int(counts[code]) for code, name in REASONS.items() if counts[code]}
