"""Convert official MM-Diffusion checkpoints (plain ``.pt`` state dicts) into a diffusers folder.

    mmdiffusion convert --checkpoint Landscape.pt -o ./mm-diffusion-landscape --preset landscape
    python -m mmdiffusion.convert_weights --checkpoint AIST++.pt -o OUT --video_size 16,3,64,64 ...

The model's architecture is given by the official sampling script's flags, verbatim, or by a preset.
What the state dict shows (widths, levels, attention placement, learned sigma, ...) is inferred from it;
flags and presets are checked against the weights, and a disagreement stops the conversion with the key
and both shapes. Nothing is written unless the whole conversion succeeds.
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .file_utils import atomic_directory, check_can_write
from .models.coupled_unet import CoupledUNet
from .models.sr_unet import SRAttentionBlock, SRDownsample, SRResnetBlock, SRUpsample, SuperResolutionUNet

# ----------------------------------------------------------------------------------------------------
# Official flags


def _str2bool(value: str) -> bool:
    lowered = str(value).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def _int_list(value: str) -> List[int]:
    try:
        return [int(item) for item in str(value).split(",") if item.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _float_list(value: str) -> List[float]:
    try:
        return [float(item) for item in str(value).split(",") if item.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


# The coupled model's flags of the official sampling script, with its defaults.
COUPLED_MODEL_FLAGS = {
    "video_size": (_int_list, "16,3,64,64"),
    "audio_size": (_int_list, "1,25600"),
    "num_channels": (int, 128),
    "num_res_blocks": (int, 2),
    "channel_mult": (_float_list, ""),
    "num_heads": (int, 4),
    "num_head_channels": (int, -1),
    "cross_attention_resolutions": (_int_list, "2,4,8"),
    "cross_attention_windows": (_int_list, "1,4,8"),
    "cross_attention_shift": (_str2bool, True),
    "video_attention_resolutions": (_int_list, "2,4,8"),
    "audio_attention_resolutions": (_int_list, "-1"),
    "dropout": (float, 0.0),
    "class_cond": (_str2bool, False),
    "use_scale_shift_norm": (_str2bool, True),
    "resblock_updown": (_str2bool, False),
    "learn_sigma": (_str2bool, False),
    "video_type": (str, "2d+1d"),
    "audio_type": (str, "1d"),
}

# The super-resolution model's flags of the official sampling script, with its defaults.
# `sr_channel_mult` is this project's extension: the official code derives it from `large_size`.
SR_MODEL_FLAGS = {
    "large_size": (int, 256),
    "small_size": (int, 128),
    "sr_num_channels": (int, 128),
    "sr_num_res_blocks": (int, 2),
    "sr_channel_mult": (_int_list, ""),
    "sr_num_heads": (int, 4),
    "sr_num_heads_upsample": (int, -1),
    "sr_num_head_channels": (int, -1),
    "sr_attention_resolutions": (_int_list, "16,8"),
    "sr_dropout": (float, 0.0),
    "sr_class_cond": (_str2bool, False),
    "sr_use_scale_shift_norm": (_str2bool, True),
    "sr_resblock_updown": (_str2bool, False),
    "sr_use_new_attention_order": (_str2bool, False),
    "sr_learn_sigma": (_str2bool, True),
    "sr_diffusion_steps": (int, 1000),
}

# The official code's channel multipliers of the SR model by output size.
_SR_CHANNEL_MULT = {512: [1, 1, 2, 2, 4, 4], 256: [1, 1, 2, 2, 4, 4], 64: [1, 2, 3, 4]}

# Flags that go to the pipeline and scheduler configs rather than the model.
PIPELINE_FLAGS = {
    "video_fps": (int, 10),
    "audio_fps": (int, 16000),
    "diffusion_steps": (int, 1000),
    "noise_schedule": (str, "linear"),
}

# Flags of the official scripts that do not change the converted weights: accepted and ignored.
IGNORED_FLAGS = (
    "num_heads_upsample use_checkpoint use_fp16 timestep_respacing use_kl predict_xstart rescale_timesteps "
    "rescale_learned_sigmas clip_denoised ref_path batch_size sample_fn sr_sample_fn sr_model_path "
    "multimodal_model_path output_dir save_type classifier_scale devices is_strict all_save_num seed load_noise "
    "num_workers sr_timestep_respacing lr log_interval save_interval use_db frame_gap data_dir resume_checkpoint"
).split()

PRESETS = {
    # The released Landscape and AIST++ models share one architecture (the official sampling scripts' flags).
    "landscape": {
        "video_size": [16, 3, 64, 64],
        "audio_size": [1, 25600],
        "num_channels": 128,
        "num_res_blocks": 2,
        "num_heads": 4,
        "num_head_channels": 64,
        "cross_attention_resolutions": [2, 4, 8],
        "cross_attention_windows": [1, 4, 8],
        "cross_attention_shift": True,
        "video_attention_resolutions": [2, 4, 8],
        "audio_attention_resolutions": [-1],
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "learn_sigma": False,
        "video_fps": 10,
        "audio_fps": 16000,
        "diffusion_steps": 1000,
        "noise_schedule": "linear",
        # The released Landscape_SR.pt / AIST++_SR.pt.
        "large_size": 256,
        "small_size": 64,
        "sr_num_channels": 192,
        "sr_num_res_blocks": 2,
        "sr_num_heads": 4,
        "sr_attention_resolutions": [8, 16, 32],
        "sr_learn_sigma": True,
        "sr_resblock_updown": True,
        "sr_use_scale_shift_norm": True,
        "sr_diffusion_steps": 1000,
    },
}
PRESETS["aist++"] = dict(PRESETS["landscape"])


ALL_FLAGS = {**COUPLED_MODEL_FLAGS, **SR_MODEL_FLAGS, **PIPELINE_FLAGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion convert",
        description="Convert official MM-Diffusion checkpoints into a diffusers folder of safetensors.",
    )
    parser.add_argument("--checkpoint", type=Path, help="official coupled audio-video checkpoint (.pt or .safetensors)")
    parser.add_argument("--sr-checkpoint", type=Path, help="official super-resolution checkpoint (.pt or .safetensors)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="architecture of a released checkpoint")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    official = parser.add_argument_group("official sampling-script flags (verbatim)")
    for name, (kind, _) in ALL_FLAGS.items():
        official.add_argument(f"--{name}", type=kind, default=None)
    for name in IGNORED_FLAGS:
        official.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    return parser


# ----------------------------------------------------------------------------------------------------
# Loading


class ConversionError(ValueError):
    """A checkpoint or flag problem, stated in one sentence."""


def load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """A plain state dict from ``.pt`` (``weights_only`` unpickling) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise ConversionError(f"checkpoint {path} is not a readable safetensors file ({error})") from None
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"checkpoint {path} is not a plain PyTorch state dict loadable with weights_only=True ({first_line})"
        ) from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise ConversionError(f"checkpoint {path} is not a plain state dict of named tensors")
    return state_dict


