import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from mmdiffusion import CoupledUNet, MMDiffusionDPMSolverScheduler, MMDiffusionPipeline, export_to_video
from mmdiffusion.schedulers import make_scheduler


@pytest.fixture(scope="module")
def pipe(converted_coupled_a):
    pipeline = MMDiffusionPipeline.from_pretrained(converted_coupled_a)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def official_ddim(config):
    """DDIM as the official `ddimN` respacing runs it: leading spacing, x0 clipped, alpha_prev 1 at the end."""
    return make_scheduler("ddim", config)


def test_converted_folder_is_a_complete_pipeline(pipe, converted_coupled_a):
    assert isinstance(pipe.scheduler, MMDiffusionDPMSolverScheduler)
    assert pipe.sr_unet is None
    assert pipe.config.frame_rate == 10 and pipe.config.sample_rate == 16000
    index = (converted_coupled_a / "model_index.json").read_text()
    assert '"mmdiffusion",\n    "CoupledUNet"' in index


def test_ddim_parity(pipe, coupled_a_io):
    io = coupled_a_io
    pipe.scheduler = official_ddim(pipe.scheduler.config)
    try:
        out = pipe(
            batch_size=2, num_inference_steps=10, video_latents=io["sampler_xT_video"],
            audio_latents=io["sampler_xT_audio"], window_shift=False, output_type="latent",
        )
    finally:
        pipe.scheduler = MMDiffusionDPMSolverScheduler.from_config(pipe.scheduler.config)
    assert (out.frames - io["ddim10_video"]).abs().max() <= 1e-3
    assert (out.audio - io["ddim10_audio"]).abs().max() <= 1e-3


def test_dpm_solver_parity(pipe, coupled_a_io):
    io = coupled_a_io
    out = pipe(
        batch_size=2, num_inference_steps=20, video_latents=io["sampler_xT_video"],
        audio_latents=io["sampler_xT_audio"], window_shift=False, output_type="latent",
    )
    for produced, reference in ((out.frames, io["dpm20_video"]), (out.audio, io["dpm20_audio"])):
        assert (produced - reference).abs().max() / reference.abs().max() <= 1e-4


def _sample(pipe, seed, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)


def test_seed_determines_the_sample(pipe):
    first, again, other = _sample(pipe, 1), _sample(pipe, 1), _sample(pipe, 2)
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.audio, again.audio)
    assert not np.allclose(first.frames, other.frames)


def test_batch_with_generator_list_equals_single_runs(pipe):
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    batch = pipe(batch_size=2, generator=generators, num_inference_steps=4, output_type="latent")
    for i, seed in enumerate((3, 4)):
        alone = _sample(pipe, seed, output_type="latent")
        # Random weights make the trajectory large: compare relative to its scale.
        for produced, reference in ((batch.frames[i], alone.frames[0]), (batch.audio[i], alone.audio[0])):
            assert (produced - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_random_window_shift_comes_from_the_generator(pipe):
    shifted = _sample(pipe, 5, output_type="latent")
    unshifted = _sample(pipe, 5, output_type="latent", window_shift=False)
    assert not torch.allclose(shifted.frames, unshifted.frames, atol=1e-4)


def test_output_types(pipe):
    frames_np = _sample(pipe, 0, num_inference_steps=2)
    assert frames_np.frames.shape == (1, 8, 16, 16, 3) and frames_np.frames.dtype == np.float32
    assert frames_np.frames.min() >= 0 and frames_np.frames.max() <= 1
    assert isinstance(frames_np.audio, np.ndarray) and frames_np.audio.shape == (1, 1, 2048)
    assert np.abs(frames_np.audio).max() <= 1
    pt = _sample(pipe, 0, num_inference_steps=2, output_type="pt")
    assert pt.frames.shape == (1, 8, 3, 16, 16) and torch.is_tensor(pt.audio)
    assert np.allclose(pt.frames.permute(0, 1, 3, 4, 2).numpy(), frames_np.frames, atol=1e-6)
    pil = _sample(pipe, 0, num_inference_steps=2, output_type="pil")
    assert len(pil.frames) == 1 and len(pil.frames[0]) == 8 and pil.frames[0][0].size == (16, 16)
    assert pt.frame_rate == 10 and pt.sample_rate == 16000


def test_callback_on_step_end_sees_and_replaces_latents(pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append(step)
        return {"audio_latents": torch.zeros_like(tensors["audio_latents"])}

    out = _sample(pipe, 0, num_inference_steps=3, output_type="latent", callback_on_step_end=callback)
    assert seen == [0, 1, 2] and torch.count_nonzero(out.audio) == 0


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = MMDiffusionPipeline.from_pretrained(tmp_path / "saved")
    reloaded.set_progress_bar_config(disable=True)
    assert np.array_equal(_sample(pipe, 7).frames, _sample(reloaded, 7).frames)


@pytest.mark.parametrize(
    "scheduler_class", [DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler, DDPMScheduler]
)
def test_diffusers_schedulers_can_be_swapped_in(pipe, scheduler_class):
    original = pipe.scheduler
    pipe.scheduler = scheduler_class.from_config(original.config)
    try:
        out = _sample(pipe, 0, num_inference_steps=5, output_type="pt")
    finally:
        pipe.scheduler = original
    assert out.frames.shape == (1, 8, 3, 16, 16) and out.audio.shape == (1, 1, 2048)
    assert torch.isfinite(out.frames).all() and torch.isfinite(out.audio).all()


def test_learned_sigma_outputs_are_split_for_each_scheduler():
    unet = CoupledUNet(num_frames=4, sample_size=16, audio_length=256, model_channels=32, channel_mult=(1, 2),
                       cross_attention_downsample_factors=(2,), cross_attention_windows=(1,),
                       video_attention_downsample_factors=(), learn_sigma=True)
    for scheduler in (DDPMScheduler(variance_type="learned_range"), DDIMScheduler(), MMDiffusionDPMSolverScheduler()):
        pipeline = MMDiffusionPipeline(unet=unet, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        out = pipeline(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent")
        assert out.frames.shape == (1, 4, 3, 16, 16) and out.audio.shape == (1, 1, 256)
        assert torch.isfinite(out.frames).all()


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="needs a pipeline with an SR model"):
        pipe(super_resolution=True)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="mp4")
    with pytest.raises(ValueError, match="generators for a batch of 3"):
        pipe(batch_size=3, generator=[torch.Generator()])
    with pytest.raises(ValueError, match=r"video_latents must have shape \[1, 8, 3, 16, 16\]"):
        pipe(video_latents=torch.zeros(1, 8, 3, 8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0)


def test_export_writes_one_mp4_per_sample(pipe, tmp_path):
    import av

    out = pipe(batch_size=2, num_inference_steps=2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    paths = export_to_video(out, tmp_path / "clip.mp4")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["clip_000.mp4", "clip_001.mp4"]
    for path in paths:
        with av.open(path) as container:
            assert sum(1 for _ in container.decode(video=0)) == 8
            assert container.streams.audio[0].rate == 16000
            assert float(container.streams.video[0].average_rate) == 10
    with pytest.raises(FileExistsError):
        export_to_video(out, tmp_path / "clip.mp4")
