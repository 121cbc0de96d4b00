"""Tests for lcm.py: boundary scalings, w embedding, teacher step, consistency target, EMA, sampling."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import projector
from diffusion import Denoiser, DiffusionConfig, GaussianDiffusion
from lcm import (ConsistencyDenoiser, LCMConfig, boundary_scalings, consistency_pair, ddim_grid,
                 distillation_loss, ema_copy, ema_update, guidance_scale_embedding,
                 lcm_sample, lcm_timesteps, pseudo_huber, teacher_ddim_step)

TINY = DiffusionConfig(n_layers=3, n_heads=2, ff_dim=32, dropout=0.0)
LATENT, TEXT = (2, 8), 16


def tiny_models(seed=0, cfg=LCMConfig()):
    """A random teacher (eval, frozen), its fresh student (train) and the student's EMA target (eval)."""
    torch.manual_seed(seed)
    teacher = Denoiser(TINY, LATENT, TEXT).eval().requires_grad_(False)
    student = ConsistencyDenoiser.from_teacher(teacher, cfg)
    target = ema_copy(student).eval()
    return teacher, student, target


def perturb(model: nn.Module, scale=0.05, seed=1):
    """Move every parameter (the zero w projection included) so that w matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_boundary_scalings_by_hand():
    """sd = 0.5, s = 10: t = 0 gives (1, 0); t = 1 gives s t = 10, so c_skip = 0.25 / 100.25 and
    c_out = 10 / sqrt(100.25); t = 19 gives 190: c_skip = 0.25 / 36100.25."""
    t = torch.tensor([0, 1, 19, 999])
    c_skip, c_out = boundary_scalings(t, sigma_data=0.5, timestep_scaling=10.0)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert c_skip[1].item() == pytest.approx(0.25 / 100.25, rel=1e-6)
    assert c_out[1].item() == pytest.approx(10 / math.sqrt(100.25), rel=1e-6)
    assert c_skip[2].item() == pytest.approx(0.25 / 36100.25, rel=1e-6)
    assert c_out[3].item() == pytest.approx(9990 / math.sqrt(9990 ** 2 + 0.25), rel=1e-6)
    # c_skip + c_out^2 = (sd^2 + (s t)^2) / ((s t)^2 + sd^2) = 1 at every t
    np.testing.assert_allclose((c_skip.double() + c_out.double() ** 2).numpy(), 1.0, rtol=1e-6)


def test_guidance_scale_embedding_by_hand():
    """w = 0: sin 0 = 0 in the first half, cos 0 = 1 in the second. w = 0.001 (1 after the x1000):
    frequencies 10000^(-i / 3) for dim 8, so the sines are sin(1), sin(10^(-4/3)), ..."""
    emb = guidance_scale_embedding(torch.tensor([0.0, 0.001]), 8)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0].numpy(), [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    freqs = np.array([10000.0 ** (-i / 3) for i in range(4)])
    np.testing.assert_allclose(emb[1].numpy(), np.concatenate([np.sin(freqs), np.cos(freqs)]), rtol=1e-5)


def test_fresh_student_is_the_teacher_whatever_w():
    """The w projection starts at zero (MotionLCM zero_init_cond), so f_theta's noise prediction is
    the teacher's conditional one for every w; moving the projection makes w matter."""
    teacher, student, _ = tiny_models()
    assert torch.count_nonzero(student.w_proj.weight) == 0
    z, t, c = torch.randn(3, *LATENT), torch.tensor([0, 500, 999]), torch.randn(3, TEXT)
    for w in (0.0, 5.0, 15.0):
        torch.testing.assert_close(student(z, t, c, torch.full((3,), w)), teacher(z, t, c),
                                   rtol=0, atol=1e-6)
    with torch.no_grad():
        student.w_proj.weight.normal_()
    low, high = student(z, t, c, torch.full((3,), 5.0)), student(z, t, c, torch.full((3,), 15.0))
    assert not torch.allclose(low, high)
    # the teacher's parameters are untouched and the student's state dict extends the teacher's
    assert set(student.denoiser.state_dict()) == set(teacher.state_dict())


