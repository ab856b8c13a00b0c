"""History and recurrent students: per-env reset, training path == acting path, bundles, latent split, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from policydistill.bundle import load_bundle, save_bundle
from policydistill.models.history import HistoryPolicy, window_index
from policydistill.models.teacher_split import split_teacher
from policydistill.runtime import OnnxPolicy, export_policy
from policydistill.suites import load_suite
from policydistill.types import stack_obs

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "envs/zoo/locomotion"
ENCODERS = ["stack", "tcn", "gru"]

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def episodes() -> list[dict[str, np.ndarray]]:
    """Three locomotion episodes of different lengths (walk, run, back), acted by their zoo teacher."""
    suite = load_suite("locomotion")
    out = []
    for i, (task, length) in enumerate(zip(suite.task_names, (23, 17, 30), strict=True)):
        teacher = load_bundle(ZOO / task, device="cpu")
        env = suite.make_env(i)
        obs, _ = env.reset(seed=40 + i)
        seen = []
        for _ in range(length):
            seen.append(obs)
            obs, *_ = env.step(teacher.act(stack_obs([obs]))[0])
        env.close()
        out.append(stack_obs(seen))
    return out


def make_policy(encoder: str, episodes, groups=("policy", "task"), latent=None, seed: int = 0) -> HistoryPolicy:
    torch.manual_seed(seed)
    first = episodes[0]
    obs_space = spaces.Dict({g: spaces.Box(-np.inf, np.inf, (first[g].shape[1],), np.float32) for g in groups})
    policy = HistoryPolicy(groups, obs_space, spaces.Box(-1, 1, (6,), np.float32), encoder=encoder, history=8,
                           rnn_hidden=32, feature_dim=32, hidden=(32,), normalizer={"enabled": True}, latent=latent)
    x = np.concatenate([np.concatenate([e[g] for g in groups], 1) for e in episodes])
    policy.normalizer.set_stats(x.mean(0), x.var(0))
    with torch.no_grad():
        for p in policy.head.parameters():
            p.mul_(3.0)  # actions spread over the action range, past its bounds too
    return policy.eval()


def run_parallel(policy, episodes, groups=("policy", "task"), reset_per_episode=True) -> list[np.ndarray]:
    """Act on every episode side by side (one env slot each), resetting all at the start: actions (T_i, act)."""
    lengths = [len(e["policy"]) for e in episodes]
    policy.reset(None)
    out = [[] for _ in episodes]
    for t in range(max(lengths)):
        obs = {g: np.stack([e[g][min(t, len(e[g]) - 1)] for e in episodes]) for g in groups}
        a = policy.act(obs)
        for i, n in enumerate(lengths):
            if t < n:
                out[i].append(a[i])
    return [np.stack(o) for o in out]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_reset_clears_exactly_the_masked_envs(encoder, episodes):
    policy = make_policy(encoder, episodes)
    ep = episodes[0]
    rows = lambda t: {g: np.stack([ep[g][t]] * 3) for g in ("policy", "task")}  # noqa: E731
    policy.reset(None)
    for t in range(6):
        before = policy.act(rows(t))
    assert np.allclose(before[0], before[1]) and policy.state.abs().sum() > 0
    policy.reset(np.array([False, True, False]))
    assert policy.state[1].abs().sum() == 0 and policy.state[0].abs().sum() > 0
    after = policy.act(rows(0))
    fresh = make_policy(encoder, episodes)
    fresh.reset(None)
    first = fresh.act(rows(0))
    np.testing.assert_allclose(after[1], first[1], atol=1e-6)  # env 1 acts as on a fresh episode
    assert not np.allclose(after[0], first[0], atol=1e-3)  # envs 0 and 2 keep their history
    np.testing.assert_array_equal(after[0], after[2])
    policy.reset(None)
    assert policy.state is None
    np.testing.assert_allclose(policy.act(rows(0)), first, atol=1e-6)
    with pytest.raises(ValueError, match="reset mask has shape \\(2,\\), expected \\(3,\\)"):
        policy.reset(np.array([True, False]))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_stale_history_never_survives_an_episode_reset(encoder, episodes):
    """Episodes run back to back in one env slot, reset between them, act as each run alone from its start."""
    policy = make_policy(encoder, episodes)
    alone = [run_parallel(policy, [e])[0] for e in episodes]
    policy.reset(None)
    chained = []
    for e in episodes:
        policy.reset(np.array([True]))
        chained.append(np.stack([policy.act({g: e[g][t:t + 1] for g in ("policy", "task")})[0]
                                 for t in range(len(e["policy"]))]))
    for a, c in zip(alone, chained, strict=True):
        np.testing.assert_allclose(c, a, atol=1e-6)
    no_reset = make_policy(encoder, episodes)
    no_reset.reset(None)
    for e in episodes:  # without the resets, the second episode's first actions differ
        acts = np.stack([no_reset.act({g: e[g][t:t + 1] for g in ("policy", "task")})[0] for t in range(3)])
    assert not np.allclose(acts, alone[-1][:3], atol=1e-4)


def test_window_index_pads_before_each_episode_start():
    idx = window_index([3, 2], 2)
    np.testing.assert_array_equal(idx, [[-1, -1], [-1, 0], [0, 1], [-1, -1], [-1, 3]])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_training_path_matches_acting(encoder, episodes):
    """The trainer's gathered windows / unrolled sequences give the outputs the policy acts with."""
    policy = make_policy(encoder, episodes)
    acting = np.concatenate(run_parallel(policy, episodes))
    groups = ("policy", "task")
    x = torch.as_tensor(np.concatenate([np.concatenate([e[g] for g in groups], 1) for e in episodes]))
    lengths = [len(e["policy"]) for e in episodes]
    with torch.no_grad():
        if encoder == "gru":
            outs = []
            for (s, n) in zip(np.cumsum(lengths) - lengths, lengths, strict=True):
                xs = x[s:s + n].unsqueeze(0)
                state = policy.init_state(1)
                for t0 in range(0, n, 5):  # chunks with the state carried, as truncated BPTT does
                    feats, state = policy.encode_sequence(xs[:, t0:t0 + 5], state)
                    outs.append(policy.postprocess(policy.raw(feats[0], xs[0, t0:t0 + 5])))
            training = torch.cat(outs).numpy()
        else:
            xn = policy.normalizer(x)
            idx = torch.as_tensor(window_index(lengths, policy.state_shape[0]))
            valid = (idx >= 0).unsqueeze(-1).float()
            feats, _ = policy.encoder.step(xn, torch.cat([xn[idx.clamp(min=0)] * valid, valid], -1))
            training = policy.postprocess(policy.raw(feats, x)).numpy()
    np.testing.assert_allclose(training, acting, atol=1e-5)


