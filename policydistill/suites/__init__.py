"""Task suites: named lists of tasks (gymnasium envs yielding observation groups), their wrappers and the
batched tensor env protocol with its adapters (:mod:`policydistill.suites.batched`)."""

from policydistill.suites.suite import (
    Suite,
    TaskSpec,
    builtin_suites,
    diffusion_zoo_dir,
    load_suite,
    suite_from_dict,
    zoo_dir,
)

__all__ = ["Suite", "TaskSpec", "builtin_suites", "diffusion_zoo_dir", "load_suite", "suite_from_dict", "zoo_dir"]
