"""The ComfyUI nodes, without ComfyUI: definitions, types and shapes with the fixture model, bad inputs,
progress and Stop (through stand-ins for ComfyUI's modules)."""

import inspect
import json
import math
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

import mmdiffusion
from mmdiffusion import media
from mmdiffusion.nodes import comfy_bridge as bridge
from mmdiffusion.nodes import mm_diffusion_nodes as nodes

# Types the nodes may use: ComfyUI's core types, widgets, and this pack's pipeline.
KNOWN_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "IMAGE", "AUDIO", nodes.PIPELINE_TYPE}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory, converted_coupled_a, converted_sr_a):
    """A models/mm_diffusion folder: the fixture joint model alone, with the SR fixture, and the SR model alone."""
    from mmdiffusion import MMDiffusionPipeline, MMDiffusionSRPipeline

    root = tmp_path_factory.mktemp("mm_diffusion")
    os.symlink(converted_coupled_a, root / "joint")
    os.symlink(converted_sr_a, root / "sr_only")
    joint = MMDiffusionPipeline.from_pretrained(converted_coupled_a)
    sr = MMDiffusionSRPipeline.from_pretrained(converted_sr_a)
    combined = MMDiffusionPipeline(
        unet=joint.unet, scheduler=joint.scheduler, sr_unet=sr.sr_unet, sr_scheduler=sr.sr_scheduler,
        frame_rate=joint.config.frame_rate, sample_rate=joint.config.sample_rate,
    )
    combined.save_pretrained(root / "collection" / "joint_sr")
    return root


@pytest.fixture
def search_paths(monkeypatch, models_root):
    monkeypatch.setattr(bridge, "model_search_paths", lambda: [str(models_root)])
    return models_root


def load(name, **kwargs):
    (handle,) = nodes.MMDiffusionLoader().load(name, **kwargs)
    handle.pipeline.set_progress_bar_config(disable=True)
    return handle


@pytest.fixture
def joint(search_paths):
    return load("joint")


@pytest.fixture
def joint_sr(search_paths):
    return load("collection/joint_sr")


@pytest.fixture
def sr_only(search_paths):
    return load("sr_only")


def assert_image(image, frames, size):
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.device.type == "cpu"
    assert tuple(image.shape) == (frames, size, size, 3)
    assert image.min() >= 0 and image.max() <= 1


def assert_audio(audio, channels, samples, sample_rate):
    assert isinstance(audio, dict) and set(audio) == {"waveform", "sample_rate"}
    waveform = audio["waveform"]
    assert isinstance(waveform, torch.Tensor) and waveform.dtype == torch.float32 and waveform.device.type == "cpu"
    assert tuple(waveform.shape) == (1, channels, samples)
    assert waveform.abs().max() <= 1
    assert type(audio["sample_rate"]) is int and audio["sample_rate"] == sample_rate


def sample(handle, **overrides):
    arguments = dict(seed=0, steps=1, scheduler="ddim", window_shift=True, super_resolution=False, sr_steps=1)
    arguments.update(overrides)
    return nodes.MMDiffusionSample().sample(handle, **arguments)


# ------------------------------------------------------------------------------------------------------------
# Definitions and imports


