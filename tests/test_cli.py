"""`mmdiffusion generate` end to end on the converted fixture model: real mp4 files decoded with PyAV."""

import subprocess
import sys

import av
import numpy as np
import pytest

from mmdiffusion import export_to_wav
from mmdiffusion.cli import main


def _probe(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video))
        return frames, float(video.average_rate), audio.rate, float(container.duration / av.time_base)


def test_generate_one_mp4(converted_coupled_a, tmp_path, capsys):
    out = tmp_path / "sample.mp4"
    assert main(["generate", "--model", str(converted_coupled_a), "-o", str(out), "--steps", "2", "--device", "cpu"]) == 0
    frames, fps, sample_rate, duration = _probe(out)
    assert (frames, fps, sample_rate) == (8, 10.0, 16000)
    assert duration == pytest.approx(0.8, abs=0.05)  # 8 frames at 10 fps
    assert "wrote" in capsys.readouterr().out


def test_generate_a_folder_of_samples_and_never_overwrite(converted_coupled_a, tmp_path, capsys):
    out = tmp_path / "samples"
    args = ["generate", "--model", str(converted_coupled_a), "-o", str(out), "--steps", "2", "--num-samples", "3",
            "--batch-size", "2", "--device", "cpu", "--scheduler", "ddim"]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"sample_{i:03d}.{ext}" for i in range(3) for ext in ("mp4", "wav")]
    before = (out / "sample_001.wav").read_bytes()
    assert main(args) != 0
    assert "already exists" in capsys.readouterr().err
    assert (out / "sample_001.wav").read_bytes() == before
    assert main(args + ["--force"]) == 0


def test_generate_video_for_an_audio_file_keeps_that_audio(converted_coupled_a, tmp_path):
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2048) / 16000)).astype(np.float32)[None]
    wav = export_to_wav(tone, tmp_path / "tone.wav", 16000)
    out = tmp_path / "a2v"
    assert main(["generate", "--model", str(converted_coupled_a), "--audio", wav, "-o", str(out), "--steps", "2",
                 "--device", "cpu", "--condition-method", "guidance", "--guidance-loss", "clean",
                 "--guidance-scale", "300"]) == 0
    with av.open(str(out / "sample_000.wav")) as container:
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert np.abs(decoded[:2048] / 32767 - tone[0]).max() < 1e-3


def test_generate_errors(converted_coupled_a, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "-o", str(tmp_path / "x.mp4")]) != 0
    assert "not a pipeline folder" in capsys.readouterr().err
    assert main(["generate", "--model", str(converted_coupled_a), "-o", str(tmp_path / "x.mp4"),
                 "--num-samples", "2"]) != 0
    assert "give a folder" in capsys.readouterr().err
    assert main(["generate", "--model", str(converted_coupled_a), "--audio", str(tmp_path / "missing.wav")]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "mmdiffusion", "generate", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--scheduler" in result.stdout


def test_combine_joins_the_two_stages_into_one_folder(converted_coupled_a, converted_sr_a, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from mmdiffusion import MMDiffusionPipeline, MMDiffusionSRPipeline

    out = tmp_path / "combined"
    assert main(["combine", str(converted_coupled_a), str(converted_sr_a), "-o", str(out), "--dtype", "float16"]) == 0
    pipe = MMDiffusionPipeline.from_pretrained(out)
    assert pipe.sr_unet is not None and pipe.config.sample_rate == MMDiffusionPipeline.from_pretrained(
        converted_coupled_a).config.sample_rate
    assert pipe.sr_scheduler.config == MMDiffusionSRPipeline.from_pretrained(converted_sr_a).sr_scheduler.config
    source = load_file(converted_sr_a / "sr_unet" / "diffusion_pytorch_model.safetensors")
    saved = load_file(out / "sr_unet" / "diffusion_pytorch_model.safetensors")
    assert all(saved[key].dtype == torch.float16 and torch.equal(saved[key], source[key].half()) for key in source)
    unet = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(tensor.dtype == torch.float16 for tensor in unet.values())
    assert not any("_name_or_path" in path.read_text() for path in out.rglob("*.json"))  # no local paths

    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["combine", str(converted_coupled_a), str(converted_sr_a), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert main(["combine", str(converted_coupled_a), str(converted_coupled_a), "-o", str(tmp_path / "x")]) == 2
    assert "has no sr_unet/" in capsys.readouterr().err and not (tmp_path / "x").exists()
