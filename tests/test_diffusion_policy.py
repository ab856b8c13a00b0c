"""Diffusion and one-step chunk policies: noise schedule, samplers, chunk queue and history, reset,
bundles and export (TorchScript and ONNX Runtime parity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from policydistill.bundle import load_bundle, save_bundle
from policydistill.files import read_json
from policydistill.models.diffusion import DiffusionPolicy, apply_sampler, parse_sampler
from policydistill.models.noise import alphas_cumprod
from policydistill.models.onestep import OneStepPolicy
from policydistill.runtime import OnnxPolicy, export_policy
from policydistill.runtime.export import sidecar_path
from policydistill.runtime.sampler import sampler_levels

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
    """The policy's sampler loop (the runtime's SamplerSpec with its levels) driven by a denoiser that
    returns the truth for a known x0 lands on x0."""
    p = diffusion(noise={"steps": 50, "prediction": prediction})
    loop = p.sampler_spec("ddim", 7)
    assert loop.timesteps == tuple(sampler_levels(50, 7)) and loop.eta == 0.0
    x0 = torch.rand(4, 8, 2, dtype=torch.float64) * 1.6 - 0.8
    x = torch.randn(4, 8, 2, dtype=torch.float64)
    for i, t in enumerate(loop.timesteps):
        a = loop.alphas_cumprod[t]
        pred = x0 if prediction == "sample" else (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = loop.step(i, x, pred)
    assert torch.allclose(x, x0, atol=1e-6)
    assert p.sampler_spec("ddpm", 7).stochastic and p.sampler_spec("ddpm", 7).eta == 1.0


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
    assert not np.array_equal(p.predict_chunk(o), first)  # the generator moves on between chunks
    p.reset(None)
    assert np.array_equal(p.predict_chunk(o), first)
    with pytest.raises(ValueError, match="observation group 'policy' has shape"):
        p.act({"policy": np.zeros((3, 5), np.float32), "task": o["task"]})
    with pytest.raises(KeyError, match="lacks groups \\['task'\\]"):
        p.act({"policy": o["policy"]})
    bad = {**o, "policy": o["policy"].copy()}
    bad["policy"][1, 2] = np.nan
    with pytest.raises(ValueError, match="observation group 'policy'.*non-finite"):
        p.act(bad)  # not a NaN action
    with pytest.raises(ValueError, match="observation group 'policy'"):
        p.act({"policy": None, "task": o["task"]})


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
    assert q.sampler == {"kind": "ddim", "steps": 1} and q.sampler_spec().timesteps == (99,)
    with pytest.raises(ValueError, match="expected '<kind>:<steps>'"):
        parse_sampler("euler:3")
    s = OneStepPolicy.from_teacher(q)
    save_bundle(s, tmp_path / "student")
    r = load_bundle(tmp_path / "student", device="cpu")
    assert np.allclose(r.predict_chunk(o), s.predict_chunk(o), atol=1e-6)
    with pytest.raises(ValueError, match="applies to diffusion policies only"):
        apply_sampler([r], "ddim:2")


def flat(o: dict[str, np.ndarray]) -> np.ndarray:
    """Observation windows {group: (n, k, dim)} as the runtime feeds them: (n, k * obs_dim)."""
    return np.concatenate([o[g] for g in GROUPS], axis=-1).reshape(len(o[GROUPS[0]]), -1)


@pytest.mark.parametrize(("stochastic", "denoiser"), [(True, "mlp"), (False, "mlp"), (False, "unet")])
def test_one_step_export_runs_in_the_runtime_like_the_policy(tmp_path, stochastic: bool, denoiser: str) -> None:
    """TorchScript and ONNX exports; the exported chunk equals the torch one for the same window and
    noise; run through the runtime's OnnxPolicy (its own observation window and action queue), a
    deterministic student acts like the torch policy over steps with a reset of one env."""
    p = OneStepPolicy(GROUPS, OBS, ACT, n_obs_steps=3, horizon=8, n_action_steps=4, stochastic=stochastic,
                      denoiser=denoiser, denoiser_params={"hidden": [32, 32]} if denoiser == "mlp" else {})
    p.obs_normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 2, 7))
    export_policy(p, "torchscript", tmp_path / "student.pt")
    export_policy(p, "onnx", tmp_path / "student.onnx")
    info = read_json(sidecar_path(tmp_path / "student.onnx"))
    assert info["chunk"] == {"horizon": 8, "n_action_steps": 4, "n_obs_steps": 3}
    assert info["deterministic"] is (not stochastic) and not info["stateful"]
    exported = OnnxPolicy(tmp_path / "student.onnx")
    win = window(obs_batch(5, 0), obs_batch(5, 1), obs_batch(5, 2))
    z = np.random.default_rng(0).normal(size=(5, 8, 2)).astype(np.float32)
    got = exported.predict(flat(win), noise={"noise": z})
    with torch.inference_mode():
        want = p.to_actions(p.generate(p.cond(p.obs_tensor(win, window=True)), torch.as_tensor(z))).numpy()
    assert np.allclose(got, want, atol=1e-4)
    if stochastic:
        return
    p.reset(None)
    exported.reset(None)
    for t in range(9):
        if t == 5:  # env 1 starts a new episode
            p.reset(np.array([False, True]))
            exported.reset(np.array([False, True]))
        o = obs_batch(2, 10 + t)
        assert np.allclose(exported.act(o), p.act(o), atol=1e-4), t


@pytest.mark.parametrize("denoiser", ["mlp", "unet"])
def test_inference_constants_follow_the_weights(denoiser: str) -> None:
    """The chunks of a deterministic student (normalisers and level embedding derived once) equal the plain
    path's (everything computed from the weights), and stay equal after a change of the normaliser statistics,
    a load_state_dict, an in-place update of the level embedding's weights and a deep copy."""
    import copy

    p = OneStepPolicy(GROUPS, OBS, ACT, n_obs_steps=2, horizon=8, n_action_steps=4, stochastic=False,
                      denoiser=denoiser, denoiser_params={"hidden": [32, 32]} if denoiser == "mlp" else {}).eval()
    win = window(obs_batch(3, 0), obs_batch(3, 1))

    def plain(policy: OneStepPolicy) -> np.ndarray:
        with torch.inference_mode():
            return policy.to_actions(policy.generate(policy.cond(policy.obs_tensor(win, window=True)), None)).numpy()

    def check(policy: OneStepPolicy) -> np.ndarray:
        got = policy.predict_chunk(win)
        assert np.allclose(got, plain(policy), atol=1e-6)  # the same up to float rounding
        return got

    first = check(p)
    p.obs_normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 2, 7))
    p.action_normalizer.set_stats(np.full(2, -0.5), np.full(2, 0.7))
    second = check(p)
    assert not np.allclose(first, second)
    other = OneStepPolicy(GROUPS, OBS, ACT, n_obs_steps=2, horizon=8, n_action_steps=4, stochastic=False, seed=0,
                          denoiser=denoiser, denoiser_params={"hidden": [32, 32]} if denoiser == "mlp" else {})
    p.load_state_dict(other.state_dict())
    assert not np.allclose(check(p), second)
    with torch.no_grad():
        p.net.time.mlp[2].bias.add_(0.5)
    third = check(p)
    copied = copy.deepcopy(p)
    assert np.array_equal(copied.predict_chunk(win), third)
    with torch.no_grad():
        copied.obs_normalizer.mean.add_(1.0)
    assert not np.allclose(check(copied), third) and np.array_equal(p.predict_chunk(win), third)


