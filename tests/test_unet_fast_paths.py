"""The CoupledUNet's fast paths compute what the plain layers compute: the rewritten convolutions,
normalisations and windowed cross-attention against direct references, reduced precision against
float32, and the whole forward traced by torch.compile as one graph."""

import pytest
import torch
import torch.nn.functional as F

from mmdiffusion import CoupledUNet
from mmdiffusion.models.attention import CrossModalAttention
from mmdiffusion.models.layers import (
    AudioConv1d,
    PointwiseConv3d,
    TemporalConv3d,
    VideoConv3d,
    cat_channels,
    resample_audio,
    resample_video,
    token_major,
)
from mmdiffusion.models.normalization import framewise_norm_tokens

TINY = dict(num_frames=4, sample_size=16, audio_length=256, model_channels=32, channel_mult=(1, 2),
            cross_attention_downsample_factors=(1, 2), cross_attention_windows=(1, 2),
            video_attention_downsample_factors=(2,), audio_attention_downsample_factors=(2,))


@pytest.mark.parametrize(
    "layer",
    [
        VideoConv3d(8, 16, (1, 3, 3), padding=(0, 1, 1)),
        VideoConv3d(8, 3, 3, padding=1),
        TemporalConv3d(8, 16, (3, 1, 1), padding=(1, 0, 0)),
        PointwiseConv3d(8, 16, 1),
    ],
    ids=["spatial", "full", "temporal", "pointwise"],
)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layout", [lambda x: x, token_major], ids=["channels_first", "token_major"])
def test_video_convolutions_equal_conv3d(layer, batch, layout):
    video = torch.randn(batch, 8, 5, 6, 7, requires_grad=True)
    out = layer(layout(video))
    assert out.stride() == (layout(out.detach()).stride() if batch > 1 or out.shape[1] > 1 else out.stride())
    expected = F.conv3d(video, layer.weight, layer.bias, layer.stride, layer.padding)
    assert torch.allclose(out, expected, atol=1e-5)
    (grad,) = torch.autograd.grad(out.square().sum(), video)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), video)
    assert torch.allclose(grad, expected_grad, atol=1e-4)


@pytest.mark.parametrize("layout", ["channels_first", "token_major"])
@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_framewise_norm_equals_group_norm_per_sequence(axis, layout):
    norm = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    video = torch.randn(2, 8, 3, 2, 5) * 3 + 1  # [B, C, F, H, W]
    # The per-sequence layout built independently: [B, F, C, HW] per frame, [B, HW, C, F] per pixel.
    pixels = video.flatten(3)
    sequences = pixels.permute(0, 2, 1, 3) if axis == "spatial" else pixels.permute(0, 3, 1, 2)
    expected = norm(sequences.reshape(-1, 8, sequences.shape[-1])).transpose(1, 2)
    if layout == "token_major":
        video = token_major(video)
    assert torch.allclose(framewise_norm_tokens(video, norm, axis), expected, atol=1e-5)


@pytest.mark.parametrize("layout", [lambda x: x.contiguous(), token_major], ids=["channels_first", "token_major"])
def test_layers_keep_the_layout_and_values(layout):
    audio = torch.randn(2, 8, 12)
    for layer in (AudioConv1d(8, 16, 3, padding=2, dilation=2), AudioConv1d(8, 16, 1)):
        out = layer(layout(audio))
        assert torch.allclose(out, F.conv1d(audio, layer.weight, layer.bias, padding=layer.padding,
                                            dilation=layer.dilation), atol=1e-5)
        assert out.stride() == layout(out).stride()
    for direction in ("down", "up"):
        assert torch.equal(resample_audio(layout(audio), direction), resample_audio(audio, direction))
        assert resample_audio(layout(audio), direction).stride() == layout(resample_audio(audio, direction)).stride()
    video = torch.randn(2, 8, 3, 4, 6)
    for direction in ("down", "up"):
        out = resample_video(layout(video), direction)
        if direction == "down":
            expected = F.avg_pool3d(video, (1, 2, 2))
        else:
            expected = F.interpolate(video, scale_factor=(1, 2, 2))
        assert torch.allclose(out, expected, atol=1e-6) and out.stride() == layout(out).stride()
    joined = cat_channels(layout(audio), layout(audio))
    assert torch.equal(joined, torch.cat([audio, audio], 1)) and joined.stride() == layout(joined).stride()


