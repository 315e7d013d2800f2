"""Attention layers of the coupled U-Net: per-modality self-attention and the random-shift
multi-modal cross-attention (RS-MMA).

Video tensors are ``[B, C, F, H, W]``, audio ``[B, C, T]``, both stored token-major (see `layers`).
Heads split the channel axis as ``channel = head * head_dim + i`` (the official QKV order: q, k, v
are the three thirds of the projection, each then split into heads).

Speed notes. The token-major activations are normalised and projected as ``[..., tokens, 3 * C]``,
so that q, k and v are views with the head dimension contiguous and every attention is a 4-D
``F.scaled_dot_product_attention`` call: that is what PyTorch's fused (flash) CPU kernel takes; 5-D
inputs or a strided head dimension fall back to a kernel several times slower that also
materialises the full attention matrix. The fused kernel returns token-major output, which the
output projection consumes without a copy.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .normalization import NUM_GROUPS, framewise_norm_tokens, group_norm


def _pointwise(conv: nn.Module):
    """Weight ``[out, in]`` and bias of a kernel-size-1 convolution, to apply as a linear map."""
    return conv.weight.flatten(1), conv.bias


def _split_qkv(qkv: torch.Tensor, num_heads: int):
    """``[N, L, 3 * C]`` -> q, k, v, each ``[N, heads, L, head_dim]`` (views)."""
    return qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)


def _split_kv(kv: torch.Tensor, num_heads: int):
    """``[N, L, 2 * C]`` -> k, v, each ``[N, heads, L, head_dim]`` (views)."""
    return kv.unflatten(-1, (2, num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """``[N, heads, L, head_dim]`` -> ``[N, L, C]``."""
    return out.transpose(1, 2).flatten(2)


class AudioSelfAttention(nn.Module):
    """Multi-head self-attention over the time axis of ``[B, C, T]``."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(NUM_GROUPS, channels)
        self.to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.to_out = nn.Conv1d(channels, channels, 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(group_norm(audio, self.norm).transpose(1, 2), *_pointwise(self.to_qkv))  # [B, T, 3C]
        out = F.scaled_dot_product_attention(*_split_qkv(qkv, self.num_heads))
        del qkv  # temporaries are released as soon as they are consumed: they set the peak memory
        out = F.linear(_merge_heads(out), *_pointwise(self.to_out))
        return audio + out.transpose(1, 2)


class _VideoAxisAttention(nn.Module):
    """Self-attention of video ``[B, C, F, H, W]`` along one axis: ``"spatial"`` (the pixels of
    each frame attend to each other) or ``"temporal"`` (each pixel attends over frames)."""

    def __init__(self, channels: int, num_heads: int, axis: str):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.axis = axis
        self.norm = nn.GroupNorm(NUM_GROUPS, channels)
        self.to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.to_out = nn.Conv1d(channels, channels, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = video.shape
        # Sequences in the batch axis: [B * F, HW, C] for spatial attention, [B * HW, F, C] for temporal.
        qkv = F.linear(framewise_norm_tokens(video, self.norm, self.axis), *_pointwise(self.to_qkv))
        out = F.scaled_dot_product_attention(*_split_qkv(qkv, self.num_heads))
        del qkv  # temporaries are released as soon as they are consumed: they set the peak memory
        out = F.linear(_merge_heads(out), *_pointwise(self.to_out))
        if self.axis == "spatial":
            out = out.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        else:
            out = out.view(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        return video + out


class VideoSelfAttention(nn.Module):
    """Spatial attention within each frame, then temporal attention across frames."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.spatial = _VideoAxisAttention(channels, num_heads, "spatial")
        self.temporal = _VideoAxisAttention(channels, num_heads, "temporal")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.spatial(video))


def window_frame_index(num_frames: int, window: int, shift: torch.Tensor) -> torch.Tensor:
    """Frames seen by each frame's window: ``[B, F, window]`` with entry ``(f + shift[b] + j) % F``."""
    frames = torch.arange(num_frames, device=shift.device)
    offsets = torch.arange(window, device=shift.device)
    return (frames[None, :, None] + shift[:, None, None] + offsets[None, None, :]) % num_frames


def _windows(x: torch.Tensor, window: int, shift: Optional[torch.Tensor]) -> torch.Tensor:
    """Keys and values of each frame's window: ``x`` ``[B, F, N, D]`` -> ``[B * F, window * N, D]``.

    A window of one frame without shift is ``x`` itself; otherwise the frames are gathered (one copy
    of ``window`` frames per frame, as the attention needs them side by side) with ``index_select``,
    which copies whole frames (several times faster than advanced indexing)."""
    batch, frames, tokens, depth = x.shape
    per_frame = x.reshape(batch * frames, tokens, depth)
    if window == 1 and shift is None:
        return per_frame
    if shift is None:
        shift = torch.zeros(batch, dtype=torch.long, device=x.device)
    index = window_frame_index(frames, window, shift) + frames * torch.arange(batch, device=x.device)[:, None, None]
    return per_frame.index_select(0, index.flatten()).view(batch * frames, window * tokens, depth)


class CrossModalAttention(nn.Module):
    """Random-shift multi-modal attention (RS-MMA).

    Video frame ``f`` attends to the audio of frames ``f + s, ..., f + s + window - 1`` (cyclically)
    and the audio segment of frame ``f`` attends to the video of the same frames, where ``s`` is the
    window shift. Both directions share one shift per block and sample.
    """

    def __init__(self, channels: int, num_heads: int, window: int, shifted: bool):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"cross-attention channels {channels} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = window
        self.shifted = shifted
        self.video_norm = nn.GroupNorm(NUM_GROUPS, channels)
        self.audio_norm = nn.GroupNorm(NUM_GROUPS, channels)
        self.video_to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.audio_to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.video_to_out = nn.Conv3d(channels, channels, 1)
        self.audio_to_out = nn.Conv1d(channels, channels, 1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, shift: Optional[torch.Tensor] = None):
        batch, channels, frames, height, width = video.shape
        # Token-major projections, frame by frame: [B, F, tokens per frame, 3C].
        video_tokens = group_norm(video, self.video_norm).permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)
        video_qkv = F.linear(video_tokens, *_pointwise(self.video_to_qkv)).view(batch, frames, height * width, -1)
        del video_tokens
        audio_tokens = group_norm(audio, self.audio_norm).transpose(1, 2)
        audio_qkv = F.linear(audio_tokens, *_pointwise(self.audio_to_qkv)).view(batch, frames, -1, 3 * channels)
        del audio_tokens

        if self.window >= frames:
            # Every window covers all frames, whatever the shift: plain full cross-attention.
            video_q, video_k, video_v = _split_qkv(video_qkv.flatten(1, 2), self.num_heads)
            audio_q, audio_k, audio_v = _split_qkv(audio_qkv.flatten(1, 2), self.num_heads)
            video_out = F.scaled_dot_product_attention(video_q, audio_k, audio_v)
            audio_out = F.scaled_dot_product_attention(audio_q, video_k, video_v)
            del video_q, video_k, video_v, audio_q, audio_k, audio_v
        else:
            # Each frame's queries against the keys and values of its window: frames in the batch axis.
            video_out = F.scaled_dot_product_attention(
                _split_qkv(video_qkv.flatten(0, 1), self.num_heads)[0],
                *_split_kv(_windows(audio_qkv[..., channels:], self.window, shift), self.num_heads),
            )
            audio_out = F.scaled_dot_product_attention(
                _split_qkv(audio_qkv.flatten(0, 1), self.num_heads)[0],
                *_split_kv(_windows(video_qkv[..., channels:], self.window, shift), self.num_heads),
            )
        del video_qkv, audio_qkv  # temporaries are released as soon as they are consumed: they set the peak memory
        video_out, audio_out = _merge_heads(video_out), _merge_heads(audio_out)

        video_out = F.linear(video_out, *_pointwise(self.video_to_out)).view(batch, -1, channels)
        audio_out = F.linear(audio_out, *_pointwise(self.audio_to_out)).view(batch, -1, channels)
        video = video + video_out.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return video, audio + audio_out.transpose(1, 2)
