"""ComfyUI nodes for MM-Diffusion, in ComfyUI's classic (V1) node API.

The nodes are thin: each turns ComfyUI values into pipeline arguments and the pipeline's output back into
ComfyUI values; sampling, conditioning and input fitting are the pipelines' (and `media`'s).

Values exchanged with core nodes:

- IMAGE: float32 `[N, H, W, 3]` in 0..1: the N frames of one video.
- AUDIO: `{"waveform": float32 [B, C, T] in [-1, 1], "sample_rate": int}`.
- FLOAT fps: the frame rate, for core `CreateVideo`.
- MMDIFFUSION_PIPELINE: a `ManagedPipeline` (see `comfy_bridge`).

A batch of B samples comes out as one clip holding the samples one after another: frames `[B*F, H, W, 3]`
and audio `[1, C, B*T]`, so `CreateVideo` -> `SaveVideo` writes one mp4 in which every sample keeps its own
sound. Sample i uses seed + i, so a batch shows the same samples as B runs with seeds seed, seed + 1, ...
"""

import json
import math
import os
from typing import Dict, List, Tuple

import torch

from . import comfy_bridge as bridge

PIPELINE_TYPE = "MMDIFFUSION_PIPELINE"
CATEGORY = "MM-Diffusion"
# The loader's name for the model shipped in the package's pretrained/ folder. Angle brackets cannot appear in
# folder names on every system, so it never collides with a folder under models/mm_diffusion.
DEFAULT_MODEL = "<default model>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_MAX = 0xFFFFFFFFFFFFFFFF
# How deep below models/mm_diffusion the loader looks for pipeline folders (e.g. "org/name" is depth 2).
MAX_MODEL_DEPTH = 3
# Frames the super-resolution stage denoises together (its pipeline's default); fixes the progress total.
SR_FRAMES_PER_BATCH = 16


# ------------------------------------------------------------------------------------------------------------
# Models


def list_models() -> List[str]:
    """The loader's choices: the shipped default model, then every folder holding a model_index.json under the
    `mm_diffusion` model folders (relative names with "/")."""
    names = set()
    for base in bridge.model_search_paths():
        for root, dirs, files in os.walk(base, followlinks=True):
            relative = os.path.relpath(root, base)
            depth = 0 if relative == "." else relative.count(os.sep) + 1
            if depth and "model_index.json" in files:
                names.add(relative.replace(os.sep, "/"))
                dirs[:] = []  # its subfolders are the pipeline's components
            elif depth >= MAX_MODEL_DEPTH:
                dirs[:] = []
    return [DEFAULT_MODEL, *sorted(names)]


def model_folder(name: str) -> str:
    """The pipeline folder the loader's choice `name` stands for."""
    if name == DEFAULT_MODEL:
        from ..cli import PRETRAINED

        if not (PRETRAINED / "model_index.json").is_file():
            raise FileNotFoundError(
                f"model {DEFAULT_MODEL}: the default model is missing from {PRETRAINED}; reinstall the package or "
                f"pick a pipeline folder from models/{bridge.MODEL_FOLDER}"
            )
        return str(PRETRAINED)
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"model must name a folder under models/{bridge.MODEL_FOLDER}, got {name!r}")
    searched = bridge.model_search_paths()
    for base in searched:
        folder = os.path.join(base, *parts)
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            return folder
    raise FileNotFoundError(
        f"model {name!r} is not a pipeline folder (one with model_index.json) in any {bridge.MODEL_FOLDER} model "
        f"folder ({', '.join(searched) or 'none registered'})"
    )


def _pipeline_classes() -> Dict[str, type]:
    from ..pipelines.mm_diffusion import MMDiffusionPipeline, MMDiffusionSRPipeline

    return {cls.__name__: cls for cls in (MMDiffusionPipeline, MMDiffusionSRPipeline)}


