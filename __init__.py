"""MM-Diffusion (CVPR 2023) as a library: diffusers models and pipelines."""

import importlib

# Public names → the submodule defining them; imported on first access so `import mmdiffusion` stays light.
# diffusers resolves model_index.json entries such as ["mmdiffusion", "SuperResolutionUNet"] through getattr.
_LAZY_EXPORTS = {
    "SuperResolutionUNet": ".models.sr_unet",
    "SuperResolutionUNetOutput": ".models.sr_unet",
    "MMDiffusionSRPipeline": ".pipelines.mm_diffusion.pipeline_mm_diffusion_sr",
    "MMDiffusionSRPipelineOutput": ".pipelines.mm_diffusion.pipeline_output",
    "MMDiffusionPipelineOutput": ".pipelines.mm_diffusion.pipeline_output",
    # diffusers picks a component's load method by looking these base classes up in the library that
    # model_index.json names, so ["mmdiffusion", ...] entries need them here.
    "ModelMixin": "diffusers",
    "SchedulerMixin": "diffusers",
    "DiffusionPipeline": "diffusers",
}

__all__ = sorted(name for name, module in _LAZY_EXPORTS.items() if module.startswith("."))


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
