"""Latent diffusion over the MLD motion latent: schedule, denoiser, loss, DDIM, guidance.

Paper: LEAD: Latent Realignment for Human Motion Diffusion (Andreou et al., arXiv 2410.14508;
../shared/seeds/000_c8069c11a3356e2a.txt). Implements

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, (1 - alpha_t) I)                   Eq. (1)
        in closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)          (DDPM Eq. 4)
    E_{z_0, t, eps} || eps - eps_theta(z_t, t, c) ||^2                              Eq. (2)
    eps^s(z, t, c) = s eps_theta(z, t, c) + (1 - s) eps_theta(z, t, "")            Eq. (8)
    x0_hat = F(eps) = (x_t - sqrt(1 - abar_t) eps_theta(x_t)) / sqrt(abar_t)       Eq. (10)

with the denoiser of Sec. 4.1.1 (2) (a transformer with long skip connections over the tokens
[z_t, time, text]) and the sampler LEAD inherits from MLD (Sec. 5.2: "1K diffusion steps and 50
for training and inference"): DDIM (Song et al., arXiv 2010.02502, Eqs. 12 and 16) with eta 0 over
the training noise of DDPM (Ho et al., arXiv 2006.11239). Every number
follows MLD's configs (`configs/modules/scheduler.yaml`, `denoiser.yaml`,
`config_mld_humanml3d.yaml`), which drive diffusers' DDPMScheduler / DDIMScheduler;
`from_mld_state_dict` renames MLD's released denoiser weights (`mld_denoiser.py`) into ours.

Notation (code -> paper):
    x0, x_t           z_0^vae, z_t^vae     clean / noised VAE latent (B, n, d)
    t                 t                    step index 0..T-1 here = the paper's 1..T
    betas[t]          1 - alpha_t          per-step noise variance of Eq. (1)
    alphas_cumprod[t] abar_t = prod_{s<=t} alpha_s  (Eq. 10; DDIM's paper calls it alpha_t)
    eps               eps                  the Gaussian noise, and eps_theta its prediction
    c, c_uncond       c, "" (the empty set of Eq. 8)   text embeddings (B, W) / (W,)
    scale             s                    guidance scale, Eq. (8)
    eta, sigma        eta, sigma_t         DDIM stochasticity, DDIM Eq. (16)

Glossary: B batch, n latent tokens, d latent width (= denoiser width), W text width.

Differences from the paper:
- Eq. (2) is a squared norm; we take its element mean (MLD: nn.MSELoss), and t is drawn
  uniformly from the T training steps (index 0..999 for the paper's 1..1000).
- The text projection is MLD's Sequential(ReLU, Linear(768 -> 256)), so MLD's weights load
  (`from_mld_state_dict`); MLD flags its ReLU ("debug why relu"), which drops every negative
  CLIP component: `text_proj_relu=False` (not MLD) gives the plain Linear.
- The schedule is built in float64 and stored in float32 (diffusers builds it in float32);
  the two agree to about 1e-7.
- Eq. (8) is evaluated as written; MLD writes the same quantity as
  eps_uncond + s (eps_cond - eps_uncond).
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

import vae as vae_module
from vae import SkipTransformer


# ----------------------------------------------------------------------------
# Building blocks


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps: t (B,) -> (B, dim), laid out [cos | sin].

    The frequencies are max_period^(-i / (dim/2)), i = 0..dim/2-1, as diffusers' `Timesteps`
    with MLD's flip_sin_to_cos=True and freq_shift=0."""
    assert t.dim() == 1, f"timesteps are (B,), got shape {tuple(t.shape)}"
    assert dim % 2 == 0, f"the time embedding needs an even width, got {dim}"
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (dim/2,)
    args = t.float()[:, None] * freqs[None, :]                                  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)                # (B, dim)