def _reference_cross_attention(layer: CrossModalAttention, video, audio, shift):
    """RS-MMA written out frame by frame, with the windows gathered by explicit indices."""
    batch, channels, frames, height, width = video.shape
    heads = layer.num_heads
    video_tokens = F.group_norm(video.flatten(2), 32, layer.video_norm.weight, layer.video_norm.bias)
    audio_tokens = F.group_norm(audio, 32, layer.audio_norm.weight, layer.audio_norm.bias)
    video_q, video_k, video_v = F.conv1d(video_tokens, layer.video_to_qkv.weight, layer.video_to_qkv.bias).chunk(3, 1)
    audio_q, audio_k, audio_v = F.conv1d(audio_tokens, layer.audio_to_qkv.weight, layer.audio_to_qkv.bias).chunk(3, 1)
    pixels, samples = height * width, audio.shape[-1] // frames

    def attend(q, k, v):  # [C, Lq], [C, Lk] -> [C, Lq]
        q, k, v = (t.reshape(heads, channels // heads, -1) for t in (q, k, v))
        weights = torch.softmax(q.transpose(1, 2) @ k / (channels // heads) ** 0.5, dim=-1)
        return (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(channels, -1)

    video_out, audio_out = torch.zeros_like(video_q), torch.zeros_like(audio_q)
    for b in range(batch):
        for f in range(frames):
            window = [(f + int(shift[b]) + j) % frames for j in range(min(layer.window, frames))]
            video_cols = torch.cat([torch.arange(w * pixels, (w + 1) * pixels) for w in window])
            audio_cols = torch.cat([torch.arange(w * samples, (w + 1) * samples) for w in window])
            own_pixels = slice(f * pixels, (f + 1) * pixels)
            own_samples = slice(f * samples, (f + 1) * samples)
            video_out[b, :, own_pixels] = attend(
                video_q[b, :, own_pixels], audio_k[b][:, audio_cols], audio_v[b][:, audio_cols]
            )
            audio_out[b, :, own_samples] = attend(
                audio_q[b, :, own_samples], video_k[b][:, video_cols], video_v[b][:, video_cols]
            )
    video_out = F.conv1d(video_out, layer.video_to_out.weight.flatten(2), layer.video_to_out.bias)
    audio_out = F.conv1d(audio_out, layer.audio_to_out.weight, layer.audio_to_out.bias)
    return video + video_out.view_as(video), audio + audio_out


@pytest.mark.parametrize("window, shift", [(1, None), (1, [3, 1]), (2, None), (3, [0, 4]), (5, [2, 0])])
def test_windowed_cross_attention_matches_reference(window, shift):
    torch.manual_seed(0)
    layer = CrossModalAttention(64, 4, window, shifted=True)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    video, audio = torch.randn(2, 64, 5, 3, 4), torch.randn(2, 64, 5 * 6)
    shift_tensor = None if shift is None else torch.tensor(shift)
    with torch.no_grad():
        out = layer(video, audio, shift_tensor)
        expected = _reference_cross_attention(layer, video, audio, shift_tensor if shift else torch.zeros(2))
    assert torch.allclose(out[0], expected[0], atol=1e-4)
    assert torch.allclose(out[1], expected[1], atol=1e-4)


@torch.no_grad()
def test_bfloat16_model_stays_close_to_float32():
    torch.manual_seed(0)
    model = CoupledUNet(**TINY).eval()
    video, audio = torch.randn(1, 4, 3, 16, 16), torch.randn(1, 1, 256)
    reference = model(video, audio, 500, window_shift=1)
    low = model.to(torch.bfloat16)(video, audio, 500, window_shift=1)
    assert low.video.dtype == torch.bfloat16
    scale = reference.video.abs().max()
    assert (low.video.float() - reference.video).abs().max() < 0.05 * scale
    assert (low.audio.float() - reference.audio).abs().max() < 0.05 * reference.audio.abs().max()


@pytest.mark.parametrize("grad", [True, False], ids=["training_layout", "inference_layout"])
def test_forward_traces_as_one_graph(grad):
    model = CoupledUNet(**TINY, num_res_blocks=1).eval()
    video, audio = torch.randn(2, 4, 3, 16, 16), torch.randn(2, 1, 256)
    shifts = model.draw_window_shifts(2, torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(grad):
        explanation = torch._dynamo.explain(model)(video, audio, torch.tensor([1, 900]), window_shift=shifts)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize(
    "config",
    [TINY, dict(TINY, num_frames=32, sample_size=8, audio_length=512)],
    ids=["tiny", "frames_equal_channels"],
)
def test_inference_layout_gives_the_training_layout_outputs(config):
    """Without autograd the model runs token-major, with it channels-first: same numbers either way
    (also for the official GroupNorm quirk when the frame count equals the channel count)."""
    torch.manual_seed(0)
    model = CoupledUNet(**config).eval()
    frames, size = config["num_frames"], config["sample_size"]
    video, audio = torch.randn(2, frames, 3, size, size), torch.randn(2, 1, config["audio_length"])
    shifts = model.draw_window_shifts(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        inference = model(video, audio, torch.tensor([3, 700]), window_shift=shifts)
    training = model(video, audio, torch.tensor([3, 700]), window_shift=shifts)
    assert torch.allclose(inference.video, training.video, atol=1e-5)
    assert torch.allclose(inference.audio, training.audio, atol=1e-5)
    assert inference.video.is_contiguous() and inference.audio.is_contiguous()
