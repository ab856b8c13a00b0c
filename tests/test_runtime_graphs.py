"""Exported graphs with state, noise, chunks and a sampler run as the torch modules do, with and without torch.

The graphs come from the runtime's test fixtures (tests/runtime_fixtures.py), small modules that
follow the export contract; the MLP student's parity is in test_export.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_fixtures import DenoiserFixture, GRUFixture, HistoryFixture, NoiseChunkFixture, record_default

from policydistill.bundle import load_bundle
from policydistill.graph import TensorSpec
from policydistill.runtime import (
    Controller,
    ExportedModelError,
    ExportError,
    ExportGraph,
    OnnxPolicy,
    SamplerSpec,
    export_policy,
)
from policydistill.runtime.exported import ExportedPolicy, ObsWindow
from policydistill.runtime.sampler import alphas_cumprod
from policydistill.runtime.torch_policy import GraphPolicy

ROOT = Path(__file__).resolve().parents[1]
EXT = {"torchscript": "pt", "onnx": "onnx"}
TOL = {"torchscript": 1e-5, "onnx": 1e-4}

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def recorded() -> list[list[dict[str, np.ndarray]]]:
    """Two episodes of the default suite's north task, acted by the zoo expert."""
    return record_default(load_bundle(ROOT / "envs/zoo/default/north", device="cpu"), episodes=2)


@pytest.fixture(scope="module")
def modules() -> dict[str, torch.nn.Module]:
    return {"gru": GRUFixture().eval(), "history": HistoryFixture().eval(), "chunk": NoiseChunkFixture().eval(),
            "chunk2": NoiseChunkFixture(n_obs_steps=2, seed=4).eval(), "denoiser": DenoiserFixture().eval()}