@dataclass
class DiffusionConfig:
    n_layers: int = 9             # MLD denoiser.yaml num_layers (skip transformer: 4 + 1 + 4)
    n_heads: int = 4              # MLD denoiser.yaml num_heads
    ff_dim: int = 1024            # MLD denoiser.yaml ff_size
    dropout: float = 0.1          # MLD denoiser.yaml dropout
    activation: str = "gelu"      # MLD denoiser.yaml activation
    train_steps: int = 1000       # MLD scheduler.yaml num_train_timesteps; LEAD Sec. 5.2 "1K"
    beta_start: float = 0.00085   # MLD scheduler.yaml, beta_schedule scaled_linear
    beta_end: float = 0.012       # MLD scheduler.yaml
    sample_steps: int = 50        # MLD num_inference_timesteps; LEAD Sec. 5.2 "50 for inference"
    eta: float = 0.0              # MLD scheduler.yaml eta (deterministic DDIM)
    steps_offset: int = 1         # MLD scheduler.yaml steps_offset: timesteps 981, 961, ..., 1
    set_alpha_to_one: bool = False  # MLD scheduler.yaml: the last DDIM step lands on abar_0
    guidance_scale: float = 7.5   # MLD config_mld_humanml3d.yaml guidance_scale, Eq. (8)
    cond_drop: float = 0.1        # MLD guidance_uncondp; LEAD Sec. 4.1.2 "10% dropout"
    text_proj_relu: bool = True   # MLD mld_denoiser.py emb_proj = Sequential(ReLU, Linear); False: Linear
    AT_LEAST_ZERO: ClassVar = ("steps_offset", "guidance_scale")  # ranges: config.check_ranges
    SAMPLING: ClassVar = ("sample_steps", "eta", "guidance_scale")  # read when sampling only: the command line's
    FRACTIONS: ClassVar = ("dropout", "eta", "cond_drop")

    def __post_init__(self):
        if self.beta_start > self.beta_end:
            raise ValueError(f"diffusion.beta_end={self.beta_end}: must be >= diffusion.beta_start ({self.beta_start})")


# ----------------------------------------------------------------------------
# The denoiser eps_theta(z_t, t, c)


class Denoiser(nn.Module):
    """MLD's denoiser: a skip transformer over [z_t tokens, time token, text token].

    Width = the latent width d, so z_t enters the transformer as tokens directly and the
    first n output tokens (after the stack's final LayerNorm) are the predicted noise, as in MLD.
    """

    def __init__(self, cfg: DiffusionConfig, latent_shape: tuple[int, int], text_dim: int):
        super().__init__()
        n, d = latent_shape
        self.cfg = cfg
        self.latent_shape = (n, d)
        self.text_dim = text_dim
        # time: sinusoid as wide as the text embedding -> Linear, SiLU, Linear (MLD
        # Timesteps(text_encoded_dim) + TimestepEmbedding(text_encoded_dim, latent_dim))
        self.time_mlp = nn.Sequential(nn.Linear(text_dim, d), nn.SiLU(), nn.Linear(d, d))
        # text: MLD's emb_proj, ReLU then Linear (keys text_proj.1.*), or the plain Linear (text_proj.*)
        if cfg.text_proj_relu:
            self.text_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_dim, d))
        else:
            self.text_proj = nn.Linear(text_dim, d)
        # note: MLD's learned positions start uniform in [0, 1), not centred on zero
        self.pos = nn.Parameter(torch.rand(n + 2, d))
        self.encoder = SkipTransformer(cfg.n_layers, d, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                       cfg.activation)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                time_cond: torch.Tensor | None = None) -> torch.Tensor:
        """z_t (B, n, d), t (B,) long, c (B, W) -> eps_theta (B, n, d).

        time_cond (B, W), optional, is added to the timestep sinusoid before the time MLP: the
        input through which a latent consistency model (lcm.py) receives its guidance scale."""
        B, n, d = z_t.shape
        assert (n, d) == self.latent_shape, f"z_t must be (B, {n}, {d}), got {tuple(z_t.shape)}"
        assert t.shape == (B,), f"one timestep per sample: t is ({B},), got {tuple(t.shape)}"
        assert c.shape == (B, self.text_dim), \
            f"c must be (B, W) = ({B}, {self.text_dim}), got {tuple(c.shape)}"
        sinusoid = timestep_embedding(t, self.text_dim)                          # (B, W)
        if time_cond is not None:
            assert time_cond.shape == (B, self.text_dim), \
                f"time_cond must be (B, W) = ({B}, {self.text_dim}), got {tuple(time_cond.shape)}"
            sinusoid = sinusoid + time_cond
        time = self.time_mlp(sinusoid)                                           # (B, d)
        text = self.text_proj(c)                                                 # (B, d)
        x = torch.cat([z_t, time[:, None], text[:, None]], dim=1) + self.pos    # (B, n+2, d)
        return self.encoder(x)[:, :n]                                            # (B, n, d)