def _checked_handle(pipeline, needs: str) -> bridge.ManagedPipeline:
    """`pipeline` as given to a node; `needs` is "joint" (the coupled model) or "sr" (a super-resolution stage)."""
    if not isinstance(pipeline, bridge.ManagedPipeline):
        raise TypeError(f"pipeline must come from the MM-Diffusion Loader node, got {type(pipeline).__name__}")
    if needs == "joint" and getattr(pipeline.pipeline, "unet", None) is None:
        raise ValueError(
            f"model {pipeline.name!r} is a super-resolution model; this node needs an MM-Diffusion video + audio model"
        )
    if needs == "sr" and getattr(pipeline.pipeline, "sr_unet", None) is None:
        raise ValueError(f"model {pipeline.name!r} has no super-resolution stage (sr_unet)")
    return pipeline


# ------------------------------------------------------------------------------------------------------------
# ComfyUI values <-> pipeline values


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """Pipeline frames `[B, F, 3, H, W]` in 0..1 -> IMAGE `[B*F, H, W, 3]` (the samples one after another)."""
    return frames.permute(0, 1, 3, 4, 2).flatten(0, 1).float().cpu().contiguous()


def audio_to_comfy(audio: torch.Tensor, sample_rate: int) -> dict:
    """Pipeline audio `[B, C, T]` -> AUDIO with waveform `[1, C, B*T]` (the samples one after another)."""
    waveform = audio.float().cpu().permute(1, 0, 2).flatten(1)[None].contiguous()
    return {"waveform": waveform, "sample_rate": int(sample_rate)}


def audio_clips(audio) -> Tuple[List[torch.Tensor], int]:
    """AUDIO -> (one `[C, T]` clip per batch item, sample rate)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise TypeError(
            "audio must be a ComfyUI AUDIO value (a dict with 'waveform' [batch, channels, samples] and "
            f"'sample_rate'), got {type(audio).__name__}"
        )
    waveform, sample_rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = list(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"audio waveform must be a tensor [batch, channels, samples], got {shape}")
    if waveform.numel() == 0:
        raise ValueError(f"audio holds no samples (waveform shape {list(waveform.shape)}); connect a clip with sound")
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"audio sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return list(waveform), sample_rate


def image_frames(images, name: str = "images") -> torch.Tensor:
    """IMAGE -> the same tensor, checked: `[N, H, W, 3]` with at least one frame."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE [frames, height, width, 3], got {shape}")
    if images.numel() == 0:
        raise ValueError(f"{name} holds no frames (shape {list(images.shape)}); connect at least one frame")
    return images


def _check_fps(fps) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    return float(fps)


def seed_generators(seed: int, count: int) -> List[torch.Generator]:
    """One generator per sample: sample i draws from seed + i."""
    return [torch.Generator().manual_seed((int(seed) + i) % (SEED_MAX + 1)) for i in range(count)]


# ------------------------------------------------------------------------------------------------------------
# Running the pipelines


def _sr_pipeline(pipeline):
    from ..pipelines.mm_diffusion import MMDiffusionSRPipeline

    if isinstance(pipeline, MMDiffusionSRPipeline):
        return pipeline
    return MMDiffusionSRPipeline(sr_unet=pipeline.sr_unet, sr_scheduler=pipeline.sr_scheduler)


def _super_resolve(pipeline, frames, generators, steps, reporter) -> torch.Tensor:
    """Frames `[B, F, 3, H, W]` (or `[F, H, W, 3]`) in 0..1 -> upscaled `[B, F, 3, S, S]`, stepping `reporter`."""
    return _sr_pipeline(pipeline)(
        frames,
        num_inference_steps=steps,
        generator=generators,
        frames_per_batch=SR_FRAMES_PER_BATCH,
        output_type="pt",
        callback_on_step_end=reporter,
    ).frames


def _sr_steps_total(num_frames: int, steps: int) -> int:
    return steps * math.ceil(num_frames / SR_FRAMES_PER_BATCH)


