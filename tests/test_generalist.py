"""One student for Hopper-v5, Walker2d-v5 and HalfCheetah-v5 (different spaces): padding plus masks, with
plain-callable teachers named in the suite file; and the learned task embedding."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import goal_seeker

from policydistill.bundle import load_bundle
from policydistill.data.shards import EpisodeStore
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.losses import mse
from policydistill.distill.retrain import rebuild
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.models.generalist import GeneralistPolicy
from policydistill.models.students import StudentConfig, build_student
from policydistill.policy import RandomPolicy
from policydistill.suites import load_suite
from policydistill.teachers import policies_for_suite
from policydistill.types import stack_obs

ENVS = {"Hopper-v5": (11, 3), "Walker2d-v5": (17, 6), "HalfCheetah-v5": (17, 6)}


def _linear_controller(obs_dim: int, act_dim: int, seed: int):
    w = np.random.default_rng(seed).normal(scale=0.15, size=(act_dim, obs_dim))

    def act(obs: np.ndarray) -> np.ndarray:
        return np.tanh(w @ obs)

    return act


# plain callables obs (dim,) -> action (act_dim,), named in the suite file as "test_generalist:<name>"
hopper_teacher = _linear_controller(11, 3, 0)
walker_teacher = _linear_controller(17, 6, 1)
cheetah_teacher = _linear_controller(17, 6, 2)


@pytest.fixture(scope="module")
def mixed_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "mixed.yaml"
    path.write_text(yaml.safe_dump({"name": "mixed", "tasks": [
        {"name": "hopper", "env": "Hopper-v5", "teacher": "test_generalist:hopper_teacher", "max_episode_steps": 60},
        {"name": "walker", "env": "Walker2d-v5", "teacher": "test_generalist:walker_teacher", "max_episode_steps": 60},
        {"name": "cheetah", "env": "HalfCheetah-v5", "teacher": "test_generalist:cheetah_teacher",
         "max_episode_steps": 60}]}))
    return path


@pytest.fixture(scope="module")
def mixed_suite(mixed_yaml):
    return load_suite(str(mixed_yaml))


def _imitation_error(student, suite, teachers, seed: int = 11) -> dict[str, float]:
    """Mean squared action difference, per task in its own action space, on states of the teacher's episodes."""
    out = {}
    for i, name in enumerate(suite.task_names):
        env = suite.make_env(i)
        obs, _ = env.reset(seed=seed)
        states = []
        for _ in range(40):
            states.append(obs)
            obs, _, terminated, truncated, _ = env.step(teachers[name].act(stack_obs([obs]))[0])
            if terminated or truncated:
                obs, _ = env.reset(seed=seed + len(states))
        batch = stack_obs(states)
        want = teachers[name].act(batch)
        got = student.act({g: batch[g] for g in student.groups})
        assert got.shape == want.shape == (len(states), ENVS[suite.tasks[i].env][1])
        out[name] = float(np.mean((got - want) ** 2))
    return out


