import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mmdiffusion import MMDiffusionSRPipeline, SuperResolutionUNet
from mmdiffusion.convert_weights import convert_official_sr_state_dict, infer_sr_config_from_state_dict

FIXTURES = Path(
    os.environ.get(
        "MMDIFFUSION_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "official"
    )
)


@pytest.fixture(scope="module")
def official():
    """The official random-weight SR checkpoint, its inputs/outputs and its constructor arguments."""
    paths = [FIXTURES / name for name in ("sr_a.pt", "sr_a_io.safetensors", "meta.json")]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        pytest.skip(f"official SR fixtures not found: {', '.join(missing)} (set MMDIFFUSION_FIXTURES)")
    from safetensors.torch import load_file

    state_dict = torch.load(paths[0], map_location="cpu", weights_only=True)
    meta = json.loads(paths[2].read_text())["sr_a"]
    return state_dict, load_file(paths[1]), meta


def fixture_config(meta):
    kwargs = meta["ImageSuperResModel_kwargs"]
    return dict(
        sample_size=kwargs["image_size"],
        low_res_size=meta["low_res_size"],
        in_channels=kwargs["in_channels"],
        out_channels=kwargs["out_channels"],
        model_channels=kwargs["model_channels"],
        channel_mult=tuple(kwargs["channel_mult"]),
        num_res_blocks=kwargs["num_res_blocks"],
        attention_downsample_factors=tuple(kwargs["attention_resolutions"]),
        num_heads=kwargs["num_heads"],
        num_head_channels=kwargs["num_head_channels"],
        use_scale_shift_norm=kwargs["use_scale_shift_norm"],
        resblock_updown=kwargs["resblock_updown"],
    )


@pytest.fixture(scope="module")
def converted(official):
    state_dict, io, meta = official
    config = fixture_config(meta)
    model = SuperResolutionUNet(**config).eval()
    model.load_state_dict(convert_official_sr_state_dict(state_dict, config), strict=True)
    return model, io


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(
        sample_size=16,
        low_res_size=8,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_downsample_factors=(2,),
    )
    config.update(overrides)
    return SuperResolutionUNet(**config).eval()


def tiny_pipeline(**overrides):
    pipe = MMDiffusionSRPipeline(sr_unet=tiny_model(**overrides))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- model and conversion against the official implementation -------------------------------------------------


def test_infer_config_reads_the_official_structure(official):
    state_dict, _, meta = official
    inferred = infer_sr_config_from_state_dict(state_dict)
    expected = fixture_config(meta)
    for key, value in inferred.items():
        assert value == expected[key], key


def test_converted_model_matches_official_output(converted, official):
    model, io = converted
    assert sum(p.numel() for p in model.parameters()) == official[2]["params"]
    with torch.no_grad():
        out = model(io["x"], io["timesteps"], io["low_res"]).sample
    assert out.shape == io["out"].shape  # every channel, the learned-sigma ones included
    assert (out - io["out"]).abs().max().item() <= 1e-4


def test_conversion_names_the_offending_key(official):
    state_dict, _, meta = official
    config = fixture_config(meta)

    extra = dict(state_dict, **{"label_emb.weight": torch.zeros(10, 128)})
    with pytest.raises(ValueError, match="label_emb.weight"):
        convert_official_sr_state_dict(extra, config)

    missing = {k: v for k, v in state_dict.items() if k != "middle_block.1.qkv.weight"}
    with pytest.raises(ValueError, match="middle_block.1.qkv.weight"):
        convert_official_sr_state_dict(missing, config)

    with pytest.raises(ValueError, match=r"out\.2\.weight.*\(6, 32, 3, 3\).*\(3, 32, 3, 3\)"):
        convert_official_sr_state_dict(state_dict, dict(config, out_channels=3))


def test_save_pretrained_round_trip(converted, tmp_path):
    model, io = converted
    model.save_pretrained(tmp_path / "sr_unet")
    reloaded = SuperResolutionUNet.from_pretrained(tmp_path / "sr_unet").eval()
    assert list(reloaded.config.attention_downsample_factors) == list(model.config.attention_downsample_factors)
    with torch.no_grad():
        expected = model(io["x"], io["timesteps"], io["low_res"]).sample
        actual = reloaded(io["x"], io["timesteps"], io["low_res"]).sample
    assert torch.equal(expected, actual)


def test_pipeline_reproduces_official_ddim(converted):
    model, io = converted
    pipe = MMDiffusionSRPipeline(sr_unet=model)  # the default scheduler is the official DDIM
    pipe.set_progress_bar_config(disable=True)
    frames = ((io["ddim5_low_res"] + 1) / 2).permute(0, 2, 3, 1)  # [F=1, h, w, 3], 0..1
    out = pipe(frames, num_inference_steps=5, latents=io["ddim5_noise"], output_type="latent").frames
    assert pipe.sr_scheduler.timesteps.tolist() == [800, 600, 400, 200, 0]
    assert out.shape == (1, 1, 3, 32, 32)
    assert (out[:, 0] - io["ddim5_out"]).abs().max().item() <= 1e-3


# --- model behaviour without fixtures ----------------------------------------------------------------------------


def test_model_refuses_unsupported_options():
    with pytest.raises(ValueError, match="num_class_embeds"):
        tiny_model(num_class_embeds=10)
    with pytest.raises(ValueError, match="out_channels"):
        tiny_model(out_channels=5)
    with pytest.raises(ValueError, match="num_heads"):
        tiny_model(num_heads=3)


