"""Convolution, normalisation and residual layers of the coupled audio-video U-Net.

Tensors are indexed as video ``[B, C, F, H, W]`` and audio ``[B, C, T]`` (channels first, frames as
the depth axis), stored in one of two layouts that every layer here keeps:

- channels-first (plain contiguous), used with autograd: PyTorch's CPU GroupNorm backward is several
  times slower on channels-last tensors;
- token-major, used for CPU inference: video in ``torch.channels_last_3d`` (memory order
  ``[B, F, H, W, C]``), audio as ``[B, T, C]`` in memory (see `token_major`). oneDNN convolutions run
  on it without reordering their input and output (in bfloat16 several times faster than on
  channels-first tensors, in float32 up to twice), 1x1 convolutions are plain matrix products over
  it, and attention reads its tokens from it without transposing.

The factorised 2D+1D convolution runs as a ``(1, k, k)`` 3D convolution and a ``(k, 1)`` 2D
convolution over (frames, pixels), audio convolutions as ``(1, k)`` 2D convolutions over ``[B, C, 1, T]``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AudioSelfAttention, VideoSelfAttention
from .normalization import NUM_GROUPS, group_norm, modulated_group_norm, video_group_norm


def token_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` (video ``[B, C, F, H, W]`` or audio ``[B, C, T]``) stored channels-last, same values and shape."""
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def is_token_major(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenation along channels in the layout of ``a`` (``torch.cat`` of token-major 3-D tensors would
    return channels-first memory)."""
    if a.ndim == 3 and is_token_major(a):
        return torch.cat([a.transpose(1, 2), b.transpose(1, 2)], dim=2).transpose(1, 2)
    return torch.cat([a, b], dim=1)


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return dilation * (kernel_size - 1) // 2


def _onednn_preferred(x: torch.Tensor) -> bool:
    """For float32 batch-1 inputs on the CPU, PyTorch's backend heuristic sends convolutions with small
    channel counts to an im2col path 2-4x slower than oneDNN (which it picks for larger inputs)."""
    return (
        not torch.compiler.is_compiling()  # compiled graphs choose their own convolution kernels
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] == 1
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _convolution(x, weight, bias, padding, dilation) -> torch.Tensor:
    """A stride-1 2D or 3D convolution, through oneDNN where PyTorch's heuristic would not pick it."""
    if _onednn_preferred(x):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, (1,) * len(padding), dilation, 1)
    convolution = F.conv3d if x.ndim == 5 else F.conv2d
    return convolution(x, weight, bias, padding=padding, dilation=dilation)


class VideoConv3d(nn.Conv3d):
    """Conv3d on ``[B, C, F, H, W]`` (stride 1, zero padding)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return _convolution(video, self.weight, self.bias, self.padding, self.dilation)


class TemporalConv3d(nn.Conv3d):
    """A ``(k, 1, 1)`` Conv3d, run as the equal ``(k, 1)`` 2D convolution over (frames, pixels), which
    PyTorch computes about twice as fast on the CPU."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = video.shape
        if is_token_major(video):
            # Built from the [B, F, HW, C] view: a reshape of a batch of one would leave a batch stride that
            # PyTorch's layout detection reads as channels-first.
            pixels = video.permute(0, 2, 3, 4, 1).reshape(batch, frames, height * width, channels).permute(0, 3, 1, 2)
        else:
            pixels = video.reshape(batch, channels, frames, height * width)
        out = _convolution(pixels, self.weight.flatten(-2), self.bias, (self.padding[0], 0), (self.dilation[0], 1))
        if is_token_major(video):
            return out.permute(0, 2, 3, 1).view(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)
        return out.view(batch, -1, frames, height, width)


