"""Media I/O shared by the pipelines, the CLI, the ComfyUI nodes and the training data sets.

Every file is read and written with PyAV (FFmpeg inside; no system FFmpeg, torchaudio file I/O or
torchcodec needed). Audio is resampled with `torchaudio.functional.resample`; frames are resized
with torch.

Conventions (what the model consumes, see DESIGN.md):

- audio: `torch.float32` `[C, T]` in [-1, 1];
- video: `torch.float32` `[F, 3, H, W]` in [0, 1] (the pipelines rescale to [-1, 1]).

Time is measured from the start of the container, so the same `offset` in `load_audio` and
`load_video` (and `start` in `read_clip`) picks the same instant of a file's sound and picture.

The loaders fit any input to the requested format and report what they changed (mixing, resampling,
resizing, cropping, padding) in one warning per call. `read_clip`, meant for training data sets,
does not warn: it raises a `MediaError` subclass when a file cannot give the clip, so a data set
can skip the file with a warning of its own.
"""

import functools
import math
import os
import warnings
import wave
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional
from PIL import Image

from .file_utils import atomic_path, check_can_write


PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor]

# Containers `export_to_video` writes: the ones that hold H.264 video with AAC audio.
VIDEO_EXPORT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


class MediaError(ValueError):
    """A media file or array that cannot give what was asked of it."""


class CorruptMediaError(MediaError):
    """FFmpeg cannot open or decode the file."""


class NoAudioStreamError(MediaError):
    """The file has no audio track."""


class NoVideoStreamError(MediaError):
    """The file has no video track."""


class EmptyMediaError(MediaError):
    """The file or array holds no audio samples or no video frames."""


class ClipTooShortError(MediaError):
    """The requested offset or clip lies (partly) beyond the end of the media."""


# --------------------------------------------------------------------------------------------
# Argument checks and array normalisation
# --------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _check_positive_rate(value: Any, name: str, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, Fraction, np.number))
        or not (0 < value < math.inf)
    ):
        raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
    return value


def _check_offset(offset: Any, name: str = "offset") -> float:
    if isinstance(offset, bool) or not isinstance(offset, (int, float, np.number)) or not (0 <= offset < math.inf):
        raise ValueError(f"`{name}` must be a number of seconds >= 0; got {offset!r}.")
    return float(offset)


def _check_sample_rate(value: Any, name: str, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    # Integral floats (44100.0) are fine; resampling needs whole numbers of Hz.
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return _check_positive_int(value, name)


def _channels_name(num_channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(num_channels, f"{num_channels} channels")


def _as_tensor(array: Any, name: str, kind: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu()
    if isinstance(array, np.ndarray):
        array = np.ascontiguousarray(array)
        if array.dtype.kind not in "fiub":
            raise TypeError(f"`{name}` has dtype {array.dtype}; expected a numeric array of {kind}.")
        # torch warns on read-only arrays (e.g. from np.broadcast_to): hand it a copy instead.
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    raise TypeError(
        f"`{name}` must be a file path, a numpy array or a torch tensor of {kind}; got {type(array).__name__}."
    )


def _audio_array_to_tensor(audio: Any, name: str) -> torch.Tensor:
    """`[T]` or `[C, T]` audio (float in [-1, 1], or int16/int32/uint8 PCM) -> float32 `[C, T]`."""
    waveform = _as_tensor(audio, name, "audio [T] or [C, T]")
    if waveform.ndim == 3:
        raise ValueError(
            f"`{name}` has shape {tuple(waveform.shape)}, a batch of clips; expected one clip [T] or [C, T] "
            f"(pass e.g. {name}[0])."
        )
    if waveform.ndim not in (1, 2):
        raise ValueError(f"`{name}` has shape {tuple(waveform.shape)}; expected audio [T] or [C, T].")
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.shape[-1] == 0 or waveform.shape[0] == 0:
        raise EmptyMediaError(
            f"`{name}` has shape {tuple(waveform.shape)} and holds no audio samples; expected at least one."
        )
    if waveform.shape[0] > waveform.shape[1]:
        raise ValueError(
            f"`{name}` has shape {tuple(waveform.shape)}, more channels than samples; expected channels first "
            f"[C, T] (transpose a [T, C] array)."
        )
    if waveform.dtype == torch.int16:
        return waveform.float() / 32768.0
    if waveform.dtype == torch.int32:
        return (waveform.double() / 2147483648.0).float()
    if waveform.dtype == torch.uint8:
        return (waveform.float() - 128.0) / 128.0
    if not waveform.is_floating_point():
        raise TypeError(
            f"`{name}` has dtype {waveform.dtype}; expected float audio in [-1, 1] or int16/int32/uint8 PCM."
        )
    waveform = waveform.float()
    if not torch.isfinite(waveform).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; expected finite audio in [-1, 1].")
    return waveform


def _video_array_to_tensor(frames: Any, name: str) -> torch.Tensor:
    """Frames in any accepted layout -> `[F, 3, H, W]`, uint8 (0..255) or float32 (0..1).

    Accepted: a list of PIL images, or a 4-D numpy array / torch tensor, channels-last
    `[F, H, W, C]` or channels-first `[F, C, H, W]` with C = 3 (RGB) or 1 (grey, repeated to RGB),
    uint8 or float in [0, 1]. The last axis is taken as channels when it has size 1 or 3, the
    second axis otherwise.
    """
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames):
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"`{name}` holds images of different sizes {sorted(sizes)}; expected frames of one size.")
        frames = np.stack([np.asarray(f.convert("RGB")) for f in frames])
    elif isinstance(frames, (list, tuple)):
        raise TypeError(
            f"`{name}` is a list that is not all PIL images; expected a list of PIL images or one array [F, H, W, 3]."
        )
    video = _as_tensor(frames, name, "frames [F, H, W, 3]")
    if video.ndim == 5:
        raise ValueError(
            f"`{name}` has shape {tuple(video.shape)}, a batch of videos; expected one video [F, H, W, 3] "
            f"(pass e.g. {name}[0])."
        )
    if video.ndim != 4:
        raise ValueError(f"`{name}` has shape {tuple(video.shape)}; expected frames [F, H, W, 3] (or [F, 3, H, W]).")
    if video.shape[-1] in (1, 3):
        video = video.permute(0, 3, 1, 2)
    elif video.shape[1] not in (1, 3):
        raise ValueError(
            f"`{name}` has shape {tuple(video.shape)}; expected 3 (RGB) or 1 (grey) channels, "
            f"as [F, H, W, 3] or [F, 3, H, W]."
        )
    if video.shape[0] == 0 or video.shape[2] == 0 or video.shape[3] == 0:
        raise EmptyMediaError(f"`{name}` has shape {tuple(video.shape)} and holds no frames; expected at least one.")
    if video.dtype == torch.uint8:
        pass
    elif video.is_floating_point():
        video = video.float()
        low, high = video.min().item(), video.max().item()
        if not (math.isfinite(low) and math.isfinite(high)) or low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"`{name}` holds float values in [{low:.3g}, {high:.3g}]; expected float frames in [0, 1] "
                f"(or uint8 in 0..255)."
            )
        video = video.clamp(0, 1)
    else:
        raise TypeError(f"`{name}` has dtype {video.dtype}; expected uint8 frames or float frames in [0, 1].")
    if video.shape[1] == 1:
        video = video.expand(-1, 3, -1, -1)
    return video.contiguous()


