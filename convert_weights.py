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
from typing import Dict, List, Optional, Sequence

import torch

from .file_utils import atomic_directory, check_can_write

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
    "num_workers sr_diffusion_steps sr_timestep_respacing sr_use_new_attention_order sr_num_heads_upsample "
    "sr_class_cond sr_dropout lr log_interval save_interval use_db frame_gap data_dir resume_checkpoint"
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
    },
}
PRESETS["aist++"] = dict(PRESETS["landscape"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion convert",
        description="Convert official MM-Diffusion checkpoints into a diffusers folder of safetensors.",
    )
    parser.add_argument("--checkpoint", type=Path, help="official coupled audio-video checkpoint (.pt or .safetensors)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="architecture of a released checkpoint")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    official = parser.add_argument_group("official sampling-script flags (verbatim)")
    for name, (kind, _) in {**COUPLED_MODEL_FLAGS, **PIPELINE_FLAGS}.items():
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

    inputs = [index for index in _block_indices(state_dict, "input_blocks") if index > 0]
    mults, video_attention, audio_attention, cross_attention = [], [], [], []
    scale_shift = False
    for level in range(num_levels):
        first = 1 + level * (num_res_blocks + 1)
        prefix = f"input_blocks.{first}.0"
        if f"{prefix}.video_out_layers.3.video_conv.weight" not in state_dict or first not in inputs:
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
        "mid_cross_attention": _is_cross_attention(state_dict, "middle_blocks.1"),
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
# Flag resolution


def resolve_coupled_flags(args: argparse.Namespace, state_dict, log=print) -> dict:
    """Preset, then explicit flags over it; omitted flags from what the weights show, then from the
    official defaults. With neither preset nor flags the paper configuration is assumed and printed."""
    given = {name: getattr(args, name) for name in {**COUPLED_MODEL_FLAGS, **PIPELINE_FLAGS}}
    explicit = {name: value for name, value in given.items() if value is not None}
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
    stated = {**base, **explicit}

    inferred = infer_coupled_flags(state_dict)
    defaults = {
        name: kind(default) if isinstance(default, str) else default
        for name, (kind, default) in {**COUPLED_MODEL_FLAGS, **PIPELINE_FLAGS}.items()
    }
    flags = {**defaults, **{k: v for k, v in inferred.items() if k in defaults}, **stated}
    video_size, audio_size = list(flags["video_size"]), list(flags["audio_size"])
    if "video_size" not in stated:
        video_size[1] = inferred["video_channels"]
    if "audio_size" not in stated:
        audio_size[0] = inferred["audio_channels"]
    flags["video_size"], flags["audio_size"] = video_size, audio_size
    if len(video_size) != 4 or len(audio_size) != 2:
        raise ConversionError(
            f"--video_size must be F,C,H,W and --audio_size C,L, got {_format_flag(video_size)} and "
            f"{_format_flag(audio_size)}"
        )
    windows_show_mid = flags["cross_attention_windows"] == [1, 4, 8]
    if windows_show_mid != inferred["mid_cross_attention"]:
        raise ConversionError(
            f"--cross_attention_windows {_format_flag(flags['cross_attention_windows'])} "
            + ("gives" if windows_show_mid else "gives no")
            + " middle-block cross-attention (the official model adds it only for windows 1,4,8), but the "
            + ("checkpoint has none (no key middle_blocks.1.v_qkv.weight)" if windows_show_mid else
               f"checkpoint has it (key middle_blocks.1.v_qkv.weight, shape "
               f"{list(state_dict['middle_blocks.1.v_qkv.weight'].shape)})")
        )
    return flags


def _format_flag(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def build_coupled_unet(flags: dict):
    from .models.coupled_unet import CoupledUNet

    try:
        return CoupledUNet(**coupled_unet_config(flags))
    except ValueError as error:
        raise ConversionError(f"the flags describe a model that cannot be built: {error}") from None


def convert_coupled(state_dict, flags: dict):
    """A CoupledUNet holding the official weights."""
    model = build_coupled_unet(flags)
    converted = map_state_dict(model, state_dict, coupled_key)
    model.load_state_dict(converted, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# Entry point

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert(args: argparse.Namespace, log=print) -> Path:
    if args.checkpoint is None:
        raise ConversionError("nothing to convert: give --checkpoint")
    check_can_write(args.output, args.force, expect_dir=True)
    state_dict = load_state_dict(args.checkpoint)
    _require_kind(state_dict, args.checkpoint, "coupled")
    flags = resolve_coupled_flags(args, state_dict, log)
    unet = convert_coupled(state_dict, flags)

    dtype = DTYPES[args.dtype]
    with atomic_directory(args.output, force=args.force) as tmp:
        unet.to(dtype).save_pretrained(tmp / "unet", safe_serialization=True)
    log(f"wrote {args.output} ({sum(p.numel() for p in unet.parameters()):,} parameters, {args.dtype})")
    return Path(args.output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        convert(args)
    except (ConversionError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
