"""Files from elsewhere run no code and allocate nothing they do not hold: SB3 zips and VecNormalize files are
read without unpickling, a missing VecNormalize is refused, and a bundle's whole policy.json is hashed and its
sizes are checked against the weights' header before anything is built."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.wrappers import RescaleAction
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from policydistill.bundle import BundleError, load_bundle, save_bundle
from policydistill.cli import main
from policydistill.files import read_json
from policydistill.models.mlp import MLPPolicy
from policydistill.teachers import import_sb3_zip

LOW, HIGH = -1.0, 3.0  # asymmetric bounds so that unscaling errors show
ROOT = Path(__file__).resolve().parents[1]


def make_env() -> gym.Env:
    one = np.ones(1, dtype=np.float32)
    return RescaleAction(gym.make("Pendulum-v1"), LOW * one, HIGH * one)


OBS = spaces.Dict({"policy": make_env().observation_space})
ACT = make_env().action_space
ALGOS = {"ppo": (PPO, {"n_steps": 128, "batch_size": 64, "n_epochs": 2}, True),
         "sac": (SAC, {"learning_starts": 64, "buffer_size": 1000}, True),
         "td3": (TD3, {"learning_starts": 64, "buffer_size": 1000}, False)}


class CreatesFile:
    """Unpickling this creates ``path``, as a hostile file could."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple]:
    """Real PPO/SAC/TD3 trained for 256 steps and saved: (model, VecNormalize or None, zip, pkl or None)."""
    folder = tmp_path_factory.mktemp("sb3")
    out = {}
    for name, (cls, kwargs, normalised) in ALGOS.items():
        venv = DummyVecEnv([make_env])
        if normalised:
            venv = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=5.0)
        model = cls("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]}, **kwargs)
        model.learn(256)
        model.save(folder / f"{name}.zip")
        pkl = None
        if normalised:
            pkl = folder / f"{name}-stats.pkl"
            venv.save(str(pkl))
        out[name] = (model, venv if normalised else None, folder / f"{name}.zip", pkl)
    return out


def obs_rows(n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-1, 1, (n, 3)) * [1, 1, 8], rng.normal(0, 30, (8, 3))]).astype(np.float32)


def sb3_actions(model, vecnormalize, obs: np.ndarray) -> np.ndarray:
    x = vecnormalize.normalize_obs(obs) if vecnormalize is not None else obs
    return model.predict(x, deterministic=True)[0]


def rewrite_zip(src: Path, dst: Path, **entries: bytes) -> Path:
    """A copy of zip ``src`` with some entries replaced."""
    with zipfile.ZipFile(src) as z:
        content = {name: z.read(name) for name in z.namelist()}
    content.update(entries)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in content.items():
            z.writestr(name, data)
    return dst


def hostile(path: Path) -> bytes:
    return pickle.dumps(CreatesFile(path))


# ---- SB3 zips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", list(ALGOS))
def test_pickled_fields_of_the_zip_are_never_unpickled(trained, algo, tmp_path):
    """Every ':serialized:' field of the zip's data made hostile: nothing runs, and the bundle still acts
    like the SB3 model (and like the same zip read with trust_pickle)."""
    model, vn, genuine, pkl = trained[algo]
    marker = tmp_path / "ran"
    payload = base64.b64encode(hostile(marker)).decode()
    with zipfile.ZipFile(genuine) as z:
        data = json.loads(z.read("data"))
    for value in data.values():
        if isinstance(value, dict) and ":serialized:" in value:
            value[":serialized:"] = payload
    crafted = rewrite_zip(genuine, tmp_path / "model.zip", data=json.dumps(data).encode())
    out = import_sb3_zip(crafted, tmp_path / "bundle", OBS, ["policy"], vecnormalize_path=pkl)
    assert not marker.exists()
    obs = {"policy": obs_rows()}
    ours = load_bundle(out, device="cpu").act(obs)
    np.testing.assert_allclose(ours, sb3_actions(model, vn, obs["policy"]), atol=1e-5, rtol=0)
    trusted = import_sb3_zip(genuine, tmp_path / "trusted", OBS, ["policy"], vecnormalize_path=pkl,
                             action_space=ACT, trust_pickle=True)
    np.testing.assert_array_equal(load_bundle(trusted, device="cpu").act(obs), ours)


