"""Frame-by-frame super-resolution of videos (MM-Diffusion's 64→256 stage)."""

import inspect
import warnings
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import DDIMScheduler, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ...models.sr_unet import SuperResolutionUNet
from .pipeline_output import MMDiffusionSRPipelineOutput
from .pipeline_loading import OwnComponentsMixin

FramesInput = Union[np.ndarray, torch.Tensor, List[PIL.Image.Image], List[List[PIL.Image.Image]]]
OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def official_ddim_scheduler(num_train_timesteps: int = 1000, prediction_type: str = "epsilon") -> DDIMScheduler:
    """
    The DDIM sampler of the official code: its linear β schedule (scaled by `1000 / num_train_timesteps`), x0 clipped
    to [-1, 1], respacing `ddimN` ("leading" spacing: the same steps whenever N divides `num_train_timesteps`), and
    the last step going to ᾱ = 1. Step it with `use_clipped_model_output=True`, as this pipeline does. The official
    models predict the noise; `prediction_type="v_prediction"` serves models trained on v.
    """
    scale = 1000 / num_train_timesteps
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=scale * 0.0001,
        beta_end=scale * 0.02,
        beta_schedule="linear",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=prediction_type,
        timestep_spacing="leading",
    )


def _pil_videos_to_tensor(videos: List[List[PIL.Image.Image]]) -> torch.Tensor:
    if any(not video for video in videos):
        raise ValueError("frames must not contain an empty list of images.")
    num_frames = {len(video) for video in videos}
    if len(num_frames) != 1:
        raise ValueError(f"every video in frames must have the same number of frames, got {sorted(num_frames)}.")
    sizes = {image.size for video in videos for image in video}
    if len(sizes) != 1:
        raise ValueError(f"every image in frames must have the same size, got sizes {sorted(sizes)}.")
    array = np.stack([np.stack([np.asarray(image.convert("RGB")) for image in video]) for video in videos])
    return torch.from_numpy(array).permute(0, 1, 4, 2, 3).float() / 255.0


def _array_to_tensor(frames: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    is_torch = isinstance(frames, torch.Tensor)
    if is_torch:
        supported = frames.dtype == torch.uint8 or frames.is_floating_point()
    else:
        supported = frames.dtype == np.uint8 or frames.dtype.kind == "f"
    if not supported:
        raise TypeError(f"frames must hold floats in [0, 1] or uint8, got dtype {frames.dtype}.")
    tensor = frames.detach().cpu() if is_torch else torch.from_numpy(np.array(frames))
    if tensor.ndim == 4:
        tensor = tensor[None]
    if tensor.ndim != 5:
        raise ValueError(
            "frames must be [B, F, H, W, 3] or [F, H, W, 3] (torch also [B, F, 3, H, W]), "
            f"got shape {tuple(frames.shape)}."
        )
    if tensor.numel() == 0:
        raise ValueError(f"frames must hold at least one frame, got shape {tuple(frames.shape)}.")
    if is_torch and tensor.shape[-1] != 3 and tensor.shape[-3] == 3:
        tensor = tensor.permute(0, 1, 3, 4, 2)  # channel-first torch video, the "pt" convention
    if tensor.shape[-1] != 3:
        raise ValueError(f"frames must have 3 (RGB) channels in the last dimension, got shape {tuple(frames.shape)}.")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    else:
        tensor = tensor.float()
        low, high = tensor.min().item(), tensor.max().item()
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"frames must be floats in [0, 1], got values in [{low:.3g}, {high:.3g}] (model-space [-1, 1] frames "
                "convert with (x + 1) / 2)."
            )
    return tensor.permute(0, 1, 4, 2, 3).clamp(0.0, 1.0)


