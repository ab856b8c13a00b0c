"""Diffusion and one-step chunk policies: noise schedule, samplers, chunk queue and history, reset,
bundles and export (TorchScript and ONNX Runtime parity)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from gymnasium import spaces

from policydistill.bundle import load_bundle, save_bundle
from policydistill.io import read_json
from policydistill.models.diffusion import DiffusionPolicy, apply_sampler, parse_sampler
from policydistill.models.noise import NoiseSchedule, alphas_cumprod, sampler_levels
from policydistill.models.onestep import OneStepPolicy
from policydistill.runtime import export_policy
from policydistill.runtime.export import sidecar_path

OBS = spaces.Dict({"policy": spaces.Box(-np.inf, np.inf, (4,), np.float32), "task": spaces.Box(0, 1, (3,), np.float32)})
ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)
GROUPS = ("policy", "task")


def obs_batch(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"policy": rng.normal(size=(n, 4)).astype(np.float32),
            "task": np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]}


def window(*steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Explicit observation windows (n, len(steps), dim) from per-step batches, oldest first."""
    return {g: np.stack([s[g] for s in steps], axis=1) for g in GROUPS}


def diffusion(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    args = {"n_obs_steps": 2, "horizon": 8, "n_action_steps": 3, "denoiser_params": {"hidden": [32, 32]},
            "sampler": {"kind": "ddim", "steps": 5}, **kw}
    return DiffusionPolicy(GROUPS, OBS, ACT, **args)


def test_cosine_schedule_and_sampler_levels() -> None:
    abar = alphas_cumprod(100, "cosine")
    assert abar.shape == (100,) and torch.all(abar[1:] < abar[:-1])
    assert 0.99 < float(abar[0]) <= 1.0 and float(abar[-1]) < 1e-3
    assert sampler_levels(100, 1) == [99]
    assert sampler_levels(100, 10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert sampler_levels(100, 100) == list(range(99, -1, -1))
    with pytest.raises(ValueError, match="sampler steps"):
        sampler_levels(100, 101)
    with pytest.raises(ValueError, match="noise schedule"):
        alphas_cumprod(10, "quadratic")


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_ddim_with_an_exact_denoiser_recovers_the_clean_sample(prediction: str) -> None:
    """Noise a known x0 and sample back with a denoiser that returns the truth: DDIM lands on x0."""
    sched = NoiseSchedule(50, prediction=prediction)
    x0 = torch.rand(4, 6, 2) * 1.6 - 0.8
    x = torch.randn(4, 6, 2)
    for step in sched.plan("ddim", 7):
        eps_true = (x - math.sqrt(step.abar) * x0) / math.sqrt(1 - step.abar)
        pred = x0 if prediction == "sample" else eps_true
        got_x0, got_eps = sched.split(pred, x, step.abar)
        assert torch.allclose(got_x0, x0, atol=2e-3)  # eps -> x0 amplifies float32 rounding by 1/sqrt(abar)
        x = sched.update(step, got_x0, got_eps, None)
    assert torch.allclose(x, x0, atol=2e-3)
    assert all(s.sigma == 0 for s in sched.plan("ddim", 7))
    assert all(s.sigma > 0 for s in sched.plan("ddpm", 7)[:-1])


def test_act_refills_the_queue_every_n_action_steps() -> None:
    p = diffusion()
    calls = []
    p.denoiser.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    for t in range(7):
        a = p.act(obs_batch(2, t))
        assert a.shape == (2, 2) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
    assert calls == [2] * 5 * 3  # chunks drawn at steps 0, 3 and 6, five denoiser calls each
    p.set_sampler("ddim", 1)
    p.reset(None)
    calls.clear()
    p.act(obs_batch(2, 0))
    assert calls == [2]
    assert p.predict_chunk(obs_batch(2, 1)).shape == (2, 8, 2)


def test_reset_clears_queue_and_history_of_exactly_the_masked_envs() -> None:
    """A deterministic one-step policy makes each chunk a function of its observation window."""
    p = OneStepPolicy(GROUPS, OBS, ACT, n_obs_steps=2, horizon=8, n_action_steps=3, stochastic=False,
                      denoiser_params={"hidden": [32]})
    o = [obs_batch(3, k) for k in range(6)]
    first = p.predict_chunk(window(o[0], o[0]))  # explicit windows leave the policy's state alone
    assert np.allclose(p.act(o[0]), first[:, 0])
    assert np.allclose(p.act(o[1]), first[:, 1])
    p.reset(np.array([True, False, False]))
    a = p.act(o[2])
    fresh = p.predict_chunk(window(o[2], o[2]))  # env 0: history refilled with its first observation
    assert np.allclose(a[0], fresh[0, 0]) and np.allclose(a[1:], first[1:, 2])
    a = p.act(o[3])
    cont = p.predict_chunk(window(o[2], o[3]))  # envs 1, 2: queue empty, window of the last two steps
    assert np.allclose(a[0], fresh[0, 1]) and np.allclose(a[1:], cont[1:, 0])
    p.reset(None)
    assert np.allclose(p.act(o[4]), p.predict_chunk(window(o[4], o[4]))[:, 0])
    with pytest.raises(ValueError, match="env_mask"):
        p.reset(np.array([True, False]))


def test_seeded_sampling_repeats_after_a_full_reset_and_observation_errors_are_clear() -> None:
    p = diffusion(sampler={"kind": "ddpm", "steps": 4})
    o = obs_batch(3, 0)
    first = p.predict_chunk(o)
    p.reset(None)
    assert np.array_equal(p.predict_chunk(o), first)
    with pytest.raises(ValueError, match="observation group 'policy' has shape"):
        p.act({"policy": np.zeros((3, 5), np.float32), "task": o["task"]})
    with pytest.raises(KeyError, match="lacks group 'task'"):
        p.act({"policy": o["policy"]})


@pytest.mark.parametrize("denoiser", ["mlp", "unet"])
def test_bundles_round_trip_and_sampler_is_a_runtime_setting(tmp_path, denoiser: str) -> None:
    params = {"hidden": [32]} if denoiser == "mlp" else {"channels": [8, 16]}
    p = diffusion(denoiser=denoiser, denoiser_params=params)
    p.obs_normalizer.set_stats(np.arange(7), np.arange(7) + 1.0)
    p.action_normalizer.set_stats([-0.5, -1.0], [0.5, 1.0])
    save_bundle(p, tmp_path / "teacher")
    q = load_bundle(tmp_path / "teacher", device="cpu")
    o = obs_batch(4, 3)
    assert np.allclose(q.predict_chunk(o), p.predict_chunk(o), atol=1e-6)
    apply_sampler([q], "ddim:1")
    assert q.sampler == {"kind": "ddim", "steps": 1} and len(q.sampler_table()) == 1
    with pytest.raises(ValueError, match="expected '<kind>:<steps>'"):
        parse_sampler("euler:3")
    s = OneStepPolicy.from_teacher(q)
    save_bundle(s, tmp_path / "student")
    r = load_bundle(tmp_path / "student", device="cpu")
    assert np.allclose(r.predict_chunk(o), s.predict_chunk(o), atol=1e-6)
    with pytest.raises(ValueError, match="applies to diffusion policies only"):
        apply_sampler([r], "ddim:2")


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("stochastic", [True, False])
def test_one_step_export_matches_the_policy_over_steps(tmp_path, stochastic: bool) -> None:
    """TorchScript and ONNX exports; the ONNX model run step by step with its history state fed back
    gives the chunks the policy computes from its own history (same noise), resets included."""
    p = OneStepPolicy(GROUPS, OBS, ACT, n_obs_steps=3, horizon=8, n_action_steps=4, stochastic=stochastic,
                      denoiser_params={"hidden": [32, 32]})
    p.obs_normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 2, 7))
    export_policy(p, "torchscript", tmp_path / "student.pt")
    export_policy(p, "onnx", tmp_path / "student.onnx")
    info = read_json(sidecar_path(tmp_path / "student.onnx"))
    assert info["stateful"] and info["deterministic"] is (not stochastic)
    assert [s["name"] for s in info["inputs"]] == ["obs", "obs_history"] + (["noise"] if stochastic else [])
    session = _session(tmp_path / "student.onnx")
    hist = np.zeros((2, 2, 8), np.float32)
    rng = np.random.default_rng(0)
    for t in range(5):
        if t == 3:  # env 1 starts a new episode
            p.reset(np.array([False, True]))
            hist[1] = 0.0
        o = obs_batch(2, t)
        x = np.concatenate([o["policy"], o["task"]], axis=1)
        z = rng.normal(size=(2, 8, 2)).astype(np.float32)
        feed = {"obs": x, "obs_history": hist, **({"noise": z} if stochastic else {})}
        chunk, hist = session.run(["chunk", "obs_history_next"], feed)
        with torch.inference_mode():
            want = p.to_actions(p.generate(p.cond(p.observe(o)), torch.as_tensor(z))).numpy()
        assert np.allclose(chunk, want, atol=1e-4), t


