"""`mmdiffusion <command>`: the command-line entry point (also `python -m mmdiffusion <command>`)."""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

PRETRAINED = Path(__file__).resolve().parent / "pretrained"


def _convert(argv: Sequence[str]) -> int:
    from .convert_weights import main

    return main(argv)


# ----------------------------------------------------------------------------------------------------
# generate


def _generate_parser() -> argparse.ArgumentParser:
    from .schedulers.scheduler_choices import SCHEDULER_CHOICES

    parser = argparse.ArgumentParser(
        prog="mmdiffusion generate",
        description="Generate videos with their soundtracks (or one modality for a given other) as mp4 + wav.",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("samples"),
                        help="a path ending in .mp4 (one sample) or a folder for sample_000.mp4 + .wav, ...")
    parser.add_argument("--model", type=Path, default=None,
                        help="converted or trained pipeline folder (default: the small model shipped in pretrained/)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULER_CHOICES), default="dpm-solver")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, whatever the batching")
    parser.add_argument("--no-sr", action="store_true", help="skip the super-resolution stage")
    parser.add_argument("--sr-steps", type=int, default=25)
    parser.add_argument("--no-window-shift", action="store_true", help="disable the random RS-MMA window shift")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--audio", type=Path, help="audio-to-video: generate the video for this sound file")
    parser.add_argument("--video", type=Path, help="video-to-audio: generate the sound for this video file")
    parser.add_argument("--offset", type=float, default=0.0, help="start (seconds) of the clip taken from --audio/--video")
    add_conditioning_arguments(parser)
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    return parser


def add_conditioning_arguments(parser: argparse.ArgumentParser):
    """How a given modality steers the generated one (`generate --audio/--video`, benchmarks/alignment.py)."""
    from .pipelines.mm_diffusion.pipeline_mm_diffusion import CONDITION_METHODS, GUIDANCE_COEFFICIENTS, GUIDANCE_LOSSES

    parser.add_argument("--condition-method", choices=CONDITION_METHODS, default="replacement")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--guidance-loss", choices=GUIDANCE_LOSSES, default="next_step",
                        help="next_step: the official one-step mismatch; clean: reconstruction guidance")
    parser.add_argument("--guidance-coefficient", choices=GUIDANCE_COEFFICIENTS, default="official")


def conditioning_options(args: argparse.Namespace) -> dict:
    """The pipeline arguments of `add_conditioning_arguments`' options."""
    return dict(condition_method=args.condition_method, guidance_scale=args.guidance_scale,
                guidance_loss=args.guidance_loss, guidance_coefficient=args.guidance_coefficient)


def _output_paths(output: Path, num_samples: int) -> List[Dict[str, Path]]:
    if output.suffix.lower() == ".mp4":
        if num_samples != 1:
            raise ValueError(f"-o {output} names one mp4 file, but --num-samples is {num_samples}; give a folder")
        return [{"mp4": output}]
    return [
        {"mp4": output / f"sample_{i:03d}.mp4", "wav": output / f"sample_{i:03d}.wav"} for i in range(num_samples)
    ]


def _load_pipeline(model: Optional[Path], device, dtype):
    import torch

    from .pipelines.mm_diffusion import MMDiffusionPipeline

    folder = model or PRETRAINED
    if not (folder / "model_index.json").is_file():
        if model is None:
            raise FileNotFoundError(f"the default model is missing from {PRETRAINED}; pass --model PATH")
        raise FileNotFoundError(f"--model {folder} is not a pipeline folder (no model_index.json)")
    pipeline = MMDiffusionPipeline.from_pretrained(folder, torch_dtype=getattr(torch, dtype))
    return pipeline.to(device)


def generate(args: argparse.Namespace) -> List[Path]:
    import torch
    from accelerate import PartialState

    from . import media
    from .file_utils import check_can_write
    from .schedulers.scheduler_choices import make_scheduler

    for name in ("num_samples", "batch_size", "steps", "sr_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.audio is not None and args.video is not None:
        raise ValueError("give --audio (audio-to-video) or --video (video-to-audio), not both")
    for given in (args.audio, args.video):
        if given is not None and not given.is_file():
            raise FileNotFoundError(f"{given} does not exist")
    targets = _output_paths(args.output, args.num_samples)
    for sample in targets:
        for path in sample.values():
            check_can_write(path, args.force)

    # Under `accelerate launch` each process takes every n-th sample, so no two write the same file.
    state = PartialState(cpu=args.device == "cpu")
    device = args.device or state.device
    indices = list(range(args.num_samples))[state.process_index :: state.num_processes]

    pipeline = _load_pipeline(args.model, device, args.dtype)
    pipeline.scheduler = make_scheduler(args.scheduler, pipeline.scheduler.config, pipeline.unet.config.learn_sigma)
    use_sr = pipeline.sr_unet is not None and not args.no_sr
    condition = {}
    if args.audio is not None:
        condition = dict(audio=str(args.audio), audio_offset=args.offset)
    elif args.video is not None:
        condition = dict(video=str(args.video), video_offset=args.offset)
    if condition:
        condition.update(conditioning_options(args))

    written = []
    for start in range(0, len(indices), args.batch_size):
        batch = indices[start : start + args.batch_size]
        began = time.perf_counter()
        output = pipeline(
            batch_size=len(batch),
            num_inference_steps=args.steps,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in batch],
            window_shift=False if args.no_window_shift else "random",
            super_resolution=use_sr,
            sr_num_inference_steps=args.sr_steps,
            **condition,
        )
        for row, index in enumerate(batch):
            paths = targets[index]
            frames, audio = output.frames[row], output.audio[row]
            media.export_to_video(frames, paths["mp4"], output.frame_rate, audio, output.sample_rate, force=args.force)
            written.append(paths["mp4"])
            if "wav" in paths:
                media.export_to_wav(audio, paths["wav"], output.sample_rate, force=args.force)
                written.append(paths["wav"])
        seconds = time.perf_counter() - began
        print(f"samples {batch[0]}..{batch[-1]}: {seconds:.1f} s ({seconds / len(batch):.1f} s per sample)")
    for path in written:
        print(f"wrote {path}")
    return written