@pytest.mark.slow
def test_one_student_for_hopper_walker_and_cheetah(mixed_suite, mixed_yaml, tmp_path):
    teachers = policies_for_suite("suite", mixed_suite, device="cpu")
    cfg = DistillConfig(suite=str(mixed_yaml), teachers="suite", out=str(tmp_path / "run"),
                        n_envs=4, eval_episodes=2, device="cpu",
                        method=DAggerConfig(rounds=3, episodes_per_task=4, updates_per_round=500, beta_rounds=2))
    torch.manual_seed(0)
    untrained = build_student(mixed_suite, cfg.student, "cpu")
    assert isinstance(untrained, GeneralistPolicy) and untrained.obs_dim == 17 + 3 and untrained.act_dim == 6
    before = _imitation_error(untrained, mixed_suite, teachers)
    summary = distill(cfg, mixed_suite, teachers)
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    assert isinstance(student, GeneralistPolicy)
    after = _imitation_error(student, mixed_suite, teachers)
    for name in mixed_suite.task_names:  # measured: 0.03-0.97 before, 30-360x lower after
        assert after[name] < 0.1 * before[name], (name, before[name], after[name])
    # every task evaluated in its own space, scored against its own teacher
    last = summary["rounds"][-1]["tasks"]
    assert set(last) == {"hopper", "walker", "cheetah"} and all(t["teacher_return_mean"] != 0 for t in last.values())
    hopper = summarise(run_episodes(mixed_suite, "hopper", student, 2, seed=5000))
    assert hopper["return_mean"] == pytest.approx(last["hopper"]["return_mean"])
    # the store holds padded episodes with each task's real dims in their metadata
    store = EpisodeStore(tmp_path / "run" / "episodes")
    assert store.fields["obs/policy"]["shape"] == [17] and store.fields["label_mean"]["shape"] == [6]
    metas = {m["task"]: m["dims"] for m in store.episodes()}
    assert metas["hopper"] == {"policy": 11, "privileged": 12, "task": 3, "action": 3}
    data = store.load(["obs/policy", "obs/task", "label_mean"], where=lambda m: m["task"] == "hopper")
    assert not data["obs/policy"][:, 11:].any() and not data["label_mean"][:, 3:].any()
    # train-student's fit job (the one distill runs) counts each row's real action dims only
    algo, r = rebuild(tmp_path / "run", torch.device("cpu"))
    job = algo.fit_job(EpisodeStore(tmp_path / "run" / "episodes"), r)
    batch = job.batches.draw(np.random.default_rng(0))
    mask = algo.student.loss_mask(batch["x"])
    noisy = {**batch, "label_mean": torch.where(mask, batch["label_mean"], batch["label_mean"] + 100.0)}
    assert not mask.all() and job.loss(algo.student, noisy)[0] == job.loss(algo.student, batch)[0]


def test_padding_and_masks_keep_tasks_apart(mixed_suite):
    torch.manual_seed(0)
    student = build_student(mixed_suite, StudentConfig(learn_std=True, heads="shared"), "cpu")
    x = torch.randn(5, student.obs_dim)
    x[:, 17:] = torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 3).float()  # hopper rows
    noisy = x.clone()
    noisy[:, 11:17] = 100.0  # whatever a padded entry holds never reaches the network
    torch.testing.assert_close(student.raw(x), student.raw(noisy))
    assert (student(x)[:, 3:] == 0).all()  # padded action dims are bounded to [0, 0]
    # the loss ignores padded action dims: their head rows get no gradient from hopper rows
    y = student.raw(x)
    mse(y, torch.zeros_like(y), mask=student.loss_mask(x)).backward()
    assert student.head.weight.grad[3:].abs().sum() == 0 and student.head.weight.grad[:3].abs().sum() > 0
    # acting in each task's own space; a batch mixing spaces is refused with the reason
    env = mixed_suite.make_env("hopper")
    obs = stack_obs([env.reset(seed=0)[0]])
    assert student.act(obs).shape == (1, 3) and student.label(obs).std.shape == (1, 3)
    wide = {**obs, "policy": np.zeros((1, 17), np.float32)}
    with pytest.raises(ValueError, match="observation group 'policy' has shape"):
        student.act(wide)
    with pytest.raises(ValueError, match="must read the 'task' group"):
        build_student(mixed_suite, StudentConfig(groups=["policy"]), "cpu")


