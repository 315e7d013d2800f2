import pytest
import torch

from mmdiffusion import CoupledUNet

TOLERANCE = 1e-4


def _max_error(output, reference):
    return (output - reference).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("shift, suffix", [(None, "noshift"), (1, "shift1")])
def test_official_parity(coupled_a_unet, coupled_a_io, shift, suffix):
    io = coupled_a_io
    out = coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift=shift)
    assert out.video.shape == io[f"video_out_{suffix}"].shape
    assert _max_error(out.video, io[f"video_out_{suffix}"]) <= TOLERANCE
    assert _max_error(out.audio, io[f"audio_out_{suffix}"]) <= TOLERANCE


@torch.no_grad()
def test_parity_survives_save_and_load(coupled_a_unet, coupled_a_io, tmp_path):
    coupled_a_unet.save_pretrained(tmp_path)
    reloaded = CoupledUNet.from_pretrained(tmp_path).eval()
    io = coupled_a_io
    out = reloaded(io["video"], io["audio"], io["timesteps"], window_shift=1)
    assert _max_error(out.video, io["video_out_shift1"]) <= TOLERANCE
    assert _max_error(out.audio, io["audio_out_shift1"]) <= TOLERANCE


@torch.no_grad()
def test_shift_changes_the_output(coupled_a_unet, coupled_a_io):
    io = coupled_a_io
    unshifted = coupled_a_unet(io["video"], io["audio"], io["timesteps"])
    shifted = coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift=1)
    assert _max_error(unshifted.video, shifted.video) > 1e-2


@torch.no_grad()
def test_random_shift_is_reproducible_per_seed(coupled_a_unet, coupled_a_io):
    io = coupled_a_io

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift="random", generator=generator)

    first, again = run(0), run(0)
    assert torch.equal(first.video, again.video) and torch.equal(first.audio, again.audio)
    outputs = [run(seed).video for seed in range(1, 6)]
    assert any(_max_error(first.video, other) > 1e-3 for other in outputs)


@torch.no_grad()
def test_per_sample_shift_tensor_matches_single_runs(coupled_a_unet, coupled_a_io):
    io = coupled_a_io
    windows = coupled_a_unet.shifted_cross_attention_windows
    frames = coupled_a_unet.config.num_frames
    shifts = torch.tensor([[frames - w for w in windows], [min(2, frames - w) for w in windows]])
    batch = coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift=shifts)
    for i in range(2):
        alone = coupled_a_unet(
            io["video"][i : i + 1], io["audio"][i : i + 1], io["timesteps"][i : i + 1], window_shift=shifts[i : i + 1]
        )
        assert _max_error(batch.video[i : i + 1], alone.video) < 1e-5
        assert _max_error(batch.audio[i : i + 1], alone.audio) < 1e-5
    # An integer shift is the same tensor for every sample.
    as_int = coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift=2)
    assert _max_error(
        as_int.video[1:], coupled_a_unet(io["video"][1:], io["audio"][1:], io["timesteps"][1:], window_shift=shifts[1:]).video
    ) < 1e-5


def test_window_shift_validation(coupled_a_unet, coupled_a_io):
    io = coupled_a_io
    with pytest.raises(ValueError, match="shape"):
        coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift=torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="window_shift"):
        coupled_a_unet(io["video"], io["audio"], io["timesteps"], window_shift="sometimes")


def test_input_shape_errors(coupled_a_unet, coupled_a_io):
    io = coupled_a_io
    with pytest.raises(ValueError, match=r"video must have shape \[B, 8, 3, 16, 16\]"):
        coupled_a_unet(io["video"][:, :4], io["audio"], io["timesteps"])
    with pytest.raises(ValueError, match="audio must have shape"):
        coupled_a_unet(io["video"], io["audio"][..., :1024], io["timesteps"])
    with pytest.raises(ValueError, match="timestep"):
        coupled_a_unet(io["video"], io["audio"], torch.tensor([1, 2, 3]))


SMALL = dict(num_frames=4, sample_size=16, audio_length=256, model_channels=32, channel_mult=(1, 2),
             cross_attention_downsample_factors=(2,), cross_attention_windows=(1,),
             video_attention_downsample_factors=(2,))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(resblock_updown=False), "resblock_updown"),
        (dict(video_conv_type="3d"), "video_conv_type"),
        (dict(num_classes=10), "class conditioning"),
        (dict(audio_length=258), "divisible by 4"),
        (dict(audio_length=24), "not divisible by num_frames"),
        (dict(sample_size=17), "frame size"),
        (dict(cross_attention_windows=(1, 2)), "one window per"),
        (dict(cross_attention_windows=(5,)), "between 1 and num_frames"),
        (dict(sample_size=48, channel_mult=None), "channel_mult must be given"),
    ],
)
def test_unsupported_configurations_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        CoupledUNet(**{**SMALL, **change})


def test_default_channel_mult_follows_frame_width():
    model = CoupledUNet(num_frames=4, sample_size=64, audio_length=4 * 64, model_channels=32,
                        cross_attention_downsample_factors=(), cross_attention_windows=(),
                        video_attention_downsample_factors=())
    assert len(model.down_blocks) == 4 * 2 + 3  # four levels: 1, 2, 3, 4


def test_frames_equal_channels_normalises_like_the_official_layer():
    """When F == C the official GroupNorm treats frames as channels; the port must follow."""
    from mmdiffusion.models.normalization import video_group_norm

    norm = torch.nn.GroupNorm(32, 32)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 32, 32, 4, 4)  # [B, C, F, H, W] with F == C
    official_layout = x.transpose(1, 2)  # [B, F, C, H, W]
    expected = torch.nn.functional.group_norm(official_layout, 32, norm.weight, norm.bias).transpose(1, 2)
    assert torch.allclose(video_group_norm(x, norm), expected, atol=1e-5)
    y = torch.randn(2, 32, 8, 4, 4)
    assert torch.allclose(video_group_norm(y, norm), torch.nn.functional.group_norm(y, 32, norm.weight, norm.bias), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = CoupledUNet(**SMALL, dropout=0.0)
    video, audio = torch.randn(2, 4, 3, 16, 16), torch.randn(2, 1, 256)
    shifts = torch.tensor([[0] * len(model.shifted_cross_attention_windows), [1, 2, 3, 0, 2]])

    def grads():
        model.zero_grad()
        out = model(video, audio, torch.tensor([3, 500]), window_shift=shifts)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_paper_configuration_parameter_count():
    with torch.device("meta"):
        model = CoupledUNet(cross_attention_head_dim=64)
    assert sum(p.numel() for p in model.parameters()) == 133_675_524