# --------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------


class _MediaFile:
    """An open container plus the names used in messages; wraps FFmpeg failures as CorruptMediaError."""

    def __init__(self, path: PathLike, kind: str):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"`path` must be a file path (str or os.PathLike); got {type(path).__name__}.")
        self.path = os.fspath(path)
        self.label = f"{kind} file {self.path!r}"
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"The {self.label} does not exist.")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"The {self.label} is a folder; expected a media file.")
        self.container = None

    def __enter__(self) -> "_MediaFile":
        try:
            self.container = av.open(self.path)
        except av.error.FFmpegError as error:
            raise CorruptMediaError(
                f"FFmpeg cannot read the {self.label} ({error.strerror}); expected an audio or video file."
            ) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.container.close()
        if exc_type is not None and issubclass(exc_type, av.error.FFmpegError):
            raise CorruptMediaError(
                f"FFmpeg failed while decoding the {self.label} ({exc.strerror}); "
                f"the file may be truncated or corrupt."
            ) from None

    @property
    def origin(self) -> float:
        # Timestamps are taken relative to the container's start so audio and video stay in step.
        start = self.container.start_time
        return start / av.time_base if start is not None else 0.0

    def stream_duration(self, stream) -> Optional[float]:
        """Seconds from the container start to the stream's declared end, when the file says."""
        if stream.duration is not None:
            start = stream.start_time * stream.time_base if stream.start_time is not None else 0.0
            return float(start + stream.duration * stream.time_base) - self.origin
        if self.container.duration is not None:
            return self.container.duration / av.time_base
        return None

    def audio_stream(self):
        if not self.container.streams.audio:
            raise NoAudioStreamError(
                f"The {self.label} has no audio track; expected a file with sound (wav, flac, mp3, ogg, m4a, "
                f"or a video with an audio track)."
            )
        return self.container.streams.audio[0]

    def video_stream(self):
        if not self.container.streams.video:
            raise NoVideoStreamError(
                f"The {self.label} has no video track; expected a video file (mp4, mkv, webm, mov, ...)."
            )
        return self.container.streams.video[0]


def probe(path: PathLike) -> dict:
    """Describe a media file without decoding it.

    Returns a dict with `duration` (seconds, float or None), `has_audio`, `has_video`, `sample_rate`
    (Hz) and `num_channels` of the first audio track, `frame_rate` (average fps, float), `num_frames`
    (from the header, or duration × fps when the header does not say; an estimate for
    variable-frame-rate files), `width` and `height` of the first video track; track values are
    None when that track is absent or the file does not say.
    """
    with _MediaFile(path, "media") as media:
        container = media.container
        info = {
            "duration": container.duration / av.time_base if container.duration is not None else None,
            "has_audio": bool(container.streams.audio),
            "has_video": bool(container.streams.video),
            "sample_rate": None,
            "num_channels": None,
            "frame_rate": None,
            "num_frames": None,
            "width": None,
            "height": None,
        }
        if container.streams.audio:
            stream = container.streams.audio[0]
            info.update(sample_rate=stream.sample_rate, num_channels=stream.channels)
        if container.streams.video:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            duration = media.stream_duration(stream)
            num_frames = stream.frames or (round(duration * rate) if rate and duration else None)
            info.update(
                frame_rate=float(rate) if rate else None,
                num_frames=num_frames,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
            )
        return info


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


