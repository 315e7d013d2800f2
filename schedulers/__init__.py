from .scheduler_choices import SCHEDULER_CHOICES, make_scheduler
from .scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler

__all__ = ["MMDiffusionDPMSolverScheduler", "SCHEDULER_CHOICES", "make_scheduler"]