class PointwiseConv3d(nn.Conv3d):
    """A ``1 x 1 x 1`` Conv3d, run as a matrix product over the positions (the generic 3D convolution
    path copies its input first)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if is_token_major(video):
            return F.linear(video.permute(0, 2, 3, 4, 1), self.weight.flatten(1), self.bias).permute(0, 4, 1, 2, 3)
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


class AudioConv1d(nn.Conv1d):
    """Conv1d on audio ``[B, C, T]`` (stride 1, zero padding), in the input's layout: the equal ``(1, k)``
    2D convolution over ``[B, C, 1, T]``, or for kernel size 1 on token-major audio a matrix product."""

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if self.kernel_size[0] == 1 and is_token_major(audio):
            return F.linear(audio.transpose(1, 2), self.weight.flatten(1), self.bias).transpose(1, 2)
        out = _convolution(
            audio.unsqueeze(2), self.weight.unsqueeze(2), self.bias, (0, self.padding[0]), (1, self.dilation[0])
        )
        return out.squeeze(2)


def audio_conv(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Conv1d:
    return AudioConv1d(
        in_channels, out_channels, kernel_size, padding=_same_padding(kernel_size, dilation), dilation=dilation
    )


# Video is resampled in space only ((1, 2, 2)), audio by 4 in time, as in the official model.
VIDEO_RESAMPLE = (1, 2, 2)
AUDIO_RESAMPLE = 4


def resample_video(video: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    if direction == "down":
        # A 2D pooling (CPU bfloat16 has no 3D one) over a view: frames moved into the batch axis
        # (token-major) or into the channel axis (channels-first).
        batch, channels, frames, height, width = video.shape
        if is_token_major(video):
            planes = F.avg_pool2d(video.transpose(1, 2).reshape(batch * frames, channels, height, width),
                                  VIDEO_RESAMPLE[1:])
            return planes.view(batch, frames, channels, *planes.shape[-2:]).transpose(1, 2)
        planes = F.avg_pool2d(video.reshape(batch, channels * frames, height, width), VIDEO_RESAMPLE[1:])
        return planes.view(batch, channels, frames, *planes.shape[-2:])
    if direction == "up":
        return F.interpolate(video, scale_factor=VIDEO_RESAMPLE, mode="nearest")
    return video


def resample_audio(audio: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    # As 2D operations on [B, C, 1, T], which keep the token-major layout.
    if direction == "down":
        return F.avg_pool2d(audio.unsqueeze(2), (1, AUDIO_RESAMPLE)).squeeze(2)
    if direction == "up":
        return F.interpolate(audio.unsqueeze(2), scale_factor=(1, AUDIO_RESAMPLE), mode="nearest").squeeze(2)
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
        # The two halves of the 2D+1D convolution are called here so that the normalised input (the widest
        # activation of a decoder block) is released before the temporal half runs.
        video_h = self.video_conv1.spatial(_silu(video_group_norm(video, self.video_norm1)))
        if self.resample == "down":
            # Spatial pooling commutes with the temporal convolution: pool first, convolve a quarter of the pixels.
            video_h, video = resample_video(video_h, "down"), resample_video(video, "down")
        video_h = self.video_conv1.temporal(video_h)
        audio_h = self.audio_conv1(_silu(group_norm(audio, self.audio_norm1)))
        if self.resample == "down":
            audio_h, audio = resample_audio(audio_h, "down"), resample_audio(audio, "down")
        # Nearest upsampling commutes with the rest of the block: GroupNorm statistics of a nearest-upsampled
        # tensor are the original's, and the modulation, SiLU, 1x1 convolutions and the residual sum act per
        # position. So an upsampling block finishes at the low resolution and upsamples its output once (4x
        # less work and memory after the first convolution). Not with active dropout, whose mask would then
        # be shared by the copies of each position.
        upsample_output = self.resample == "up" and not (self.training and self.dropout.p > 0)
        if self.resample == "up" and not upsample_output:
            video_h, video = resample_video(video_h, "up"), resample_video(video, "up")
            audio_h, audio = resample_audio(audio_h, "up"), resample_audio(audio, "up")

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
        if upsample_output:
            video, audio = resample_video(video, "up"), resample_audio(audio, "up")

        if self.video_attention is not None:
            video = self.video_attention(video)
        if self.audio_attention is not None:
            audio = self.audio_attention(audio)
        return video, audio
