"""Tests for diffusion.py: schedule, q(x_t | x_0), Eq. (10), DDIM/DDPM steps, guidance, loss."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import (Denoiser, DiffusionConfig, GaussianDiffusion, diffusion_loss,
                       timestep_embedding)


def numpy_alphas_cumprod() -> np.ndarray:
    """MLD's scaled_linear schedule written independently in float64."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


TINY = DiffusionConfig(n_layers=3, n_heads=2, ff_dim=32)


def tiny_denoiser(latent=(1, 8), text_dim=16) -> Denoiser:
    return Denoiser(TINY, latent, text_dim)


class Oracle(nn.Module):
    """The exact noise predictor when every training latent equals `mu`:
    eps = (x_t - sqrt(abar_t) mu) / sqrt(1 - abar_t). Ignores the condition."""

    def __init__(self, diffusion: GaussianDiffusion, mu: torch.Tensor):
        super().__init__()
        self.diffusion, self.mu = diffusion, mu

    def forward(self, x_t, t, c):
        a = self.diffusion.alphas_cumprod[t].view(-1, 1, 1)
        return (x_t - a.sqrt() * self.mu) / (1 - a).sqrt()


def test_schedule_is_scaled_linear_float32():
    diff = GaussianDiffusion(DiffusionConfig())
    assert diff.betas.dtype == diff.alphas_cumprod.dtype == torch.float32
    assert diff.betas.shape == (1000,)
    assert diff.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert diff.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    np.testing.assert_allclose(diff.alphas_cumprod.numpy(), numpy_alphas_cumprod(), rtol=1e-6)
    # MLD: set_alpha_to_one=False, so the step after the last lands on abar_0, not 1
    assert diff.final_alpha_cumprod.item() == pytest.approx(1 - 0.00085, rel=1e-7)


def test_q_sample_matches_closed_form_mean_and_variance():
    """Over N draws, x_t has mean sqrt(abar_t) x0 and variance 1 - abar_t (standard errors:
    sqrt(var / N) for the mean, var sqrt(2 / N) for the variance; we allow 5 of them)."""
    torch.manual_seed(0)
    diff = GaussianDiffusion(DiffusionConfig())
    abar = numpy_alphas_cumprod()
    N = 200_000
    x0 = torch.tensor([[[2.0, -1.0, 0.5]]]).expand(N, 1, 3)
    for t in (0, 250, 999):
        x_t = diff.q_sample(x0, torch.full((N,), t), torch.randn(N, 1, 3)).double()
        var = 1 - abar[t]
        np.testing.assert_allclose(x_t.mean(0).numpy(), math.sqrt(abar[t]) * x0[0].numpy(),
                                   atol=5 * math.sqrt(var / N))
        np.testing.assert_allclose(x_t.var(0).numpy(), var, atol=5 * var * math.sqrt(2 / N))


def test_q_sample_agrees_with_iterating_eq1():
    """Running the Markov chain of Eq. (1) for 40 steps gives the moments of the closed form."""
    torch.manual_seed(0)
    diff = GaussianDiffusion(DiffusionConfig())
    betas = diff.betas.double()
    N, t = 200_000, 40
    x = torch.full((N,), 1.5, dtype=torch.float64)
    for s in range(t + 1):  # steps 0..t
        x = torch.sqrt(1 - betas[s]) * x + torch.sqrt(betas[s]) * torch.randn(N, dtype=torch.float64)
    closed = diff.q_sample(torch.full((N, 1, 1), 1.5), torch.full((N,), t), torch.randn(N, 1, 1))
    var = 1 - numpy_alphas_cumprod()[t]
    assert x.mean().item() == pytest.approx(closed.mean().item(), abs=7 * math.sqrt(2 * var / N))
    assert x.var().item() == pytest.approx(closed.double().var().item(), abs=7 * var * math.sqrt(4 / N))


def test_predict_x0_inverts_q_sample_given_the_true_noise():
    torch.manual_seed(0)
    diff = GaussianDiffusion(DiffusionConfig())
    x0, noise = torch.randn(6, 2, 8), torch.randn(6, 2, 8)
    t = torch.tensor([0, 1, 100, 500, 980, 999])
    x_t = diff.q_sample(x0, t, noise)
    torch.testing.assert_close(diff.predict_x0(x_t, t, noise), x0, atol=1e-5, rtol=1e-5)


def test_ddim_timesteps_are_leading_with_offset_one():
    diff = GaussianDiffusion(DiffusionConfig())
    ts = diff.ddim_timesteps(50)
    assert ts.tolist() == list(range(981, 0, -20))
    assert len(ts) == 50


