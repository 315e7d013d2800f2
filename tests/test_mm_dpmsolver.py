import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from mmdiffusion.schedulers import MMDiffusionDPMSolverScheduler

DATA_STD = 0.5  # the analytic model's data: x0 ~ N(0, DATA_STD^2 I)


def gaussian_eps(x, alpha, sigma):
    """Exact noise prediction E[eps | x_t] when x0 ~ N(0, DATA_STD^2 I) and x_t = alpha x0 + sigma eps."""
    return sigma * x / (alpha**2 * DATA_STD**2 + sigma**2)


def exact_flow(x_start, alphas_cumprod_start, alphas_cumprod_end):
    """Probability-flow ODE solution for Gaussian data: x_t / sqrt(Var x_t) is constant along the flow."""

    def variance(a):
        return a * DATA_STD**2 + 1.0 - a

    return x_start * (variance(alphas_cumprod_end) / variance(alphas_cumprod_start)).sqrt()


def solve_gaussian(scheduler, x):
    """Denoising loop with the exact model, fed the noise level the scheduler reports for each evaluation."""
    for t in scheduler.timesteps:
        alpha, sigma = scheduler.noise_level
        x = scheduler.step(gaussian_eps(x, alpha, sigma), t, x).prev_sample
    return x


def relative_error_vs_exact(order, steps, x_start):
    scheduler = MMDiffusionDPMSolverScheduler(solver_order=order)
    scheduler.set_timesteps(steps)
    acp = scheduler.alphas_cumprod.double()
    exact = exact_flow(x_start, acp[-1], acp[0])  # from t = 1 (step 999) to t = 1/N (step 0)
    return ((solve_gaussian(scheduler, x_start) - exact).abs().max() / exact.abs().max()).item(), exact


@pytest.fixture
def x_start():
    return torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_one_timestep_per_model_evaluation():
    scheduler = MMDiffusionDPMSolverScheduler()
    scheduler.set_timesteps(20)
    calls = 0
    x = torch.randn(1, 4)
    for t in scheduler.timesteps:
        calls += 1
        x = scheduler.step(torch.tanh(x), t, x).prev_sample
    assert calls == len(scheduler.timesteps) == scheduler.num_inference_steps == 20
    for order in (1, 2, 3):
        for steps in (1, 2, 3, 4, 5, 19, 21):
            scheduler = MMDiffusionDPMSolverScheduler(solver_order=order)
            scheduler.set_timesteps(steps)
            assert len(scheduler.timesteps) == steps


def test_timesteps_are_decreasing_training_steps():
    scheduler = MMDiffusionDPMSolverScheduler()
    scheduler.set_timesteps(20, device="cpu")
    timesteps = scheduler.timesteps
    assert timesteps.dtype == torch.int64
    assert 0 <= int(timesteps.min()) and int(timesteps.max()) <= 999
    assert bool((timesteps[1:] < timesteps[:-1]).all())
    # The model times the official MM-Diffusion solver feeds for steps=20, order=3, logSNR, singlestep,
    # recorded from the official implementation: the continuous time t becomes int(1000 t - 1).
    official = [999, 949, 898, 843, 784, 721, 652, 576, 492, 399, 302, 211, 138, 85, 51, 30, 16, 8, 3, 1]
    assert timesteps.tolist() == official


def test_noise_level_lies_between_the_neighbouring_training_steps():
    scheduler = MMDiffusionDPMSolverScheduler()
    scheduler.set_timesteps(20)
    acp = scheduler.alphas_cumprod
    alphas, sigmas = scheduler.sample_alphas, scheduler.sample_sigmas
    assert len(alphas) == len(sigmas) == len(scheduler.timesteps) + 1
    torch.testing.assert_close(alphas**2 + sigmas**2, torch.ones_like(alphas))
    # Model time n means continuous time in [(n + 1) / N, (n + 2) / N): alpha^2 between acp[n + 1] and acp[n].
    for n, alpha in zip(scheduler.timesteps.tolist(), alphas[:-1]):
        assert acp[min(n + 1, 999)] - 1e-6 <= alpha**2 <= acp[n] + 1e-6
    torch.testing.assert_close(alphas[-1] ** 2, acp[0])  # the solver ends at training step 0
    assert scheduler.noise_level == (alphas[0].item(), sigmas[0].item())


def test_third_order_convergence_on_gaussian_data(x_start):
    error_20, _ = relative_error_vs_exact(3, 20, x_start)
    error_41, _ = relative_error_vs_exact(3, 41, x_start)  # 41 = 13 * 3 + 2: same order pattern as 20
    assert error_20 < 1e-2
    # Doubling the steps divides a third-order error by about 8 (a second-order one by 4).
    assert error_20 / error_41 > 6


