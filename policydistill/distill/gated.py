"""Gated DAgger (``method=gated``): the teacher labels only where a gate asks, so labels go where they matter.

Round 0 the teacher acts and labels every step (a BC round: something to train and calibrate on; its episodes
cut at ``teacher_round_steps`` if set; with ``updates_per_round`` None it is fitted for 500 updates). From
round 1 the student acts, and the teacher is asked only where the gate (:mod:`policydistill.distill.gates`)
says so; it then acts and labels for ``takeover_steps`` steps. Unlabelled steps are stored for their
inputs only (loss weight 0). After every update an uncertainty gate is refitted on the labelled steps and
calibrated on the states of the round just collected (the student's, labelled or not): it fires on
``query_rate / takeover_steps`` of them, about ``query_rate`` of the steps labelled if the student goes where
it went. A student that improves strays less from what was labelled and is asked less than that; one that
meets new states would be asked more, but the gate's cap (``cap_rate``) keeps it to that share of the states it
saw lately, the most uncertain ones (the realised rate is in each round's ``info``). The intervention gate, given a
``query_rate``, likewise takes over only at the largest of the student's errors it watched lately, at about that
rate. Labels are counted as the teacher
gave them; every stored step keeps why it was labelled (the store's ``query`` field) and every round of
``distill.json`` counts the queries by reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from policydistill.configs import refuse_unread, require_choice, require_int, require_number
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Context, FitWith, stream
from policydistill.distill.collect import CollectPlan
from policydistill.distill.dagger import ExtraFields, FitFields, OnPolicy, RelabelFields, RoundFields
from policydistill.distill.gates import GATES, AskAlways, InterventionGate, UncertaintyGate, fit_gate_model
from policydistill.types import concat_groups

UNCERTAINTY_KEYS = ("ensemble_size", "gate_updates", "cap_rate")
QUERY_RATE = 0.1
"""An uncertainty gate's ``query_rate`` unless set."""


@dataclass
class GatedConfig(ExtraFields, RelabelFields, FitFields, RoundFields):
    """``method=gated`` (see the module doc). ``gate``: ``disagreement`` (an ensemble of ``ensemble_size`` small
    heads, each fitted on a bootstrap of the labelled steps for ``gate_updates`` updates), ``novelty`` (a random
    network distillation predictor fitted alongside), ``disagreement+novelty`` (either) or ``intervention`` (the
    teacher watches and takes over where the student's action is farther than ``intervene_at`` from its own, in
    half-ranges of the action bounds). ``query_rate``: about the share of the student's steps labelled; an
    uncertainty gate's is 0.1 unless set; the intervention gate, given one, takes over only at the largest
    ``query_rate / takeover_steps`` of the distances it watched over the last round's worth of steps (else wherever
    the student is farther). ``teacher_round_steps``: round 0's episodes (the teacher's) cut at this many steps (None:
    at ``collect_steps``). ``cap_rate``: an uncertainty gate also asks on at most its calibrated share
    of the last states it saw (as many as it was calibrated on), so a student whose every state looks new to the gate
    (as after round 0, calibrated on the teacher's states) is asked about the most uncertain of them, not about all.
    ``max_steps``: the stored steps kept (oldest rounds evicted first)."""

    gate: str = "disagreement+novelty"
    query_rate: float | None = None
    takeover_steps: int = 5
    ensemble_size: int = 5
    gate_updates: int = 1000
    intervene_at: float = 0.3
    max_steps: int = 200_000
    cap_rate: bool = True
    teacher_round_steps: int | None = None

    def __post_init__(self) -> None:
        self.check_fit()
        self.check_extra()
        for name in ("rounds", "episodes_per_task", "takeover_steps", "gate_updates", "max_steps"):
            require_int(name, getattr(self, name))
        require_int("ensemble_size", self.ensemble_size, 2)
        require_choice("gate", self.gate, GATES)
        if self.query_rate is not None:
            require_number("query_rate", self.query_rate, 0.0, 1.0, low_open=True)
        require_number("intervene_at", self.intervene_at, 0.0, low_open=True)
        if self.confidence == "advantage":
            raise ValueError("method.confidence=advantage judges every label as it is collected; method=gated labels "
                             "only where its gate asks: use method.confidence=none|teacher_std")
        for name in ("collect_steps", "teacher_round_steps"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name))
        unread = {f.name for f in dataclasses.fields(RelabelFields)}
        unread |= set(UNCERTAINTY_KEYS) if self.gate == "intervention" else {"intervene_at"}
        refuse_unread(self, {f.name for f in dataclasses.fields(self)} - unread, f"gate '{self.gate}'", "method.")

    @property
    def fire_rate(self) -> float | None:
        """The share of the inputs a gate fires on (None: the intervention gate's wherever the student is farther):
        each firing labels ``takeover_steps``."""
        if self.query_rate is None and self.gate == "intervention":
            return None
        return (QUERY_RATE if self.query_rate is None else self.query_rate) / self.takeover_steps


