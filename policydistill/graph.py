"""What a policy hands the exporter: one torch module with named, shaped inputs and outputs.

Every exportable policy class implements ``export_graph() -> ExportGraph``. The module's ``forward``
takes the inputs in order and returns the outputs in order (a tensor when there is one output, else
a tuple). Every tensor is float32 and batched: its shape is ``(n, *spec.shape)`` with ``n`` dynamic.

Roles of inputs:

- ``observation`` (exactly one, first, named ``obs``): the policy's groups concatenated in its
  reading order, ``(n, obs_dim)``;
- ``state``: carried between calls per env (history buffer, recurrent hidden state, ...); the
  caller feeds zeros after a reset and, at every later call, the output paired with it in
  :attr:`ExportGraph.state`;
- ``noise``: standard normal values the caller draws at every call (diffusion and one-step
  generators); feeding the same noise to the torch policy and the exported model gives the same
  actions;
- ``sample`` ``(n, horizon, act_dim)`` and ``timestep`` ``(n, 1)``: the noisy chunk and its
  diffusion timestep, inputs of a K-step policy's denoiser (see below).

Roles of outputs: the first is ``action`` ``(n, act_dim)`` in the env's action space or ``chunk``
``(n, horizon, act_dim)`` (a sequence of actions in the env's action space, executed from a queue);
``state`` outputs feed the paired ``state`` inputs at the next call.

Chunk policies (first output ``chunk``) have the attributes ``horizon``, ``n_action_steps`` (how many
actions of a chunk are executed before the next is computed) and ``n_obs_steps``; the exporter
records them. A policy conditioned on its last ``k = n_obs_steps`` observations takes ``obs`` of
shape ``(n, k * obs_dim)``: the observations of the last k ticks, oldest first, each the groups
concatenated; the runtime keeps that window per env and, after a reset, fills it with the first
observation.

A K-step diffusion policy exports its denoiser: inputs ``obs``, ``sample``, ``timestep``, first
output ``prediction`` (n, horizon, act_dim) (the noise or the clean sample), and ``sampler``, the
JSON description of the loop around it (:class:`policydistill.runtime.sampler.SamplerSpec`), which
also holds the action unnormalisation and clipping applied to the loop's result.

Normalisation and action post-processing are inside the module, so the exported graph maps raw
observations to executable actions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

INPUT_ROLES = ("observation", "state", "noise", "sample", "timestep")
OUTPUT_ROLES = ("action", "chunk", "prediction", "state")
DENOISER_INPUTS = ("sample", "timestep")
OBS = "obs"


@dataclass(frozen=True)
class TensorSpec:
    """A named float32 tensor of shape ``(n, *shape)``; ``role`` says what the caller does with it."""

    name: str
    shape: tuple[int, ...]
    role: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": ["n", *self.shape], "role": self.role, "dtype": "float32"}


def _default_example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    out = []
    for spec in graph.inputs:
        x = torch.randn(n, *spec.shape, generator=generator)
        if spec.role == "timestep":
            train_steps = len(graph.sampler["alphas_cumprod"]) if graph.sampler else 1000
            x = torch.randint(0, train_steps, (n, *spec.shape), generator=generator).float()
        out.append(x * 3.0 if spec.role == "observation" else torch.zeros_like(x) if spec.role == "state" else x)
    return tuple(out)


@dataclass
class ExportGraph:
    """``module(*inputs) -> outputs`` with ``state`` pairs ``(input name, output name)``.

    ``example(graph, n, generator)`` returns inputs the exporter traces and checks the graph on;
    the default draws observations from N(0, 9), noise and samples from N(0, 1), timesteps from the
    sampler's range and zero state. A policy whose interesting range is elsewhere (a normaliser's
    statistics, clipping) supplies its own. ``sampler``: the JSON description of the K-step loop
    around a denoiser graph (first output ``prediction``), None for every other graph.
    """

    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[tuple[str, str], ...] = ()
    example: Callable[[ExportGraph, int, torch.Generator], tuple[torch.Tensor, ...]] = field(
        default=_default_example)
    sampler: dict | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in (*self.inputs, *self.outputs)]
        if len(set(s.name for s in self.inputs)) != len(self.inputs) or \
                len(set(s.name for s in self.outputs)) != len(self.outputs):
            raise ValueError(f"export graph tensor names must be unique per side, got {names}")
        if not self.inputs or self.inputs[0].role != "observation" or self.inputs[0].name != OBS \
                or sum(s.role == "observation" for s in self.inputs) != 1:
            raise ValueError(f"an export graph takes exactly one observation input, first, named '{OBS}'")
        if not self.outputs or self.outputs[0].role not in ("action", "chunk", "prediction"):
            raise ValueError("an export graph's first output must be the 'action', 'chunk' or 'prediction'")
        roles = {s.role for s in self.inputs}
        denoiser = self.outputs[0].role == "prediction"
        if denoiser != (self.sampler is not None) or (denoiser and not roles >= set(DENOISER_INPUTS)) or \
                (not denoiser and roles & set(DENOISER_INPUTS)):
            raise ValueError("a denoiser graph (first output 'prediction') takes 'sample' and 'timestep' inputs and "
                             "has a 'sampler'; other graphs have neither")
        bad = [s.name for s in self.inputs if s.role not in INPUT_ROLES] + \
              [s.name for s in self.outputs if s.role not in OUTPUT_ROLES]
        if bad:
            raise ValueError(f"export graph tensors {bad} have unknown roles; inputs: {list(INPUT_ROLES)}, "
                             f"outputs: {list(OUTPUT_ROLES)}")
        ins, outs = {s.name: s for s in self.inputs}, {s.name: s for s in self.outputs}
        for i, o in self.state:
            if i not in ins or o not in outs or ins[i].role != "state" or outs[o].role != "state" \
                    or ins[i].shape != outs[o].shape:
                raise ValueError(f"state pair ({i!r}, {o!r}) must join a 'state' input and a 'state' output "
                                 "of the same shape")
        paired = {i for i, _ in self.state}
        unpaired = [s.name for s in self.inputs if s.role == "state" and s.name not in paired]
        if unpaired:
            raise ValueError(f"state inputs {unpaired} have no output paired with them")

    @property
    def stateful(self) -> bool:
        return bool(self.state)

    def example_inputs(self, n: int, seed: int) -> tuple[torch.Tensor, ...]:
        """Inputs for a batch of ``n``, reproducible from ``seed``."""
        return self.example(self, n, torch.Generator().manual_seed(seed))

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The module's outputs as a tuple, under ``inference_mode``."""
        with torch.inference_mode():
            out = self.module(*inputs)
        return out if isinstance(out, tuple) else (out,)