class MMDiffusionSRPipeline(OwnComponentsMixin, DiffusionPipeline):
    r"""
    Upscales videos frame by frame with MM-Diffusion's super-resolution U-Net (64→256 for the released models),
    sampling every frame from one noise image per video by default, as the official sampler does.

    Args:
        sr_unet ([`SuperResolutionUNet`]): the super-resolution denoiser; its config gives the input
            (`low_res_size`) and output (`sample_size`) sizes.
        sr_scheduler ([`SchedulerMixin`], *optional*): defaults to [`official_ddim_scheduler`]'s DDIM.
    """

    model_cpu_offload_seq = "sr_unet"
    _optional_components = ["sr_scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        sr_unet: SuperResolutionUNet,
        sr_scheduler: Optional[SchedulerMixin] = None,
    ):
        super().__init__()
        if sr_scheduler is None:
            sr_scheduler = official_ddim_scheduler()
        self.register_modules(sr_unet=sr_unet, sr_scheduler=sr_scheduler)

    def _prepare_low_res(self, frames: FramesInput) -> torch.Tensor:
        """Frames in any accepted form → `[B, F, 3, s, s]` in [0, 1] at the model's low-resolution size."""
        if isinstance(frames, (np.ndarray, torch.Tensor)):
            video = _array_to_tensor(frames)
        elif isinstance(frames, (list, tuple)) and frames and all(isinstance(f, PIL.Image.Image) for f in frames):
            video = _pil_videos_to_tensor([list(frames)])
        elif (
            isinstance(frames, (list, tuple))
            and frames
            and all(isinstance(v, (list, tuple)) and all(isinstance(f, PIL.Image.Image) for f in v) for v in frames)
        ):
            video = _pil_videos_to_tensor([list(v) for v in frames])
        else:
            raise TypeError(
                "frames must be a numpy array or torch tensor [B, F, H, W, 3], a list of PIL images (one video) or a "
                f"list of lists of PIL images, got {type(frames).__name__}."
            )

        size = self.sr_unet.config.low_res_size
        height, width = video.shape[-2:]
        if (height, width) != (size, size):
            warnings.warn(
                f"frames are {height}x{width} but this super-resolution model takes {size}x{size}: resizing them"
                + (" (the aspect ratio changes)." if height != width else "."),
                stacklevel=4,  # the caller of __call__ (past torch.no_grad's wrapper)
            )
            batch, num_frames = video.shape[:2]
            shrinking = height >= size and width >= size
            video = F.interpolate(
                video.flatten(0, 1), size=(size, size), mode="area" if shrinking else "bilinear"
            ).clamp(0.0, 1.0)
            video = video.unflatten(0, (batch, num_frames))
        return video

    def _prepare_latents(self, batch, num_frames, shared_noise, generator, latents, device, dtype) -> torch.Tensor:
        channels, size = self.sr_unet.config.in_channels, self.sr_unet.config.sample_size
        per_video, per_frame = (batch, channels, size, size), (batch, num_frames, channels, size, size)
        if latents is None:
            if isinstance(generator, list) and len(generator) != batch:
                raise ValueError(f"generator is a list of {len(generator)}, expected one per video ({batch}).")
            shape = per_video if shared_noise else per_frame
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) not in (per_video, per_frame):
            raise ValueError(
                f"latents must be {list(per_video)} (one noise per video) or {list(per_frame)} (one per frame), "
                f"got {list(latents.shape)}."
            )
        latents = latents.to(device=device, dtype=dtype)
        if latents.ndim == 4:
            latents = latents[:, None].expand(per_frame)
        return latents * self.sr_scheduler.init_noise_sigma

    def _step_kwargs(self, generator) -> dict:
        accepted = set(inspect.signature(self.sr_scheduler.step).parameters)
        kwargs = {}
        # DDIM: re-derive the noise from the clipped x0, as the official sampler does.
        if "use_clipped_model_output" in accepted:
            kwargs["use_clipped_model_output"] = True
        if "generator" in accepted and isinstance(generator, torch.Generator):
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        frames: FramesInput,
        num_inference_steps: int = 25,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        shared_noise: bool = True,
        frames_per_batch: int = 16,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Union[Callable, PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        r"""
        Upscale videos to the model's `sample_size`.

        Args:
            frames: the low-resolution videos, float in [0, 1] (or uint8): a numpy array or torch tensor
                `[B, F, H, W, 3]` or `[F, H, W, 3]` (a torch tensor may also be `[B, F, 3, H, W]`), a list of PIL
                images (one video) or a list of lists of PIL images. Frames whose size is not the model's
                `low_res_size` are resized, with a warning.
            num_inference_steps (`int`): denoising steps (the paper uses 25 DDIM steps).
            generator (`torch.Generator` or a list of one per video, *optional*): makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): starting noise, `[B, 3, H, W]` (one per video, shared by its
                frames) or `[B, F, 3, H, W]` (one per frame), at the model's `sample_size`.
            shared_noise (`bool`): draw one noise image per video for all its frames (the official behaviour,
                which keeps the frames consistent) rather than one per frame.
            frames_per_batch (`int`): frames denoised together; bounds memory without changing the result (up to
                float rounding, with a deterministic scheduler such as DDIM).
            output_type (`str`): "np" `[B, F, H, W, 3]` float 0..1, "pt" `[B, F, 3, H, W]` float 0..1, "pil" a
                list of lists of images, or "latent" the raw model-space `[B, F, 3, H, W]` (not clipped).
            return_dict (`bool`): return a [`MMDiffusionSRPipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback_on_step_end(self, step, timestep,
                callback_kwargs)` after every step of every chunk of `frames_per_batch` frames; `latents` is the
                chunk `[n, 3, H, W]`. It may return a dict replacing tensors.
            callback_on_step_end_tensor_inputs (`Sequence[str]`): tensors passed in `callback_kwargs`.

        Returns:
            [`MMDiffusionSRPipelineOutput`] or `tuple` whose first element is the upscaled frames.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        if isinstance(frames_per_batch, bool) or not isinstance(frames_per_batch, int) or frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be a positive integer, got {frames_per_batch!r}.")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got {unknown}."
            )

        device, dtype = self._execution_device, self.sr_unet.dtype
        video = self._prepare_low_res(frames)
        batch, num_frames = video.shape[:2]
        low_res = (video * 2 - 1).flatten(0, 1).to(device=device, dtype=dtype)
        latents = self._prepare_latents(batch, num_frames, shared_noise, generator, latents, device, dtype)
        latents = latents.flatten(0, 1)

        in_channels = self.sr_unet.config.in_channels
        # Schedulers that model the variance themselves take every channel; the others only the noise.
        keeps_variance = self.sr_scheduler.config.get("variance_type") in ("learned", "learned_range")
        step_kwargs = self._step_kwargs(generator)
        chunks = range(0, latents.shape[0], frames_per_batch)
        outputs = []
        with self.progress_bar(total=len(chunks) * num_inference_steps) as progress_bar:
            for start in chunks:
                chunk = latents[start : start + frames_per_batch]
                chunk_low_res = low_res[start : start + frames_per_batch]
                self.sr_scheduler.set_timesteps(num_inference_steps, device=device)  # also resets multistep state
                for step, timestep in enumerate(self.sr_scheduler.timesteps):
                    model_input = self.sr_scheduler.scale_model_input(chunk, timestep)
                    prediction = self.sr_unet(model_input, timestep, chunk_low_res, return_dict=False)[0]
                    if not keeps_variance:
                        prediction = prediction[:, :in_channels]
                    chunk = self.sr_scheduler.step(prediction, timestep, chunk, **step_kwargs, return_dict=False)[0]

                    if callback_on_step_end is not None:
                        callback_kwargs = {"latents": chunk} if "latents" in callback_on_step_end_tensor_inputs else {}
                        callback_outputs = callback_on_step_end(self, step, timestep, callback_kwargs)
                        chunk = callback_outputs.pop("latents", chunk)
                    progress_bar.update()
                outputs.append(chunk)
        samples = torch.cat(outputs).unflatten(0, (batch, num_frames))

        if output_type == "latent":
            result = samples
        else:
            result = ((samples.float() + 1) / 2).clamp(0.0, 1.0)
            if output_type != "pt":
                result = result.permute(0, 1, 3, 4, 2).cpu().numpy()
                if output_type == "pil":
                    result = [self.numpy_to_pil(video_frames) for video_frames in result]

        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return MMDiffusionSRPipelineOutput(frames=result)
