"""GroupNorm variants of the coupled U-Net, with float32 statistics and arithmetic as in the official model.

All of them keep the input's memory layout (channels-first or token-major, see `layers.py`) and call
PyTorch's fused GroupNorm kernel: per-frame and per-pixel statistics by moving the sequences into the
batch axis, the timestep modulation as one fused pass after it.
"""

import torch
import torch.nn.functional as F
from torch import nn

NUM_GROUPS = 32


def group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` applied to ``[B, C, ...]`` in float32, returned in the input dtype and memory layout.

    ``[B, C, T]`` goes through ``[B, C, 1, T]``: PyTorch's kernel keeps 4-D and 5-D channels-last
    layouts, but would copy token-major 3-D tensors to channels-first."""
    if x.ndim == 3:
        return group_norm(x.unsqueeze(2), norm).squeeze(2)
    weight, bias = norm.weight.float(), norm.bias.float()
    if x.device.type == "cpu":
        # PyTorch's CPU kernel takes reduced-precision input with float32 parameters and computes in float32.
        return F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
    return F.group_norm(x.float(), norm.num_groups, weight, bias, norm.eps).to(x.dtype)


def _frames_are_channels(x: torch.Tensor) -> bool:
    """The official layer takes video as ``[B, F, C, H, W]`` and moves channels first only when the
    frame count differs from the channel count; when ``F == C`` it normalises the frame axis as if it
    were the channel axis. Checkpoints trained that way depend on it, so it is reproduced here."""
    return x.ndim == 5 and x.shape[1] == x.shape[2]


def video_group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of video ``[B, C, F, H, W]`` over all frames jointly (with the official ``F == C`` quirk)."""
    if _frames_are_channels(x):
        return group_norm(x.transpose(1, 2), norm).transpose(1, 2)
    return group_norm(x, norm)


def modulated_group_norm(
    x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` for ``[B, C, ...]`` (video with the official ``F == C`` quirk),
    ``scale``/``shift`` of shape ``[B, C]``. The modulation is one fused pass (``addcmul``)."""
    spread = (1,) * (x.ndim - 2)
    normed = video_group_norm(x, norm) if x.ndim == 5 else group_norm(x, norm)
    return torch.addcmul(shift.view(*shift.shape, *spread), normed, 1 + scale.view(*scale.shape, *spread))


def framewise_norm_tokens(video: torch.Tensor, norm: nn.GroupNorm, axis: str) -> torch.Tensor:
    """GroupNorm of video ``[B, C, F, H, W]`` with statistics per frame (``axis="spatial"``: each frame's
    pixels) or per pixel (``"temporal"``: each pixel over the frames), returned token-major as the
    attention consumes it: ``[B * F, H * W, C]`` or ``[B * H * W, F, C]``.

    The sequences are moved into the batch axis so that PyTorch's fused GroupNorm computes the
    statistics (for token-major video, the frames without a copy)."""
    batch, channels, frames, height, width = video.shape
    if axis == "spatial":
        sequences = video.transpose(1, 2).reshape(batch * frames, channels, height, width)
        return group_norm(sequences, norm).permute(0, 2, 3, 1).reshape(batch * frames, height * width, channels)
    if video.stride(1) == 1:  # token-major: [B * HW, F, C] in memory (explicitly: for a batch of one the
        # reshape is a strided view), read as [B * HW, C, F]
        pixels = video.permute(0, 3, 4, 2, 1).reshape(batch * height * width, frames, channels)
        sequences = pixels.contiguous().transpose(1, 2)
    else:
        sequences = video.permute(0, 3, 4, 1, 2).reshape(batch * height * width, channels, frames)
    return group_norm(sequences, norm).transpose(1, 2)
