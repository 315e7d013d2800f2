"""Training data sets: clips with sound from a folder of videos, and single frames for super-resolution.

Items follow the model's conventions: `{"video": [F, 3, H, W], "audio": [C, T]}` float32 in [-1, 1] for the
coupled model, `{"high_res": [3, H, W], "low_res": [3, h, w]}` in [-1, 1] for the super-resolution model.
Files are decoded with PyAV (`media.read_clip`) inside the items, so a `DataLoader` spreads the decoding
over its worker processes. Random choices (clip start, flips, degradations) draw from torch's global
generator, which `DataLoader` seeds differently in every worker.
"""

import io
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .. import media

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")

# How often an item whose decoding fails is retried from the start of its file, then on other files.
_MAX_ATTEMPTS = 3


def find_video_files(root: Union[str, os.PathLike], suffixes: Sequence[str] = VIDEO_SUFFIXES) -> List[Path]:
    """Video files under `root`, recursively, in a stable (sorted) order; hidden files and folders are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist or is not a folder")
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found.extend(
            Path(folder) / name
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes
        )
    return sorted(found)


class VideoFolderDataset(Dataset):
    """Clips of a fixed format from every video file under a folder (mp4, mkv, webm, avi, mov, m4v; recursively).

    Each file is cut into as many non-overlapping clips of `num_frames / frame_rate` seconds as it holds; an
    item is one of them, starting at a random moment within its stretch, its frames resized to cover
    `height` × `width` and center-cropped, its sound resampled to `sample_rate` and mixed to `num_channels`.
    Files without a sound track, shorter than one clip, or unreadable are skipped with one warning each; with
    `sample_rate=None` the sound is not read (frames for the super-resolution model) and files without
    sound are kept.

    Items: `{"video": [num_frames, 3, height, width]}` and, with sound, `"audio": [num_channels, num_samples]`,
    float32 in [-1, 1].

    Args:
        root: the folder.
        num_frames, frame_rate, height, width: the clip's frames.
        sample_rate: the clip's audio rate in Hz, or None for no audio.
        num_samples: audio samples per clip (default: the clip's duration at `sample_rate`).
        num_channels: audio channels (1: mono mix).
        random_flip: mirror half of the clips left-right.

    Raises:
        FileNotFoundError: `root` is not a folder.
        ValueError: no file under `root` gives a clip.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        *,
        num_frames: int,
        frame_rate: float,
        height: int,
        width: int,
        sample_rate: Optional[int] = None,
        num_samples: Optional[int] = None,
        num_channels: int = 1,
        random_flip: bool = True,
    ):
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                            ("num_channels", num_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(frame_rate, bool) or not isinstance(frame_rate, (int, float)) or not frame_rate > 0:
            raise ValueError(f"frame_rate must be a positive number, got {frame_rate!r}")
        if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                        or sample_rate < 1):
            raise ValueError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")
        self.clip_seconds = num_frames / frame_rate
        if num_samples is None and sample_rate is not None:
            num_samples = round(self.clip_seconds * sample_rate)
        self.clip_format = dict(num_frames=num_frames, frame_rate=frame_rate, height=height, width=width)
        self.audio_format = (
            dict(num_samples=num_samples, sample_rate=sample_rate, num_channels=num_channels)
            if sample_rate is not None else None
        )
        self.random_flip = random_flip
        self.root = Path(root)

        files = find_video_files(root)
        self.files: List[Tuple[Path, float]] = []  # (path, latest clip start in seconds)
        self.items: List[Tuple[int, int]] = []  # (file index, stretch index)
        skipped = 0
        for path in files:
            reason, latest_start = self._check_file(path)
            if reason is not None:
                warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
                skipped += 1
                continue
            stretches = max(1, math.floor(latest_start / self.clip_seconds) + 1)
            self.items.extend((len(self.files), stretch) for stretch in range(stretches))
            self.files.append((path, latest_start))
        if not self.items:
            found = f"{len(files)} video file(s), all skipped" if files else "no video files"
            raise ValueError(
                f"data folder {str(self.root)!r} gives no training clip of {num_frames} frames at {frame_rate:g} fps "
                f"({found}; expected {', '.join(VIDEO_SUFFIXES)} files"
                + (" with sound" if sample_rate is not None else "") + f" of at least {self.clip_seconds:.2f} s)"
            )

    def _check_file(self, path: Path) -> Tuple[Optional[str], float]:
        """Why the file gives no clip (None if it does), and the latest clip start in seconds."""
        try:
            info = media.probe(path)
        except media.MediaError as error:
            return f"unreadable ({error})", 0.0
        if not info["has_video"]:
            return "no video track", 0.0
        if self.audio_format is not None and not info["has_audio"]:
            return "no audio track", 0.0
        duration = info["duration"]
        if duration is None:
            return "its duration is unknown", 0.0
        # Allow half a frame of rounding in container durations.
        latest_start = duration - self.clip_seconds
        if latest_start < -0.5 / self.clip_format["frame_rate"]:
            return f"{duration:.2f} s is shorter than one clip ({self.clip_seconds:.2f} s)", 0.0
        return None, max(0.0, latest_start)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, path: Path, start: float) -> Dict[str, torch.Tensor]:
        if self.audio_format is not None:
            video, audio = media.read_clip(path, start, **self.clip_format, **self.audio_format)
            return {"video": video, "audio": audio}
        with warnings.catch_warnings():
            # load_video reports its resizing and resampling, which are expected here.
            warnings.simplefilter("ignore")
            video = media.load_video(
                path,
                target_frame_rate=self.clip_format["frame_rate"],
                num_frames=self.clip_format["num_frames"],
                height=self.clip_format["height"],
                width=self.clip_format["width"],
                offset=start,
            )
        return {"video": video}

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"VideoFolderDataset index {index} is out of range for {len(self)} clips")
        file_index, stretch = self.items[index]
        for attempt in range(_MAX_ATTEMPTS):
            path, latest_start = self.files[file_index]
            stretch_start = stretch * self.clip_seconds
            stretch_end = min(stretch_start + self.clip_seconds, latest_start)
            start = stretch_start + float(torch.rand(())) * max(0.0, stretch_end - stretch_start)
            try:
                try:
                    item = self._read(path, min(start, latest_start))
                except media.ClipTooShortError:
                    # Container durations can overstate a track; the start of the file is the safest clip.
                    item = self._read(path, 0.0)
                break
            except media.MediaError as error:
                warnings.warn(f"skipping {path} for this clip: {error}", stacklevel=2)
                # Fall back on another file, deterministically, so a broken file cannot end training.
                file_index, stretch = (file_index + 1) % len(self.files), 0
        else:
            raise ValueError(f"{_MAX_ATTEMPTS} files in a row failed to decode under {str(self.root)!r}")
        if self.random_flip and bool(torch.rand(()) < 0.5):
            item["video"] = item["video"].flip(-1)
        item["video"] = item["video"] * 2.0 - 1.0
        return item


