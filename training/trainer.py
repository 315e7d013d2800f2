"""Training the coupled audio-video U-Net and the super-resolution U-Net with the official recipe, on accelerate.

The recipe (official `multimodal_train.py` / `image_sr_train.py`): the linear 1000-step β schedule, uniform
timesteps, ε-prediction MSE (or v-prediction on request; summed over video and audio for the coupled model;
plus the variational-bound term for learned variances), AdamW at 1e-4 without weight decay, an exponential moving average of the
weights, and random RS-MMA window shifts. The EMA is diffusers' `EMAModel`; its decay ramps up to
`ema_decay` (by default with the `1 - (1 + step / inv_gamma) ** -power` warm-up), where the official code
applies 0.9999 from the first step.

`accelerate launch` runs the same code on several GPUs or machines: the batch size is per process.

Output folder layout:

    OUT/checkpoints/checkpoint-<step>/   accelerate state (model, optimizer, EMA, random states) + model config
    OUT/pipeline/                        EMA weights as a pipeline folder (`from_pretrained` loads it)
    OUT/logs/                            tracker logs (`report_to="tensorboard"`)

Both the checkpoints and the pipeline folder are written under temporary names and renamed when complete.
"""

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..file_utils import atomic_directory
from ..models.coupled_unet import CoupledUNet
from ..models.sr_unet import SuperResolutionUNet
from ..schedulers.scheduling_mm_dpmsolver import PREDICTION_TYPES
from .losses import GaussianDiffusion, coupled_training_loss, noise_schedule_config, sr_training_loss

MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard")
CHECKPOINTS = "checkpoints"
PIPELINE = "pipeline"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_STATE_FILE = "training_state.json"
_MODEL_CONFIG = "model"  # subfolder of a checkpoint holding the model's config.json

PathLike = Union[str, os.PathLike]


