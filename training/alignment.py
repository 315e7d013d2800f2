"""Audio-video alignment measure for the sounding-shapes data set (and only for it).

A sounding-shapes clip ties the pitch of its tone to the height of its square
(``f = 220 * 4 ** (1 - y)``, see :mod:`.sounding_shapes`). This module reads that height twice,
once from the pixels (centre of mass of the pixels that differ from the background) and once
from the sound (dominant frequency mapped back through ``y = 1 - log4(f / 220)``), and compares
the two curves. A model trained on the data set should produce clips whose two curves agree;
for any other kind of video the numbers mean nothing.

All functions work on in-memory tensors (torch or numpy) in the project's conventions, with
video in 0..1 (convert model space with ``(video + 1) / 2``). Frame ``k`` is taken to show the
moment ``(k + 0.5) / frame_rate``, as the data set renders it.
"""

import math

import numpy as np
import torch

from .sounding_shapes import BASE_FREQUENCY, PITCH_RANGE, frequency_to_height

FOREGROUND_THRESHOLD = 0.25
"""A pixel belongs to the square when one of its channels differs this much from the background."""

MIN_SQUARE_FRACTION = 0.002
"""Fewest foreground pixels, as a fraction of the frame, for a frame to count as showing a square."""

TONAL_BAND = 0.1
"""Half-width, relative to the dominant frequency, of the band counted as the tone's energy."""

# Peaks are searched one octave beyond the data set's pitch range on either side, so that hum
# or rumble near 0 Hz is never mistaken for the tone.
_SEARCH_BAND = (BASE_FREQUENCY / 2.0, BASE_FREQUENCY * PITCH_RANGE * 2.0)
_SILENCE_ENERGY = 1e-10  # windows quieter than this (sum of squares) have no tone


def _as_float64_numpy(name, value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64, copy=False)
    raise TypeError(f"`{name}` must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}.")


def _check_video(video):
    video = _as_float64_numpy("video", video)
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"`video` must have shape [frames, 3, height, width], got {list(video.shape)}.")
    if video.size and (video.min() < -1e-3 or video.max() > 1.0 + 1e-3):
        raise ValueError(
            f"`video` values must be in 0..1, got {video.min():.3g}..{video.max():.3g} "
            "(convert model-space [-1, 1] video with (video + 1) / 2)."
        )
    return video


def _check_audio(audio):
    audio = _as_float64_numpy("audio", audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)  # mix channels down: the tone is the same in every channel
    elif audio.ndim != 1:
        raise ValueError(f"`audio` must have shape [channels, samples] or [samples], got {list(audio.shape)}.")
    if audio.size == 0:
        raise ValueError("`audio` must contain at least one sample, got an empty tensor.")
    return audio


def _check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


def square_height_from_video(video):
    """Height of the square in every frame, read from the pixels.

    The background colour of a frame is its per-channel median (the square covers well under
    half the frame); pixels with a channel at least :data:`FOREGROUND_THRESHOLD` away from it
    are the square, weighted by that distance so that anti-aliased edges count partially.

    Args:
        video: ``[frames, 3, height, width]`` in 0..1 (torch or numpy).

    Returns:
        float64 tensor ``[frames]``: centre-of-mass height, 0 at the top edge to 1 at the bottom
        edge; NaN for frames in which fewer than :data:`MIN_SQUARE_FRACTION` of the pixels
        differ from the background (no square found).
    """
    video = _check_video(video)
    num_frames, _, height, width = video.shape
    background = np.median(video.reshape(num_frames, 3, -1), axis=2)
    distance = np.abs(video - background[:, :, None, None]).max(axis=1)
    foreground = distance >= FOREGROUND_THRESHOLD
    weights = np.where(foreground, distance, 0.0)
    mass = weights.sum(axis=(1, 2))
    row_centres = np.arange(height) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        heights = (weights.sum(axis=2) * row_centres).sum(axis=1) / mass / height
    found = foreground.sum(axis=(1, 2)) >= max(1, MIN_SQUARE_FRACTION * height * width)
    return torch.from_numpy(np.where(found, heights, np.nan))


