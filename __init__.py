"""MM-Diffusion: joint audio-video generation as a diffusers pipeline.

Importing the package is cheap: the public classes are loaded on first use, so ComfyUI can
import this folder (under any name) without paying for torch/diffusers until a node runs. The
folder is also a ComfyUI custom-node pack: ComfyUI reads NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS from it (see nodes/).
"""

import importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_LAZY_ATTRIBUTES = {
    "CoupledUNet": ".models.coupled_unet",
    "CoupledUNetOutput": ".models.coupled_unet",
    "SuperResolutionUNet": ".models.sr_unet",
    "SuperResolutionUNetOutput": ".models.sr_unet",
    "MMDiffusionDPMSolverScheduler": ".schedulers.scheduling_mm_dpmsolver",
    "MMDiffusionPipeline": ".pipelines.mm_diffusion.pipeline_mm_diffusion",
    "MMDiffusionSRPipeline": ".pipelines.mm_diffusion.pipeline_mm_diffusion_sr",
    "MMDiffusionPipelineOutput": ".pipelines.mm_diffusion.pipeline_output",
    "MMDiffusionSRPipelineOutput": ".pipelines.mm_diffusion.pipeline_output",
    "export_to_video": ".media",
    "export_to_wav": ".media",
    "load_audio": ".media",
    "load_video": ".media",
    # ComfyUI reads these two from the package; looking them up imports the nodes (torch, never ComfyUI).
    "NODE_CLASS_MAPPINGS": ".nodes",
    "NODE_DISPLAY_NAME_MAPPINGS": ".nodes",
}

__all__ = sorted(_LAZY_ATTRIBUTES)


def __getattr__(name):
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