@dataclass
class _AudioSource:
    waveform: torch.Tensor  # float32 [C, n]: all or part of the source
    sample_rate: int
    start: float  # seconds: time of waveform[:, 0]
    duration: Optional[float]  # seconds: length of the whole source, when known
    label: str  # "audio file 'x.wav'" / "audio array"


@dataclass
class _Fitted:
    data: torch.Tensor
    available: int  # output samples or frames that came from the source (the rest is padding)
    changes: List[str] = field(default_factory=list)
    description: str = ""

    def warn(self, stacklevel: int = 3) -> None:
        if self.changes:
            warnings.warn(f"{self.description}: {', '.join(self.changes)}.", stacklevel=stacklevel)


def _resample_margin(sample_rate: int) -> int:
    # Source samples kept on each side of the needed stretch so the resampling filter (a few dozen
    # taps) sees real neighbours: 50 ms is ample.
    return max(64, sample_rate // 20)


def _decode_audio_stretch(media: _MediaFile, stream, start: float, stop: Optional[float], after_seek: bool):
    """Decode from the demuxer's position until `stop` seconds (None: the end).

    Returns `(waveform [C, n] float32, start time, reached the end, samples in the last frame)`,
    or None when a seek landed after `start`.
    """
    converter = av.AudioResampler(format="fltp")  # float planar; layout and rate kept
    chunks, region_start, num_samples, last_frame_samples = [], None, 0, 0
    for frame in media.container.decode(stream):
        if region_start is None:
            region_start = frame.time - media.origin if frame.time is not None else 0.0
            if after_seek and region_start > start:
                return None
        for converted in converter.resample(frame):
            chunks.append(converted.to_ndarray())
            num_samples += chunks[-1].shape[1]
        last_frame_samples = frame.samples
        if stop is not None and region_start + num_samples / stream.sample_rate >= stop:
            reached_end = False
            break
    else:
        reached_end = True
        chunks.extend(converted.to_ndarray() for converted in converter.resample(None))
    waveform = np.concatenate(chunks, axis=1) if chunks else np.zeros((stream.channels, 0), np.float32)
    return torch.from_numpy(waveform), region_start or 0.0, reached_end, last_frame_samples


def _decode_audio_file(media: _MediaFile, start: float, stop: Optional[float]) -> _AudioSource:
    """Decode the first audio track from `start` to `stop` seconds (None: the end), with margins."""
    stream = media.audio_stream()
    sample_rate = stream.sample_rate
    margin = _resample_margin(sample_rate) / sample_rate
    stop = stop + margin if stop is not None else None
    decoded = None
    if start - margin > 0:
        media.container.seek(int((start - margin + media.origin) / stream.time_base), stream=stream, backward=True)
        decoded = _decode_audio_stretch(media, stream, start, stop, after_seek=True)
        if decoded is None:  # the seek overshot: decode from the beginning instead
            media.container.seek(0, stream=stream, backward=True)
    if decoded is None:
        decoded = _decode_audio_stretch(media, stream, start, stop, after_seek=False)
    waveform, region_start, reached_end, last_frame_samples = decoded

    declared_end = media.stream_duration(stream) if stream.duration is not None else None
    if waveform.shape[1] == 0:
        if start > 0 and declared_end:
            raise ClipTooShortError(
                f"offset={start:.2f} s is past the end of the {media.label} ({declared_end:.2f} s long)."
            )
        raise EmptyMediaError(f"The {media.label} contains no audio samples; expected at least one.")
    if reached_end and declared_end is not None:
        # AAC and MP3 pad their last frame; the container's declared end marks the real sound.
        excess = round((region_start + waveform.shape[1] / sample_rate - declared_end) * sample_rate)
        if 0 < excess < last_frame_samples:
            waveform = waveform[:, : waveform.shape[1] - excess]
    duration = region_start + waveform.shape[1] / sample_rate if reached_end else media.stream_duration(stream)
    return _AudioSource(waveform, sample_rate, region_start, duration, f"audio file {media.path!r}")


def _fit_audio(
    source: _AudioSource,
    *,
    offset: float,
    target_sample_rate: Optional[int],
    num_channels: Optional[int],
    num_samples: Optional[int],
) -> _Fitted:
    waveform, sample_rate = source.waveform, source.sample_rate
    source_channels = waveform.shape[0]
    target_sample_rate = target_sample_rate or sample_rate
    changes = []
    # Milliseconds: an AAC track is a few samples longer than what was encoded, and the crop should say so.
    length = f"{source.duration:.3f} s " if source.duration is not None else ""
    description = f"{source.label} was {length}at {sample_rate} Hz, {_channels_name(source_channels)}"

    if source.duration is not None and offset >= source.duration:
        raise ClipTooShortError(
            f"offset={offset:.2f} s is past the end of the {source.label} ({source.duration:.2f} s long)."
        )

    # Keep only the stretch needed (plus filter margin) before mixing and resampling.
    margin = _resample_margin(sample_rate)
    first = max(0, math.floor((offset - source.start) * sample_rate) - margin)
    last = None
    if num_samples is not None:
        last = math.ceil((offset - source.start + num_samples / target_sample_rate) * sample_rate) + margin
    waveform = waveform[:, first:last]
    start = source.start + first / sample_rate

    if num_channels is not None and num_channels != source_channels:
        if source_channels > 1:
            waveform = waveform.mean(dim=0, keepdim=True)
            changes.append(
                "mixed to mono"
                if num_channels == 1
                else f"mixed to mono and duplicated to {_channels_name(num_channels)}"
            )
        else:
            changes.append(f"duplicated to {_channels_name(num_channels)}")
        waveform = waveform.expand(num_channels, -1)

    if target_sample_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform.contiguous(), sample_rate, target_sample_rate)
        changes.append(f"resampled to {target_sample_rate} Hz")

    begin = round((offset - start) * target_sample_rate)
    if begin >= waveform.shape[1]:
        raise ClipTooShortError(f"offset={offset:.2f} s is past the end of the {source.label}.")
    if begin < 0:
        # The track starts after `offset` (audio that begins late in a video): silence until then.
        waveform = F.pad(waveform, (-begin, 0))
        begin = 0
    waveform = waveform[:, begin:]
    if num_samples is None:
        available = waveform.shape[1]
        if offset > 0:
            changes.append(f"started at {offset:.2f} s")
    else:
        available = min(num_samples, waveform.shape[1])
        if waveform.shape[1] > num_samples or (offset > 0 and available == num_samples):
            changes.append(
                f"cropped to {num_samples} samples ({num_samples / target_sample_rate:.3f} s) from {offset:.2f} s"
            )
        waveform = waveform[:, :num_samples]
        if available < num_samples:
            if offset > 0:
                changes.append(f"started at {offset:.2f} s")
            missing = num_samples - available
            changes.append(
                f"padded with {missing / target_sample_rate:.2f} s of silence "
                f"to {num_samples / target_sample_rate:.2f} s"
            )
            waveform = F.pad(waveform, (0, missing))

    peak = waveform.abs().max().item()
    if peak > 1 + 1e-3:
        changes.append(f"clipped to [-1, 1] (peak was {peak:.2f})")
    waveform = waveform.clamp(-1, 1).contiguous()
    return _Fitted(waveform, available, changes, description)


