"""stable-baselines3 experts (PPO, SAC, TD3 with MlpPolicy and Box actions) as :class:`MLPPolicy`.

The converted policy acts exactly as ``model.predict(vecnormalize.normalize_obs(obs),
deterministic=True)``: VecNormalize's observation statistics become the policy's normaliser and
SB3's action clipping (PPO) or tanh/unscaling (SAC, TD3) its post-processing.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.bundle import save_bundle
from policydistill.files import file_sha256
from policydistill.models.mlp import ACTIVATIONS, MLPPolicy
from policydistill.types import check_groups

log = logging.getLogger(__name__)

SB3_ALGOS = ("ppo", "sac", "td3")


def sb3_classes() -> dict[str, type]:
    """The stable-baselines3 class of each of :data:`SB3_ALGOS` (the one table: experts train with it too)."""
    from stable_baselines3 import PPO, SAC, TD3

    return {"ppo": PPO, "sac": SAC, "td3": TD3}


@dataclass
class ImportSB3Config:
    """``policydistill import-sb3``: the SB3 ``model`` zip (+ its ``vecnormalize`` pickle; both unpickled: trusted
    files only), trained on ``groups`` of ``task`` (default: the first) of ``suite``, as a bundle at ``out``;
    ``algo`` when the zip does not tell."""

    model: str = "???"
    out: str = "???"
    suite: str = "default"
    task: str | None = None
    vecnormalize: str | None = None
    algo: str | None = None
    groups: list[str] = field(default_factory=lambda: ["policy"])


def _parse_mlp(modules: list[nn.Module], where: str, ends_linear: bool) -> tuple[list[nn.Linear], str | None]:
    """``Linear, act, ..., Linear, act`` [``, Linear``] -> (the Linear layers, the activation or None)."""
    if len(modules) % 2 != int(ends_linear):
        raise _unsupported(f"{where} is not a stack of Linear + activation layers")
    linears: list[nn.Linear] = []
    acts: set[str] = set()
    for i, m in enumerate(modules):
        act = next((k for k, c in ACTIVATIONS.items() if type(m) is c), None)
        if i % 2 == 0 and type(m) is nn.Linear:
            linears.append(m)
        elif i % 2 == 1 and act is not None:
            acts.add(act)
        else:
            raise _unsupported(f"{where} has a {type(m).__name__} at position {i}")
    if len(acts) > 1:
        raise _unsupported(f"{where} mixes activations {sorted(acts)}")
    return linears, next(iter(acts), None)


def _unsupported(msg: str) -> ValueError:
    return ValueError(f"unsupported SB3 model: {msg}. Supported: PPO/SAC/TD3 'MlpPolicy' with a flat Box "
                      "observation, Box actions, tanh or ReLU layers, no gSDE, no custom feature extractor")


def _check_flatten(extractor: nn.Module, where: str) -> None:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if type(extractor) is not FlattenExtractor:
        raise _unsupported(f"{where} uses feature extractor {type(extractor).__name__}")


def _algo_of(model: Any) -> str:
    for name, cls in sb3_classes().items():
        if isinstance(model, cls):
            return name
    raise _unsupported(f"algorithm {type(model).__name__}")


def policy_from_sb3(model: Any, observation_space: spaces.Dict, groups: Sequence[str],
                    vecnormalize: Any = None) -> MLPPolicy:
    """Convert a trained SB3 PPO/SAC/TD3 model to an :class:`MLPPolicy` (frozen, on the model's device).

    ``observation_space``: a Dict of the ``groups`` the model was trained on, concatenated in the
    order of ``groups`` (its flat dimension must equal the model's). ``vecnormalize``: the
    ``VecNormalize`` the model was trained in, if any (only its observation statistics are used).
    """
    groups = check_groups(groups)
    algo = _algo_of(model)
    if not isinstance(model.action_space, spaces.Box):
        raise _unsupported(f"action space {model.action_space} is not a Box")
    if not isinstance(model.observation_space, spaces.Box) or len(model.observation_space.shape) != 1:
        raise _unsupported(f"observation space {model.observation_space} is not a flat Box")
    missing = [g for g in groups if g not in observation_space.spaces]
    if missing:
        raise ValueError(f"observation_space lacks groups {missing}; it has {list(observation_space.spaces)}")
    obs_space = spaces.Dict({g: observation_space[g] for g in groups})
    obs_dim = sum(int(np.prod(obs_space[g].shape)) for g in groups)
    if obs_dim != model.observation_space.shape[0]:
        raise ValueError(f"groups {list(groups)} have {obs_dim} dims in total but the SB3 model reads "
                         f"{model.observation_space.shape[0]}")
    policy = model.policy
    if getattr(policy, "use_sde", False):
        raise _unsupported("gSDE (use_sde=True)")

    log_std: torch.Tensor | None = None
    if algo == "ppo":
        _check_flatten(policy.pi_features_extractor, "the PPO policy")
        body, act = _parse_mlp(list(policy.mlp_extractor.policy_net), "PPO mlp_extractor.policy_net", False)
        head, post, out_act = policy.action_net, "clip", "none"
        log_std = policy.log_std.detach()
    elif algo == "sac":
        _check_flatten(policy.actor.features_extractor, "the SAC actor")
        body, act = _parse_mlp(list(policy.actor.latent_pi), "SAC actor.latent_pi", False)
        head, post, out_act = policy.actor.mu, "tanh_unscale", "none"
    else:
        _check_flatten(policy.actor.features_extractor, "the TD3 actor")
        mu = list(policy.actor.mu)
        if not mu or type(mu[-1]) is not nn.Tanh:
            raise _unsupported("TD3 actor.mu does not end in Tanh")
        linears, act = _parse_mlp(mu[:-1], "TD3 actor.mu", True)
        body, head, post, out_act = linears[:-1], linears[-1], "unscale", "tanh"
    if type(head) is not nn.Linear:
        raise _unsupported(f"the {algo.upper()} action head is a {type(head).__name__}, not a Linear")

    normalizer: dict[str, Any] = {"enabled": False}
    stats: tuple[np.ndarray, np.ndarray] | None = None
    if vecnormalize is not None and vecnormalize.norm_obs:
        if isinstance(vecnormalize.obs_rms, dict):
            raise _unsupported("VecNormalize over a Dict observation")
        normalizer = {"enabled": True, "clip": float(vecnormalize.clip_obs),
                      "eps": float(vecnormalize.epsilon)}
        stats = (np.asarray(vecnormalize.obs_rms.mean), np.asarray(vecnormalize.obs_rms.var))

    out = MLPPolicy(groups, obs_space, model.action_space, hidden=[lin.out_features for lin in body],
                    activation=act or "tanh", post=post, out_activation=out_act, normalizer=normalizer,
                    log_std=log_std is not None)
    with torch.no_grad():
        for dst, src in zip([m for m in out.body if isinstance(m, nn.Linear)], body, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        out.head.weight.copy_(head.weight)
        out.head.bias.copy_(head.bias)
        if log_std is not None:
            out.log_std.copy_(log_std)
        if stats is not None:
            out.normalizer.set_stats(*stats)
    return out.to(head.weight.device).frozen()


def sb3_algo_of_zip(zip_path: str | Path) -> str:
    """Which of PPO/SAC/TD3 saved a zip, read from its JSON ``data`` entry (no unpickling)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            data = json.loads(z.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        why = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{zip_path} is not a stable-baselines3 model zip (a .zip with a JSON 'data' entry, as "
                         f"model.save writes): {' '.join(str(why).split())}") from None
    policy_class = data.get("policy_class") if isinstance(data, dict) else None
    module = str(policy_class.get("__module__", "")) if isinstance(policy_class, dict) else ""
    for algo in ("sac", "td3"):
        if module.startswith(f"stable_baselines3.{algo}."):
            return algo
    if module == "stable_baselines3.common.policies" and "clip_range" in data:
        return "ppo"
    raise ValueError(f"cannot tell the algorithm of {zip_path} (policy module '{module}'): only PPO, SAC and "
                     f"TD3 are supported; pass algo= one of {list(SB3_ALGOS)} if it is one of them")




def import_sb3_zip(zip_path: str | Path, out: str | Path, observation_space: spaces.Dict,
                   groups: Sequence[str], vecnormalize_path: str | Path | None = None,
                   algo: str | None = None) -> Path:
    """Convert an SB3 ``.zip`` (+ ``VecNormalize`` ``.pkl``) to a bundle at ``out``; returns ``out``.

    Loading an SB3 zip and a VecNormalize pickle unpickles them, which can run arbitrary code:
    use this only on files you trust. The bundle written is safe to load (no pickle).
    """
    zip_path = Path(zip_path)
    algo = (algo or sb3_algo_of_zip(zip_path)).lower()
    classes = sb3_classes()
    if algo not in classes:
        raise ValueError(f"unknown SB3 algo '{algo}': expected one of {list(SB3_ALGOS)}")
    log.warning("unpickling %s: only import SB3 files you trust", zip_path)
    model = classes[algo].load(zip_path, device="cpu")
    vecnormalize = None
    source: dict[str, Any] = {"sb3_zip": str(zip_path), "sha256": file_sha256(zip_path), "algo": algo}
    if vecnormalize_path is not None:
        vecnormalize_path = Path(vecnormalize_path)
        with open(vecnormalize_path, "rb") as f:
            vecnormalize = pickle.load(f)  # trusted file, see docstring
        source.update(vecnormalize=str(vecnormalize_path),
                      vecnormalize_sha256=file_sha256(vecnormalize_path))
    policy = policy_from_sb3(model, observation_space, groups, vecnormalize=vecnormalize)
    return save_bundle(policy, out, meta={"algo": algo, "imported_from": source})