def test_hostile_policy_pth_runs_nothing_and_is_one_line(tmp_path, caplog):
    PPO("MlpPolicy", "Pendulum-v1", device="cpu").save(tmp_path / "genuine.zip")
    marker = tmp_path / "ran"
    buf = tmp_path / "policy.pth"
    torch.save({"action_net.weight": CreatesFile(marker)}, buf)
    crafted = rewrite_zip(tmp_path / "genuine.zip", tmp_path / "model.zip", **{"policy.pth": buf.read_bytes()})
    caplog.set_level(logging.ERROR)
    assert main(["import-sb3", f"model={crafted}", f"out={tmp_path / 'b'}", "suite=Pendulum-v1"]) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert f"{crafted}: policy.pth is not a plain tensor state dict" in lines[0] and "trust_pickle=true" in lines[0]
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_hostile_vecnormalize_file_runs_nothing(trained, tmp_path):
    _, _, genuine, _ = trained["ppo"]
    marker, pkl = tmp_path / "ran", tmp_path / "stats.pkl"
    pkl.write_bytes(hostile(marker))
    with pytest.raises(ValueError, match=rf"{pkl}: not read as VecNormalize statistics \(it refers to io.open\)"):
        import_sb3_zip(genuine, tmp_path / "b", OBS, ["policy"], vecnormalize_path=pkl)
    assert not marker.exists()
    pkl.write_bytes(pickle.dumps({"obs_rms": None}))
    with pytest.raises(ValueError, match=rf"{pkl}: not a VecNormalize statistics file"):
        import_sb3_zip(genuine, tmp_path / "b", OBS, ["policy"], vecnormalize_path=pkl)


def test_a_model_trained_in_vecnormalize_needs_its_statistics(trained, tmp_path):
    model, vn, genuine, pkl = trained["ppo"]  # the zip's data says so
    with pytest.raises(ValueError, match=rf"{genuine} was trained inside VecNormalize \(its data holds "
                                         r"_last_original_obs.*\): pass its statistics as vecnormalize="):
        import_sb3_zip(genuine, tmp_path / "b", OBS, ["policy"])
    _, _, sac_zip, sac_pkl = trained["sac"]  # a statistics file lies beside it
    local = rewrite_zip(sac_zip, tmp_path / "sac.zip")
    (tmp_path / "sac-vecnormalize.pkl").write_bytes(sac_pkl.read_bytes())
    with pytest.raises(ValueError, match=rf"{tmp_path / 'sac-vecnormalize.pkl'} lies beside it\): pass its"):
        import_sb3_zip(local, tmp_path / "b", OBS, ["policy"])
    assert not (tmp_path / "b").exists()
    out = import_sb3_zip(genuine, tmp_path / "b", OBS, ["policy"], vecnormalize_path="none")  # said so: read as is
    obs = obs_rows()
    np.testing.assert_allclose(load_bundle(out, device="cpu").act({"policy": obs}), sb3_actions(model, None, obs),
                               atol=1e-5, rtol=0)


def test_an_expert_checkpoint_imported_without_vecnormalize_is_refused(tiny_experts, tmp_path, caplog):
    files = read_json(tiny_experts / "east" / "checkpoint.json")["files"]
    caplog.set_level(logging.ERROR)
    assert main(["import-sb3", f"model={tiny_experts / 'east' / files['model']}", f"out={tmp_path / 'b'}",
                 "suite=default", "task=east", "groups=[policy,privileged]"]) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "was trained inside VecNormalize" in lines[0] and "vecnormalize=" in lines[0], lines
    assert not (tmp_path / "b").exists()


def test_actions_bounds_other_than_the_tasks_are_refused(trained, tmp_path):
    _, _, genuine, _ = trained["td3"]
    with pytest.raises(ValueError, match=rf"{genuine} was trained with action bounds low=\[-1.0\] high=\[3.0\] but "
                                         r"the task's are low=\[-2.0\] high=\[2.0\]"):
        import_sb3_zip(genuine, tmp_path / "b", OBS, ["policy"], action_space=gym.make("Pendulum-v1").action_space)