def _load_audio(source, *, sample_rate, target_sample_rate, num_channels, num_samples, offset) -> _Fitted:
    target_sample_rate = _check_sample_rate(target_sample_rate, "target_sample_rate", allow_none=True)
    num_channels = _check_positive_int(num_channels, "num_channels", allow_none=True)
    num_samples = _check_positive_int(num_samples, "num_samples", allow_none=True)
    offset = _check_offset(offset)
    if isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError(
                "`sample_rate` describes an array; a file's sample rate is read from the file, so leave it out."
            )
        with _MediaFile(source, "audio") as media:
            stop = None
            if num_samples is not None:
                stop = offset + num_samples / (target_sample_rate or media.audio_stream().sample_rate)
            decoded = _decode_audio_file(media, offset, stop)
    else:
        if sample_rate is None:
            raise ValueError(
                "`sample_rate` is required when the audio is an array; pass the rate (Hz) it was recorded at."
            )
        sample_rate = _check_sample_rate(sample_rate, "sample_rate")
        waveform = _audio_array_to_tensor(source, "audio")
        decoded = _AudioSource(waveform, sample_rate, 0.0, waveform.shape[1] / sample_rate, "audio array")
    return _fit_audio(
        decoded,
        offset=offset,
        target_sample_rate=target_sample_rate,
        num_channels=num_channels,
        num_samples=num_samples,
    )


def load_audio(
    source: Union[PathLike, ArrayLike],
    *,
    sample_rate: Optional[int] = None,
    target_sample_rate: Optional[int],
    num_channels: Optional[int],
    num_samples: Optional[int],
    offset: float = 0.0,
) -> torch.Tensor:
    """Load audio and fit it to a fixed format: float32 `[num_channels, num_samples]` in [-1, 1].

    Args:
        source: a file path (anything FFmpeg decodes: wav, flac, mp3, ogg, m4a, or the first audio
            track of mp4/mkv/webm/...), or a numpy array / torch tensor `[T]` or `[C, T]` (float in
            [-1, 1], or int16/int32/uint8 PCM).
        sample_rate: the rate of an array source in Hz; required for arrays, not allowed for files.
        target_sample_rate: output rate in Hz (resampled with `torchaudio.functional.resample`);
            None keeps the source rate.
        num_channels: output channels; more channels are mixed to mono by their mean (then repeated
            when `num_channels` > 1), mono is repeated to fill the channels. None keeps them.
        num_samples: output length: the audio from `offset` is cropped to it, or zero-padded at
            the end. None keeps everything from `offset`.
        offset: seconds from the start of the source where the output begins.

    Every change made (mixing, resampling, cropping, padding, clipping) is reported in one
    warning, e.g. "audio file 'a.wav' was 3.000 s at 44100 Hz, stereo: mixed to mono, resampled
    to 16000 Hz, cropped to 25600 samples (1.600 s) from 0.00 s."

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptMediaError: FFmpeg cannot read or decode the file.
        NoAudioStreamError: the file has no audio track.
        EmptyMediaError: the file or array holds no samples.
        ClipTooShortError: `offset` is at or past the end.
        ValueError, TypeError: bad arguments (array rank or dtype, missing `sample_rate`, ...).
        (The error classes above are ValueError subclasses; see `MediaError`.)
    """
    fitted = _load_audio(
        source,
        sample_rate=sample_rate,
        target_sample_rate=target_sample_rate,
        num_channels=num_channels,
        num_samples=num_samples,
        offset=offset,
    )
    fitted.warn()
    return fitted.data


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------


