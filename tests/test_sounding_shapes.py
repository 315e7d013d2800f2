import math

import numpy as np
import pytest
import torch

from mmdiffusion.training.alignment import (
    alignment_scores,
    dominant_frequencies,
    square_height_from_audio,
    square_height_from_video,
)
from mmdiffusion.training.sounding_shapes import (
    SoundingShapesDataset,
    frequency_to_height,
    height_to_frequency,
    render_sounding_shape,
)

SMALL = dict(height=32, width=32, sample_rate=8000)


def test_same_seed_gives_identical_clip_regardless_of_global_rng():
    torch.manual_seed(1)
    np.random.seed(1)
    video_a, audio_a, info_a = render_sounding_shape(7, **SMALL)
    torch.manual_seed(2)
    np.random.seed(2)
    video_b, audio_b, info_b = render_sounding_shape(7, **SMALL)
    assert torch.equal(video_a, video_b)
    assert torch.equal(audio_a, audio_b)
    assert torch.equal(info_a["y"], info_b["y"])


def test_different_seeds_give_different_clips():
    video_a, audio_a, info_a = render_sounding_shape(0, **SMALL)
    video_b, audio_b, info_b = render_sounding_shape(1, **SMALL)
    assert not torch.equal(video_a, video_b)
    assert not torch.equal(audio_a, audio_b)
    assert info_a["size"] != info_b["size"]


@pytest.mark.parametrize(
    "options, expected_video, expected_audio",
    [
        ({}, (16, 3, 64, 64), (1, 25600)),
        (SMALL, (16, 3, 32, 32), (1, 12800)),
        (
            dict(num_frames=8, frame_rate=5, height=16, width=24, sample_rate=4000, num_samples=1000),
            (8, 3, 16, 24),
            (1, 1000),
        ),
    ],
)
def test_shapes_and_ranges(options, expected_video, expected_audio):
    video, audio, info = render_sounding_shape(3, **options)
    assert video.shape == expected_video and video.dtype == torch.float32
    assert audio.shape == expected_audio and audio.dtype == torch.float32
    assert video.min() >= 0.0 and video.max() <= 1.0
    assert audio.abs().max() <= 0.8
    num_frames, _, height, width = video.shape
    half_side = info["size"] * min(height, width) / 2
    # The whole square stays inside the frame in every frame.
    for centre, extent in ((info["y"] * height, height), (info["x"] * width, width)):
        assert torch.all(centre - half_side >= -1e-9) and torch.all(centre + half_side <= extent + 1e-9)
    assert info["y"].shape == info["x"].shape == (num_frames,)


def test_height_varies_within_every_clip_and_loudness_grows_with_size():
    infos = [render_sounding_shape(seed, **SMALL)[2] for seed in range(12)]
    assert min(float(info["y"].max() - info["y"].min()) for info in infos) > 0.2
    by_size = sorted(infos, key=lambda info: info["size"])
    assert [info["amplitude"] for info in by_size] == sorted(info["amplitude"] for info in infos)


def test_frequency_height_mapping():
    assert height_to_frequency(1.0) == pytest.approx(220.0)
    assert height_to_frequency(0.0) == pytest.approx(880.0)
    assert height_to_frequency(0.5) == pytest.approx(440.0)
    heights = np.linspace(0.0, 1.0, 7)
    np.testing.assert_allclose(frequency_to_height(height_to_frequency(heights)), heights, atol=1e-12)


@pytest.mark.parametrize("options", [{}, SMALL])
def test_dominant_frequency_follows_square_height(options):
    video, audio, info = render_sounding_shape(5, **options)
    sample_rate = options.get("sample_rate", 16000)
    frequency, tonal_share = dominant_frequencies(audio, sample_rate, video.shape[0], 10)
    expected = 220.0 * 4.0 ** (1.0 - info["y"])
    torch.testing.assert_close(frequency, expected, rtol=0.02, atol=0.0)
    assert tonal_share.min() > 0.9