def test_one_ddim_step_equals_the_hand_formula():
    """DDIM Eq. (12) by hand in float64, a = abar from the numpy schedule:
        x0 = (x - sqrt(1 - a_t) e) / sqrt(a_t)
        sigma = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p)
        x_prev = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) e + sigma n
    for a middle step (981 -> 961), with eta = 0 and 1, and for the last step (1 -> abar_0)."""
    torch.manual_seed(0)
    diff = GaussianDiffusion(DiffusionConfig())
    abar = numpy_alphas_cumprod()
    x, e, n = (torch.randn(3, 1, 8) for _ in range(3))
    xd, ed, nd = (v.double().numpy() for v in (x, e, n))
    for t, t_prev, a_p, eta in [(981, 961, abar[961], 0.0), (981, 961, abar[961], 1.0),
                                (1, -19, abar[0], 0.0)]:
        a_t = abar[t]
        x0 = (xd - math.sqrt(1 - a_t) * ed) / math.sqrt(a_t)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        expected = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma ** 2) * ed + sigma * nd
        got = diff.ddim_step(x, e, t, t_prev, eta, n if eta > 0 else None)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_samplers_with_an_oracle_denoiser():
    """With the exact eps of a point mass mu, deterministic DDIM keeps x0_hat = mu and the noise
    direction e fixed, ending at sqrt(abar_0) mu + sqrt(1 - abar_0) e (MLD's final alpha), where
    e = (z_T - sqrt(abar_981) mu) / sqrt(1 - abar_981)."""
    diff = GaussianDiffusion(DiffusionConfig())
    mu = torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 1, 4)
    oracle = Oracle(diff, mu).eval()
    c, c_uncond = torch.randn(2, 16), torch.zeros(16)
    z0 = diff.ddim_sample(oracle, c, c_uncond, (2, 1, 4), generator=torch.Generator().manual_seed(3))
    z_T = torch.randn((2, 1, 4), generator=torch.Generator().manual_seed(3))
    a_first, a_final = diff.alphas_cumprod[981], diff.alphas_cumprod[0]
    e = (z_T - a_first.sqrt() * mu) / (1 - a_first).sqrt()
    torch.testing.assert_close(z0, a_final.sqrt() * mu + (1 - a_final).sqrt() * e, atol=1e-4, rtol=1e-4)


def test_guidance_scale_one_is_conditional_and_eq8_holds():
    torch.manual_seed(0)
    diff = GaussianDiffusion(DiffusionConfig())
    den = tiny_denoiser().eval()
    x_t, t = torch.randn(3, 1, 8), torch.tensor([5, 500, 981])
    c, c_uncond = torch.randn(3, 16), torch.randn(16)
    with torch.no_grad():
        eps_cond = den(x_t, t, c)
        eps_uncond = den(x_t, t, c_uncond.expand(3, 16))
        torch.testing.assert_close(diff.guided_eps(den, x_t, t, c, c_uncond, 1.0), eps_cond,
                                   atol=1e-5, rtol=1e-5)
        # Eq. (8) with s = 7.5, and c_uncond given as (1, W)
        guided = diff.guided_eps(den, x_t, t, c, c_uncond[None], 7.5)
        torch.testing.assert_close(guided, 7.5 * eps_cond - 6.5 * eps_uncond, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(eps_cond, eps_uncond), "the condition must change the prediction"


def test_loss_is_eq2_and_drops_the_condition_one_time_in_ten():
    """A denoiser that predicts 0 and records its inputs: the loss must be the mean of eps^2,
    with eps recovered from x_t as (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), and about 10% of
    the rows must carry c_uncond (binomial standard error 0.002 for B = 20,000)."""
    diff = GaussianDiffusion(DiffusionConfig())
    seen = {}

    class Recorder(nn.Module):
        def forward(self, x_t, t, c):
            seen.update(x_t=x_t, t=t, c=c)
            return torch.zeros_like(x_t)

    B = 20_000
    x0, c, c_uncond = torch.randn(B, 1, 4), torch.randn(B, 8) + 5.0, torch.zeros(8)
    loss, parts = diff.loss(Recorder(), x0, c, c_uncond, generator=torch.Generator().manual_seed(0))
    a = diff.alphas_cumprod[seen["t"]].view(-1, 1, 1)
    eps = (seen["x_t"] - a.sqrt() * x0) / (1 - a).sqrt()
    assert parts["mse"] is loss
    assert loss.item() == pytest.approx(eps.pow(2).mean().item(), rel=1e-4)
    dropped = (seen["c"] == 0).all(dim=1)
    kept = (seen["c"] == c).all(dim=1)
    assert bool((dropped | kept).all())
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert seen["t"].min().item() >= 0 and seen["t"].max().item() <= 999
    assert seen["t"].float().std().item() == pytest.approx(1000 / math.sqrt(12), rel=0.05)


def test_diffusion_loss_by_hand():
    """eps = (1, 2), eps_pred = (0, 0): mean of squares = (1 + 4) / 2 = 2.5."""
    loss, parts = diffusion_loss(torch.zeros(1, 1, 2), torch.tensor([[[1.0, 2.0]]]))
    assert loss.item() == pytest.approx(2.5) and parts["mse"] is loss


def test_timestep_embedding_layout():
    """dim 4: freqs = 10000^(-i/2), i = 0, 1 -> (1, 0.01); t = 3 gives
    [cos 3, cos 0.03, sin 3, sin 0.03]."""
    emb = timestep_embedding(torch.tensor([0, 3]), 4)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(3), math.cos(0.03), math.sin(3), math.sin(0.03)]])
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize("latent,text_dim,cfg", [((1, 256), 768, DiffusionConfig()), ((2, 8), 16, TINY)],
                         ids=["paper-1x256", "tiny-2x8"])
