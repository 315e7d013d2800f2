from .scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler

__all__ = ["MMDiffusionDPMSolverScheduler"]
