"""What the nodes take from ComfyUI at run time: the model folders, devices, model memory, the progress bar and
the Stop button. Every ComfyUI module is imported here, on first use, and each function has a plain fallback,
so the node logic runs (and is tested) without ComfyUI.
"""

import importlib
import os
from typing import List, Tuple

import torch

# The models/ subfolder (and extra_model_paths.yaml key) that holds converted or trained pipeline folders.
MODEL_FOLDER = "mm_diffusion"


def comfy_module(name: str):
    """The ComfyUI module `name` (e.g. "comfy.model_management"), or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def register_model_folder() -> None:
    """Add `models/mm_diffusion` to ComfyUI's folder list, keeping any paths extra_model_paths.yaml gave it."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is not None:
        folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_search_paths() -> List[str]:
    """The folders searched for pipeline folders: `models/mm_diffusion` and those named in extra_model_paths.yaml."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    register_model_folder()
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def devices(choice: str) -> Tuple[torch.device, torch.device]:
    """(device the models run on, device they wait on): ComfyUI's choice (which honours --cpu) for "default"."""
    cpu = torch.device("cpu")
    if choice == "cpu":
        return cpu, cpu
    model_management = comfy_module("comfy.model_management")
    if model_management is not None:
        return model_management.get_torch_device(), model_management.unet_offload_device()
    return (torch.device("cuda") if torch.cuda.is_available() else cpu), cpu


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Stop (no-op outside ComfyUI)."""
    model_management = comfy_module("comfy.model_management")
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


def autograd_allowed():
    """ComfyUI runs nodes under `torch.inference_mode()`, whose tensors cannot take part in autograd; loading and
    sampling leave it, so that gradient guidance works on the weights and inputs they create."""
    return torch.inference_mode(False)


class StepReporter:
    """A `callback_on_step_end` for the pipelines: advances ComfyUI's progress bar and stops at Stop."""

    def __init__(self, total: int):
        utils = comfy_module("comfy.utils")
        self._bar = utils.ProgressBar(total) if utils is not None else None

    def __call__(self, pipeline, step, timestep, callback_kwargs):
        if self._bar is not None:
            self._bar.update(1)
        check_interrupted()
        return {}


class MMDiffusionModels(torch.nn.ModuleDict):
    """A pipeline's models as one module for ComfyUI's ModelPatcher: they are loaded and offloaded together (and
    ModelPatcher sets a `device` attribute, which diffusers models keep as a read-only property)."""


class ManagedPipeline:
    """The value of an `MMDIFFUSION_PIPELINE` socket: a loaded pipeline whose models ComfyUI's model management
    moves to the run device on use and offloads (or frees) when another model needs the memory."""

    def __init__(self, pipeline, name: str, device: torch.device, offload_device: torch.device):
        self.pipeline = pipeline
        self.name = name
        self.device = device
        self.offload_device = offload_device
        self._patcher = None
        model_patcher = comfy_module("comfy.model_patcher")
        if model_patcher is not None:
            modules = MMDiffusionModels(
                {name: module for name, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}
            )
            self._patcher = model_patcher.ModelPatcher(modules, load_device=device, offload_device=offload_device)

    def prepare(self):
        """The pipeline, with its models on the run device."""
        with autograd_allowed():
            if self._patcher is not None:
                # A full load: these models' layers are plain torch ones, which ComfyUI cannot run split over devices.
                comfy_module("comfy.model_management").load_models_gpu([self._patcher], force_full_load=True)
            else:
                self.pipeline.to(self.device)
        return self.pipeline

    def __repr__(self) -> str:
        return f"ManagedPipeline({type(self.pipeline).__name__} {self.name!r} on {self.device})"