def test_import_needs_no_comfyui_and_stays_light():
    code = (
        "import sys, mmdiffusion\n"
        "assert 'torch' not in sys.modules, 'import mmdiffusion imported torch'\n"
        "mappings = mmdiffusion.NODE_CLASS_MAPPINGS\n"
        "assert set(mappings) == set(mmdiffusion.NODE_DISPLAY_NAME_MAPPINGS)\n"
        "for cls in mappings.values():\n"
        "    cls.INPUT_TYPES()\n"
        "comfyui = ('comfy', 'comfy_api', 'folder_paths', 'nodes')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in comfyui)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_node_definitions_are_valid_comfyui_v1_nodes():
    assert set(mmdiffusion.NODE_CLASS_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("MMDiffusion") and node_id == cls.__name__
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("MM-Diffusion ")
        assert cls.CATEGORY.split("/")[0] == "MM-Diffusion"
        assert cls.DESCRIPTION
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        assert set(cls.RETURN_TYPES) <= KNOWN_TYPES

        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional"}
        inputs = {**spec["required"], **spec.get("optional", {})}
        parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert list(inputs) == [name for name in parameters if name != "self"], node_id
        for name, (kind, options) in inputs.items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and all(isinstance(choice, str) for choice in kind)
                assert options.get("default", kind[0]) in kind
                continue
            assert kind in KNOWN_TYPES, f"{node_id}.{name}: {kind}"
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], f"{node_id}.{name}"
            if name == "seed":
                assert kind == "INT" and options["control_after_generate"] is True
                assert options["max"] == 2**64 - 1


def test_sampling_nodes_offer_the_named_schedulers():
    from mmdiffusion.schedulers.scheduler_choices import SCHEDULER_CHOICES

    for cls in (nodes.MMDiffusionSample, nodes.MMDiffusionAudioToVideo, nodes.MMDiffusionVideoToAudio):
        choices, options = cls.INPUT_TYPES()["required"]["scheduler"]
        assert choices == list(SCHEDULER_CHOICES) and options["default"] == "dpm-solver"


# ------------------------------------------------------------------------------------------------------------
# Loader


def test_loader_lists_pipeline_folders_and_the_default(tmp_path, monkeypatch):
    for folder in ("plain", "org/nested", "plain2/unet", "a/b/c/too_deep"):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ("plain", "org/nested", "a/b/c/too_deep"):
        (tmp_path / folder / "model_index.json").write_text("{}")
    (tmp_path / "plain" / "unet" / "model_index.json").parent.mkdir()
    (tmp_path / "plain" / "unet" / "model_index.json").write_text("{}")  # inside a pipeline: not listed
    (tmp_path / "plain2" / "unet" / "config.json").write_text("{}")  # no model_index.json: not listed
    monkeypatch.setattr(bridge, "model_search_paths", lambda: [str(tmp_path), str(tmp_path / "missing")])
    assert nodes.list_models() == [nodes.DEFAULT_MODEL, "org/nested", "plain"]
    assert nodes.MMDiffusionLoader.INPUT_TYPES()["required"]["model"][0] == nodes.list_models()


def test_loader_without_comfyui_lists_only_the_default():
    assert bridge.model_search_paths() == []
    assert nodes.list_models() == [nodes.DEFAULT_MODEL]


def test_loader_loads_joint_and_sr_pipelines(search_paths):
    from mmdiffusion import MMDiffusionPipeline, MMDiffusionSRPipeline

    joint = load("joint", device="cpu", dtype="bfloat16")
    assert isinstance(joint, bridge.ManagedPipeline) and joint.name == "joint"
    assert type(joint.pipeline) is MMDiffusionPipeline and joint.pipeline.unet.dtype == torch.bfloat16
    assert joint.device == joint.offload_device == torch.device("cpu")
    assert type(load("sr_only").pipeline) is MMDiffusionSRPipeline
    assert load("collection/joint_sr").pipeline.sr_unet is not None


def test_loader_refuses_unknown_models_and_options(search_paths, tmp_path, monkeypatch):
    loader = nodes.MMDiffusionLoader()
    with pytest.raises(FileNotFoundError, match="'nothing' is not a pipeline folder"):
        loader.load("nothing")
    with pytest.raises(ValueError, match="must name a folder"):
        loader.load("../joint")
    with pytest.raises(ValueError, match="dtype must be one of"):
        loader.load("joint", dtype="float64")
    with pytest.raises(ValueError, match="device must be"):
        loader.load("joint", device="cuda:7")
    monkeypatch.setattr("mmdiffusion.cli.PRETRAINED", tmp_path / "pretrained")
    with pytest.raises(FileNotFoundError, match="the default model is missing"):
        loader.load(nodes.DEFAULT_MODEL)
    (search_paths / "bad").mkdir(exist_ok=True)
    (search_paths / "bad" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="names pipeline 'StableDiffusionPipeline'"):
        loader.load("bad")


def test_loader_loads_the_default_model_from_the_package(search_paths, monkeypatch):
    monkeypatch.setattr("mmdiffusion.cli.PRETRAINED", search_paths / "joint")
    handle = load(nodes.DEFAULT_MODEL)
    assert handle.name == nodes.DEFAULT_MODEL and handle.pipeline.unet is not None


# ------------------------------------------------------------------------------------------------------------
# Sampling nodes: ComfyUI types and shapes


def test_sample_returns_comfyui_frames_audio_and_fps(joint):
    frames, audio, fps = sample(joint, seed=5, batch_size=2)
    # Fixture model: 8 frames of 16x16, mono audio of 2048 samples at 16 kHz, 10 fps; two samples in a row.
    assert_image(frames, 16, 16)
    assert_audio(audio, 1, 2 * 2048, 16000)
    assert type(fps) is float and fps == 10.0

    # Sample i of a batch is the sample of seed + i, and it sits at position i of the frames and of the audio.
    second_frames, second_audio, _ = sample(joint, seed=6, batch_size=1)
    torch.testing.assert_close(frames[8:], second_frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(audio["waveform"][..., 2048:], second_audio["waveform"], atol=1e-5, rtol=0)
    assert not torch.allclose(frames[:8], second_frames)


def test_sample_with_super_resolution_matches_the_pipeline(joint_sr):
    # The node runs the SR stage as its own pipeline call (so that its steps report progress and honour Stop);
    # the result is the joint pipeline's own super_resolution=True sample.
    with pytest.warns(UserWarning, match="frames are 16x16 but this super-resolution model takes 8x8"):
        frames, audio, fps = sample(joint_sr, seed=3, steps=1, super_resolution=True, sr_steps=2)
    assert_image(frames, 8, 32)  # 16x16 base frames, resized to the SR input (8) and upscaled to 32
    assert_audio(audio, 1, 2048, 16000)

    from mmdiffusion.schedulers.scheduler_choices import make_scheduler

    pipeline = joint_sr.pipeline
    original = pipeline.scheduler
    pipeline.scheduler = make_scheduler("ddim", original.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pipeline(
            num_inference_steps=1, generator=nodes.seed_generators(3, 1), super_resolution=True,
            sr_num_inference_steps=2, output_type="pt",
        )
    pipeline.scheduler = original
    torch.testing.assert_close(frames, reference.frames[0].permute(0, 2, 3, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(audio["waveform"], reference.audio, atol=1e-6, rtol=0)


def test_sample_leaves_the_loaders_pipeline_unchanged(joint):
    scheduler, config = joint.pipeline.scheduler, dict(joint.pipeline.config)
    sample(joint, scheduler="euler")
    assert joint.pipeline.scheduler is scheduler and dict(joint.pipeline.config) == config


def test_audio_to_video_fits_stereo_44k_audio_with_a_warning(joint):
    seconds = 0.2
    time = torch.arange(int(44100 * seconds)) / 44100
    stereo = torch.stack([torch.sin(2 * math.pi * 440 * time), 0.5 * torch.sin(2 * math.pi * 660 * time)])
    audio = {"waveform": stereo[None], "sample_rate": 44100}
    with pytest.warns(UserWarning, match=r"mixed to mono.*resampled to 16000 Hz"):
        frames, processed, fps = nodes.MMDiffusionAudioToVideo().generate(
            joint, audio, method="replacement", guidance_scale=3.0, seed=0, steps=1, scheduler="ddim",
            super_resolution=False, sr_steps=1,
        )
    assert_image(frames, 8, 16)
    assert_audio(processed, 1, 2048, 16000)
    assert fps == 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = media.load_audio(
            stereo, sample_rate=44100, target_sample_rate=16000, num_channels=1, num_samples=2048
        )
    torch.testing.assert_close(processed["waveform"][0], expected, atol=1e-6, rtol=0)


def test_audio_to_video_gives_one_video_per_clip(joint):
    clips = torch.rand(2, 1, 2048) * 2 - 1
    frames, processed, _ = nodes.MMDiffusionAudioToVideo().generate(
        joint, {"waveform": clips, "sample_rate": 16000}, method="replacement", guidance_scale=3.0, seed=0,
        steps=1, scheduler="ddim", super_resolution=False, sr_steps=1,
    )
    assert_image(frames, 16, 16)
    torch.testing.assert_close(processed["waveform"][0], torch.cat(list(clips), dim=-1), atol=1e-6, rtol=0)


def test_video_to_audio_with_guidance_under_comfyui_inference_mode(search_paths):
    # ComfyUI runs every node under torch.inference_mode(); guidance still needs gradients through the model.
    with torch.inference_mode():
        handle = load("joint")
        images = torch.rand(12, 15, 21, 3)  # odd sizes, 30 fps, more frames than the model takes
        with pytest.warns(UserWarning, match="resized"):
            audio, frames, fps = nodes.MMDiffusionVideoToAudio().generate(
                handle, images, fps=30.0, method="guidance", guidance_scale=300.0, seed=0, steps=2, scheduler="ddim",
                guidance_loss="clean", guidance_coefficient="paper",
            )
    assert_audio(audio, 1, 2048, 16000)
    assert_image(frames, 8, 16)  # the frames as the model saw them: 10 fps, 16x16, padded to 8 frames
    assert fps == 10.0
    assert torch.isfinite(audio["waveform"]).all()


def test_super_resolution_node_upscales_frames(sr_only, joint_sr):
    (upscaled,) = nodes.MMDiffusionSuperResolution().upscale(sr_only, torch.rand(3, 8, 8, 3), seed=0, steps=1)
    assert_image(upscaled, 3, 32)
    with pytest.warns(UserWarning, match="resizing them"):
        (upscaled,) = nodes.MMDiffusionSuperResolution().upscale(joint_sr, torch.rand(2, 9, 7, 3), seed=0, steps=1)
    assert_image(upscaled, 2, 32)


def test_spectrogram_shows_a_tone_at_its_frequency():
    sample_rate, n_fft = 16000, 256
    time = torch.arange(4000) / sample_rate
    tone = torch.sin(2 * math.pi * 2000 * time)[None, None]
    (image,) = nodes.MMDiffusionSpectrogram().draw({"waveform": tone, "sample_rate": sample_rate}, n_fft=n_fft)
    assert image.shape == (1, n_fft // 2 + 1, 4000 // (n_fft // 4) + 1, 3)
    assert image.min() >= 0 and image.max() <= 1
    brightest_row = image[0, :, :, 0].mean(1).argmax().item()
    assert n_fft // 2 - brightest_row == round(2000 / (sample_rate / n_fft))  # bin of 2 kHz, counted from the bottom
    (silence,) = nodes.MMDiffusionSpectrogram().draw({"waveform": torch.zeros(2, 1, 500), "sample_rate": 8000})
    assert silence.shape[0] == 2 and silence.max() == 0


# ------------------------------------------------------------------------------------------------------------
# Bad input: one clear error, before any sampling


def test_bad_inputs_raise_one_clear_error(joint, sr_only):
    a2v, v2a = nodes.MMDiffusionAudioToVideo(), nodes.MMDiffusionVideoToAudio()
    condition = dict(method="replacement", guidance_scale=3.0, seed=0, steps=1, scheduler="ddim")
    with pytest.raises(ValueError, match=r"audio holds no samples \(waveform shape \[1, 2, 0\]\)"):
        a2v.generate(joint, {"waveform": torch.zeros(1, 2, 0), "sample_rate": 16000}, **condition,
                     super_resolution=False, sr_steps=1)
    with pytest.raises(TypeError, match="audio must be a ComfyUI AUDIO value"):
        a2v.generate(joint, torch.zeros(1, 1, 100), **condition, super_resolution=False, sr_steps=1)
    with pytest.raises(ValueError, match="audio waveform must be a tensor \\[batch, channels, samples\\]"):
        a2v.generate(joint, {"waveform": torch.zeros(100), "sample_rate": 16000}, **condition,
                     super_resolution=False, sr_steps=1)
    with pytest.raises(ValueError, match="sample_rate must be a positive whole number"):
        a2v.generate(joint, {"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}, **condition,
                     super_resolution=False, sr_steps=1)
    with pytest.raises(ValueError, match=r"images holds no frames"):
        v2a.generate(joint, torch.zeros(0, 16, 16, 3), fps=10.0, **condition)
    with pytest.raises(ValueError, match=r"images must be a ComfyUI IMAGE \[frames, height, width, 3\]"):
        v2a.generate(joint, torch.zeros(4, 16, 16, 4), fps=10.0, **condition)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        v2a.generate(joint, torch.zeros(4, 16, 16, 3), fps=0.0, **condition)
    with pytest.raises(ValueError, match="has no super-resolution stage; turn it off"):
        sample(joint, super_resolution=True)
    with pytest.raises(ValueError, match="has no super-resolution stage"):
        nodes.MMDiffusionSuperResolution().upscale(joint, torch.rand(2, 8, 8, 3), seed=0, steps=1)
    with pytest.raises(ValueError, match="is a super-resolution model"):
        sample(sr_only)
    with pytest.raises(TypeError, match="must come from the MM-Diffusion Loader"):
        sample(joint.pipeline)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        sample(joint, scheduler="heun")


# ------------------------------------------------------------------------------------------------------------
# Under ComfyUI: progress, Stop and model management (through stand-ins for its modules)


class Interrupted(Exception):
    """Stands for comfy.model_management.InterruptProcessingException."""


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    state = types.SimpleNamespace(stop=False, progress=[], loads=[], patchers=[])

    class ProgressBar:
        def __init__(self, total):
            self.total, self.current = total, 0

        def update(self, value):
            self.current += value
            state.progress.append((self.current, self.total))

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            state.patchers.append(self)

    def load_models_gpu(models, force_full_load=False):
        state.loads.append((models, force_full_load))
        for patcher in models:
            patcher.model.to(patcher.load_device)

    def throw_exception_if_processing_interrupted():
        if state.stop:
            state.stop = False
            raise Interrupted()

    folder_registry = {"mm_diffusion": ([str(tmp_path / "extra")], set())}

    def add_model_folder_path(name, path, is_default=False):
        paths = folder_registry.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.append(path)

    modules = {
        "comfy": types.ModuleType("comfy"),
        "comfy.utils": types.SimpleNamespace(ProgressBar=ProgressBar),
        "comfy.model_patcher": types.SimpleNamespace(ModelPatcher=ModelPatcher),
        "comfy.model_management": types.SimpleNamespace(
            get_torch_device=lambda: torch.device("cpu"),
            unet_offload_device=lambda: torch.device("cpu"),
            load_models_gpu=load_models_gpu,
            throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
        ),
        "folder_paths": types.SimpleNamespace(
            models_dir=str(tmp_path / "models"),
            add_model_folder_path=add_model_folder_path,
            get_folder_paths=lambda name: list(folder_registry[name][0]),
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return state


def count_calls(module, on_call=None):
    calls = []

    def hook(*_):
        calls.append(1)
        if on_call is not None:
            on_call(len(calls))

    module.register_forward_hook(hook)
    return calls


def test_model_folder_registration_keeps_extra_model_paths(fake_comfy, tmp_path):
    # extra_model_paths.yaml's `mm_diffusion:` entry comes first (it is read before the pack loads).
    assert bridge.model_search_paths() == [str(tmp_path / "extra"), str(tmp_path / "models" / "mm_diffusion")]


@pytest.mark.filterwarnings("ignore:frames are 16x16")
def test_progress_reaches_every_step_and_comfyui_loads_the_model(fake_comfy, search_paths):
    handle = load("collection/joint_sr", device="default")
    (patcher,) = fake_comfy.patchers
    assert set(patcher.model) == {"unet", "sr_unet"}
    sample(handle, steps=2, super_resolution=True, sr_steps=2)
    assert fake_comfy.loads == [([patcher], True)]
    total = 2 + 2  # 8 frames: one SR chunk of up to 16 frames
    assert fake_comfy.progress == [(step, total) for step in range(1, total + 1)]


@pytest.mark.filterwarnings("ignore:frames are 16x16")
@pytest.mark.parametrize("stage", ["joint", "super-resolution"])
def test_stop_during_step_k_ends_sampling_at_step_k(fake_comfy, search_paths, stage):
    handle = load("collection/joint_sr")
    stop_at = 1  # Stop pressed while step 1 (0-based) of the stage runs
    steps, sr_steps = (3, 3) if stage == "joint" else (1, 3)

    def press_stop(call):
        if call == stop_at + 1:
            fake_comfy.stop = True

    watched = handle.pipeline.unet if stage == "joint" else handle.pipeline.sr_unet
    other = handle.pipeline.sr_unet if stage == "joint" else handle.pipeline.unet
    watched_calls, other_calls = count_calls(watched, press_stop), count_calls(other)
    with pytest.raises(Interrupted):
        sample(handle, steps=steps, super_resolution=True, sr_steps=sr_steps)
    assert len(watched_calls) == stop_at + 1
    if stage == "joint":
        assert other_calls == []
        assert fake_comfy.progress[-1][0] == stop_at + 1
    else:
        assert len(other_calls) == steps
        assert fake_comfy.progress[-1][0] == steps + stop_at + 1


def test_stop_before_sampling_runs_no_step(fake_comfy, joint):
    calls = count_calls(joint.pipeline.unet)
    fake_comfy.stop = True
    with pytest.raises(Interrupted):
        sample(joint)
    assert calls == []