def _generate(handle, *, seed, steps, scheduler, batch_size, super_resolution=False, sr_steps=25, **conditioning):
    """Run the joint pipeline (then its super-resolution stage as a second pipeline call, so that its steps also
    report progress and stop on Stop); returns (frames `[B, F, 3, H, W]`, audio `[B, C, T]`, fps, sample rate)."""
    from ..schedulers.scheduler_choices import make_scheduler

    pipeline = handle.pipeline
    if super_resolution and pipeline.sr_unet is None:
        raise ValueError(
            f"super_resolution is on but model {handle.name!r} has no super-resolution stage; turn it off"
        )
    generators = seed_generators(seed, batch_size)
    total = steps
    if super_resolution:
        total += _sr_steps_total(batch_size * pipeline.unet.config.num_frames, sr_steps)
    reporter = bridge.StepReporter(total)
    bridge.check_interrupted()
    loaded = handle.prepare()
    # The loader's pipeline is shared by every node and cached by ComfyUI: sample with a copy that shares its
    # models and steps with the chosen sampler, rather than changing it.
    sampler = make_scheduler(scheduler, loaded.scheduler.config, loaded.unet.config.learn_sigma)
    pipeline = type(loaded)(
        **{**loaded.components, "scheduler": sampler},
        frame_rate=loaded.config.frame_rate,
        sample_rate=loaded.config.sample_rate,
    )
    pipeline.set_progress_bar_config(**getattr(loaded, "_progress_bar_config", {}))
    with bridge.autograd_allowed():
        output = pipeline(
            batch_size=batch_size,
            num_inference_steps=steps,
            generator=generators,
            super_resolution=False,
            output_type="pt",
            callback_on_step_end=reporter,
            **conditioning,
        )
        frames = output.frames
        if super_resolution:
            frames = _super_resolve(pipeline, frames, generators, sr_steps, reporter)
    return frames, output.audio, output.frame_rate, output.sample_rate


# ------------------------------------------------------------------------------------------------------------
# Input specifications shared by the nodes


def _pipeline_input():
    return (PIPELINE_TYPE, {"tooltip": "The model, from MM-Diffusion Loader."})


def _seed_input():
    return (
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": SEED_MAX,
            "control_after_generate": True,
            "tooltip": "Noise seed. In a batch, sample i uses seed + i, so it matches a single run with that seed.",
        },
    )


def _steps_input(default: int, what: str):
    return ("INT", {"default": default, "min": 1, "max": 1000, "tooltip": f"Denoising steps of {what}."})


def _scheduler_input():
    from ..schedulers.scheduler_choices import SCHEDULER_CHOICES

    return (
        list(SCHEDULER_CHOICES),
        {
            "default": "dpm-solver",
            "tooltip": "Sampler. dpm-solver is the paper's (20 steps); ddim/ddpm are the official alternatives.",
        },
    )


def _super_resolution_inputs():
    return {
        "super_resolution": (
            "BOOLEAN",
            {
                "default": True,
                "label_on": "on",
                "label_off": "off",
                "tooltip": "Upscale the frames with the model's super-resolution stage.",
            },
        ),
        "sr_steps": _steps_input(25, "the super-resolution stage"),
    }


def _condition_inputs():
    from ..pipelines.mm_diffusion.pipeline_mm_diffusion import CONDITION_METHODS

    return {
        "method": (
            list(CONDITION_METHODS),
            {
                "default": "replacement",
                "tooltip": "replacement: the model sees the given modality, noised to each step's level. guidance: "
                "also steers the generated one by the gradient of how well the model predicts the given one "
                "(slower, needs gradients).",
            },
        ),
        "guidance_scale": (
            "FLOAT",
            {
                "default": 3.0,
                "min": 0.0,
                "max": 100000.0,
                "step": 0.1,
                "tooltip": "Strength of guidance (unused by replacement): about 3 for the next_step loss (official), "
                "hundreds to thousands for the clean loss.",
            },
        ),
    }


