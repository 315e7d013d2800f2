"""Saving and loading this package's pipelines, whatever name the package was imported under.

diffusers records a component as ``[library, class]`` in ``model_index.json`` and imports the library
to load it. This package is imported as ``mmdiffusion`` when pip-installed but under the folder's name
when ComfyUI loads it from ``custom_nodes/``, so its components are always recorded as
``["mmdiffusion", class]`` and the pipelines load their folders themselves, resolving those names to
the classes of the running copy and other names to diffusers.
"""

import inspect
import json
import os
from typing import Dict, Type

import diffusers
from diffusers.models.modeling_utils import ModelMixin

from ...models.coupled_unet import CoupledUNet
from ...models.sr_unet import SuperResolutionUNet
from ...schedulers.scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler

PACKAGE_NAME = "mmdiffusion"

OWN_CLASSES: Dict[str, Type] = {
    cls.__name__: cls for cls in (CoupledUNet, SuperResolutionUNet, MMDiffusionDPMSolverScheduler)
}

# Keyword arguments of `from_pretrained` that apply to loading each model component.
MODEL_LOADING_KWARGS = ("torch_dtype", "variant", "low_cpu_mem_usage", "use_safetensors")
DOWNLOAD_KWARGS = ("cache_dir", "revision", "token", "local_files_only")


def _component_class(library: str, class_name: str, where: str) -> Type:
    if library.split(".")[0] == PACKAGE_NAME:
        if class_name not in OWN_CLASSES:
            raise ValueError(f"{where} names an unknown {PACKAGE_NAME} class {class_name!r}")
        return OWN_CLASSES[class_name]
    if library.split(".")[0] == "diffusers" and hasattr(diffusers, class_name):
        return getattr(diffusers, class_name)
    raise ValueError(f"{where} names [{library!r}, {class_name!r}]; expected a {PACKAGE_NAME} or diffusers class")


class OwnComponentsMixin:
    """Save/load for `DiffusionPipeline` subclasses whose components include this package's classes."""

    def register_modules(self, **kwargs):
        super().register_modules(**kwargs)
        own = {
            name: (PACKAGE_NAME, type(module).__name__)
            for name, module in kwargs.items()
            if isinstance(module, tuple(OWN_CLASSES.values()))
        }
        if own:
            self.register_to_config(**own)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a pipeline folder (or download a hub repository). Components given as keyword arguments replace
        the saved ones; `torch_dtype` and the other model-loading arguments apply to every model."""
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            download = {k: kwargs.pop(k) for k in DOWNLOAD_KWARGS if k in kwargs}
            folder = cls.download(folder, **download)
        index_path = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index_path):
            raise FileNotFoundError(f"{pretrained_model_name_or_path} is not a pipeline folder: it has no model_index.json")
        with open(index_path) as handle:
            index = json.load(handle)

        model_kwargs = {k: kwargs.pop(k) for k in MODEL_LOADING_KWARGS if k in kwargs}
        parameters = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments {unknown}")
        init_kwargs = {}
        for name, entry in index.items():
            if name.startswith("_") or name not in parameters:
                continue
            if name in kwargs:
                init_kwargs[name] = kwargs.pop(name)
            elif isinstance(entry, list) and len(entry) == 2:
                library, class_name = entry
                if library is None or class_name is None:
                    init_kwargs[name] = None
                    continue
                component_class = _component_class(library, class_name, f"{index_path} ({name})")
                if issubclass(component_class, ModelMixin):
                    init_kwargs[name] = component_class.from_pretrained(folder, subfolder=name, **model_kwargs)
                else:
                    init_kwargs[name] = component_class.from_pretrained(folder, subfolder=name)
            else:
                init_kwargs[name] = entry
        pipeline = cls(**init_kwargs, **kwargs)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline
