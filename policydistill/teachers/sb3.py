"""stable-baselines3 experts (PPO, SAC, TD3 with MlpPolicy and Box actions) as :class:`MLPPolicy`.

The converted policy acts exactly as ``model.predict(vecnormalize.normalize_obs(obs),
deterministic=True)``: VecNormalize's observation statistics become the policy's normaliser and
SB3's action clipping (PPO) or tanh/unscaling (SAC, TD3) its post-processing. Its label std is the
Gaussian's: PPO's ``log_std`` and SAC's state-dependent ``actor.log_std`` layer (carried through the tanh to
the action space); TD3 is deterministic.

:func:`import_sb3_zip` reads a saved ``.zip`` without unpickling anything: the plain JSON fields of its
``data`` entry (policy class, ``policy_kwargs``, ``use_sde``, the spaces' shapes and bounds; the pickled
``:serialized:`` fields are never decoded) and ``policy.pth`` through ``torch.load(weights_only=True)``;
the actor is rebuilt from the state dict's shapes. A VecNormalize ``.pkl`` is read by
:func:`read_vecnormalize`, an unpickler that builds numpy arrays and attribute records only.
``trust_pickle=True`` loads both with SB3 and ``pickle`` instead (files you trust only).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
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
    """``policydistill import-sb3``: the SB3 ``model`` zip, trained on ``groups`` of ``task`` (default: the
    first) of ``suite``, as a bundle at ``out``; ``vecnormalize``: the VecNormalize ``.pkl`` it was trained
    with (``none``: it was not, whatever lies beside it); ``algo`` when the zip does not tell.
    ``trust_pickle``: load both files by unpickling them (trusted files only) instead of reading them."""

    model: str = "???"
    out: str = "???"
    suite: str = "default"
    task: str | None = None
    vecnormalize: str | None = None
    algo: str | None = None
    groups: list[str] = field(default_factory=lambda: ["policy"])
    trust_pickle: bool = False


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


def _unsupported(msg: str, zip_path: Path | None = None) -> ValueError:
    where = f"{zip_path}: " if zip_path is not None else ""
    hint = (" (trust_pickle=true reads the zip through SB3 instead: it unpickles, for files you trust)"
            if zip_path is not None else "")
    return ValueError(f"{where}unsupported SB3 model: {msg}. Supported: PPO/SAC/TD3 'MlpPolicy' with a flat Box "
                      f"observation, Box actions, tanh or ReLU layers, no gSDE, no custom feature extractor{hint}")


def _check_flatten(extractor: nn.Module, where: str) -> None:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if type(extractor) is not FlattenExtractor:
        raise _unsupported(f"{where} uses feature extractor {type(extractor).__name__}")


def _algo_of(model: Any) -> str:
    for name, cls in sb3_classes().items():
        if isinstance(model, cls):
            return name
    raise _unsupported(f"algorithm {type(model).__name__}")


_POST = {"ppo": ("clip", "none"), "sac": ("tanh_unscale", "none"), "td3": ("unscale", "tanh")}
"""(post, out_activation) of :class:`MLPPolicy` that reproduce each algorithm's ``predict``."""

Layer = tuple[torch.Tensor, torch.Tensor]