COUPLED_MARKER = "input_blocks.0.0.video_conv.video_conv_spatial.weight"


def checkpoint_kind(state_dict: Dict[str, torch.Tensor]) -> str:
    if COUPLED_MARKER in state_dict:
        return "coupled"
    if "input_blocks.0.0.weight" in state_dict and "out.2.weight" in state_dict:
        return "super-resolution"
    return "unknown"


def _require_kind(state_dict, path: Path, expected: str):
    kind = checkpoint_kind(state_dict)
    if kind != expected:
        found = "an unrecognised state dict" if kind == "unknown" else f"a {kind} checkpoint"
        raise ConversionError(f"{path} is {found}, expected a {expected} MM-Diffusion checkpoint")


# ----------------------------------------------------------------------------------------------------
# Coupled U-Net: what the state dict shows


def _block_indices(state_dict, prefix: str) -> List[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for key in state_dict if (m := pattern.match(key))})


def _is_cross_attention(state_dict, prefix: str) -> bool:
    return f"{prefix}.v_qkv.weight" in state_dict


def _is_resblock(state_dict, prefix: str) -> bool:
    return f"{prefix}.emb_layers.1.weight" in state_dict


def infer_coupled_flags(state_dict: Dict[str, torch.Tensor]) -> dict:
    """The official flags that the coupled state dict determines."""
    model_channels = state_dict["time_embed.0.weight"].shape[1]
    video_channels = state_dict[COUPLED_MARKER].shape[1]
    audio_channels = state_dict["input_blocks.0.0.audio_conv.audio_conv.weight"].shape[1]
    out_video = state_dict["video_out.2.video_conv.weight"].shape[0]

    outputs = _block_indices(state_dict, "output_blocks")
    upsampling = [
        index for index in outputs
        if any(_is_resblock(state_dict, f"output_blocks.{index}.{m}") for m in (1, 2))
    ]
    num_res_blocks = upsampling[0] if upsampling else len(outputs) - 1
    num_levels = len(outputs) // (num_res_blocks + 1)

    mults, video_attention, audio_attention, cross_attention = [], [], [], []
    scale_shift = False
    for level in range(num_levels):
        first = 1 + level * (num_res_blocks + 1)
        prefix = f"input_blocks.{first}.0"
        if f"{prefix}.video_out_layers.3.video_conv.weight" not in state_dict:
            break
        width = state_dict[f"{prefix}.video_out_layers.3.video_conv.weight"].shape[0]
        mult = width / model_channels
        mults.append(int(mult) if mult == int(mult) else mult)
        scale_shift = state_dict[f"{prefix}.emb_layers.1.weight"].shape[0] == 2 * width
        factor = 2**level
        if f"{prefix}.spatial_attention_block.qkv.weight" in state_dict:
            video_attention.append(factor)
        if f"{prefix}.audio_attention_block.qkv.weight" in state_dict:
            audio_attention.append(factor)
        if _is_cross_attention(state_dict, f"input_blocks.{first}.1"):
            cross_attention.append(factor)

    return {
        "num_channels": model_channels,
        "num_res_blocks": num_res_blocks,
        "channel_mult": mults,
        "video_channels": video_channels,
        "audio_channels": audio_channels,
        "learn_sigma": out_video == 2 * video_channels,
        "use_scale_shift_norm": scale_shift,
        "video_attention_resolutions": video_attention or [-1],
        "audio_attention_resolutions": audio_attention or [-1],
        "cross_attention_resolutions": cross_attention,
        "resblock_updown": bool(upsampling) or num_levels == 1,
    }


