"""The MM-Diffusion super-resolution U-Net (64→256 per frame), ADM / guided-diffusion family."""

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

NORM_GROUPS = 32
NORM_EPS = 1e-5


@dataclass
class SuperResolutionUNetOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `[B, out_channels, H, W]`):
            The predicted noise; with a learned variance, followed by the variance-interpolation channels.
    """

    sample: torch.Tensor


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 whatever the model dtype (as the checkpoints were trained)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.group_norm(
            hidden_states.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        )
        return normed.to(hidden_states.dtype)


def _norm(channels: int) -> Float32GroupNorm:
    return Float32GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)


class SRResnetBlock(nn.Module):
    """Residual block conditioned on the time embedding; `resample` "up"/"down" makes it change resolution by 2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float,
        use_scale_shift_norm: bool,
        resample: Optional[str] = None,
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(hidden_states, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(hidden_states, kernel_size=2, stride=2)
        return hidden_states

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        residual = self._resample(hidden_states)
        hidden_states = self.conv1(self._resample(F.silu(self.norm1(hidden_states))))

        emb = self.time_emb_proj(F.silu(temb)).to(hidden_states.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb.chunk(2, dim=1)
            hidden_states = self.norm2(hidden_states) * (1 + scale) + shift
        else:
            hidden_states = self.norm2(hidden_states + emb)
        hidden_states = self.conv2(self.dropout(F.silu(hidden_states)))

        if self.conv_shortcut is not None:
            residual = self.conv_shortcut(residual)
        return residual + hidden_states


class SRAttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.group_norm = _norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        tokens = self.group_norm(hidden_states).flatten(2).transpose(1, 2)  # [B, H*W, C]

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, H*W, C/heads]

        attended = F.scaled_dot_product_attention(
            split_heads(self.to_q(tokens)), split_heads(self.to_k(tokens)), split_heads(self.to_v(tokens))
        )
        attended = self.to_out(attended.transpose(1, 2).flatten(2))
        return hidden_states + attended.transpose(1, 2).reshape(batch, channels, height, width)


class SRDownsample(nn.Module):
    """Strided 3x3 convolution (used when `resblock_updown=False`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden_states)


class SRUpsample(nn.Module):
    """Nearest-neighbour doubling followed by a 3x3 convolution (used when `resblock_updown=False`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2, mode="nearest"))


