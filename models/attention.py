"""Attention layers of the coupled U-Net: per-modality self-attention and the random-shift
multi-modal cross-attention (RS-MMA).

Video tensors are ``[B, C, F, H, W]``, audio ``[B, C, T]``. Heads split the channel axis as
``channel = head * head_dim + i`` (the official QKV order: q, k, v are the three thirds of the
projection, each then split into heads). All attention runs through
``F.scaled_dot_product_attention``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .normalization import NUM_GROUPS, group_norm, grouped_norm



def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, C, ...]`` -> ``[B, heads, head_dim, ...]``."""
    return x.unflatten(1, (num_heads, x.shape[1] // num_heads))


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
        qkv = self.to_qkv(group_norm(audio, self.norm))
        q, k, v = (_split_heads(t, self.num_heads).transpose(-1, -2) for t in qkv.chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, T, head_dim]
        return audio + self.to_out(out.transpose(-1, -2).flatten(1, 2))


class _VideoAxisAttention(nn.Module):
    """Self-attention of video ``[B, C, F, H, W]`` along one axis: ``"spatial"`` (the pixels of
    each frame attend to each other) or ``"temporal"`` (each pixel attends over frames)."""

    def __init__(self, channels: int, num_heads: int, axis: str):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.spatial = axis == "spatial"
        self.norm = nn.GroupNorm(NUM_GROUPS, channels)
        self.to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.to_out = nn.Conv1d(channels, channels, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = video.shape
        tokens = video.reshape(batch, channels, frames, height * width)
        normed = grouped_norm(tokens, self.norm, (2, 4) if self.spatial else (2, 3))
        qkv = self.to_qkv(normed.flatten(2)).view(batch, 3 * channels, frames, height * width)
        # [B, heads, head_dim, F, HW] -> sequence axis last but one, head_dim last.
        order = (0, 1, 3, 4, 2) if self.spatial else (0, 1, 4, 3, 2)
        q, k, v = (_split_heads(t, self.num_heads).permute(order) for t in qkv.chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)
        inverse = (0, 1, 4, 2, 3) if self.spatial else (0, 1, 4, 3, 2)
        out = out.permute(inverse).reshape(batch, channels, frames * height * width)
        return video + self.to_out(out).view_as(video)


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


def _gather_windows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Keys/values of each frame's window: ``x`` ``[B, heads, head_dim, F, N]`` and ``index``
    ``[B, F, window]`` -> ``[B, heads, F, window * N, head_dim]``."""
    batch, heads, head_dim, frames, tokens = x.shape
    per_frame = x.permute(0, 3, 1, 4, 2)  # [B, F, heads, N, head_dim]
    batch_index = torch.arange(batch, device=x.device)[:, None, None]
    windows = per_frame[batch_index, index]  # [B, F, window, heads, N, head_dim]
    return windows.permute(0, 3, 1, 2, 4, 5).reshape(batch, heads, frames, -1, head_dim)


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

    def _qkv(self, tokens: torch.Tensor, norm: nn.GroupNorm, to_qkv: nn.Conv1d, frames: int):
        qkv = to_qkv(group_norm(tokens, norm))
        # [B, heads, head_dim, F, tokens per frame]
        return [_split_heads(t, self.num_heads).unflatten(-1, (frames, -1)) for t in qkv.chunk(3, dim=1)]

    def forward(self, video: torch.Tensor, audio: torch.Tensor, shift: Optional[torch.Tensor] = None):
        batch, channels, frames, height, width = video.shape
        audio_length = audio.shape[-1]
        video_q, video_k, video_v = self._qkv(video.flatten(2), self.video_norm, self.video_to_qkv, frames)
        audio_q, audio_k, audio_v = self._qkv(audio, self.audio_norm, self.audio_to_qkv, frames)

        def queries(q):  # [B, heads, F, tokens per frame, head_dim]
            return q.permute(0, 1, 3, 4, 2)

        if self.window >= frames:
            # Every window covers all frames, whatever the shift: plain full cross-attention.
            def keys(x):  # [B, heads, all tokens, head_dim]
                return x.flatten(3).transpose(-1, -2)

            video_out = F.scaled_dot_product_attention(queries(video_q).flatten(2, 3), keys(audio_k), keys(audio_v))
            audio_out = F.scaled_dot_product_attention(queries(audio_q).flatten(2, 3), keys(video_k), keys(video_v))
        else:
            if shift is None:
                shift = torch.zeros(batch, dtype=torch.long, device=video.device)
            index = window_frame_index(frames, self.window, shift)
            video_out = F.scaled_dot_product_attention(
                queries(video_q), _gather_windows(audio_k, index), _gather_windows(audio_v, index)
            ).flatten(2, 3)
            audio_out = F.scaled_dot_product_attention(
                queries(audio_q), _gather_windows(video_k, index), _gather_windows(video_v, index)
            ).flatten(2, 3)

        # [B, heads, tokens, head_dim] -> [B, C, tokens]
        video_out = video_out.permute(0, 1, 3, 2).reshape(batch, channels, frames, height, width)
        audio_out = audio_out.permute(0, 1, 3, 2).reshape(batch, channels, audio_length)
        return video + self.video_to_out(video_out), audio + self.audio_to_out(audio_out)
