"""Exported policies (TorchScript, ONNX) act as the torch policy does, and run without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from policydistill.bundle import load_bundle, read_bundle_info
from policydistill.models.mlp import MLPPolicy
from policydistill.policy import CallablePolicy, Policy
from policydistill.runtime import ExportedModelError, ExportError, OnnxPolicy, export_policy
from policydistill.spaces import check_spaces
from policydistill.suites import load_suite
from policydistill.types import concat_groups, stack_obs

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"north": ROOT / "envs/zoo/default/north", "walk": ROOT / "envs/zoo/locomotion/walk"}
SUITE_OF = {"north": "default", "walk": "locomotion", "sac": "locomotion", "td3": "default"}
EXT = {"torchscript": "pt", "onnx": "onnx"}
TOL = {"torchscript": 1e-5, "onnx": 1e-4}

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _record(suite_name: str, policy: MLPPolicy) -> dict[str, np.ndarray]:
    """One episode per task of a suite, acted by ``policy``: every group's observations {group: (T, dim)}."""
    suite = load_suite(suite_name)
    seen = []
    for i in range(len(suite.tasks)):
        env = suite.make_env(i)
        obs, _ = env.reset(seed=100 + i)
        done = False
        while not done:
            seen.append(obs)
            obs, _, terminated, truncated, _ = env.step(policy.act(stack_obs([obs]))[0])
            done = terminated or truncated
        env.close()
    return stack_obs(seen)


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, np.ndarray]]:
    return {suite: _record(suite, load_bundle(BUNDLES[name], device="cpu"))
            for name, suite in (("north", "default"), ("walk", "locomotion"))}