def test_audio_measure_reads_a_plain_tone():
    # A steady 440 Hz tone, built here rather than by the generator, stands for height 0.5.
    sample_rate = 8000
    tone = torch.sin(2 * math.pi * 440.0 * torch.arange(12800, dtype=torch.float64) / sample_rate)
    heights = square_height_from_audio(tone, sample_rate, 16, 10)
    torch.testing.assert_close(heights, torch.full((16,), 0.5, dtype=torch.float64), atol=2e-3, rtol=0)
    silent = square_height_from_audio(torch.zeros(1, 12800), sample_rate, 16, 10)
    assert torch.isnan(silent).all()


def test_video_measure_finds_a_drawn_square_and_flags_empty_frames():
    video = torch.full((3, 3, 40, 40), 0.05)
    video[0, 0, 4:12, 10:18] = 1.0  # rows 4..11: centre at row 8 -> height 0.2
    video[1, :, 26:34, 2:10] = 0.9  # rows 26..33: centre at row 30 -> height 0.75
    heights = square_height_from_video(video)
    torch.testing.assert_close(heights[:2], torch.tensor([0.2, 0.75], dtype=torch.float64))
    assert torch.isnan(heights[2])


@pytest.mark.parametrize("options", [{}, SMALL])
def test_own_clips_align_and_shuffled_pairs_do_not(options):
    clips = [render_sounding_shape(seed, **options) for seed in range(100, 116)]
    videos = torch.stack([video for video, _, _ in clips])
    audios = torch.stack([audio for _, audio, _ in clips])
    scores = alignment_scores(videos, audios, options.get("sample_rate", 16000), 10)
    assert scores["num_clips"] == 16
    assert scores["correlation"] >= 0.95
    assert scores["correlation_defined_fraction"] == 1.0
    assert abs(scores["shuffled_correlation"]) < 0.3
    assert scores["square_found_fraction"] == 1.0
    assert scores["tonal_energy_share"] > 0.9
    assert scores["mean_abs_diff"] < 0.02
    # Pairing the same audios with the videos in another order breaks the alignment.
    mismatched = alignment_scores(videos.roll(1, dims=0), audios, options.get("sample_rate", 16000), 10)
    assert mismatched["correlation"] < 0.5 and mismatched["mean_abs_diff"] > 0.05


def test_constant_curves_are_left_out_of_the_correlation():
    moving_video, moving_audio, _ = render_sounding_shape(0, **SMALL)
    still_video = moving_video[:1].repeat(16, 1, 1, 1)  # the square never moves: r is undefined
    scores = alignment_scores([moving_video, still_video], [moving_audio, moving_audio], 8000, 10)
    assert scores["correlation_defined_fraction"] == 0.5
    assert scores["correlation"] > 0.95
    assert not math.isnan(scores["mean_abs_diff"])


def test_dataset_items_are_model_space_renders():
    dataset = SoundingShapesDataset(4, seed=20, **SMALL)
    assert len(dataset) == 4
    item = dataset[2]
    assert set(item) == {"video", "audio"}
    video, audio, _ = render_sounding_shape(22, **SMALL)
    torch.testing.assert_close(item["video"], video * 2 - 1)
    torch.testing.assert_close(item["audio"], audio)
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["video"].shape == (4, 16, 3, 32, 32) and batch["audio"].shape == (4, 1, 12800)
    with pytest.raises(IndexError, match="out of range"):
        dataset[4]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: render_sounding_shape(-1), "seed"),
        (lambda: render_sounding_shape(0, height=4), "height"),
        (lambda: render_sounding_shape(0, sample_rate=1000), "sample_rate"),
        (lambda: render_sounding_shape(0, frame_rate=0), "frame_rate"),
        (lambda: SoundingShapesDataset(0), "num_clips"),
        (lambda: square_height_from_video(torch.zeros(16, 64, 64, 3)), r"\[frames, 3, height, width\]"),
        (lambda: square_height_from_video(torch.full((2, 3, 8, 8), -1.0)), "0..1"),
        (lambda: square_height_from_audio(torch.zeros(1, 1, 10), 8000, 4, 10), "audio"),
        (lambda: alignment_scores(torch.zeros(2, 4, 3, 8, 8), torch.zeros(3, 1, 100), 8000, 10), "same number"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()
