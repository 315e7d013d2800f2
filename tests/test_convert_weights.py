import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdiffusion.convert_weights import main as convert_main

from .conftest import COUPLED_A_FLAGS, REPO_ROOT, SR_A_FLAGS, fixture_path


def _convert(*args):
    return convert_main([str(a) for a in args])


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_converted_folder_holds_safetensors_only(converted_coupled_a):
    files = sorted(p.name for p in (converted_coupled_a / "unet").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((converted_coupled_a / "unet" / "config.json").read_text())
    assert config["_class_name"] == "CoupledUNet"
    assert config["cross_attention_head_dim"] == 16


def test_float16_halves_the_size(converted_coupled_a, tmp_path):
    out = tmp_path / "fp16"
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "-o", out, "--dtype", "float16", *COUPLED_A_FLAGS) == 0
    full = (converted_coupled_a / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    half = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert abs(half / full - 0.5) < 0.01


def test_safetensors_input_is_accepted(tmp_path, coupled_a_io):
    from safetensors.torch import save_file

    from mmdiffusion import CoupledUNet

    source = tmp_path / "coupled_a.safetensors"
    save_file(torch.load(fixture_path("coupled_a.pt"), weights_only=True), str(source))
    assert _convert("--checkpoint", source, "-o", tmp_path / "out", *COUPLED_A_FLAGS) == 0
    model = CoupledUNet.from_pretrained(tmp_path / "out", subfolder="unet")
    with torch.no_grad():
        out = model(coupled_a_io["video"], coupled_a_io["audio"], coupled_a_io["timesteps"])
    assert (out.video - coupled_a_io["video_out_noshift"]).abs().max() <= 1e-4


def test_omitted_flags_are_inferred_from_the_weights(tmp_path, coupled_a_io):
    """Only what the weights cannot show is needed: sizes, heads, windows."""
    from mmdiffusion import CoupledUNet

    flags = "--video_size 8,3,16,16 --audio_size 1,2048 --num_heads 4 --num_head_channels 16".split()
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "-o", tmp_path / "out", *flags) == 0
    model = CoupledUNet.from_pretrained(tmp_path / "out", subfolder="unet")
    with torch.no_grad():
        out = model(coupled_a_io["video"], coupled_a_io["audio"], coupled_a_io["timesteps"], window_shift=1)
    assert (out.audio - coupled_a_io["audio_out_shift1"]).abs().max() <= 1e-4


def _expect_error(capsys, out: Path, *args, match: str):
    assert _convert(*args, "-o", out) != 0
    message = capsys.readouterr().err
    assert message.startswith("error: ") and len(message.strip().splitlines()) == 1, message
    assert match in message, message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return message


def test_wrong_kind_of_checkpoint(capsys, tmp_path):
    _expect_error(
        capsys, tmp_path / "out", "--checkpoint", fixture_path("sr_a.pt"), *COUPLED_A_FLAGS,
        match="is a super-resolution checkpoint, expected a coupled",
    )


def test_flags_that_contradict_the_weights(capsys, tmp_path):
    flags = [f for f in COUPLED_A_FLAGS]
    flags[flags.index("--num_channels") + 1] = "64"
    message = _expect_error(capsys, tmp_path / "out", "--checkpoint", fixture_path("coupled_a.pt"), *flags,
                            match="has shape")
    assert "[32, 32]" in message and "[64, 64]" in message  # time_embed.0.weight, both shapes
    flags = list(COUPLED_A_FLAGS)
    flags[flags.index("--cross_attention_windows") + 1] = "1,2,4"
    _expect_error(capsys, tmp_path / "out", "--checkpoint", fixture_path("coupled_a.pt"), *flags,
                  match="middle_blocks.1.v_qkv.weight")


def test_paper_configuration_is_assumed_and_printed(capsys, tmp_path):
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "-o", tmp_path / "out") != 0
    captured = capsys.readouterr()
    assert "assuming the paper configuration" in captured.out
    assert "--num_channels 128" in captured.out
    assert not (tmp_path / "out").exists()


def test_non_plain_pickle_is_refused(capsys, tmp_path):
    bad = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, bad)
    _expect_error(capsys, tmp_path / "out", "--checkpoint", bad, match="weights_only=True")
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "step": 3}, wrapped)
    _expect_error(capsys, tmp_path / "out", "--checkpoint", wrapped, match="not a plain state dict")


def test_missing_and_corrupt_files(capsys, tmp_path):
    _expect_error(capsys, tmp_path / "out", "--checkpoint", tmp_path / "absent.pt", match="does not exist")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    _expect_error(capsys, tmp_path / "out", "--checkpoint", corrupt, match="not a plain PyTorch state dict")


def test_existing_output_needs_force(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "-o", out, *COUPLED_A_FLAGS) != 0
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "-o", out, "--force", *COUPLED_A_FLAGS) == 0
    assert not (out / "keep.txt").exists() and (out / "unet" / "config.json").exists()


