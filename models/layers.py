"""Convolution, normalisation and residual layers of the coupled audio-video U-Net.

Inside the model, video is kept as ``[B, C, F, H, W]`` (channels first, frames as the depth axis)
so that the factorised 2D+1D convolutions run as 3D convolutions with ``(1, k, k)`` and ``(k, 1, 1)``
kernels and GroupNorm over frames jointly needs no permutes. Audio is ``[B, C, T]``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AudioSelfAttention, VideoSelfAttention
from .normalization import NUM_GROUPS, group_norm, video_group_norm

def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return dilation * (kernel_size - 1) // 2


class VideoConv2Plus1D(nn.Module):
    """A spatial ``k x k`` convolution on every frame followed by a temporal convolution of size ``k``
    on every pixel (the official "2d+1d" video convolution), both with "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        pad = _same_padding(kernel_size)
        self.spatial = nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, pad, pad))
        self.temporal = nn.Conv3d(out_channels, out_channels, (kernel_size, 1, 1), padding=(pad, 0, 0))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.spatial(video))


def video_pointwise_conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, 1)


def audio_conv(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(
        in_channels, out_channels, kernel_size, padding=_same_padding(kernel_size, dilation), dilation=dilation
    )


# Video is resampled in space only ((1, 2, 2)), audio by 4 in time, as in the official model.
VIDEO_RESAMPLE = (1, 2, 2)
AUDIO_RESAMPLE = 4


def resample_video(video: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    if direction == "down":
        return F.avg_pool3d(video, VIDEO_RESAMPLE, VIDEO_RESAMPLE)
    if direction == "up":
        return F.interpolate(video, scale_factor=VIDEO_RESAMPLE, mode="nearest")
    return video


def resample_audio(audio: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    if direction == "down":
        return F.avg_pool1d(audio, AUDIO_RESAMPLE, AUDIO_RESAMPLE)
    if direction == "up":
        return F.interpolate(audio, scale_factor=AUDIO_RESAMPLE, mode="nearest")
    return audio


class CoupledResBlock(nn.Module):
    """Residual block of the coupled U-Net: a video branch (2D+1D convolutions) and an audio branch
    (dilated 1D convolutions) sharing one timestep embedding, with optional up/down resampling and
    optional per-modality self-attention after the residual sum.

    Unlike ADM, the resampling is applied after the whole input stack (norm, SiLU, convolution).
    """

    def __init__(
        self,
        in_channels: int,
        embedding_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        audio_dilation: int = 1,
        use_scale_shift_norm: bool = False,
        resample: Optional[str] = None,
        video_attention: bool = False,
        audio_attention: bool = False,
        num_attention_heads: int = 4,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample

        self.video_norm1 = nn.GroupNorm(NUM_GROUPS, in_channels)
        self.video_conv1 = VideoConv2Plus1D(in_channels, out_channels, 3)
        self.audio_norm1 = nn.GroupNorm(NUM_GROUPS, in_channels)
        self.audio_conv1 = audio_conv(in_channels, out_channels, 3, dilation=audio_dilation)

        self.time_emb_proj = nn.Linear(embedding_channels, 2 * out_channels if use_scale_shift_norm else out_channels)

        self.video_norm2 = nn.GroupNorm(NUM_GROUPS, out_channels)
        self.audio_norm2 = nn.GroupNorm(NUM_GROUPS, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.video_conv2 = video_pointwise_conv(out_channels, out_channels)
        self.audio_conv2 = audio_conv(out_channels, out_channels, 1)

        if out_channels != in_channels:
            self.video_conv_shortcut = video_pointwise_conv(in_channels, out_channels)
            self.audio_conv_shortcut = audio_conv(in_channels, out_channels, 1)
        else:
            self.video_conv_shortcut = self.audio_conv_shortcut = None

        self.video_attention = VideoSelfAttention(out_channels, num_attention_heads) if video_attention else None
        self.audio_attention = AudioSelfAttention(out_channels, num_attention_heads) if audio_attention else None

    def forward(self, video: torch.Tensor, audio: torch.Tensor, temb: torch.Tensor):
        video_h = self.video_conv1(F.silu(video_group_norm(video, self.video_norm1)))
        audio_h = self.audio_conv1(F.silu(group_norm(audio, self.audio_norm1)))
        video_h, video = resample_video(video_h, self.resample), resample_video(video, self.resample)
        audio_h, audio = resample_audio(audio_h, self.resample), resample_audio(audio, self.resample)

        emb = self.time_emb_proj(F.silu(temb)).to(video.dtype)
        video_emb = emb[:, :, None, None, None]
        audio_emb = emb[:, :, None]
        if self.use_scale_shift_norm:
            video_scale, video_shift = video_emb.chunk(2, dim=1)
            audio_scale, audio_shift = audio_emb.chunk(2, dim=1)
            video_h = video_group_norm(video_h, self.video_norm2) * (1 + video_scale) + video_shift
            audio_h = group_norm(audio_h, self.audio_norm2) * (1 + audio_scale) + audio_shift
        else:
            video_h = video_group_norm(video_h + video_emb, self.video_norm2)
            audio_h = group_norm(audio_h + audio_emb, self.audio_norm2)
        video_h = self.video_conv2(self.dropout(F.silu(video_h)))
        audio_h = self.audio_conv2(self.dropout(F.silu(audio_h)))

        if self.video_conv_shortcut is not None:
            video, audio = self.video_conv_shortcut(video), self.audio_conv_shortcut(audio)
        video, audio = video + video_h, audio + audio_h

        if self.video_attention is not None:
            video = self.video_attention(video)
        if self.audio_attention is not None:
            audio = self.audio_attention(audio)
        return video, audio