def dominant_frequencies(audio, sample_rate, num_frames, frame_rate):
    """Dominant frequency of the audio around every frame, and how much of the energy it holds.

    The window of frame ``k`` is one frame long and centred on ``(k + 0.5) / frame_rate``
    (zero beyond the ends of the audio). Its mean is removed, a Hann window applied, and the
    zero-padded FFT searched for the strongest peak between 110 and 1760 Hz (one octave beyond
    the data set's 220..880 Hz); the peak is refined by fitting a parabola to the log magnitude
    of the peak bin and its neighbours.

    Args:
        audio: ``[channels, samples]`` or ``[samples]`` (torch or numpy); channels are averaged.
        sample_rate: audio samples per second.
        num_frames: number of frames the audio accompanies.
        frame_rate: frames per second.

    Returns:
        ``(frequency, tonal_share)``, float64 tensors ``[num_frames]``: the dominant frequency
        in Hz (NaN for silent windows) and the share of the window's spectral energy within
        ±:data:`TONAL_BAND` (at least the Hann main lobe) of it (0 for silent windows).
    """
    audio = _check_audio(audio)
    _check_rate("sample_rate", sample_rate)
    _check_rate("frame_rate", frame_rate)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"`num_frames` must be a positive integer, got {num_frames!r}.")
    window_length = max(8, round(sample_rate / frame_rate))
    fft_length = 1 << math.ceil(math.log2(4 * window_length))  # zero padding: a finer grid to interpolate on
    starts = np.round((np.arange(num_frames) + 0.5) / frame_rate * sample_rate - window_length / 2.0).astype(np.int64)
    indices = starts[:, None] + np.arange(window_length)[None, :]
    inside = (indices >= 0) & (indices < audio.shape[0])
    windows = np.where(inside, audio[np.clip(indices, 0, audio.shape[0] - 1)], 0.0)
    windows = windows - windows.mean(axis=1, keepdims=True)
    energy = (windows**2).sum(axis=1)
    power = np.abs(np.fft.rfft(windows * np.hanning(window_length), n=fft_length, axis=1)) ** 2
    # One-sided spectrum: every bin but DC (and Nyquist) stands for two bins of the full one.
    power[:, 1 : (fft_length + 1) // 2] *= 2.0
    bin_hz = sample_rate / fft_length
    bin_frequencies = np.arange(power.shape[1]) * bin_hz

    search_low = max(1, math.ceil(_SEARCH_BAND[0] / bin_hz))
    search_high = min(power.shape[1] - 2, math.floor(_SEARCH_BAND[1] / bin_hz))
    peak = search_low + power[:, search_low : search_high + 1].argmax(axis=1)
    rows = np.arange(num_frames)
    log_left, log_centre, log_right = (np.log(power[rows, peak + o] + 1e-30) for o in (-1, 0, 1))
    curvature = log_left - 2.0 * log_centre + log_right
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(curvature < 0.0, 0.5 * (log_left - log_right) / curvature, 0.0)
    frequency = (peak + np.clip(offset, -0.5, 0.5)) * bin_hz

    half_band = np.maximum(TONAL_BAND * frequency, 2.0 * sample_rate / window_length)
    in_band = np.abs(bin_frequencies[None, :] - frequency[:, None]) <= half_band[:, None]
    total = power.sum(axis=1)
    silent = energy < _SILENCE_ENERGY
    with np.errstate(invalid="ignore", divide="ignore"):
        tonal_share = np.where(silent, 0.0, (power * in_band).sum(axis=1) / total)
    frequency = np.where(silent, np.nan, frequency)
    return torch.from_numpy(frequency), torch.from_numpy(tonal_share)


def square_height_from_audio(audio, sample_rate, num_frames, frame_rate):
    """Height of the square in every frame, read from the sound.

    The dominant frequency around each frame (see :func:`dominant_frequencies`) mapped back
    through ``y = 1 - log4(f / 220)``; not clipped, so tones outside 220..880 Hz give heights
    outside 0..1 (at most half a unit, by the search band).

    Returns:
        float64 tensor ``[num_frames]``, NaN for silent windows.
    """
    frequency, _ = dominant_frequencies(audio, sample_rate, num_frames, frame_rate)
    return torch.from_numpy(frequency_to_height(frequency.numpy()))


def _pearson(a, b):
    """Pearson r over the frames where both curves are defined; NaN when it is undefined.

    r is undefined with fewer than three common frames or when either curve is (numerically)
    constant there, e.g. a square that never moves: such clips carry no evidence either way.
    """
    valid = ~(np.isnan(a) | np.isnan(b))
    if valid.sum() < 3:
        return math.nan
    a = a[valid] - a[valid].mean()
    b = b[valid] - b[valid].mean()
    if a.std() < 1e-6 or b.std() < 1e-6:
        return math.nan
    return float((a * b).sum() / math.sqrt((a**2).sum() * (b**2).sum()))


def _split_clips(name, value, expected_ndim):
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != expected_ndim + 1:
            raise ValueError(
                f"`{name}` must be a batch with {expected_ndim + 1} dimensions or a list of clips, "
                f"got shape {list(value.shape)}."
            )
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"`{name}` must be a tensor, an array or a list of clips, got {type(value).__name__}.")