def test_consistency_x0_is_c_skip_z_plus_c_out_x0():
    """f = c_skip z + c_out (z - sqrt(1 - abar) eps) / sqrt(abar); at t = 0 it returns z exactly."""
    teacher, student, _ = tiny_models()
    perturb(student)
    schedule = GaussianDiffusion(TINY)
    z, c, w = torch.randn(2, *LATENT), torch.randn(2, TEXT), torch.tensor([6.5, 9.0])
    t = torch.tensor([0, 500])
    eps = student(z, t, c, w)
    a = schedule.alphas_cumprod[500].item()
    x0 = (z[1] - math.sqrt(1 - a) * eps[1]) / math.sqrt(a)
    c_skip, c_out = 0.25 / (5000 ** 2 + 0.25), 5000 / math.sqrt(5000 ** 2 + 0.25)
    f = student.consistency_x0(schedule, z, t, c, w)
    torch.testing.assert_close(f[0], z[0], rtol=0, atol=0)
    torch.testing.assert_close(f[1], c_skip * z[1] + c_out * x0, rtol=1e-5, atol=1e-5)


def test_consistency_pair_by_hand():
    """One distillation step, written out: z_{t_{n+k}} = sqrt(abar) z0 + sqrt(1 - abar) eps; the
    teacher's guided noise (1 + w) eps(c) - w eps("") and DDIM step to t_n = t_{n+k} - k; the
    target network's f at t_n; the student's f at t_{n+k}. Sample 0 sits at the grid's bottom
    (t_{n+k} = 19 -> t_n = 0), where the target is z^_{t_n} itself (boundary condition)."""
    teacher, student, target = tiny_models()
    perturb(student, seed=1)
    perturb(target, seed=2)  # the target differs from the student, as after some EMA updates
    schedule = GaussianDiffusion(TINY)
    torch.manual_seed(3)
    z0, c, c_u = torch.randn(2, *LATENT), torch.randn(2, TEXT), torch.randn(TEXT)
    noise, w = torch.randn(2, *LATENT), torch.tensor([5.0, 12.0])
    t_start, t_end = torch.tensor([19, 519]), torch.tensor([0, 499])  # k = 1000 // 50 = 20
    prediction, goal = consistency_pair(student, target, teacher, schedule, z0, c, c_u, t_start, w,
                                        noise)

    ab = schedule.alphas_cumprod.double()
    expected_goal, expected_pred = [], []
    for i in range(2):
        ts, te = t_start[i].item(), t_end[i].item()
        z_s = (ab[ts].sqrt() * z0[i] + (1 - ab[ts]).sqrt() * noise[i]).float()[None]
        with torch.no_grad():
            eps_c = teacher(z_s, t_start[i:i + 1], c[i:i + 1])
            eps_u = teacher(z_s, t_start[i:i + 1], c_u[None])
        eps_g = (1 + w[i]) * eps_c - w[i] * eps_u
        # MotionLCM guides the x0 predictions: x0_c + w (x0_c - x0_u)
        x0_c = (z_s - (1 - ab[ts]).sqrt() * eps_c) / ab[ts].sqrt()
        x0_u = (z_s - (1 - ab[ts]).sqrt() * eps_u) / ab[ts].sqrt()
        x0_g = x0_c + w[i] * (x0_c - x0_u)
        z_e = (ab[te].sqrt() * x0_g + (1 - ab[te]).sqrt() * eps_g).float()
        with torch.no_grad():
            eps_t = target(z_e, t_end[i:i + 1], c[i:i + 1], w[i:i + 1])
        cs, co = 0.25 / ((10 * te) ** 2 + 0.25), 10 * te / math.sqrt((10 * te) ** 2 + 0.25)
        expected_goal.append(cs * z_e + co * (z_e - (1 - ab[te]).sqrt() * eps_t) / ab[te].sqrt())
        eps_s = student(z_s, t_start[i:i + 1], c[i:i + 1], w[i:i + 1])
        cs, co = 0.25 / ((10 * ts) ** 2 + 0.25), 10 * ts / math.sqrt((10 * ts) ** 2 + 0.25)
        expected_pred.append(cs * z_s + co * (z_s - (1 - ab[ts]).sqrt() * eps_s) / ab[ts].sqrt())
    torch.testing.assert_close(goal, torch.cat(expected_goal).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prediction, torch.cat(expected_pred).float(), rtol=1e-4, atol=1e-4)
    # boundary: at t_n = 0 the target is the teacher's z^_0 itself
    z_end = teacher_ddim_step(teacher, schedule, schedule.q_sample(z0, t_start, noise), t_start, t_end,
                              c, c_u, w)
    torch.testing.assert_close(goal[0], z_end[0], rtol=0, atol=0)
    assert prediction.requires_grad and not goal.requires_grad


