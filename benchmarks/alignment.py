"""Sound/picture alignment of a model trained on sounding shapes (the shipped default by default): joint
generation, audio->video and video->audio, each beside the shuffled-pair baseline, with the measure of
`mmdiffusion evaluate-alignment` read back from the mp4 files written.

    python benchmarks/alignment.py                            # the default model, 32 clips of each kind
    python benchmarks/alignment.py --model DIR --num 8 --out /tmp/alignment --no-sr --kinds joint,video_to_audio
    python benchmarks/alignment.py --kinds audio_to_video --condition-method guidance --guidance-loss clean \
        --guidance-coefficient paper --guidance-scale 1000 --steps 50

The conditioning clips are sounding shapes rendered at the model's size and rates from `--seed` on
(the default, 1,000,000, lies far beyond the seeds the default model was trained on). Joint samples
use the seeds `--seed`, `--seed + 1`, ...; conditional samples the same seeds. The super-resolution
stage runs on the joint and audio->video samples when the model has one (unless `--no-sr`): the
alignment is then measured on what `mmdiffusion generate` writes. The measure means something for
sounding shapes only.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mmdiffusion import MMDiffusionPipeline, media
from mmdiffusion.cli import PRETRAINED, add_conditioning_arguments, conditioning_options
from mmdiffusion.training.commands import evaluate_alignment, make_shapes

KINDS = ("joint", "audio_to_video", "video_to_audio")
COLUMNS = ("correlation", "shuffled_correlation", "mean_abs_diff", "square_found_fraction", "tonal_energy_share")


def write_samples(output, folder: Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for frames, audio, name in zip(output.frames, output.audio, names):
        media.export_to_video(frames, folder / f"{name}.mp4", output.frame_rate, audio, output.sample_rate, force=True)


def run(pipeline, args, folder: Path, seeds, sr: bool, **condition):
    """Generate one sample per seed in batches and write them to `folder`; returns seconds taken."""
    began = time.perf_counter()
    for start in range(0, len(seeds), args.batch_size):
        batch = seeds[start : start + args.batch_size]
        given = {key: value[start : start + args.batch_size] for key, value in condition.items()}
        output = pipeline(
            batch_size=len(batch),
            num_inference_steps=args.steps,
            generator=[torch.Generator().manual_seed(seed) for seed in batch],
            super_resolution=sr,
            **conditioning_options(args),
            **given,
        )
        write_samples(output, folder, [f"sample_{seed}" for seed in batch])
    return time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PRETRAINED, help="pipeline folder (default: the shipped model)")
    parser.add_argument("--num", type=int, default=32, help="clips of each kind")
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kinds", type=lambda text: text.split(","), default=list(KINDS),
                        help=f"comma-separated, from {','.join(KINDS)} (default: all)")
    add_conditioning_arguments(parser)
    parser.add_argument("--no-sr", action="store_true", help="measure at the base resolution")
    parser.add_argument("--out", type=Path, default=Path("alignment-eval"), help="folder for the clips written")
    parser.add_argument("--json", type=Path, help="also write the scores to this file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown --kinds {','.join(unknown)}; choose from {','.join(KINDS)}")

    pipeline = MMDiffusionPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    sr = pipeline.sr_unet is not None and not args.no_sr
    frames, _, height, width = pipeline.video_shape
    real = make_shapes(args.num, args.out / "real", seed=args.seed, height=height, width=width, num_frames=frames,
                       frame_rate=pipeline.config.frame_rate, sample_rate=pipeline.config.sample_rate, force=True)
    seeds = list(range(args.seed, args.seed + args.num))
    paths = [str(path) for path in real]

    conditions = {"joint": {}, "audio_to_video": {"audio": paths}, "video_to_audio": {"video": paths}}
    seconds = {
        kind: run(pipeline, args, args.out / kind, seeds, sr and kind != "video_to_audio", **conditions[kind])
        for kind in KINDS if kind in args.kinds
    }
    scores = {"real": evaluate_alignment([args.out / "real"])}
    scores.update({kind: evaluate_alignment([args.out / kind]) for kind in seconds})

    method = args.condition_method
    if method == "guidance":
        method += f" (scale {args.guidance_scale:g}, {args.guidance_loss} loss, {args.guidance_coefficient} coefficient)"
    print(f"model {args.model}, {args.num} clips each, seeds from {args.seed}, {args.steps} steps, conditioning by "
          f"{method}, super-resolution {'on' if sr else 'off'} (not applied to video->audio)")
    print(f"{'':16}" + "".join(f"{name:>24}" for name in COLUMNS) + f"{'seconds':>10}")
    for kind, values in scores.items():
        timing = f"{seconds[kind]:10.0f}" if kind in seconds else f"{'':>10}"
        print(f"{kind:16}" + "".join(f"{values[name]:24.3f}" for name in COLUMNS) + timing)
    if args.json:
        args.json.write_text(json.dumps({"scores": scores, "seconds": seconds, "arguments": vars(args)}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
