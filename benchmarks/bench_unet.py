"""Speed and memory of CoupledUNet, alone or against the official MultimodalUNet.

    python benchmarks/bench_unet.py --config small
    python benchmarks/bench_unet.py --config paper --official-repo /path/to/MM-Diffusion --runs 3
    python benchmarks/bench_unet.py --config small train32 --train --official-repo /path/to/MM-Diffusion
    python benchmarks/bench_unet.py --config small --variants ours ours:bfloat16 ours:compiled

A variant is ``ours`` (float32), ``ours:<dtype>`` (weights and activations in that dtype; GroupNorm
statistics stay float32), ``ours:autocast-<dtype>`` (float32 weights under ``torch.autocast``), with
``:compiled`` added for ``CoupledUNet.compile()``. ``--official-repo`` (a checkout of
github.com/researchmm/MM-Diffusion, never part of this package) adds ``official``: the official
model is built with random values in every parameter, its weights are converted with this package's
converter, and the outputs of every variant are compared with its outputs on the same inputs and
window shifts. Timings are medians of ``--runs`` calls after ``--warmup`` calls, the variants called
in turn (rotating the order) so that machine load drifts hit them alike; ratios are taken within the
same run. Memory is measured in a fresh process per variant: "above loaded" is the peak resident
memory during the first call minus what the process held with the model loaded (activations,
workspace, caches), "process peak" the process's highest resident memory overall.

On a CPU shared with other work use ``--threads 1`` or ``--omp-wait-policy passive``: with the default
OpenMP policy every parallel region waits for a thread that the other work has descheduled, and both
models run 10-20x slower than with one thread.
"""

import argparse
import contextlib
import gc
import os
import random
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    child_main,
    format_mib,
    load_average,
    median,
    peak_resident_bytes,
    randomize,
    reset_peak,
    resident_bytes,
    run_child,
    time_call,
)