# ----------------------------------------------------------------------------
# Loss


def diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor):
    """Eq. (2), mean over elements (MLD: MSELoss) -> (loss, {"mse"})."""
    assert eps_pred.shape == eps.shape, f"{tuple(eps_pred.shape)} vs {tuple(eps.shape)}"
    # Eq. (2): || eps - eps_theta(z_t, t, c) ||^2
    mse = (eps - eps_pred).pow(2).mean()
    return mse, {"mse": mse}


# ----------------------------------------------------------------------------
# Schedule, noising, guidance and samplers


class GaussianDiffusion(nn.Module):
    """The noise schedule as buffers, q(x_t | x_0), Eq. (10), Eq. (8) and DDIM."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        T = cfg.train_steps
        # "scaled_linear": the square roots of the betas are evenly spaced (built in float64)
        betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, T, dtype=torch.float64) ** 2
        # Eq. (1): alpha_t = 1 - beta_t;  Eq. (10): abar_t = prod_{s <= t} alpha_s
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # the step after the last DDIM step: abar = 1 (a clean sample) or abar_0 (MLD)
        final = torch.tensor(1.0, dtype=torch.float64) if cfg.set_alpha_to_one else alphas_cumprod[0]
        self.register_buffer("betas", betas.float())                            # (T,)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())          # (T,)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt().float())
        self.register_buffer("final_alpha_cumprod", final.float())              # ()

    @staticmethod
    def _uncond_rows(c_uncond: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The one embedding of "" ((W,) or (1, W)) repeated for each row of c: (B, W)."""
        W = c.shape[1]
        assert c_uncond.numel() == W, (f"c_uncond is the single embedding of \"\", (W,) or (1, W) "
                                       f"with W = {W}; got {tuple(c_uncond.shape)}")
        return c_uncond.reshape(1, -1).expand_as(c)

    @staticmethod
    def _per_sample(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, ..., 1) to broadcast against x (B, ...)."""
        assert t.shape == (x.shape[0],), f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}"
        return values[t].view(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. (1) in closed form: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        assert noise.shape == x0.shape, f"noise {tuple(noise.shape)} vs x0 {tuple(x0.shape)}"
        return (self._per_sample(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._per_sample(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. (10): x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return ((x_t - self._per_sample(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps)
                / self._per_sample(self.sqrt_alphas_cumprod, t, x_t))

    def loss(self, denoiser: nn.Module, x0: torch.Tensor, c: torch.Tensor, c_uncond: torch.Tensor,
             generator: torch.Generator | None = None):
        """Eq. (2) with classifier-free-guidance training -> (loss, {"mse"}).

        x0 (B, n, d) latents from the frozen VAE, c (B, W) text embeddings, c_uncond (W,) or
        (1, W) the embedding of "" that replaces each row of c with probability cond_drop."""
        B = x0.shape[0]
        # t ~ Uniform{0, ..., T-1}, eps ~ N(0, I)
        t = torch.randint(0, self.cfg.train_steps, (B,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)                                        # (B, n, d)
        # drop the condition: c -> tau("") with probability cond_drop, per sample
        drop = torch.rand(B, device=x0.device, generator=generator) < self.cfg.cond_drop
        c = torch.where(drop[:, None], self._uncond_rows(c_uncond, c), c)       # (B, W)
        return diffusion_loss(denoiser(x_t, t, c), noise)

    def guided_eps(self, denoiser: nn.Module, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                   c_uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Eq. (8), with the conditional and unconditional passes as one batch of 2B."""
        c_both = torch.cat([self._uncond_rows(c_uncond, c), c])                 # (2B, W)
        eps_uncond, eps_cond = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), c_both).chunk(2)
        # Eq. (8): eps^s = s eps_theta(z, t, c) + (1 - s) eps_theta(z, t, "")
        return scale * eps_cond + (1.0 - scale) * eps_uncond

    def ddim_timesteps(self, steps: int) -> torch.Tensor:
        """diffusers' "leading" spacing: T/steps apart, shifted by steps_offset, descending.
        T = 1000, 50 steps, offset 1 -> 981, 961, ..., 21, 1."""
        T = self.cfg.train_steps
        if not 0 < steps <= T:
            raise ValueError(f"DDIM steps must lie in 1..{T}, got {steps}")
        ratio = T // steps
        return (torch.arange(steps - 1, -1, -1) * ratio + self.cfg.steps_offset).long()

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DDIM update x_t -> x_{t_prev} (DDIM formulas 12 and 16, diffusers' step()).

        t_prev < 0 marks the last step, which lands on final_alpha_cumprod (abar_0 for MLD)."""
        B = x_t.shape[0]
        # 1. abar_t and abar_{t_prev}
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod
        # 2. predicted x_0, formula (12) "predicted x_0" = LEAD Eq. (10):
        #    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        x0_hat = self.predict_x0(x_t, torch.full((B,), t, device=x_t.device), eps)
        # 3. formula (16):
        #    sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        # 4. formula (12) "direction pointing to x_t": sqrt(1 - abar_prev - sigma_t^2) eps
        #    (clamped: rounding can push 1 - abar_prev - sigma^2 a hair below 0 when eta = 1)
        direction = torch.sqrt((1 - a_prev - sigma ** 2).clamp(min=0.0)) * eps
        # 5. formula (12): x_{t_prev} = sqrt(abar_prev) x0_hat + direction + sigma_t noise
        x_prev = torch.sqrt(a_prev) * x0_hat + direction
        if eta > 0:
            assert noise is not None, "eta > 0 adds sigma_t * noise: pass noise ~ N(0, I)"
            x_prev = x_prev + sigma * noise
        return x_prev

    @torch.no_grad()
    def ddim_sample(self, denoiser: nn.Module, c: torch.Tensor, c_uncond: torch.Tensor,
                    shape: tuple[int, int, int], steps: int | None = None, eta: float | None = None,
                    scale: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z_T ~ N(0, I) -> z_0 (B, n, d) with guided DDIM (LEAD Sec. 4.1.3). shape = (B, n, d).
        steps, eta, scale default to the config (50, 0, 7.5)."""
        steps = self.cfg.sample_steps if steps is None else steps
        eta = self.cfg.eta if eta is None else eta
        scale = self.cfg.guidance_scale if scale is None else scale
        x = self._initial_noise(denoiser, c, shape, generator)
        ratio = self.cfg.train_steps // steps
        for t in self.ddim_timesteps(steps).tolist():
            t_batch = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
            eps = self.guided_eps(denoiser, x, t_batch, c, c_uncond, scale)
            noise = torch.randn(shape, device=x.device, generator=generator) if eta > 0 else None
            x = self.ddim_step(x, eps, t, t - ratio, eta, noise)
        return x

    @staticmethod
    def _initial_noise(denoiser: nn.Module, c: torch.Tensor, shape, generator) -> torch.Tensor:
        assert not denoiser.training, "call denoiser.eval() before sampling (dropout would be on)"
        assert len(shape) == 3 and shape[0] == c.shape[0], \
            f"shape is (B, n, d) with B = len(c) = {c.shape[0]}, got {tuple(shape)}"
        # z_T ~ N(0, I) (diffusers' init_noise_sigma is 1 for DDIM)
        return torch.randn(shape, device=c.device, generator=generator)


# ----------------------------------------------------------------------------
# MLD's released weights


def from_mld_state_dict(sd: dict[str, torch.Tensor], n_tokens: int, n_heads: int = 4):
    """MLD's denoiser weights -> (DiffusionConfig, latent_shape, text_dim, state_dict for Denoiser).

    sd is the `denoiser.` part of MLD's Lightning state_dict with that prefix removed (MLD
    `mld_denoiser.py` MldDenoiser, text condition, arch trans_enc with SKIP_CONNECT, PE type mld).
    Key map (MLD -> here):
        time_embedding.linear_1 / linear_2  -> time_mlp.0 / time_mlp.2   (Linear, SiLU, Linear)
        emb_proj.1                          -> text_proj.1               (ReLU, Linear)
        query_pos.pe (500, 1, d)            -> pos = pe[:n + 2, 0]       tokens [z_t, time, text]
        mem_pos.pe                          -> unused (MLD's trans_dec architecture only)
        encoder.*                           -> encoder.*                 (same layer names)
    Widths, layer count and feed-forward size are read from the tensor shapes. The number of
    latent tokens n is not in the denoiser's weights (it takes the VAE's: vae.from_mld_state_dict),
    nor is the number of attention heads (MLD's denoiser.yaml: 4).
    """
    if any(k.startswith(("encoder.layers.", "decoder.")) for k in sd):
        raise ValueError("this MLD denoiser is an ablation without the skip transformer "
                         "(SKIP_CONNECT=False or arch trans_dec); only the released layout converts")
    missing = {"time_embedding.linear_1.weight", "emb_proj.1.weight", "query_pos.pe",
               "encoder.middle_block.linear1.weight"} - sd.keys()
    if missing:
        raise ValueError(f"not an MLD text-conditioned denoiser state dict: missing {sorted(missing)}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens is the VAE's number of latent tokens, >= 1; got {n_tokens}")
    d, text_dim = sd["emb_proj.1.weight"].shape                                  # (d, W)
    ff_dim = sd["encoder.middle_block.linear1.weight"].shape[0]
    n_side = len({k.split(".")[2] for k in sd if k.startswith("encoder.input_blocks.")})
    pe = sd["query_pos.pe"]                                                      # (500, 1, d)
    if pe.dim() != 3 or pe.shape[1:] != (1, d) or pe.shape[0] < n_tokens + 2:
        raise ValueError(f"query_pos.pe should be (max_len, 1, {d}) with at least {n_tokens + 2} "
                         f"rows, got {tuple(pe.shape)}")
    cfg = DiffusionConfig(n_layers=2 * n_side + 1, n_heads=n_heads, ff_dim=ff_dim, text_proj_relu=True)
    renamed = {"time_embedding.linear_1.": "time_mlp.0.", "time_embedding.linear_2.": "time_mlp.2.",
               "emb_proj.1.": "text_proj.1.", "encoder.": "encoder."}
    out = {"pos": pe[: n_tokens + 2, 0].clone()}                                 # (n + 2, d)
    for key, value in sd.items():
        if key in ("query_pos.pe", "mem_pos.pe"):
            continue
        prefix = next((p for p in renamed if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"MLD denoiser key {key!r} has no counterpart here")
        out[renamed[prefix] + key[len(prefix):]] = value
    return cfg, (n_tokens, d), text_dim, out


def mld_checkpoints(path) -> dict[str, dict]:
    """MLD's released Lightning checkpoint (read by safe_pickle, without running its pickled code)
    -> {"vae": ..., "diffusion": ...}, each a checkpoint dict of this project (loop.fit's layout,
    marked done), both converted and loaded into our models first so nothing that does not fit
    is written."""
    import safe_pickle  # only here: the stage that imports MLD's weights
    state = safe_pickle.load_torch_checkpoint(path)
    sd = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith("denoiser.") for k in sd):
        raise ValueError(f"{path}: no `state_dict` with `vae.` and `denoiser.` keys (MLD's Lightning checkpoint)")

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    vae_cfg, feat_dim, vae_sd = vae_module.from_mld_state_dict(part("vae."))
    den_cfg, latent_shape, text_dim, den_sd = from_mld_state_dict(part("denoiser."), n_tokens=vae_cfg.n_tokens)
    vae_module.MotionVAE(vae_cfg, feat_dim).load_state_dict(vae_sd, strict=True)  # refuse what does not fit
    Denoiser(den_cfg, latent_shape, text_dim).load_state_dict(den_sd, strict=True)
    done = {"step": 0, "done": True, "running": {}}
    return {"vae": {"model": vae_sd, "config": dataclasses.asdict(vae_cfg), "meta": {"feat_dim": feat_dim}, **done},
            "diffusion": {"model": den_sd, "config": dataclasses.asdict(den_cfg), **done,
                          "meta": {"latent_shape": list(latent_shape), "text_dim": text_dim}}}