def test_distillation_loss_replays_its_draws_and_trains_only_the_student():
    """distillation_loss draws eps, n, w in that order from the generator; replaying the draws
    through consistency_pair and the pseudo-Huber distance gives the same loss, and its gradient
    reaches the student alone."""
    teacher, student, target = tiny_models()
    perturb(target, seed=2)
    schedule = GaussianDiffusion(TINY)
    cfg = LCMConfig()
    z0, c, c_u = torch.randn(4, *LATENT), torch.randn(4, TEXT), torch.randn(TEXT)
    loss, parts = distillation_loss(student, target, teacher, schedule, z0, c, c_u, cfg,
                                    torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(z0.shape, generator=g)
    index = torch.randint(0, 50, (4,), generator=g)
    w = 5.0 + 10.0 * torch.rand(4, generator=g)
    t_start = (index + 1) * 20 - 1  # the grid 19, 39, ..., 999
    pred, goal = consistency_pair(student, target, teacher, schedule, z0, c, c_u, t_start, w, noise)
    expected = (torch.sqrt((pred - goal) ** 2 + 0.001 ** 2) - 0.001).mean()
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"huber"}
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert student.w_proj.weight.grad is not None  # the zero projection does learn


def test_pseudo_huber_by_hand():
    """a - b = (3, 4), c = 1: (sqrt(10) - 1 + sqrt(17) - 1) / 2. Small c: close to |a - b|;
    large c: close to (a - b)^2 / (2 c)."""
    a, b = torch.tensor([3.0, 4.0]), torch.zeros(2)
    expected = (math.sqrt(10) - 1 + math.sqrt(17) - 1) / 2
    assert pseudo_huber(a, b, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert pseudo_huber(a, b, 1e-3).item() == pytest.approx(3.5, rel=1e-3)
    assert pseudo_huber(a, b, 1e3).item() == pytest.approx((9 + 16) / 2 / 2e3, rel=1e-2)


def test_ema_update_by_hand():
    """mu = 0.9: theta- = 0.9 * 1 + 0.1 * 3 = 1.2; the online network is left alone."""
    target, online = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.fill_(1.0), target.bias.fill_(-1.0)
        online.weight.fill_(3.0), online.bias.fill_(1.0)
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, torch.full((1, 2), 1.2))
    torch.testing.assert_close(target.bias, torch.tensor([-0.8]))
    torch.testing.assert_close(online.weight, torch.full((1, 2), 3.0))
    with pytest.raises(ValueError):  # different architectures are an error, not a partial update
        ema_update(target, nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 1)), 0.9)