@dataclass
class _TimedFrame:
    time: float  # seconds from the container start
    image: Any  # an av.VideoFrame, or an index into an array source


def _file_frames(media: _MediaFile, stream, start: float) -> Iterator[_TimedFrame]:
    """Frames from about `start` on; seeks to the key frame at or before it when `start` > 0."""
    if start > 0:
        media.container.seek(int((start + media.origin) / stream.time_base), stream=stream, backward=True)
    for index, frame in enumerate(media.container.decode(stream)):
        time = frame.time - media.origin if frame.time is not None else None
        if index == 0 and start > 0 and (time is None or time > start):
            # The seek landed after `start` (or gave no timestamp): restart from the beginning.
            media.container.seek(0, stream=stream, backward=True)
            yield from _file_frames(media, stream, 0.0)
            return
        yield _TimedFrame(time if time is not None else index / float(stream.average_rate or 1), frame)


def _pick_frames(frames: Iterator[_TimedFrame], frame_period: float, offset: float, rate: float, count: Optional[int]):
    """For output times `offset + k / rate`, the frame on screen then (the latest one that started).

    Returns the picked frames (fewer than `count` when the source ends first) and the source's end
    time when it was reached (None when decoding stopped early).
    """
    picked, current = [], None
    upcoming = next(frames, None)
    # Containers store times rounded (Matroska/WebM to 1 ms): a frame that starts within an
    # eighth of a frame period after the output time counts as started.
    eps = frame_period / 8
    while count is None or len(picked) < count:
        time = offset + len(picked) / rate
        while upcoming is not None and upcoming.time <= time + eps:
            current, upcoming = upcoming, next(frames, None)
        if current is None:
            if upcoming is None:
                break
            current, upcoming = upcoming, next(frames, None)  # the stream starts after `offset`
        if upcoming is None and time >= current.time + frame_period - eps:
            break
        picked.append(current)
    end = current.time + frame_period if upcoming is None and current is not None else None
    return picked, end