def coupled_unet_config(flags: dict) -> dict:
    """CoupledUNet config from official flags (already merged with presets, defaults and inference)."""
    frames, video_channels, height, width = flags["video_size"]
    audio_channels, audio_length = flags["audio_size"]
    return {
        "num_frames": frames,
        "sample_size": [height, width] if height != width else height,
        "video_channels": video_channels,
        "audio_channels": audio_channels,
        "audio_length": audio_length,
        "model_channels": flags["num_channels"],
        "channel_mult": list(flags["channel_mult"]) or None,
        "num_res_blocks": flags["num_res_blocks"],
        "cross_attention_downsample_factors": [f for f in flags["cross_attention_resolutions"] if f > 0],
        "cross_attention_windows": list(flags["cross_attention_windows"]),
        "cross_attention_shift": flags["cross_attention_shift"],
        "video_attention_downsample_factors": [f for f in flags["video_attention_resolutions"] if f > 0],
        "audio_attention_downsample_factors": [f for f in flags["audio_attention_resolutions"] if f > 0],
        "num_attention_heads": flags["num_heads"],
        "cross_attention_head_dim": flags["num_head_channels"],
        "use_scale_shift_norm": flags["use_scale_shift_norm"],
        "resblock_updown": flags["resblock_updown"],
        "learn_sigma": flags["learn_sigma"],
        "dropout": flags["dropout"],
        "video_conv_type": flags["video_type"],
        "audio_conv_type": flags["audio_type"],
        "num_classes": 1 if flags["class_cond"] else None,
    }


# ----------------------------------------------------------------------------------------------------
# Coupled U-Net: key mapping

_RESBLOCK_RENAMES = [
    ("video_in_layers.0.GroupNorm.", "video_norm1."),
    ("video_in_layers.2.video_conv_spatial.", "video_conv1.spatial."),
    ("video_in_layers.2.video_conv_temporal.", "video_conv1.temporal."),
    ("audio_in_layers.0.GroupNorm.", "audio_norm1."),
    ("audio_in_layers.2.audio_conv.", "audio_conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("video_out_layers.0.GroupNorm.", "video_norm2."),
    ("video_out_layers.3.video_conv.", "video_conv2."),
    ("audio_out_layers.0.GroupNorm.", "audio_norm2."),
    ("audio_out_layers.3.audio_conv.", "audio_conv2."),
    ("video_skip_connection.video_conv.", "video_conv_shortcut."),
    ("audio_skip_connection.audio_conv.", "audio_conv_shortcut."),
    ("spatial_attention_block.", "video_attention.spatial."),
    ("temporal_attention_block.", "video_attention.temporal."),
    ("audio_attention_block.", "audio_attention."),
]
_SELF_ATTENTION_RENAMES = [("norm.GroupNorm.", "norm."), ("qkv.", "to_qkv."), ("proj_out.", "to_out.")]
_CROSS_ATTENTION_RENAMES = [
    ("v_norm.GroupNorm.", "video_norm."),
    ("a_norm.GroupNorm.", "audio_norm."),
    ("v_qkv.", "video_to_qkv."),
    ("a_qkv.", "audio_to_qkv."),
    ("video_proj_out.video_conv.", "video_to_out."),
    ("audio_proj_out.audio_conv.", "audio_to_out."),
]
_TOP_LEVEL_RENAMES = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.video_conv.video_conv_spatial.", "conv_in_video.spatial."),
    ("input_blocks.0.0.video_conv.video_conv_temporal.", "conv_in_video.temporal."),
    ("input_blocks.0.0.audio_conv.audio_conv.", "conv_in_audio."),
    ("video_out.0.GroupNorm.", "video_norm_out."),
    ("video_out.2.video_conv.", "video_conv_out."),
    ("audio_out.0.GroupNorm.", "audio_norm_out."),
    ("audio_out.2.audio_conv.", "audio_conv_out."),
]


