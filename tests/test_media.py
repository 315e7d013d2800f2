import warnings
import wave
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mmdiffusion import media


def sine(frequency, seconds, sample_rate, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * sample_rate)) / sample_rate)).astype(
        np.float32
    )


def dominant_frequency(signal, sample_rate):
    spectrum = np.abs(np.fft.rfft(np.asarray(signal, dtype=np.float64)))
    return np.argmax(spectrum) * sample_rate / len(signal)


def single_warning(record):
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    return messages[0]


def numbered_frames(num_frames, height, width):
    """uint8 [F, H, W, 3]: frame i is flat grey of level 5 * i, so a decoded frame tells its index."""
    levels = (5 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


@pytest.fixture(scope="module")
def av_file(tmp_path_factory):
    """A 1.6 s mp4: 48 numbered 320x240 frames at 30 fps, and stereo 16 kHz audio that is silent
    but for a 440 Hz burst at 1.0-1.1 s."""
    path = tmp_path_factory.mktemp("av") / "clip.mp4"
    audio = np.zeros((2, 25600), np.float32)
    audio[:, 16000:17600] = sine(440, 0.1, 16000)
    media.export_to_video(numbered_frames(48, 240, 320), path, 30, audio=audio, sample_rate=16000)
    return path


# ---------------------------------------------------------------------------- audio


def test_stereo_44k_wav_becomes_16k_mono_and_keeps_its_tone(tmp_path):
    left, right = sine(440, 3.0, 44100, 0.5), sine(440, 3.0, 44100, 0.25)
    path = media.export_to_wav(np.stack([left, right]), tmp_path / "tone.wav", 44100)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        audio = media.load_audio(path, target_sample_rate=16000, num_channels=1, num_samples=25600)
    message = single_warning(record)
    assert "3.000 s at 44100 Hz, stereo" in message
    assert (
        "mixed to mono" in message
        and "resampled to 16000 Hz" in message
        and "cropped to 25600 samples (1.600 s) from 0.00 s" in message
    )

    assert audio.shape == (1, 25600) and audio.dtype == torch.float32
    assert abs(dominant_frequency(audio[0], 16000) - 440) < 1
    assert audio.abs().max().item() == pytest.approx(0.375, abs=0.01)  # mean of the two channels

    # At its own rate the 16-bit wav round trip is exact to one quantisation step.
    native = media.load_audio(path, target_sample_rate=None, num_channels=None, num_samples=None)
    assert native.shape == (2, 3 * 44100)
    assert torch.allclose(native, torch.from_numpy(np.stack([left, right])), atol=1 / 32767)
    assert abs(dominant_frequency(native[0], 44100) - 440) < 1


def test_short_clip_is_zero_padded():
    clip = sine(440, 1.0, 16000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        audio = media.load_audio(clip, sample_rate=16000, target_sample_rate=16000, num_channels=1, num_samples=25600)
    assert "padded with 0.60 s of silence to 1.60 s" in single_warning(record)
    assert torch.equal(audio[0, :16000], torch.from_numpy(clip))
    assert torch.count_nonzero(audio[0, 16000:]) == 0


def test_offset_crops_from_that_time_and_mono_is_duplicated():
    ramp = np.linspace(-1, 1, 48000, dtype=np.float32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        audio = media.load_audio(
            torch.from_numpy(ramp),
            sample_rate=16000,
            target_sample_rate=16000,
            num_channels=2,
            num_samples=8000,
            offset=1.25,
        )
    message = single_warning(record)
    assert "duplicated to stereo" in message and "cropped to 8000 samples (0.500 s) from 1.25 s" in message
    assert torch.equal(audio, torch.from_numpy(ramp[20000:28000]).expand(2, -1))


def test_exact_fit_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        audio = media.load_audio(
            np.zeros((1, 100), np.float32), sample_rate=8000, target_sample_rate=8000, num_channels=1, num_samples=100
        )
    assert audio.shape == (1, 100)


def test_audio_errors(tmp_path, av_file):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        media.load_audio(tmp_path / "missing.wav", target_sample_rate=16000, num_channels=1, num_samples=10)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"this is not audio " * 100)
    with pytest.raises(media.CorruptMediaError, match="corrupt.wav"):
        media.load_audio(corrupt, target_sample_rate=16000, num_channels=1, num_samples=10)
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(16000)
    with pytest.raises(media.EmptyMediaError, match="no audio samples"):
        media.load_audio(empty, target_sample_rate=16000, num_channels=1, num_samples=10)
    with pytest.raises(media.ClipTooShortError, match="past the end"):
        media.load_audio(av_file, target_sample_rate=16000, num_channels=1, num_samples=10, offset=5.0)

    common = dict(target_sample_rate=16000, num_channels=1, num_samples=10)
    with pytest.raises(ValueError, match="sample_rate` is required"):
        media.load_audio(np.zeros(100, np.float32), **common)
    with pytest.raises(media.EmptyMediaError, match="no audio samples"):
        media.load_audio(np.zeros((1, 0), np.float32), sample_rate=16000, **common)
    with pytest.raises(ValueError, match="batch"):
        media.load_audio(np.zeros((2, 1, 100), np.float32), sample_rate=16000, **common)
    with pytest.raises(ValueError, match=r"expected audio \[T\] or \[C, T\]"):
        media.load_audio(np.zeros((1, 1, 1, 100), np.float32), sample_rate=16000, **common)
    with pytest.raises(ValueError, match="transpose"):
        media.load_audio(np.zeros((100, 2), np.float32), sample_rate=16000, **common)
    with pytest.raises(ValueError, match="past the end"):
        media.load_audio(np.zeros(100, np.float32), sample_rate=16000, offset=1.0, **common)


def test_video_file_without_audio_is_a_clear_audio_error(tmp_path):
    path = media.export_to_video(numbered_frames(3, 16, 16), tmp_path / "silent.mp4", 10)
    with pytest.raises(media.NoAudioStreamError, match="silent.mp4' has no audio track") as error:
        media.load_audio(path, target_sample_rate=16000, num_channels=1, num_samples=10)
    assert isinstance(error.value, ValueError)


# ---------------------------------------------------------------------------- export


def test_export_to_video_writes_exact_rate_size_and_durations(av_file):
    with av.open(str(av_file)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (video.average_rate, video.width, video.height) == (30, 320, 240)
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 16000, 2)
        assert float(audio.duration * audio.time_base) == pytest.approx(1.6, abs=1e-3)
        assert container.duration / av.time_base == pytest.approx(1.6, abs=1e-3)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
    assert len(frames) == 48
    levels = np.array([frame.mean() for frame in frames])
    assert np.abs(levels - 5 * np.arange(48)).max() < 2


def test_export_accepts_channels_first_torch_and_pil_frames(tmp_path):
    ramp = torch.linspace(0, 1, 48)
    frames = torch.stack([ramp.expand(32, 48), ramp[:32, None].expand(32, 48), torch.full((32, 48), 0.5)])
    frames = frames.expand(4, -1, -1, -1)  # [F, 3, H, W]: red grows left to right, green top to bottom
    path = media.export_to_video(frames, tmp_path / "pt.mp4", 8)
    images = [Image.fromarray(np.full((32, 48, 3), 100, np.uint8))] * 2
    media.export_to_video(images, tmp_path / "pil.mkv", 8)
    for name, count in (("pt.mp4", 4), ("pil.mkv", 2)):
        info = media.probe(tmp_path / name)
        assert (info["num_frames"], info["width"], info["height"], info["has_audio"]) == (count, 48, 32, False)
    decoded = media.load_video(path, target_frame_rate=None, num_frames=None, height=None, width=None)
    assert (decoded - frames).abs().max() < 0.05


def test_export_keeps_fractional_frame_rates_exactly(tmp_path):
    for frame_rate, expected in ((Fraction(30000, 1001), Fraction(30000, 1001)), (29.97, Fraction(2997, 100))):
        path = media.export_to_video(numbered_frames(4, 16, 16), tmp_path / "ntsc.mp4", frame_rate, force=True)
        with av.open(str(path)) as container:
            assert container.streams.video[0].average_rate == expected
            assert container.duration / av.time_base == pytest.approx(4 / expected, abs=1e-4)


def test_odd_frame_size_is_padded_to_even(tmp_path):
    frames = np.random.default_rng(0).random((3, 63, 65, 3), dtype=np.float32)
    with pytest.warns(UserWarning, match="padded to 66x64"):
        path = media.export_to_video(frames, tmp_path / "odd.mp4", 25)
    info = media.probe(path)
    assert (info["width"], info["height"], info["num_frames"]) == (66, 64, 3)


@pytest.mark.parametrize("sample_rate", [8000, 11025, 16000, 22050, 44100])
def test_aac_sample_rates(tmp_path, sample_rate):
    assert sample_rate in media.mp4_audio_sample_rates()
    tone = sine(440, 0.5, sample_rate)
    path = media.export_to_video(
        numbered_frames(2, 16, 16), tmp_path / "a.mp4", 4, audio=tone, sample_rate=sample_rate
    )
    audio = media.load_audio(path, target_sample_rate=None, num_channels=None, num_samples=None)
    assert media.probe(path)["sample_rate"] == sample_rate
    assert audio.shape == (1, len(tone))
    assert abs(dominant_frequency(audio[0], sample_rate) - 440) < 3


def test_unsupported_aac_rate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="4000 Hz cannot be encoded as AAC"):
        media.export_to_video(
            numbered_frames(2, 16, 16), tmp_path / "a.mp4", 4, audio=np.zeros(400, np.float32), sample_rate=4000
        )
    assert not list(tmp_path.iterdir())
    media.export_to_wav(np.zeros(400, np.float32), tmp_path / "a.wav", 4000)  # wav takes any rate
    assert media.probe(tmp_path / "a.wav")["sample_rate"] == 4000


def test_export_refuses_to_overwrite_and_leaves_nothing_after_a_failure(tmp_path, monkeypatch):
    frames = numbered_frames(2, 16, 16)
    existing = tmp_path / "out.mp4"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        media.export_to_video(frames, existing, 4)
    with pytest.raises(FileExistsError, match="already exists"):
        media.export_to_wav(np.zeros(10, np.float32), existing, 16000)
    assert existing.read_bytes() == b"keep me"

    def open_then_fail(path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"half-written")
        raise OSError("simulated failure while writing")

    monkeypatch.setattr(media.av, "open", open_then_fail)
    with pytest.raises(OSError, match="simulated"):
        media.export_to_video(frames, existing, 4, force=True)
    with pytest.raises(OSError, match="simulated"):
        media.export_to_video(frames, tmp_path / "new.mp4", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert existing.read_bytes() == b"keep me"
    monkeypatch.undo()

    media.export_to_video(frames, existing, 4, force=True)
    assert media.probe(existing)["num_frames"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


# ---------------------------------------------------------------------------- video


def test_mp4_at_30fps_becomes_16_frames_64x64_at_10fps(av_file):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        video = media.load_video(av_file, target_frame_rate=10, num_frames=16, height=64, width=64)
    message = single_warning(record)
    assert "resampled to 10 fps" in message and "resized to 64x64" in message
    assert video.shape == (16, 3, 64, 64) and video.dtype == torch.float32
    # Output frame k is the frame on screen at k / 10 s: source frame 3k.
    levels = video.mean(dim=(1, 2, 3)) * 255
    assert (levels - 15 * torch.arange(16)).abs().max() < 2


def test_video_offset_and_padding_repeat_the_last_frame(av_file):
    with pytest.warns(UserWarning, match="padded from 6 to 16 frames"):
        video = media.load_video(av_file, target_frame_rate=10, num_frames=16, height=32, width=32, offset=1.0)
    levels = video.mean(dim=(1, 2, 3)) * 255
    expected = 5 * torch.tensor([30, 33, 36, 39, 42, 45] + [45] * 10)
    assert (levels - expected).abs().max() < 2


def test_array_frame_rate_conversion_picks_the_frame_on_screen():
    frames = numbered_frames(10, 8, 8)
    with pytest.warns(UserWarning, match="resampled to 4 fps"):
        slower = media.load_video(frames, frame_rate=10, target_frame_rate=4, num_frames=4, height=None, width=None)
    with pytest.warns(UserWarning, match="resampled to 25 fps"):
        faster = media.load_video(frames, frame_rate=10, target_frame_rate=25, num_frames=6, height=None, width=None)
    assert (slower[:, 0, 0, 0] * 255 / 5).round().tolist() == [0, 2, 5, 7]  # t = 0, .25, .5, .75 s
    assert (faster[:, 0, 0, 0] * 255 / 5).round().tolist() == [0, 0, 0, 1, 1, 2]  # t = 0, .04, ... .2 s


def test_millisecond_timestamps_do_not_shift_frames(tmp_path):
    # Matroska stores 2/30 s as 0.067 s, after the output time 1/15 s: still frame 2, not frame 1.
    path = media.export_to_video(numbered_frames(30, 16, 16), tmp_path / "clip.mkv", 30)
    with pytest.warns(UserWarning, match="resampled to 15 fps"):
        video = media.load_video(path, target_frame_rate=15, num_frames=15, height=16, width=16)
    assert ((video.mean(dim=(1, 2, 3)) * 255 - 10 * torch.arange(15)).abs() < 2).all()


def test_resize_keeps_aspect_and_center_crops():
    # Landscape 320x240 with red side bands outside the central 240x240 square, and the portrait
    # transpose: after scale-to-cover and center crop only the green center remains.
    landscape = np.zeros((1, 240, 320, 3), np.float32)
    landscape[..., 1] = 1
    landscape[:, :, :40], landscape[:, :, 280:] = (1, 0, 0), (1, 0, 0)
    portrait = landscape.transpose(0, 2, 1, 3)
    for frames in (landscape, portrait):
        with pytest.warns(UserWarning, match="resized to 64x64 \\(scaled to cover, then center-cropped\\)"):
            video = media.load_video(frames, frame_rate=1, target_frame_rate=1, num_frames=1, height=64, width=64)
        inner = video[0, :, 1:-1, 1:-1]
        assert video.shape == (1, 3, 64, 64)
        assert inner[1].min() > 0.99 and inner[0].max() < 0.01


def test_video_inputs_in_other_forms():
    grey = np.full((2, 16, 16, 1), 0.5, np.float32)
    assert torch.allclose(
        media.load_video(grey, frame_rate=5, target_frame_rate=5, num_frames=2, height=16, width=16),
        torch.full((2, 3, 16, 16), 0.5),
    )
    images = [Image.fromarray(np.full((16, 16, 3), 51, np.uint8))] * 3
    video = media.load_video(images, frame_rate=5, target_frame_rate=5, num_frames=3, height=16, width=16)
    assert torch.allclose(video, torch.full((3, 3, 16, 16), 0.2))


def test_video_errors(tmp_path):
    common = dict(target_frame_rate=10, num_frames=4, height=16, width=16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        media.load_video(tmp_path / "missing.mp4", **common)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video " * 100)
    with pytest.raises(media.CorruptMediaError, match="corrupt.mp4"):
        media.load_video(corrupt, **common)
    wav = media.export_to_wav(np.zeros(100, np.float32), tmp_path / "sound.wav", 16000)
    with pytest.raises(media.NoVideoStreamError, match="no video track"):
        media.load_video(wav, **common)
    with pytest.raises(ValueError, match="frame_rate` is required"):
        media.load_video(np.zeros((4, 16, 16, 3), np.uint8), **common)
    with pytest.raises(ValueError, match="batch of videos"):
        media.load_video(np.zeros((1, 4, 16, 16, 3), np.uint8), frame_rate=10, **common)
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 1 \\(grey\\) channels"):
        media.load_video(np.zeros((4, 16, 16, 4), np.uint8), frame_rate=10, **common)
    with pytest.raises(media.EmptyMediaError, match="no frames"):
        media.load_video(np.zeros((0, 16, 16, 3), np.uint8), frame_rate=10, **common)
    with pytest.raises(ValueError, match=r"expected float frames in \[0, 1\]"):
        media.load_video(np.full((4, 16, 16, 3), 255.0, np.float32), frame_rate=10, **common)
    with pytest.raises(media.ClipTooShortError, match="past the end"):
        media.load_video(np.zeros((4, 16, 16, 3), np.uint8), frame_rate=10, offset=0.4, **common)


# ---------------------------------------------------------------------------- clips and probe


def test_read_clip_keeps_sound_and_picture_aligned(av_file):
    video, audio = media.read_clip(
        av_file, 0.5, num_frames=8, frame_rate=10, height=32, width=32, num_samples=12800, sample_rate=16000
    )
    assert video.shape == (8, 3, 32, 32) and audio.shape == (1, 12800)
    levels = video.mean(dim=(1, 2, 3)) * 255
    assert (levels - 5 * (15 + 3 * torch.arange(8))).abs().max() < 2  # frames at 0.5 s + k / 10
    onset = torch.nonzero(audio[0].abs() > 0.1)[0].item()
    assert abs(onset - 8000) < 80  # the burst at 1.0 s is 0.5 s into the clip (AAC smears it a little)


def test_read_clip_raises_specific_errors(tmp_path, av_file):
    clip = dict(num_frames=8, frame_rate=10, height=32, width=32, num_samples=12800, sample_rate=16000)
    with pytest.raises(media.ClipTooShortError):
        media.read_clip(av_file, 1.2, **clip)
    silent = media.export_to_video(numbered_frames(10, 16, 16), tmp_path / "silent.mp4", 10)
    with pytest.raises(media.NoAudioStreamError):
        media.read_clip(silent, 0.0, **clip)


def test_probe(av_file):
    info = media.probe(av_file)
    assert info["has_audio"] and info["has_video"]
    assert (info["frame_rate"], info["num_frames"], info["width"], info["height"]) == (30.0, 48, 320, 240)
    assert (info["sample_rate"], info["num_channels"]) == (16000, 2)
    assert info["duration"] == pytest.approx(1.6, abs=1e-3)