class _CheckpointedBlock(nn.Module):
    """Runs its layers under gradient checkpointing when `ModelMixin.enable_gradient_checkpointing` switched it on."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def _run(self, layer: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(layer, *args)
        return layer(*args)


class SRDownBlock(_CheckpointedBlock):
    """One resolution level of the encoder; returns its output and the activations the decoder concatenates."""

    def __init__(self, resnets, attentions, downsampler):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.downsampler = downsampler

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor):
        skips = []
        for index, resnet in enumerate(self.resnets):
            hidden_states = self._run(resnet, hidden_states, temb)
            if self.attentions:
                hidden_states = self._run(self.attentions[index], hidden_states)
            skips.append(hidden_states)
        if self.downsampler is not None:
            hidden_states = self._run(self.downsampler, hidden_states, temb)
            skips.append(hidden_states)
        return hidden_states, skips


class SRMidBlock(_CheckpointedBlock):
    def __init__(self, channels: int, temb_channels: int, dropout: float, use_scale_shift_norm: bool, num_heads: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [SRResnetBlock(channels, channels, temb_channels, dropout, use_scale_shift_norm) for _ in range(2)]
        )
        self.attention = SRAttentionBlock(channels, num_heads)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden_states = self._run(self.resnets[0], hidden_states, temb)
        hidden_states = self._run(self.attention, hidden_states)
        return self._run(self.resnets[1], hidden_states, temb)


class SRUpBlock(_CheckpointedBlock):
    """One resolution level of the decoder; each resnet first takes one encoder activation (last in, first out)."""

    def __init__(self, resnets, attentions, upsampler):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.upsampler = upsampler

    def forward(self, hidden_states: torch.Tensor, skips: list, temb: torch.Tensor) -> torch.Tensor:
        for index, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = self._run(resnet, hidden_states, temb)
            if self.attentions:
                hidden_states = self._run(self.attentions[index], hidden_states)
        if self.upsampler is not None:
            hidden_states = self._run(self.upsampler, hidden_states, temb)
        return hidden_states


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class SuperResolutionUNet(ModelMixin, ConfigMixin):
    r"""
    The MM-Diffusion super-resolution U-Net: denoises a high-resolution frame conditioned on its low-resolution
    version, which the model upsamples bilinearly to the sample size and concatenates to the noisy sample.

    Parameters:
        sample_size (`int`): side of the high-resolution frames the model generates.
        low_res_size (`int`): side of the low-resolution frames it was trained to upscale.
        in_channels (`int`): image channels (the first convolution sees twice as many: sample and low-res).
        out_channels (`int`): `in_channels` (noise only) or `2 * in_channels` (noise and learned variance).
        model_channels (`int`): base width; level `i` has `model_channels * channel_mult[i]` channels and the
            time embedding has `4 * model_channels`.
        channel_mult (`tuple[int]`): width multiplier of each resolution level.
        num_res_blocks (`int`): residual blocks per level in the encoder (the decoder has one more).
        attention_downsample_factors (`tuple[int]`): self-attention at the levels whose downsample factor
            (1, 2, 4, ...) is listed, as the official `attention_resolutions`; the middle block always attends.
        num_heads (`int`): attention heads at every level when `num_head_channels == -1`.
        num_head_channels (`int`): if not -1, a fixed width per head instead of a fixed head count.
        num_heads_upsample (`int`): heads in the decoder's attention (-1: `num_heads`).
        use_scale_shift_norm (`bool`): the time embedding scales and shifts the normalised features (FiLM).
        resblock_updown (`bool`): residual blocks change resolution (else strided / upsampling convolutions).
        dropout (`float`): dropout rate inside the residual blocks.
        num_class_embeds (`int`, *optional*): class conditioning; not supported, must stay `None`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        low_res_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 6,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_downsample_factors: Sequence[int] = (8, 16, 32),
        num_heads: int = 4,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        dropout: float = 0.0,
        num_class_embeds: Optional[int] = None,
    ):
        super().__init__()
        if num_class_embeds is not None:
            raise ValueError(
                f"num_class_embeds={num_class_embeds!r} asks for a class-conditional super-resolution model, which is "
                "not supported (MM-Diffusion's SR models are unconditional): leave num_class_embeds as None."
            )
        for name, value in (
            ("sample_size", sample_size),
            ("low_res_size", low_res_size),
            ("in_channels", in_channels),
            ("model_channels", model_channels),
            ("num_res_blocks", num_res_blocks),
            ("num_heads", num_heads),
        ):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(
                f"out_channels must be in_channels ({in_channels}, noise only) or 2 * in_channels "
                f"({2 * in_channels}, noise and learned variance), got {out_channels!r}."
            )
        if not channel_mult or not all(_is_int(m) and m >= 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive integers, got {channel_mult!r}.")
        if not all(_is_int(f) and f >= 1 for f in attention_downsample_factors):
            raise ValueError(
                "attention_downsample_factors must be positive integers (downsample factors such as 8, 16, 32), "
                f"got {attention_downsample_factors!r}."
            )
        if not isinstance(dropout, Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}.")
        widths = [model_channels * mult for mult in channel_mult]
        if any(width % NORM_GROUPS for width in widths):
            raise ValueError(
                f"model_channels * channel_mult must be divisible by {NORM_GROUPS} (the GroupNorm groups) at every "
                f"level, got widths {widths}."
            )
        if sample_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(
                f"sample_size must be divisible by {2 ** (len(channel_mult) - 1)} (one halving per level after the "
                f"first), got {sample_size}."
            )
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def heads_for(width: int, heads: int) -> int:
            if num_head_channels == -1:
                if width % heads:
                    raise ValueError(f"num_heads={heads} must divide the attention width {width}.")
                return heads
            if not _is_int(num_head_channels) or num_head_channels < 1 or width % num_head_channels:
                raise ValueError(
                    f"num_head_channels must be -1 or a positive divisor of the attention width {width}, "
                    f"got {num_head_channels!r}."
                )
            return width // num_head_channels

        attention_factors = set(attention_downsample_factors)
        temb_channels = 4 * model_channels
        self.time_proj = Timesteps(model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(model_channels, temb_channels)

        channels = widths[0]
        self.conv_in = nn.Conv2d(2 * in_channels, channels, 3, padding=1)
        skip_channels = [channels]

        def resnet(cin: int, cout: int, resample: Optional[str] = None) -> SRResnetBlock:
            return SRResnetBlock(cin, cout, temb_channels, dropout, use_scale_shift_norm, resample)

        self.down_blocks = nn.ModuleList()
        for level, width in enumerate(widths):
            attends = 2**level in attention_factors
            resnets, attentions = [], []
            for _ in range(num_res_blocks):
                resnets.append(resnet(channels, width))
                channels = width
                if attends:
                    attentions.append(SRAttentionBlock(width, heads_for(width, num_heads)))
                skip_channels.append(channels)
            downsampler = None
            if level < len(widths) - 1:
                downsampler = resnet(channels, channels, "down") if resblock_updown else SRDownsample(channels)
                skip_channels.append(channels)
            self.down_blocks.append(SRDownBlock(resnets, attentions, downsampler))

        self.mid_block = SRMidBlock(
            channels, temb_channels, dropout, use_scale_shift_norm, heads_for(channels, num_heads)
        )

        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            attends = 2**level in attention_factors
            resnets, attentions = [], []
            for _ in range(num_res_blocks + 1):
                resnets.append(resnet(channels + skip_channels.pop(), width))
                channels = width
                if attends:
                    attentions.append(SRAttentionBlock(width, heads_for(width, heads_up)))
            upsampler = None
            if level > 0:
                upsampler = resnet(channels, channels, "up") if resblock_updown else SRUpsample(channels)
            self.up_blocks.append(SRUpBlock(resnets, attentions, upsampler))

        self.conv_norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        low_res: torch.Tensor,
        return_dict: bool = True,
    ) -> Union[SuperResolutionUNetOutput, tuple]:
        r"""
        Args:
            sample (`torch.Tensor`): noisy high-resolution frames `[B, in_channels, H, W]` in model space.
            timestep (`torch.Tensor`, `float` or `int`): diffusion step(s) on the training scale, a number or `[B]`.
            low_res (`torch.Tensor`): low-resolution frames `[B, in_channels, h, w]` in [-1, 1], any size.
            return_dict (`bool`): return a [`SuperResolutionUNetOutput`] rather than a tuple.

        Returns:
            [`SuperResolutionUNetOutput`] or `tuple`: the prediction `[B, out_channels, H, W]`, all channels.
        """
        in_channels = self.config.in_channels
        if sample.ndim != 4 or sample.shape[1] != in_channels:
            raise ValueError(f"sample must be [B, {in_channels}, H, W], got shape {tuple(sample.shape)}.")
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if sample.shape[-2] % factor or sample.shape[-1] % factor:
            raise ValueError(f"sample height and width must be divisible by {factor}, got {tuple(sample.shape[-2:])}.")
        batch = sample.shape[0]
        if low_res.ndim != 4 or low_res.shape[:2] != (batch, in_channels):
            raise ValueError(
                f"low_res must be [{batch}, {in_channels}, h, w] to match sample, got shape {tuple(low_res.shape)}."
            )
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        elif timesteps.shape != (batch,):
            raise ValueError(f"timestep must be a number or a [{batch}] tensor, got shape {tuple(timesteps.shape)}.")

        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        upsampled = F.interpolate(low_res.to(sample.dtype), size=sample.shape[-2:], mode="bilinear")
        hidden_states = self.conv_in(torch.cat([sample, upsampled], dim=1))

        skips = [hidden_states]
        for block in self.down_blocks:
            hidden_states, block_skips = block(hidden_states, temb)
            skips.extend(block_skips)
        hidden_states = self.mid_block(hidden_states, temb)
        for block in self.up_blocks:
            hidden_states = block(hidden_states, skips, temb)

        output = self.conv_out(F.silu(self.conv_norm_out(hidden_states)))
        if not return_dict:
            return (output,)
        return SuperResolutionUNetOutput(sample=output)
