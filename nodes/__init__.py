"""ComfyUI nodes (classic V1 API). ComfyUI's own modules are imported only in this subpackage, and only when the
nodes run under ComfyUI: importing it elsewhere needs torch, not ComfyUI."""

from .comfy_bridge import register_model_folder
from .mm_diffusion_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# So that ComfyUI lists models/mm_diffusion among its model folders as soon as the pack is loaded.
register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