def test_denoiser_shapes(latent, text_dim, cfg):
    torch.manual_seed(0)
    den = Denoiser(cfg, latent, text_dim)
    assert len(den.encoder.input_blocks) == (cfg.n_layers - 1) // 2
    z_t, c = torch.randn(3, *latent), torch.randn(3, text_dim)
    assert den(z_t, torch.tensor([0, 10, 999]), c).shape == (3, *latent)


def test_ddim_sampling_is_repeatable_and_needs_eval_mode():
    torch.manual_seed(0)
    den, diff = tiny_denoiser(latent=(2, 8)), GaussianDiffusion(DiffusionConfig())
    c, c_uncond = torch.randn(3, 16), torch.zeros(16)
    den.eval()
    a, b = (diff.ddim_sample(den, c, c_uncond, (3, 2, 8), steps=5,
                             generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert a.shape == (3, 2, 8) and torch.equal(a, b), "a generator makes sampling repeatable"
    den.train()
    with pytest.raises(AssertionError, match="eval"):
        diff.ddim_sample(den, c, c_uncond, (3, 2, 8), steps=5)


# ----------------------------------------------------------------------------
# MLD's text projection, time_cond, and MLD's released weights


def test_text_projection_is_mlds_relu_then_linear_by_default():
    torch.manual_seed(0)
    mld = Denoiser(TINY, (1, 8), 16)
    assert isinstance(mld.text_proj[0], nn.ReLU) and isinstance(mld.text_proj[1], nn.Linear)
    assert "text_proj.1.weight" in mld.state_dict(), "MLD's emb_proj.1 keys"
    c = torch.randn(4, 16)
    torch.testing.assert_close(mld.text_proj(c), mld.text_proj[1](c.clamp(min=0)))
    plain = Denoiser(DiffusionConfig(n_layers=3, n_heads=2, ff_dim=32, text_proj_relu=False), (1, 8), 16)
    assert isinstance(plain.text_proj, nn.Linear) and "text_proj.weight" in plain.state_dict()
    assert not torch.allclose(plain.text_proj(c), plain.text_proj(c.clamp(min=0))), "negative parts count"


def test_time_cond_is_added_to_the_sinusoid_before_the_time_mlp():
    torch.manual_seed(0)
    den = tiny_denoiser().eval()
    seen = []
    den.time_mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    z, t, c, w = torch.randn(2, 1, 8), torch.tensor([3, 500]), torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        plain, zero, cond = den(z, t, c), den(z, t, c, time_cond=torch.zeros(2, 16)), den(z, t, c, time_cond=w)
    torch.testing.assert_close(zero, plain)
    torch.testing.assert_close(seen[2], timestep_embedding(t, 16) + w)
    assert not torch.allclose(cond, plain)


def mld_denoiser_state_dict(d=256, text_dim=768, ff=1024, n_layers=9, pe_rows=500) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes of MLD-1's MldDenoiser (mld_denoiser.py:
    text condition, arch trans_enc, SKIP_CONNECT, PE type mld with learned `pe` (500, 1, d)),
    written from MLD's module structure (TimestepEmbedding linear_1/linear_2, emb_proj =
    Sequential(ReLU, Linear), query_pos, mem_pos, SkipTransformerEncoder), not from ours."""
    layer = {"self_attn.in_proj_weight": (3 * d, d), "self_attn.in_proj_bias": (3 * d,),
             "self_attn.out_proj.weight": (d, d), "self_attn.out_proj.bias": (d,),
             "linear1.weight": (ff, d), "linear1.bias": (ff,), "linear2.weight": (d, ff), "linear2.bias": (d,),
             "norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,)}
    side = (n_layers - 1) // 2
    blocks = [f"input_blocks.{i}" for i in range(side)] + ["middle_block"] + [f"output_blocks.{i}" for i in range(side)]
    shapes = {f"encoder.{b}.{k}": v for b in blocks for k, v in layer.items()}
    for i in range(side):
        shapes.update({f"encoder.linear_blocks.{i}.weight": (d, 2 * d), f"encoder.linear_blocks.{i}.bias": (d,)})
    shapes.update({"encoder.norm.weight": (d,), "encoder.norm.bias": (d,),
                   "time_embedding.linear_1.weight": (d, text_dim), "time_embedding.linear_1.bias": (d,),
                   "time_embedding.linear_2.weight": (d, d), "time_embedding.linear_2.bias": (d,),
                   "emb_proj.1.weight": (d, text_dim), "emb_proj.1.bias": (d,),
                   "query_pos.pe": (pe_rows, 1, d), "mem_pos.pe": (pe_rows, 1, d)})
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items()}


def test_mld_denoiser_weights_load_strictly_and_land_in_place():
    from diffusion import from_mld_state_dict
    sd = mld_denoiser_state_dict()
    cfg, latent_shape, text_dim, ours = from_mld_state_dict(sd, n_tokens=1)
    assert (latent_shape, text_dim) == ((1, 256), 768)
    assert (cfg.n_layers, cfg.n_heads, cfg.ff_dim, cfg.text_proj_relu) == (9, 4, 1024, True)
    den = Denoiser(cfg, latent_shape, text_dim)
    den.load_state_dict(ours, strict=True)
    assert torch.equal(den.pos, sd["query_pos.pe"][:3, 0]), "tokens [z_t, time, text]"
    assert torch.equal(den.time_mlp[0].weight, sd["time_embedding.linear_1.weight"])
    assert torch.equal(den.time_mlp[2].bias, sd["time_embedding.linear_2.bias"])
    assert torch.equal(den.text_proj[1].weight, sd["emb_proj.1.weight"])
    assert torch.equal(den.encoder.output_blocks[3].linear2.weight, sd["encoder.output_blocks.3.linear2.weight"])


def test_mld_denoiser_input_is_mlds_by_hand():
    """MLD's forward builds xseq = cat(sample, time_emb, emb_proj(c)) + query_pos.pe[:n+2] with
    time_emb = linear_2(silu(linear_1(sinusoid))), sinusoid = [cos | sin](t * 10000^(-i/(W/2)))
    (Timesteps with flip_sin_to_cos, freq_shift 0), emb_proj = Linear(ReLU(c)). Computed here
    from the MLD tensors (the sinusoid in numpy) and compared at the first block's input."""
    from diffusion import from_mld_state_dict
    sd = mld_denoiser_state_dict(d=32, text_dim=16, ff=64, n_layers=3, pe_rows=20)
    cfg, latent_shape, text_dim, ours = from_mld_state_dict(sd, n_tokens=2, n_heads=2)
    den = Denoiser(cfg, latent_shape, text_dim).eval()
    den.load_state_dict(ours, strict=True)
    seen = {}
    den.encoder.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    z, t, c = torch.randn(2, 2, 32), torch.tensor([0, 981]), torch.randn(2, 16)
    with torch.no_grad():
        den(z, t, c)
    freqs = np.exp(-math.log(10000.0) * np.arange(8) / 8)
    args = t.numpy()[:, None] * freqs[None, :]
    sinusoid = torch.tensor(np.concatenate([np.cos(args), np.sin(args)], axis=1), dtype=torch.float32)  # (2, 16)
    hidden = F.silu(sinusoid @ sd["time_embedding.linear_1.weight"].T + sd["time_embedding.linear_1.bias"])
    time = hidden @ sd["time_embedding.linear_2.weight"].T + sd["time_embedding.linear_2.bias"]
    text = c.clamp(min=0) @ sd["emb_proj.1.weight"].T + sd["emb_proj.1.bias"]
    expected = torch.cat([z, time[:, None], text[:, None]], dim=1) + sd["query_pos.pe"][:4, 0]
    torch.testing.assert_close(seen["x"], expected)


def test_mld_denoiser_ablations_and_unknown_keys_are_refused():
    from diffusion import from_mld_state_dict
    sd = mld_denoiser_state_dict(d=32, text_dim=16, ff=64, n_layers=3, pe_rows=20)
    with pytest.raises(ValueError, match="SKIP_CONNECT"):
        from_mld_state_dict({**sd, "encoder.layers.0.linear1.weight": torch.zeros(64, 32)}, n_tokens=1)
    with pytest.raises(ValueError, match="pose_embd"):
        from_mld_state_dict({**sd, "pose_embd.weight": torch.zeros(32, 263)}, n_tokens=1)
    with pytest.raises(ValueError, match="emb_proj"):
        from_mld_state_dict({k: v for k, v in sd.items() if not k.startswith("emb_proj")}, n_tokens=1)
