"""Trainer, losses, training data sets and the training CLI commands, on tiny configurations."""

import json
import warnings

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from mmdiffusion import CoupledUNet, MMDiffusionPipeline, MMDiffusionSRPipeline, SuperResolutionUNet, export_to_video
from mmdiffusion import media
from mmdiffusion.schedulers.scheduler_choices import SCHEDULER_CHOICES, make_scheduler
from mmdiffusion.training.commands import make_shapes_main, train_main, train_sr_main, evaluate_alignment
from mmdiffusion.training.datasets import SuperResolutionFrames, VideoFolderDataset
from mmdiffusion.training.losses import GaussianDiffusion, coupled_training_loss, sr_training_loss
from mmdiffusion.training.sounding_shapes import SoundingShapesDataset
from mmdiffusion.training.trainer import TrainingOptions, latest_checkpoint, train

TINY = dict(num_frames=4, sample_size=16, audio_length=256, model_channels=32, channel_mult=(1, 2),
            cross_attention_downsample_factors=(2,), cross_attention_windows=(1,),
            video_attention_downsample_factors=(2,), dropout=0.1)
FRAME_RATE, SAMPLE_RATE = 10, 8000
TINY_FLAGS = ("--shapes 4 --num-frames 4 --frame-size 16 --frame-rate 10 --sample-rate 8000 --audio-length 256 "
              "--model-channels 32 --channel-mult 1,2 --cross-attention-factors 2 --cross-attention-windows 1 "
              "--video-attention-factors 2 --cross-attention-head-dim -1 --batch-size 2 --lr 1e-3 "
              "--no-progress").split()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared CPU its spin-waiting costs a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_shapes(num_clips=4):
    return SoundingShapesDataset(num_clips, 0, num_frames=4, frame_rate=FRAME_RATE, height=16, width=16,
                                 sample_rate=SAMPLE_RATE, num_samples=256)