def _mlp_policy(algo: str, layers: list[Layer], activation: str | None, log_std: torch.Tensor | None,
                observation_space: spaces.Dict, groups: tuple[str, ...], action_space: spaces.Box,
                vecnormalize: Any, std_head: Layer | None = None, critic: list[list[Layer]] | None = None
                ) -> MLPPolicy:
    """The :class:`MLPPolicy` of an SB3 actor whose Linear layers are ``layers`` (weight, bias; the last one
    the action head) with ``activation`` between them; ``log_std`` PPO's std parameter, ``std_head`` SAC's
    state-dependent log std layer (reading the last hidden layer); ``critic`` the Linear layers of each Q
    network (SAC, TD3)."""
    missing = [g for g in groups if g not in observation_space.spaces]
    if missing:
        raise ValueError(f"observation_space lacks groups {missing}; it has {list(observation_space.spaces)}")
    obs_space = spaces.Dict({g: observation_space[g] for g in groups})
    obs_dim = sum(int(np.prod(obs_space[g].shape)) for g in groups)
    if obs_dim != layers[0][0].shape[1]:
        raise ValueError(f"groups {list(groups)} have {obs_dim} dims in total but the SB3 model reads "
                         f"{layers[0][0].shape[1]}")
    if action_space.shape != (layers[-1][0].shape[0],):
        raise ValueError(f"the SB3 model outputs {layers[-1][0].shape[0]} actions but the action space has "
                         f"shape {action_space.shape}")
    normalizer: dict[str, Any] = {"enabled": False}
    stats: tuple[np.ndarray, np.ndarray] | None = None
    if vecnormalize is not None and vecnormalize.norm_obs:
        if isinstance(vecnormalize.obs_rms, dict):
            raise _unsupported("VecNormalize over a Dict observation")
        normalizer = {"enabled": True, "clip": float(vecnormalize.clip_obs), "eps": float(vecnormalize.epsilon)}
        stats = (np.asarray(vecnormalize.obs_rms.mean), np.asarray(vecnormalize.obs_rms.var))
        if stats[0].shape != (obs_dim,) or stats[1].shape != (obs_dim,):
            raise ValueError(f"the VecNormalize statistics have shape {stats[0].shape}, the SB3 model reads "
                             f"{obs_dim} dims")
    if std_head is not None and std_head[0].shape != layers[-1][0].shape:
        raise _unsupported(f"the SAC log std layer has shape {tuple(std_head[0].shape)}, the action head "
                           f"{tuple(layers[-1][0].shape)}")
    shapes = [[tuple(w.shape) for w, _ in net] for net in critic or []]  # (out, in) per Linear, chained
    if shapes and (any(s != shapes[0] for s in shapes) or shapes[0][0][1] != obs_dim + action_space.shape[0]
                   or shapes[0][-1][0] != 1):
        raise _unsupported(f"the {algo.upper()} Q networks do not read the {obs_dim} observation and "
                           f"{action_space.shape[0]} action dims into one value alike")
    critic_hidden = [out for out, _ in shapes[0][:-1]] if shapes else None
    post, out_act = _POST[algo]
    out = MLPPolicy(groups, obs_space, action_space, hidden=[w.shape[0] for w, _ in layers[:-1]],
                    activation=activation or "tanh", post=post, out_activation=out_act, normalizer=normalizer,
                    log_std=log_std is not None, std_head=std_head is not None, critic=critic_hidden,
                    n_critics=len(critic or [None]))
    linears = [m for m in out.body if isinstance(m, nn.Linear)] + [out.head]
    sources = layers + ([std_head] if std_head else [])
    linears += [out.std_head] if std_head else []
    for q, net in zip(out.critic or [], critic or [], strict=True):
        linears += [m for m in q if isinstance(m, nn.Linear)]
        sources += net
    with torch.no_grad():
        for dst, (w, b) in zip(linears, sources, strict=True):
            dst.weight.copy_(w)
            dst.bias.copy_(b)
        if log_std is not None:
            out.log_std.copy_(log_std)
        if stats is not None:
            out.normalizer.set_stats(*stats)
    return out.frozen()


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
    policy = model.policy
    if getattr(policy, "use_sde", False):
        raise _unsupported("gSDE (use_sde=True)")

    log_std: torch.Tensor | None = None
    std_head: Layer | None = None
    if algo == "ppo":
        _check_flatten(policy.pi_features_extractor, "the PPO policy")
        body, act = _parse_mlp(list(policy.mlp_extractor.policy_net), "PPO mlp_extractor.policy_net", False)
        head = policy.action_net
        log_std = policy.log_std.detach()
    elif algo == "sac":
        _check_flatten(policy.actor.features_extractor, "the SAC actor")
        body, act = _parse_mlp(list(policy.actor.latent_pi), "SAC actor.latent_pi", False)
        head = policy.actor.mu
        std_head = (policy.actor.log_std.weight.detach(), policy.actor.log_std.bias.detach())
    else:
        _check_flatten(policy.actor.features_extractor, "the TD3 actor")
        mu = list(policy.actor.mu)
        if not mu or type(mu[-1]) is not nn.Tanh:
            raise _unsupported("TD3 actor.mu does not end in Tanh")
        linears, act = _parse_mlp(mu[:-1], "TD3 actor.mu", True)
        body, head = linears[:-1], linears[-1]
    if type(head) is not nn.Linear:
        raise _unsupported(f"the {algo.upper()} action head is a {type(head).__name__}, not a Linear")
    layers = [(lin.weight.detach(), lin.bias.detach()) for lin in [*body, head]]
    state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    out = _mlp_policy(algo, layers, act, log_std, observation_space, groups, model.action_space, vecnormalize,
                      std_head, _critic_layers(state, algo))
    return out.to(head.weight.device)


