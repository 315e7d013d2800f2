"""Sounding shapes: a procedural audio-video data set for training and checking small models.

Each clip shows one filled square of a bright random colour on a dark background, gliding along
a smooth random path. The soundtrack is a single sine tone whose pitch follows the square's
height, ``f = 220 * 4 ** (1 - y)`` Hz with ``y`` the centre's vertical position from 0 (top) to
1 (bottom), so the top of the frame sounds two octaves above the bottom. The tone is louder for
larger squares. Everything is derived from one seed through ``numpy.random.default_rng``, so a
clip never depends on global random state.

Frame ``k`` shows the path at time ``(k + 0.5) / frame_rate`` (the middle of the interval during
which it is on screen); the tone follows the same continuous path sample by sample, with its
phase integrated from the instantaneous frequency so the pitch glides without clicks.
"""

import math

import numpy as np
import torch
from torch.utils.data import Dataset

BASE_FREQUENCY = 220.0
"""Pitch in Hz of a square whose centre is at the bottom of the frame (``y = 1``)."""

PITCH_RANGE = 4.0
"""Frequency ratio between the top (``y = 0``) and the bottom of the frame: two octaves."""

SIZE_RANGE = (0.15, 0.35)
"""Side of the square as a fraction of the shorter frame side."""

AMPLITUDE_RANGE = (0.3, 0.8)
"""Peak amplitude of the tone for the smallest and the largest square (headroom below 1)."""

_FADE_SECONDS = 0.005  # short fade in and out so the clip starts and ends without a click


def height_to_frequency(y):
    """Tone frequency in Hz for a square centre at height ``y`` (0 top, 1 bottom)."""
    return BASE_FREQUENCY * PITCH_RANGE ** (1.0 - y)


def frequency_to_height(frequency):
    """Inverse of :func:`height_to_frequency`: the height (0 top, 1 bottom) a frequency stands for."""
    return 1.0 - np.log(np.asarray(frequency, dtype=np.float64) / BASE_FREQUENCY) / math.log(PITCH_RANGE)


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer of at least {minimum}, got {value!r}.")


def _check_positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


def _smooth_path(rng, times, duration):
    """A smooth random curve over ``times``: two low-frequency sinusoids with random phases.

    Frequencies are drawn in cycles per clip, so every clip, whatever its length, shows a
    comparable amount of motion. The curve is returned raw; the caller rescales it.
    """
    cycles = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.8, 1.6)])
    amplitudes = np.array([1.0, rng.uniform(0.2, 0.6)])
    phases = rng.uniform(0.0, 2.0 * math.pi, size=2)
    angles = 2.0 * math.pi * cycles[:, None] * times[None, :] / duration + phases[:, None]
    return (amplitudes[:, None] * np.sin(angles)).sum(axis=0)


def _fit_into(rng, curve, low, high, min_span_fraction):
    """Rescale ``curve`` so it spans a random sub-interval (at least ``min_span_fraction``) of [low, high]."""
    span = (high - low) * rng.uniform(min_span_fraction, 1.0)
    start = low + rng.uniform(0.0, (high - low) - span)
    curve_range = curve.max() - curve.min()
    if curve_range < 1e-12:
        return np.full_like(curve, start + span / 2.0)
    return start + (curve - curve.min()) / curve_range * span


def _bright_colour(rng):
    """A saturated, bright RGB colour (HSV with high saturation and value)."""
    hue = rng.uniform(0.0, 1.0)
    saturation = rng.uniform(0.6, 1.0)
    value = rng.uniform(0.85, 1.0)
    # HSV -> RGB: each channel is value minus a hue-dependent share of the chroma.
    channel_offsets = np.array([5.0, 3.0, 1.0])
    k = (channel_offsets + hue * 6.0) % 6.0
    return value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _pixel_coverage(centres, half_side, num_pixels):
    """Fraction of each pixel ``[i, i + 1)`` covered by the interval ``centre ± half_side`` (anti-aliasing)."""
    edges = np.arange(num_pixels, dtype=np.float64)
    lower = np.maximum(edges[None, :], centres[:, None] - half_side)
    upper = np.minimum(edges[None, :] + 1.0, centres[:, None] + half_side)
    return np.clip(upper - lower, 0.0, 1.0)