class Gated(OnPolicy):
    name = "gated"
    config = GatedConfig
    ray_collects = False
    cfg: GatedConfig

    def __init__(self, cfg: GatedConfig, ctx: Context) -> None:
        if len(ctx.suite.space_groups(range(len(ctx.suite.tasks)))) > 1:
            raise ValueError("method=gated scores the student's inputs with one gate: it needs tasks that share "
                             "their observation and action spaces")
        super().__init__(cfg, ctx)
        self.gate: UncertaintyGate | InterventionGate | None = (
            InterventionGate(cfg.intervene_at, cfg.fire_rate) if cfg.gate == "intervention" else None)

    def beta(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> float:
        return 1.0 if round == 0 else 0.0

    def plan_options(self) -> dict[str, Any]:
        return {"teacher_noise": 0.0, "success_filter": False, "keep_steps": self.cfg.max_steps,
                "only_this_round": False}

    def collect(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> CollectPlan:
        cfg = self.cfg
        if round == 0 or self.gate is None:
            return CollectPlan(1.0, cfg.episodes_per_task, None, gate=AskAlways(),
                               episode_steps=cfg.teacher_round_steps or cfg.collect_steps, **self.plan_options())
        if isinstance(self.gate, InterventionGate):
            self.gate.new_round()
        return CollectPlan(0.0, cfg.episodes_per_task, self.student, gate=self.gate, takeover_steps=cfg.takeover_steps,
                           episode_steps=cfg.collect_steps, **self.plan_options())

    def round_steps(self, round: int) -> int | None:
        """The teacher's round takes the most automatic updates (:meth:`FitFields.most_updates`), not ten passes
        over its few labels: from round 1 the student acts, and where it goes decides what the gate asks."""
        return self.cfg.most_updates() if round == 0 else None

    def update(self, store: EpisodeStore | None, round: int, fit_with: FitWith) -> dict[str, Any]:
        out = super().update(store, round, fit_with)
        assert store is not None
        if self.cfg.gate != "intervention":
            self.gate = self.fit_gate(store, round)
            out["info"]["gate"] = {"threshold": float(f"{self.gate.threshold:.4g}"),
                                   "medians": {k: float(f"{v:.4g}") for k, v in self.gate.medians.items()}}
        return out

    def fit_gate(self, store: EpisodeStore, round: int) -> UncertaintyGate:
        """The uncertainty gate refitted on every labelled stored step and calibrated on this round's inputs (the
        states visited, labelled or not)."""
        cfg, groups = self.cfg, tuple(self.student.groups)
        names = [f"obs/{g}" for g in groups]
        raw = store.load([*names, "label_mean", "query"])
        labelled = raw["query"] > 0
        model = fit_gate_model(concat_groups({g: raw[f"obs/{g}"][labelled] for g in groups}, groups),
                               raw["label_mean"][labelled], cfg.ensemble_size, cfg.gate_updates,
                               stream(self.ctx.seed, round, 4), self.student.device)
        recent = store.load(names, where=lambda meta: meta["round"] == round)
        kinds = ("disagreement", "novelty") if cfg.gate == "disagreement+novelty" else (cfg.gate,)
        rate = cfg.fire_rate
        assert rate is not None  # an uncertainty gate's rate is always set
        return UncertaintyGate.calibrated(model, groups, kinds, concat_groups(
            {g: recent[f"obs/{g}"] for g in groups}, groups), rate, cfg.cap_rate)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.gate is not None:
            state["gate"] = self.gate.state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if isinstance(self.gate, InterventionGate) and "gate" in state:
            self.gate.load_state(state["gate"])
        elif "gate" in state:
            self.gate = UncertaintyGate.from_state(state["gate"], tuple(self.student.groups), self.student.device)