# ---- reading a saved zip -------------------------------------------------------------------------

_ZIP_POLICY = {"ppo": ("stable_baselines3.common.policies", "ActorCriticPolicy"),
               "sac": ("stable_baselines3.sac.policies", "SACPolicy"),
               "td3": ("stable_baselines3.td3.policies", "TD3Policy")}
"""The module and class of each algorithm's ``MlpPolicy``, as ``data["policy_class"]`` records them."""
_ACTOR = {"ppo": ("mlp_extractor.policy_net.", "action_net."), "sac": ("actor.latent_pi.", "actor.mu."),
          "td3": ("actor.mu.", None)}
"""Per algorithm: the prefix of the actor's Linear+activation stack in ``policy.pth``, and of its action
head (None: the stack's last Linear)."""
_NOT_ACTOR = {"ppo": ("log_std", "mlp_extractor.value_net.", "value_net."),
              "sac": ("actor.log_std.", "critic.", "critic_target."),
              "td3": ("actor_target.", "critic.", "critic_target.")}
"""The other parameters of each ``MlpPolicy`` (critics, std); any further one is a network this reader
does not know."""
_DEFAULT_ACTIVATION = {"ppo": "tanh", "sac": "relu", "td3": "relu"}
_POLICY_KWARGS = {"net_arch", "activation_fn", "use_sde", "log_std_init", "ortho_init", "n_critics",
                  "share_features_extractor", "optimizer_class", "optimizer_kwargs", "normalize_images",
                  "features_extractor_class", "features_extractor_kwargs", "squash_output", "full_std",
                  "use_expln", "clip_mean", ":type:", ":serialized:"}
"""``policy_kwargs`` keys that do not change the deterministic actor beyond what is checked here."""
_FLATTEN = "<class 'stable_baselines3.common.torch_layers.FlattenExtractor'>"