def fixed_batch_loss(unet, batch, diffusion):
    """The loss of one batch with fixed timesteps, noise and shifts, without dropout."""
    unet.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        loss, _ = coupled_training_loss(unet, batch, diffusion)
    unet.train()
    return loss.item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Eight steps of training on two clips, with the loss on those clips before and after."""
    torch.manual_seed(0)
    unet = CoupledUNet(**TINY)
    initial = {name: p.detach().clone() for name, p in unet.named_parameters()}
    dataset = tiny_shapes(2)
    batch = {key: torch.stack([dataset[i][key] for i in range(2)]) for key in ("video", "audio")}
    diffusion = GaussianDiffusion()
    before = fixed_batch_loss(unet, batch, diffusion)
    options = TrainingOptions(tmp_path_factory.mktemp("run") / "out", max_steps=8, batch_size=2,
                              learning_rate=1e-3, checkpointing_steps=4, progress_bar=False)
    result = train(unet, dataset, options, frame_rate=FRAME_RATE, sample_rate=SAMPLE_RATE)
    after = fixed_batch_loss(unet, batch, diffusion)
    return dict(unet=unet, initial=initial, result=result, before=before, after=after, options=options)


def test_training_steps_reduce_the_loss_on_a_fixed_batch(trained):
    assert trained["result"].global_step == 8 and trained["result"].resumed_from is None
    assert trained["after"] < 0.8 * trained["before"]


def test_written_pipeline_holds_ema_weights_and_loads(trained):
    result, unet = trained["result"], trained["unet"]
    pipe = MMDiffusionPipeline.from_pretrained(result.pipeline_dir)
    assert isinstance(pipe.unet, CoupledUNet)
    assert pipe.config.frame_rate == FRAME_RATE and pipe.config.sample_rate == SAMPLE_RATE
    ema = dict(pipe.unet.named_parameters())
    raw = dict(unet.named_parameters())
    differs_from_raw = max((ema[name] - raw[name]).abs().max().item() for name in raw)
    differs_from_initial = max((ema[name] - trained["initial"][name]).abs().max().item() for name in raw)
    assert differs_from_raw > 1e-4 and differs_from_initial > 1e-4
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.frames.shape == (1, 4, 3, 16, 16) and out.audio.shape == (1, 1, 256)
    assert torch.isfinite(out.audio).all()


def test_checkpoints_are_written_every_n_steps(trained):
    options = trained["options"]
    assert latest_checkpoint(options.output_dir).name == "checkpoint-8"
    names = sorted(p.name for p in (options.output_dir / "checkpoints").iterdir())
    assert names == ["checkpoint-4", "checkpoint-8"]  # no partial or temporary folders left


def test_an_earlier_run_is_not_overwritten_without_resume_or_force(trained):
    with pytest.raises(FileExistsError, match="resume"):
        train(CoupledUNet(**TINY), tiny_shapes(2), TrainingOptions(trained["options"].output_dir, max_steps=1,
              batch_size=2, progress_bar=False), frame_rate=FRAME_RATE, sample_rate=SAMPLE_RATE)


def test_resume_continues_step_count_optimizer_state_and_matches_an_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main([*TINY_FLAGS, "-o", str(straight), "--max-steps", "4", "--checkpointing-steps", "2"]) == 0
    assert train_main([*TINY_FLAGS, "-o", str(resumed), "--max-steps", "2", "--checkpointing-steps", "2"]) == 0
    # Architecture flags are not needed (nor used) to resume: the checkpoint has the model's config.
    assert train_main(["--shapes", "4", "--batch-size", "2", "--lr", "1e-3", "--no-progress", "-o", str(resumed),
                       "--max-steps", "4", "--checkpointing-steps", "2", "--resume"]) == 0

    checkpoint = resumed / "checkpoints" / "checkpoint-4"
    assert latest_checkpoint(resumed) == checkpoint
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    assert {int(state["step"]) for state in optimizer["state"].values()} == {4}
    ema_state = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    assert ema_state["optimization_step"] == 4
    for name in ("checkpoints/checkpoint-4/model.safetensors", "pipeline/unet/diffusion_pytorch_model.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    out = tmp_path / "accumulated"
    assert train_main([*TINY_FLAGS, "-o", str(out), "--max-steps", "2", "--grad-accum", "2",
                       "--gradient-checkpointing"]) == 0
    optimizer = torch.load(out / "checkpoints" / "checkpoint-2" / "optimizer.bin", weights_only=True)
    assert {int(state["step"]) for state in optimizer["state"].values()} == {2}  # 4 micro-batches, 2 updates


def test_fine_tuning_starts_from_the_init_folder(trained, tmp_path):
    init = trained["result"].pipeline_dir
    out = tmp_path / "finetune"
    # Learning rate 0: one step leaves the weights where --init put them, and the EMA copies them.
    assert train_main(["--shapes", "2", "--batch-size", "2", "--lr", "0", "--no-progress", "--init", str(init),
                       "-o", str(out), "--max-steps", "1"]) == 0
    a = load_file(init / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert json.loads((out / "pipeline" / "model_index.json").read_text())["sample_rate"] == SAMPLE_RATE


def test_init_refuses_architecture_flags(trained, tmp_path, capsys):
    code = train_main(["--shapes", "2", "--init", str(trained["result"].pipeline_dir), "--model-channels", "64",
                       "-o", str(tmp_path / "x")])
    assert code == 2
    assert "--model-channels cannot be combined with --init" in capsys.readouterr().err


def test_no_window_shift_is_written_into_the_model_and_kept_by_init_and_resume(trained, tmp_path, capsys):
    def shifts_windows(run):
        return json.loads((run / "pipeline" / "unet" / "config.json").read_text())["cross_attention_shift"]

    fresh = tmp_path / "fresh"
    assert train_main([*TINY_FLAGS, "-o", str(fresh), "--max-steps", "1", "--no-window-shift"]) == 0
    assert shifts_windows(fresh) is False
    assert CoupledUNet.from_pretrained(fresh / "pipeline", subfolder="unet").shifted_cross_attention_windows == []
    tuned = tmp_path / "tuned"
    assert train_main(["--shapes", "2", "--batch-size", "2", "--no-progress", "--init", str(trained["result"].pipeline_dir),
                       "-o", str(tuned), "--max-steps", "1", "--no-window-shift"]) == 0
    assert shifts_windows(tuned) is False
    assert train_main(["--shapes", "2", "--batch-size", "2", "--no-progress", "-o", str(tuned), "--resume",
                       "--max-steps", "2"]) == 0
    assert shifts_windows(tuned) is False
    shifting = trained["options"].output_dir
    code = train_main(["--shapes", "2", "--batch-size", "2", "--no-progress", "-o", str(shifting), "--resume",
                       "--max-steps", "9", "--no-window-shift"])
    assert code == 2
    assert "--no-window-shift only applies to a new run" in capsys.readouterr().err


def test_variational_bound_vanishes_for_the_true_posterior():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x_start, noise = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    timesteps = torch.tensor([1, 300, 999])
    x_t = diffusion.add_noise(x_start, noise, timesteps)
    # The true noise and variance value -1 (the posterior variance) give the true posterior: KL 0.
    exact = diffusion.prediction_loss(torch.cat([noise, -torch.ones_like(noise)], 1), x_start, x_t, noise,
                                            timesteps)
    assert exact["vb"].abs().max() < 1e-4 and exact["mse"].abs().max() == 0
    widest = diffusion.prediction_loss(torch.cat([noise, torch.ones_like(noise)], 1), x_start, x_t, noise,
                                             timesteps)
    # At t = 1 the posterior variance is far below beta_1: choosing beta costs (later on the two nearly agree).
    assert widest["vb"][0] > 0.1
    assert torch.allclose(widest["loss"], widest["mse"] + widest["vb"])
    noise_only = diffusion.prediction_loss(noise, x_start, x_t, noise, timesteps)
    assert "vb" not in noise_only


def test_v_prediction_target_is_diffusers_velocity_and_gives_back_the_noise():
    diffusion = GaussianDiffusion(prediction_type="v_prediction")
    torch.manual_seed(0)
    x_start, noise = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    timesteps = torch.tensor([1, 500, 999])
    x_t = diffusion.add_noise(x_start, noise, timesteps)
    velocity = diffusion.target(x_start, noise, timesteps)
    reference = DDPMScheduler(beta_schedule="linear").get_velocity(x_start, noise, timesteps)
    torch.testing.assert_close(velocity, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diffusion.noise_from_prediction(velocity, x_t, timesteps), noise, rtol=1e-4, atol=1e-4)
    # The true v and the posterior variance give a zero loss, as the true noise does for an epsilon model.
    exact = diffusion.prediction_loss(torch.cat([velocity, -torch.ones_like(noise)], 1), x_start, x_t, noise, timesteps)
    assert exact["mse"].abs().max() == 0 and exact["vb"].abs().max() < 1e-3
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction"):
        GaussianDiffusion(prediction_type="sample")


def test_v_prediction_run_writes_its_target_into_the_schedulers_and_resumes_only_with_it(tmp_path, capsys):
    out = tmp_path / "v"
    assert train_main([*TINY_FLAGS, "-o", str(out), "--max-steps", "1", "--prediction-type", "v_prediction"]) == 0
    pipe = MMDiffusionPipeline.from_pretrained(out / "pipeline")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    for name in SCHEDULER_CHOICES:  # every named sampler reads the target from the folder's scheduler config
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        assert pipe.scheduler.config.prediction_type == "v_prediction", name
        frames = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").frames
        assert torch.isfinite(frames).all(), name
    # Resuming keeps the run's target without the flag, and refuses another one.
    assert train_main(["--shapes", "4", "--batch-size", "2", "--no-progress", "-o", str(out), "--max-steps", "2",
                       "--resume"]) == 0
    assert MMDiffusionPipeline.from_pretrained(out / "pipeline").scheduler.config.prediction_type == "v_prediction"
    capsys.readouterr()
    assert train_main(["--shapes", "4", "--batch-size", "2", "--no-progress", "-o", str(out), "--max-steps", "3",
                       "--resume", "--prediction-type", "epsilon"]) == 2
    assert "trained with prediction_type 'v_prediction'" in capsys.readouterr().err
    # Fine-tuning from the folder keeps its target too.
    assert train_main(["--shapes", "4", "--batch-size", "2", "--no-progress", "--init", str(out / "pipeline"),
                       "-o", str(tmp_path / "tuned"), "--max-steps", "1"]) == 0
    tuned = MMDiffusionPipeline.from_pretrained(tmp_path / "tuned" / "pipeline")
    assert tuned.scheduler.config.prediction_type == "v_prediction"


def test_sr_loss_trains_the_variance_channels_only_through_the_bound():
    model = SuperResolutionUNet(sample_size=16, low_res_size=8, model_channels=32, channel_mult=(1, 2),
                                num_res_blocks=1, attention_downsample_factors=(2,))
    batch = {"high_res": torch.rand(2, 3, 16, 16) * 2 - 1, "low_res": torch.rand(2, 3, 8, 8) * 2 - 1}
    loss, terms = sr_training_loss(model, batch, GaussianDiffusion())
    assert set(terms) == {"mse", "vb"}
    loss.backward()
    assert model.conv_out.weight.grad[3:].abs().sum() > 0  # variance channels learn from the bound term


def test_train_sr_runs_and_writes_an_sr_pipeline(tmp_path):
    out = tmp_path / "sr"
    assert train_sr_main(["--shapes", "4", "--sample-size", "16", "--low-res-size", "8", "--model-channels", "32",
                          "--channel-mult", "1,2", "--num-res-blocks", "1", "--attention-factors", "2",
                          "--batch-size", "2", "--max-steps", "2", "--no-progress", "-o", str(out)]) == 0
    pipe = MMDiffusionSRPipeline.from_pretrained(out / "pipeline")
    assert pipe.sr_unet.config.out_channels == 6 and pipe.sr_unet.config.low_res_size == 8
    assert latest_checkpoint(out).name == "checkpoint-2"


def test_sr_frames_pair_each_frame_with_its_low_resolution_version():
    frames = SuperResolutionFrames(tiny_shapes(2), low_res_size=8, degrade=False)
    assert len(frames) == 2 * 4
    item = frames[5]
    assert item["high_res"].shape == (3, 16, 16) and item["low_res"].shape == (3, 8, 8)
    assert torch.equal(item["high_res"], tiny_shapes(2)[1]["video"][1])
    shrunk = torch.nn.functional.avg_pool2d(item["high_res"][None], 2)[0]
    assert (item["low_res"] - shrunk).abs().mean() < 0.1
    degraded = SuperResolutionFrames(tiny_shapes(2), low_res_size=8, degrade=True)
    torch.manual_seed(0)
    assert any(not torch.equal(degraded[i]["low_res"], frames[i]["low_res"]) for i in range(8))


# ----------------------------------------------------------------------------------------------------
# Folder data set and the media commands


def write_clip(path, seconds=0.8, audio=True):
    frames = torch.rand(round(seconds * FRAME_RATE), 3, 24, 32)
    sound = torch.sin(torch.arange(round(seconds * SAMPLE_RATE)) * 0.1)[None] * 0.5 if audio else None
    export_to_video(frames, path, FRAME_RATE, sound, SAMPLE_RATE if audio else None)


def test_folder_data_set_skips_unusable_files_with_one_warning_each(tmp_path):
    write_clip(tmp_path / "good.mp4")
    write_clip(tmp_path / "nested" / "also_good.mkv")
    write_clip(tmp_path / "silent.mp4", audio=False)
    write_clip(tmp_path / "short.mp4", seconds=0.2)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "notes.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = VideoFolderDataset(tmp_path, num_frames=4, frame_rate=FRAME_RATE, height=16, width=16,
                                     sample_rate=SAMPLE_RATE, num_samples=3200)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert "broken.mp4: unreadable" in messages[0]
    assert "short.mp4" in messages[1] and "shorter than one clip" in messages[1]
    assert "silent.mp4: no audio track" in messages[2]
    assert len(dataset) == 4  # two 0.4 s clips from each 0.8 s file
    item = dataset[3]
    assert item["video"].shape == (4, 3, 16, 16) and item["audio"].shape == (1, 3200)
    assert item["video"].min() >= -1 and item["video"].max() <= 1 and item["audio"].abs().max() > 0.1

    # Without sound (frames for super-resolution) silent files are kept.
    with pytest.warns(UserWarning) as caught:
        frames = VideoFolderDataset(tmp_path, num_frames=1, frame_rate=FRAME_RATE, height=16, width=16)
    assert sorted(str(w.message).split(":")[0].rsplit("/", 1)[-1] for w in caught) == ["broken.mp4"]
    assert sorted(path.name for path, _ in frames.files) == ["also_good.mkv", "good.mp4", "short.mp4", "silent.mp4"]
    assert len(frames) >= 8 + 8 + 8 + 2  # an item per frame period (mkv durations may include audio padding)
    pair = SuperResolutionFrames(frames, low_res_size=8)[25]
    assert pair["high_res"].shape == (3, 16, 16) and pair["low_res"].shape == (3, 8, 8)


def test_folder_data_set_fails_clearly_without_usable_clips(tmp_path):
    with pytest.raises(ValueError, match="no video files"):
        VideoFolderDataset(tmp_path, num_frames=4, frame_rate=10, height=16, width=16, sample_rate=8000)
    write_clip(tmp_path / "silent.mp4", audio=False)
    with pytest.warns(UserWarning, match="no audio track"), pytest.raises(ValueError, match="all skipped"):
        VideoFolderDataset(tmp_path, num_frames=4, frame_rate=10, height=16, width=16, sample_rate=8000)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolderDataset(tmp_path / "missing", num_frames=4, frame_rate=10, height=16, width=16)


def test_make_shapes_writes_decodable_clips_that_the_loader_and_alignment_read(tmp_path, capsys):
    out = tmp_path / "shapes"
    flags = ["--num", "2", "-o", str(out), "--height", "32", "--width", "32", "--num-frames", "8",
             "--sample-rate", "8000"]
    assert make_shapes_main(flags) == 0
    paths = sorted(out.iterdir())
    assert [p.name for p in paths] == ["shape_00000.mp4", "shape_00001.mp4"]
    info = media.probe(paths[0])
    assert info["has_audio"] and info["sample_rate"] == 8000 and info["num_frames"] == 8
    dataset = VideoFolderDataset(out, num_frames=8, frame_rate=10, height=32, width=32, sample_rate=8000)
    assert len(dataset) == 2 and dataset[0]["audio"].shape == (1, 6400)
    scores = evaluate_alignment([out])
    assert scores["num_clips"] == 2 and scores["correlation"] > 0.9
    assert make_shapes_main(flags) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert make_shapes_main([*flags[:4], "--sample-rate", "4000", "--force"]) == 2
    assert "cannot be stored" in capsys.readouterr().err