def _guidance_options():
    from ..pipelines.mm_diffusion.pipeline_mm_diffusion import GUIDANCE_COEFFICIENTS, GUIDANCE_LOSSES

    return {
        "guidance_loss": (
            list(GUIDANCE_LOSSES),
            {
                "default": "next_step",
                "tooltip": "next_step: the official mismatch of the one-step prediction. clean: the mismatch of the "
                "clean estimate (reconstruction guidance), which steers from the noisiest steps on.",
            },
        ),
        "guidance_coefficient": (
            list(GUIDANCE_COEFFICIENTS),
            {
                "default": "official",
                "tooltip": "The guidance step's noise-level factor: official sqrt(alpha_bar), paper sqrt(1 - alpha_bar).",
            },
        ),
    }


_FRAMES_TOOLTIP = "The video frames [frames, height, width, 3]; a batch plays one sample after another."
_AUDIO_TOOLTIP = "The sound, at the model's sample rate; a batch plays one sample after another."
_FPS_TOOLTIP = "The model's frame rate, for Create Video."


# ------------------------------------------------------------------------------------------------------------
# Nodes


class MMDiffusionLoader:
    DESCRIPTION = (
        f"Loads an MM-Diffusion pipeline folder (converted or trained, with model_index.json) from "
        f"models/{bridge.MODEL_FOLDER}, or the small default model shipped with the pack. Never downloads."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The loaded model, for the MM-Diffusion sampling nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    list_models(),
                    {
                        "tooltip": f"A pipeline folder under models/{bridge.MODEL_FOLDER} (or a "
                        f"`{bridge.MODEL_FOLDER}:` path in extra_model_paths.yaml); {DEFAULT_MODEL} is the model "
                        "shipped with the pack."
                    },
                ),
                "device": (
                    ["default", "cpu"],
                    {
                        "default": "default",
                        "tooltip": "default: ComfyUI's device (the GPU, or the CPU under --cpu); ComfyUI offloads the "
                        "model when other models need the memory. cpu: always the CPU.",
                    },
                ),
                "dtype": (
                    list(DTYPES),
                    {"default": "float32", "tooltip": "Weight precision; float16/bfloat16 halve the memory on a GPU."},
                ),
            }
        }

    def load(self, model, device="default", dtype="float32"):
        if device not in ("default", "cpu"):
            raise ValueError(f"device must be 'default' or 'cpu', got {device!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        folder = model_folder(model)
        index_path = os.path.join(folder, "model_index.json")
        try:
            with open(index_path, encoding="utf-8") as handle:
                class_name = json.load(handle).get("_class_name")
        except (json.JSONDecodeError, AttributeError):
            raise ValueError(f"{index_path} is not a diffusers model index (a JSON object)") from None
        classes = _pipeline_classes()
        if class_name not in classes:
            raise ValueError(f"{index_path} names pipeline {class_name!r}; expected one of {', '.join(classes)}")
        run_device, offload_device = bridge.devices(device)
        with bridge.autograd_allowed():
            pipeline = classes[class_name].from_pretrained(folder, torch_dtype=DTYPES[dtype])
        return (bridge.ManagedPipeline(pipeline, model, run_device, offload_device),)


class MMDiffusionSample:
    DESCRIPTION = (
        "Generates short videos with their soundtracks together (MM-Diffusion joint sampling). Connect frames, fps "
        "and audio to Create Video, then Save Video."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("frames", "audio", "fps")
    OUTPUT_TOOLTIPS = (_FRAMES_TOOLTIP, _AUDIO_TOOLTIP, _FPS_TOOLTIP)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": _pipeline_input(),
                "seed": _seed_input(),
                "steps": _steps_input(20, "the video + audio model"),
                "scheduler": _scheduler_input(),
                "window_shift": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "label_on": "random",
                        "label_off": "off",
                        "tooltip": "Random-shift cross-modal attention windows at each step, as the paper samples.",
                    },
                ),
                **_super_resolution_inputs(),
                "batch_size": (
                    "INT",
                    {"default": 1, "min": 1, "max": 64, "tooltip": "Samples; they come out one after another."},
                ),
            }
        }

    def sample(self, pipeline, seed, steps, scheduler, window_shift, super_resolution, sr_steps, batch_size=1):
        handle = _checked_handle(pipeline, "joint")
        frames, audio, fps, sample_rate = _generate(
            handle,
            seed=seed,
            steps=steps,
            scheduler=scheduler,
            batch_size=batch_size,
            super_resolution=super_resolution,
            sr_steps=sr_steps,
            window_shift="random" if window_shift else False,
        )
        return (frames_to_image(frames), audio_to_comfy(audio, sample_rate), float(fps))