def _random_policy(obs: dict[str, np.ndarray], groups: tuple[str, ...], post: str, out_activation: str,
                   seed: int) -> MLPPolicy:
    """An MLPPolicy with random weights, normaliser stats off the data's and asymmetric action bounds."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    obs_space = spaces.Dict({g: spaces.Box(-np.inf, np.inf, (obs[g].shape[1],), dtype=np.float32) for g in groups})
    low = np.array([-1.0, 0.0, -2.0, 0.5, -0.3, -1.0], dtype=np.float32)
    high = np.array([1.0, 2.0, -1.0, 1.5, 0.3, 3.0], dtype=np.float32)
    policy = MLPPolicy(groups, obs_space, spaces.Box(low, high), hidden=(32, 32), activation="relu", post=post,
                       out_activation=out_activation, normalizer={"enabled": True, "clip": 5.0})
    x = concat_groups(obs, groups)
    policy.normalizer.set_stats(x.mean(0) + rng.normal(0, 0.5, x.shape[1]),
                                x.var(0) * rng.uniform(0.2, 3.0, x.shape[1]) + 1e-3)
    with torch.no_grad():
        policy.head.weight.mul_(10.0)
    return policy.eval()


@pytest.fixture(scope="module")
def policies(recorded) -> dict[str, MLPPolicy]:
    return {"north": load_bundle(BUNDLES["north"], device="cpu"),
            "walk": load_bundle(BUNDLES["walk"], device="cpu"),
            "sac": _random_policy(recorded["locomotion"], ("policy", "privileged", "task"), "tanh_unscale", "none", 1),
            "td3": _random_policy(recorded["default"], ("policy", "task"), "unscale", "tanh", 2)}


@pytest.fixture(scope="module")
def exported(policies, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("exported")
    return {(name, fmt): export_policy(BUNDLES.get(name, policy), fmt, out / f"{name}.{EXT[fmt]}")
            for name, policy in policies.items() for fmt in EXT}


def _batches(obs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """16 single rows spread over the recording, then every full batch of 64 rows."""
    n = len(next(iter(obs.values())))
    singles = [{g: v[i:i + 1] for g, v in obs.items()} for i in np.linspace(0, n - 1, 16).astype(int)]
    return singles + [{g: v[i:i + 64] for g, v in obs.items()} for i in range(0, n - 63, 64)]


@pytest.mark.parametrize("fmt", list(EXT))
@pytest.mark.parametrize("name", ["north", "walk", "sac", "td3"])
def test_exported_policy_acts_as_the_torch_policy(name, fmt, policies, exported, recorded):
    policy, path = policies[name], exported[name, fmt]
    if fmt == "torchscript":
        module = torch.jit.load(str(path))

        def act(obs):
            with torch.inference_mode():
                return module(torch.from_numpy(concat_groups(obs, policy.groups))).numpy()
    else:
        act = OnnxPolicy(path).act
    batches = _batches(recorded[SUITE_OF[name]])
    assert {len(b["policy"]) for b in batches} == {1, 64}
    low, high = policy.action_space.low, policy.action_space.high
    near = 1e-6 if policy.post == "clip" else 0.01 * (high - low)
    at_bounds = 0.0
    for obs in batches:
        want, got = policy.act(obs), act(obs)
        assert got.dtype == np.float32 and got.shape == want.shape == (len(obs["policy"]), policy.act_dim)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL[fmt])
        at_bounds += np.sum((want <= low + near) | (want >= high - near))
    assert at_bounds > 0, "the recorded observations never drive the post-processing to a bound"


def test_exported_files_round_trip(exported, policies, tmp_path):
    path = exported["walk", "torchscript"]
    info = json.loads(Path(f"{path}.json").read_text())
    bundle = read_bundle_info(BUNDLES["walk"])
    policy = policies["walk"]
    assert info["format"] == "torchscript" and info["model_file"] == path.name
    assert [(g["name"], g["dim"], g["start"]) for g in info["groups"]] == [("policy", 9, 0), ("privileged", 11, 9)]
    assert (info["obs_dim"], info["act_dim"]) == (20, 6)
    assert info["stateful"] is False and info["state"] == []
    assert info["inputs"] == [{"name": "obs", "role": "observation", "shape": ["n", 20], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "action", "role": "action", "shape": ["n", 6], "dtype": "float32"}]
    assert info["action_space"] == bundle["config"]["action_space"]
    assert info["source"] == {"bundle": str(BUNDLES["walk"]), "policy_class": "MLPPolicy",
                              "weights_sha256": bundle["weights"]["sha256"],
                              "control_period": bundle["control_period"]}
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["onnxruntime"]
    x = torch.randn(5, 20)
    with torch.inference_mode():
        assert torch.allclose(torch.jit.load(str(path))(x), policy(x), rtol=0, atol=1e-5)

    onnx_info = json.loads(Path(f"{exported['sac', 'onnx']}.json").read_text())
    assert onnx_info["format"] == "onnx" and onnx_info["exporter"]["opset"] == 17
    assert onnx_info["source"]["bundle"] is None and onnx_info["policy_config"]["post"] == "tanh_unscale"

    for _ in range(2):
        again = export_policy(BUNDLES["walk"], "onnx", tmp_path / "walk.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.onnx", "walk.onnx.json"]
    zeros = {"policy": np.zeros((2, 9)), "privileged": np.zeros((2, 11))}
    assert OnnxPolicy(f"{again}.json").act(zeros).shape == (2, 6)


def test_onnx_policy_runs_without_torch(exported):
    path = exported["north", "onnx"]
    obs = {"policy": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
           "privileged": np.full((3, 2), 0.5, dtype=np.float32)}
    want = OnnxPolicy(path).act(obs)
    for form in ("from policydistill.runtime.onnx_policy import OnnxPolicy",
                 "from policydistill.runtime import OnnxPolicy"):
        data = json.dumps({k: v.tolist() for k, v in obs.items()})
        code = (f"import json, sys; import numpy as np; {form}; "
                f"p = OnnxPolicy({str(path)!r}); "
                f"a = p.act({{k: np.array(v, np.float32) for k, v in {data}.items()}}); "
                "p.reset(); "
                "loaded = [m for m in ('torch', 'gymnasium', 'policydistill.runtime.export') if m in sys.modules]; "
                "assert not loaded, loaded; assert a.dtype == np.float32; print(json.dumps(a.tolist()))")
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        np.testing.assert_array_equal(np.array(json.loads(run.stdout), dtype=np.float32), want)


def test_onnx_policy_is_a_stateless_policy_with_the_bundle_spaces(exported, policies, recorded):
    p, policy = OnnxPolicy(exported["walk", "onnx"]), policies["walk"]
    assert isinstance(p, Policy) and p.groups == ("policy", "privileged")
    assert p.observation_space == policy.observation_space and p.action_space == policy.action_space
    env = load_suite("locomotion").make_env(0)
    check_spaces(p.observation_space, p.action_space, env.observation_space, env.action_space, "onnx policy")
    env.close()
    obs = {g: v[:8] for g, v in recorded["locomotion"].items()}
    before = p.act(obs)
    p.reset(np.array([True, False] * 4))
    p.reset()
    np.testing.assert_array_equal(p.act(obs), before)
    np.testing.assert_array_equal(p.act(obs, deterministic=False), before)


def test_onnx_policy_refuses_bad_input_and_bad_files(exported, tmp_path):
    p = OnnxPolicy(exported["north", "onnx"])
    with pytest.raises(KeyError, match="lacks groups \\['privileged'\\]"):
        p.act({"policy": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="'privileged' has shape \\(2, 3\\), expected \\(2, 2\\)"):
        p.act({"policy": np.zeros((2, 4)), "privileged": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="'privileged' has shape \\(3, 2\\), expected \\(2, 2\\)"):
        p.act({"policy": np.zeros((2, 4)), "privileged": np.zeros((3, 2))})

    src = exported["north", "onnx"]
    model, desc = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    shutil.copy(src, model)
    info = json.loads(Path(f"{src}.json").read_text())
    desc.write_text(json.dumps({**info, "model_file": "m.onnx", "stateful": True}))
    with pytest.raises(ExportedModelError, match="stateful"):
        OnnxPolicy(model)
    desc.write_text(json.dumps({**info, "model_file": "m.onnx", "model_sha256": "0" * 64}))
    with pytest.raises(ExportedModelError, match="sha256 does not match"):
        OnnxPolicy(desc)
    desc.unlink()
    with pytest.raises(ExportedModelError, match="missing"):
        OnnxPolicy(model)
    with pytest.raises(ExportedModelError, match="format 'torchscript' is not 'onnx'"):
        OnnxPolicy(exported["north", "torchscript"])


def test_export_refuses_unknown_formats_and_unsupported_policies(policies, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format 'tflite'; expected one of \['torchscript', 'onnx'\]"):
        export_policy(BUNDLES["north"], "tflite", tmp_path / "a")
    scripted = CallablePolicy(lambda x: x[:, :2], groups=("policy",), batched=True)
    with pytest.raises(ExportError, match=r"cannot export a CallablePolicy: supported .* are \[.*'MLPPolicy'.*\]"):
        export_policy(scripted, "onnx", tmp_path / "b.onnx")
    bundle = tmp_path / "gru"
    shutil.copytree(BUNDLES["north"], bundle)
    doc = json.loads((bundle / "policy.json").read_text())
    (bundle / "policy.json").write_text(json.dumps({**doc, "policy_class": "GRUPolicy"}))
    with pytest.raises(ExportError, match="policy class 'GRUPolicy' is not supported; supported policy classes are"):
        export_policy(bundle, "torchscript", tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru"]


def test_export_leaves_the_source_policy_as_it_was(recorded, tmp_path):
    policy = _random_policy(recorded["default"], ("policy", "task"), "unscale", "tanh", 3).train()
    export_policy(policy, "onnx", tmp_path / "td3.onnx")
    assert policy.training and all(p.requires_grad for p in policy.parameters())


def _task_rows(suite_name: str, steps: int = 40) -> list[dict[str, np.ndarray]]:
    """Per task of a suite, ``steps`` observations of random actions, in the task's own spaces."""
    suite = load_suite(suite_name)
    out = []
    for i in range(len(suite.tasks)):
        env = suite.make_env(i)
        env.action_space.seed(i)
        obs, _ = env.reset(seed=200 + i)
        seen = []
        for _ in range(steps):
            seen.append(obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
        env.close()
        out.append(stack_obs(seen))
    return out


@pytest.mark.parametrize("heads", ["shared", "per_task"])
def test_padded_export_parity(heads, tmp_path):
    """A student padded over tasks with different spaces exports with the task id as an input: per task, the
    ONNX and TorchScript graphs, fed the one-hot and the task's own observation, act as the torch policy."""
    from policydistill.models.generalist import GeneralistPolicy
    from policydistill.models.students import StudentConfig, build_student
    from policydistill.runtime.torch_policy import GraphPolicy

    torch.manual_seed(0)
    suite = load_suite("pendulum_reacher")  # InvertedDoublePendulum-v5 (9 -> 1) and Reacher-v5 (10 -> 2)
    student = build_student(suite, StudentConfig(heads=heads, hidden=[32, 32]), "cpu").eval()
    assert isinstance(student, GeneralistPolicy) and not student.layout.uniform
    rows = _task_rows("pendulum_reacher")
    widths = [len(r["policy"][0]) for r in rows]
    student.fit_normalizer(np.concatenate([np.concatenate([np.pad(r["policy"], ((0, 0), (0, 10 - w))), r["task"]], 1)
                                           for r, w in zip(rows, widths, strict=True)]))
    with torch.no_grad():
        student.head.weight.mul_(10.0)  # some actions reach their bounds
    paths = {fmt: export_policy(student, fmt, tmp_path / f"padded.{EXT[fmt]}") for fmt in EXT}
    info = json.loads(Path(f"{paths['onnx']}.json").read_text())
    assert [(g["name"], g["dim"]) for g in info["groups"]] == [("task", 2), ("observation", 10)]
    assert info["obs_dim"] == 12 and info["act_dim"] == 2
    assert [(t["columns"]["policy"], t["act_dim"]) for t in info["tasks"]] == [([2, 9], 1), ([2, 10], 2)]
    runners = {"onnx": OnnxPolicy(paths["onnx"]), "torchscript": GraphPolicy.from_torchscript(paths["torchscript"])}
    at_bounds = 0
    for t, obs in enumerate(rows):
        want = student.act(obs)
        d = info["tasks"][t]["act_dim"]
        assert want.shape == (len(obs["policy"]), d)
        start, dim = info["tasks"][t]["columns"]["policy"]
        own = np.zeros((len(want), 10), np.float32)
        own[:, start - 2:start - 2 + dim] = obs["policy"]
        for fmt, runner in runners.items():
            got = runner.act({"task": obs["task"], "observation": own})
            assert got.dtype == np.float32 and got.shape == (len(want), 2)
            np.testing.assert_allclose(got[:, :d], want, rtol=0, atol=TOL[fmt])
            assert not got[:, d:].any()  # the dims the task does not have are 0
            one = runner.act({"task": obs["task"][5:6], "observation": own[5:6]})  # batch 1
            np.testing.assert_allclose(one[:, :d], want[5:6], rtol=0, atol=TOL[fmt])
        at_bounds += int(np.sum(np.abs(want) >= 1.0 - 1e-6))
    assert at_bounds > 0, "no action of the random student reaches a bound"
    # a batch mixing the two tasks, in the exported layout, gives each row its own task's action
    mixed_task = np.concatenate([rows[0]["task"][:3], rows[1]["task"][:3]])
    mixed_obs = np.zeros((6, 10), np.float32)
    mixed_obs[:3, :9], mixed_obs[3:] = rows[0]["policy"][:3], rows[1]["policy"][:3]
    got = runners["onnx"].act({"task": mixed_task, "observation": mixed_obs})
    np.testing.assert_allclose(got[:3, :1], student.act({g: v[:3] for g, v in rows[0].items()}), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got[3:], student.act({g: v[:3] for g, v in rows[1].items()}), rtol=0, atol=1e-4)


def test_an_input_the_training_data_never_varied_is_read_as_its_training_value(recorded, tmp_path):
    """The locomotion recording's first privileged dims (body mass and friction scales, one draw an episode) do not
    vary within its episode: a student fitted on it acts the same whatever they hold later, in torch and exported,
    where their own near-zero variance would scale any change to the normaliser's clip."""
    obs = {g: v[:400] for g, v in recorded["locomotion"].items()}  # the first task's episode
    groups = ("policy", "privileged", "task")
    x = concat_groups(obs, groups)
    constant = np.flatnonzero(x.std(0) == 0)
    assert len(constant) >= 3 and (x.std(0) > 0).sum() >= 10
    torch.manual_seed(0)
    space = spaces.Dict({g: spaces.Box(-np.inf, np.inf, (obs[g].shape[1],), dtype=np.float32) for g in groups})
    student = MLPPolicy(groups, space, spaces.Box(-1.0, 1.0, (6,)), hidden=(32, 32),
                        normalizer={"enabled": True}).eval()
    student.fit_normalizer(x)
    starts = np.cumsum([0] + [obs[g].shape[1] for g in groups])
    shifted = {g: v.copy() for g, v in obs.items()}
    for c in constant:  # another mass and friction (and task id), as another episode would have
        i = int(np.searchsorted(starts, c, side="right")) - 1
        shifted[groups[i]][:, c - starts[i]] += 0.3
    np.testing.assert_array_equal(student.act(shifted), student.act(obs))
    assert np.abs(student.act(obs) - student.act({**obs, "policy": obs["policy"] + 0.3})).max() > 1e-3
    runner = OnnxPolicy(export_policy(student, "onnx", tmp_path / "student.onnx"))
    np.testing.assert_allclose(runner.act(shifted), student.act(obs), rtol=0, atol=TOL["onnx"])