def _rename_module(state_dict, official_prefix: str, suffix: str) -> str:
    """Name inside a residual block or cross-attention block."""
    if _is_cross_attention(state_dict, official_prefix):
        renames = _CROSS_ATTENTION_RENAMES
    else:
        renames = _RESBLOCK_RENAMES
    for old, new in renames:
        if suffix.startswith(old):
            rest = suffix[len(old):]
            if "attention" in new:
                for old_attn, new_attn in _SELF_ATTENTION_RENAMES:
                    if rest.startswith(old_attn):
                        return new + new_attn + rest[len(old_attn):]
            return new + rest
    raise ConversionError(f"unexpected key {official_prefix}.{suffix} in the coupled checkpoint")


def coupled_key(state_dict, key: str) -> str:
    """The CoupledUNet name of an official ``MultimodalUNet`` key."""
    for old, new in _TOP_LEVEL_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    match = re.match(r"^(input_blocks|middle_blocks|output_blocks)\.(?:(\d+)\.)?(\d+)\.(.*)$", key)
    if match is None:
        raise ConversionError(f"unexpected key {key} in the coupled checkpoint")
    group, block, position, suffix = match.group(1), match.group(2), int(match.group(3)), match.group(4)
    official_prefix = f"{group}.{block}.{position}" if block is not None else f"{group}.{position}"
    if group == "middle_blocks":
        has_cross = _is_cross_attention(state_dict, "middle_blocks.1")
        names = ["resnet_1", "cross_attention", "resnet_2"] if has_cross else ["resnet_1", "resnet_2"]
        target = f"mid_block.{names[position]}"
    else:
        block_group = "down_blocks" if group == "input_blocks" else "up_blocks"
        index = int(block) - 1 if group == "input_blocks" else int(block)
        if position == 0:
            part = "resnet"
        elif _is_cross_attention(state_dict, official_prefix):
            part = "cross_attention"
        else:
            part = "upsampler"
        target = f"{block_group}.{index}.{part}"
    return f"{target}.{_rename_module(state_dict, official_prefix, suffix)}"


