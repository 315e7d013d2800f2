"""The samplers offered by name (CLI `--scheduler`, ComfyUI), built from a pipeline's scheduler config so
that every choice uses the model's training schedule."""

import inspect
from typing import Callable, Dict, Type

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler


def _from_config(scheduler_class: Type[SchedulerMixin], config, **overrides) -> SchedulerMixin:
    """`scheduler_class.from_config` with only the keys that class takes (the training schedule carries over,
    another sampler's own options are left out instead of being warned about)."""
    accepted = inspect.signature(scheduler_class.__init__).parameters
    return scheduler_class.from_config({k: v for k, v in dict(config).items() if k in accepted}, **overrides)


def _ddpm(config, learn_sigma: bool) -> SchedulerMixin:
    # The official DDPM sampler uses the learned variance when the model has one, the large fixed one otherwise.
    return _from_config(DDPMScheduler, config, variance_type="learned_range" if learn_sigma else "fixed_large")


SCHEDULER_CHOICES: Dict[str, Callable[..., SchedulerMixin]] = {
    # The paper's sampler: the official singlestep DPM-Solver, order 3, logSNR grid.
    "dpm-solver": lambda config, learn_sigma: _from_config(MMDiffusionDPMSolverScheduler, config),
    # DDIM as the official `ddimN` respacing runs it (x0 clipped; the pipeline re-derives the noise from it).
    "ddim": lambda config, learn_sigma: _from_config(
        DDIMScheduler, config, clip_sample=True, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
    ),
    "ddpm": _ddpm,
    "dpm++": lambda config, learn_sigma: _from_config(DPMSolverMultistepScheduler, config, algorithm_type="dpmsolver++"),
    "unipc": lambda config, learn_sigma: _from_config(UniPCMultistepScheduler, config),
    "euler": lambda config, learn_sigma: _from_config(EulerDiscreteScheduler, config),
}


def make_scheduler(name: str, config, learn_sigma: bool = False) -> SchedulerMixin:
    """The scheduler called `name` (one of `SCHEDULER_CHOICES`) for a model trained with `config`'s schedule."""
    if name not in SCHEDULER_CHOICES:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULER_CHOICES)}, got {name!r}")
    return SCHEDULER_CHOICES[name](config, learn_sigma)