def test_denoiser_graph_runs_the_k_step_sampler_in_the_runtime(tmp_path) -> None:
    """The teacher's exported denoiser, run by the runtime's OnnxPolicy in the exported sampler loop,
    reproduces the torch DDIM chunk from the same initial noise."""
    p = diffusion(sampler={"kind": "ddim", "steps": 6})
    p.obs_normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 2, 7))
    p.action_normalizer.set_stats([-0.8, -0.5], [0.6, 1.0])
    export_policy(p, "torchscript", tmp_path / "denoiser.pt")
    export_policy(p, "onnx", tmp_path / "denoiser.onnx")
    info = read_json(sidecar_path(tmp_path / "denoiser.onnx"))
    assert [s["role"] for s in info["inputs"]] == ["observation", "sample", "timestep"]
    assert info["sampler"]["timesteps"] == [99, 82, 66, 49, 32, 16] and info["sampler"]["prediction"] == "sample"
    win = window(obs_batch(3, 1), obs_batch(3, 2))
    z = np.random.default_rng(1).normal(size=(3, 8, 2)).astype(np.float32)
    got = OnnxPolicy(tmp_path / "denoiser.onnx").predict(flat(win), noise={"sample": z})
    with torch.inference_mode():
        want = p.to_actions(p.sample_from(p.cond(p.obs_tensor(win, window=True)), torch.as_tensor(z), None))
    assert np.allclose(got, want.numpy(), atol=1e-4)
    # the runtime's step-count override visits the levels the torch policy visits with that count
    fewer = OnnxPolicy(tmp_path / "denoiser.onnx", sampler_steps=2).predict(flat(win), noise={"sample": z})
    p.set_sampler("ddim", 2)
    with torch.inference_mode():
        want = p.to_actions(p.sample_from(p.cond(p.obs_tensor(win, window=True)), torch.as_tensor(z), None))
    assert np.allclose(fewer, want.numpy(), atol=1e-4)


def test_invalid_chunking_and_config_are_refused() -> None:
    with pytest.raises(ValueError, match="must not exceed the horizon"):
        DiffusionPolicy(GROUPS, OBS, ACT, horizon=4, n_action_steps=5)
    with pytest.raises(ValueError, match="divisible by 2"):
        DiffusionPolicy(GROUPS, OBS, ACT, horizon=7, n_action_steps=4, denoiser="unet")
    with pytest.raises(ValueError, match="unknown denoiser"):
        DiffusionPolicy(GROUPS, OBS, ACT, denoiser="transformer")
    with pytest.raises(ValueError, match="unknown keys"):
        DiffusionPolicy.from_config({**diffusion().config(), "stepz": 3})
