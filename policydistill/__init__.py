"""policydistill: specialists in simulation -> distilled, deployable students -> evaluation.

The public API, each name imported on first use (so ``import policydistill`` stays light and the torch-free
runtime path stays torch-free):

- suites: :func:`load_suite`, :class:`Suite`, :class:`TaskSpec`, :func:`zoo_dir`
- experts: :func:`train_experts`, :class:`ExpertConfig`
- teachers and bundles: :func:`policies_for_suite`, :func:`load_policy`, :class:`TeacherBank`,
  :func:`load_bundle`, :func:`save_bundle`
- distillation: :func:`run_distill`, :class:`DistillConfig`, the method configs (:class:`BCConfig`,
  :class:`DAggerConfig`, :class:`GatedConfig`, :class:`OnPolicyConfig`, :class:`KickstartConfig`,
  :class:`DiffusionConfig`, :class:`OneStepConfig`), :class:`StudentConfig`, :func:`build_student`,
  :func:`train_student`
- evaluation: :func:`evaluate`, :func:`evaluate_per_task`, :func:`run_episodes`
- deployment: :func:`export_policy`, :class:`OnnxPolicy`, :class:`Controller` (also in :mod:`policydistill.runtime`)
"""

from __future__ import annotations

from policydistill.lazy import lazy_names

__version__ = "0.1.0"

_LAZY = {
    "load_suite": "policydistill.suites", "Suite": "policydistill.suites", "TaskSpec": "policydistill.suites",
    "zoo_dir": "policydistill.suites",
    "train_experts": "policydistill.experts", "ExpertConfig": "policydistill.experts",
    "policies_for_suite": "policydistill.teachers", "load_policy": "policydistill.teachers",
    "TeacherBank": "policydistill.teachers",
    "load_bundle": "policydistill.bundle", "save_bundle": "policydistill.bundle",
    "run_distill": "policydistill.distill.runner", "DistillConfig": "policydistill.distill.runner",
    "BCConfig": "policydistill.distill.dagger", "DAggerConfig": "policydistill.distill.dagger",
    "GatedConfig": "policydistill.distill.gated",
    "OnPolicyConfig": "policydistill.distill.dagger", "KickstartConfig": "policydistill.distill.kickstart",
    "DiffusionConfig": "policydistill.distill.diffusion", "OneStepConfig": "policydistill.distill.onestep",
    "StudentConfig": "policydistill.models.students", "build_student": "policydistill.models.students",
    "TrainStudentConfig": "policydistill.distill.retrain", "train_student": "policydistill.distill.retrain",
    "evaluate": "policydistill.eval.evaluate", "evaluate_per_task": "policydistill.eval.evaluate",
    "run_episodes": "policydistill.eval.rollout",
    "export_policy": "policydistill.runtime.export", "OnnxPolicy": "policydistill.runtime.onnx_policy",
    "Controller": "policydistill.runtime.controller",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_names("policydistill", _LAZY)