class MMDiffusionAudioToVideo:
    DESCRIPTION = (
        "Generates the video for a sound (zero-shot conditional sampling). The sound is mixed to the model's "
        "channels, resampled to its rate and cropped or padded to its length, with a warning saying so; the audio "
        "output is that processed sound. A batch of clips gives one video per clip, one after another."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("frames", "audio", "fps")
    OUTPUT_TOOLTIPS = (_FRAMES_TOOLTIP, "The input sound as the model used it.", _FPS_TOOLTIP)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": _pipeline_input(),
                "audio": ("AUDIO", {"tooltip": "The sound to make a video for, e.g. from Load Audio."}),
                **_condition_inputs(),
                "seed": _seed_input(),
                "steps": _steps_input(20, "the video + audio model"),
                "scheduler": _scheduler_input(),
                **_super_resolution_inputs(),
            },
            "optional": _guidance_options(),
        }

    def generate(
        self, pipeline, audio, method, guidance_scale, seed, steps, scheduler, super_resolution, sr_steps,
        guidance_loss="next_step", guidance_coefficient="official",
    ):
        handle = _checked_handle(pipeline, "joint")
        clips, sample_rate = audio_clips(audio)
        frames, processed_audio, fps, model_rate = _generate(
            handle,
            seed=seed,
            steps=steps,
            scheduler=scheduler,
            batch_size=len(clips),
            super_resolution=super_resolution,
            sr_steps=sr_steps,
            audio=clips,
            sample_rate=sample_rate,
            condition_method=method,
            guidance_scale=guidance_scale,
            guidance_loss=guidance_loss,
            guidance_coefficient=guidance_coefficient,
        )
        return (frames_to_image(frames), audio_to_comfy(processed_audio, model_rate), float(fps))


class MMDiffusionVideoToAudio:
    DESCRIPTION = (
        "Generates the soundtrack for video frames (zero-shot conditional sampling), e.g. from Load Video -> Get "
        "Video Components. The frames are resampled in time to the model's frame rate, resized and center-cropped "
        "to its size and cropped or padded to its length, with a warning saying so; the frames output is that "
        "processed video."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("AUDIO", "IMAGE", "FLOAT")
    RETURN_NAMES = ("audio", "frames", "fps")
    OUTPUT_TOOLTIPS = ("The generated sound.", "The input frames as the model used them.", _FPS_TOOLTIP)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": _pipeline_input(),
                "images": ("IMAGE", {"tooltip": "The video frames [frames, height, width, 3]."}),
                "fps": (
                    "FLOAT",
                    {
                        "default": 10.0,
                        "min": 0.01,
                        "max": 1000.0,
                        "step": 0.01,
                        "tooltip": "The frames' frame rate (Get Video Components' fps).",
                    },
                ),
                **_condition_inputs(),
                "seed": _seed_input(),
                "steps": _steps_input(20, "the video + audio model"),
                "scheduler": _scheduler_input(),
            },
            "optional": _guidance_options(),
        }

    def generate(
        self, pipeline, images, fps, method, guidance_scale, seed, steps, scheduler, guidance_loss="next_step",
        guidance_coefficient="official",
    ):
        handle = _checked_handle(pipeline, "joint")
        frames, audio, model_fps, sample_rate = _generate(
            handle,
            seed=seed,
            steps=steps,
            scheduler=scheduler,
            batch_size=1,
            video=image_frames(images),
            frame_rate=_check_fps(fps),
            condition_method=method,
            guidance_scale=guidance_scale,
            guidance_loss=guidance_loss,
            guidance_coefficient=guidance_coefficient,
        )
        return (audio_to_comfy(audio, sample_rate), frames_to_image(frames), float(model_fps))


