"""Gated DAgger: the teacher labels only where a gate asks, with real envs, teachers, stores and training."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker
from gymnasium import spaces

from policydistill import load_suite, policies_for_suite, zoo_dir
from policydistill.cli import main
from policydistill.data.shards import STUDENT, TEACHER, EpisodeStore
from policydistill.distill.algorithm import Context
from policydistill.distill.collect import collect
from policydistill.distill.gated import Gated, GatedConfig
from policydistill.distill.gates import (
    INTERVENTION,
    NOT_ASKED,
    REASONS,
    InterventionGate,
    UncertaintyGate,
    fit_gate_model,
)
from policydistill.distill.losses import make_loss
from policydistill.distill.runner import DistillConfig, distill
from policydistill.files import read_json
from policydistill.models.students import StudentConfig, build_student
from policydistill.policy import RandomPolicy
from policydistill.teachers import TeacherBank
from policydistill.types import concat_groups

GROUPS = ("policy", "task")


def gated_run(tmp_path: Path, suite, teachers, **method) -> dict:
    cfg = DistillConfig(teachers="-", out=str(tmp_path / "run"), eval_episodes=2, final_episodes=0,
                        student=StudentConfig(groups=list(GROUPS)),
                        method=GatedConfig(**{"rounds": 3, "episodes_per_task": 2, "updates_per_round": 50,
                                              **({} if method.get("gate") == "intervention" else {"gate_updates": 50}),
                                              **method}))
    return distill(cfg, suite, teachers)


GATE_KEYS = {"disagreement+novelty": {"query_rate": 0.3, "takeover_steps": 3},
             "intervention": {"intervene_at": 0.05},
             "intervention at a rate": {"intervene_at": 0.05, "query_rate": 0.2, "teacher_round_steps": 50}}


@pytest.mark.parametrize("gate", GATE_KEYS)
def test_labels_only_where_the_teacher_was_asked(default_suite, tmp_path, gate):
    teachers = policies_for_suite(zoo_dir("default"), default_suite, device="cpu")  # PPO experts: labels with a std
    keys = GATE_KEYS[gate]
    summary = gated_run(tmp_path, default_suite, teachers, gate=gate.split()[0], **keys)
    store = EpisodeStore(tmp_path / "run" / "episodes")
    bank = TeacherBank([teachers[n] for n in default_suite.task_names])
    labels_so_far = 0
    for row in summary["rounds"]:
        r = row["round"]
        data = store.load(["obs/policy", "obs/task", "obs/privileged", "actor", "label_mean", "label_std", "query"],
                          where=lambda meta, r=r: meta["round"] == r)
        asked = data["query"] != NOT_ASKED
        assert (data["actor"][asked] == TEACHER).all() and (data["actor"][~asked] == STUDENT).all()
        assert not data["label_mean"][~asked].any() and not data["label_std"][~asked].any()
        obs = {g: data[f"obs/{g}"][asked] for g in ("policy", "task", "privileged")}
        np.testing.assert_allclose(data["label_mean"][asked], bank.label(obs).mean, atol=1e-5)  # the teacher's own
        counts = {REASONS[c]: int(n) for c, n in zip(*np.unique(data["query"][asked], return_counts=True),
                                                      strict=True)}
        assert row["info"]["queries"] == counts
        labels_so_far += int(asked.sum())
        assert row["labels_used"] == labels_so_far
    assert summary["rounds"][0]["info"]["queries"] == {"teacher_round": 4 * 2 * keys.get("teacher_round_steps", 100)}
    later = summary["rounds"][1:]
    assert all(0 < row["info"]["query_rate"] < min(1, 1.5 * keys.get("query_rate", 1)) for row in later)
    if gate.startswith("intervention"):
        assert all(row["info"]["watched_steps"] == row["env_steps"] - prev["env_steps"]
                   for prev, row in zip(summary["rounds"], later, strict=False))


def test_uncertainty_gate_asks_where_the_student_strays(default_suite):
    bank = TeacherBank([goal_seeker() for _ in default_suite.task_names])
    tasks = list(range(len(default_suite.tasks)))

    def states(student, beta: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        recs = collect(default_suite, tasks, bank, student, beta, 4, 8, seed, np.random.default_rng(seed))
        x = np.concatenate([concat_groups({g: r.steps[f"obs/{g}"] for g in GROUPS}, GROUPS) for r in recs])
        return x, np.concatenate([r.steps["label_mean"] for r in recs])

    x, y = states(None, 1.0, 0)
    model = fit_gate_model(x, y, 5, 300, np.random.default_rng(0))
    box = default_suite.spaces[0][1]
    held_out, _ = states(None, 1.0, 100)
    strayed, _ = states(RandomPolicy(box), 0.0, 200)
    def rate(x: np.ndarray, gate: UncertaintyGate) -> float:
        obs = {"policy": x[:, :-4], "task": x[:, -4:]}
        return float((gate.decide(obs, np.zeros((len(x), 2)), None, box) != NOT_ASKED).mean())

    for kinds in (("disagreement",), ("novelty",), ("disagreement", "novelty")):
        gate = UncertaintyGate.calibrated(model, GROUPS, kinds, x, 0.05, cap=False)
        assert rate(x, gate) == pytest.approx(0.05, abs=0.01)  # calibrated on these
        assert rate(held_out, gate) < 0.1  # a student acting like the teacher is rarely asked about
        assert rate(strayed, gate) > 0.5  # one that strays, mostly
        # calibrated on a straying student's round, as after a round of it: once it acts like the teacher, the
        # gate asks less than the rate it was calibrated to
        gate = UncertaintyGate.calibrated(model, GROUPS, kinds, strayed, 0.2, cap=False)
        assert rate(strayed, gate) == pytest.approx(0.2, abs=0.02) and rate(held_out, gate) < 0.05
        # with the cap, a student whose every state looks new is asked about the most uncertain ones, at the rate
        capped = UncertaintyGate.calibrated(model, GROUPS, kinds, x, 0.05)
        assert rate(strayed[:len(x) // 50], capped) > 0.5  # the window still holds the calibration's ratios
        for _ in range(math.ceil(len(x) / len(strayed))):  # until the window holds the straying student's only
            rate(strayed, capped)
        assert rate(strayed, capped) == pytest.approx(0.05, abs=0.01)


def test_intervention_gate_measures_in_half_ranges():
    box = spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 10.0], np.float32))
    gate = InterventionGate(0.2)
    teacher = np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])
    student = np.array([[0.1, 5.5], [0.3, 5.0], [0.0, 7.0]])  # RMS distances 0.1, 0.21, 0.28 half-ranges
    assert gate.decide({}, student, teacher, box).tolist() == [NOT_ASKED, INTERVENTION, INTERVENTION]


def test_intervention_at_a_rate_takes_over_at_the_largest_errors():
    box = spaces.Box(-np.ones(2, np.float32), np.ones(2, np.float32))
    rng = np.random.default_rng(0)
    teacher = np.zeros((8, 2))

    def asked(gate: InterventionGate, spread: float) -> tuple[np.ndarray, np.ndarray]:
        student = rng.normal(0.0, spread, size=(8, 2))
        distance = np.sqrt(np.mean(student ** 2, axis=1))
        return gate.decide({}, student, teacher, box) != NOT_ASKED, distance

    gate = InterventionGate(0.01, rate=0.1)
    first = [asked(gate, 0.5) for _ in range(100)]  # a round of 800 watched steps
    ask, distance = (np.concatenate(x) for x in zip(*first, strict=True))
    assert ask.mean() == pytest.approx(0.1, abs=0.03)  # the rate, not every step farther than 0.01
    assert distance[ask].min() > np.quantile(distance, 0.8)  # at the largest errors
    assert InterventionGate(0.01).decide({}, rng.normal(0.0, 0.5, (8, 2)), teacher, box).all()  # without a rate
    gate.new_round()  # the next round compares with the last one's 800 distances
    assert np.mean([asked(gate, 0.1)[0].mean() for _ in range(20)]) < 0.02  # a student that improved: asked less
    # one that errs more is asked more while the window still holds its better steps, then at the rate
    assert np.mean([asked(gate, 2.0)[0].mean() for _ in range(100)]) > 0.2
    assert np.mean([asked(gate, 2.0)[0].mean() for _ in range(100)]) == pytest.approx(0.1, abs=0.03)
    restored = InterventionGate(0.01, rate=0.1)
    restored.load_state(gate.state())
    gate.new_round()
    restored.new_round()
    student = rng.normal(0.0, 1.0, size=(8, 2))
    assert gate.decide({}, student, teacher, box).tolist() == restored.decide({}, student, teacher, box).tolist()


def test_weight_zero_changes_nothing(default_suite):
    torch.manual_seed(0)
    for kind in ("mlp", "gru"):
        student = build_student(default_suite, StudentConfig(kind=kind, groups=list(GROUPS)), "cpu")
        loss_fn = make_loss("mse", teacher_has_std=False, student_has_std=False)
        x = torch.randn(3, 5, student.obs_dim)
        label = torch.randn(3, 5, student.act_dim)
        if kind == "mlp":
            full = {"x": x[:, 0], "label_mean": label[:, 0], "weight": torch.tensor([1.0, 1.0, 0.0])}
            kept = {"x": x[:2, 0], "label_mean": label[:2, 0]}
        else:  # sequences: the third one's steps weigh nothing
            mask = torch.ones(3, 5, dtype=torch.bool)
            weight = torch.ones(3, 5)
            weight[2] = 0.0
            full = {"x": x, "label_mean": label, "mask": mask, "weight": weight, "state": student.init_state(3)}
            kept = {"x": x[:2], "label_mean": label[:2], "mask": mask[:2], "state": student.init_state(2)}
        grads = []
        for batch in (full, kept):
            student.zero_grad()
            loss, _ = student.compute_loss(batch, loss_fn)
            loss.backward()
            grads.append((loss.item(), [p.grad.clone() for p in student.parameters() if p.grad is not None]))
        assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
        for a, b in zip(grads[0][1], grads[1][1], strict=True):
            torch.testing.assert_close(a, b)


def test_automatic_updates_count_the_labelled_steps_only(default_suite, tmp_path):
    """With ``updates_per_round`` None the teacher's round takes the most updates (500) and every later round 10
    passes over its training rows: the labelled ones, as the unlabelled steps stored beside them are never drawn."""
    teachers = policies_for_suite(zoo_dir("default"), default_suite, device="cpu")
    summary = gated_run(tmp_path, default_suite, teachers, updates_per_round=None, batch_size=32, query_rate=0.1)
    first, *later = summary["rounds"]
    assert first["updates"] == 500 and later
    for row in later:
        assert row["updates"] == min(500, max(50, math.ceil(10 * row["labels_used"] / 32)))
    assert summary["rounds"][-1]["env_steps"] > 1.5 * summary["rounds"][-1]["labels_used"]  # unlabelled steps stored


def test_batches_never_draw_unlabelled_steps(default_suite):
    for kind in ("mlp", "history_mlp", "gru"):
        student = build_student(default_suite, StudentConfig(kind=kind, groups=list(GROUPS)), "cpu")
        n = 40
        data = {"x": np.random.default_rng(0).normal(size=(n, student.obs_dim)).astype(np.float32),
                "label_mean": np.zeros((n, student.act_dim), np.float32),
                "weight": (np.arange(n) % 10 < 3).astype(np.float32)}  # 3 labelled steps per 10-step episode
        data["label_mean"][:, 0] = data["weight"]
        source = student.batches(data, np.full(4, 10), 20, np.repeat(np.arange(4), 10), 10)
        rng = np.random.default_rng(1)
        for _ in range(5):
            batch = source.draw(rng)
            picked = batch["weight"][batch["mask"]] if "mask" in batch else batch["weight"]
            if kind == "gru":  # whole episodes, each with labelled steps
                assert picked.sum() > 0
                batch["next_state"] = batch["state"]  # what the loss would leave for the next chunk
            else:
                assert (picked == 1).all() and (batch["label_mean"][:, 0] == 1).all()


def test_gate_survives_a_checkpoint(default_suite, tmp_path):
    teachers = {n: goal_seeker() for n in default_suite.task_names}
    gated_run(tmp_path, default_suite, teachers, rounds=2)
    ctx = Context(default_suite, teachers, StudentConfig(groups=list(GROUPS)), torch.device("cpu"), 0)
    cfg = GatedConfig(rounds=2, episodes_per_task=2, updates_per_round=50, gate_updates=50)
    state = torch.load(tmp_path / "run" / "checkpoint" / "round-1" / "state.pt", weights_only=True)
    first, second = Gated(cfg, ctx), Gated(cfg, ctx)
    first.load_state_dict(state)
    second.load_state_dict(state)
    assert isinstance(first.gate, UncertaintyGate)
    x = np.random.default_rng(0).normal(size=(64, first.student.obs_dim)).astype(np.float32)
    obs = {"policy": x[:, :-4], "task": np.eye(4, dtype=np.float32)[np.arange(64) % 4]}
    box = default_suite.spaces[0][1]
    assert first.gate.decide(obs, x[:, :2], None, box).tolist() == second.gate.decide(obs, x[:, :2], None, box).tolist()
    logged = read_json(tmp_path / "run" / "distill.json")["rounds"][1]["info"]["gate"]["threshold"]
    assert first.gate.threshold == pytest.approx(logged, rel=1e-3)


def test_gated_refuses_what_it_does_not_read(tmp_path, caplog):
    with pytest.raises(ValueError, match="gate 'intervention' does not read method.cap_rate"):
        GatedConfig(gate="intervention", cap_rate=False)
    with pytest.raises(ValueError, match="does not read method.intervene_at"):
        GatedConfig(intervene_at=0.5)
    with pytest.raises(ValueError, match="does not read method.relabel_noise"):
        GatedConfig(relabel_noise=0.1)
    with pytest.raises(ValueError, match="collects in this process only"):
        DistillConfig(teachers="-", out=str(tmp_path), method=GatedConfig(), collector="ray")
    suite = load_suite("pendulum_reacher")
    ctx = Context(suite, {n: None for n in suite.task_names}, StudentConfig(), torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="needs tasks that share their observation and action spaces"):
        Gated(GatedConfig(), ctx)
    out = tmp_path / "cli"
    assert main(["distill", "method=gated", "suite=default", f"teachers={zoo_dir('default')}", f"out={out}",
                 "method.gate=nope"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "unknown gate 'nope'" in errors[0] and not out.exists()


@pytest.mark.parametrize("gate", [["method.gate=intervention", "method.intervene_at=0.05",
                                   "method.teacher_round_steps=50"],
                                  ["method.gate=disagreement", "method.gate_updates=100"]],
                         ids=["intervention", "disagreement"])
def test_a_resumed_gate_at_a_rate_goes_on_as_one_run(gate, tmp_path):
    # the gate's window (intervention: the distances; uncertainty: the recent ratios of its cap) is part of the
    # checkpoint: two rounds, then two more, end where four rounds end
    argv = ["distill", "method=gated", "teachers=conftest:goal_seeker", "eval_episodes=2", "final_episodes=0",
            "n_envs=2", "method.episodes_per_task=1", "method.updates_per_round=100", "method.query_rate=0.3", *gate]
    assert main([*argv, "method.rounds=4", f"out={tmp_path / 'straight'}"]) == 0
    assert main([*argv, "method.rounds=2", f"out={tmp_path / 'resumed'}"]) == 0
    assert main([*argv, "method.rounds=4", f"out={tmp_path / 'resumed'}", "resume=extend"]) == 0
    straight, resumed = (read_json(tmp_path / d / "distill.json")["rounds"] for d in ("straight", "resumed"))
    assert [r["info"]["queries"] for r in straight] == [r["info"]["queries"] for r in resumed]
    assert [r["labels_used"] for r in straight] == [r["labels_used"] for r in resumed]