def _fit_shape(name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Official 2D/1D video convolution weights become the (1, k, k) / (k, 1, 1) 3D kernels used here."""
    if tensor.shape == shape:
        return tensor
    if name.endswith("spatial.weight") and tensor.ndim == 4:
        return tensor.unsqueeze(2)
    if name.endswith("temporal.weight") and tensor.ndim == 3:
        return tensor[..., None, None]
    return tensor


def map_state_dict(model: torch.nn.Module, official: Dict[str, torch.Tensor], key_fn, hint: str = "") -> dict:
    """Rename official weights onto ``model``: every official key must be used and every model key filled,
    with matching shapes; otherwise one error names the key and both shapes."""
    expected = model.state_dict()
    converted = {}
    for key, tensor in official.items():
        name = key_fn(official, key)
        if name not in expected:
            raise ConversionError(
                f"checkpoint key {key} (shape {list(tensor.shape)}) has no place in the model the flags describe"
                f" (it would be {name}){hint}"
            )
        value = _fit_shape(name, tensor, expected[name].shape)
        if value.shape != expected[name].shape:
            raise ConversionError(
                f"checkpoint key {key} has shape {list(tensor.shape)} but the flags give "
                f"{list(expected[name].shape)} for it{hint}"
            )
        converted[name] = value
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ConversionError(
            f"the model the flags describe needs {missing[0]} (shape {list(expected[missing[0]].shape)}), "
            f"which the checkpoint lacks ({len(missing)} missing keys){hint}"
        )
    return converted


# ----------------------------------------------------------------------------------------------------
# Super-resolution U-Net (official `ImageSuperResModel`): key mapping and what the state dict shows

# Official sub-layer names inside one residual block → ours.
_SR_RESNET_LAYERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _split_legacy_qkv(num_heads: int) -> Callable[[torch.Tensor], Tuple[torch.Tensor, ...]]:
    """The official fused 1x1 conv is ordered head by head, [q_h, k_h, v_h] within each head; we keep q, k, v apart."""

    def split(qkv: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        per_head = qkv.reshape(num_heads, 3, qkv.shape[0] // (3 * num_heads), *qkv.shape[1:])
        return tuple(per_head[:, part].reshape(-1, *qkv.shape[1:]) for part in range(3))

    return split


def _squeeze_conv1x1(weight: torch.Tensor) -> torch.Tensor:
    return weight.squeeze(-1) if weight.ndim == 3 else weight


def _source_map(model: SuperResolutionUNet) -> Dict[str, Tuple[str, Callable, int]]:
    """Every parameter name of `model` → (official name, transform, index into the transform's result)."""
    sources: Dict[str, Tuple[str, Callable, int]] = {}
    identity = lambda tensor: (tensor,)  # noqa: E731

    def add(new_prefix: str, official_prefix: str, module: torch.nn.Module) -> None:
        names = [name for name, _ in module.named_parameters()]
        if isinstance(module, SRResnetBlock):
            for name in names:
                layer, param = name.rsplit(".", 1)
                official_layer = next(o for o, n in _SR_RESNET_LAYERS.items() if n == layer)
                sources[f"{new_prefix}.{name}"] = (f"{official_prefix}.{official_layer}.{param}", identity, 0)
        elif isinstance(module, SRAttentionBlock):
            split = _split_legacy_qkv(module.num_heads)
            split_weight = lambda tensor: split(_squeeze_conv1x1(tensor))  # noqa: E731
            for part, layer in enumerate(("to_q", "to_k", "to_v")):
                sources[f"{new_prefix}.{layer}.weight"] = (f"{official_prefix}.qkv.weight", split_weight, part)
                sources[f"{new_prefix}.{layer}.bias"] = (f"{official_prefix}.qkv.bias", split, part)
            sources[f"{new_prefix}.to_out.weight"] = (
                f"{official_prefix}.proj_out.weight",
                lambda tensor: (_squeeze_conv1x1(tensor),),
                0,
            )
            sources[f"{new_prefix}.to_out.bias"] = (f"{official_prefix}.proj_out.bias", identity, 0)
            for param in ("weight", "bias"):
                sources[f"{new_prefix}.group_norm.{param}"] = (f"{official_prefix}.norm.{param}", identity, 0)
        elif isinstance(module, (SRDownsample, SRUpsample)):
            official_layer = "op" if isinstance(module, SRDownsample) else "conv"
            for param in ("weight", "bias"):
                sources[f"{new_prefix}.conv.{param}"] = (f"{official_prefix}.{official_layer}.{param}", identity, 0)
        else:  # a plain layer (conv, linear, norm): parameters keep their names
            for name in names:
                sources[f"{new_prefix}.{name}"] = (f"{official_prefix}.{name}", identity, 0)

    add("time_embedding.linear_1", "time_embed.0", model.time_embedding.linear_1)
    add("time_embedding.linear_2", "time_embed.2", model.time_embedding.linear_2)
    add("conv_in", "input_blocks.0.0", model.conv_in)

    # The official encoder is one flat list: [conv_in, (resnet[+attention]) x N, downsampler, ...].
    index = 1
    for level, block in enumerate(model.down_blocks):
        for i, resnet in enumerate(block.resnets):
            add(f"down_blocks.{level}.resnets.{i}", f"input_blocks.{index}.0", resnet)
            if block.attentions:
                add(f"down_blocks.{level}.attentions.{i}", f"input_blocks.{index}.1", block.attentions[i])
            index += 1
        if block.downsampler is not None:
            add(f"down_blocks.{level}.downsampler", f"input_blocks.{index}.0", block.downsampler)
            index += 1

    add("mid_block.resnets.0", "middle_block.0", model.mid_block.resnets[0])
    add("mid_block.attention", "middle_block.1", model.mid_block.attention)
    add("mid_block.resnets.1", "middle_block.2", model.mid_block.resnets[1])

    # The official decoder: one entry per resnet, holding [resnet, attention?, upsampler?].
    index = 0
    for level, block in enumerate(model.up_blocks):
        for i, resnet in enumerate(block.resnets):
            add(f"up_blocks.{level}.resnets.{i}", f"output_blocks.{index}.0", resnet)
            sub = 1
            if block.attentions:
                add(f"up_blocks.{level}.attentions.{i}", f"output_blocks.{index}.1", block.attentions[i])
                sub = 2
            if block.upsampler is not None and i == len(block.resnets) - 1:
                add(f"up_blocks.{level}.upsampler", f"output_blocks.{index}.{sub}", block.upsampler)
            index += 1

    add("conv_norm_out", "out.0", model.conv_norm_out)
    add("conv_out", "out.2", model.conv_out)
    return sources


def convert_official_sr_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping
) -> Dict[str, torch.Tensor]:
    """
    Rename and reshape an official super-resolution state dict for `SuperResolutionUNet(**config)`.

    Every official key must be used and every model parameter filled; otherwise a `ValueError` names the key (and,
    for a shape mismatch, both shapes). The input is left untouched.
    """
    with torch.device("meta"):
        model = SuperResolutionUNet(**config)
    expected = dict(model.named_parameters())
    sources = _source_map(model)

    converted: Dict[str, torch.Tensor] = {}
    used = set()
    cache: Dict[Tuple[str, int], Tuple[torch.Tensor, ...]] = {}
    for new_key, (official_key, transform, part) in sources.items():
        if official_key not in state_dict:
            raise ValueError(
                f"the official SR checkpoint lacks {official_key!r} (needed for {new_key!r}): it does not match the "
                "given configuration."
            )
        source = state_dict[official_key]
        cache_key = (official_key, id(transform))
        try:
            if cache_key not in cache:
                cache[cache_key] = transform(source)
            shape = tuple(cache[cache_key][part].shape)
        except RuntimeError:  # e.g. a fused qkv that cannot be split into the configured heads
            shape = None
        if shape != tuple(expected[new_key].shape):
            raise ValueError(
                f"official key {official_key!r} has shape {tuple(source.shape)}, which does not give {new_key!r} "
                f"its expected shape {tuple(expected[new_key].shape)}."
            )
        tensor = cache[cache_key][part]
        converted[new_key] = tensor.clone()
        used.add(official_key)

    missing = sorted(set(expected) - set(converted))
    if missing:  # a model parameter with no official source is a bug in this converter, never in the checkpoint
        raise ValueError(f"no official key maps to model parameter {missing[0]!r}.")
    unused = sorted(set(state_dict) - used)
    if unused:
        raise ValueError(
            f"official key {unused[0]!r} (and {len(unused) - 1} more) has no place in a SuperResolutionUNet with "
            "this configuration: the checkpoint was made with other settings or is not an SR checkpoint."
        )
    return converted


def _sr_group_by_index(keys, prefix: str) -> Dict[int, set]:
    """`{i: {rest, ...}}` for the keys spelled `prefix.i.rest` (all keys when `prefix` is empty)."""
    pattern = re.compile(rf"^{re.escape(prefix + '.') if prefix else ''}(\d+)\.(.+)$")
    found: Dict[int, set] = {}
    for key in keys:
        match = pattern.match(key)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


def infer_sr_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """
    Read from an official SR state dict what its shapes show: `in_channels`, `out_channels` (6 = learned sigma),
    `model_channels`, `channel_mult`, `num_res_blocks`, `attention_downsample_factors` (the levels that attend),
    `use_scale_shift_norm` and `resblock_updown`. Head counts, sizes and dropout are not visible and are left out.
    """
    for key in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"):
        if key not in state_dict:
            raise ValueError(
                f"state dict lacks {key!r}: it is not an official MM-Diffusion super-resolution checkpoint."
            )
    model_channels = state_dict["time_embed.0.weight"].shape[1]
    in_channels = state_dict["input_blocks.0.0.weight"].shape[1] // 2
    out_channels = state_dict["out.2.weight"].shape[0]

    # Decoder entries: sub-layer 0 is a resnet; then maybe an attention (qkv), then maybe an upsampler.
    output_blocks = _sr_group_by_index(state_dict, "output_blocks")
    if not output_blocks:
        raise ValueError("state dict has no 'output_blocks.*' keys: it is not an official super-resolution checkpoint.")
    kinds = []
    for index in range(len(output_blocks)):
        subs = _sr_group_by_index(output_blocks.get(index, ()), "")
        has_attention = any("qkv.weight" == name for name in subs.get(1, ()))
        upsampler = subs.get(2 if has_attention else 1)
        kinds.append((has_attention, upsampler))
    upsample_entries = [index for index, (_, upsampler) in enumerate(kinds) if upsampler is not None]
    num_res_blocks = (upsample_entries[0] + 1 if upsample_entries else len(kinds)) - 1
    if num_res_blocks < 1 or len(kinds) % (num_res_blocks + 1):
        raise ValueError(f"cannot read a level structure from {len(kinds)} official output blocks.")
    num_levels = len(kinds) // (num_res_blocks + 1)

    channel_mult, attention_factors = [], []
    for level in range(num_levels):
        first_entry = (num_levels - 1 - level) * (num_res_blocks + 1)
        width = state_dict[f"output_blocks.{first_entry}.0.out_layers.3.weight"].shape[0]
        channel_mult.append(width // model_channels)
        if kinds[first_entry][0]:
            attention_factors.append(2**level)

    first_resnet_width = state_dict["output_blocks.0.0.out_layers.3.weight"].shape[0]
    use_scale_shift_norm = state_dict["output_blocks.0.0.emb_layers.1.weight"].shape[0] == 2 * first_resnet_width
    resblock_updown = bool(upsample_entries) and any(
        name.startswith("in_layers.") for name in kinds[upsample_entries[0]][1]
    )
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "model_channels": model_channels,
        "channel_mult": tuple(channel_mult),
        "num_res_blocks": num_res_blocks,
        "attention_downsample_factors": tuple(attention_factors),
        "use_scale_shift_norm": use_scale_shift_norm,
        "resblock_updown": resblock_updown,
    }


# ----------------------------------------------------------------------------------------------------
# Flag resolution


def _format_flag(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _official_defaults(table: dict) -> dict:
    return {name: kind(default) if isinstance(default, str) else default for name, (kind, default) in table.items()}


def resolve_flags(args: argparse.Namespace, inferred: dict, log=print) -> dict:
    """Preset, then explicit flags over it; omitted flags from what the weights show (`inferred`), then from
    the official defaults. With neither preset nor flags the paper configuration is assumed and printed."""
    explicit = {name: getattr(args, name) for name in ALL_FLAGS if getattr(args, name) is not None}
    if args.preset:
        base = dict(PRESETS[args.preset])
    elif explicit:
        base = {}
    else:
        base = dict(PRESETS["landscape"])
        log(
            "no --preset and no official flags given: assuming the paper configuration "
            + " ".join(f"--{k} {_format_flag(v)}" for k, v in base.items())
        )
    return {**_official_defaults(ALL_FLAGS), **inferred, **base, **explicit}


def check_coupled_flags(flags: dict, state_dict: dict) -> None:
    """Check what the state dict's shapes cannot: the size flags' form and the middle block's cross-attention."""
    video_size, audio_size = flags["video_size"], flags["audio_size"]
    if len(video_size) != 4 or len(audio_size) != 2:
        raise ConversionError(
            f"--video_size must be F,C,H,W and --audio_size C,L, got {_format_flag(video_size)} and "
            f"{_format_flag(audio_size)}"
        )
    windows_give_mid = list(flags["cross_attention_windows"]) == [1, 4, 8]
    if windows_give_mid != _is_cross_attention(state_dict, "middle_blocks.1"):
        raise ConversionError(
            f"--cross_attention_windows {_format_flag(flags['cross_attention_windows'])} "
            + ("gives" if windows_give_mid else "gives no")
            + " middle-block cross-attention (the official model adds it only for windows 1,4,8), but the "
            + ("checkpoint has none (no key middle_blocks.1.v_qkv.weight)" if windows_give_mid else
               f"checkpoint has it (key middle_blocks.1.v_qkv.weight, shape "
               f"{list(state_dict['middle_blocks.1.v_qkv.weight'].shape)})")
        )


def coupled_inferred_flags(state_dict) -> dict:
    """What the coupled state dict shows, as official flags (frame and audio channels inside the sizes)."""
    inferred = infer_coupled_flags(state_dict)
    defaults = _official_defaults(COUPLED_MODEL_FLAGS)
    video_size = list(defaults["video_size"])
    video_size[1] = inferred["video_channels"]
    audio_size = [inferred["audio_channels"], defaults["audio_size"][1]]
    shown = {k: v for k, v in inferred.items() if k in COUPLED_MODEL_FLAGS}
    return {**shown, "video_size": video_size, "audio_size": audio_size}


def sr_inferred_flags(state_dict) -> dict:
    """What the SR state dict shows, as official flags."""
    inferred = infer_sr_config_from_state_dict(state_dict)
    return {
        "sr_num_channels": inferred["model_channels"],
        "sr_num_res_blocks": inferred["num_res_blocks"],
        "sr_channel_mult": list(inferred["channel_mult"]),
        "sr_attention_resolutions": list(inferred["attention_downsample_factors"]),
        "sr_use_scale_shift_norm": inferred["use_scale_shift_norm"],
        "sr_resblock_updown": inferred["resblock_updown"],
        "sr_learn_sigma": inferred["out_channels"] == 2 * inferred["in_channels"],
    }


def sr_unet_config(flags: dict) -> dict:
    """SuperResolutionUNet config from official SR flags."""
    large_size = flags["large_size"]
    channel_mult = list(flags["sr_channel_mult"])
    if not channel_mult:
        if large_size not in _SR_CHANNEL_MULT:
            raise ConversionError(
                f"the official code derives the SR channel multipliers from --large_size (one of "
                f"{sorted(_SR_CHANNEL_MULT)}), not {large_size}; give --sr_channel_mult"
            )
        channel_mult = _SR_CHANNEL_MULT[large_size]
    if flags["sr_class_cond"]:
        raise ConversionError("--sr_class_cond True is not supported: the released SR models are unconditional")
    if flags["sr_use_new_attention_order"]:
        raise ConversionError("--sr_use_new_attention_order True is not supported: the released SR models use the legacy order")
    return {
        "sample_size": large_size,
        "low_res_size": flags["small_size"],
        "in_channels": 3,
        "out_channels": 6 if flags["sr_learn_sigma"] else 3,
        "model_channels": flags["sr_num_channels"],
        "channel_mult": channel_mult,
        "num_res_blocks": flags["sr_num_res_blocks"],
        "attention_downsample_factors": [f for f in flags["sr_attention_resolutions"] if f > 0],
        "num_heads": flags["sr_num_heads"],
        "num_head_channels": flags["sr_num_head_channels"],
        "num_heads_upsample": flags["sr_num_heads_upsample"],
        "use_scale_shift_norm": flags["sr_use_scale_shift_norm"],
        "resblock_updown": flags["sr_resblock_updown"],
        "dropout": flags["sr_dropout"],
    }


def build_coupled_unet(flags: dict) -> CoupledUNet:
    try:
        return CoupledUNet(**coupled_unet_config(flags))
    except ValueError as error:
        raise ConversionError(f"the flags describe a model that cannot be built: {error}") from None


def convert_coupled(state_dict, flags: dict) -> CoupledUNet:
    """A CoupledUNet holding the official weights."""
    model = build_coupled_unet(flags)
    model.load_state_dict(map_state_dict(model, state_dict, coupled_key), strict=True)
    return model.eval()


def convert_sr(state_dict, config: dict) -> SuperResolutionUNet:
    """A SuperResolutionUNet holding the official weights."""
    try:
        model = SuperResolutionUNet(**config)
        model.load_state_dict(convert_official_sr_state_dict(state_dict, config), strict=True)
    except ValueError as error:
        raise ConversionError(str(error).rstrip(".")) from None
    return model.eval()


def noise_schedule_config(steps: int, schedule: str) -> dict:
    """The official β schedules in diffusers' terms (the official linear schedule is scaled to its length)."""
    if schedule == "linear":
        scale = 1000 / steps
        return dict(num_train_timesteps=steps, beta_schedule="linear", beta_start=scale * 1e-4, beta_end=scale * 0.02)
    if schedule == "cosine":
        return dict(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2")
    raise ConversionError(f"--noise_schedule must be linear or cosine, got {schedule!r}")


# ----------------------------------------------------------------------------------------------------
# Entry point

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert(args: argparse.Namespace, log=print) -> Path:
    from diffusers import DDIMScheduler

    from .pipelines.mm_diffusion import MMDiffusionPipeline, MMDiffusionSRPipeline
    from .pipelines.mm_diffusion.pipeline_mm_diffusion_sr import official_ddim_scheduler
    from .schedulers.scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler

    if args.checkpoint is None and args.sr_checkpoint is None:
        raise ConversionError("nothing to convert: give --checkpoint, --sr-checkpoint or both")
    check_can_write(args.output, args.force, expect_dir=True)

    inferred = {}
    coupled_state = sr_state = None
    if args.checkpoint is not None:
        coupled_state = load_state_dict(args.checkpoint)
        _require_kind(coupled_state, args.checkpoint, "coupled")
        inferred.update(coupled_inferred_flags(coupled_state))
    if args.sr_checkpoint is not None:
        sr_state = load_state_dict(args.sr_checkpoint)
        _require_kind(sr_state, args.sr_checkpoint, "super-resolution")
        inferred.update(sr_inferred_flags(sr_state))
    flags = resolve_flags(args, inferred, log)

    components = {}
    if coupled_state is not None:
        check_coupled_flags(flags, coupled_state)
        components["unet"] = convert_coupled(coupled_state, flags)
        components["scheduler"] = MMDiffusionDPMSolverScheduler(
            **noise_schedule_config(flags["diffusion_steps"], flags["noise_schedule"])
        )
    if sr_state is not None:
        components["sr_unet"] = convert_sr(sr_state, sr_unet_config(flags))
        components["sr_scheduler"] = DDIMScheduler.from_config(
            official_ddim_scheduler().config,
            **noise_schedule_config(flags["sr_diffusion_steps"], flags["noise_schedule"]),
        )

    if "unet" in components:
        pipeline = MMDiffusionPipeline(**components, frame_rate=flags["video_fps"], sample_rate=flags["audio_fps"])
    else:
        pipeline = MMDiffusionSRPipeline(**components)
    pipeline.to(DTYPES[args.dtype])
    with atomic_directory(args.output, force=args.force) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    for name, model in components.items():
        if isinstance(model, torch.nn.Module):
            log(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    log(f"wrote {args.output} ({type(pipeline).__name__}, {args.dtype})")
    return Path(args.output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert(args)
    except (ConversionError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