def render_sounding_shape(
    seed,
    *,
    num_frames=16,
    frame_rate=10,
    height=64,
    width=64,
    sample_rate=16000,
    num_samples=None,
):
    """Render one sounding-shapes clip, deterministically from ``seed``.

    Args:
        seed: non-negative integer; the same seed always gives the same clip.
        num_frames: number of video frames.
        frame_rate: frames per second.
        height, width: frame size in pixels (at least 8 each).
        sample_rate: audio samples per second (at least 4000, so the highest tone, 880 Hz,
            stays far below the Nyquist frequency).
        num_samples: audio length; by default the duration of the frames,
            ``round(num_frames / frame_rate * sample_rate)`` (25,600 at the defaults).

    Returns:
        ``(video, audio, info)``: ``video`` float32 ``[num_frames, 3, height, width]`` in 0..1;
        ``audio`` float32 ``[1, num_samples]`` in [-0.8, 0.8]; ``info`` a dict with per-frame
        ``"y"`` and ``"x"`` (centre position as a fraction of the frame, 0 top / left to
        1 bottom / right) and ``"frequency"`` (Hz) as float64 tensors ``[num_frames]``, and the
        scalars ``"size"`` (side as a fraction of the shorter frame side), ``"amplitude"``,
        ``"colour"`` and ``"background"`` (RGB tuples in 0..1).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    _check_positive_int("num_frames", num_frames)
    _check_positive_number("frame_rate", frame_rate)
    _check_positive_int("height", height, minimum=8)
    _check_positive_int("width", width, minimum=8)
    _check_positive_int("sample_rate", sample_rate, minimum=4000)
    duration = num_frames / frame_rate
    if num_samples is None:
        num_samples = round(duration * sample_rate)
    _check_positive_int("num_samples", num_samples)

    rng = np.random.default_rng(seed)
    background = rng.uniform(0.0, 0.12, size=3)
    colour = _bright_colour(rng)
    size_fraction = rng.uniform(*SIZE_RANGE)
    side = size_fraction * min(height, width)

    # One continuous path, sampled at the frame times and at every audio sample.
    frame_times = (np.arange(num_frames) + 0.5) / frame_rate
    sample_times = np.arange(num_samples) / sample_rate
    all_times = np.concatenate([frame_times, sample_times])
    # Keep the whole square inside the frame: the centre stays half a side away from the edges.
    y_margin = side / 2.0 / height
    x_margin = side / 2.0 / width
    y_path = _fit_into(rng, _smooth_path(rng, all_times, duration), y_margin, 1.0 - y_margin, 0.6)
    x_path = _fit_into(rng, _smooth_path(rng, all_times, duration), x_margin, 1.0 - x_margin, 0.3)
    frame_y, sample_y = y_path[:num_frames], y_path[num_frames:]
    frame_x = x_path[:num_frames]

    coverage_rows = _pixel_coverage(frame_y * height, side / 2.0, height)
    coverage_columns = _pixel_coverage(frame_x * width, side / 2.0, width)
    coverage = coverage_rows[:, :, None] * coverage_columns[:, None, :]
    video = background[None, :, None, None] + coverage[:, None] * (colour - background)[None, :, None, None]

    sample_frequency = height_to_frequency(sample_y)
    # Phase-continuous glide: integrate the instantaneous frequency.
    phase = rng.uniform(0.0, 2.0 * math.pi) + 2.0 * math.pi * np.concatenate(
        [[0.0], np.cumsum(sample_frequency[:-1]) / sample_rate]
    )
    amplitude_low, amplitude_high = AMPLITUDE_RANGE
    size_position = (size_fraction - SIZE_RANGE[0]) / (SIZE_RANGE[1] - SIZE_RANGE[0])
    amplitude = amplitude_low + (amplitude_high - amplitude_low) * size_position
    fade_length = max(1, round(_FADE_SECONDS * sample_rate))
    samples_from_edge = np.minimum(np.arange(1, num_samples + 1), np.arange(num_samples, 0, -1))
    envelope = np.minimum(1.0, samples_from_edge / fade_length)
    audio = amplitude * envelope * np.sin(phase)

    info = {
        "y": torch.from_numpy(frame_y.copy()),
        "x": torch.from_numpy(frame_x.copy()),
        "frequency": torch.from_numpy(height_to_frequency(frame_y)),
        "size": float(size_fraction),
        "amplitude": float(amplitude),
        "colour": tuple(float(c) for c in colour),
        "background": tuple(float(c) for c in background),
    }
    return torch.from_numpy(video).float(), torch.from_numpy(audio[None]).float(), info


class SoundingShapesDataset(Dataset):
    """``num_clips`` sounding-shapes clips in model space, item ``i`` rendered from seed ``seed + i``.

    Items are dicts ``{"video": [F, 3, H, W], "audio": [1, T]}``, float32 in [-1, 1] (the model's
    conventions). Clips are rendered on demand (a few milliseconds each), so the data set costs
    no memory and gives the same items in every worker and every epoch.

    Args:
        num_clips: number of clips.
        seed: seed of the first clip (non-negative integer).
        num_frames, frame_rate, height, width, sample_rate, num_samples: as in
            :func:`render_sounding_shape`.
    """

    def __init__(
        self,
        num_clips,
        seed=0,
        *,
        num_frames=16,
        frame_rate=10,
        height=64,
        width=64,
        sample_rate=16000,
        num_samples=None,
    ):
        _check_positive_int("num_clips", num_clips)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
        self.num_clips = int(num_clips)
        self.seed = int(seed)
        self.render_options = dict(
            num_frames=num_frames,
            frame_rate=frame_rate,
            height=height,
            width=width,
            sample_rate=sample_rate,
            num_samples=num_samples,
        )
        # Render once up front so bad options fail here, not inside a DataLoader worker.
        render_sounding_shape(self.seed, **self.render_options)
        self.frame_rate = frame_rate
        self.sample_rate = sample_rate

    def __len__(self):
        return self.num_clips

    def __getitem__(self, index):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SoundingShapesDataset index must be an integer, got {type(index).__name__}.")
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"SoundingShapesDataset index {index} is out of range for {self.num_clips} clips.")
        video, audio, _ = render_sounding_shape(self.seed + int(index) % self.num_clips, **self.render_options)
        return {"video": video * 2.0 - 1.0, "audio": audio}