def test_timestep_forms_and_bad_shapes():
    model = tiny_model()
    sample, low_res = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        from_int = model(sample, 300, low_res).sample
        from_tensor = model(sample, torch.tensor([300, 300]), low_res).sample
        other_step = model(sample, torch.tensor([300, 10]), low_res).sample
    assert from_int.shape == (2, 6, 16, 16)
    assert torch.allclose(from_int, from_tensor)
    assert not torch.allclose(from_int[1], other_step[1])
    with pytest.raises(ValueError, match="low_res"):
        model(sample, 300, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="timestep"):
        model(sample, torch.tensor([1, 2, 3]), low_res)


def test_gradient_checkpointing_gives_the_same_gradients():
    sample, low_res, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.tensor([5, 900])

    def gradients(model):
        model.train()
        model(sample, t, low_res).sample.square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    reference = gradients(tiny_model())
    checkpointed_model = tiny_model()
    checkpointed_model.enable_gradient_checkpointing()
    assert checkpointed_model.is_gradient_checkpointing
    checkpointed = gradients(checkpointed_model)
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


# --- pipeline behaviour ------------------------------------------------------------------------------------------


def test_static_video_shared_and_independent_noise():
    pipe = tiny_pipeline()
    frame = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    video = np.broadcast_to(frame, (1, 3, 8, 8, 3)).copy()
    shared = pipe(video, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert shared.shape == (1, 3, 3, 16, 16)
    for index in (1, 2):
        torch.testing.assert_close(shared[0, index], shared[0, 0], atol=1e-6, rtol=0)
    independent = pipe(
        video, num_inference_steps=2, generator=torch.Generator().manual_seed(0), shared_noise=False, output_type="pt"
    ).frames
    assert (independent[0, 0] - independent[0, 1]).abs().max() > 1e-2


def test_chunking_does_not_change_the_result():
    pipe = tiny_pipeline()
    video = torch.rand(2, 3, 8, 8, 3)
    whole = pipe(video, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="latent")
    seen = []

    def record(pipeline, step, timestep, callback_kwargs):
        seen.append((step, tuple(callback_kwargs["latents"].shape)))
        return callback_kwargs

    chunked = pipe(
        video,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(1),
        frames_per_batch=2,  # 6 frames in 3 chunks
        output_type="latent",
        callback_on_step_end=record,
    )
    torch.testing.assert_close(chunked.frames, whole.frames, atol=1e-5, rtol=0)
    assert seen == [(step, (2, 3, 16, 16)) for _ in range(3) for step in range(2)]


def test_output_types_and_input_forms():
    pipe = tiny_pipeline()
    generator = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    frames = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)  # [F, H, W, 3]: one video

    as_np = pipe(frames, num_inference_steps=1, generator=generator()).frames
    assert as_np.shape == (1, 2, 16, 16, 3) and as_np.dtype == np.float32
    assert 0.0 <= as_np.min() and as_np.max() <= 1.0
    as_pt = pipe(frames, num_inference_steps=1, generator=generator(), output_type="pt").frames
    np.testing.assert_allclose(as_pt.permute(0, 1, 3, 4, 2).numpy(), as_np, atol=1e-6)
    latent = pipe(frames, num_inference_steps=1, generator=generator(), output_type="latent").frames
    torch.testing.assert_close(((latent + 1) / 2).clamp(0, 1), as_pt)
    channel_first = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # [B, F, 3, H, W], the "pt" layout
    from_pt = pipe(channel_first, num_inference_steps=1, generator=generator(), output_type="latent").frames
    torch.testing.assert_close(from_pt, latent)

    images = [PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames]
    as_pil = pipe([images, images], num_inference_steps=1, generator=generator(), output_type="pil").frames
    assert len(as_pil) == 2 and len(as_pil[0]) == 2 and as_pil[0][0].size == (16, 16)


def test_bad_frames_are_refused_with_a_clear_message():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        pipe(np.zeros((1, 2, 8, 8, 4), dtype=np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(np.full((2, 8, 8, 3), -1.0, dtype=np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="latents"):
        pipe(np.zeros((2, 8, 8, 3), dtype=np.float32), num_inference_steps=1, latents=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="output_type"):
        pipe(np.zeros((2, 8, 8, 3), dtype=np.float32), output_type="mp4")


def test_wrong_size_frames_are_resized_with_a_warning():
    pipe = tiny_pipeline()
    with pytest.warns(UserWarning, match="resizing"):
        out = pipe(np.random.default_rng(2).random((1, 2, 12, 12, 3)), num_inference_steps=1).frames
    assert out.shape == (1, 2, 16, 16, 3)


def test_pipeline_save_and_load(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "sr")
    index = json.loads((tmp_path / "sr" / "model_index.json").read_text())
    assert index["sr_unet"] == ["mmdiffusion", "SuperResolutionUNet"]
    reloaded = MMDiffusionSRPipeline.from_pretrained(tmp_path / "sr")
    reloaded.set_progress_bar_config(disable=True)
    frames = torch.rand(1, 8, 8, 3)
    expected = pipe(frames, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="latent")
    actual = reloaded(frames, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="latent")
    assert torch.equal(expected.frames, actual.frames)
    assert reloaded.sr_scheduler.config.set_alpha_to_one and reloaded.sr_scheduler.config.clip_sample
