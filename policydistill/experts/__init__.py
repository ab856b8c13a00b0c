"""Experts: one stable-baselines3 specialist per task, trained by worker processes or Ray tasks."""

from policydistill.experts.run import ExpertConfig, train_task
from policydistill.experts.train import TrainExpertsConfig, train_experts

__all__ = ["ExpertConfig", "TrainExpertsConfig", "train_experts", "train_task"]
