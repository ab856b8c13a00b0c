"""One-step distillation of a diffusion policy: the harness (:mod:`.base`) and one file per algorithm."""

from policydistill.distill.onestep import consistency, dmd, regression  # noqa: F401  (they register themselves)
from policydistill.distill.onestep.base import ALGOS, OneStepAlgorithm, OneStepConfig, init_level

__all__ = ["ALGOS", "OneStepAlgorithm", "OneStepConfig", "init_level"]