@dataclass
class TrainingOptions:
    """How to train (the model and data are given separately).

    Args:
        output_dir: where checkpoints, the pipeline folder and logs go.
        max_steps: optimizer steps to train for, counted from the start (a resumed run stops at the same step).
        batch_size: samples per process and micro-batch; the effective batch is
            `batch_size * gradient_accumulation_steps * processes`.
        learning_rate, weight_decay: AdamW's (official: 1e-4 and 0).
        gradient_accumulation_steps: micro-batches per optimizer step.
        mixed_precision: "no", "fp16" (GPU) or "bf16".
        gradient_checkpointing: recompute activations in the backward pass (less memory, more compute).
        ema_decay: the EMA's final decay (official: 0.9999).
        ema_warmup: ramp the decay as `1 - (1 + step / ema_inv_gamma) ** -ema_power` (diffusers' warm-up);
            without it, diffusers' `(1 + step) / (10 + step)`. Either is capped at `ema_decay`.
        ema_inv_gamma, ema_power: the warm-up's shape (power 3/4 reaches 0.999 at 10k steps, 2/3 suits
            runs of a million steps).
        checkpointing_steps: save a checkpoint and the EMA pipeline every this many steps (and at the end).
        checkpoints_total_limit: keep only this many most recent checkpoints (None: all).
        resume: continue from the latest checkpoint in `output_dir` (start afresh if there is none).
        force: start afresh in an `output_dir` that holds an earlier run, deleting its checkpoints.
        seed: seed of the noise, timesteps, window shifts, dropout and data order.
        num_workers: DataLoader worker processes (decoding runs there).
        report_to: "none" or "tensorboard" (accelerate's tracker, logging to `output_dir/logs`).
        prediction_type: the model's target, "epsilon" (official) or "v_prediction"; it goes into the written
            pipeline's scheduler config, and a resumed run keeps its checkpoint's.
        progress_bar: show a tqdm bar with the loss and steps per second.
    """

    output_dir: PathLike
    max_steps: int = 10000
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    checkpointing_steps: int = 1000
    checkpoints_total_limit: Optional[int] = None
    resume: bool = False
    force: bool = False
    seed: int = 0
    num_workers: int = 0
    report_to: str = "none"
    prediction_type: str = "epsilon"
    progress_bar: bool = True

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("num_workers", self.num_workers, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.checkpoints_total_limit is not None:
            _check_int("checkpoints_total_limit", self.checkpoints_total_limit, minimum=1)
        for name, low, high in (("learning_rate", 0.0, math.inf), ("weight_decay", 0.0, math.inf),
                                ("ema_decay", 0.0, 1.0), ("ema_inv_gamma", 0.0, math.inf),
                                ("ema_power", 0.0, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}"
            )
        if self.report_to not in REPORT_TO:
            raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


@dataclass
class TrainingResult:
    """What a training run did: the step it reached, where its EMA pipeline is, and its speed."""

    global_step: int
    pipeline_dir: Path
    checkpoint_dir: Optional[Path]
    final_loss: Optional[float]
    seconds_per_step: Optional[float]
    resumed_from: Optional[Path] = None


# ----------------------------------------------------------------------------------------------------
# Pipeline folders


def write_coupled_pipeline(
    unet: CoupledUNet, path: PathLike, *, frame_rate: float, sample_rate: int, prediction_type: str = "epsilon",
    force: bool = False,
) -> Path:
    """Write `unet` as an `MMDiffusionPipeline` folder with the official DPM-Solver scheduler (atomically)."""
    from ..pipelines.mm_diffusion import MMDiffusionPipeline
    from ..schedulers.scheduling_mm_dpmsolver import MMDiffusionDPMSolverScheduler

    pipeline = MMDiffusionPipeline(
        unet=unet,
        scheduler=MMDiffusionDPMSolverScheduler(**noise_schedule_config(), prediction_type=prediction_type),
        frame_rate=frame_rate,
        sample_rate=sample_rate,
    )
    with atomic_directory(path, force=force) as temporary:
        pipeline.save_pretrained(temporary, safe_serialization=True)
    return Path(path)


def write_sr_pipeline(
    sr_unet: SuperResolutionUNet, path: PathLike, *, prediction_type: str = "epsilon", force: bool = False
) -> Path:
    """Write `sr_unet` as an `MMDiffusionSRPipeline` folder (sr_unet/ + the official DDIM sr_scheduler/)."""
    from ..pipelines.mm_diffusion import MMDiffusionSRPipeline
    from ..pipelines.mm_diffusion.pipeline_mm_diffusion_sr import official_ddim_scheduler

    pipeline = MMDiffusionSRPipeline(sr_unet=sr_unet, sr_scheduler=official_ddim_scheduler(prediction_type=prediction_type))
    with atomic_directory(path, force=force) as temporary:
        pipeline.save_pretrained(temporary, safe_serialization=True)
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def latest_checkpoint(output_dir: PathLike) -> Optional[Path]:
    """The checkpoint of the highest step in `output_dir/checkpoints`, or None."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    steps = [(int(match.group(1)), entry) for entry in folder.iterdir()
             if entry.is_dir() and (match := _CHECKPOINT_NAME.match(entry.name))]
    return max(steps)[1] if steps else None


def _training_state(checkpoint: Path) -> dict:
    state_path = checkpoint / _STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no {_STATE_FILE})")
    return json.loads(state_path.read_text())


def checkpoint_info(checkpoint: PathLike) -> dict:
    """`{"step", "model" (the model, freshly initialised from the checkpoint's config), "frame_rate",
    "sample_rate", "prediction_type"}` of a checkpoint folder; the rates are None for a super-resolution run."""
    checkpoint = Path(checkpoint)
    state = _training_state(checkpoint)
    model_class = {cls.__name__: cls for cls in (CoupledUNet, SuperResolutionUNet)}[state["model_class"]]
    config = model_class.load_config(checkpoint / _MODEL_CONFIG)
    return {
        "step": state["step"],
        "model": model_class.from_config(config),
        "frame_rate": state.get("frame_rate"),
        "sample_rate": state.get("sample_rate"),
        "prediction_type": _trained_prediction_type(state),
    }


def _trained_prediction_type(state: dict) -> str:
    # Checkpoints written before the option existed were trained on the noise.
    return state.get("options", {}).get("prediction_type", "epsilon")


def _prepare_output_dir(options: TrainingOptions, is_main: bool) -> Optional[Path]:
    """The checkpoint to resume from, if any; refuses (or with `force` clears) an earlier run's output."""
    resume_from = latest_checkpoint(options.output_dir) if options.resume else None
    if resume_from is not None:
        return resume_from
    earlier = [options.output_dir / name for name in (CHECKPOINTS, PIPELINE) if (options.output_dir / name).exists()]
    if earlier and not options.force:
        raise FileExistsError(
            f"{options.output_dir} holds an earlier run ({', '.join(p.name for p in earlier)}); pass resume=True "
            "(--resume) to continue it or force=True (--force) to start over"
        )
    if earlier and is_main:
        shutil.rmtree(options.output_dir / CHECKPOINTS, ignore_errors=True)
    return None


# ----------------------------------------------------------------------------------------------------
# Training


def _check_items(model, dataset: Dataset):
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")
    item = dataset[0]
    config = model.config
    if isinstance(model, CoupledUNet):
        expected = {"video": model.video_shape, "audio": model.audio_shape}
    else:
        expected = {"high_res": (config.in_channels, config.sample_size, config.sample_size),
                    "low_res": (config.in_channels, config.low_res_size, config.low_res_size)}
    for key, shape in expected.items():
        if key not in item or tuple(item[key].shape) != shape:
            got = list(item[key].shape) if key in item else "nothing"
            raise ValueError(f"data set items must hold {key!r} of shape {list(shape)} for this model, got {got}")


def _loss_function(model, options: TrainingOptions) -> Callable:
    diffusion = GaussianDiffusion(prediction_type=options.prediction_type)
    if isinstance(model, CoupledUNet):
        return lambda prepared, batch: coupled_training_loss(prepared, batch, diffusion)
    if isinstance(model, SuperResolutionUNet):
        return lambda prepared, batch: sr_training_loss(prepared, batch, diffusion)
    raise TypeError(f"model must be a CoupledUNet or a SuperResolutionUNet, got {type(model).__name__}")


def train(
    model: Union[CoupledUNet, SuperResolutionUNet],
    dataset: Dataset,
    options: TrainingOptions,
    *,
    frame_rate: Optional[float] = None,
    sample_rate: Optional[int] = None,
) -> TrainingResult:
    """Train `model` in place on `dataset` and write its EMA weights as a pipeline folder.

    Args:
        model: a `CoupledUNet` (items `{"video", "audio"}`) or a `SuperResolutionUNet` (items
            `{"high_res", "low_res"}`, see `datasets.SuperResolutionFrames`), freshly built, or loaded for
            fine-tuning. When resuming, its weights are replaced by the checkpoint's: build it with
            `checkpoint_info(latest_checkpoint(output_dir))["model"]`.
        dataset: items in the model's format, in [-1, 1].
        options: see `TrainingOptions`.
        frame_rate, sample_rate: of the data; required for a `CoupledUNet` (they go into the pipeline).

    Returns:
        a `TrainingResult`; the pipeline folder is `options.output_dir / "pipeline"`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, is_tensorboard_available, set_seed
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if not isinstance(options, TrainingOptions):
        raise TypeError(f"options must be TrainingOptions, got {type(options).__name__}")
    loss_function = _loss_function(model, options)
    is_coupled = isinstance(model, CoupledUNet)
    if is_coupled and (frame_rate is None or sample_rate is None):
        raise ValueError("frame_rate and sample_rate of the data are required to train a CoupledUNet")
    _check_items(model, dataset)
    if options.report_to == "tensorboard" and not is_tensorboard_available():
        raise ValueError("report_to='tensorboard' needs the tensorboard package: pip install tensorboard")

    accelerator = Accelerator(
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        mixed_precision=options.mixed_precision,
        log_with=None if options.report_to == "none" else options.report_to,
        project_config=ProjectConfiguration(project_dir=str(options.output_dir),
                                            logging_dir=str(options.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=options.seed),
    )
    if len(dataset) < options.batch_size * accelerator.num_processes:
        raise ValueError(
            f"the data set has {len(dataset)} items, fewer than one batch ({options.batch_size} per process x "
            f"{accelerator.num_processes} processes); lower the batch size or add data"
        )
    resume_from = _prepare_output_dir(options, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(options.seed, device_specific=True)

    if options.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    # The loader draws its workers' seeds from its own generator, so iterating it leaves the training's
    # random stream alone and a resumed run continues that stream exactly.
    dataloader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=options.num_workers,
        generator=torch.Generator().manual_seed(options.seed),
        persistent_workers=options.num_workers > 0,
    )
    ema = EMAModel(
        model.parameters(),
        decay=options.ema_decay,
        min_decay=0.0,
        use_ema_warmup=options.ema_warmup,
        inv_gamma=options.ema_inv_gamma,
        power=options.ema_power,
        foreach=True,
    )
    prepared_model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)

    global_step = 0
    if resume_from is not None:
        state = _training_state(resume_from)
        trained_for = _trained_prediction_type(state)
        if trained_for != options.prediction_type:
            raise ValueError(
                f"{resume_from} was trained with prediction_type {trained_for!r}, not {options.prediction_type!r}; "
                "resume it with the same target"
            )
        global_step = state["step"]
        accelerator.load_state(str(resume_from))
        ema.to(accelerator.device)  # the EMA's state loads onto the CPU
        accelerator.print(f"resumed from {resume_from} at step {global_step}")

    def write_pipeline():
        # Initialising the copy draws random weights: keep that out of the training's random stream.
        with torch.random.fork_rng(devices=[]):
            averaged = type(model).from_config(model.config)
        ema.copy_to(averaged.parameters())
        path = options.output_dir / PIPELINE
        if is_coupled:
            write_coupled_pipeline(averaged, path, frame_rate=frame_rate, sample_rate=sample_rate,
                                   prediction_type=options.prediction_type, force=True)
        else:
            write_sr_pipeline(averaged, path, prediction_type=options.prediction_type, force=True)

    def save_checkpoint() -> Path:
        folder = options.output_dir / CHECKPOINTS
        final, temporary = folder / f"checkpoint-{global_step}", folder / f".checkpoint-{global_step}.partial"
        if accelerator.is_main_process:
            write_pipeline()
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            model.save_config(temporary / _MODEL_CONFIG)
            state = {"step": global_step, "model_class": type(model).__name__,
                     "frame_rate": frame_rate, "sample_rate": sample_rate, "options": _jsonable(asdict(options))}
            (temporary / _STATE_FILE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            _prune_checkpoints(folder, options.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        return final

    if options.report_to != "none":
        accelerator.init_trackers("mmdiffusion", config=_jsonable(asdict(options), scalars_only=True))

    updates_per_epoch = math.ceil(len(dataloader) / options.gradient_accumulation_steps)
    epoch = global_step // updates_per_epoch
    batches_to_skip = (global_step % updates_per_epoch) * options.gradient_accumulation_steps
    progress = tqdm(total=options.max_steps, initial=global_step, unit="step",
                    disable=not (options.progress_bar and accelerator.is_local_main_process))
    final_loss, checkpoint = None, None
    micro_losses = []
    started, start_step = time.perf_counter(), global_step
    while global_step < options.max_steps:
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, batches_to_skip) if batches_to_skip else dataloader
        batches_to_skip = 0
        for batch in batches:
            with accelerator.accumulate(prepared_model):
                loss, terms = loss_function(prepared_model, batch)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            ema.step(model.parameters())
            global_step += 1
            final_loss = accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean").item()
            micro_losses = []
            progress.update(1)
            progress.set_postfix(loss=f"{final_loss:.4f}")
            accelerator.log({"loss": final_loss, "ema_decay": ema.cur_decay_value or 0.0, **terms}, step=global_step)
            if global_step % options.checkpointing_steps == 0 or global_step == options.max_steps:
                checkpoint = save_checkpoint()
            if global_step >= options.max_steps:
                break
        epoch += 1
    progress.close()
    elapsed = time.perf_counter() - started
    if checkpoint is None:  # resumed at or past max_steps: refresh the pipeline folder only
        if accelerator.is_main_process:
            write_pipeline()
        accelerator.wait_for_everyone()
    accelerator.end_training()
    steps_run = global_step - start_step
    return TrainingResult(
        global_step=global_step,
        pipeline_dir=options.output_dir / PIPELINE,
        checkpoint_dir=checkpoint,
        final_loss=final_loss,
        seconds_per_step=elapsed / steps_run if steps_run else None,
        resumed_from=resume_from,
    )


def _prune_checkpoints(folder: Path, limit: Optional[int]):
    if limit is None:
        return
    steps = sorted((int(match.group(1)), entry) for entry in folder.iterdir()
                   if (match := _CHECKPOINT_NAME.match(entry.name)))
    for _, entry in steps[:-limit]:
        shutil.rmtree(entry, ignore_errors=True)


def _jsonable(values: Dict, scalars_only: bool = False) -> Dict:
    converted = {}
    for key, value in values.items():
        if isinstance(value, Path):
            value = str(value)
        if value is None and scalars_only:
            continue
        converted[key] = value
    return converted