def test_ignored_official_flags_are_accepted(tmp_path):
    extra = "--use_fp16 True --num_heads_upsample -1 --sample_fn dpm_solver --batch_size 4 --devices 0,1".split()
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "-o", tmp_path / "o", *COUPLED_A_FLAGS, *extra) == 0


@pytest.mark.parametrize("entry", [["-m", "mmdiffusion.convert_weights"], ["-m", "mmdiffusion", "convert"]])
def test_command_line_entry_points(entry):
    result = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--checkpoint" in result.stdout and "--video_size" in result.stdout


def test_package_imports_under_another_folder_name(tmp_path):
    """ComfyUI imports custom_nodes/<any-name>/__init__.py as a package of that name."""
    alias = tmp_path / "custom_nodes" / "MM-Diffusion-pack"
    alias.parent.mkdir()
    alias.symlink_to(REPO_ROOT, target_is_directory=True)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mm_pack', {str(alias / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(alias)!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['mm_pack'] = module\n"
        "spec.loader.exec_module(module)\n"
        "model = module.CoupledUNet(num_frames=4, sample_size=16, audio_length=256, model_channels=32,"
        " channel_mult=(1, 2), cross_attention_downsample_factors=(2,), cross_attention_windows=(1,))\n"
        "assert type(model).__module__ == 'mm_pack.models.coupled_unet', type(model).__module__\n"
        "assert 'mmdiffusion' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- super-resolution checkpoints ---------------------------------------------------------------------


def test_sr_conversion_matches_the_official_model(converted_sr_a, sr_a_io):
    from mmdiffusion import MMDiffusionSRPipeline

    pipeline = MMDiffusionSRPipeline.from_pretrained(converted_sr_a)
    assert sorted(p.name for p in (converted_sr_a / "sr_unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"
    ]
    with torch.no_grad():
        out = pipeline.sr_unet(sr_a_io["x"], sr_a_io["timesteps"], sr_a_io["low_res"]).sample
    assert out.shape == sr_a_io["out"].shape
    assert (out - sr_a_io["out"]).abs().max() <= 1e-4


def test_sr_ddim_reference_through_the_converted_pipeline(converted_sr_a, sr_a_io):
    from mmdiffusion import MMDiffusionSRPipeline

    pipeline = MMDiffusionSRPipeline.from_pretrained(converted_sr_a)
    pipeline.set_progress_bar_config(disable=True)
    frames = ((sr_a_io["ddim5_low_res"] + 1) / 2)[:, None]  # [1, 1, 3, 8, 8] in 0..1
    out = pipeline(frames, num_inference_steps=5, latents=sr_a_io["ddim5_noise"], output_type="latent").frames
    assert (out[:, 0] - sr_a_io["ddim5_out"]).abs().max() <= 1e-3


def test_sr_flags_are_inferred_where_the_weights_show_them(tmp_path, sr_a_io):
    """Without --sr_channel_mult the multipliers come from the weights (the official table has no 32)."""
    from mmdiffusion import MMDiffusionSRPipeline

    flags = "--large_size 32 --small_size 8 --sr_num_heads 4".split()
    assert _convert("--sr-checkpoint", fixture_path("sr_a.pt"), "-o", tmp_path / "out", *flags) == 0
    unet = MMDiffusionSRPipeline.from_pretrained(tmp_path / "out").sr_unet
    with torch.no_grad():
        out = unet(sr_a_io["x"], sr_a_io["timesteps"], sr_a_io["low_res"]).sample
    assert (out - sr_a_io["out"]).abs().max() <= 1e-4


def test_both_checkpoints_make_one_pipeline(tmp_path):
    from mmdiffusion import MMDiffusionPipeline

    out = tmp_path / "both"
    assert _convert("--checkpoint", fixture_path("coupled_a.pt"), "--sr-checkpoint", fixture_path("sr_a.pt"),
                    "-o", out, *COUPLED_A_FLAGS, *SR_A_FLAGS) == 0
    assert {p.name for p in out.iterdir()} == {"model_index.json", "unet", "scheduler", "sr_unet", "sr_scheduler"}
    pipeline = MMDiffusionPipeline.from_pretrained(out)
    pipeline.set_progress_bar_config(disable=True)
    # The fixtures' two models were made apart: the SR stage takes 8x8 frames, the coupled model makes 16x16.
    with pytest.warns(UserWarning, match="16x16 but this super-resolution model takes 8x8"):
        result = pipeline(num_inference_steps=2, sr_num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert result.frames.shape == (1, 8, 32, 32, 3)  # upscaled to the SR model size (input resized 16 -> 8)


def test_coupled_checkpoint_given_as_sr(capsys, tmp_path):
    _expect_error(capsys, tmp_path / "out", "--sr-checkpoint", fixture_path("coupled_a.pt"), *SR_A_FLAGS,
                  match="is a coupled checkpoint, expected a super-resolution")


def test_sr_flags_that_contradict_the_weights(capsys, tmp_path):
    flags = list(SR_A_FLAGS)
    flags[flags.index("--sr_num_channels") + 1] = "64"
    _expect_error(capsys, tmp_path / "out", "--sr-checkpoint", fixture_path("sr_a.pt"), *flags, match="shape")
