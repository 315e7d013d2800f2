"""CoupledUNet: the MM-Diffusion audio-video denoising U-Net (official ``MultimodalUNet``)."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .attention import CrossModalAttention
from .layers import CoupledResBlock, VideoConv2Plus1D, VideoConv3d, audio_conv, cat_channels, token_major
from .normalization import NUM_GROUPS, group_norm, video_group_norm

# The official model grows the audio dilation by one power of two per residual block, wrapping at 2**10.
_MAX_DILATION_EXPONENT = 10

# The official constructor's default channel multipliers by frame width.
_DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}

WindowShift = Union[None, int, str, torch.Tensor]


@dataclass
class CoupledUNetOutput(BaseOutput):
    """
    Args:
        video (`torch.Tensor` of shape `(batch_size, num_frames, out_channels, height, width)`):
            Video prediction (noise, followed by the variance channels when `learn_sigma`).
        audio (`torch.Tensor` of shape `(batch_size, out_channels, length)`):
            Audio prediction, laid out the same way.
    """

    video: torch.Tensor = None
    audio: torch.Tensor = None


class CoupledUNetBlock(nn.Module):
    """One step of the U-Net: a coupled residual block, then optionally RS-MMA cross-attention and
    an up-sampling residual block."""

    def __init__(
        self,
        resnet: CoupledResBlock,
        cross_attention: Optional[CrossModalAttention] = None,
        upsampler: Optional[CoupledResBlock] = None,
    ):
        super().__init__()
        self.resnet = resnet
        self.cross_attention = cross_attention
        self.upsampler = upsampler

    def forward(self, video, audio, temb, shift: Optional[torch.Tensor] = None):
        video, audio = self.resnet(video, audio, temb)
        if self.cross_attention is not None:
            video, audio = self.cross_attention(video, audio, shift)
        if self.upsampler is not None:
            video, audio = self.upsampler(video, audio, temb)
        return video, audio


class CoupledUNetMidBlock(nn.Module):
    def __init__(self, resnet_1: CoupledResBlock, resnet_2: CoupledResBlock, cross_attention=None):
        super().__init__()
        self.resnet_1 = resnet_1
        self.cross_attention = cross_attention
        self.resnet_2 = resnet_2

    def forward(self, video, audio, temb):
        video, audio = self.resnet_1(video, audio, temb)
        if self.cross_attention is not None:
            video, audio = self.cross_attention(video, audio)
        return self.resnet_2(video, audio, temb)


class CoupledUNet(ModelMixin, ConfigMixin):
    r"""
    The coupled audio-video U-Net of MM-Diffusion (Ruan et al., CVPR 2023): a video sub-network of
    factorised 2D+1D convolutions with spatial and temporal attention, an audio sub-network of dilated
    1D convolutions, joined by random-shift multi-modal cross-attention (RS-MMA). Numerically equal to
    the official `MultimodalUNet`; `convert_weights.py` maps official checkpoints onto it.

    Speed and memory (CPU figures from `benchmarks/bench_unet.py`, paper configuration, one thread): about
    0.55-0.6x the official forward time in float32 and 0.4x its activation memory; the training step of the
    small configurations 0.5-0.7x. Without autograd on the CPU the activations are stored channels-last
    (see `layers.py`). Reduced precision: `unet.to(torch.bfloat16)` on a CPU with AVX512-BF16/AMX runs the
    forward about 3x faster than float32 (outputs within ~2% of the float32 ones; GroupNorm statistics stay
    float32). `torch.compile` traces the whole forward as one graph (pass window shifts as a tensor, as the
    pipeline does): `unet.compile()`. Compiling takes minutes on a small CPU and made a training step there
    only ~10% faster, so it is left to the caller, for long training runs.

    Parameters:
        num_frames (`int`, defaults to 16): Frames per video.
        sample_size (`int` or `(int, int)`, defaults to 64): Frame height and width.
        video_channels (`int`, defaults to 3): Channels of a frame.
        audio_channels (`int`, defaults to 1): Audio channels.
        audio_length (`int`, defaults to 25600): Audio samples per clip.
        model_channels (`int`, defaults to 128): Base channel count (also the timestep-embedding width).
        channel_mult (`tuple`, *optional*): Channel multiplier per level; by default the official choice
            for the frame width (64 -> 1, 2, 3, 4).
        num_res_blocks (`int`, defaults to 2): Residual blocks per level.
        cross_attention_downsample_factors (`tuple`, defaults to `(2, 4, 8)`): Downsample factors at which
            RS-MMA cross-attention follows each residual block (as the official "resolutions" flags).
        cross_attention_windows (`tuple`, defaults to `(1, 4, 8)`): Window (in frames) of each of those levels.
        cross_attention_shift (`bool`, defaults to `True`): Whether those windows are shifted (randomly in
            training and official sampling); the middle block's cross-attention is never shifted.
        video_attention_downsample_factors (`tuple`, defaults to `(2, 4, 8)`): Levels with video self-attention.
        audio_attention_downsample_factors (`tuple`, defaults to `()`): Levels with audio self-attention.
        num_attention_heads (`int`, defaults to 4): Heads of the video and audio self-attention.
        cross_attention_head_dim (`int`, defaults to -1): Channels per head of the cross-attention; -1 uses
            `num_attention_heads` heads instead.
        use_scale_shift_norm (`bool`, defaults to `True`): FiLM-like timestep conditioning.
        resblock_updown (`bool`, defaults to `True`): Residual blocks resample; the official model cannot run
            without, so `False` is refused.
        learn_sigma (`bool`, defaults to `False`): Predict the variance too (doubles the output channels).
        dropout (`float`, defaults to 0.0): Dropout in the residual blocks.
        video_conv_type (`str`, defaults to `"2d+1d"`), audio_conv_type (`str`, defaults to `"1d"`),
        num_classes (`int`, *optional*): Accepted for compatibility with the official constructor; the
            official forward runs only the defaults, so other values are refused.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_frames: int = 16,
        sample_size: Union[int, Tuple[int, int]] = 64,
        video_channels: int = 3,
        audio_channels: int = 1,
        audio_length: int = 25600,
        model_channels: int = 128,
        channel_mult: Optional[Sequence[float]] = None,
        num_res_blocks: int = 2,
        cross_attention_downsample_factors: Sequence[int] = (2, 4, 8),
        cross_attention_windows: Sequence[int] = (1, 4, 8),
        cross_attention_shift: bool = True,
        video_attention_downsample_factors: Sequence[int] = (2, 4, 8),
        audio_attention_downsample_factors: Sequence[int] = (),
        num_attention_heads: int = 4,
        cross_attention_head_dim: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        learn_sigma: bool = False,
        dropout: float = 0.0,
        video_conv_type: str = "2d+1d",
        audio_conv_type: str = "1d",
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        if channel_mult is None:
            if width not in _DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"channel_mult must be given for frames {width} pixels wide (defaults exist for widths "
                    f"{sorted(_DEFAULT_CHANNEL_MULT)})"
                )
            channel_mult = _DEFAULT_CHANNEL_MULT[width]
        cross_factors = list(cross_attention_downsample_factors)
        windows = list(cross_attention_windows)
        self._check_arguments(
            num_frames, height, width, audio_length, model_channels, channel_mult, cross_factors, windows,
            num_attention_heads, cross_attention_head_dim, resblock_updown, video_conv_type, audio_conv_type,
            num_classes,
        )

        self.gradient_checkpointing = False
        embedding_channels = model_channels
        self.time_proj = Timesteps(model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(model_channels, embedding_channels)

        def cross_attention(channels, factor):
            window = windows[cross_factors.index(factor)]
            return CrossModalAttention(channels, self._cross_heads(channels), window, cross_attention_shift)

        def resnet(in_channels, out_channels, exponent, factor=None, resample=None, all_attention=False):
            return CoupledResBlock(
                in_channels,
                embedding_channels,
                dropout,
                out_channels=out_channels,
                audio_dilation=2 ** (exponent % _MAX_DILATION_EXPONENT),
                use_scale_shift_norm=use_scale_shift_norm,
                resample=resample,
                video_attention=all_attention or factor in video_attention_downsample_factors,
                audio_attention=all_attention or factor in audio_attention_downsample_factors,
                num_attention_heads=num_attention_heads,
            )

        channels = int(channel_mult[0] * model_channels)
        self.conv_in_video = VideoConv2Plus1D(video_channels, channels, 3)
        self.conv_in_audio = audio_conv(audio_channels, channels, 3)

        skip_channels = [channels]
        factor, exponent = 1, 1
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out_channels = int(mult * model_channels)
                block_resnet = resnet(channels, out_channels, exponent, factor)
                channels = out_channels
                attention = cross_attention(channels, factor) if factor in cross_factors else None
                self.down_blocks.append(CoupledUNetBlock(block_resnet, attention))
                skip_channels.append(channels)
                exponent += 1
            if level != len(channel_mult) - 1:
                self.down_blocks.append(CoupledUNetBlock(resnet(channels, channels, exponent, resample="down")))
                skip_channels.append(channels)
                exponent += 1
                factor *= 2

        # The official model gives the middle block cross-attention over all frames only for windows (1, 4, 8).
        mid_attention = (
            CrossModalAttention(channels, self._cross_heads(channels), num_frames, shifted=False)
            if windows == [1, 4, 8]
            else None
        )
        # Middle residual blocks always carry video and audio self-attention.
        self.mid_block = CoupledUNetMidBlock(
            resnet(channels, channels, exponent, all_attention=True),
            resnet(channels, channels, exponent, all_attention=True),
            mid_attention,
        )

        exponent -= 1
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for block_index in range(num_res_blocks + 1):
                out_channels = int(model_channels * mult)
                block_resnet = resnet(channels + skip_channels.pop(), out_channels, exponent, factor)
                exponent -= 1
                channels = out_channels
                attention = cross_attention(channels, factor) if factor in cross_factors else None
                upsampler = None
                if level and block_index == num_res_blocks:
                    upsampler = resnet(channels, channels, exponent, resample="up")
                    factor //= 2
                self.up_blocks.append(CoupledUNetBlock(block_resnet, attention, upsampler))

        out_video_channels = video_channels * (2 if learn_sigma else 1)
        out_audio_channels = audio_channels * (2 if learn_sigma else 1)
        self.video_norm_out = nn.GroupNorm(NUM_GROUPS, channels)
        self.video_conv_out = VideoConv3d(channels, out_video_channels, 3, padding=1)
        self.audio_norm_out = nn.GroupNorm(NUM_GROUPS, channels)
        self.audio_conv_out = audio_conv(channels, out_audio_channels, 3)

    def _cross_heads(self, channels: int) -> int:
        head_dim = self.config.cross_attention_head_dim
        if head_dim == -1:
            return self.config.num_attention_heads
        return channels // head_dim

    @staticmethod
    def _check_arguments(
        num_frames, height, width, audio_length, model_channels, channel_mult, cross_factors, windows,
        num_attention_heads, cross_attention_head_dim, resblock_updown, video_conv_type, audio_conv_type,
        num_classes,
    ):
        if not resblock_updown:
            raise ValueError("resblock_updown=False is not supported: the official decoder never upsamples without it")
        if video_conv_type != "2d+1d" or audio_conv_type != "1d":
            raise ValueError(
                f"only video_conv_type='2d+1d' and audio_conv_type='1d' run in the official model, got "
                f"{video_conv_type!r} and {audio_conv_type!r}"
            )
        if num_classes is not None:
            raise ValueError("class conditioning (num_classes) is not supported by the official coupled U-Net")
        if len(windows) != len(cross_factors):
            raise ValueError(
                f"cross_attention_windows {windows} must give one window per cross-attention level {cross_factors}"
            )
        if any(window < 1 or window > num_frames for window in windows):
            raise ValueError(f"cross_attention_windows {windows} must lie between 1 and num_frames={num_frames}")
        levels = len(channel_mult)
        spatial = 2 ** (levels - 1)
        if height % spatial or width % spatial:
            raise ValueError(
                f"frame size {height}x{width} must be divisible by {spatial} to downsample {levels - 1} times"
            )
        if audio_length % 4 ** (levels - 1):
            raise ValueError(
                f"audio_length {audio_length} must be divisible by {4 ** (levels - 1)} to downsample "
                f"{levels - 1} times by 4"
            )
        # The middle block's cross-attention (windows 1, 4, 8 only) runs at the deepest level.
        for factor in cross_factors + ([2 ** (levels - 1)] if windows == [1, 4, 8] else []):
            level = factor.bit_length() - 1
            if factor in cross_factors and level >= levels:
                raise ValueError(f"cross-attention downsample factor {factor} exceeds the {levels} levels")
            if (audio_length // 4**level) % num_frames:
                raise ValueError(
                    f"audio_length {audio_length} gives {audio_length // 4**level} samples at downsample factor "
                    f"{factor}, not divisible by num_frames={num_frames} as cross-attention needs"
                )
        for mult in channel_mult:
            channels = int(mult * model_channels)
            if channels % NUM_GROUPS or channels % num_attention_heads:
                raise ValueError(
                    f"level width {channels} (channel_mult {mult} x {model_channels}) must be divisible by "
                    f"{NUM_GROUPS} groups and {num_attention_heads} heads"
                )
            if cross_attention_head_dim != -1 and channels % cross_attention_head_dim:
                raise ValueError(
                    f"level width {channels} is not divisible by cross_attention_head_dim={cross_attention_head_dim}"
                )

    @property
    def shifted_cross_attention_windows(self) -> List[int]:
        """Windows of the cross-attention blocks whose shift varies, in the order in which an explicit
        shift tensor gives them (encoder first, then decoder)."""
        return [
            block.cross_attention.window
            for block in [*self.down_blocks, *self.up_blocks]
            if block.cross_attention is not None and block.cross_attention.shifted
        ]

    def draw_window_shifts(
        self,
        batch_size: int,
        generator: Union[None, torch.Generator, List[torch.Generator]] = None,
        device: Optional[torch.device] = None,
    ) -> torch.Tensor:
        """Uniform random shifts ``[batch_size, number of shifted blocks]``, each in ``[0, F - window]``.
        With a list of generators each sample draws from its own one, so a batch equals its samples run
        alone."""
        generators = generator if isinstance(generator, list) else [generator] * batch_size
        if len(generators) != batch_size:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch_size}")
        frames = self.config.num_frames
        rows = [
            [int(torch.randint(0, frames - window + 1, (1,), generator=g)) for window in self.shifted_cross_attention_windows]
            for g in generators
        ]
        return torch.tensor(rows, dtype=torch.long, device=device).reshape(batch_size, -1)

    def _window_shifts(self, window_shift: WindowShift, batch_size, generator, device) -> Optional[torch.Tensor]:
        windows = self.shifted_cross_attention_windows
        if window_shift is None:
            return None
        if isinstance(window_shift, str):
            if window_shift != "random":
                raise ValueError(f"window_shift must be None, an int, 'random' or a tensor, got {window_shift!r}")
            # The official model draws one shift per block and call, shared by the batch.
            return self.draw_window_shifts(1, generator, device).expand(batch_size, -1)
        if isinstance(window_shift, int):
            frames = self.config.num_frames
            shifts = [min(window_shift, frames - window) for window in windows]
            return torch.tensor(shifts, dtype=torch.long, device=device).expand(batch_size, -1)
        if isinstance(window_shift, torch.Tensor):
            if window_shift.shape != (batch_size, len(windows)):
                raise ValueError(
                    f"window_shift tensor must have shape [batch, shifted blocks] = [{batch_size}, {len(windows)}], "
                    f"got {list(window_shift.shape)}"
                )
            return window_shift.to(device=device, dtype=torch.long)
        raise TypeError(f"window_shift must be None, an int, 'random' or a tensor, got {type(window_shift).__name__}")

    @property
    def video_shape(self) -> Tuple[int, int, int, int]:
        """One video sample: `(frames, channels, height, width)`."""
        config = self.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (config.num_frames, config.video_channels, height, width)

    @property
    def audio_shape(self) -> Tuple[int, int]:
        """One audio sample: `(channels, samples)`."""
        return (self.config.audio_channels, self.config.audio_length)

    def _check_inputs(self, video: torch.Tensor, audio: torch.Tensor):
        expected_video, expected_audio = self.video_shape, self.audio_shape
        if video.ndim != 5 or tuple(video.shape[1:]) != expected_video:
            raise ValueError(f"video must have shape [B, {', '.join(map(str, expected_video))}], got {list(video.shape)}")
        if audio.ndim != 3 or tuple(audio.shape[1:]) != expected_audio or audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"audio must have shape [{video.shape[0]}, {', '.join(map(str, expected_audio))}], got {list(audio.shape)}"
            )

    def _run(self, block, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        window_shift: WindowShift = None,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ) -> Union[CoupledUNetOutput, Tuple[torch.Tensor, torch.Tensor]]:
        r"""
        Args:
            video (`torch.Tensor`): `[B, F, C, H, W]` noisy video.
            audio (`torch.Tensor`): `[B, C, T]` noisy audio.
            timestep (`torch.Tensor`, `float` or `int`): Time on the training scale (0..999), one for the batch
                or one per sample (`[B]`).
            window_shift: `None` for no shift; an int `k` for `min(k, F - window)` in every shifted block;
                `"random"` for the official uniform shift per block and call (drawn from `generator`); or an
                integer tensor `[B, len(shifted_cross_attention_windows)]` of per-sample shifts.
            generator (`torch.Generator`, *optional*): Source of the `"random"` shifts.
            return_dict (`bool`, defaults to `True`): Return a [`CoupledUNetOutput`] instead of a tuple.
        """
        self._check_inputs(video, audio)
        batch = video.shape[0]
        timestep = torch.as_tensor(timestep, device=video.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be a number or have shape [{batch}], got {list(timestep.shape)}")
        shifts = self._window_shifts(window_shift, batch, generator, video.device)

        temb = self.time_embedding(self.time_proj(timestep).to(self.dtype))
        # Inside the model: video [B, C, F, H, W] and audio [B, C, T], stored token-major for CPU inference and
        # channels-first otherwise (see layers.py); the input convolutions' outputs set the layout.
        layout = token_major if video.device.type == "cpu" and not torch.is_grad_enabled() else torch.Tensor.contiguous
        video = self.conv_in_video(layout(video.to(self.dtype).transpose(1, 2)))
        audio = self.conv_in_audio(audio.to(self.dtype))
        video, audio = layout(video), layout(audio)
        video_skips, audio_skips = [video], [audio]

        shift_column = 0
        for block in self.down_blocks:
            block_shift = None
            if shifts is not None and block.cross_attention is not None and block.cross_attention.shifted:
                block_shift, shift_column = shifts[:, shift_column], shift_column + 1
            video, audio = self._run(block, video, audio, temb, block_shift)
            video_skips.append(video)
            audio_skips.append(audio)

        video, audio = self._run(self.mid_block, video, audio, temb)

        for block in self.up_blocks:
            block_shift = None
            if shifts is not None and block.cross_attention is not None and block.cross_attention.shifted:
                block_shift, shift_column = shifts[:, shift_column], shift_column + 1
            video = cat_channels(video, video_skips.pop())
            audio = cat_channels(audio, audio_skips.pop())
            video, audio = self._run(block, video, audio, temb, block_shift)

        video = self.video_conv_out(F.silu(video_group_norm(video, self.video_norm_out)))
        audio = self.audio_conv_out(F.silu(group_norm(audio, self.audio_norm_out)))
        video, audio = video.transpose(1, 2).contiguous(), audio.contiguous()

        if not return_dict:
            return video, audio
        return CoupledUNetOutput(video=video, audio=audio)