def _padded_rows(student: GeneralistPolicy, task: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    """Padded inputs (N, obs_dim) of the given tasks: column j of task t ~ N(shift[t, j], scale[t, j]^2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(task), student.obs_dim)) * scale[task] + shift[task]
    x[:, slice(*student.slices["task"])] = np.eye(student.n_tasks)[task]
    return (x * student.obs_mask.numpy()[task]).astype(np.float32)


def test_each_task_is_normalised_by_its_own_statistics(mixed_suite):
    """A column means something else in every task: pooled statistics squash one task's features (a task with
    20x the rows sets them), per-task ones give every task's real entries mean 0 and std 1."""
    per_task = build_student(mixed_suite, StudentConfig(), "cpu")  # heads auto: per task, spaces differ
    assert per_task.heads == "per_task" and per_task.normalizer.stats == "per_task"
    shared = GeneralistPolicy.from_config({**per_task.config(), "normalizer": {"enabled": True}})
    assert shared.normalizer.stats == "shared"
    assert build_student(mixed_suite, StudentConfig(heads="shared"), "cpu").normalizer.stats == "shared"
    assert shared.normalizer.mean.shape == (per_task.obs_dim,)  # a student saved before per-task statistics
    task = np.repeat([0, 1, 2], [2000, 100, 100])
    scale = np.array([[5.0], [0.05], [0.05]]).repeat(per_task.obs_dim, 1)  # hopper's features 100x wider
    shift = np.random.default_rng(1).normal(0, 1.0, (3, per_task.obs_dim))
    x = _padded_rows(per_task, task, scale, shift)
    spread = {}
    for name, student in (("per_task", per_task), ("shared", shared)):
        student.fit_normalizer(x)
        z = student.normalizer(torch.as_tensor(x)).numpy()
        assert not z[task == 0][:, 11:17].any()  # hopper's padded policy entries stay 0
        spread[name] = [z[task == t][:, :11].std(0) for t in (1, 2)]
    for std in spread["per_task"]:
        np.testing.assert_allclose(std, 1.0, atol=0.02)
    assert max(float(s.max()) for s in spread["shared"]) < 0.05  # pooled: walker's, cheetah's features squashed


def test_the_loss_weighs_each_task_by_its_own_action_scale(mixed_suite):
    """Scaling one task's labels and its head's output by c changes nothing: every task's error counts in units
    of its own label std, so a task whose actions are 10x smaller weighs as much."""
    torch.manual_seed(0)
    student = build_student(mixed_suite, StudentConfig(heads="per_task", hidden=[32]), "cpu")
    task = np.repeat([0, 1, 2], 64)
    x = _padded_rows(student, task, np.ones((3, student.obs_dim)), np.zeros((3, student.obs_dim)))
    labels = np.random.default_rng(2).normal(0, 0.5, (len(task), student.act_dim)).astype(np.float32)
    labels *= student.act_mask.numpy()[task]
    student.fit_normalizer(x)

    def loss(labels: np.ndarray) -> float:
        data = {"x": x, "label_mean": labels}
        batch = student.batches(data, np.array([len(x)]), len(x)).draw(np.random.default_rng(0))
        return float(student.compute_loss({k: batch[k] for k in data}, mse)[0].detach())

    before = loss(labels)
    want = np.sqrt(labels[task == 1, :6].var(0).mean())  # walker: one scale over its 6 dims
    np.testing.assert_allclose(student.label_scale[1].numpy(), [want] * 6, rtol=1e-5)
    np.testing.assert_allclose(student.label_scale[0].numpy(), [np.sqrt(labels[task == 0, :3].var(0).mean())] * 3
                               + [1.0] * 3, rtol=1e-5)  # hopper's 3 padded dims keep 1
    c = 0.1
    with torch.no_grad():  # walker's head block (rows 6..12 of the stacked head) and its labels scaled by c
        student.head.weight[6:12] *= c
        student.head.bias[6:12] *= c
    scaled = np.where((task == 1)[:, None], c * labels, labels)
    assert loss(scaled) == pytest.approx(before, rel=1e-4)
    student.label_scale.fill_(1.0)  # without the scale, the small task's error shrinks by c^2 in the loss
    assert student.compute_loss({"x": torch.as_tensor(x), "label_mean": torch.as_tensor(scaled)}, mse)[0] < 0.9 * before