def _generate(argv: Sequence[str]) -> int:
    args = _generate_parser().parse_args(argv)
    try:
        generate(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------------------
# combine


def _combine_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion combine",
        description="Join an audio-video pipeline folder and a super-resolution one (each from `mmdiffusion train`, "
                    "`train-sr` or `convert`) into one pipeline folder that generates and upscales.",
    )
    parser.add_argument("base", type=Path, help="pipeline folder with unet/ and scheduler/")
    parser.add_argument("sr", type=Path, help="pipeline folder with sr_unet/ and sr_scheduler/")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the combined pipeline folder")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="precision of the saved weights")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    return parser


def combine(base: Path, sr: Path, output: Path, dtype: str = "float32", force: bool = False) -> Path:
    """Write `base`'s unet and scheduler with `sr`'s sr_unet and sr_scheduler as one `MMDiffusionPipeline` folder
    (atomically: `output` is complete or untouched)."""
    import torch

    from .file_utils import atomic_directory, check_can_write
    from .pipelines.mm_diffusion import MMDiffusionPipeline, MMDiffusionSRPipeline

    check_can_write(output, force, expect_dir=True)
    for folder, needs in ((base, "unet"), (sr, "sr_unet")):
        index = folder / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(f"{folder} is not a pipeline folder (no model_index.json)")
        if not (folder / needs).is_dir():
            raise ValueError(f"{folder} has no {needs}/ model")
    torch_dtype = getattr(torch, dtype)
    upscaler = MMDiffusionSRPipeline.from_pretrained(sr, torch_dtype=torch_dtype)
    pipeline = MMDiffusionPipeline.from_pretrained(
        base, sr_unet=upscaler.sr_unet, sr_scheduler=upscaler.sr_scheduler, torch_dtype=torch_dtype
    )
    with atomic_directory(output, force=force) as temporary:
        pipeline.save_pretrained(temporary, safe_serialization=True)
        # diffusers records where each part was loaded from; a folder meant to be shared should not name that.
        for config_path in temporary.rglob("*.json"):
            config = json.loads(config_path.read_text())
            if config.pop("_name_or_path", None) is not None:
                config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return output


def _combine(argv: Sequence[str]) -> int:
    args = _combine_parser().parse_args(argv)
    try:
        combine(args.base, args.sr, args.output, args.dtype, args.force)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


# ----------------------------------------------------------------------------------------------------
# dispatch

def _training_command(name: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        from .training import commands

        return getattr(commands, name)(argv)

    return run


COMMANDS: Dict[str, Callable[[Sequence[str]], int]] = {
    "generate": _generate,
    "convert": _convert,
    "combine": _combine,
    "train": _training_command("train_main"),
    "train-sr": _training_command("train_sr_main"),
    "make-shapes": _training_command("make_shapes_main"),
    "evaluate-alignment": _training_command("evaluate_alignment_main"),
}

SUMMARIES = {
    "generate": "generate video with sound (or audio for a video, video for an audio) as mp4 + wav",
    "convert": "official .pt checkpoints -> diffusers folder of safetensors",
    "combine": "join an audio-video pipeline folder and a super-resolution one into one",
    "train": "train or fine-tune the audio-video model (accelerate; EMA pipeline folder)",
    "train-sr": "train or fine-tune the frame super-resolution model",
    "make-shapes": "write sounding-shapes clips as mp4 with sound (toy training data)",
    "evaluate-alignment": "sound/picture alignment of sounding-shapes clips (that data set only)",
}

USAGE = "usage: mmdiffusion <command> [options]\n\ncommands:\n" + "\n".join(
    f"  {name:<20} {SUMMARIES[name]}" for name in COMMANDS
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
