"""Command-line front ends of the training tools: `mmdiffusion train`, `train-sr`, `make-shapes` and
`evaluate-alignment` (registered in the package's `cli.py`). Each `*_main(argv)` returns an exit status."""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Sequence

# The paper's coupled model (official training script flags), the default for training from scratch.
COUPLED_ARCHITECTURE = dict(
    num_frames=16,
    frame_size=64,
    model_channels=128,
    channel_mult=[1, 2, 3, 4],
    num_res_blocks=2,
    cross_attention_factors=[2, 4, 8],
    cross_attention_windows=[1, 4, 8],
    video_attention_factors=[2, 4, 8],
    audio_attention_factors=[],
    num_heads=4,
    cross_attention_head_dim=64,
    audio_channels=1,
    audio_length=None,  # the frames' duration at the sample rate
    learn_sigma=False,
)

# The released 64 -> 256 super-resolution model (official SR training flags).
SR_ARCHITECTURE = dict(
    sample_size=256,
    low_res_size=64,
    model_channels=192,
    channel_mult=[1, 1, 2, 2, 4, 4],
    num_res_blocks=2,
    attention_factors=[8, 16, 32],
    num_heads=4,
    num_head_channels=-1,
    no_learn_sigma=False,
)

DEFAULT_FRAME_RATE = 10
DEFAULT_SAMPLE_RATE = 16000


class CommandError(ValueError):
    """Bad command-line input, reported as one line."""


