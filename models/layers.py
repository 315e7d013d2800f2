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
from .normalization import NUM_GROUPS, group_norm, modulated_group_norm, video_group_norm

def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return dilation * (kernel_size - 1) // 2


def _onednn_preferred(x: torch.Tensor) -> bool:
    """For float32 batch-1 video on the CPU, PyTorch's backend heuristic sends 3D convolutions with small
    channel counts to an im2col path 2-4x slower than oneDNN (which it picks for larger inputs)."""
    return (
        not torch.compiler.is_compiling()  # compiled graphs choose their own convolution kernels
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] == 1
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


class VideoConv3d(nn.Conv3d):
    """Conv3d on ``[B, C, F, H, W]``, through oneDNN where PyTorch's heuristic would not pick it."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if _onednn_preferred(video) and self.padding_mode == "zeros":
            return torch.ops.aten.mkldnn_convolution(
                video, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(video)


class TemporalConv3d(nn.Conv3d):
    """A ``(k, 1, 1)`` Conv3d, run as the equal 2D convolution over (frames, pixels), which PyTorch
    computes about twice as fast on the CPU."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = video.shape
        out = F.conv2d(
            video.view(batch, channels, frames, height * width),
            self.weight.flatten(-2),
            self.bias,
            padding=(self.padding[0], 0),
        )
        return out.view(batch, -1, frames, height, width)


class PointwiseConv3d(nn.Conv3d):
    """A ``1 x 1 x 1`` Conv3d, run as a matrix product over the flattened positions (the generic 3D
    convolution path copies its input first)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        out = F.conv1d(video.flatten(2), self.weight.flatten(2), self.bias)
        return out.view(video.shape[0], -1, *video.shape[2:])


class VideoConv2Plus1D(nn.Module):
    """A spatial ``k x k`` convolution on every frame followed by a temporal convolution of size ``k``
    on every pixel (the official "2d+1d" video convolution), both with "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        pad = _same_padding(kernel_size)
        self.spatial = VideoConv3d(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, pad, pad))
        self.temporal = TemporalConv3d(out_channels, out_channels, (kernel_size, 1, 1), padding=(pad, 0, 0))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.spatial(video))


def video_pointwise_conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    return PointwiseConv3d(in_channels, out_channels, 1)


def audio_conv(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(
        in_channels, out_channels, kernel_size, padding=_same_padding(kernel_size, dilation), dilation=dilation
    )


# Video is resampled in space only ((1, 2, 2)), audio by 4 in time, as in the official model.
VIDEO_RESAMPLE = (1, 2, 2)
AUDIO_RESAMPLE = 4


def resample_video(video: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    if direction == "down":
        # Frames folded into channels: a 2D pooling (CPU bfloat16 has no 3D average pooling).
        batch, channels, frames, height, width = video.shape
        planes = F.avg_pool2d(video.view(batch, channels * frames, height, width), VIDEO_RESAMPLE[1:])
        return planes.view(batch, channels, frames, *planes.shape[-2:])
    if direction == "up":
        return F.interpolate(video, scale_factor=VIDEO_RESAMPLE, mode="nearest")
    return video


def resample_audio(audio: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    if direction == "down":
        return F.avg_pool1d(audio, AUDIO_RESAMPLE, AUDIO_RESAMPLE)
    if direction == "up":
        return F.interpolate(audio, scale_factor=AUDIO_RESAMPLE, mode="nearest")
    return audio


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a freshly computed tensor, in place when no gradient is recorded (one activation-sized
    buffer less at the peak); with autograd it would have to keep a copy of the input anyway."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


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
        video_h = self.video_conv1(_silu(video_group_norm(video, self.video_norm1)))
        audio_h = self.audio_conv1(_silu(group_norm(audio, self.audio_norm1)))
        video_h, video = resample_video(video_h, self.resample), resample_video(video, self.resample)
        audio_h, audio = resample_audio(audio_h, self.resample), resample_audio(audio, self.resample)

        emb = self.time_emb_proj(F.silu(temb)).to(video.dtype)
        if self.use_scale_shift_norm:
            scale, shift = emb.chunk(2, dim=1)
            video_h = modulated_group_norm(video_h, self.video_norm2, scale, shift)
            audio_h = modulated_group_norm(audio_h, self.audio_norm2, scale, shift)
        else:
            video_h = video_group_norm(video_h + emb[:, :, None, None, None], self.video_norm2)
            audio_h = group_norm(audio_h + emb[:, :, None], self.audio_norm2)
        video_h = self.video_conv2(self.dropout(_silu(video_h)))
        audio_h = self.audio_conv2(self.dropout(_silu(audio_h)))

        if self.video_conv_shortcut is not None:
            video, audio = self.video_conv_shortcut(video), self.audio_conv_shortcut(audio)
        # The branch outputs are fresh tensors that nothing else holds: sum into them.
        video, audio = video_h.add_(video), audio_h.add_(audio)

        if self.video_attention is not None:
            video = self.video_attention(video)
        if self.audio_attention is not None:
            audio = self.audio_attention(audio)
        return video, audio
