"""The samplers offered by name (CLI `--scheduler`, ComfyUI), built from a pipeline's scheduler config so
that every choice uses the model's training schedule."""

from typing import Callable, Dict

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler


def _ddpm(config, learn_sigma: bool) -> SchedulerMixin:
    # The official DDPM sampler uses the learned variance when the model has one, the large fixed one otherwise.
    return DDPMScheduler.from_config(config, variance_type="learned_range" if learn_sigma else "fixed_large")


SCHEDULER_CHOICES: Dict[str, Callable[..., SchedulerMixin]] = {
    # The paper's sampler: the official singlestep DPM-Solver, order 3, logSNR grid.
    "dpm-solver": lambda config, learn_sigma: MMDiffusionDPMSolverScheduler.from_config(config),
    # DDIM as the official `ddimN` respacing runs it (x0 clipped; the pipeline re-derives the noise from it).
    "ddim": lambda config, learn_sigma: DDIMScheduler.from_config(
        config, clip_sample=True, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
    ),
    "ddpm": _ddpm,
    "dpm++": lambda config, learn_sigma: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "unipc": lambda config, learn_sigma: UniPCMultistepScheduler.from_config(config),
    "euler": lambda config, learn_sigma: EulerDiscreteScheduler.from_config(config),
}


def make_scheduler(name: str, config, learn_sigma: bool = False) -> SchedulerMixin:
    """The scheduler called `name` (one of `SCHEDULER_CHOICES`) for a model trained with `config`'s schedule."""
    if name not in SCHEDULER_CHOICES:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULER_CHOICES)}, got {name!r}")
    return SCHEDULER_CHOICES[name](config, learn_sigma)