def test_denoiser_graph_runs_the_k_step_sampler_in_onnx_runtime(tmp_path) -> None:
    """The teacher's exported denoiser, looped with the sampler table of its bundle config, reproduces
    the torch DDIM sample from the same noise."""
    p = diffusion(sampler={"kind": "ddim", "steps": 6})
    p.obs_normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 2, 7))
    p.action_normalizer.set_stats([-0.8, -0.5], [0.6, 1.0])
    export_policy(p, "torchscript", tmp_path / "denoiser.pt")
    export_policy(p, "onnx", tmp_path / "denoiser.onnx")
    info = read_json(sidecar_path(tmp_path / "denoiser.onnx"))
    assert [s["role"] for s in info["inputs"]] == ["observation", "sample", "timestep"]
    assert info["policy_config"]["sampler"] == {"kind": "ddim", "steps": 6}
    session = _session(tmp_path / "denoiser.onnx")
    o = obs_batch(3, 1)
    hist = window(o, o)
    obs = np.concatenate([hist["policy"], hist["task"]], axis=2).reshape(3, -1)
    z = np.random.default_rng(1).normal(size=(3, 8, 2)).astype(np.float32)
    x, chunk = z, None
    for s in p.sampler_table():
        chunk, x0 = session.run(["chunk", "x0"], {"obs": obs, "sample": x, "timestep": np.full(3, s["t"], np.float32)})
        if s["abar_prev"] is not None:
            eps = (x - math.sqrt(s["abar"]) * x0) / math.sqrt(1 - s["abar"])
            x = (math.sqrt(s["abar_prev"]) * x0 + math.sqrt(1 - s["abar_prev"]) * eps).astype(np.float32)
    with torch.inference_mode():
        want = p.to_actions(p.sample_from(p.cond(torch.as_tensor(obs).view(3, 2, 7)), torch.as_tensor(z), None))
    assert np.allclose(chunk, want.numpy(), atol=1e-4)


def test_invalid_chunking_and_config_are_refused() -> None:
    with pytest.raises(ValueError, match="must not exceed the horizon"):
        DiffusionPolicy(GROUPS, OBS, ACT, horizon=4, n_action_steps=5)
    with pytest.raises(ValueError, match="divisible by 2"):
        DiffusionPolicy(GROUPS, OBS, ACT, horizon=7, n_action_steps=4, denoiser="unet")
    with pytest.raises(ValueError, match="unknown denoiser"):
        DiffusionPolicy(GROUPS, OBS, ACT, denoiser="transformer")
    with pytest.raises(ValueError, match="unknown keys"):
        DiffusionPolicy.from_config({**diffusion().config(), "stepz": 3})