def _int_list(value: str) -> List[int]:
    try:
        return [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _float_list(value: str) -> List[float]:
    try:
        return [float(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def _frame_size(value: str):
    """`64` or `48x64` (height x width)."""
    try:
        parts = [int(part) for part in value.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 64 or 48x64, got {value!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts if parts[0] != parts[1] else parts[0]
    raise argparse.ArgumentTypeError(f"expected a size such as 64 or 48x64, got {value!r}")


def _run(main, argv) -> int:
    try:
        main(argv)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------------------
# Shared training options


def _add_training_arguments(parser: argparse.ArgumentParser):
    from ..schedulers.scheduling_mm_dpmsolver import PREDICTION_TYPES

    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of videos (mp4, mkv, webm, avi, ...; searched recursively)")
    source.add_argument("--shapes", type=int, metavar="N", help="train on N sounding-shapes clips instead")
    data.add_argument("--shapes-seed", type=int, default=0, help="seed of the first sounding-shapes clip")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader processes that decode the videos")
    data.add_argument("--no-flip", action="store_true", help="do not mirror half of the --data clips left-right")

    run = parser.add_argument_group("training")
    run.add_argument("-o", "--output", type=Path, required=True,
                     help="output folder: checkpoints/, pipeline/ (EMA weights), logs/")
    run.add_argument("--init", type=Path, help="start from a converted or trained pipeline folder (fine-tuning)")
    run.add_argument("--max-steps", type=int, default=10000)
    run.add_argument("--batch-size", type=int, default=8, help="per process (GPU) and micro-batch")
    run.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    run.add_argument("--weight-decay", type=float, default=0.0)
    run.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    run.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    run.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    run.add_argument("--prediction-type", choices=PREDICTION_TYPES,
                     help="the model's target: epsilon (official; the default from scratch) or v_prediction, which "
                          "gives usable samples after far fewer steps (default with --init/--resume: theirs)")
    run.add_argument("--ema-decay", type=float, default=0.9999)
    run.add_argument("--no-ema-warmup", action="store_true",
                     help="use diffusers' (1+t)/(10+t) ramp instead of the 1-(1+t/gamma)^-power warm-up")
    run.add_argument("--ema-inv-gamma", type=float, default=1.0)
    run.add_argument("--ema-power", type=float, default=0.75)
    run.add_argument("--checkpointing-steps", type=int, default=1000,
                     help="checkpoint and write pipeline/ every N steps")
    run.add_argument("--checkpoints-total-limit", type=int, default=None, help="keep only the newest N checkpoints")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest checkpoint in --output (its model; architecture flags ignored)")
    run.add_argument("--force", action="store_true", help="start over in an --output that holds an earlier run")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--report-to", choices=["none", "tensorboard"], default="none")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def _training_options(args, **extra):
    from .trainer import TrainingOptions

    return TrainingOptions(
        output_dir=args.output,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        gradient_accumulation_steps=args.grad_accum,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        ema_decay=args.ema_decay,
        ema_warmup=not args.no_ema_warmup,
        ema_inv_gamma=args.ema_inv_gamma,
        ema_power=args.ema_power,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume=args.resume,
        force=args.force,
        seed=args.seed,
        num_workers=args.num_workers,
        report_to=args.report_to,
        progress_bar=not args.no_progress,
        **extra,
    )


def _architecture(args, defaults: dict) -> dict:
    """The architecture flags, with `defaults` for those not given; refused next to --init."""
    given = [name for name in defaults if getattr(args, name) is not None]
    if args.init is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CommandError(f"{flags} cannot be combined with --init: the architecture comes from the --init folder")
    return {name: defaults[name] if getattr(args, name) is None else getattr(args, name) for name in defaults}


def _resume_checkpoint(args, model_class, other_run: str, other_command: str):
    """The latest checkpoint's info with `--resume`, refusing a run of the other model kind."""
    from .trainer import checkpoint_info, latest_checkpoint

    checkpoint = latest_checkpoint(args.output) if args.resume else None
    if checkpoint is None:
        return None
    info = checkpoint_info(checkpoint)
    if not isinstance(info["model"], model_class):
        raise CommandError(f"--output {args.output} holds a {other_run} run; continue it with {other_command}")
    return info


def _prediction_type(args, resumed, scheduler_subfolder: str) -> str:
    """--prediction-type, else the resumed checkpoint's, else the --init folder's scheduler's, else epsilon."""
    if args.prediction_type is not None:
        return args.prediction_type
    if resumed is not None:
        return resumed["prediction_type"]
    config = args.init / scheduler_subfolder / "scheduler_config.json" if args.init is not None else None
    if config is not None and config.is_file():
        return json.loads(config.read_text()).get("prediction_type", "epsilon")
    return "epsilon"


def _load_init(model_class, folder: Path, subfolder: str, **overrides):
    if not (folder / subfolder / "config.json").is_file():
        raise FileNotFoundError(f"--init {folder} has no {subfolder}/ model (expected a pipeline folder)")
    return model_class.from_pretrained(folder, subfolder=subfolder, **overrides)


def _report(result):
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    speed = f", {result.seconds_per_step:.3f} s/step" if result.seconds_per_step else ""
    loss = f", last loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"step {result.global_step}{loss}{speed}; EMA pipeline in {result.pipeline_dir}")


# ----------------------------------------------------------------------------------------------------
# train


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion train",
        description="Train (or fine-tune with --init) the coupled audio-video U-Net with the official recipe; "
                    "writes EMA weights as a pipeline folder OUT/pipeline. Scale out with `accelerate launch`.",
    )
    _add_training_arguments(parser)
    model = parser.add_argument_group("model (from scratch; defaults: the paper's 16x64x64, 1.6 s at 16 kHz)")
    model.add_argument("--num-frames", type=int)
    model.add_argument("--frame-size", type=_frame_size, help="64 or HxW, e.g. 48x64")
    model.add_argument("--frame-rate", type=float, help=f"fps of the clips (default {DEFAULT_FRAME_RATE}, or --init's)")
    model.add_argument("--sample-rate", type=int, help=f"audio Hz (default {DEFAULT_SAMPLE_RATE}, or --init's)")
    model.add_argument("--audio-length", type=int, help="samples per clip (default: the frames' duration)")
    model.add_argument("--audio-channels", type=int)
    model.add_argument("--model-channels", type=int)
    model.add_argument("--channel-mult", type=_float_list)
    model.add_argument("--num-res-blocks", type=int)
    model.add_argument("--cross-attention-factors", type=_int_list, help="downsample factors with RS-MMA, e.g. 2,4,8")
    model.add_argument("--cross-attention-windows", type=_int_list,
                       help="RS-MMA window (frames) per factor, e.g. 1,4,8")
    model.add_argument("--video-attention-factors", type=_int_list)
    model.add_argument("--audio-attention-factors", type=_int_list)
    model.add_argument("--num-heads", type=int)
    model.add_argument("--cross-attention-head-dim", type=int, help="-1: --num-heads heads")
    model.add_argument("--learn-sigma", action="store_true", default=None, help="also learn the variance (hybrid loss)")
    model.add_argument("--dropout", type=float, default=0.1, help="official training: 0.1")
    model.add_argument("--no-window-shift", action="store_true",
                       help="no RS-MMA window shift: every frame's cross-attention window starts at its own time, in "
                            "training and in the written model's sampling (cross_attention_shift: false); official: shift")
    return parser


def _coupled_unet(args, architecture: dict):
    from ..models.coupled_unet import CoupledUNet

    frame_rate = args.frame_rate or DEFAULT_FRAME_RATE
    sample_rate = args.sample_rate or DEFAULT_SAMPLE_RATE
    num_frames = architecture["num_frames"]
    audio_length = architecture["audio_length"] or round(num_frames / frame_rate * sample_rate)
    return CoupledUNet(
        num_frames=num_frames,
        sample_size=architecture["frame_size"],
        audio_channels=architecture["audio_channels"],
        audio_length=audio_length,
        model_channels=architecture["model_channels"],
        channel_mult=architecture["channel_mult"],
        num_res_blocks=architecture["num_res_blocks"],
        cross_attention_downsample_factors=architecture["cross_attention_factors"],
        cross_attention_windows=architecture["cross_attention_windows"],
        video_attention_downsample_factors=architecture["video_attention_factors"],
        audio_attention_downsample_factors=architecture["audio_attention_factors"],
        num_attention_heads=architecture["num_heads"],
        cross_attention_head_dim=architecture["cross_attention_head_dim"],
        learn_sigma=architecture["learn_sigma"],
        cross_attention_shift=not args.no_window_shift,
        dropout=args.dropout,
    ), frame_rate, sample_rate


def _init_rates(folder: Path):
    index = folder / "model_index.json"
    config = json.loads(index.read_text()) if index.is_file() else {}
    return config.get("frame_rate", DEFAULT_FRAME_RATE), config.get("sample_rate", DEFAULT_SAMPLE_RATE)


def _coupled_dataset(args, unet, frame_rate, sample_rate):
    from .datasets import VideoFolderDataset
    from .sounding_shapes import SoundingShapesDataset

    config = unet.config
    height, width = unet.video_shape[2:]
    if args.shapes is not None:
        if config.audio_channels != 1 or config.video_channels != 3:
            raise CommandError("sounding shapes are RGB video with mono audio; this model takes other channels")
        return SoundingShapesDataset(
            args.shapes, args.shapes_seed, num_frames=config.num_frames, frame_rate=frame_rate, height=height,
            width=width, sample_rate=sample_rate, num_samples=config.audio_length,
        )
    return VideoFolderDataset(
        args.data, num_frames=config.num_frames, frame_rate=frame_rate, height=height, width=width,
        sample_rate=sample_rate, num_samples=config.audio_length, num_channels=config.audio_channels,
        random_flip=not args.no_flip,
    )


def train_command(argv: Sequence[str]):
    import torch

    from ..models.coupled_unet import CoupledUNet
    from .trainer import train

    args = train_parser().parse_args(argv)
    architecture = _architecture(args, COUPLED_ARCHITECTURE)
    torch.manual_seed(args.seed)  # the initial weights
    resumed = _resume_checkpoint(args, CoupledUNet, "super-resolution", "train-sr")
    if resumed is not None:
        unet, frame_rate, sample_rate = resumed["model"], resumed["frame_rate"], resumed["sample_rate"]
        if args.no_window_shift and unet.config.cross_attention_shift:
            raise CommandError(f"the run in {args.output} shifts its windows; --no-window-shift only applies to a new run")
    elif args.init is not None:
        # The shift is no weight: an --init model may drop it (it never gains it back here).
        overrides = {"cross_attention_shift": False} if args.no_window_shift else {}
        unet = _load_init(CoupledUNet, args.init, "unet", dropout=args.dropout, **overrides)
        init_frame_rate, init_sample_rate = _init_rates(args.init)
        frame_rate, sample_rate = args.frame_rate or init_frame_rate, args.sample_rate or init_sample_rate
    else:
        unet, frame_rate, sample_rate = _coupled_unet(args, architecture)
    dataset = _coupled_dataset(args, unet, frame_rate, sample_rate)
    options = _training_options(args, prediction_type=_prediction_type(args, resumed, "scheduler"))
    _report(train(unet, dataset, options, frame_rate=frame_rate, sample_rate=sample_rate))


def train_main(argv: Sequence[str]) -> int:
    return _run(train_command, argv)


# ----------------------------------------------------------------------------------------------------
# train-sr


def train_sr_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion train-sr",
        description="Train (or fine-tune with --init) the frame super-resolution U-Net with the official recipe "
                    "(learned variance, hybrid loss; degraded low-resolution inputs); writes OUT/pipeline with "
                    "sr_unet/ and sr_scheduler/.",
    )
    _add_training_arguments(parser)
    model = parser.add_argument_group("model (from scratch; defaults: the released 64 -> 256 model)")
    model.add_argument("--sample-size", type=int, help="side of the high-resolution frames")
    model.add_argument("--low-res-size", type=int, help="side of the low-resolution input frames")
    model.add_argument("--model-channels", type=int)
    model.add_argument("--channel-mult", type=_int_list)
    model.add_argument("--num-res-blocks", type=int)
    model.add_argument("--attention-factors", type=_int_list, help="downsample factors with self-attention")
    model.add_argument("--num-heads", type=int)
    model.add_argument("--num-head-channels", type=int, help="-1: --num-heads heads")
    model.add_argument("--no-learn-sigma", action="store_true", default=None, help="predict the noise only (plain MSE)")
    model.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--frame-rate", type=float, default=DEFAULT_FRAME_RATE,
                        help="rate at which frames are taken from the videos")
    parser.add_argument("--no-degrade", action="store_true",
                        help="no noise or JPEG degradation of the low-resolution frames")
    return parser


def train_sr_command(argv: Sequence[str]):
    import torch

    from ..models.sr_unet import SuperResolutionUNet
    from .datasets import SuperResolutionFrames, VideoFolderDataset
    from .sounding_shapes import SoundingShapesDataset
    from .trainer import train

    args = train_sr_parser().parse_args(argv)
    architecture = _architecture(args, SR_ARCHITECTURE)
    torch.manual_seed(args.seed)  # the initial weights
    resumed = _resume_checkpoint(args, SuperResolutionUNet, "coupled-model", "train")
    if resumed is not None:
        sr_unet = resumed["model"]
    elif args.init is not None:
        sr_unet = _load_init(SuperResolutionUNet, args.init, "sr_unet", dropout=args.dropout)
    else:
        sr_unet = SuperResolutionUNet(
            sample_size=architecture["sample_size"],
            low_res_size=architecture["low_res_size"],
            out_channels=3 if architecture["no_learn_sigma"] else 6,
            model_channels=architecture["model_channels"],
            channel_mult=architecture["channel_mult"],
            num_res_blocks=architecture["num_res_blocks"],
            attention_downsample_factors=architecture["attention_factors"],
            num_heads=architecture["num_heads"],
            num_head_channels=architecture["num_head_channels"],
            dropout=args.dropout,
        )
    size = sr_unet.config.sample_size
    if args.shapes is not None:
        # One frame per clip, so consecutive items are unrelated; the tone is not needed.
        clips = SoundingShapesDataset(args.shapes, args.shapes_seed, num_frames=1, frame_rate=args.frame_rate,
                                      height=size, width=size, num_samples=1)
    else:
        clips = VideoFolderDataset(args.data, num_frames=1, frame_rate=args.frame_rate, height=size, width=size,
                                   random_flip=not args.no_flip)
    dataset = SuperResolutionFrames(clips, sr_unet.config.low_res_size, degrade=not args.no_degrade)
    options = _training_options(args, prediction_type=_prediction_type(args, resumed, "sr_scheduler"))
    _report(train(sr_unet, dataset, options))


def train_sr_main(argv: Sequence[str]) -> int:
    return _run(train_sr_command, argv)


# ----------------------------------------------------------------------------------------------------
# make-shapes


def make_shapes_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion make-shapes",
        description="Write sounding-shapes clips (a square whose height sets the pitch of a tone) as mp4 files "
                    "with sound, e.g. to try `mmdiffusion train --data`.",
    )
    parser.add_argument("--num", type=int, required=True, help="number of clips")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for shape_00000.mp4, ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first clip (clip i uses seed + i)")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--frame-rate", type=float, default=DEFAULT_FRAME_RATE)
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE)
    parser.add_argument("--force", action="store_true", help="overwrite existing clips")
    return parser