# Model configurations as official sampling-script flags (the converter maps them onto CoupledUNet).
CONFIGS = {
    # The released Landscape / AIST++ architecture (133.7 M parameters).
    "paper": dict(
        video_size=[16, 3, 64, 64], audio_size=[1, 25600], num_channels=128, num_res_blocks=2,
        channel_mult=[1, 2, 3, 4], num_heads=4, num_head_channels=64, cross_attention_resolutions=[2, 4, 8],
        cross_attention_windows=[1, 4, 8], video_attention_resolutions=[2, 4, 8],
    ),
    # 1.7 M parameters: 16 frames of 32x32, 6,400 audio samples.
    "small": dict(
        video_size=[16, 3, 32, 32], audio_size=[1, 6400], num_channels=32, num_res_blocks=1,
        channel_mult=[1, 2, 2], num_heads=4, num_head_channels=-1, cross_attention_resolutions=[2, 4],
        cross_attention_windows=[1, 4], video_attention_resolutions=[2, 4],
    ),
    # The shipped default model's training configuration (16 frames of 16x16, 0.8 s at 8 kHz, dropout 0.1).
    "shipped": dict(
        video_size=[16, 3, 16, 16], audio_size=[1, 12800], num_channels=32, num_res_blocks=1,
        channel_mult=[1, 2, 2], num_heads=4, num_head_channels=32, cross_attention_resolutions=[2, 4],
        cross_attention_windows=[1, 4], video_attention_resolutions=[2, 4], dropout=0.1,
    ),
    # Small training configurations: 0.8 s at 8 kHz, 16x16 and 32x32 frames.
    "train16": dict(
        video_size=[16, 3, 16, 16], audio_size=[1, 12800], num_channels=64, num_res_blocks=2,
        channel_mult=[1, 2, 3, 4], num_heads=4, num_head_channels=32, cross_attention_resolutions=[2, 4],
        cross_attention_windows=[1, 4], video_attention_resolutions=[2, 4],
    ),
    "train32": dict(
        video_size=[16, 3, 32, 32], audio_size=[1, 12800], num_channels=64, num_res_blocks=2,
        channel_mult=[1, 2, 2], num_heads=4, num_head_channels=32, cross_attention_resolutions=[2, 4],
        cross_attention_windows=[1, 4], video_attention_resolutions=[2, 4],
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def official_flags(config: str) -> dict:
    from mmdiffusion.convert_weights import COUPLED_MODEL_FLAGS, _official_defaults

    defaults = _official_defaults(COUPLED_MODEL_FLAGS)
    return {**defaults, "use_scale_shift_norm": True, "resblock_updown": True, "audio_attention_resolutions": [-1],
            **CONFIGS[config]}


# ----------------------------------------------------------------------------------------------------
# Models


def build_official(repo: str, flags: dict) -> torch.nn.Module:
    """The official MultimodalUNet through its own `create_model`."""
    sys.path.insert(0, str(Path(repo).resolve()))
    # The official package imports MPI and blobfile for distributed training only; the model needs neither.
    sys.modules.setdefault("mm_diffusion.dist_util", types.ModuleType("mm_diffusion.dist_util"))
    from mm_diffusion.multimodal_script_util import create_model

    def joined(values):
        return ",".join(str(int(v)) for v in values)

    return create_model(
        video_size=list(flags["video_size"]),
        audio_size=list(flags["audio_size"]),
        num_channels=flags["num_channels"],
        num_res_blocks=flags["num_res_blocks"],
        channel_mult=joined(flags["channel_mult"]),
        learn_sigma=flags["learn_sigma"],
        cross_attention_resolutions=joined(flags["cross_attention_resolutions"]),
        video_attention_resolutions=joined(flags["video_attention_resolutions"]),
        audio_attention_resolutions=joined(flags["audio_attention_resolutions"]),
        cross_attention_windows=joined(flags["cross_attention_windows"]),
        cross_attention_shift=flags["cross_attention_shift"],
        num_heads=flags["num_heads"],
        num_head_channels=flags["num_head_channels"],
        use_scale_shift_norm=flags["use_scale_shift_norm"],
        dropout=flags["dropout"],
        resblock_updown=flags["resblock_updown"],
    )


def build_ours(flags: dict, official_state=None) -> torch.nn.Module:
    from mmdiffusion.convert_weights import build_coupled_unet, convert_coupled, coupled_flags

    if official_state is None:
        model = build_coupled_unet(flags)
        randomize(model, 0)
        return model
    return convert_coupled(official_state, coupled_flags(flags, official_state))


def prepare_variant(model: torch.nn.Module, variant: str):
    """The model and the call context of a variant of ours."""
    options = variant.split(":")[1:]
    context = contextlib.nullcontext
    for option in options:
        if option.startswith("autocast-"):
            dtype = DTYPES[option[len("autocast-"):]]
            context = lambda dtype=dtype: torch.autocast("cpu", dtype=dtype)  # noqa: E731
        elif option in DTYPES:
            model = model.to(DTYPES[option])
        elif option != "compiled":
            raise ValueError(f"unknown variant option {option!r} in {variant!r}")
    if "compiled" in options:
        model.compile()
    return model, context


# ----------------------------------------------------------------------------------------------------
# One call of a model: forward, or forward + backward of a plain MSE loss


def make_inputs(flags: dict, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, *flags["video_size"], generator=generator)
    audio = torch.randn(batch, *flags["audio_size"], generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    return video, audio, timesteps


def shifted_windows(flags: dict):
    windows = flags["cross_attention_windows"]
    factors = [f for f in flags["cross_attention_resolutions"] if f > 0]
    num_levels = len(flags["channel_mult"])
    encoder = [windows[factors.index(2**level)] for level in range(num_levels) if 2**level in factors
               for _ in range(flags["num_res_blocks"])]
    decoder = [windows[factors.index(2**level)] for level in reversed(range(num_levels)) if 2**level in factors
               for _ in range(flags["num_res_blocks"] + 1)]
    return encoder + decoder if flags["cross_attention_shift"] else []


def draw_shifts(flags: dict, batch: int, seed: int) -> torch.Tensor:
    """The shifts the official model draws with Python's `random` after `random.seed(seed)`, per block in
    call order (encoder, then decoder; the middle block is never shifted)."""
    random.seed(seed)
    frames = flags["video_size"][0]
    row = [random.randint(0, frames - window) for window in shifted_windows(flags)]
    return torch.tensor([row] * batch, dtype=torch.long)


def call(name, model, context, inputs, shifts, train: bool):
    video, audio, timesteps = inputs
    with context(), torch.set_grad_enabled(train):
        if name == "official":
            video_out, audio_out = model(video, audio, timesteps)
        else:
            video_out, audio_out = model(video, audio, timesteps, window_shift=shifts, return_dict=False)
        if train:
            loss = video_out.float().square().mean() + audio_out.float().square().mean()
            loss.backward()
    return video_out.detach().float(), audio_out.detach().float()


def disable_official_shifts(model):
    """Turn the official random window shifts off; returns a function that restores them."""
    blocks = [block for block in model.modules() if type(block).__name__ == "CrossAttentionBlock"]
    saved = [block.window_shift for block in blocks]
    for block in blocks:
        block.window_shift = False

    def restore():
        for block, value in zip(blocks, saved):
            block.window_shift = value

    return restore


def gradients(name, model, official_state):
    """Gradients by CoupledUNet parameter name."""
    if name != "official":
        return {k: p.grad.float() for k, p in model.named_parameters()}
    from mmdiffusion.convert_weights import coupled_key

    return {coupled_key(official_state, key): p.grad.float() for key, p in model.named_parameters()}


# ----------------------------------------------------------------------------------------------------
# Children


def speed_child(task: dict) -> dict:
    flags = official_flags(task["config"])
    train = task["train"]
    models = {}
    official_state = None
    if task["official_repo"]:
        official = build_official(task["official_repo"], flags)
        randomize(official, 0)
        official_state = official.state_dict()
        models["official"] = (official, None)
    base = build_ours(flags, official_state)
    for variant in task["variants"]:
        if variant == "official":
            continue
        copy = build_ours(flags, official_state) if variant != "ours" else base
        models[variant] = prepare_variant(copy, variant)
    for model, _ in models.values():
        model.train(train)
    contexts = {name: context or contextlib.nullcontext for name, (_, context) in models.items()}
    parameters = sum(p.numel() for p in base.parameters())

    batch = task["batch"]
    inputs = make_inputs(flags, batch)
    frames = flags["video_size"][0]

    # Agreement on the same inputs and shifts. The official training path recomputes its attention blocks
    # in the backward pass and draws a new random shift there, so gradients are compared without shifts.
    reference_name = "official" if "official" in models else "ours"
    check_seed = 1234
    results = {}
    for name, (model, _) in models.items():
        shifts = None if train else draw_shifts(flags, batch, check_seed)
        restore_shifts = disable_official_shifts(model) if train else (lambda: None)
        for dropout in model.modules():  # dropout masks cannot agree between two models
            if isinstance(dropout, torch.nn.Dropout):
                dropout.eval()
        random.seed(check_seed)
        model.zero_grad(set_to_none=True)
        results[name] = call(name, model, contexts[name], inputs, shifts, train)
        if train:
            results[name] += (gradients(name, model, official_state),)
        restore_shifts()
        model.train(train)
    reference = results[reference_name]
    errors = {}
    for name, outputs in results.items():
        if name == reference_name:
            continue
        error = {
            "video": (outputs[0] - reference[0]).abs().max().item(),
            "audio": (outputs[1] - reference[1]).abs().max().item(),
            "scale": max(reference[0].abs().max().item(), reference[1].abs().max().item()),
        }
        if train:
            # Relative to the largest gradient: some biases (before a GroupNorm of one channel per group) have
            # exactly zero gradient in theory, so their own scale is rounding noise.
            largest = max(g.abs().max().item() for g in reference[2].values())
            error["grad"] = max((outputs[2][k].flatten() - g.flatten()).abs().max().item()
                                for k, g in reference[2].items()) / largest
        errors[name] = error
    del results, reference

    times = {name: [] for name in models}
    names = list(models)
    windows = shifted_windows(flags)
    for iteration in range(task["warmup"] + task["runs"]):
        order = names[iteration % len(names):] + names[: iteration % len(names)]
        for name in order:
            model, _ = models[name]
            # Fresh random shifts per call, drawn outside the timed call (as the pipeline does).
            shifts = torch.stack([torch.randint(0, frames - w + 1, (batch,)) for w in windows], 1) if windows else None
            model.zero_grad(set_to_none=True)
            elapsed = time_call(lambda: call(name, model, contexts[name], inputs, shifts, train))
            if iteration >= task["warmup"]:
                times[name].append(elapsed)
    return {"parameters": parameters, "times": times, "errors": errors, "reference": reference_name,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def memory_child(task: dict) -> dict:
    flags = official_flags(task["config"])
    train = task["train"]
    variant = task["variant"]
    if variant == "official":
        model = build_official(task["official_repo"], flags)
        randomize(model, 0)
        context = None
    else:
        model, context = prepare_variant(build_ours(flags), variant)
    model.train(train)
    context = context or contextlib.nullcontext
    inputs = make_inputs(flags, task["batch"])
    shifts = draw_shifts(flags, task["batch"], 0) if shifted_windows(flags) else None
    gc.collect()
    loaded = resident_bytes()
    peak_before = peak_resident_bytes()
    if not reset_peak():
        raise RuntimeError("cannot reset the peak resident size (/proc/self/clear_refs): memory not measured")
    call(variant, model, context, inputs, shifts, train)
    peak_call = peak_resident_bytes()
    return {"loaded": loaded, "above_loaded": peak_call - loaded, "process_peak": max(peak_before, peak_call)}


# ----------------------------------------------------------------------------------------------------
# Report


def report(config: str, args, variants) -> None:
    batch = args.batch or (8 if args.train else 1)
    kind = "forward + backward" if args.train else "forward"
    common = dict(config=config, train=args.train, batch=batch, threads=args.threads, official_repo=args.official_repo)
    print(f"== {config}: {kind}, batch {batch}, load average before {load_average()}", flush=True)
    if not args.no_speed:
        speed = run_child(__file__, dict(common, variants=variants, runs=args.runs, warmup=args.warmup),
                          omp_wait_policy=args.omp_wait_policy)
        print(f"   {speed['parameters']:,} parameters, {speed['threads']} threads (OMP_WAIT_POLICY "
              f"{speed['omp_wait_policy']}), median of {args.runs} runs after {args.warmup} warm-up")
        medians = {name: median(values) for name, values in speed["times"].items()}
        reference = speed["reference"]
        for name, seconds in medians.items():
            line = f"   {name:<28} {seconds:8.3f} s"
            if name != reference:
                line += f"   x{seconds / medians[reference]:.3f} of {reference}"
                error = speed["errors"][name]
                line += (f"   max |diff| video {error['video']:.2e} audio {error['audio']:.2e}"
                         f" (outputs up to {error['scale']:.1f})")
                if "grad" in error:
                    line += f", gradients {error['grad']:.1e} of the largest"
            line += "   runs " + " ".join(f"{t:.3f}" for t in speed["times"][name])
            print(line, flush=True)
    if not args.no_memory:
        memory = {}
        for variant in variants:
            memory[variant] = run_child(__file__, dict(common, variant=variant), omp_wait_policy=args.omp_wait_policy)
        reference = "official" if "official" in memory else variants[0]
        for name, result in memory.items():
            line = (f"   memory {name:<21} above loaded {format_mib(result['above_loaded']):>11}   "
                    f"process peak {format_mib(result['process_peak']):>11}   "
                    f"loaded {format_mib(result['loaded']):>11}")
            if name != reference:
                line += (f"   x{result['above_loaded'] / memory[reference]['above_loaded']:.3f} above loaded, "
                         f"x{result['process_peak'] / memory[reference]['process_peak']:.3f} peak of {reference}")
            print(line, flush=True)
    print(f"   load average after {load_average()}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["small"], choices=sorted(CONFIGS))
    parser.add_argument("--official-repo", help="checkout of the official MM-Diffusion code (holds mm_diffusion/)")
    parser.add_argument("--variants", nargs="+", default=["ours"], help="ours, ours:bfloat16, ours:compiled, ...")
    parser.add_argument("--train", action="store_true", help="time forward + backward instead of the forward")
    parser.add_argument("--batch", type=int, help="batch size (default 1, or 8 with --train)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--omp-wait-policy", choices=["active", "passive"],
                        help="OpenMP wait policy of the measuring processes (default: inherited); on a CPU shared "
                             "with other work, passive keeps idle threads from spinning through the other work's "
                             "time slices")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.official_repo and not (Path(args.official_repo) / "mm_diffusion" / "multimodal_unet.py").is_file():
        parser.error(f"--official-repo {args.official_repo} does not hold mm_diffusion/multimodal_unet.py")
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    # Float32 "ours" always runs: it is the reference of the other variants when there is no official model.
    variants = (["official"] if args.official_repo else []) + ["ours"]
    variants += [v for v in args.variants if v not in variants]
    for config in args.config:
        report(config, args, variants)
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(lambda task: speed_child(task) if "variants" in task else memory_child(task))
    else:
        sys.exit(main())
