"""Zero-shot conditional generation (audio -> video, video -> audio) with the official fixture model."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from mmdiffusion import MMDiffusionDPMSolverScheduler, MMDiffusionPipeline, export_to_video
from mmdiffusion.pipelines.mm_diffusion.pipeline_mm_diffusion import noise_levels


@pytest.fixture(scope="module")
def pipe(converted_coupled_a):
    pipeline = MMDiffusionPipeline.from_pretrained(converted_coupled_a)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _tone(seconds, rate, frequency=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * frequency * t)] * channels).astype(np.float32)


def _frames(count, height=24, width=32):
    rng = np.random.default_rng(0)
    return rng.random((count, height, width, 3), dtype=np.float32)


SCHEDULERS = {
    "dpm-solver": lambda config: MMDiffusionDPMSolverScheduler.from_config(config),
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
}


@pytest.fixture(params=sorted(SCHEDULERS))
def scheduled_pipe(request, pipe):
    original = pipe.scheduler
    pipe.scheduler = SCHEDULERS[request.param](original.config)
    yield pipe
    pipe.scheduler = original


@pytest.mark.parametrize("method", ["replacement", "guidance"])
def test_audio_to_video_keeps_the_given_audio(scheduled_pipe, method):
    audio = _tone(0.128, 16000)  # exactly the fixture model's 2048 samples at 16 kHz
    out = scheduled_pipe(audio=audio, sample_rate=16000, condition_method=method, num_inference_steps=4,
                         generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.allclose(out.audio[0], torch.from_numpy(audio), atol=1e-6)
    assert out.frames.shape == (1, 8, 3, 16, 16) and torch.isfinite(out.frames).all()
    again = scheduled_pipe(audio=audio, sample_rate=16000, condition_method=method, num_inference_steps=4,
                           generator=torch.Generator().manual_seed(0), output_type="pt")
    if method == "replacement":
        assert torch.equal(out.frames, again.frames)
    else:  # multithreaded CPU backward passes may sum in another order: equal up to rounding
        torch.testing.assert_close(out.frames, again.frames, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["replacement", "guidance"])
def test_video_to_audio_keeps_the_given_video(scheduled_pipe, method):
    frames = _frames(8, 16, 16)
    out = scheduled_pipe(video=frames, frame_rate=10, condition_method=method, num_inference_steps=4,
                         generator=torch.Generator().manual_seed(1), output_type="np")
    assert np.allclose(out.frames[0], frames, atol=1e-6)
    assert out.audio.shape == (1, 1, 2048) and np.isfinite(out.audio).all()


def test_conditioning_steers_the_other_modality(pipe):
    generator = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    quiet = pipe(audio=np.zeros((1, 2048), np.float32), sample_rate=16000, num_inference_steps=4,
                 generator=generator(), output_type="latent")
    loud = pipe(audio=_tone(0.128, 16000), sample_rate=16000, num_inference_steps=4, generator=generator(),
                output_type="latent")
    assert not torch.allclose(quiet.frames, loud.frames, atol=1e-3)
    replacement = pipe(audio=_tone(0.128, 16000), sample_rate=16000, num_inference_steps=4, generator=generator(),
                       output_type="latent", condition_method="guidance", guidance_scale=0.0)
    # lambda 0 is replacement (the gradient pass runs the autograd kernels: equal up to rounding, relative to the
    # large values random weights give)
    assert (replacement.frames - loud.frames).abs().max() <= 1e-5 * loud.frames.abs().max()


def test_guidance_coefficients_differ(pipe):
    kwargs = dict(audio=_tone(0.128, 16000), sample_rate=16000, num_inference_steps=4, output_type="latent",
                  condition_method="guidance", guidance_scale=50.0)
    official = pipe(generator=torch.Generator().manual_seed(3), **kwargs)
    paper = pipe(generator=torch.Generator().manual_seed(3), guidance_coefficient="paper", **kwargs)
    assert not torch.allclose(official.frames, paper.frames)


def test_clean_guidance_is_the_next_step_mismatch_without_its_per_step_factor(pipe):
    # With the fixed condition noise, the one-step mismatch is the clean-estimate mismatch times
    # (alpha_s - sigma_s alpha_t / sigma_t), whatever the model predicts: the gradients differ by its square.
    generator = torch.Generator().manual_seed(0)
    condition = torch.randn(1, *pipe.audio_shape, generator=generator)
    noise = torch.randn(condition.shape, generator=generator)
    levels = noise_levels(pipe.scheduler, 4, "cpu")
    (alpha, sigma), (next_alpha, next_sigma) = levels[1], levels[2]
    audio_latents = alpha * condition + sigma * noise
    start = torch.randn(1, *pipe.video_shape, generator=generator)

    def gradient(guidance_loss):
        video_latents = start.clone().requires_grad_(True)
        prediction = pipe.unet(video_latents, audio_latents, 600, window_shift=0)
        return pipe.guidance_gradient(prediction, "audio", condition, noise, video_latents, audio_latents,
                                      levels[1], levels[2], video_latents, guidance_loss)

    clean, next_step = gradient("clean"), gradient("next_step")
    factor = next_alpha - next_sigma * alpha / sigma
    assert clean.abs().max() > 0
    assert torch.allclose(next_step, factor**2 * clean, rtol=1e-3, atol=1e-6 * clean.abs().max().item())
    with pytest.raises(ValueError, match="guidance_loss"):
        pipe(audio=_tone(0.1, 16000), sample_rate=16000, guidance_loss="x0")


def test_media_inputs_are_fitted_with_a_warning(pipe, tmp_path):
    stereo = _tone(3.0, 44100, channels=2)
    with pytest.warns(UserWarning, match="mixed to mono.*resampled to 16000 Hz.*cropped"):
        out = pipe(audio=torch.from_numpy(stereo), sample_rate=44100, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0))
    assert out.audio.shape == (1, 1, 2048)
    clip = tmp_path / "clip.mp4"
    export_to_video(_frames(30, 240, 320), clip, frame_rate=30)
    with pytest.warns(UserWarning, match="resized"):
        out = pipe(video=str(clip), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 8, 16, 16, 3)


def test_list_of_clips_makes_a_batch(pipe):
    clips = [_tone(0.128, 16000, 220.0), _tone(0.128, 16000, 880.0)]
    out = pipe(audio=clips, sample_rate=16000, num_inference_steps=2, output_type="pt",
               generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert out.frames.shape[0] == 2
    assert torch.allclose(out.audio[1, 0], torch.from_numpy(clips[1][0]), atol=1e-6)


def test_conditioning_errors(pipe, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        pipe(audio=_tone(0.1, 16000), sample_rate=16000, video=_frames(8))
    with pytest.raises(ValueError, match="condition_method"):
        pipe(audio=_tone(0.1, 16000), sample_rate=16000, condition_method="inpaint")
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(audio=_tone(0.1, 16000), sample_rate=16000, guidance_scale=-1)
    silent = tmp_path / "silent.mp4"
    export_to_video(_frames(10, 16, 16), silent, frame_rate=10)
    with pytest.raises(ValueError, match="no audio"):
        pipe(audio=str(silent))
    with pytest.raises(FileNotFoundError):
        pipe(audio=str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="sample_rate"):
        pipe(audio=_tone(0.1, 16000))
    with pytest.raises(ValueError):
        pipe(video=np.zeros((2, 2, 8, 16, 16, 3), np.float32), frame_rate=10)
    with pytest.raises(ValueError):
        pipe(audio=np.zeros((1, 0), np.float32), sample_rate=16000)


@pytest.mark.parametrize("conditioned", ["audio", "video"])
def test_guidance_gradient_of_a_v_model_equals_that_of_the_equivalent_noise_model(pipe, conditioned):
    from mmdiffusion.models.coupled_unet import CoupledUNetOutput

    torch.manual_seed(0)
    video, audio = torch.randn(1, *pipe.video_shape), torch.randn(1, *pipe.audio_shape)
    latents = video if conditioned == "video" else audio
    condition, noise = torch.rand_like(latents) * 2 - 1, torch.randn_like(latents)
    level, next_level = (torch.tensor(0.6), torch.tensor(0.8)), (torch.tensor(0.7), torch.tensor(0.7))
    alpha, sigma = level
    original = pipe.scheduler

    def gradient(prediction_type):
        target = (audio if conditioned == "video" else video).clone().requires_grad_(True)
        eps = torch.tanh(latents + target.mean())  # any differentiable function of the generated modality
        output = eps if prediction_type == "epsilon" else alpha * eps - sigma * (latents - sigma * eps) / alpha
        other = torch.zeros(1)
        prediction = CoupledUNetOutput(video=output if conditioned == "video" else other,
                                       audio=output if conditioned == "audio" else other)
        pipe.scheduler = DDIMScheduler.from_config(original.config, prediction_type=prediction_type)
        try:
            args = (video, target) if conditioned == "video" else (target, audio)
            return pipe.guidance_gradient(prediction, conditioned, condition, noise, *args, level, next_level, target)
        finally:
            pipe.scheduler = original

    torch.testing.assert_close(gradient("v_prediction"), gradient("epsilon"), rtol=1e-4, atol=1e-6)