@pytest.fixture(scope="module")
def exported(modules, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("graphs")
    return {(name, fmt): export_policy(m, fmt, out / f"{name}.{EXT[fmt]}") for name, m in modules.items()
            for fmt in EXT}


def _runner(path: Path, fmt: str, **kw) -> ExportedPolicy:
    return OnnxPolicy(path, **kw) if fmt == "onnx" else GraphPolicy.from_torchscript(path, **kw)


@pytest.mark.parametrize("fmt", list(EXT))
@pytest.mark.parametrize("name", ["gru", "history"])
def test_stateful_exports_act_as_the_torch_policy_across_episodes(name, fmt, modules, exported, recorded):
    module, runner = modules[name], _runner(exported[name, fmt], fmt)
    assert runner.stateful and runner.kind == "action"
    steps = 0
    for episode in recorded:  # state carried through an episode, zeroed by reset() between episodes
        module.reset()
        runner.reset()
        for obs in episode:
            np.testing.assert_allclose(runner.act(obs), module.act(obs), rtol=0, atol=TOL[fmt])
            steps += 1
    assert steps > 100


def test_an_observation_window_refuses_a_reset_mask_of_another_size():
    window = ObsWindow(3)
    first = window.push(np.arange(8, dtype=np.float32).reshape(4, 2))
    with pytest.raises(ValueError, match=r"reset mask has shape \(1,\), expected \(4,\)"):
        window.reset(np.array([True]))  # would broadcast to every env
    second = window.push(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(second[:, :4], first[:, 2:])  # no env was marked fresh


@pytest.mark.parametrize("name", ["gru", "history"])
def test_reset_zeroes_the_state_of_the_masked_envs_only(name, modules, exported, recorded):
    module, runner = modules[name], OnnxPolicy(exported[name, "onnx"])
    ep = recorded[0]
    batch = [{g: np.concatenate([o[g], ep[-1 - t][g]]) for g in o} for t, o in enumerate(ep[:40])]
    module.reset()
    for obs in batch[:20]:
        runner.act(obs)
        module.act(obs)
    runner.reset(np.array([True, False]))
    module.reset(np.array([True, False]))
    for obs in batch[20:]:
        got, want = runner.act(obs), module.act(obs)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # env 0 restarted at step 20: it now acts as a runner that first saw it then
    restarted = OnnxPolicy(exported[name, "onnx"])
    for obs in batch[20:]:
        last = restarted.act({g: v[:1] for g, v in obs.items()})
    np.testing.assert_allclose(got[:1], last, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"reset mask has shape \(3,\), expected \(2,\)"):
        runner.reset(np.array([True, False, True]))
    with pytest.raises(ValueError, match="batch size changed from 2 to 1; reset"):
        runner.act({g: v[:1] for g, v in batch[0].items()})


@pytest.mark.parametrize("fmt", list(EXT))
def test_noise_chunk_exports_match_torch_for_the_same_noise_and_are_seeded(fmt, modules, exported, recorded):
    module, runner = modules["chunk"], _runner(exported["chunk", fmt], fmt, seed=5)
    assert (runner.kind, runner.horizon, runner.n_action_steps, runner.n_obs_steps) == ("chunk", 8, 4, 1)
    rng = np.random.default_rng(0)
    for obs in recorded[0][::10]:
        x = runner.prepare(obs)
        z = rng.standard_normal((1, 8, 2), dtype=np.float32)
        with torch.inference_mode():
            want = module(torch.from_numpy(x), torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(runner.predict(x, noise={"noise": z}), want, rtol=0, atol=TOL[fmt])
    x = runner.prepare(recorded[0][0])
    same, other = _runner(exported["chunk", fmt], fmt, seed=5), _runner(exported["chunk", fmt], fmt, seed=6)
    runner.reseed(5)
    a = runner.predict(x)
    np.testing.assert_array_equal(a, same.predict(x))
    assert np.abs(a - other.predict(x)).max() > 1e-3


def test_chunk_policy_act_executes_n_action_steps_of_each_chunk(exported, recorded):
    path = exported["chunk", "onnx"]
    policy, replica = OnnxPolicy(path, seed=1), OnnxPolicy(path, seed=1)
    ep = recorded[0][:9]
    got = np.concatenate([policy.act(obs) for obs in ep])
    c0, c1 = replica.predict(replica.prepare(ep[0])), replica.predict(replica.prepare(ep[4]))
    want = np.concatenate([c0[0, :4], c1[0, :4], replica.predict(replica.prepare(ep[8]))[0, :1]])
    np.testing.assert_array_equal(got, want)
    policy.reset()  # the queue is forgotten: the next act computes a new (the fourth) chunk
    np.testing.assert_array_equal(policy.act(ep[1]), replica.predict(replica.prepare(ep[1]))[0, :1])


def test_chunk_policy_on_an_observation_window_gets_the_last_ticks_oldest_first(modules, exported, recorded):
    module, runner = modules["chunk2"], OnnxPolicy(exported["chunk2", "onnx"], seed=2)
    replica = np.random.default_rng(2)
    assert runner.n_obs_steps == 2 and runner.info["obs_dim"] == 12
    ep = recorded[0]
    x = [runner.prepare(o).copy() for o in ep[:6]]

    def chunk(window):
        with torch.inference_mode():
            z = torch.from_numpy(replica.standard_normal((1, 8, 2), dtype=np.float32))
            return module(torch.from_numpy(np.concatenate(window, axis=1)), z).numpy()

    first = chunk([x[0], x[0]])  # after a reset the window holds the first observation twice
    second = chunk([x[3], x[4]])
    got = [runner.act(o) for o in ep[:6]]
    np.testing.assert_allclose(np.concatenate(got[:4]), first[0, :4], atol=1e-4)
    np.testing.assert_allclose(got[4], second[:, 0], atol=1e-4)
    runner.reset(np.array([True]))  # the window restarts from the next observation, the queue is forgotten
    x6 = runner.prepare(ep[6]).copy()
    np.testing.assert_allclose(runner.act(ep[6]), chunk([x6, x6])[:, 0], atol=1e-4)


@pytest.mark.parametrize("fmt", list(EXT))
def test_denoiser_in_its_sampler_matches_the_torch_loop(fmt, modules, exported, recorded):
    module = modules["denoiser"]
    runner = _runner(exported["denoiser", fmt], fmt)
    assert runner.sampler.steps == 10 and runner.kind == "chunk" and not runner.info["deterministic"]
    rng = np.random.default_rng(3)
    for obs in recorded[1][::15]:
        x = runner.prepare(obs)
        z = rng.standard_normal((1, 8, 2), dtype=np.float32)
        want = module.sample(torch.from_numpy(x), torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(runner.predict(x, noise={"sample": z}), want, rtol=0, atol=TOL[fmt])
    fewer = _runner(exported["denoiser", fmt], fmt, sampler_steps=4)
    assert fewer.sampler.timesteps == (99, 74, 49, 24)  # the levels the torch policy visits with 4 steps
    module.spec, spec = module.spec.with_steps(4), module.spec
    try:
        want = module.sample(torch.from_numpy(x), torch.from_numpy(z)).numpy()
    finally:
        module.spec = spec
    np.testing.assert_allclose(fewer.predict(x, noise={"sample": z}), want, rtol=0, atol=TOL[fmt])


def test_ddim_recovers_the_clean_sample_given_an_exact_denoiser():
    """With the true noise (or the true x0) as prediction, every step lands on the right marginal
    and the last on x0 exactly, deterministic (eta=0) or not."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-0.9, 0.9, (5, 8, 3))
    for prediction in ("epsilon", "sample"):
        for eta in (0.0, 1.0):
            spec = SamplerSpec.ddim(alphas_cumprod("linear", 200), 20, [2.0] * 3, [0.5] * 3, prediction=prediction,
                                    eta=eta, action_low=[-1.0] * 3, action_high=[2.0] * 3)
            x = rng.standard_normal(x0.shape)
            for i, t in enumerate(spec.timesteps):
                a = spec.alphas_cumprod[t]
                eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
                x = spec.step(i, x, eps if prediction == "epsilon" else x0, rng.standard_normal(x.shape))
            np.testing.assert_allclose(x, x0, atol=1e-9)
            np.testing.assert_allclose(spec.postprocess(x), np.clip(2 * x0 + 0.5, -1, 2), atol=1e-9)
    assert SamplerSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_sampler_descriptions_are_validated():
    ac = alphas_cumprod("linear", 50)
    with pytest.raises(ValueError, match="timesteps must be a non-empty, strictly descending list in \\[0, 50\\)"):
        SamplerSpec(tuple(ac), (0, 10), (1.0,), (0.0,))
    with pytest.raises(ValueError, match="prediction 'v' is not one of"):
        SamplerSpec.ddim(ac, 5, [1.0], [0.0], prediction="v")
    with pytest.raises(ValueError, match="sampler steps must be in \\[1, 50\\]"):
        SamplerSpec.ddim(ac, 60, [1.0], [0.0])
    with pytest.raises(ValueError, match="invalid sampler description: expected an object with keys"):
        SamplerSpec.from_json({"alphas_cumprod": ac, "timesteps": [3, 0], "action_scale": [1], "action_offset": [0],
                               "schedule": "linear"})
    with pytest.raises(ValueError, match="unknown noise schedule 'cosine'"):
        alphas_cumprod("cosine", 10)


def test_export_descriptions_name_state_chunks_and_the_sampler(exported):
    gru = json.loads(Path(f"{exported['gru', 'onnx']}.json").read_text())
    assert gru["schema_version"] == 2 and gru["stateful"] and gru["chunk"] is None and gru["sampler"] is None
    assert gru["state"] == [{"input": "h", "output": "h_next", "shape": ["n", 16], "init": 0.0}]
    chunk = json.loads(Path(f"{exported['chunk2', 'torchscript']}.json").read_text())
    assert chunk["chunk"] == {"horizon": 8, "n_action_steps": 4, "n_obs_steps": 2} and not chunk["deterministic"]
    assert chunk["obs_dim"] == 12 and [g["dim"] for g in chunk["groups"]] == [4, 2]
    den = json.loads(Path(f"{exported['denoiser', 'onnx']}.json").read_text())
    assert [i["role"] for i in den["inputs"]] == ["observation", "sample", "timestep"]
    assert den["outputs"][0]["role"] == "prediction" and len(den["sampler"]["timesteps"]) == 10


def test_bad_chunk_and_denoiser_graphs_are_refused(tmp_path, exported):
    bad = NoiseChunkFixture()
    bad.n_action_steps = 9
    with pytest.raises(ExportError, match=r"n_action_steps 9 .* 1 <= n_action_steps <= horizon \(8\)"):
        export_policy(bad, "onnx", tmp_path / "bad.onnx")
    den = DenoiserFixture()
    graph = den.export_graph()
    with pytest.raises(ValueError, match="denoiser graph .* takes 'sample' and 'timestep' inputs and has a 'sampler'"):
        ExportGraph(graph.module, graph.inputs, graph.outputs)
    with pytest.raises(ValueError, match="takes 'sample' and 'timestep'"):
        ExportGraph(graph.module, graph.inputs[:2], graph.outputs, sampler=graph.sampler)
    with pytest.raises(ValueError, match="first output must be the 'action', 'chunk' or 'prediction'"):
        ExportGraph(graph.module, graph.inputs[:1], (TensorSpec("x", (2,), "state"),))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    info = json.loads(Path(f"{exported['denoiser', 'onnx']}.json").read_text())
    with pytest.raises(ExportedModelError, match="invalid sampler"):
        ExportedPolicy({**info, "sampler": {**info["sampler"], "timesteps": [0, 5]}}, lambda feed: [])


def test_exported_runners_need_no_torch(exported, recorded):
    """Stateful, noise-chunk and denoiser ONNX exports, alone and in the controller, import only
    numpy and onnxruntime: the robot-computer path."""
    obs = recorded[0][5]
    data = json.dumps({g: v.tolist() for g, v in obs.items()})
    want = {}
    for name in ("gru", "chunk", "denoiser"):
        p = OnnxPolicy(exported[name, "onnx"], seed=9)
        want[name] = np.concatenate([p.act(obs), p.act(obs)]).tolist()
    code = (
        "import json, sys\nimport numpy as np\n"
        "from policydistill.runtime import OnnxPolicy, Controller\n"
        f"obs = {{k: np.array(v, np.float32) for k, v in json.loads({data!r}).items()}}\n"
        f"paths = {json.dumps({k: str(exported[k, 'onnx']) for k in want})}\n"
        "out = {}\n"
        "for name, path in paths.items():\n"
        "    p = OnnxPolicy(path, seed=9)\n"
        "    out[name] = np.concatenate([p.act(obs), p.act(obs)]).tolist()\n"
        "    p.reset(np.array([True]))\n"
        "ctrl = Controller(OnnxPolicy(paths['chunk'], seed=9), 0.01)\n"
        "out['controller'] = np.concatenate([ctrl.step(obs), ctrl.step(obs)]).tolist()\n"
        "loaded = [m for m in ('torch', 'gymnasium', 'policydistill.runtime.export') if m in sys.modules]\n"
        "assert not loaded, loaded\nprint(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    for name, value in want.items():
        np.testing.assert_array_equal(np.array(got[name], np.float32), np.array(value, np.float32))
    np.testing.assert_array_equal(np.array(got["controller"], np.float32), np.array(want["chunk"], np.float32))


def test_controller_keeps_a_recurrent_state_per_env_and_resets_it(modules, exported, recorded):
    module = modules["gru"]
    ctrl = Controller(OnnxPolicy(exported["gru", "onnx"]), 0.01)
    module.reset()
    for k, episode in enumerate(recorded):
        if k:
            ctrl.reset(np.array([True]))
            module.reset(np.array([True]))
        for obs in episode[:50]:
            np.testing.assert_allclose(ctrl.step(obs), module.act(obs), rtol=0, atol=1e-4)
