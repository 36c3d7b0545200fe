"""Balanced R-D optimization (Zhang et al., CVPR 2025): Cautious Adam, FAMO task weighting
(Solution 1), the equality-constrained QP (Solution 2), their defaults, and the schedules of gamma
and of the learning rate."""
from lic_core.optim.balance import GAMMA, W_LR, QPResult, QPWeighting, TaskLossError, TaskWeighting, solve_qp
from lic_core.optim.cautious import CautiousAdam
from lic_core.optim.schedules import LRSchedule, gamma_schedule

__all__ = ["CautiousAdam", "TaskWeighting", "TaskLossError", "QPResult", "QPWeighting", "solve_qp",
           "gamma_schedule", "LRSchedule", "GAMMA", "W_LR"]