def test_timestep_grids_match_diffusers_formulas():
    """The distillation grid (arange(1, N + 1) k - 1) and the sampling timesteps (grid reversed at
    floor(linspace(0, N, steps, endpoint=False))), computed here with numpy as diffusers 0.24.0 does."""
    np.testing.assert_array_equal(ddim_grid(1000, 50).numpy(), np.arange(1, 51) * 20 - 1)
    for n in (50, 10):
        grid = (np.arange(1, n + 1) * (1000 // n) - 1)[::-1]
        for steps in (1, 2, 4):
            idx = np.floor(np.linspace(0, n, num=steps, endpoint=False)).astype(np.int64)
            assert lcm_timesteps(steps, 1000, n) == grid[idx].tolist()
    assert lcm_timesteps(4, 1000, 50) == [999, 759, 499, 259]
    assert lcm_timesteps(4, 1000, 10) == [999, 799, 499, 299]
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        lcm_timesteps(11, 1000, 10)


def test_one_step_sampling_is_the_consistency_function_of_the_noise():
    _, student, _ = tiny_models()
    model = perturb(student).eval()
    schedule = GaussianDiffusion(TINY)
    c = torch.randn(3, TEXT)
    z0 = lcm_sample(model, schedule, c, steps=1, w=6.5, generator=torch.Generator().manual_seed(0))
    z_T = torch.randn((3, *LATENT), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.consistency_x0(schedule, z_T, torch.full((3,), 999), c, torch.full((3,), 6.5))
    torch.testing.assert_close(z0, expected, rtol=0, atol=0)
    # steps and w default to the config: 1 step at w = 6.5 (MotionLCM V1's guidance_scale 7.5 - 1)
    default = lcm_sample(model, schedule, c, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(default, expected, rtol=0, atol=0)


def test_two_step_sampling_renoises_to_the_next_timestep():
    """2 steps: x0 = f(z_T, 999); z_499 = sqrt(abar_499) x0 + sqrt(1 - abar_499) eps; f(z_499, 499)."""
    _, student, _ = tiny_models()
    model = perturb(student).eval()
    schedule = GaussianDiffusion(TINY)
    c, w = torch.randn(2, TEXT), torch.full((2,), 3.0)
    z0 = lcm_sample(model, schedule, c, steps=2, w=3.0, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    z = torch.randn((2, *LATENT), generator=g)
    with torch.no_grad():
        x0 = model.consistency_x0(schedule, z, torch.full((2,), 999), c, w)
        a = schedule.alphas_cumprod[499]
        z = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn((2, *LATENT), generator=g)
        expected = model.consistency_x0(schedule, z, torch.full((2,), 499), c, w)
    torch.testing.assert_close(z0, expected, rtol=0, atol=0)


def test_generate_with_a_consistency_model_samples_realigns_then_decodes():
    """projector.generate with MotionLCM's sampler (LEAD Tab. 5): lcm_sample, D_proj(E_proj(.)), D_vae."""
    teacher, student, _ = tiny_models()
    model = student.eval()

    class Realigner:
        def realign(self, z):
            return z + 100.0

    class VAE:
        latent_shape = LATENT

        def decode(self, z, lengths):
            self.z = z
            return torch.zeros(z.shape[0], int(max(lengths)), 5)

    class Text:
        def __init__(self, c):
            self.c = c

        def encode_cached(self, captions):
            return self.c[:len(captions)]

    vae, c = VAE(), torch.randn(2, TEXT)
    pipe = projector.Pipeline(Text(c), vae, teacher.eval(), consistency=model, steps=2)
    motion = projector.generate(pipe, ["a", "b"], torch.tensor([7, 9]), realigner=Realigner(),
                                generator=torch.Generator().manual_seed(0))
    expected = lcm_sample(model, pipe.schedule, c, 2, model.cfg.sample_w, torch.Generator().manual_seed(0)) + 100.0
    assert motion.shape == (2, 9, 5)
    torch.testing.assert_close(vae.z, expected, rtol=0, atol=0)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="w_min"):
        LCMConfig(w_min=16.0)
    with pytest.raises(ValueError, match="loss_type"):
        LCMConfig(loss_type="l1")
