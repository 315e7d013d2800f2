"""GroupNorm variants of the coupled U-Net, all computed in float32 as the official model does."""

import torch
import torch.nn.functional as F
from torch import nn

NUM_GROUPS = 32


def group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` applied to ``[B, C, ...]`` in float32, returned in the input dtype."""
    return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)


def video_group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of video ``[B, C, F, H, W]`` over all frames jointly.

    The official layer takes ``[B, F, C, H, W]`` and moves channels first only when the frame
    count differs from the channel count; when ``F == C`` it normalises the frame axis as if it were
    the channel axis. Checkpoints trained that way depend on it, so it is reproduced here.
    """
    if x.shape[1] == x.shape[2]:
        return group_norm(x.transpose(1, 2), norm).transpose(1, 2)
    return group_norm(x, norm)


def grouped_norm(x: torch.Tensor, norm: nn.GroupNorm, reduce_dims) -> torch.Tensor:
    """GroupNorm of ``[B, C, F, N]`` with statistics over ``reduce_dims`` of the grouped view
    ``[B, groups, C // groups, F, N]``: (2, 4) normalises each frame on its own, (2, 3) each pixel
    over time. Same result as moving frames or pixels into the batch axis, without the copies."""
    batch, channels, frames, tokens = x.shape
    grouped = x.float().view(batch, norm.num_groups, channels // norm.num_groups, frames, tokens)
    var, mean = torch.var_mean(grouped, dim=reduce_dims, keepdim=True, correction=0)
    grouped = (grouped - mean) * torch.rsqrt(var + norm.eps)
    out = grouped.view_as(x) * norm.weight.float()[:, None, None] + norm.bias.float()[:, None, None]
    return out.to(x.dtype)