def _zip_data(zip_path: Path) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 zip (no unpickling)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            data = json.loads(z.read("data"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:  # ValueError: JSONDecodeError, Unicode
        why = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{zip_path} is not a stable-baselines3 model zip (a .zip with a JSON 'data' entry, as "
                         f"model.save writes): {' '.join(str(why).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{zip_path}: its 'data' entry is not a JSON object")
    return data


def _algo_from_data(zip_path: Path, data: dict[str, Any]) -> str:
    policy_class = data.get("policy_class")
    module = str(policy_class.get("__module__", "")) if isinstance(policy_class, dict) else ""
    for algo in ("sac", "td3"):
        if module.startswith(f"stable_baselines3.{algo}."):
            return algo
    if module == "stable_baselines3.common.policies" and "clip_range" in data:
        return "ppo"
    raise ValueError(f"cannot tell the algorithm of {zip_path} (policy module '{module}'): only PPO, SAC and "
                     f"TD3 are supported; pass algo= one of {list(SB3_ALGOS)} if it is one of them")


def _state_dict(zip_path: Path) -> dict[str, torch.Tensor]:
    """``policy.pth`` of an SB3 zip, loaded with ``weights_only=True`` (tensors only, nothing else unpickled)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            raw = z.read("policy.pth")
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        why = "it holds pickled Python objects, not only tensors"
    except Exception as e:  # zipfile and torch raise many kinds
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    else:
        if isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in state.items()):
            return state
        why = f"it holds a {type(state).__name__}, not a dict of tensors"
    raise ValueError(f"{zip_path}: policy.pth is not a plain tensor state dict ({why}); nothing of it was run "
                     "(trust_pickle=true unpickles it through SB3, for files you trust)")


def _linear(state: dict[str, torch.Tensor], name: str, zip_path: Path | None) -> Layer:
    w, b = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if w is None or b is None or w.ndim != 2 or tuple(b.shape) != (w.shape[0],):
        raise _unsupported(f"policy.pth has no Linear layer '{name}'", zip_path)
    return w, b


def _stack_names(state: dict[str, torch.Tensor], stack: str, zip_path: Path | None) -> list[str]:
    """The Linear layers' names of a ``stack.<i>`` Linear + activation stack in a state dict (i = 0, 2, ...)."""
    index = sorted({int(k[len(stack):].split(".")[0]) for k in state
                    if k.startswith(stack) and k[len(stack):].split(".")[0].isdigit()})
    if index != list(range(0, 2 * len(index), 2)):
        raise _unsupported(f"{stack[:-1]} is not a stack of Linear + activation layers", zip_path)
    return [f"{stack}{i}" for i in index]


def _chained(state: dict[str, torch.Tensor], names: list[str], zip_path: Path | None) -> list[Layer]:
    """The Linear layers ``names`` (weight, bias), each checked to read what the one before it gives."""
    layers = [_linear(state, n, zip_path) for n in names]
    for (w0, _), (w1, _), n in zip(layers, layers[1:], names[1:], strict=False):
        if w1.shape[1] != w0.shape[0]:
            raise _unsupported(f"layer '{n}' reads {w1.shape[1]} features, the layer before it gives "
                               f"{w0.shape[0]}", zip_path)
    return layers


def _actor_layers(state: dict[str, torch.Tensor], algo: str, zip_path: Path) -> list[Layer]:
    """The actor's Linear layers (weight, bias) from ``policy.pth``, the action head last."""
    stack, head = _ACTOR[algo]
    names = _stack_names(state, stack, zip_path) + ([head[:-1]] if head else [])
    if not names:
        raise _unsupported(f"policy.pth has no {stack[:-1]} layers", zip_path)
    layers = _chained(state, names, zip_path)
    used = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    other = sorted(k for k in state if k not in used and not k.startswith(_NOT_ACTOR[algo]))
    if other:
        raise _unsupported(f"policy.pth has parameters {other[:3]} of a network this reader does not know", zip_path)
    return layers


def _critic_layers(state: dict[str, torch.Tensor], algo: str, zip_path: Path | None = None
                   ) -> list[list[Layer]] | None:
    """The Linear layers (weight, bias) of each of SAC's or TD3's Q networks (``critic.qf<i>``) in an SB3 policy's
    state dict (None for PPO, whose critic is a state value)."""
    if algo == "ppo":
        return None
    nets = sorted({int(k.split(".")[1][2:]) for k in state if k.startswith("critic.qf") and
                   k.split(".")[1][2:].isdigit()})
    return [_chained(state, _stack_names(state, f"critic.qf{i}.", zip_path), zip_path) for i in nets] or None


def _activation(data: dict[str, Any], algo: str, zip_path: Path) -> str:
    """The hidden layers' activation, from the plain fields of ``policy_kwargs``."""
    kwargs = data.get("policy_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _unsupported(f"policy_kwargs is a {type(kwargs).__name__}", zip_path)
    unknown = sorted(set(kwargs) - _POLICY_KWARGS)
    if unknown:
        raise _unsupported(f"policy_kwargs {unknown}", zip_path)
    if kwargs.get("use_sde") or data.get("use_sde") or kwargs.get("squash_output"):
        raise _unsupported("gSDE (use_sde=True) or squash_output", zip_path)
    if kwargs.get("features_extractor_class", _FLATTEN) != _FLATTEN or kwargs.get("features_extractor_kwargs"):
        raise _unsupported(f"feature extractor {kwargs.get('features_extractor_class')}", zip_path)
    fn = kwargs.get("activation_fn")
    if fn is None:
        return _DEFAULT_ACTIVATION[algo]
    for name, cls in ACTIVATIONS.items():
        if fn == f"<class '{cls.__module__}.{cls.__qualname__}'>":
            return name
    raise _unsupported(f"activation_fn {fn}", zip_path)


def _recorded_box(entry: Any, what: str, zip_path: Path) -> spaces.Box | None:
    """The 1-D Box ``data`` records for ``what``, its bounds parsed from their printed form (None: unreadable)."""
    if not isinstance(entry, dict) or "gymnasium.spaces.box.Box" not in str(entry.get(":type:")):
        raise _unsupported(f"the {what} is not a Box", zip_path)
    shape = entry.get("_shape")
    if isinstance(shape, list) and len(shape) != 1:
        raise _unsupported(f"the {what} has shape {shape}, not a flat Box", zip_path)
    try:
        low, high = (np.array(str(entry[k]).strip("[]").split(), dtype=np.float64) for k in ("low", "high"))
        dtype = np.dtype(entry["dtype"])
        return spaces.Box(low.astype(dtype), high.astype(dtype), (int(shape[0]),), dtype)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _check_actions(zip_path: Path, recorded: spaces.Box | None, given: spaces.Box | None) -> spaces.Box:
    """``given`` (the task's action space), checked against the model's; the model's when none is given."""
    if given is None:
        if recorded is None:
            raise ValueError(f"{zip_path}: the action bounds it records are not readable; pass the action space")
        return recorded
    if recorded is not None and (recorded.shape != given.shape or not np.allclose(recorded.low, given.low, rtol=1e-6)
                                 or not np.allclose(recorded.high, given.high, rtol=1e-6)):
        raise ValueError(f"{zip_path} was trained with action bounds low={recorded.low.tolist()} "
                         f"high={recorded.high.tolist()} but the task's are low={given.low.tolist()} "
                         f"high={given.high.tolist()}")
    return given


def _policy_from_zip(zip_path: Path, data: dict[str, Any], algo: str, observation_space: spaces.Dict,
                     groups: tuple[str, ...], action_space: spaces.Box | None, vecnormalize: Any) -> MLPPolicy:
    """The :class:`MLPPolicy` of a saved zip, read without unpickling (see the module doc)."""
    policy_class = data.get("policy_class") if isinstance(data.get("policy_class"), dict) else {}
    found = re.match(r"<function (\w+)\.__init__ ", str(policy_class.get("__init__", "")))
    recorded = (policy_class.get("__module__"), found.group(1) if found else None)
    if recorded != _ZIP_POLICY[algo]:
        raise _unsupported(f"policy class {recorded[1] or '?'} of {recorded[0]}, not the {algo.upper()} "
                           f"MlpPolicy {_ZIP_POLICY[algo][1]}", zip_path)
    activation = _activation(data, algo, zip_path)
    _recorded_box(data.get("observation_space"), "observation space", zip_path)
    actions = _check_actions(zip_path, _recorded_box(data.get("action_space"), "action space", zip_path),
                             action_space)
    state = _state_dict(zip_path)
    layers = _actor_layers(state, algo, zip_path)
    log_std = state.get("log_std") if algo == "ppo" else None
    if algo == "ppo" and (log_std is None or tuple(log_std.shape) != actions.shape):
        raise _unsupported(f"PPO log_std is {None if log_std is None else tuple(log_std.shape)}, not one per "
                           "action", zip_path)
    std_head = _linear(state, "actor.log_std", zip_path) if algo == "sac" else None
    return _mlp_policy(algo, layers, activation, log_std, observation_space, groups, actions, vecnormalize,
                       std_head, _critic_layers(state, algo, zip_path))


# ---- VecNormalize statistics ---------------------------------------------------------------------

class _Record:
    """The attributes of a pickled object, set without importing its class or running any of its code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


def _empty_array(*args: Any) -> np.ndarray:
    """Stands for ``numpy``'s ``_reconstruct``: the array gets its dtype, shape and data when unpickled."""
    return np.empty(0, dtype=np.uint8)


_NUMPY_CALLS = {**{(m, n): f for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                   for n, f in (("_reconstruct", _empty_array), ("scalar", None))},
                **{(m, "_frombuffer"): None for m in ("numpy.core.numeric", "numpy._core.numeric")},
                ("numpy", "dtype"): np.dtype}
_RECORD_CLASSES = {"stable_baselines3.common.vec_env.vec_normalize.VecNormalize",
                   "stable_baselines3.common.running_mean_std.RunningMeanStd", "numpy.ndarray"}
_RECORD_MODULES = ("gymnasium.spaces.", "numpy.random.")


class _StatsUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and :class:`_Record` s only; any other reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_CALLS:
            return _NUMPY_CALLS[module, name] or super().find_class(module, name)
        if f"{module}.{name}" in _RECORD_CLASSES or module.startswith(_RECORD_MODULES):
            return type(name, (_Record,), {})
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def read_vecnormalize(path: str | Path) -> Any:
    """The statistics a ``VecNormalize.save`` file holds (``norm_obs``, ``obs_rms.mean``/``var``,
    ``clip_obs``, ``epsilon``), read by an unpickler that creates numpy arrays and plain attribute records
    only: no class named in the file is imported and none of its code runs."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            root = _StatsUnpickler(f).load()
    except Exception as e:  # a damaged or hostile file can fail in many ways
        raise ValueError(f"{path}: not read as VecNormalize statistics ({' '.join(str(e).split())[:200]}); nothing "
                         "of it was run (trust_pickle=true unpickles it, for files you trust)") from None
    rms = getattr(root, "obs_rms", None)
    arrays = isinstance(rms, dict) or all(isinstance(getattr(rms, k, None), np.ndarray) and
                                          np.issubdtype(getattr(rms, k).dtype, np.floating) for k in ("mean", "var"))
    ok = (type(root).__name__ == "VecNormalize" and isinstance(getattr(root, "norm_obs", None), bool) and arrays
          and all(isinstance(getattr(root, k, None), float | int) for k in ("clip_obs", "epsilon")))
    if not ok:
        raise ValueError(f"{path}: not a VecNormalize statistics file (expected a saved VecNormalize with "
                         "norm_obs, clip_obs, epsilon and obs_rms mean/var arrays)")
    return root


def _vecnormalize_evidence(zip_path: Path, data: dict[str, Any], algo: str) -> str | None:
    """Why ``zip_path`` looks trained inside VecNormalize, or None."""
    if algo == "ppo" and data.get("_last_original_obs") is not None:
        return "its data holds _last_original_obs, which SB3 PPO keeps only under VecNormalize"
    stem = zip_path.stem
    for near in (f"{stem}-vecnormalize.pkl", f"{stem}_vecnormalize.pkl", "vecnormalize.pkl",
                 f"{stem}/vecnormalize.pkl"):
        if (zip_path.parent / near).is_file():
            return f"{zip_path.parent / near} lies beside it"
    return None


def import_sb3_zip(zip_path: str | Path, out: str | Path, observation_space: spaces.Dict,
                   groups: Sequence[str], vecnormalize_path: str | Path | None = None,
                   algo: str | None = None, action_space: spaces.Box | None = None,
                   trust_pickle: bool = False) -> Path:
    """Convert an SB3 ``.zip`` (+ its ``VecNormalize`` ``.pkl``) to a bundle at ``out``; returns ``out``.

    Nothing is unpickled (see the module doc) unless ``trust_pickle``. ``action_space``: the task's, checked
    against the model's (None: the bounds the zip records). A model that looks trained inside VecNormalize
    (see :func:`_vecnormalize_evidence`) without ``vecnormalize_path`` is refused; ``"none"`` says it was not.
    """
    zip_path = Path(zip_path)
    groups = check_groups(groups)
    data = _zip_data(zip_path)
    algo = (algo or _algo_from_data(zip_path, data)).lower()
    if algo not in SB3_ALGOS:
        raise ValueError(f"unknown SB3 algo '{algo}': expected one of {list(SB3_ALGOS)}")
    source: dict[str, Any] = {"sb3_zip": str(zip_path), "sha256": file_sha256(zip_path), "algo": algo,
                              "unpickled": trust_pickle}
    vecnormalize = None
    if vecnormalize_path is None:
        why = _vecnormalize_evidence(zip_path, data, algo)
        if why is not None:
            raise ValueError(f"{zip_path} was trained inside VecNormalize ({why}): pass its statistics as "
                             "vecnormalize=<file.pkl>, or vecnormalize=none if its observations were not normalised")
    elif str(vecnormalize_path).lower() != "none":
        vecnormalize_path = Path(vecnormalize_path)
        if not vecnormalize_path.is_file():
            raise ValueError(f"vecnormalize={vecnormalize_path}: no such file")
        if trust_pickle:
            with open(vecnormalize_path, "rb") as f:
                vecnormalize = pickle.load(f)  # trusted file, see the docstring
        else:
            vecnormalize = read_vecnormalize(vecnormalize_path)
        source.update(vecnormalize=str(vecnormalize_path), vecnormalize_sha256=file_sha256(vecnormalize_path))
    if trust_pickle:
        log.warning("unpickling %s: only import SB3 files you trust", zip_path)
        model = sb3_classes()[algo].load(zip_path, device="cpu")
        if action_space is not None and isinstance(model.action_space, spaces.Box):
            _check_actions(zip_path, model.action_space, action_space)
        policy = policy_from_sb3(model, observation_space, groups, vecnormalize=vecnormalize)
    else:
        policy = _policy_from_zip(zip_path, data, algo, observation_space, groups, action_space, vecnormalize)
    return save_bundle(policy, out, meta={"algo": algo, "imported_from": source})
