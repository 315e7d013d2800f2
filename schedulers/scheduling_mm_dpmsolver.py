"""Singlestep DPM-Solver (noise prediction) exactly as MM-Diffusion samples with it.

MM-Diffusion's default sampler is the singlestep DPM-Solver of Lu et al. (2022) ("DPM-Solver-fast"):
20 model evaluations, order 3, time points uniform in log-SNR, on the discrete 1000-step schedule made
continuous by interpolating log(alpha) linearly between the training steps. It differs from diffusers'
`DPMSolverSinglestepScheduler` in ways that change the samples: the model is fed the continuous time
``t`` as the integer ``int(N * t - 1)`` (truncated, not rounded), the intermediate points of each
multi-stage update sit on the interpolated schedule rather than on training steps, and all schedule
quantities are computed in float32. This scheduler reproduces those choices so that a plain
denoising loop gives the official samples.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput


@dataclass
class _Stage:
    """One model evaluation of a singlestep update, and how the sample after it is formed.

    With ``x_s`` the sample at the start of the update and ``eps[j]`` the model outputs of the update's
    stages so far, the sample after this stage is ``x_coef * x_s - eps_coef * eps[0]``, minus
    ``diff_coef * (eps[diff_index] - eps[0])`` when ``diff_index`` is set.
    """

    x_coef: torch.Tensor
    eps_coef: torch.Tensor
    diff_coef: Optional[torch.Tensor]
    diff_index: Optional[int]
    starts_update: bool


# What a model's output means: the names of diffusers' schedulers' `prediction_type` that this package's
# samplers, conditioning and trainer support.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def noise_from_model_output(model_output, sample, alpha, sigma, prediction_type: str):
    """The noise a model output stands for, given the sample ``alpha * x0 + sigma * noise`` it was computed on
    (alpha^2 + sigma^2 = 1): the output itself for ε-prediction, ``alpha * v + sigma * sample`` for v."""
    if prediction_type == "epsilon":
        return model_output
    return alpha * model_output + sigma * sample


class MMDiffusionDPMSolverScheduler(SchedulerMixin, ConfigMixin):
    """Singlestep DPM-Solver for noise- (or v-) prediction models, matching MM-Diffusion's official sampler.

    `timesteps` holds one entry per model evaluation, the intermediate points of the multi-stage
    updates included, so the ordinary loop

    ```py
    scheduler.set_timesteps(20)
    for t in scheduler.timesteps:
        eps = model(x, t)
        x = scheduler.step(eps, t, x).prev_sample
    ```

    runs the official algorithm: after an intermediate stage `step` returns the intermediate sample
    the model is evaluated at next, after the last stage of an update the sample at the update's end.
    The solver state (the stage's start sample and model outputs) lives in the scheduler, so a
    video and an audio stream sampled together each need their own instance; both get the same time
    grid, as in the official multimodal solver.

    `sample_alphas` and `sample_sigmas` give the noise level of the sample passed to the model at
    each entry of `timesteps` (``x = alpha * x0 + sigma * noise``, on the continuous schedule, which
    lies between the levels of neighbouring training steps), followed by the level of the final
    sample; `noise_level` is the entry for the sample `step` expects next. Conditioning by
    replacement (noising a known modality to the level of the generated one) uses these.

    Official behaviour not reproduced: the official multimodal solver's first-order update applies a
    data-prediction formula to the audio stream. The paper's setting (20 steps, order 3) never takes a
    first-order update; step counts that do (e.g. 19 or 21 at order 3) get the correct first-order
    update for every stream here.

    Args:
        num_train_timesteps (`int`, defaults to 1000): number of diffusion steps the model was trained with.
        beta_start (`float`, defaults to 0.0001): first beta of the training schedule.
        beta_end (`float`, defaults to 0.02): last beta of the training schedule.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"scaled_linear"` or `"squaredcos_cap_v2"`.
        trained_betas (`list` of `float`, *optional*): explicit betas, overriding the three above.
        solver_order (`int`, defaults to 3): highest order of the singlestep updates (1, 2 or 3).
        skip_type (`str`, defaults to `"logSNR"`): spacing of the time grid: `"logSNR"` (uniform in
            log-SNR), `"time_uniform"` or `"time_quadratic"`.
        method (`str`, defaults to `"singlestep"`): `"singlestep"` mixes orders so that the number of
            model evaluations equals `num_inference_steps` (for order 3 and 20 steps: six third-order
            updates, then one second-order update); `"singlestep_fixed"` uses only `solver_order`
            updates, ``num_inference_steps // solver_order`` of them.
        prediction_type (`str`, defaults to `"epsilon"`): what the model predicts: `"epsilon"` (the noise, as the
            official models) or `"v_prediction"` (``alpha * noise - sigma * x0``), turned into the noise before
            the update.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    # One entry of `timesteps` per model evaluation: pipelines' progress arithmetic sees a first-order scheduler.
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[List[float]] = None,
        solver_order: int = 3,
        skip_type: str = "logSNR",
        method: str = "singlestep",
        prediction_type: str = "epsilon",
    ):
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}.")
        if skip_type not in ("logSNR", "time_uniform", "time_quadratic"):
            raise ValueError(f"skip_type must be 'logSNR', 'time_uniform' or 'time_quadratic', got {skip_type!r}.")
        if method not in ("singlestep", "singlestep_fixed"):
            raise ValueError(f"method must be 'singlestep' or 'singlestep_fixed', got {method!r}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}.")

        betas = self._betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        # float64 products cast to float32, as the official script hands its numpy schedule to the solver.
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
        self.betas = betas.to(torch.float32)
        self.init_noise_sigma = 1.0

        # The continuous schedule: training step n sits at time (n + 1) / N, log(alpha) linear in between.
        self._knot_times = torch.linspace(0.0, 1.0, len(self.alphas_cumprod) + 1, dtype=torch.float32)[1:]
        self._knot_log_alphas = 0.5 * torch.log(self.alphas_cumprod)

        self.num_inference_steps = None
        self.timesteps = None
        self.sample_alphas = None
        self.sample_sigmas = None
        self._stages: List[_Stage] = []
        self._reset_state()

    @staticmethod
    def _betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas) -> torch.Tensor:
        if trained_betas is not None:
            betas = torch.as_tensor(trained_betas, dtype=torch.float64)
            if betas.ndim != 1 or len(betas) < 2:
                raise ValueError("trained_betas must be a flat list of at least two betas.")
            return betas
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer of at least 2, got {num_train_timesteps!r}.")
        if beta_schedule == "linear":
            return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        if beta_schedule == "scaled_linear":
            return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        if beta_schedule == "squaredcos_cap_v2":
            steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
            alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
            return torch.clamp(1.0 - alpha_bar[1:] / alpha_bar[:-1], max=0.999)
        raise ValueError(
            f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {beta_schedule!r}."
        )

    # The continuous noise schedule, in float32 throughout: the integer model times are truncations of
    # these numbers, so computing them otherwise can move a model time by one step.

    @staticmethod
    def _interpolate(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation through increasing `knots_x`, extended linearly past both ends."""
        # A point on a knot belongs to the segment on its left, as in the official interpolation.
        right = torch.searchsorted(knots_x, x, right=False).clamp(1, len(knots_x) - 1)
        x0, x1 = knots_x[right - 1], knots_x[right]
        y0, y1 = knots_y[right - 1], knots_y[right]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._interpolate(t, self._knot_times, self._knot_log_alphas)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self._log_alpha(t)))

    def _lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR, log(alpha_t / sigma_t)."""
        log_alpha = self._log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def _time_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros(1, dtype=lam.dtype), -2.0 * lam)
        return self._interpolate(log_alpha, self._knot_log_alphas.flip(0), self._knot_times.flip(0))

    def _model_time(self, t: torch.Tensor) -> int:
        """Training step the model is told for continuous time `t`: N * (t - 1 / N), truncated."""
        n = len(self.alphas_cumprod)
        return int(((t - 1.0 / n) * n).to(torch.int64).item())

    def _time_grid(self, num_intervals: int) -> torch.Tensor:
        t_start, t_end = 1.0, 1.0 / len(self.alphas_cumprod)
        skip_type = self.config.skip_type
        if skip_type == "logSNR":
            lambda_start = self._lambda(torch.tensor([t_start], dtype=torch.float32)).item()
            lambda_end = self._lambda(torch.tensor([t_end], dtype=torch.float32)).item()
            lambdas = torch.linspace(lambda_start, lambda_end, num_intervals + 1, dtype=torch.float32)
            return self._time_of_lambda(lambdas)
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, num_intervals + 1, dtype=torch.float32)
        return torch.linspace(t_start**0.5, t_end**0.5, num_intervals + 1, dtype=torch.float32).pow(2)

    def _update_orders(self, num_inference_steps: int) -> List[int]:
        """Orders of the successive singlestep updates; their sum is the number of model evaluations."""
        order = self.config.solver_order
        if self.config.method == "singlestep_fixed":
            if num_inference_steps < order:
                raise ValueError(
                    f"num_inference_steps must be at least solver_order ({order}) with method 'singlestep_fixed', "
                    f"got {num_inference_steps}."
                )
            return [order] * (num_inference_steps // order)
        # As many top-order updates as fit, the remaining one or two evaluations spent on lower orders
        # (order 3: remainder 0 -> ..., 2, 1; remainder 1 -> ..., 1; remainder 2 -> ..., 2).
        if order == 3:
            full, remainder = divmod(num_inference_steps, 3)
            tail = {0: [2, 1], 1: [1], 2: [2]}[remainder]
            if remainder == 0:
                full -= 1
            return [3] * full + tail
        if order == 2:
            return [2] * (num_inference_steps // 2) + [1] * (num_inference_steps % 2)
        return [1] * num_inference_steps

    def _update_stages(self, s, t, r1, r2, order):
        """Continuous times of the model evaluations of one update from `s` to `t`, and its stages.

        `r1` and `r2` place the intermediate points at fractions of the update's log-SNR step.
        """
        lambda_s, lambda_t = self._lambda(s), self._lambda(t)
        h = lambda_t - lambda_s
        log_alpha_s, log_alpha_t = self._log_alpha(s), self._log_alpha(t)
        sigma_t = self._sigma(t)
        phi_1 = torch.expm1(h)
        x_coef_t = torch.exp(log_alpha_t - log_alpha_s)
        if order == 1:
            return [s], [_Stage(x_coef_t, sigma_t * phi_1, None, None, True)]

        # First stage of orders 2 and 3: a first-order step from s to the intermediate point s1.
        s1 = self._time_of_lambda(lambda_s + r1 * h)
        log_alpha_s1, sigma_s1 = self._log_alpha(s1), self._sigma(s1)
        to_s1 = _Stage(torch.exp(log_alpha_s1 - log_alpha_s), sigma_s1 * torch.expm1(r1 * h), None, None, True)
        if order == 2:
            to_t = _Stage(x_coef_t, sigma_t * phi_1, (0.5 / r1) * (sigma_t * phi_1), 1, False)
            return [s, s1], [to_s1, to_t]

        s2 = self._time_of_lambda(lambda_s + r2 * h)
        log_alpha_s2, sigma_s2 = self._log_alpha(s2), self._sigma(s2)
        phi_22 = torch.expm1(r2 * h) / (r2 * h) - 1.0
        to_s2 = _Stage(
            torch.exp(log_alpha_s2 - log_alpha_s),
            sigma_s2 * torch.expm1(r2 * h),
            (r2 / r1) * (sigma_s2 * phi_22),
            1,
            False,
        )
        phi_2 = phi_1 / h - 1.0
        to_t = _Stage(x_coef_t, sigma_t * phi_1, (1.0 / r2) * (sigma_t * phi_2), 2, False)
        return [s, s1, s2], [to_s1, to_s2, to_t]

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None):
        """Build the time grid for `num_inference_steps` model evaluations.

        Args:
            num_inference_steps (`int`): number of model evaluations (the official solver's `steps`).
            device (`str` or `torch.device`, *optional*): where to put `timesteps`.
        """
        is_count = isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool)
        if not is_count or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        orders = self._update_orders(num_inference_steps)
        grid = self._time_grid(sum(orders)).reshape(-1, 1)

        times, stages = [], []
        start = 0
        for order in orders:
            s, t = grid[start], grid[start + order]
            h = self._lambda(t) - self._lambda(s)
            r1 = (self._lambda(grid[start + 1]) - self._lambda(s)) / h if order >= 2 else None
            r2 = (self._lambda(grid[start + 2]) - self._lambda(s)) / h if order == 3 else None
            update_times, update_stages = self._update_stages(s, t, r1, r2, order)
            times += update_times
            stages += update_stages
            start += order
        times.append(grid[-1])

        times = torch.cat(times)
        self._stages = stages
        self.num_inference_steps = len(stages)
        self.timesteps = torch.tensor([self._model_time(t) for t in times[:-1]], dtype=torch.int64, device=device)
        self.sample_alphas = torch.exp(self._log_alpha(times))
        self.sample_sigmas = self._sigma(times)
        self._reset_state()

    def _reset_state(self):
        self._step_index = 0
        self._update_start_sample = None
        self._update_model_outputs: List[torch.Tensor] = []

    @property
    def step_index(self) -> int:
        """Index into `timesteps` of the model evaluation `step` expects next."""
        return self._step_index

    @property
    def noise_level(self) -> Tuple[float, float]:
        """(alpha, sigma) of the sample `step` expects next, or of the final sample once all steps are done."""
        if self.timesteps is None:
            raise ValueError("noise_level is defined once set_timesteps has been called.")
        return self.sample_alphas[self._step_index].item(), self.sample_sigmas[self._step_index].item()

    def scale_model_input(
        self, sample: torch.Tensor, timestep: Optional[Union[int, torch.Tensor]] = None
    ) -> torch.Tensor:
        """The model takes the sample unscaled; returned as is."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ) -> Union[SchedulerOutput, Tuple[torch.Tensor]]:
        """Advance the solver by one model evaluation.

        Args:
            model_output (`torch.Tensor`): the model's prediction (noise, or v) for `sample`, same shape (any rank,
                batch first).
            timestep (`int` or `torch.Tensor`): the entry of `timesteps` the model was evaluated at.
            sample (`torch.Tensor`): the sample the model was evaluated on.
            generator (`torch.Generator`, *optional*): unused; the solver is deterministic.
            return_dict (`bool`, defaults to `True`): return a `SchedulerOutput` rather than a tuple.

        Returns:
            `SchedulerOutput` or `tuple`: the sample to evaluate the model on next (an intermediate point of
            the current update, or the start of the next one); after the last step, the final sample.
        """
        if self.timesteps is None:
            raise ValueError("step needs a time grid: call set_timesteps(num_inference_steps) first.")
        if self._step_index >= len(self._stages):
            raise ValueError(
                f"step was called more times than there are timesteps ({len(self._stages)}); "
                "call set_timesteps again to start a new sampling loop."
            )
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError("model_output and sample must be torch tensors.")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output must have the shape of sample {tuple(sample.shape)}, got {tuple(model_output.shape)}."
            )
        expected = int(self.timesteps[self._step_index])
        given = torch.as_tensor(timestep).reshape(-1)
        if given.numel() == 0 or not bool((given == expected).all()):
            raise ValueError(
                f"timestep must be the scheduler's next timestep {expected} (entry {self._step_index} of "
                f"timesteps), got {timestep!r}; step once per entry, in order."
            )

        stage = self._stages[self._step_index]
        # Solver arithmetic in float32 at least, whatever precision the model runs in.
        dtype = torch.promote_types(sample.dtype, torch.float32)
        alpha, sigma = self.sample_alphas[self._step_index], self.sample_sigmas[self._step_index]
        noise = noise_from_model_output(
            model_output.to(dtype), sample.to(dtype), alpha.to(sample.device), sigma.to(sample.device),
            self.config.prediction_type,
        )
        if stage.starts_update:
            self._update_start_sample = sample.to(dtype)
            self._update_model_outputs = []
        self._update_model_outputs.append(noise)

        device = sample.device
        start, outputs = self._update_start_sample, self._update_model_outputs
        prev_sample = stage.x_coef.to(device) * start - stage.eps_coef.to(device) * outputs[0]
        if stage.diff_index is not None:
            prev_sample = prev_sample - stage.diff_coef.to(device) * (outputs[stage.diff_index] - outputs[0])
        prev_sample = prev_sample.to(sample.dtype)

        self._step_index += 1
        if self._step_index == len(self._stages):
            self._update_start_sample, self._update_model_outputs = None, []

        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Union[int, torch.Tensor]
    ) -> torch.Tensor:
        """Forward diffusion to training steps `timesteps` (one per sample, or one for all):
        ``sqrt(alphas_cumprod[t]) * original_samples + sqrt(1 - alphas_cumprod[t]) * noise``."""
        if original_samples.shape != noise.shape:
            raise ValueError(
                f"noise must have the shape of original_samples {tuple(original_samples.shape)}, "
                f"got {tuple(noise.shape)}."
            )
        timesteps = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        if timesteps.is_floating_point() or timesteps.is_complex():
            raise TypeError(f"timesteps must be integer training steps, got dtype {timesteps.dtype}.")
        num_train = len(self.alphas_cumprod)
        if bool(((timesteps < 0) | (timesteps >= num_train)).any()):
            raise ValueError(f"timesteps must lie in [0, {num_train - 1}], got {timesteps.tolist()}.")
        if timesteps.numel() not in (1, original_samples.shape[0]):
            raise ValueError(
                f"timesteps must hold one step or one per sample ({original_samples.shape[0]}), "
                f"got {timesteps.numel()}."
            )
        alphas_cumprod = self.alphas_cumprod.to(original_samples.device)[timesteps]
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        sqrt_alpha = alphas_cumprod.sqrt().reshape(shape).to(original_samples.dtype)
        sqrt_one_minus_alpha = (1.0 - alphas_cumprod).sqrt().reshape(shape).to(original_samples.dtype)
        return sqrt_alpha * original_samples + sqrt_one_minus_alpha * noise

    def __len__(self) -> int:
        return len(self.alphas_cumprod)
