"""Spaces as JSON, the MLP policy's config, and policy bundles: round trip, verification, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load_file, save_file

from policydistill.bundle import (
    POLICY_CLASSES,
    BundleError,
    find_bundles,
    is_bundle,
    load_bundle,
    read_bundle_info,
    register_policy_class,
    save_bundle,
)
from policydistill.models import resolve_device
from policydistill.models.mlp import MLPPolicy
from policydistill.models.normalizer import ObsNormalizer
from policydistill.spaces import space_from_json, space_to_json

OBS = spaces.Dict({"policy": spaces.Box(-np.inf, np.inf, (3,), dtype=np.float32),
                   "privileged": spaces.Box(np.array([-1, 0, -np.inf, 2], dtype=np.float32),
                                            np.array([1, np.inf, 5, 3], dtype=np.float32))})
ACT = spaces.Box(np.array([-1.0, 0.0], dtype=np.float32), np.array([3.0, 0.5], dtype=np.float32))


def make_policy(post: str = "clip", seed: int = 0, **kwargs) -> MLPPolicy:
    """A small policy with random weights and non-trivial normaliser statistics."""
    torch.manual_seed(seed)
    out_act = "tanh" if post == "unscale" else "none"
    policy = MLPPolicy(["privileged", "policy"], OBS, ACT, hidden=[16, 8], post=post, out_activation=out_act,
                       normalizer={"enabled": True, "clip": 4.0, "eps": 1e-6}, **kwargs)
    policy.normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 3, 7))
    if policy.log_std is not None:
        with torch.no_grad():
            policy.log_std.copy_(torch.tensor([-0.5, 0.3]))
    return policy


def obs_batch(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"policy": rng.normal(0, 3, (n, 3)).astype(np.float32),
            "privileged": rng.normal(0, 3, (n, 4)).astype(np.float32),
            "task": np.ones((n, 1), dtype=np.float32)}


# ---- spaces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("space", [
    spaces.Box(-np.inf, np.inf, (3,), dtype=np.float32),
    spaces.Box(np.array([-1.5, 0.1, -np.inf], dtype=np.float32),
               np.array([np.inf, 0.2, 1e30], dtype=np.float32)),
    spaces.Box(np.float64(-0.1), np.float64(1 / 3), (2, 2), dtype=np.float64),
    spaces.Box(0, 255, (4,), dtype=np.uint8),
    OBS,
])
def test_spaces_json_round_trip_is_exact(space):
    text = json.dumps(space_to_json(space), allow_nan=False)
    back = space_from_json(json.loads(text))
    assert back == space
    pairs = [(space[k], back[k]) for k in space.spaces] if isinstance(space, spaces.Dict) else [(space, back)]
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.low, b.low)
        np.testing.assert_array_equal(a.high, b.high)


def test_unsupported_space_is_refused():
    with pytest.raises(ValueError, match="only Box and Dict"):
        space_to_json(spaces.Discrete(3))
    with pytest.raises(ValueError, match="unknown space"):
        space_from_json({"type": "Tuple"})


# ---- models ------------------------------------------------------------------------------------

def test_normalizer_matches_vecnormalize_formula_and_is_identity_when_disabled():
    norm = ObsNormalizer(3, enabled=True, clip=2.0, eps=1e-8)
    mean, var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1e-3])
    norm.set_stats(mean, var)
    x = np.random.default_rng(0).normal(0, 3, (10, 3)).astype(np.float32)
    expected = np.clip((x - mean) / np.sqrt(var + 1e-8), -2.0, 2.0)
    np.testing.assert_allclose(norm(torch.as_tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    off = ObsNormalizer(3)
    assert torch.equal(off(torch.as_tensor(x)), torch.as_tensor(x))


@pytest.mark.parametrize("post", ["clip", "tanh_unscale", "unscale"])
def test_mlp_policy_acts_in_the_action_space_from_its_groups(post):
    policy = make_policy(post)
    obs = obs_batch()
    a = policy.act(obs)
    assert a.dtype == np.float32 and a.shape == (16, 2)
    assert np.all(a >= ACT.low) and np.all(a <= ACT.high)
    x = np.concatenate([obs["privileged"], obs["policy"]], axis=1)
    np.testing.assert_array_equal(a, policy(torch.as_tensor(x)).detach().numpy())
    policy.reset(None)
    policy.reset(np.array([True] * 16))
    np.testing.assert_array_equal(policy.act(obs), a)  # stateless: reset changes nothing


def test_mlp_policy_post_processing_formulas():
    policy = make_policy("tanh_unscale")
    y = torch.tensor([[-50.0, 0.0], [0.0, 50.0]])
    np.testing.assert_allclose(policy.postprocess(y).numpy(), [[-1.0, 0.25], [1.0, 0.5]], atol=1e-6)
    policy.post = "clip"
    np.testing.assert_allclose(policy.postprocess(torch.tensor([[-5.0, 0.2]])).numpy(), [[-1.0, 0.2]])
    policy.post = "unscale"
    np.testing.assert_allclose(policy.postprocess(torch.tensor([[0.0, -1.0]])).numpy(), [[1.0, 0.0]])


def test_mlp_policy_rejects_bad_config_and_obs():
    cfg = make_policy().config()
    with pytest.raises(ValueError, match="unknown keys \\['hiden'\\]"):
        MLPPolicy.from_config({**cfg, "hiden": [4]})
    with pytest.raises(ValueError, match="post 'squash'"):
        MLPPolicy.from_config({**cfg, "post": "squash"})
    with pytest.raises(ValueError, match="group 'policy' has shape"):
        make_policy().act({**obs_batch(), "policy": np.zeros((16, 4), dtype=np.float32)})
    with pytest.raises(KeyError, match="privileged"):
        make_policy().act({"policy": np.zeros((2, 3), dtype=np.float32)})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ---- bundle round trip -------------------------------------------------------------------------

@pytest.mark.parametrize("post", ["clip", "tanh_unscale", "unscale"])
def test_bundle_round_trip_is_identical(post, tmp_path):
    policy = make_policy(post, log_std=post == "clip")
    meta = {"control_period": 0.02, "training": {"algo": "bc", "lr": 3e-4}, "task": "north"}
    path = save_bundle(policy, tmp_path / "b", meta=meta)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "policy.json"]
    loaded = load_bundle(path, device="cpu")
    assert type(loaded) is MLPPolicy and loaded.groups == ("privileged", "policy")
    assert loaded.config() == policy.config()
    for k, v in policy.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    obs = obs_batch()
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))
    lab, lab0 = loaded.label(obs), policy.label(obs)
    np.testing.assert_array_equal(lab.mean, lab0.mean)
    assert (lab.std is None) == (post != "clip")

    info = read_bundle_info(path)
    assert info["schema_version"] == 2 and info["policy_class"] == "MLPPolicy"
    assert info["control_period"] == 0.02 and info["meta"] == {"training": {"algo": "bc", "lr": 3e-4},
                                                               "task": "north"}
    assert info["groups"] == ["privileged", "policy"]
    assert info["config"]["observation_space"]["spaces"]["policy"]["low"] == "-inf"
    libs = {"python", "torch", "numpy", "gymnasium", "stable_baselines3", "policydistill"}
    assert libs <= set(info["versions"])
    assert len(info["weights"]["sha256"]) == 64


def test_bundle_is_not_pickled_and_overwrite_replaces(tmp_path):
    path = tmp_path / "b"
    save_bundle(make_policy(seed=0), path)
    save_bundle(make_policy(seed=1), path)
    assert torch.equal(load_bundle(path).head.weight, make_policy(seed=1).head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or aside dir left
    assert b"pickle" not in (path / "model.safetensors").read_bytes()[:200]


def test_saving_refuses_non_finite_weights_unregistered_classes_and_non_bundle_targets(tmp_path):
    policy = make_policy()
    with torch.no_grad():
        policy.head.bias[0] = float("nan")
    with pytest.raises(BundleError, match=r"non-finite values in tensors \['head.bias'\]"):
        save_bundle(policy, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()

    class Unlisted(MLPPolicy):
        pass

    with pytest.raises(BundleError, match="not in the allow-list"):
        save_bundle(Unlisted(["policy"], spaces.Dict({"policy": OBS["policy"]}), ACT), tmp_path / "u")
    with pytest.raises(BundleError, match="not strict JSON"):
        save_bundle(make_policy(), tmp_path / "m", meta={"loss": float("inf")})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a policy bundle"):
        save_bundle(make_policy(), tmp_path / "data")
    assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"


def test_registered_policy_class_round_trips(tmp_path):
    @register_policy_class
    class WidePolicy(MLPPolicy):
        pass

    try:
        policy = WidePolicy(["policy"], spaces.Dict({"policy": OBS["policy"]}), ACT, hidden=[4])
        loaded = load_bundle(save_bundle(policy, tmp_path / "w"))
        assert type(loaded) is WidePolicy
        assert read_bundle_info(tmp_path / "w")["policy_class"] == "WidePolicy"
    finally:
        POLICY_CLASSES.pop("WidePolicy")


# ---- bundle verification -----------------------------------------------------------------------

def _edit_json(path: Path, fn, rehash: bool = True) -> None:
    """Edit policy.json; ``rehash`` records the new content's hash, as a consistent but wrong bundle would."""
    doc = json.loads((path / "policy.json").read_text())
    fn(doc)
    if rehash:
        rest = {k: v for k, v in doc.items() if k != "bundle_sha256"}
        text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        doc["bundle_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (path / "policy.json").write_text(json.dumps(doc))


def _rewrite_weights(path: Path, fn) -> None:
    """Change the tensors and record the new sha256, as a consistent but wrong bundle would."""
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))
    sha = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    _edit_json(path, lambda d: d["weights"].update(sha256=sha))


