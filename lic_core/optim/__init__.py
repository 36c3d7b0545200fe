"""Balanced R-D optimization (Zhang et al., CVPR 2025): Cautious Adam, FAMO task weighting
(Solution 1), the equality-constrained QP (Solution 2) and gamma schedules."""
from lic_core.optim.balance import QPResult, QPWeighting, TaskLossError, TaskWeighting, solve_qp
from lic_core.optim.cautious import CautiousAdam
from lic_core.optim.schedules import gamma_schedule

__all__ = ["CautiousAdam", "TaskWeighting", "TaskLossError", "QPResult", "QPWeighting", "solve_qp",
           "gamma_schedule"]