def make_shapes(num: int, output, *, seed: int = 0, height: int = 64, width: int = 64, num_frames: int = 16,
                frame_rate: float = DEFAULT_FRAME_RATE, sample_rate: int = DEFAULT_SAMPLE_RATE,
                force: bool = False) -> List[Path]:
    """Write clips `seed .. seed + num - 1` as `output/shape_<seed>.mp4`; refuses before writing anything if a
    file exists (without `force`) or the sample rate cannot be stored in an mp4."""
    from .. import media
    from ..file_utils import check_can_write
    from .sounding_shapes import render_sounding_shape

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"--num must be a positive integer, got {num!r}")
    if sample_rate not in media.mp4_audio_sample_rates():
        raise ValueError(
            f"--sample-rate {sample_rate} cannot be stored as AAC in an mp4; choose one of "
            f"{', '.join(map(str, media.mp4_audio_sample_rates()))}"
        )
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file; expected a folder")
    paths = [output / f"shape_{seed + index:05d}.mp4" for index in range(num)]
    for path in paths:
        check_can_write(path, force)
    for index, path in enumerate(paths):
        video, audio, _ = render_sounding_shape(
            seed + index, num_frames=num_frames, frame_rate=frame_rate, height=height, width=width,
            sample_rate=sample_rate,
        )
        media.export_to_video(video, path, frame_rate, audio, sample_rate, force=force)
    return paths