class MMDiffusionSuperResolution:
    DESCRIPTION = (
        "Upscales video frames with a model's super-resolution stage, one noise for all frames (as the paper "
        "does). Frames of another size than the stage's input are resized first, with a warning."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The upscaled frames.",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (
                    PIPELINE_TYPE,
                    {"tooltip": "A model with a super-resolution stage, from MM-Diffusion Loader."},
                ),
                "images": ("IMAGE", {"tooltip": "The frames of one video [frames, height, width, 3]."}),
                "seed": _seed_input(),
                "steps": _steps_input(25, "the super-resolution stage"),
            }
        }

    def upscale(self, pipeline, images, seed, steps):
        handle = _checked_handle(pipeline, "sr")
        frames = image_frames(images)
        reporter = bridge.StepReporter(_sr_steps_total(frames.shape[0], steps))
        bridge.check_interrupted()
        loaded = handle.prepare()
        with bridge.autograd_allowed():
            upscaled = _super_resolve(loaded, frames, seed_generators(seed, 1), steps, reporter)
        return (frames_to_image(upscaled),)


class MMDiffusionSpectrogram:
    DESCRIPTION = "Draws a sound's log-magnitude spectrogram (low frequencies at the bottom), one image per clip."
    CATEGORY = f"{CATEGORY}/utils"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("[clips, n_fft / 2 + 1, time frames, 3] greyscale, 0..1 over the top 80 dB.",)
    FUNCTION = "draw"
    DYNAMIC_RANGE_DB = 80.0

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "audio": ("AUDIO", {"tooltip": "The sound to draw; channels are mixed."}),
                "n_fft": (
                    "INT",
                    {"default": 256, "min": 16, "max": 4096, "step": 16, "tooltip": "FFT size: frequency resolution."},
                ),
            }
        }

    def draw(self, audio, n_fft=256):
        clips, _ = audio_clips(audio)
        images = []
        for clip in clips:
            spectrum = torch.stft(
                clip.float().mean(0),
                n_fft=n_fft,
                hop_length=max(1, n_fft // 4),
                window=torch.hann_window(n_fft),
                center=True,
                pad_mode="constant",
                return_complex=True,
            ).abs()
            if spectrum.max() > 0:
                decibels = 20 * torch.log10(spectrum.clamp_min(1e-10) / spectrum.max())
                level = (decibels / self.DYNAMIC_RANGE_DB + 1).clamp_min(0)
            else:
                level = torch.zeros_like(spectrum)  # silence is black
            images.append(level.flip(0)[..., None].expand(-1, -1, 3))
        return (torch.stack(images).cpu().contiguous(),)


NODE_CLASS_MAPPINGS = {
    "MMDiffusionLoader": MMDiffusionLoader,
    "MMDiffusionSample": MMDiffusionSample,
    "MMDiffusionAudioToVideo": MMDiffusionAudioToVideo,
    "MMDiffusionVideoToAudio": MMDiffusionVideoToAudio,
    "MMDiffusionSuperResolution": MMDiffusionSuperResolution,
    "MMDiffusionSpectrogram": MMDiffusionSpectrogram,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MMDiffusionLoader": "MM-Diffusion Loader",
    "MMDiffusionSample": "MM-Diffusion Sample (Video + Audio)",
    "MMDiffusionAudioToVideo": "MM-Diffusion Audio to Video",
    "MMDiffusionVideoToAudio": "MM-Diffusion Video to Audio",
    "MMDiffusionSuperResolution": "MM-Diffusion Super-Resolution",
    "MMDiffusionSpectrogram": "MM-Diffusion Spectrogram",
}
