"""Training objectives of MM-Diffusion: ε-prediction on the official linear schedule, with the
variational-bound term of improved DDPM (Nichol & Dhariwal, 2021) for models that learn their variance.
v-prediction (Salimans & Ho, 2022) is offered as an alternative target: the official ε target asks a model
to reproduce the noise to within sqrt(ᾱ_t) before its clean-sample estimate at the noisiest steps means
anything, which a small model trained briefly does not reach; v keeps that estimate well conditioned.

The official code sums the modalities: the loss of a sample is the mean squared error over its video
plus the mean squared error over its audio (and, for learned variances, each modality's bound term),
and the batch loss is the mean over samples.
"""

import math
from typing import Dict, Tuple

import torch

from ..schedulers.scheduling_mm_dpmsolver import PREDICTION_TYPES, noise_from_model_output

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02

# Half of one 8-bit level in [-1, 1]: the bin width of the discretised decoder likelihood at t = 0.
_HALF_BIN = 1.0 / 255.0


def noise_schedule_config(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> dict:
    """The official linear β schedule as a diffusers scheduler config (scaled by 1000 / steps, as the official)."""
    scale = 1000 / num_train_timesteps
    return dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="linear",
        beta_start=scale * LINEAR_BETA_START,
        beta_end=scale * LINEAR_BETA_END,
    )


def _mean_per_sample(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1).mean(dim=1)


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation (as in GELU) that the official decoder likelihood uses.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _normal_kl(mean_1, log_var_1, mean_2, log_var_2) -> torch.Tensor:
    """KL(N(mean_1, e^log_var_1) || N(mean_2, e^log_var_2)), elementwise, in nats."""
    return 0.5 * (log_var_2 - log_var_1 - 1.0 + torch.exp(log_var_1 - log_var_2)
                  + (mean_1 - mean_2) ** 2 * torch.exp(-log_var_2))