def test_an_architecture_the_reader_does_not_know_is_one_error_naming_trust_pickle(tmp_path):
    model = PPO("MlpPolicy", make_env(), device="cpu", policy_kwargs={"activation_fn": torch.nn.ELU})
    model.save(tmp_path / "elu.zip")
    with pytest.raises(ValueError, match=r"elu.zip: unsupported SB3 model: activation_fn .*ELU.*trust_pickle=true"):
        import_sb3_zip(tmp_path / "elu.zip", tmp_path / "b", OBS, ["policy"])


# ---- bundles -------------------------------------------------------------------------------------

def small_bundle(path: Path, post: str = "clip") -> Path:
    torch.manual_seed(0)
    policy = MLPPolicy(["policy"], OBS, ACT, hidden=[16, 8], post=post,
                       out_activation="tanh" if post == "unscale" else "none")
    return save_bundle(policy, path)


def edit_config(bundle: Path, rehash: bool, **changes) -> None:
    """Change policy.json's config; ``rehash`` records the hash of the new content (sha256 of the rest of the
    document as canonical JSON), as a consistent but wrong bundle would."""
    doc = json.loads((bundle / "policy.json").read_text())
    doc["config"].update(changes)
    if rehash:
        rest = {k: v for k, v in doc.items() if k != "bundle_sha256"}
        text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        doc["bundle_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (bundle / "policy.json").write_text(json.dumps(doc, indent=2))


def test_a_changed_policy_json_is_refused_naming_it(tmp_path):
    bundle = small_bundle(tmp_path / "b")
    edit_config(bundle, rehash=False, post="tanh_unscale")
    with pytest.raises(BundleError, match=rf"{bundle / 'policy.json'}: content does not match its bundle_sha256"):
        load_bundle(bundle)


def test_the_committed_zoo_bundles_are_hashed_whole(caplog):
    caplog.set_level(logging.WARNING)
    zoo = ROOT / "envs" / "zoo"
    found = sorted(zoo.glob("*/*/policy.json")) + sorted(zoo.glob("*/*/*/policy.json"))  # the latter: ensembles
    for file in found:
        assert "bundle_sha256" in json.loads(file.read_text()), file
        load_bundle(file.parent, device="cpu")
    records = [json.loads(z.read_text()) for z in zoo.glob("*/zoo.json")]
    listed = sum(len(r["training"]) if "training" in r else sum(len(m["training"]) for m in r["members"].values())
                 for r in records)
    listed += len(list(zoo.glob("diffusion/*/zoo.json")))  # one diffusion teacher per suite that has one
    assert len(found) == listed >= 12 and "not covered by a hash" not in caplog.text


LOAD_AND_MEASURE = r"""
import re, sys
from policydistill.bundle import load_bundle
try:
    load_bundle(sys.argv[1], device="cpu")
    print("loaded")
except Exception as e:
    print(type(e).__name__, e)
print(int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) // 1024)
"""


@pytest.mark.parametrize("hidden", [[15000, 15000], [1e6, 1e6]])
def test_sizes_beyond_the_weights_are_refused_before_allocating(hidden, tmp_path):
    bundle = small_bundle(tmp_path / "b")
    edit_config(bundle, rehash=True, hidden=hidden)
    run = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(bundle)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    *message, peak_mb = run.stdout.strip().splitlines()
    assert len(message) == 1 and re.fullmatch(
        rf"BundleError {re.escape(str(bundle / 'policy.json'))}: the config asks for more than \d+ tensor elements "
        rf"\(one tensor of {int(hidden[0]) * int(hidden[1])}\) while model.safetensors holds \d+: refused before "
        r"allocating them", message[0]), message
    assert int(peak_mb) < 600  # a 15000 x 15000 float32 layer alone is 900 MB


def test_a_space_beyond_the_weights_is_refused_before_allocating(tmp_path):
    bundle = small_bundle(tmp_path / "b")
    big = {"type": "Dict", "spaces": {"policy": {"type": "Box", "shape": [5_000_000], "dtype": "float32",
                                                 "low": "-inf", "high": "inf"}}}
    edit_config(bundle, rehash=True, observation_space=big)
    with pytest.raises(BundleError, match=r"policy.json: a Box of shape \[5000000\] has more elements than the "
                                          r"weights hold"):
        load_bundle(bundle)
