"""MMDiffusionPipeline: joint audio-video generation with MM-Diffusion's coupled U-Net."""

import contextlib
import inspect
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ... import media
from ...models.coupled_unet import CoupledUNet
from ...models.sr_unet import SuperResolutionUNet
from ...schedulers.scheduling_mm_dpmsolver import noise_from_model_output
from .pipeline_loading import OwnComponentsMixin
from .pipeline_mm_diffusion_sr import MMDiffusionSRPipeline
from .pipeline_output import MMDiffusionPipelineOutput

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
CONDITION_METHODS = ("replacement", "guidance")
GUIDANCE_COEFFICIENTS = ("official", "paper")
GUIDANCE_LOSSES = ("next_step", "clean")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from mmdiffusion import MMDiffusionPipeline, export_to_video

        >>> pipe = MMDiffusionPipeline.from_pretrained("./mm-diffusion-landscape")
        >>> out = pipe(generator=torch.Generator().manual_seed(0))
        >>> out.frames.shape, out.audio.shape  # (1, 16, 256, 256, 3), (1, 1, 25600)
        >>> export_to_video(out, "landscape.mp4")
        ```
"""


def step_kwargs(scheduler: SchedulerMixin, generator) -> Dict[str, Any]:
    """Keyword arguments that `scheduler.step` accepts: the official DDIM re-derives the noise from the
    clipped x0 (`use_clipped_model_output`), and stochastic samplers draw from the pipeline's generator."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "use_clipped_model_output" in accepted:
        kwargs["use_clipped_model_output"] = True
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def learns_variance(scheduler: SchedulerMixin) -> bool:
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def noise_levels(scheduler: SchedulerMixin, num_inference_steps: int, device) -> torch.Tensor:
    """`[steps + 1, 2]`: the (alpha, sigma) with which a sample ``alpha * x0 + sigma * noise`` enters the model
    at each step, in the scheduler's own latent scale, then (1, 0) for the clean end. Read from the scheduler
    itself: `sample_alphas`/`sample_sigmas` where it keeps them (the exact DPM-Solver), else its `add_noise`."""
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    if getattr(scheduler, "sample_alphas", None) is not None:
        levels = torch.stack([scheduler.sample_alphas, scheduler.sample_sigmas], dim=1)[: len(scheduler.timesteps)]
    else:
        one, zero = torch.ones(1, device=device), torch.zeros(1, device=device)
        levels = torch.stack(
            [
                torch.cat([scheduler.add_noise(one, zero, t[None]), scheduler.add_noise(zero, one, t[None])])
                for t in scheduler.timesteps
            ]
        )
    return torch.cat([levels.float().cpu(), torch.tensor([[1.0, 0.0]])])


class MMDiffusionPipeline(OwnComponentsMixin, DiffusionPipeline):
    r"""
    Joint audio-video generation with MM-Diffusion (Ruan et al., CVPR 2023).

    Video and audio are denoised together by one [`CoupledUNet`]; each modality is stepped by its own copy of
    `scheduler` (schedulers keep per-trajectory state), so setting `pipe.scheduler` is all it takes to change
    the sampler. The frames can then be upscaled by the optional super-resolution stage.

    Args:
        unet ([`CoupledUNet`]): The coupled audio-video denoiser.
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler, configured with the model's training schedule and
            `prediction_type` (ε for the official models, v for models trained with it); converted checkpoints
            default to [`MMDiffusionDPMSolverScheduler`] (the paper's sampler).
        sr_unet ([`SuperResolutionUNet`], *optional*): Frame super-resolution model.
        sr_scheduler ([`SchedulerMixin`], *optional*): Its scheduler (DDIM, 25 steps in the paper).
        frame_rate (`float`, defaults to 10): Frames per second the model was trained at.
        sample_rate (`int`, defaults to 16000): Audio samples per second the model was trained at.
    """

    model_cpu_offload_seq = "unet->sr_unet"
    _optional_components = ["sr_unet", "sr_scheduler"]
    _callback_tensor_inputs = ["video_latents", "audio_latents"]

    def __init__(
        self,
        unet: CoupledUNet,
        scheduler: SchedulerMixin,
        sr_unet: Optional[SuperResolutionUNet] = None,
        sr_scheduler: Optional[SchedulerMixin] = None,
        frame_rate: float = 10,
        sample_rate: int = 16000,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, sr_unet=sr_unet, sr_scheduler=sr_scheduler)
        self.register_to_config(frame_rate=frame_rate, sample_rate=sample_rate)
        self.video_processor = VideoProcessor(do_resize=False)

    @property
    def video_shape(self):
        return self.unet.video_shape

    @property
    def audio_shape(self):
        return self.unet.audio_shape

    def check_inputs(
        self, batch_size, num_inference_steps, generator, video_latents, audio_latents, output_type,
        super_resolution, callback_on_step_end_tensor_inputs,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}; give one per sample")
        for name, latents, shape in (
            ("video_latents", video_latents, self.video_shape),
            ("audio_latents", audio_latents, self.audio_shape),
        ):
            if latents is not None and tuple(latents.shape) != (batch_size, *shape):
                raise ValueError(f"{name} must have shape {[batch_size, *shape]}, got {list(latents.shape)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if super_resolution and self.sr_unet is None:
            raise ValueError("super_resolution=True needs a pipeline with an SR model (sr_unet), and this one has none")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, got {unknown}")

    def prepare_latents(self, shape, latents, generator, device, dtype, init_noise_sigma):
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * init_noise_sigma

    def window_shifts(self, window_shift, batch_size, generator, device):
        """Per-sample shifts for one denoising step: drawn here, outside the U-Net (and any compiled region),
        from the pipeline's generator(s), so that a seed fixes the whole sample."""
        if window_shift == "random":
            return self.unet.draw_window_shifts(batch_size, generator, device)
        if window_shift is False:
            return None
        return window_shift

    def denoise_step(self, scheduler, model_output, t, latents, extra_step_kwargs, channel_axis):
        """Step one modality. Learned-sigma outputs carry the variance after the noise on the channel axis:
        schedulers that use it take the whole output in channels-first layout, the others only the noise."""
        channels = latents.shape[channel_axis]
        if model_output.shape[channel_axis] == 2 * channels and not learns_variance(scheduler):
            model_output = model_output.narrow(channel_axis, 0, channels)
        if channel_axis == 1:
            return scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample
        # Video [B, F, C, H, W]: such schedulers split channels on axis 1.
        step = scheduler.step(model_output.transpose(1, 2), t, latents.transpose(1, 2), **extra_step_kwargs)
        return step.prev_sample.transpose(1, 2)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 20,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        video_latents: Optional[torch.Tensor] = None,
        audio_latents: Optional[torch.Tensor] = None,
        window_shift: Union[str, bool, None, int, torch.Tensor] = "random",
        super_resolution: Optional[bool] = None,
        sr_num_inference_steps: int = 25,
        sr_shared_noise: bool = True,
        audio: Union[None, str, np.ndarray, torch.Tensor, list] = None,
        video: Union[None, str, np.ndarray, torch.Tensor, list] = None,
        sample_rate: Optional[int] = None,
        frame_rate: Optional[float] = None,
        audio_offset: float = 0.0,
        video_offset: float = 0.0,
        condition_method: str = "replacement",
        guidance_scale: float = 3.0,
        guidance_coefficient: str = "official",
        guidance_loss: str = "next_step",
        condition_noise: str = "fixed",
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[[DiffusionPipeline, int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["video_latents", "audio_latents"],
    ):
        r"""
        Generate videos with their soundtracks.

        Args:
            batch_size (`int`, defaults to 1): Number of samples.
            num_inference_steps (`int`, defaults to 20): Denoising steps (model evaluations for the DPM-Solver).
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*): Source of the noise and of the
                random window shifts; a list gives each sample its own stream, so a batch equals its samples
                generated alone.
            video_latents (`torch.Tensor`, *optional*): Starting noise `[B, F, C, H, W]`.
            audio_latents (`torch.Tensor`, *optional*): Starting noise `[B, C, T]`.
            window_shift (`"random"`, `False`, `int` or `torch.Tensor`, defaults to `"random"`): RS-MMA window
                shifts: `"random"` draws them per sample and step from `generator` (the official sampling);
                `False` or `None` disables shifting; an int or a `[B, blocks]` tensor fixes them (see
                [`CoupledUNet.forward`]).
            super_resolution (`bool`, *optional*): Upscale the frames with the SR stage; by default when the
                pipeline has one. `True` without one is an error.
            sr_num_inference_steps (`int`, defaults to 25): Steps of the SR stage.
            sr_shared_noise (`bool`, defaults to `True`): One SR noise for all frames of a video (official).
            audio (path, array, tensor or list, *optional*): Zero-shot audio-to-video: generate the video for this
                soundtrack (a file path - wav, flac, mp3, or a video file's audio track - or an array `[T]`/`[C, T]`
                with `sample_rate`; a list gives one per sample). It is mixed to the model's channels, resampled to
                its rate and cropped (from `audio_offset` seconds) or padded to its length, with a warning saying so.
            video (path, array, tensor, PIL list or list, *optional*): Zero-shot video-to-audio: generate the
                soundtrack for these frames (a file path, `[F, H, W, 3]` or `[B, F, H, W, 3]` uint8 or float 0..1, or
                a list of PIL images, with `frame_rate` for arrays). It is resampled in time to the model's frame rate,
                resized and center-cropped to its size, and cropped (from `video_offset`) or padded to its length.
            sample_rate (`int`, *optional*): Sample rate of an `audio` array.
            frame_rate (`float`, *optional*): Frame rate of a `video` array or image list.
            audio_offset (`float`), video_offset (`float`): Where (seconds) to start cropping a longer input.
            condition_method (`str`, defaults to `"replacement"`): How the given modality steers the other (paper
                section 3.4): `"replacement"` feeds the model the given modality diffused to the current noise level
                at every step; `"guidance"` also moves the generated modality along the gradient of the mismatch
                between the model's one-step prediction of the given modality and the given modality diffused to the
                next noise level (scale `guidance_scale`, the paper's lambda).
            guidance_scale (`float`, defaults to 3.0): lambda of `"guidance"` (the official scripts use 3).
            guidance_coefficient (`str`, defaults to `"official"`): The noise-level factor of the guidance step:
                `"official"` scales by sqrt(alpha_bar_t) as the official implementation does; `"paper"` by
                sqrt(1 - alpha_bar_t) as the paper's formula writes it.
            guidance_loss (`str`, defaults to `"next_step"`): The mismatch that `"guidance"` descends: `"next_step"`
                compares the model's one-step prediction of the given modality with the given modality diffused to
                the next noise level (the official code); `"clean"` compares the model's clean-sample estimate of
                the given modality with the given modality itself (reconstruction guidance, Ho et al., 2022). With
                the fixed condition noise the two differ by a per-step factor, `(alpha_s - sigma_s alpha_t /
                sigma_t)^2`, which all but vanishes at the noisiest steps, where the generated modality takes its
                shape: `"clean"` steers there too, at scales of hundreds to thousands (the mismatch is a mean over
                the given modality's values).
            condition_noise (`str`, defaults to `"fixed"`): `"fixed"` diffuses the given modality with one noise drawn
                once (the official behaviour); `"fresh"` draws a new noise at every step.
            output_type (`str`, defaults to `"np"`): `"np"`, `"pt"`, `"pil"` or `"latent"` (see
                [`MMDiffusionPipelineOutput`]).
            return_dict (`bool`, defaults to `True`): Return a [`MMDiffusionPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): Called after each step as
                `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; it may return replacements for
                the tensors named in `callback_on_step_end_tensor_inputs`.
            callback_on_step_end_tensor_inputs (`List[str]`): Tensors passed to the callback.

        Examples:
        """
        if window_shift is None:
            window_shift = False
        self.check_conditioning(
            audio, video, condition_method, guidance_scale, guidance_coefficient, guidance_loss, condition_noise
        )
        audio_condition = self.prepare_audio_condition(audio, sample_rate, audio_offset)
        video_condition = self.prepare_video_condition(video, frame_rate, video_offset)
        condition = audio_condition if audio_condition is not None else video_condition
        if condition is not None:
            if condition.shape[0] not in (1, batch_size) and batch_size != 1:
                raise ValueError(f"got {condition.shape[0]} conditioning clips for a batch of {batch_size}")
            batch_size = max(batch_size, condition.shape[0])
        self.check_inputs(
            batch_size, num_inference_steps, generator, video_latents, audio_latents, output_type,
            super_resolution, callback_on_step_end_tensor_inputs,
        )
        run_super_resolution = self.sr_unet is not None if super_resolution is None else super_resolution
        device = self._execution_device
        dtype = self.unet.dtype

        # Each modality gets its own scheduler: multistep and singlestep solvers keep per-trajectory state.
        video_scheduler = type(self.scheduler).from_config(self.scheduler.config)
        audio_scheduler = type(self.scheduler).from_config(self.scheduler.config)
        video_scheduler.set_timesteps(num_inference_steps, device=device)
        audio_scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = video_scheduler.timesteps

        video_latents = self.prepare_latents(
            (batch_size, *self.video_shape), video_latents, generator, device, dtype, video_scheduler.init_noise_sigma
        )
        audio_latents = self.prepare_latents(
            (batch_size, *self.audio_shape), audio_latents, generator, device, dtype, audio_scheduler.init_noise_sigma
        )
        video_step_kwargs = step_kwargs(video_scheduler, generator)
        audio_step_kwargs = step_kwargs(audio_scheduler, generator)

        conditioned = None
        if condition is not None:
            conditioned = "audio" if audio_condition is not None else "video"
            condition = condition.to(device=device, dtype=dtype).expand(batch_size, *condition.shape[1:])
            levels = noise_levels(self.scheduler, num_inference_steps, device).to(device)
            condition_noise_tensor = randn_tensor(condition.shape, generator=generator, device=device, dtype=dtype)

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                shifts = self.window_shifts(window_shift, batch_size, generator, device)
                if conditioned is not None:
                    if condition_noise == "fresh" and i > 0:
                        condition_noise_tensor = randn_tensor(
                            condition.shape, generator=generator, device=device, dtype=dtype
                        )
                    alpha, sigma = levels[i]
                    noised = alpha * condition + sigma * condition_noise_tensor
                    if conditioned == "audio":
                        audio_latents = noised
                    else:
                        video_latents = noised

                guided = conditioned is not None and condition_method == "guidance" and i < len(timesteps) - 1
                with torch.enable_grad() if guided else contextlib.nullcontext():
                    if guided:
                        target = video_latents if conditioned == "audio" else audio_latents
                        target = target.detach().requires_grad_(True)
                        if conditioned == "audio":
                            video_latents = target
                        else:
                            audio_latents = target
                    prediction = self.unet(
                        video_scheduler.scale_model_input(video_latents, t),
                        audio_scheduler.scale_model_input(audio_latents, t),
                        t,
                        window_shift=shifts,
                    )
                    if guided:
                        gradient = self.guidance_gradient(
                            prediction, conditioned, condition, condition_noise_tensor, video_latents, audio_latents,
                            levels[i], levels[i + 1], target, guidance_loss,
                        )
                        video_latents, audio_latents = video_latents.detach(), audio_latents.detach()
                        prediction = type(prediction)(video=prediction.video.detach(), audio=prediction.audio.detach())

                video_latents = self.denoise_step(
                    video_scheduler, prediction.video, t, video_latents, video_step_kwargs, channel_axis=2
                )
                audio_latents = self.denoise_step(
                    audio_scheduler, prediction.audio, t, audio_latents, audio_step_kwargs, channel_axis=1
                )
                if guided:
                    coefficient = self.guidance_step_size(levels[i], levels[i + 1], guidance_coefficient)
                    if conditioned == "audio":
                        video_latents = video_latents - guidance_scale * coefficient * gradient
                    else:
                        audio_latents = audio_latents - guidance_scale * coefficient * gradient

                if callback_on_step_end is not None:
                    local_tensors = {"video_latents": video_latents, "audio_latents": audio_latents}
                    callback_kwargs = {name: local_tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    video_latents = callback_outputs.get("video_latents", video_latents)
                    audio_latents = callback_outputs.get("audio_latents", audio_latents)
                progress_bar.update()

        # The given modality comes out as it was processed, not as re-generated.
        if conditioned == "audio":
            audio_latents = condition
        elif conditioned == "video":
            video_latents = condition
            run_super_resolution = False

        if output_type == "latent":
            frames, audio = video_latents, audio_latents
        else:
            video = video_latents.clamp(-1, 1)
            if run_super_resolution:
                video = self.super_resolve(video, sr_num_inference_steps, generator, sr_shared_noise)
            frames = self.video_processor.postprocess_video(video.transpose(1, 2).float(), output_type=output_type)
            audio = audio_latents.clamp(-1, 1).float()
            if output_type == "np":
                audio = audio.cpu().numpy()

        self.maybe_free_model_hooks()
        if not return_dict:
            return frames, audio
        return MMDiffusionPipelineOutput(
            frames=frames, audio=audio, frame_rate=self.config.frame_rate, sample_rate=self.config.sample_rate
        )

    def check_conditioning(
        self, audio, video, condition_method, guidance_scale, guidance_coefficient, guidance_loss, condition_noise
    ):
        if audio is not None and video is not None:
            raise ValueError("give audio= (audio-to-video) or video= (video-to-audio), not both")
        if condition_method not in CONDITION_METHODS:
            raise ValueError(f"condition_method must be one of {', '.join(CONDITION_METHODS)}, got {condition_method!r}")
        if guidance_coefficient not in GUIDANCE_COEFFICIENTS:
            raise ValueError(
                f"guidance_coefficient must be one of {', '.join(GUIDANCE_COEFFICIENTS)}, got {guidance_coefficient!r}"
            )
        if guidance_loss not in GUIDANCE_LOSSES:
            raise ValueError(f"guidance_loss must be one of {', '.join(GUIDANCE_LOSSES)}, got {guidance_loss!r}")
        if condition_noise not in ("fixed", "fresh"):
            raise ValueError(f"condition_noise must be 'fixed' or 'fresh', got {condition_noise!r}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")

    def prepare_audio_condition(self, audio, sample_rate, offset) -> Optional[torch.Tensor]:
        """Given audio (one clip or a list) in model space `[B, C, T]`."""
        if audio is None:
            return None
        clips = audio if isinstance(audio, list) else [audio]
        channels, length = self.audio_shape
        return torch.stack(
            [
                media.load_audio(
                    clip, sample_rate=sample_rate, target_sample_rate=self.config.sample_rate,
                    num_channels=channels, num_samples=length, offset=offset,
                )
                for clip in clips
            ]
        )

    def prepare_video_condition(self, video, frame_rate, offset) -> Optional[torch.Tensor]:
        """Given frames (one clip, a batch `[B, F, H, W, 3]` or a list of clips) in model space `[B, F, C, H, W]`."""
        if video is None:
            return None
        if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 5:
            clips = list(video)
        elif isinstance(video, list) and video and not hasattr(video[0], "getpixel"):
            clips = video  # a list of clips rather than a list of PIL frames
        else:
            clips = [video]
        frames, channels, height, width = self.video_shape
        if channels != 3:
            raise ValueError(f"video conditioning needs a 3-channel video model, this one has {channels} channels")
        processed = [
            media.load_video(
                clip, frame_rate=frame_rate, target_frame_rate=self.config.frame_rate, num_frames=frames,
                height=height, width=width, offset=offset,
            )
            for clip in clips
        ]
        return torch.stack(processed) * 2 - 1

    def guidance_gradient(
        self, prediction, conditioned, condition, noise, video_latents, audio_latents, level, next_level, target,
        guidance_loss="next_step",
    ) -> torch.Tensor:
        """Gradient, with respect to the generated modality's latents, of the squared mismatch between the model's
        one-step prediction of the given modality and the given modality diffused to the next noise level
        (`guidance_loss="next_step"`), or between its clean-sample estimate and the given modality (`"clean"`).

        Everything is measured in variance-preserving units (latents divided by sqrt(alpha^2 + sigma^2)), so that
        the same guidance scale means the same thing for DDPM-style and sigma-space (Euler) schedulers. The step is
        the deterministic DDIM one for every scheduler; the loss sums per-sample means, so the guidance of a
        sample does not depend on the batch size."""
        if conditioned == "audio":
            latents, eps = audio_latents, prediction.audio
            channels = latents.shape[1]
            eps = eps[:, :channels]
        else:
            latents, eps = video_latents, prediction.video
            channels = latents.shape[2]
            eps = eps[:, :, :channels]
        alpha, sigma = level
        next_alpha, next_sigma = next_level
        scale, next_scale = torch.hypot(alpha, sigma), torch.hypot(next_alpha, next_sigma)
        alpha, sigma, next_alpha, next_sigma = alpha / scale, sigma / scale, next_alpha / next_scale, next_sigma / next_scale
        eps = noise_from_model_output(eps, latents / scale, alpha, sigma, self.scheduler.config.get("prediction_type"))
        predicted_x0 = (latents / scale - sigma * eps) / alpha
        if guidance_loss == "clean":
            predicted, given = predicted_x0, condition
        else:
            predicted, given = next_alpha * predicted_x0 + next_sigma * eps, next_alpha * condition + next_sigma * noise
        loss = (predicted.float() - given.float()).square().flatten(1).mean(1).sum()
        return torch.autograd.grad(loss, target)[0].detach()

    @staticmethod
    def guidance_step_size(level, next_level, guidance_coefficient) -> torch.Tensor:
        """The noise-level factor of the guidance step (sqrt(alpha_bar_t) officially, sqrt(1 - alpha_bar_t) in the
        paper), times the latent scales that turn a variance-preserving gradient into one in the scheduler's units."""
        scale, next_scale = torch.hypot(*level), torch.hypot(*next_level)
        alpha_bar = (level[0] / scale) ** 2
        factor = alpha_bar.sqrt() if guidance_coefficient == "official" else (1 - alpha_bar).sqrt()
        return factor * scale * next_scale

    def super_resolve(self, video, num_inference_steps, generator, shared_noise):
        """Upscale model-space video `[B, F, C, H, W]` with the SR stage; returns model space at the SR size."""
        sr_pipeline = MMDiffusionSRPipeline(sr_unet=self.sr_unet, sr_scheduler=self.sr_scheduler)
        sr_pipeline.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        frames = ((video + 1) / 2).permute(0, 1, 3, 4, 2)  # [B, F, H, W, C] in 0..1
        upscaled = sr_pipeline(
            frames,
            num_inference_steps=num_inference_steps,
            generator=generator,
            shared_noise=shared_noise,
            output_type="pt",
        ).frames
        return upscaled.to(video.device) * 2 - 1