@pytest.fixture
def bundle(tmp_path) -> Path:
    return save_bundle(make_policy(log_std=True), tmp_path / "bundle")


def test_truncated_weights_are_detected(bundle):
    data = (bundle / "model.safetensors").read_bytes()
    (bundle / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"model.safetensors: sha256 .* does not match .*truncated"):
        load_bundle(bundle)


def test_edited_weights_are_detected(bundle):
    data = bytearray((bundle / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bundle / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle)


def test_edited_policy_json_is_detected(bundle):
    _edit_json(bundle, lambda d: d["config"].update(hidden=[16, 9]))
    with pytest.raises(BundleError, match=r"model.safetensors: tensor shapes do not match"):
        load_bundle(bundle)
    _edit_json(bundle, lambda d: d["config"].update(hidden=[16, 8], activation="gelu"))
    with pytest.raises(BundleError, match=r"policy.json: config does not build .*activation 'gelu'"):
        load_bundle(bundle)
    (bundle / "policy.json").write_text('{"schema_version": 1, "policy_class": ')
    with pytest.raises(BundleError, match="policy.json: not valid JSON"):
        load_bundle(bundle)


def test_unknown_class_and_schema_are_refused(bundle):
    _edit_json(bundle, lambda d: d.update(policy_class="os.system"))
    with pytest.raises(BundleError, match=r"unknown policy class 'os.system'; allowed: \[.*'MLPPolicy'"):
        load_bundle(bundle)
    _edit_json(bundle, lambda d: d.update(policy_class="MLPPolicy", schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99 is newer"):
        load_bundle(bundle)
    _edit_json(bundle, lambda d: d.pop("schema_version"))
    with pytest.raises(BundleError, match="missing or invalid schema_version"):
        load_bundle(bundle)


def test_missing_files_are_named(bundle, tmp_path):
    (bundle / "model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"model.safetensors: missing"):
        load_bundle(bundle)
    (bundle / "policy.json").unlink()
    with pytest.raises(BundleError, match=r"policy.json: missing"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="no bundle at"):
        load_bundle(tmp_path / "nowhere")


def test_missing_extra_and_non_finite_tensors_are_refused(bundle):
    _rewrite_weights(bundle, lambda t: t.update(extra=torch.zeros(2)))
    with pytest.raises(BundleError, match=r"missing \[\], unexpected \['extra'\]"):
        load_bundle(bundle)
    _rewrite_weights(bundle, lambda t: (t.pop("extra"), t.pop("log_std")))
    with pytest.raises(BundleError, match=r"missing \['log_std'\]"):
        load_bundle(bundle)
    _rewrite_weights(bundle, lambda t: t.update(log_std=torch.tensor([0.0, float("inf")])))
    with pytest.raises(BundleError, match=r"non-finite values in tensors \['log_std'\]"):
        load_bundle(bundle)


# ---- atomic writes -----------------------------------------------------------------------------

def test_kill_between_renames_keeps_the_old_bundle(tmp_path):
    path = save_bundle(make_policy(seed=0), tmp_path / "b")
    aside = tmp_path / ".b.old"
    os.rename(path, aside)  # killed after moving the old bundle aside, before moving the new one in
    (tmp_path / ".b.tmp-dead").mkdir()  # and a half-written new bundle
    (tmp_path / ".b.tmp-dead" / "policy.json").write_text("{")
    assert is_bundle(path) and find_bundles(tmp_path) == {"b": path}
    loaded = load_bundle(path)
    assert torch.equal(loaded.head.weight, make_policy(seed=0).head.weight)
    assert not aside.exists()
    save_bundle(make_policy(seed=1), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_kill_during_cleanup_keeps_the_new_bundle(tmp_path):
    path = save_bundle(make_policy(seed=1), tmp_path / "b")
    (tmp_path / ".b.old").mkdir()  # a partly removed old bundle
    (tmp_path / ".b.old" / "model.safetensors").write_bytes(b"partial")
    assert torch.equal(load_bundle(path).head.weight, make_policy(seed=1).head.weight)
    save_bundle(make_policy(seed=2), path)
    assert torch.equal(load_bundle(path).head.weight, make_policy(seed=2).head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


WRITER = """
import sys, torch
from gymnasium import spaces
from policydistill.bundle import save_bundle
from policydistill.models.mlp import MLPPolicy
obs = spaces.Dict({"policy": spaces.Box(-1, 1, (64,))})
policy = MLPPolicy(["policy"], obs, spaces.Box(-1, 1, (2,)), hidden=[256, 256])
print("ready", flush=True)
k = 1
while True:
    with torch.no_grad():
        policy.head.bias.fill_(float(k))
    save_bundle(policy, sys.argv[1], meta={"version": k})
    k += 1
"""


def test_real_kill_leaves_a_complete_bundle(tmp_path):
    path = tmp_path / "b"
    rng = np.random.default_rng(0)
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.1, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        policy = load_bundle(path)
        version = read_bundle_info(path)["meta"]["version"]
        assert torch.all(policy.head.bias == float(version))


def test_find_bundles_supports_both_layouts(tmp_path):
    save_bundle(make_policy(), tmp_path / "north")
    save_bundle(make_policy(), tmp_path / "south" / "bundle")
    (tmp_path / "south" / "checkpoint.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / ".hidden").mkdir()
    assert find_bundles(tmp_path) == {"north": tmp_path / "north", "south": tmp_path / "south" / "bundle"}
    assert is_bundle(tmp_path / "north") and not is_bundle(tmp_path / "south")
    with pytest.raises(FileNotFoundError):
        find_bundles(tmp_path / "nope")