@pytest.mark.parametrize("encoder", ["tcn", "gru"])
def test_bundle_round_trip(encoder, episodes, tmp_path):
    policy = make_policy(encoder, episodes)
    save_bundle(policy, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b", device="cpu")
    assert isinstance(loaded, HistoryPolicy) and loaded.config() == policy.config()
    for a, b in zip(run_parallel(policy, episodes), run_parallel(loaded, episodes), strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_teacher_reproduces_it_exactly(episodes):
    obs = {g: np.concatenate([e[g] for e in episodes]) for g in ("policy", "privileged")}
    for task in ("walk", "back"):
        teacher = load_bundle(ZOO / task, device="cpu")
        visible, head, encoder = split_teacher(teacher)
        assert visible == ["policy"]
        with torch.no_grad():
            z = encoder(torch.as_tensor(obs["privileged"]))
            y = teacher.postprocess(head(torch.as_tensor(obs["policy"]), z)).numpy()
        np.testing.assert_allclose(y, teacher.act(obs), atol=1e-6)


def latent_policy(episodes) -> HistoryPolicy:
    teachers = [load_bundle(ZOO / t, device="cpu") for t in ("walk", "run", "back")]
    t0 = teachers[0]
    lat = {"heads": 3, "visible_groups": ["policy"], "hidden": t0.hidden, "activation": t0.activation,
           "normalizer": t0.normalizer.config()}
    policy = make_policy("tcn", episodes, latent=lat)
    for head, t in zip(policy.teacher_heads, teachers, strict=True):
        head.load_state_dict(split_teacher(t)[1].state_dict())
    return policy


def test_latent_student_acts_through_its_tasks_teacher_head(episodes):
    """With the true latent, the latent student's heads act exactly as each task's teacher."""
    policy = latent_policy(episodes)
    for i, (task, ep) in enumerate(zip(("walk", "run", "back"), episodes, strict=True)):
        teacher = load_bundle(ZOO / task, device="cpu")
        z = split_teacher(teacher)[2](torch.as_tensor(ep["privileged"]))
        x = torch.as_tensor(np.concatenate([ep["policy"], ep["task"]], 1))
        assert ep["task"][0].argmax() == i
        with torch.no_grad():
            head_out = policy.teacher_heads[i](x[:, :9], z)
            head, policy.head = policy.head, torch.nn.Identity()  # the student's latent is the true one
            try:
                mixed = policy.raw(z, x)  # the policy's own routing by the task group
            finally:
                policy.head = head
        np.testing.assert_allclose(teacher.postprocess(head_out).numpy(),
                                   teacher.act({g: ep[g] for g in ("policy", "privileged")}), atol=1e-6)
        np.testing.assert_array_equal(mixed.numpy(), head_out.numpy())
    assert not any(p.requires_grad for p in policy.teacher_heads.parameters())
    policy.train()
    assert not policy.teacher_heads.training and policy.encoder.training


def _step_exported(fmt: str, path: Path, episodes, groups=("policy", "task")) -> list[np.ndarray]:
    """Step an exported model over the episodes side by side, state fed back and zeroed at each start."""
    info = json.loads(Path(f"{path}.json").read_text())
    (pair,) = info["state"]
    assert pair["init"] == 0.0
    if fmt == "torchscript":
        module = torch.jit.load(str(path))

        def run(x, s):
            with torch.inference_mode():
                a, s2 = module(torch.from_numpy(x), torch.from_numpy(s))
            return a.numpy(), s2.numpy()
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x, s):
            return tuple(session.run(["action", pair["output"]], {"obs": x, pair["input"]: s}))
    lengths = [len(e["policy"]) for e in episodes]
    # one slot runs episode 0 then 2 (a reset between them), another runs episode 1
    slots = [[(0, t) for t in range(lengths[0])] + [(2, t) for t in range(lengths[2])],
             [(1, t) for t in range(lengths[1])]]
    state = np.zeros((2, *pair["shape"][1:]), np.float32)
    out: list[list[np.ndarray]] = [[] for _ in episodes]
    for k in range(max(len(s) for s in slots)):
        steps = [s[min(k, len(s) - 1)] for s in slots]
        for j, (_, t) in enumerate(steps):
            if t == 0 and k < len(slots[j]):
                state[j] = 0.0
        x = np.stack([np.concatenate([episodes[e][g][t] for g in groups]) for e, t in steps]).astype(np.float32)
        a, state = run(x, state)
        for j, (e, _) in enumerate(steps):
            if k < len(slots[j]):
                out[e].append(a[j])
    return [np.stack(o) for o in out]


@pytest.mark.parametrize("kind", ["stack", "tcn", "gru", "latent"])
def test_exported_stateful_student_steps_as_the_torch_policy(kind, episodes, tmp_path):
    policy = latent_policy(episodes) if kind == "latent" else make_policy(kind, episodes)
    save_bundle(policy, tmp_path / "b")
    want = [run_parallel(policy, [e])[0] for e in episodes]
    for fmt, ext, tol in (("torchscript", "pt", 1e-5), ("onnx", "onnx", 1e-4)):
        path = export_policy(tmp_path / "b", fmt, tmp_path / f"m.{ext}")
        info = json.loads(Path(f"{path}.json").read_text())
        assert info["stateful"] is True and [g["name"] for g in info["groups"]] == ["policy", "task"]
        assert info["obs_dim"] == 9 + 3 and info["inputs"][1]["role"] == "state"
        got = _step_exported(fmt, path, episodes)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=tol)
        if fmt == "onnx":  # the runtime's stateful runner keeps and resets the state itself
            runner = OnnxPolicy(path)
            for w, e in zip(want, episodes, strict=True):
                np.testing.assert_allclose(run_parallel(runner, [e]), [w], rtol=0, atol=tol)