def make_shapes_main(argv: Sequence[str]) -> int:
    def command(argv):
        args = make_shapes_parser().parse_args(argv)
        paths = make_shapes(args.num, args.output, seed=args.seed, height=args.height, width=args.width,
                            num_frames=args.num_frames, frame_rate=args.frame_rate, sample_rate=args.sample_rate,
                            force=args.force)
        print(f"wrote {len(paths)} clips to {args.output}")

    return _run(command, argv)


# ----------------------------------------------------------------------------------------------------
# evaluate-alignment


def evaluate_alignment_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiffusion evaluate-alignment",
        description="How well the pitch of the sound follows the height of the square in sounding-shapes clips "
                    "(generated or real). A metric for sounding shapes only: for other videos it means nothing.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="mp4 files or folders of them")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    return parser


def evaluate_alignment(paths: Sequence[Path]) -> dict:
    """`training.alignment.alignment_scores` of the decoded clips (all at one frame rate and sample rate)."""
    import warnings

    from .. import media
    from .alignment import alignment_scores
    from .datasets import find_video_files

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = find_video_files(path)
            if not found:
                raise FileNotFoundError(f"{path} holds no video files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    videos, audios, rates = [], [], set()
    for path in files:
        info = media.probe(path)
        if not info["has_audio"] or not info["has_video"]:
            raise ValueError(f"{path} needs both a video and an audio track to measure their alignment")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mixing to mono is expected
            videos.append(media.load_video(path, target_frame_rate=None, num_frames=None, height=None, width=None))
            audios.append(media.load_audio(path, target_sample_rate=None, num_channels=1, num_samples=None))
        rates.add((round(info["frame_rate"], 3), info["sample_rate"]))
    if len(rates) != 1:
        raise ValueError(f"the clips must share one frame rate and sample rate, got (fps, Hz) {sorted(rates)}")
    frame_rate, sample_rate = rates.pop()
    return alignment_scores(videos, audios, sample_rate=sample_rate, frame_rate=frame_rate)


def evaluate_alignment_main(argv: Sequence[str]) -> int:
    def command(argv):
        args = evaluate_alignment_parser().parse_args(argv)
        scores = evaluate_alignment(args.paths)
        if args.json:
            print(json.dumps(scores, indent=2))
            return
        print(f"sounding-shapes alignment of {scores['num_clips']} clip(s) (meaningful for sounding shapes only):")
        print(f"  correlation of square height and pitch  {scores['correlation']:.3f}"
              f"  (defined for {scores['correlation_defined_fraction']:.0%} of clips)")
        print(f"  shuffled baseline (chance level)        {scores['shuffled_correlation']:.3f}")
        print(f"  mean abs height difference (frames)     {scores['mean_abs_diff']:.3f}")
        print(f"  square found in frames                  {scores['square_found_fraction']:.0%}")
        print(f"  tonal energy share                      {scores['tonal_energy_share']:.3f}")

    return _run(command, argv)
