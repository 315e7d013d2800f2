"""Seconds per generated sample of MMDiffusionPipeline at the paper configuration (random weights).

    python benchmarks/bench_pipeline.py                         # 20 DPM-Solver steps, with and without SR
    python benchmarks/bench_pipeline.py --steps 2 --sr-steps 1 --frames 8
    python benchmarks/bench_pipeline.py --no-sr --autocast bfloat16

The coupled U-Net is the released Landscape / AIST++ architecture (16 frames of 64x64, 25,600 audio
samples); the SR stage is `SuperResolutionUNet()` (the released 64 -> 256 model) with the official
DDIM scheduler, 25 steps. The default sampler is MMDiffusionDPMSolverScheduler, 20 steps. `--frames`
shortens the clip (the audio follows, 1,600 samples per frame) and `--steps`/`--sr-steps` the
samplers, so that a run fits in the time at hand; the per-step times printed are what to scale
from. Each stage's per-step time is measured from the pipeline's step callback (coupled stage) and
the remaining time of the call (SR stage).
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_mib, load_average, median, peak_resident_bytes, randomize  # noqa: E402

AUDIO_SAMPLES_PER_FRAME = 1600  # 16 kHz audio at 10 frames per second


def build_pipeline(frames: int, with_sr: bool):
    from mmdiffusion import CoupledUNet, MMDiffusionDPMSolverScheduler, MMDiffusionPipeline, SuperResolutionUNet
    from mmdiffusion.pipelines.mm_diffusion.pipeline_mm_diffusion_sr import official_ddim_scheduler

    unet = CoupledUNet(num_frames=frames, audio_length=AUDIO_SAMPLES_PER_FRAME * frames, cross_attention_head_dim=64)
    randomize(unet, 0)
    sr_unet = None
    if with_sr:
        sr_unet = SuperResolutionUNet()
        randomize(sr_unet, 1)
    pipeline = MMDiffusionPipeline(
        unet=unet.eval(),
        scheduler=MMDiffusionDPMSolverScheduler(),
        sr_unet=sr_unet.eval() if sr_unet is not None else None,
        sr_scheduler=official_ddim_scheduler() if with_sr else None,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipeline, args, with_sr: bool):
    """One sample; returns (total seconds, seconds of each coupled step)."""
    marks = []

    def on_step_end(pipe, step, timestep, callback_kwargs):
        marks.append(time.perf_counter())
        return callback_kwargs

    context = (
        torch.autocast("cpu", dtype=getattr(torch, args.autocast)) if args.autocast else contextlib.nullcontext()
    )
    start = time.perf_counter()
    with context:
        pipeline(
            num_inference_steps=args.steps,
            super_resolution=with_sr,
            sr_num_inference_steps=args.sr_steps,
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=on_step_end,
        )
    total = time.perf_counter() - start
    steps = [b - a for a, b in zip([start] + marks[:-1], marks)]
    return total, steps, total - (marks[-1] - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver steps of the coupled stage")
    parser.add_argument("--sr-steps", type=int, default=25, help="DDIM steps of the SR stage")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (paper: 16)")
    parser.add_argument("--runs", type=int, default=1, help="samples timed per setting (after one warm-up step)")
    parser.add_argument("--no-sr", action="store_true", help="only the coupled stage")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], help="run under torch.autocast on the CPU")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.sr_steps < 1 or args.runs < 1:
        parser.error("--steps, --sr-steps and --runs must be at least 1")
    if args.frames < 8:
        parser.error(f"--frames must be at least 8 (the paper model's widest cross-attention window), "
                     f"got {args.frames}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()

    print(f"paper configuration, {args.frames} frames, {args.steps} DPM-Solver steps"
          + ("" if args.no_sr else f", SR 64->256 with {args.sr_steps} DDIM steps")
          + f", {torch.get_num_threads()} threads" + (f", autocast {args.autocast}" if args.autocast else "")
          + f"; load average before {load_average()}", flush=True)
    pipeline = build_pipeline(args.frames, with_sr=not args.no_sr)
    warm_up = argparse.Namespace(**{**vars(args), "steps": 1, "sr_steps": 1})
    generate(pipeline, warm_up, with_sr=False)

    for with_sr in ([False] if args.no_sr else [False, True]):
        totals, step_times, sr_times = [], [], []
        for _ in range(args.runs):
            total, steps, after_steps = generate(pipeline, args, with_sr)
            totals.append(total)
            step_times += steps
            sr_times.append(after_steps)
        label = "with SR   " if with_sr else "without SR"
        line = (f"{label}: {median(totals):8.2f} s per sample; coupled U-Net step {median(step_times):.3f} s "
                f"(min {min(step_times):.3f}, max {max(step_times):.3f})")
        if with_sr:
            line += f"; SR stage {median(sr_times):.2f} s = {median(sr_times) / args.sr_steps:.3f} s per DDIM step"
        print(line, flush=True)
    print(f"process peak {format_mib(peak_resident_bytes())}; load average after {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