def _to_float_frames(video: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """uint8 or float `[F, 3, H, W]` -> float 0..1, scaled to cover `size` (keeping the aspect ratio)
    and center-cropped to it; in chunks, so large source frames are never all float at once."""
    chunks = []
    for chunk in video.split(16):
        chunk = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
        if size is not None and tuple(chunk.shape[-2:]) != size:
            height, width = size
            source_height, source_width = chunk.shape[-2:]
            scale = max(height / source_height, width / source_width)
            scaled = (max(height, round(source_height * scale)), max(width, round(source_width * scale)))
            # Antialiased bilinear averages over the footprint when shrinking, like an area filter.
            chunk = F.interpolate(chunk, size=scaled, mode="bilinear", antialias=True, align_corners=False)
            top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
            chunk = chunk[..., top : top + height, left : left + width].clamp(0, 1)
        chunks.append(chunk)
    return torch.cat(chunks)


def _load_video(source, *, frame_rate, target_frame_rate, num_frames, height, width, offset) -> _Fitted:
    target_frame_rate = _check_positive_rate(target_frame_rate, "target_frame_rate", allow_none=True)
    target_frame_rate = float(target_frame_rate) if target_frame_rate is not None else None
    num_frames = _check_positive_int(num_frames, "num_frames", allow_none=True)
    height = _check_positive_int(height, "height", allow_none=True)
    width = _check_positive_int(width, "width", allow_none=True)
    if (height is None) != (width is None):
        raise ValueError(f"`height` and `width` go together; got height={height!r}, width={width!r}.")
    offset = _check_offset(offset)

    if isinstance(source, (str, os.PathLike)):
        if frame_rate is not None:
            raise ValueError(
                "`frame_rate` describes an array; a file's frame rate is read from the file, so leave it out."
            )
        with _MediaFile(source, "video") as media:
            stream = media.video_stream()
            rate = stream.average_rate or stream.guessed_rate
            source_rate = float(rate) if rate else None
            duration = media.stream_duration(stream)
            label = f"video file {media.path!r}"
            description = f"{label} was " + (f"{duration:.2f} s, " if duration is not None else "")
            description += f"{source_rate:.4g} fps, " if source_rate else ""
            description += f"{stream.codec_context.width}x{stream.codec_context.height}"
            frame_period = 1 / (source_rate or target_frame_rate or 1)
            picked, end = _pick_frames(
                _file_frames(media, stream, offset),
                frame_period,
                offset,
                target_frame_rate or source_rate or 1,
                num_frames,
            )
            # Convert each distinct picked frame once (slowing down repeats frames).
            images = {}
            for timed in picked:
                if id(timed) not in images:
                    images[id(timed)] = torch.from_numpy(timed.image.to_ndarray(format="rgb24")).permute(2, 0, 1)
            video = torch.stack([images[id(timed)] for timed in picked]) if picked else None
    else:
        if frame_rate is None:
            raise ValueError("`frame_rate` is required when the video is an array or a list of images; pass its fps.")
        source_rate = float(_check_positive_rate(frame_rate, "frame_rate"))
        frames = _video_array_to_tensor(source, "video")
        label = "video array" if not isinstance(source, (list, tuple)) else "video (list of images)"
        duration = frames.shape[0] / source_rate
        count = f"{frames.shape[0]} frame" + ("s" if frames.shape[0] != 1 else "")
        description = (
            f"{label} was {count} ({duration:.2f} s) at {source_rate:.4g} fps, {frames.shape[3]}x{frames.shape[2]}"
        )
        timed = (_TimedFrame(index / source_rate, index) for index in range(frames.shape[0]))
        frame_period = 1 / source_rate
        picked, end = _pick_frames(timed, frame_period, offset, target_frame_rate or source_rate, num_frames)
        video = frames[[timed.image for timed in picked]] if picked else None

    if video is None:
        if end is not None or (offset > 0 and duration is not None and offset >= duration):
            length = f" ({duration:.2f} s long)" if duration is not None else ""
            raise ClipTooShortError(f"offset={offset:.2f} s is past the end of the {label}{length}.")
        raise EmptyMediaError(
            f"The {label} contains no video frames; expected at least one (the file may be truncated)."
        )

    output_rate = target_frame_rate or source_rate
    changes = []
    if target_frame_rate is not None and source_rate is not None and abs(target_frame_rate - source_rate) > 1e-6:
        changes.append(f"resampled to {target_frame_rate:.4g} fps (nearest earlier frame)")
    if height is not None and tuple(video.shape[-2:]) != (height, width):
        aspect_kept = abs(video.shape[-1] / video.shape[-2] - width / height) < 1e-6
        changes.append(
            f"resized to {width}x{height}" + ("" if aspect_kept else " (scaled to cover, then center-cropped)")
        )
    video = _to_float_frames(video, (height, width) if height is not None else None)
    available = video.shape[0]
    if num_frames is not None and available == num_frames and (offset > 0 or end is None):
        changes.append(f"cropped to {num_frames} frames ({num_frames / output_rate:.2f} s) from {offset:.2f} s")
    if num_frames is not None and available < num_frames:
        if offset > 0:
            changes.append(f"started at {offset:.2f} s")
        changes.append(f"padded from {available} to {num_frames} frames by repeating the last frame")
        video = torch.cat([video, video[-1:].expand(num_frames - available, -1, -1, -1)])
    return _Fitted(video.contiguous(), available, changes, description)


def load_video(
    source: Union[PathLike, ArrayLike, Sequence[Image.Image]],
    *,
    frame_rate: Optional[float] = None,
    target_frame_rate: Optional[float],
    num_frames: Optional[int],
    height: Optional[int],
    width: Optional[int],
    offset: float = 0.0,
) -> torch.Tensor:
    """Load a video and fit it to a fixed format: float32 `[num_frames, 3, height, width]` in [0, 1].

    Args:
        source: a file path (the first video track of anything FFmpeg decodes: mp4, mkv, webm,
            mov, gif, ...); a numpy array / torch tensor of one video, `[F, H, W, 3]` (or
            `[F, 3, H, W]`; 1 channel for grey), uint8 or float in [0, 1]; or a list of PIL images.
            A batch `[B, F, ...]` is refused: load one video at a time.
        frame_rate: the fps of an array or image-list source; required for them, not allowed for files.
        target_frame_rate: output fps. Output frame k shows the source frame on screen at time
            `offset + k / target_frame_rate` (the latest one that started by then), so 30 → 10 fps
            keeps every third frame. None keeps the source's (average) rate.
        num_frames: output length: the frames from `offset` are cropped to it, or padded by
            repeating the last frame. None keeps every frame from `offset`.
        height, width: output size: frames are scaled (antialiased bilinear, keeping the aspect
            ratio) to cover it, then center-cropped. None (both) keeps the source size.
        offset: seconds from the start of the source where the output begins.

    Changes (resampling, resizing, cropping, padding) are reported in one warning.

    Raises:
        FileNotFoundError, CorruptMediaError, NoVideoStreamError, EmptyMediaError,
        ClipTooShortError, ValueError, TypeError: as for `load_audio`, for video.
    """
    fitted = _load_video(
        source,
        frame_rate=frame_rate,
        target_frame_rate=target_frame_rate,
        num_frames=num_frames,
        height=height,
        width=width,
        offset=offset,
    )
    fitted.warn()
    return fitted.data


# --------------------------------------------------------------------------------------------
# Clips for training
# --------------------------------------------------------------------------------------------


def read_clip(
    path: PathLike,
    start: float,
    *,
    num_frames: int,
    frame_rate: float,
    height: int,
    width: int,
    num_samples: int,
    sample_rate: int,
    num_channels: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read one aligned clip from a file with sound and picture, for training data sets.

    Video frames are those on screen at `start + k / frame_rate` (resized and center-cropped to
    `height` × `width`), audio the samples from `start` on, resampled to `sample_rate` and mixed to
    `num_channels`: `(video [num_frames, 3, height, width] float 0..1, audio [num_channels,
    num_samples] float -1..1)`. Nothing is warned; resampling and resizing are expected here.

    The clip must lie inside both tracks; audio may fall short by at most one video frame's worth
    of samples (encoders' track lengths differ that much), which is zero-padded. Choose `start`
    with `probe(path)["duration"]`.

    Raises:
        FileNotFoundError: the file does not exist.
        MediaError subclasses, for the data set to catch and skip the file: CorruptMediaError,
        NoAudioStreamError, NoVideoStreamError, EmptyMediaError, ClipTooShortError.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path; got {type(path).__name__}.")
    start = _check_offset(start, "start")
    num_frames = _check_positive_int(num_frames, "num_frames")
    num_samples = _check_positive_int(num_samples, "num_samples")
    frame_rate = float(_check_positive_rate(frame_rate, "frame_rate"))
    sample_rate = _check_sample_rate(sample_rate, "sample_rate")
    audio = _load_audio(
        path,
        sample_rate=None,
        target_sample_rate=sample_rate,
        num_channels=num_channels,
        num_samples=num_samples,
        offset=start,
    )
    video = _load_video(
        path,
        frame_rate=None,
        target_frame_rate=frame_rate,
        num_frames=num_frames,
        height=height,
        width=width,
        offset=start,
    )
    if video.available < num_frames:
        raise ClipTooShortError(
            f"The video file {os.fspath(path)!r} ends {video.available} frames into a clip of {num_frames} frames at "
            f"{frame_rate:g} fps from {start:.2f} s."
        )
    if audio.available < num_samples - math.floor(sample_rate / frame_rate):
        raise ClipTooShortError(
            f"The audio of {os.fspath(path)!r} ends {audio.available / sample_rate:.2f} s into a clip of "
            f"{num_samples / sample_rate:.2f} s from {start:.2f} s."
        )
    return video.data, audio.data


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def mp4_audio_sample_rates() -> Tuple[int, ...]:
    """Sample rates (Hz) PyAV's AAC encoder accepts: 7350 to 96000 (8000, 11025, 16000, 22050,
    44100, 48000, ...). Lower rates such as 4000 Hz cannot go into an mp4; write a wav instead."""
    return tuple(sorted(av.codec.Codec("aac", "w").audio_rates))


def _frames_to_uint8(frames: Any, name: str) -> np.ndarray:
    video = _video_array_to_tensor(frames, name)
    if video.dtype != torch.uint8:
        video = (video * 255).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).contiguous().numpy()


def _is_pipeline_output(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("frames", "audio", "frame_rate", "sample_rate"))


def sample_paths(path: PathLike, count: int) -> List[str]:
    """One file per sample: `path` itself for one, `name_000.ext`, `name_001.ext`, ... for a batch."""
    path = os.fspath(path)
    if count == 1:
        return [path]
    stem, suffix = os.path.splitext(path)
    return [f"{stem}_{index:03d}{suffix}" for index in range(count)]


def _export_pipeline_output(output, path: PathLike, writer, force: bool) -> List[str]:
    """Write every sample of an `MMDiffusionPipelineOutput` ("np", "pt" or "pil"), refusing before writing any file
    if one of them exists (without `force`)."""
    if isinstance(output.frames, torch.Tensor) and output.frames.ndim == 5 and output.frames.shape[2] > 4:
        raise ValueError("this is a 'latent' output; generate with output_type 'np', 'pt' or 'pil' to export it")
    paths = sample_paths(path, len(output.frames))
    for target in paths:
        check_can_write(target, force)
    return [writer(output.frames[i], output.audio[i], target) for i, target in enumerate(paths)]


def export_to_video(
    frames: Union[ArrayLike, Sequence[Image.Image], Any],
    path: PathLike,
    frame_rate: Optional[float] = None,
    audio: Optional[ArrayLike] = None,
    sample_rate: Optional[int] = None,
    *,
    force: bool = False,
) -> Union[str, List[str]]:
    """Write frames (and optionally their sound) as an H.264 video with AAC audio; return the path.

    Given a pipeline output (`MMDiffusionPipelineOutput`) instead of frames, writes each sample with its sound at
    the output's rates: `path` for a single sample, `name_000.mp4`, `name_001.mp4`, ... for a batch, and returns
    the list of paths.

    Args:
        frames: one video as numpy / torch `[F, H, W, 3]` (the pipelines' "np" output, float in
            [0, 1]) or `[F, 3, H, W]` (the "pt" output), uint8 or float in [0, 1]; or a list of PIL
            images (the "pil" output).
        path: output file ending in .mp4, .m4v, .mov or .mkv; written atomically (temporary name in
            the same folder, renamed when complete).
        frame_rate: fps, kept exactly (a float such as 29.97 is taken as the nearest fraction with a
            small denominator, e.g. 2997/100; pass `fractions.Fraction(30000, 1001)` for NTSC).
        audio: `[C, T]` or `[T]` float in [-1, 1], mono or stereo; encoded as AAC.
        sample_rate: the audio's rate in Hz, required with `audio`; one of
            `mp4_audio_sample_rates()` (e.g. 8000, 11025, 16000, 22050, 44100, 48000).
        force: overwrite an existing file.

    The video is yuv420p H.264 (libx264, CRF 18), which needs even sizes: an odd width or height
    is padded by one repeated edge column or row (with a warning). The file lasts F / frame_rate
    seconds; the audio track T / sample_rate seconds.

    Raises:
        FileExistsError: `path` exists and `force` is False.
        ValueError, TypeError: bad frames, audio, rates or suffix.
    """
    if _is_pipeline_output(frames):
        output = frames

        def write_one(sample_frames, sample_audio, target):
            return export_to_video(
                sample_frames, target, output.frame_rate, sample_audio, output.sample_rate, force=force
            )

        return _export_pipeline_output(output, path, write_one, force)
    if frame_rate is None:
        raise ValueError("`frame_rate` is required when exporting frames; pass the video's fps.")
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_EXPORT_SUFFIXES:
        raise ValueError(
            f"`path` {path!r} must end in one of {', '.join(VIDEO_EXPORT_SUFFIXES)} (H.264 video with AAC audio)."
        )
    frame_rate = _check_positive_rate(frame_rate, "frame_rate")
    exact = isinstance(frame_rate, (int, Fraction))
    rate = Fraction(frame_rate) if exact else Fraction(float(frame_rate)).limit_denominator(100_000)
    images = _frames_to_uint8(frames, "frames")
    waveform = None
    if audio is not None:
        if sample_rate is None:
            raise ValueError("`sample_rate` is required with `audio`; pass the audio's rate in Hz.")
        sample_rate = _check_sample_rate(sample_rate, "sample_rate")
        if sample_rate not in mp4_audio_sample_rates():
            raise ValueError(
                f"`sample_rate`={sample_rate} Hz cannot be encoded as AAC; expected one of "
                f"{', '.join(map(str, mp4_audio_sample_rates()))} Hz (resample first, or use export_to_wav)."
            )
        waveform = _audio_array_to_tensor(audio, "audio")
        if waveform.shape[0] > 2:
            raise ValueError(f"`audio` has {waveform.shape[0]} channels; expected mono or stereo [1 or 2, T].")
        waveform = waveform.clamp(-1, 1).contiguous().numpy()
    elif sample_rate is not None:
        raise ValueError("`sample_rate` was given without `audio`; pass both or neither.")

    height, width = images.shape[1:3]
    even = (height + height % 2, width + width % 2)
    if even != (height, width):
        warnings.warn(
            f"Frames are {width}x{height}; padded to {even[1]}x{even[0]} by repeating the edge, "
            f"as H.264 (yuv420p) needs even sizes.",
            stacklevel=2,
        )
        images = np.pad(images, ((0, 0), (0, even[0] - height), (0, even[1] - width), (0, 0)), mode="edge")

    options = {}
    if suffix != ".mkv":
        # faststart: index at the front, for streaming. A movie timescale of the sample rate keeps
        # the audio's declared length exact to the sample (the default, 1000, rounds it to 1 ms).
        options = {"movflags": "faststart", "movie_timescale": str(sample_rate or 1000)}
    with atomic_path(path, force=force) as temporary:
        with av.open(str(temporary), mode="w", options=options) as container:
            video_stream = container.add_stream("libx264", rate=rate, options={"crf": "18"})
            video_stream.width, video_stream.height, video_stream.pix_fmt = even[1], even[0], "yuv420p"
            audio_stream = None
            if waveform is not None:
                layout = "mono" if waveform.shape[0] == 1 else "stereo"
                audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
            for index, image in enumerate(images):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                container.mux(video_stream.encode(frame))
            container.mux(video_stream.encode(None))
            if audio_stream is not None:
                # One frame with every sample: PyAV cuts it into the encoder's 1024-sample frames.
                frame = av.AudioFrame.from_ndarray(waveform, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = sample_rate, 0
                container.mux(audio_stream.encode(frame))
                container.mux(audio_stream.encode(None))
    return path


def export_to_wav(
    audio: Union[ArrayLike, Any], path: PathLike, sample_rate: Optional[int] = None, *, force: bool = False
) -> Union[str, List[str]]:
    """Write `[C, T]` or `[T]` audio (float in [-1, 1], clipped) as a 16-bit PCM wav; return the path.

    Given a pipeline output instead, writes each sample's soundtrack (one file, or `name_000.wav`, ... for a
    batch) and returns the list of paths.

    Any positive sample rate is allowed. Written atomically; refuses to overwrite an existing file
    unless `force`.
    """
    if _is_pipeline_output(audio):
        output = audio

        def write_one(sample_frames, sample_audio, target):
            return export_to_wav(sample_audio, target, output.sample_rate, force=force)

        return _export_pipeline_output(output, path, write_one, force)
    if sample_rate is None:
        raise ValueError("`sample_rate` is required when exporting audio; pass its rate in Hz.")
    path = os.fspath(path)
    sample_rate = _check_sample_rate(sample_rate, "sample_rate")
    waveform = _audio_array_to_tensor(audio, "audio").clamp(-1, 1)
    pcm = (waveform * 32767).round().to(torch.int16).T.contiguous().numpy()  # interleaved [T, C]
    with atomic_path(path, force=force) as temporary:
        with wave.open(str(temporary), "wb") as file:
            file.setnchannels(waveform.shape[0])
            file.setsampwidth(2)
            file.setframerate(sample_rate)
            file.writeframes(pcm.tobytes())
    return path