def _jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode `[3, H, W]` in [-1, 1] as JPEG at `quality` and decode it again."""
    pixels = ((image.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"), dtype=np.float32))
    return decoded.permute(2, 0, 1) / 127.5 - 1.0


class SuperResolutionFrames(Dataset):
    """Single frames of the clips of another data set, each with its low-resolution version, for training the
    super-resolution model.

    Item `i` is frame `i % F` of clip `i // F`. The low-resolution frame is the high-resolution one shrunk
    (antialiased bicubic) to `low_res_size`; with `degrade`, as the official training data, it then gets
    Gaussian noise (σ uniform in [0, 20] of 255 levels) half of the time and a JPEG round trip (quality
    uniform in [20, 80]) half of the time, so the model learns to clean up what the first stage produces.

    Args:
        clips: a data set whose items hold `"video"` `[F, 3, H, W]` in [-1, 1] (a `VideoFolderDataset` without
            sound, or `SoundingShapesDataset`), with square frames of the model's `sample_size`.
        low_res_size: side of the low-resolution frames.
        degrade: add the official noise and JPEG degradations.

    Items: `{"high_res": [3, H, W], "low_res": [3, low_res_size, low_res_size]}` in [-1, 1].
    """

    def __init__(self, clips: Dataset, low_res_size: int, degrade: bool = True):
        if isinstance(low_res_size, bool) or not isinstance(low_res_size, int) or low_res_size < 1:
            raise ValueError(f"low_res_size must be a positive integer, got {low_res_size!r}")
        if len(clips) == 0:
            raise ValueError("clips must hold at least one clip")
        self.clips = clips
        self.frames_per_clip = clips[0]["video"].shape[0]
        self.low_res_size = low_res_size
        self.degrade = degrade

    def __len__(self) -> int:
        return len(self.clips) * self.frames_per_clip

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"SuperResolutionFrames index {index} is out of range for {len(self)} frames")
        index %= len(self)
        high_res = self.clips[index // self.frames_per_clip]["video"][index % self.frames_per_clip]
        size = (self.low_res_size, self.low_res_size)
        low_res = F.interpolate(high_res[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        low_res = low_res.clamp(-1, 1)
        if self.degrade:
            if bool(torch.rand(()) < 0.5):
                sigma = float(torch.rand(())) * 20.0 / 127.5
                low_res = low_res + sigma * torch.randn_like(low_res)
            if bool(torch.rand(()) < 0.5):
                low_res = _jpeg_round_trip(low_res, quality=20 + int(torch.randint(0, 61, ())))
        return {"high_res": high_res, "low_res": low_res}
