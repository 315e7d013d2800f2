import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMDIFFUSION_FIXTURES", REPO_ROOT / ".." / "shared" / "fixtures" / "official")).resolve()

# The fixture model's flags, as the official sampling script takes them (fixture README).
COUPLED_A_FLAGS = (
    "--video_size 8,3,16,16 --audio_size 1,2048 --num_channels 32 --channel_mult 1,2,3,4 --num_res_blocks 2 "
    "--cross_attention_resolutions 2,4,8 --cross_attention_windows 1,4,8 --cross_attention_shift True "
    "--video_attention_resolutions 2,4,8 --audio_attention_resolutions -1 --num_heads 4 --num_head_channels 16 "
    "--use_scale_shift_norm True --resblock_updown True --learn_sigma False"
).split()


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"official fixture {path} is missing (set MMDIFFUSION_FIXTURES to the fixture folder)")
    return path


@pytest.fixture(scope="session")
def coupled_a_io():
    from safetensors.torch import load_file

    return load_file(str(fixture_path("coupled_a_io.safetensors")))


@pytest.fixture(scope="session")
def converted_coupled_a(tmp_path_factory):
    """The fixture checkpoint converted with `mmdiffusion convert` into a folder."""
    from mmdiffusion.convert_weights import main

    out = tmp_path_factory.mktemp("converted") / "coupled_a"
    assert main(["--checkpoint", str(fixture_path("coupled_a.pt")), "-o", str(out), *COUPLED_A_FLAGS]) == 0
    return out


@pytest.fixture(scope="session")
def coupled_a_unet(converted_coupled_a):
    from mmdiffusion import CoupledUNet

    return CoupledUNet.from_pretrained(converted_coupled_a, subfolder="unet").eval()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)

# The SR fixture's flags (fixture README); --sr_channel_mult is this project's extension.
SR_A_FLAGS = (
    "--large_size 32 --small_size 8 --sr_num_channels 32 --sr_num_res_blocks 2 --sr_attention_resolutions 2,4 "
    "--sr_num_heads 4 --sr_learn_sigma True --sr_use_scale_shift_norm True --sr_resblock_updown True "
    "--sr_channel_mult 1,2,4"
).split()


@pytest.fixture(scope="session")
def sr_a_io():
    from safetensors.torch import load_file

    return load_file(str(fixture_path("sr_a_io.safetensors")))


@pytest.fixture(scope="session")
def converted_sr_a(tmp_path_factory):
    from mmdiffusion.convert_weights import main

    out = tmp_path_factory.mktemp("converted") / "sr_a"
    assert main(["--sr-checkpoint", str(fixture_path("sr_a.pt")), "-o", str(out), *SR_A_FLAGS]) == 0
    return out
