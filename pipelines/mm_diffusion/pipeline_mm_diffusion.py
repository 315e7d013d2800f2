"""MMDiffusionPipeline: joint audio-video generation with MM-Diffusion's coupled U-Net."""

import inspect
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ...models.coupled_unet import CoupledUNet
from ...models.sr_unet import SuperResolutionUNet
from .pipeline_loading import OwnComponentsMixin
from .pipeline_mm_diffusion_sr import MMDiffusionSRPipeline
from .pipeline_output import MMDiffusionPipelineOutput

OUTPUT_TYPES = ("np", "pt", "pil", "latent")

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


class MMDiffusionPipeline(OwnComponentsMixin, DiffusionPipeline):
    r"""
    Joint audio-video generation with MM-Diffusion (Ruan et al., CVPR 2023).

    Video and audio are denoised together by one [`CoupledUNet`]; each modality is stepped by its own copy of
    `scheduler` (schedulers keep per-trajectory state), so setting `pipe.scheduler` is all it takes to change
    the sampler. The frames can then be upscaled by the optional super-resolution stage.

    Args:
        unet ([`CoupledUNet`]): The coupled audio-video denoiser.
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler for ε-prediction models; converted checkpoints
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
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return (config.num_frames, config.video_channels, height, width)

    @property
    def audio_shape(self):
        return (self.unet.config.audio_channels, self.unet.config.audio_length)

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

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                shifts = self.window_shifts(window_shift, batch_size, generator, device)
                prediction = self.unet(
                    video_scheduler.scale_model_input(video_latents, t),
                    audio_scheduler.scale_model_input(audio_latents, t),
                    t,
                    window_shift=shifts,
                )
                video_latents = self.denoise_step(
                    video_scheduler, prediction.video, t, video_latents, video_step_kwargs, channel_axis=2
                )
                audio_latents = self.denoise_step(
                    audio_scheduler, prediction.audio, t, audio_latents, audio_step_kwargs, channel_axis=1
                )

                if callback_on_step_end is not None:
                    local_tensors = {"video_latents": video_latents, "audio_latents": audio_latents}
                    callback_kwargs = {name: local_tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    video_latents = callback_outputs.get("video_latents", video_latents)
                    audio_latents = callback_outputs.get("audio_latents", audio_latents)
                progress_bar.update()

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
