"""Official MM-Diffusion super-resolution checkpoints (`Landscape_SR.pt`, `AIST++_SR.pt`) → `SuperResolutionUNet`."""

import re
from typing import Callable, Dict, Mapping, Tuple

import torch

from .models.sr_unet import SRAttentionBlock, SRDownsample, SRResnetBlock, SRUpsample, SuperResolutionUNet

# Official sub-layer names inside one residual block → ours.
_RESNET_LAYERS = {
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
                official_layer = next(o for o, n in _RESNET_LAYERS.items() if n == layer)
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


def _group_by_index(keys, prefix: str) -> Dict[int, set]:
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
    output_blocks = _group_by_index(state_dict, "output_blocks")
    if not output_blocks:
        raise ValueError("state dict has no 'output_blocks.*' keys: it is not an official super-resolution checkpoint.")
    kinds = []
    for index in range(len(output_blocks)):
        subs = _group_by_index(output_blocks.get(index, ()), "")
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
