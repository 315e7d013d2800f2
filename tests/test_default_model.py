"""The small default model shipped in `pretrained/`: what `mmdiffusion generate` uses without `--model`."""

import json

import av
import pytest
import torch

from mmdiffusion import MMDiffusionPipeline, export_to_video
from mmdiffusion.cli import PRETRAINED, main
from mmdiffusion.training.commands import evaluate_alignment, make_shapes

MAX_BYTES = 50 * 2**20


def _scores(output, folder):
    """The alignment measure of a pipeline output, read back from the mp4 files written for it."""
    export_to_video(output, folder / "sample.mp4")
    return evaluate_alignment([folder])


@pytest.fixture(scope="module")
def pipe():
    pipeline = MMDiffusionPipeline.from_pretrained(PRETRAINED)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_shipped_folder_is_small_complete_and_documented(pipe):
    files = [path for path in PRETRAINED.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= MAX_BYTES
    assert all(path.suffix in (".json", ".safetensors", ".md") for path in files)
    assert pipe.sr_unet is not None and pipe.sr_scheduler is not None
    card = (PRETRAINED / "README.md").read_text()
    assert "mmdiffusion train " in card and "mmdiffusion train-sr " in card and "mmdiffusion combine " in card
    # The rates the pipeline states are ones an mp4 can carry, and the audio length is the clip's duration.
    index = json.loads((PRETRAINED / "model_index.json").read_text())
    frames = pipe.unet.config.num_frames
    assert pipe.unet.config.audio_length == round(frames / index["frame_rate"] * index["sample_rate"])


def test_generate_without_model_uses_the_default(pipe, tmp_path):
    out = tmp_path / "sample.mp4"
    assert main(["generate", "-o", str(out), "--steps", "3", "--sr-steps", "3", "--device", "cpu"]) == 0
    frames, _, _, _ = pipe.video_shape
    size = pipe.sr_unet.config.sample_size
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        assert float(video.average_rate) == pipe.config.frame_rate
        assert audio.rate == pipe.config.sample_rate
    assert len(decoded) == frames and decoded[0].shape == (size, size, 3)


def test_default_model_draws_a_square_whose_tone_follows_its_height(pipe, tmp_path):
    """A few joint samples of the trained model read back as aligned sounding shapes: the square is found, the
    sound is a tone, and its pitch follows the square's height (32-sample figures: the model card)."""
    output = pipe(batch_size=4, num_inference_steps=20, generator=[torch.Generator().manual_seed(s) for s in range(4)],
                  super_resolution=False)
    scores = _scores(output, tmp_path)
    assert scores["square_found_fraction"] >= 0.9
    assert scores["tonal_energy_share"] >= 0.5
    assert scores["correlation"] >= 0.5


def test_default_model_sings_each_given_video_at_its_own_heights(pipe, tmp_path):
    """Video -> audio on clips never trained on: each generated tone follows its own video, not the others."""
    frames, _, height, width = pipe.video_shape
    clips = make_shapes(4, tmp_path / "real", seed=1_000_000, height=height, width=width, num_frames=frames,
                        frame_rate=pipe.config.frame_rate, sample_rate=pipe.config.sample_rate)
    output = pipe(video=[str(clip) for clip in clips], num_inference_steps=20,
                  generator=[torch.Generator().manual_seed(s) for s in range(4)])
    scores = _scores(output, tmp_path / "v2a")
    assert scores["correlation"] >= 0.6
    assert scores["shuffled_correlation"] <= 0.3