def alignment_scores(videos, audios, sample_rate, frame_rate):
    """How well the sound's pitch follows the square's height, over a set of clips.

    Only meaningful for sounding-shapes clips (real ones or a model's imitations).

    Args:
        videos: ``[clips, frames, 3, height, width]`` in 0..1, or a list of ``[frames, 3, H, W]``.
        audios: ``[clips, channels, samples]``, or a list of ``[channels, samples]`` / ``[samples]``.
        sample_rate: audio samples per second.
        frame_rate: video frames per second.

    Returns:
        dict of floats:

        - ``correlation``: mean over clips of the Pearson r between the height read from the
          video and the height read from the audio (clips where r is undefined, because a curve
          is constant or has fewer than three frames, are left out; NaN if all are);
        - ``correlation_defined_fraction``: share of clips that entered ``correlation``;
        - ``mean_abs_diff``: mean absolute difference of the two heights over all frames where
          both are defined (heights in frame units: 0.1 is a tenth of the frame);
        - ``square_found_fraction``: share of frames in which a square was found;
        - ``tonal_energy_share``: mean share of spectral energy near the dominant frequency;
        - ``shuffled_correlation``: the same mean r with every audio paired with every other
          clip's video (the average over all cyclic-shift derangements): the chance level,
          about 0; NaN for a single clip;
        - ``num_clips``.
    """
    _check_rate("sample_rate", sample_rate)
    _check_rate("frame_rate", frame_rate)
    video_clips = _split_clips("videos", videos, 4)
    audio_clips = _split_clips("audios", audios, 2)
    if not video_clips:
        raise ValueError("`videos` must contain at least one clip, got none.")
    if len(video_clips) != len(audio_clips):
        raise ValueError(
            f"`videos` and `audios` must hold the same number of clips, "
            f"got {len(video_clips)} and {len(audio_clips)}."
        )

    video_heights, audio_heights, tonal_shares = [], [], []
    for video, audio in zip(video_clips, audio_clips):
        video_heights.append(square_height_from_video(video).numpy())
        frequency, tonal_share = dominant_frequencies(audio, sample_rate, len(video_heights[-1]), frame_rate)
        audio_heights.append(frequency_to_height(frequency.numpy()))
        tonal_shares.append(tonal_share.numpy())

    def mean_correlation(pairs):
        values = [_pearson(video_heights[i], audio_heights[j]) for i, j in pairs]
        defined = [v for v in values if not math.isnan(v)]
        return (float(np.mean(defined)) if defined else math.nan), len(defined)

    num_clips = len(video_clips)
    correlation, num_defined = mean_correlation([(i, i) for i in range(num_clips)])
    shuffled, _ = mean_correlation([(i, j) for i in range(num_clips) for j in range(num_clips) if i != j])
    all_video = np.concatenate(video_heights)
    all_audio = np.concatenate(audio_heights)
    both = ~(np.isnan(all_video) | np.isnan(all_audio))
    return {
        "correlation": correlation,
        "correlation_defined_fraction": num_defined / num_clips,
        "mean_abs_diff": float(np.abs(all_video[both] - all_audio[both]).mean()) if both.any() else math.nan,
        "square_found_fraction": float((~np.isnan(all_video)).mean()),
        "tonal_energy_share": float(np.concatenate(tonal_shares).mean()),
        "shuffled_correlation": shuffled,
        "num_clips": num_clips,
    }