def test_more_accurate_than_ddim_and_lower_orders_at_same_cost(x_start):
    errors = {order: relative_error_vs_exact(order, 20, x_start)[0] for order in (1, 2, 3)}
    assert errors[3] < errors[2] < errors[1]

    _, exact = relative_error_vs_exact(3, 20, x_start)
    ddim = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    ddim.set_timesteps(20)  # 999, 949, ..., 49, then down to step 0: the same path, 20 evaluations
    x = x_start
    for t in ddim.timesteps:
        acp = ddim.alphas_cumprod[t].double()
        x = ddim.step(gaussian_eps(x, acp.sqrt(), (1 - acp).sqrt()), t, x).prev_sample
    ddim_error = ((x - exact).abs().max() / exact.abs().max()).item()
    assert errors[3] < ddim_error / 10


def test_v_prediction_follows_the_same_path_as_the_equivalent_noise_prediction(x_start):
    _, exact = relative_error_vs_exact(3, 20, x_start)
    scheduler = MMDiffusionDPMSolverScheduler(prediction_type="v_prediction")
    scheduler.set_timesteps(20)
    x = x_start
    for t in scheduler.timesteps:
        alpha, sigma = scheduler.noise_level
        eps = gaussian_eps(x, alpha, sigma)
        x0 = (x - sigma * eps) / alpha
        x = scheduler.step(alpha * eps - sigma * x0, t, x).prev_sample
    assert ((x - exact).abs().max() / exact.abs().max()).item() < 1e-2
    noise_scheduler = MMDiffusionDPMSolverScheduler()
    noise_scheduler.set_timesteps(20)
    torch.testing.assert_close(x, solve_gaussian(noise_scheduler, x_start), rtol=1e-6, atol=1e-6)


def test_step_works_for_any_rank():
    values = torch.randn(2, 48, generator=torch.Generator().manual_seed(1))
    results = []
    for shape in [(2, 4, 3, 2, 2), (2, 3, 16), (2, 48)]:
        scheduler = MMDiffusionDPMSolverScheduler()
        scheduler.set_timesteps(7)
        x = values.reshape(shape)
        for t in scheduler.timesteps:
            x = scheduler.step(torch.tanh(x) * (1 + t / 1000), t, x).prev_sample
        assert x.shape == shape
        results.append(x.reshape(2, 48))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


def test_low_precision_sample_keeps_its_dtype():
    scheduler = MMDiffusionDPMSolverScheduler()
    scheduler.set_timesteps(3)
    x = torch.randn(1, 2, 8).to(torch.bfloat16)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.tanh(x), t, x, return_dict=False)[0]
    assert x.dtype == torch.bfloat16 and torch.isfinite(x.float()).all()


def test_add_noise_uses_alphas_cumprod():
    scheduler = MMDiffusionDPMSolverScheduler()
    betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float64)
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-6)
    g = torch.Generator().manual_seed(2)
    for shape in [(2, 4, 3, 2, 2), (2, 1, 16)]:
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        timesteps = torch.tensor([10, 700])
        noisy = scheduler.add_noise(x0, noise, timesteps)
        for i, t in enumerate(timesteps.tolist()):
            a = float(np.cumprod(1 - betas)[t])
            torch.testing.assert_close(noisy[i], a**0.5 * x0[i] + (1 - a) ** 0.5 * noise[i])
    with pytest.raises(ValueError, match="timesteps"):
        scheduler.add_noise(x0, noise, torch.tensor([1000, 0]))


def test_config_round_trips_with_diffusers_schedulers(tmp_path):
    ours = MMDiffusionDPMSolverScheduler(beta_start=0.0002, beta_end=0.03)
    for other_class in (DDIMScheduler, DPMSolverMultistepScheduler):
        other = other_class.from_config(ours.config)
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"):
            assert other.config[key] == ours.config[key]
        torch.testing.assert_close(other.alphas_cumprod, ours.alphas_cumprod, atol=1e-6, rtol=0)

        back = MMDiffusionDPMSolverScheduler.from_config(other_class(beta_schedule="scaled_linear").config)
        assert back.config.beta_schedule == "scaled_linear"
        torch.testing.assert_close(back.alphas_cumprod, other_class(beta_schedule="scaled_linear").alphas_cumprod)

    ours.save_pretrained(tmp_path)
    loaded = MMDiffusionDPMSolverScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")
    }
    assert DDIMScheduler in ours.compatibles and DPMSolverMultistepScheduler in ours.compatibles
    assert len(ours) == 1000 and ours.init_noise_sigma == 1.0


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="prediction_type"):
        MMDiffusionDPMSolverScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="solver_order"):
        MMDiffusionDPMSolverScheduler(solver_order=4)
    scheduler = MMDiffusionDPMSolverScheduler()
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(x, 500, x)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.zeros(1, 5), scheduler.timesteps[0], x)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, scheduler.timesteps[-1], x)