def test_per_task_heads_keep_tasks_apart_and_round_trip(mixed_suite, tmp_path):
    from policydistill.bundle import save_bundle

    torch.manual_seed(0)
    student = build_student(mixed_suite, StudentConfig(heads="per_task", hidden=[16, 16]), "cpu")
    assert isinstance(student, GeneralistPolicy) and student.head.weight.shape == (3 * 6, 16)
    task = np.zeros(8, dtype=int)  # hopper rows only
    x = torch.as_tensor(_padded_rows(student, task, np.ones((3, student.obs_dim)), np.zeros((3, student.obs_dim))))
    y = student.raw(x)
    mse(y, torch.zeros_like(y), mask=student.loss_mask(x)).backward()
    first, head = student.first.weight.grad.view(3, 16, -1), student.head.weight.grad.view(3, 6, -1)
    assert first[0].abs().sum() > 0 and head[0, :3].abs().sum() > 0
    assert first[1:].abs().sum() == 0 and head[1:].abs().sum() == 0 and head[0, 3:].abs().sum() == 0
    save_bundle(student, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b", device="cpu")
    assert loaded.heads == "per_task" and loaded.normalizer.stats == "per_task"
    torch.testing.assert_close(loaded(x), student(x))
    # tasks that share their spaces take per-task heads too (auto: shared); other student kinds refuse the key
    one = build_student(load_suite("default"), StudentConfig(heads="per_task"), "cpu")
    assert isinstance(one, GeneralistPolicy) and one.heads == "per_task"
    assert not isinstance(build_student(load_suite("default"), StudentConfig(), "cpu"), GeneralistPolicy)  # auto
    with pytest.raises(ValueError, match="student kind 'gru' does not read student.heads"):
        StudentConfig(kind="gru", heads="per_task")
    with pytest.raises(ValueError, match="student.heads"):
        StudentConfig(heads="each")


@pytest.mark.slow
def test_learned_task_embedding_solves_the_default_suite(default_suite, tmp_path):
    teachers = {n: goal_seeker() for n in default_suite.task_names}
    cfg = DistillConfig(teachers="-", out=str(tmp_path / "emb"), eval_episodes=5, device="cpu",
                        method=DAggerConfig(rounds=4, episodes_per_task=4, updates_per_round=400, beta_rounds=3),
                        student=StudentConfig(task_encoding="embedding", embedding_dim=3))
    summary = distill(cfg, default_suite, teachers)
    student = load_bundle(Path(cfg.out) / "student", device="cpu")
    assert isinstance(student, GeneralistPolicy) and student.embedding.weight.shape == (3, 4)
    assert student.embedding.weight.abs().sum() > 0
    env = default_suite.make_env(0)
    for name in default_suite.task_names:
        s = summarise(run_episodes(default_suite, name, student, 5, seed=77))
        r = summarise(run_episodes(default_suite, name, RandomPolicy(env.action_space), 5, seed=77))
        assert s["success_rate"] >= 0.8 and s["return_mean"] > r["return_mean"] + s["return_ci95"] + r["return_ci95"]
    assert summary["rounds"][-1]["mean_score"] > 0.9
    with pytest.raises(ValueError, match="unknown student.task_encoding 'hash'"):
        replace(cfg.student, task_encoding="hash")


def test_kickstarting_runs_on_tasks_with_different_spaces(mixed_suite, tmp_path):
    """SB3's PPO over envs padded to the suite's widest spaces; the student is the padded generalist."""
    from policydistill.distill.kickstart import KickstartConfig

    teachers = policies_for_suite("suite", mixed_suite, device="cpu")
    cfg = DistillConfig(teachers="suite", out=str(tmp_path / "kick"), eval_episodes=1, device="cpu",
                        method=KickstartConfig(rounds=1, n_envs=3, n_steps=32, batch_size=32, n_epochs=2, loss="mse"))
    row = distill(cfg, mixed_suite, teachers)["rounds"][0]
    assert row["labels_used"] == row["env_steps"] == 96 and set(row["tasks"]) == {"hopper", "walker", "cheetah"}
    assert np.isfinite(row["losses"]["policy"]) and row["losses"]["kd"] > 0 and len(row["info"]["student_std"]) == 6
    assert isinstance(load_bundle(tmp_path / "kick" / "student", device="cpu"), GeneralistPolicy)


def test_embedding_student_with_shared_spaces_exports(default_suite, tmp_path):
    from policydistill.runtime.export import export_policy

    student = build_student(default_suite, StudentConfig(task_encoding="embedding"), "cpu")
    env_space = default_suite.make_env(0).observation_space
    assert isinstance(student, GeneralistPolicy) and list(student.observation_space) == ["policy", "task"]
    assert all(student.observation_space[g] == env_space[g] for g in ("policy", "task"))
    out = export_policy(student, "torchscript", tmp_path / "student.pt")  # checked against the torch module
    assert out.is_file()