def _discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log P(x) of data in [-1, 1] quantised to 256 levels under N(mean, e^(2 log_scale)), elementwise, in nats;
    the end bins extend to ±infinity."""
    centred = x - mean
    inverse_scale = torch.exp(-log_scale)
    cdf_upper = _standard_normal_cdf(inverse_scale * (centred + _HALF_BIN))
    cdf_lower = _standard_normal_cdf(inverse_scale * (centred - _HALF_BIN))
    log_probability = torch.where(
        x < -0.999,
        torch.log(cdf_upper.clamp(min=1e-12)),
        torch.where(
            x > 0.999,
            torch.log((1.0 - cdf_lower).clamp(min=1e-12)),
            torch.log((cdf_upper - cdf_lower).clamp(min=1e-12)),
        ),
    )
    return -log_probability


class GaussianDiffusion:
    """The forward process and per-sample losses of an ε-prediction model on a β schedule.

    Args:
        num_train_timesteps: length of the official linear schedule (β from 1e-4 to 0.02, scaled by
            1000 / steps). Quantities are kept in float64, as the official code does.
        prediction_type: the model's target: "epsilon" (the noise, official) or "v_prediction"
            (v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0).
    """

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, prediction_type: str = "epsilon"):
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer of at least 2, got {num_train_timesteps!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        config = noise_schedule_config(num_train_timesteps)
        betas = torch.linspace(config["beta_start"], config["beta_end"], num_train_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.num_train_timesteps = num_train_timesteps
        self.log_betas = torch.log(betas)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1.0).sqrt()
        # The posterior variance is 0 at t = 0; its log takes the value at t = 1 there.
        self.posterior_log_variance_clipped = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        self.posterior_mean_coef_start = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef_current = (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)

    @staticmethod
    def _at(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`values[timesteps]` shaped to broadcast over `like` (batch first), in `like`'s dtype."""
        picked = values.to(timesteps.device)[timesteps].to(like.dtype)
        return picked.reshape(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(self, batch_size: int, device=None, generator=None) -> torch.Tensor:
        """Uniform training timesteps in [0, num_train_timesteps)."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), device=device, generator=generator)

    def add_noise(self, x_start: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        return (self._at(self.sqrt_alphas_cumprod, timesteps, x_start) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, timesteps, x_start) * noise)

    def target(self, x_start: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model learns to output for x_t made from `x_start` and `noise`."""
        if self.prediction_type == "epsilon":
            return noise
        return (self._at(self.sqrt_alphas_cumprod, timesteps, x_start) * noise
                - self._at(self.sqrt_one_minus_alphas_cumprod, timesteps, x_start) * x_start)

    def noise_from_prediction(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor):
        """The noise a model output stands for (ε = sqrt(ᾱ_t) v + sqrt(1 - ᾱ_t) x_t for v-prediction)."""
        return noise_from_model_output(
            prediction, x_t, self._at(self.sqrt_alphas_cumprod, timesteps, x_t),
            self._at(self.sqrt_one_minus_alphas_cumprod, timesteps, x_t), self.prediction_type,
        )

    def variational_bound(self, noise_prediction, variance_values, x_start, x_t, timesteps) -> torch.Tensor:
        """Per-sample bound term (bits per dimension) that trains the variance only: KL between the true
        posterior q(x_{t-1} | x_t, x_0) and the model's p(x_{t-1} | x_t), or the decoder NLL at t = 0. The
        model's variance interpolates in log space between the posterior variance and β_t with weight
        (v + 1) / 2; its mean comes from the detached noise prediction, as in improved DDPM."""
        at = lambda values: self._at(values, timesteps, x_t)  # noqa: E731
        min_log, max_log = at(self.posterior_log_variance_clipped), at(self.log_betas)
        fraction = (variance_values + 1.0) / 2.0
        model_log_variance = fraction * max_log + (1.0 - fraction) * min_log
        predicted_start = (at(self.sqrt_recip_alphas_cumprod) * x_t
                           - at(self.sqrt_recipm1_alphas_cumprod) * noise_prediction)
        model_mean = at(self.posterior_mean_coef_start) * predicted_start + at(self.posterior_mean_coef_current) * x_t
        true_mean = at(self.posterior_mean_coef_start) * x_start + at(self.posterior_mean_coef_current) * x_t
        kl = _mean_per_sample(_normal_kl(true_mean, min_log, model_mean, model_log_variance)) / math.log(2.0)
        decoder_nll = _mean_per_sample(
            _discretized_gaussian_nll(x_start, model_mean, 0.5 * model_log_variance)
        ) / math.log(2.0)
        return torch.where(timesteps == 0, decoder_nll, kl)

    def prediction_loss(
        self, model_output, x_start, x_t, noise, timesteps, channel_dim: int = 1
    ) -> Dict[str, torch.Tensor]:
        """Per-sample losses of one modality: `mse` (of the `target`) and, when `model_output` carries twice the
        channels of `x_start` (learned variance), `vb` (see `variational_bound`); `loss` is their sum.
        Computed in float32 whatever the model's precision."""
        model_output, x_start, x_t, noise = (tensor.float() for tensor in (model_output, x_start, x_t, noise))
        channels = x_start.shape[channel_dim]
        if model_output.shape[channel_dim] not in (channels, 2 * channels):
            raise ValueError(
                f"model output has {model_output.shape[channel_dim]} channels on dim {channel_dim}; expected "
                f"{channels} (noise) or {2 * channels} (noise and variance)"
            )
        terms = {}
        if model_output.shape[channel_dim] == 2 * channels:
            model_output, variance_values = model_output.split(channels, dim=channel_dim)
            predicted_noise = self.noise_from_prediction(model_output.detach(), x_t, timesteps)
            terms["vb"] = self.variational_bound(predicted_noise, variance_values, x_start, x_t, timesteps)
        terms["mse"] = _mean_per_sample((model_output - self.target(x_start, noise, timesteps)) ** 2)
        terms["loss"] = terms["mse"] + terms.get("vb", 0.0)
        return terms


def coupled_training_loss(
    unet, batch: Dict[str, torch.Tensor], diffusion: GaussianDiffusion
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The official audio-video loss of one batch `{"video": [B, F, C, H, W], "audio": [B, C, T]}` in [-1, 1]:
    uniform timesteps, one noise per modality, per-sample video loss + audio loss (on `diffusion`'s target),
    mean over the batch. Every sample gets its own random RS-MMA window shifts (none for a model whose config
    has `cross_attention_shift: false`). Returns the loss and its terms (batch means) for logging."""
    video, audio = batch["video"], batch["audio"]
    batch_size = video.shape[0]
    timesteps = diffusion.sample_timesteps(batch_size, device=video.device)
    video_noise, audio_noise = torch.randn_like(video), torch.randn_like(audio)
    video_t = diffusion.add_noise(video, video_noise, timesteps)
    audio_t = diffusion.add_noise(audio, audio_noise, timesteps)
    model = getattr(unet, "module", unet)  # DistributedDataParallel keeps the model's methods on .module
    shifts = model.draw_window_shifts(batch_size, device=video.device)
    # Tuples, not output dataclasses: accelerate's mixed-precision wrapper rebuilds outputs field by field.
    video_output, audio_output = unet(video_t, audio_t, timesteps, window_shift=shifts, return_dict=False)
    video_terms = diffusion.prediction_loss(video_output, video, video_t, video_noise, timesteps, channel_dim=2)
    audio_terms = diffusion.prediction_loss(audio_output, audio, audio_t, audio_noise, timesteps, channel_dim=1)
    loss = (video_terms["loss"] + audio_terms["loss"]).mean()
    logs = {f"{name}_video": value.mean().item() for name, value in video_terms.items() if name != "loss"}
    logs.update({f"{name}_audio": value.mean().item() for name, value in audio_terms.items() if name != "loss"})
    return loss, logs


def sr_training_loss(
    sr_unet, batch: Dict[str, torch.Tensor], diffusion: GaussianDiffusion
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The official super-resolution loss of one batch `{"high_res": [B, C, H, W], "low_res": [B, C, h, w]}`
    in [-1, 1]: the target's MSE plus, for a learned variance, the bound term ("hybrid" loss)."""
    high_res, low_res = batch["high_res"], batch["low_res"]
    timesteps = diffusion.sample_timesteps(high_res.shape[0], device=high_res.device)
    noise = torch.randn_like(high_res)
    noisy = diffusion.add_noise(high_res, noise, timesteps)
    (output,) = sr_unet(noisy, timesteps, low_res=low_res, return_dict=False)
    terms = diffusion.prediction_loss(output, high_res, noisy, noise, timesteps, channel_dim=1)
    return terms["loss"].mean(), {name: value.mean().item() for name, value in terms.items() if name != "loss"}
