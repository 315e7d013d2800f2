"""Name this package's components "mmdiffusion" in model_index.json, whatever the folder it was imported from."""

from diffusers.pipelines.pipeline_utils import DiffusionPipeline

PACKAGE_NAME = "mmdiffusion"
# The name this package was imported under (e.g. a ComfyUI custom-node folder), which diffusers would record.
_IMPORTED_AS = __name__.split(".")[0]


def register_package_modules(pipeline: DiffusionPipeline, **modules) -> None:
    """`pipeline.register_modules(**modules)`, recording our own classes as `["mmdiffusion", ClassName]`.

    diffusers writes a custom class's full module path (`mmdiffusion.models.sr_unet`); the package name alone is
    stable across refactors and resolves through the package's top-level exports.
    """
    pipeline.register_modules(**modules)
    own = {
        name: (PACKAGE_NAME, type(module).__name__)
        for name, module in modules.items()
        if module is not None and type(module).__module__.split(".")[0] == _IMPORTED_AS
    }
    if own:
        pipeline.register_to_config(**own)
