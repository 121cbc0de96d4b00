"""The LEAD projector: realigning the diffused motion latent with CLIP's text space.

Paper: LEAD: Latent Realignment for Human Motion Diffusion (Andreou et al., arXiv 2410.14508;
../shared/seeds/000_c8069c11a3356e2a.txt). Implements Sec. 4.1.1 (4) and Sec. 4.1.2:

    z_proj = E_proj(z_vae),  z_vae_hat = D_proj(z_proj)                          Eq. (3)
    L_align = 1 - cos(z_proj, c)                                                 Eq. (4)
    L_rec   = ||z_vae - z_vae_hat||^2                                            Eq. (5)
    L_var   = KL(P(z_vae), Q(z_vae_hat))                                         Eq. (6)
    L = lambda_align L_align + lambda_rec L_rec + lambda_var L_var               Eq. (7)

and the realignment used at inference (Sec. 4.1.3): x = D_vae(D_proj(E_proj(z_vae))). The Tab. 6
ablations are configurations of this file: `kind="mlp"` for the MLP projector, a weight set to
0 for "w/o L_align", "w/o L_rec", "w/o KL".

Notation: z = z_vae (B, N, Dz) with N latent tokens of width Dz (MLD: 1 x 256); c the CLIP text
embedding (B, C) (ViT-L/14: 768); z_proj (B, C).

E_proj is a transformer encoder over the latent tokens plus one learned output token, whose final
state is projected to C; D_proj a transformer encoder over the N tokens a linear layer expands c
into ("encoder" and "decoder" name the two directions; both are self-attention stacks).

Differences from the paper:
- Sec. 5.2 gives only "9 layers, 4 heads, hidden 1024, dropout 0.1, GELU, sinusoidal positions":
  we read "hidden" as the feed-forward width (MLD's naming), the model width as the latent's; the
  architecture above is ours (with MLD's 1 token, attention runs over 2 tokens, then 1).
- L_var is not specified beyond Eq. (6). As DESIGN.md prescribes, P and Q are diagonal Gaussians
  fitted per latent dimension over the batch, and L_var is the mean over dimensions of
  KL(P_d || Q_d) = log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2.
- L_rec (Eq. 5) is written as a squared L2 norm; we take its element mean (MSE), so its scale
  does not depend on the latent size. L_align is averaged over the batch.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

import lcm
from diffusion import GaussianDiffusion
from vae import sinusoidal_positions


@dataclass
class ProjectorConfig:
    kind: str = "transformer"   # "transformer" (LEAD) or "mlp" (Tab. 6, first row)
    n_layers: int = 9           # Sec. 5.2: 9 layers (each of E_proj and D_proj)
    n_heads: int = 4            # Sec. 5.2
    ff_dim: int = 1024          # Sec. 5.2 "hidden 1024", read as the feed-forward width
    dropout: float = 0.1        # Sec. 5.2
    lambda_align: float = 2.1591  # Sec. 5.2, Eq. (7)
    lambda_rec: float = 4.7036    # Sec. 5.2, Eq. (7)
    lambda_var: float = 0.05960   # Sec. 5.2, Eq. (7)
    AT_LEAST_ZERO: ClassVar = ("lambda_align", "lambda_rec", "lambda_var")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("dropout",)


class TransformerProjector(nn.Module):
    """E_proj: (B, N, Dz) -> (B, C) and D_proj: (B, C) -> (B, N, Dz), two GELU transformers.

    E_proj reads the N latent tokens (plus sinusoidal positions) and one learned output token
    whose final state is projected to C; D_proj expands c into N tokens (plus sinusoidal
    positions) and maps each final state back to the latent width.
    """

    def __init__(self, cfg: ProjectorConfig, latent_shape: tuple[int, int], text_dim: int):
        super().__init__()
        n, width = latent_shape
        self.latent_shape = (n, width)

        def stack():
            layer = nn.TransformerEncoderLayer(width, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                               activation="gelu", batch_first=True)
            return nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)

        self.out_token = nn.Parameter(torch.zeros(1, 1, width))
        self.encoder = stack()
        self.to_text = nn.Linear(width, text_dim)
        self.from_text = nn.Linear(text_dim, n * width)
        self.decoder = stack()
        # note: the last layer's LayerNorm pins each token to mean 0 / variance 1 across features
        # (times a shared gain); a final linear layer frees the reconstructed latent
        self.to_latent = nn.Linear(width, width)
        self.register_buffer("positions", sinusoidal_positions(n + 1, width), persistent=False)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        B, N, Dz = z.shape
        assert (N, Dz) == self.latent_shape, f"expected latents {self.latent_shape}, got {(N, Dz)}"
        tokens = torch.cat([self.out_token.expand(B, 1, Dz), z], dim=1)      # (B, N+1, Dz)
        h = self.encoder(tokens + self.positions)                              # (B, N+1, Dz)
        return self.to_text(h[:, 0])                                           # (B, C)

    def decode(self, z_proj: torch.Tensor) -> torch.Tensor:
        B = z_proj.shape[0]
        N, Dz = self.latent_shape
        tokens = self.from_text(z_proj).view(B, N, Dz)                         # (B, N, Dz)
        h = self.decoder(tokens + self.positions[1:])                          # (B, N, Dz)
        return self.to_latent(h)                                               # (B, N, Dz)


class MLPProjector(nn.Module):
    """The Tab. 6 "LEAD (mlp)" ablation: two-layer GELU MLPs each way."""

    def __init__(self, cfg: ProjectorConfig, latent_shape: tuple[int, int], text_dim: int):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        flat = latent_shape[0] * latent_shape[1]
        self.enc = nn.Sequential(nn.Linear(flat, cfg.ff_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ff_dim, text_dim))
        self.dec = nn.Sequential(nn.Linear(text_dim, cfg.ff_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ff_dim, flat))

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return self.enc(z.flatten(1))                                          # (B, C)

    def decode(self, z_proj: torch.Tensor) -> torch.Tensor:
        return self.dec(z_proj).view(-1, *self.latent_shape)                   # (B, N, Dz)


class Projector(nn.Module):
    """P = (E_proj, D_proj) of Sec. 4.1.1 (4)."""

    def __init__(self, cfg: ProjectorConfig, latent_shape: tuple[int, int], text_dim: int):
        super().__init__()
        if cfg.kind not in ("transformer", "mlp"):
            raise ValueError(f"projector.kind must be 'transformer' or 'mlp', got {cfg.kind!r}")
        body = TransformerProjector if cfg.kind == "transformer" else MLPProjector
        self.cfg = cfg
        self.body = body(cfg, tuple(latent_shape), text_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Eq. (3): z_proj = E_proj(z_vae), z_vae_hat = D_proj(z_proj)
        z_proj = self.body.encode(z)
        return z_proj, self.body.decode(z_proj)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """E_proj alone (motion textual inversion's Eq. (9) works in this space)."""
        return self.body.encode(z)

    def realign(self, z: torch.Tensor) -> torch.Tensor:
        """Sec. 4.1.3: the diffused latent passed through the projector, D_proj(E_proj(z))."""
        return self.body.decode(self.body.encode(z))


# ----------------------------------------------------------------------------
# Losses (plain functions, Eqs. 4-7)


def align_loss(z_proj: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # Eq. (4): L_align = 1 - cos(z_proj, c), averaged over the batch
    return (1.0 - F.cosine_similarity(z_proj, c, dim=-1)).mean()


def rec_loss(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    # Eq. (5): L_rec = ||z_vae - z_vae_hat||_2^2, as the element mean (see the module docstring)
    return ((z - z_hat) ** 2).mean()


def var_loss(z: torch.Tensor, z_hat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (6) with P, Q diagonal Gaussians fitted per latent dimension over the batch."""
    p, q = z.flatten(1), z_hat.flatten(1)                                     # (B, N*Dz)
    assert p.shape[0] >= 2, "L_var fits a Gaussian over the batch: it needs at least 2 latents"
    m_p, s_p = p.mean(0), p.std(0, unbiased=False) + eps                      # (N*Dz,)
    m_q, s_q = q.mean(0), q.std(0, unbiased=False) + eps
    # KL(P_d || Q_d) = log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2, mean over d
    kl = torch.log(s_q / s_p) + (s_p ** 2 + (m_p - m_q) ** 2) / (2 * s_q ** 2) - 0.5
    return kl.mean()


def projector_loss(z: torch.Tensor, z_proj: torch.Tensor, z_hat: torch.Tensor, c: torch.Tensor,
                   cfg: ProjectorConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parts = {"align": align_loss(z_proj, c), "rec": rec_loss(z, z_hat), "var": var_loss(z, z_hat)}
    # Eq. (7): L = lambda_align L_align + lambda_rec L_rec + lambda_var L_var
    total = cfg.lambda_align * parts["align"] + cfg.lambda_rec * parts["rec"] + cfg.lambda_var * parts["var"]
    return total, parts


def projector_loss_fn(model: "Projector", text):
    """loss_fn(batch) -> (loss, parts) for batches {"z", "caption"} of training latents, c from the
    frozen text encoder `text` (Eq. 7 with the model's lambdas)."""
    def loss_fn(batch):
        z_proj, z_hat = model(batch["z"])
        return projector_loss(batch["z"], z_proj, z_hat, text.encode_cached(batch["caption"]), model.cfg)
    return loss_fn


# ----------------------------------------------------------------------------
# LEAD inference (Sec. 4.1.3): the one text -> motion path of the project


@dataclass
class Pipeline:
    """The frozen models of text -> motion: captions -> c -> z_0 (DDIM with guidance, or MotionLCM's
    few steps when a consistency model is given) -> motion. Eval, sample, inversion, the benchmarks
    and the tests all generate through `generate` below."""
    text: nn.Module                  # clip.TextEncoder or lamp.LaMPTextEncoder: captions -> c (B, C)
    vae: nn.Module                   # vae.MotionVAE: z (B, N, Dz) -> motion (B, T, D)
    denoiser: nn.Module              # diffusion.Denoiser eps_theta(z_t, t, c)
    consistency: nn.Module | None = None  # lcm.ConsistencyDenoiser: sample z_0 with it instead (MotionLCM)
    steps: int | None = None         # sampling steps (None: the config's, DDIM 50, MotionLCM 1)

    def __post_init__(self):
        self.schedule = GaussianDiffusion(self.denoiser.cfg).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @torch.no_grad()
    def latents(self, captions: list[str], generator: torch.Generator | None = None) -> torch.Tensor:
        """Captions -> diffused latents z_0 (B, N, Dz): z_T ~ N(0, I) denoised with classifier-free
        guidance (Eq. 8) by DDIM, or by MotionLCM's consistency sampling (lcm.lcm_sample)."""
        c = self.text.encode_cached(captions)                                  # (B, C)
        if self.consistency is not None:  # guidance w is the consistency model's input
            return lcm.lcm_sample(self.consistency, self.schedule, c, self.steps, generator=generator)
        c_uncond = self.text.encode_cached([""])[0]                            # (C,) MLD's null condition
        shape = (len(captions), *self.vae.latent_shape)
        return self.schedule.ddim_sample(self.denoiser, c, c_uncond, shape, steps=self.steps,
                                         generator=generator)                 # (B, N, Dz)


@torch.no_grad()
def generate(pipe: Pipeline, captions: list[str], lengths: torch.Tensor, realigner: "Projector | None" = None,
             z: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Captions and lengths (B,) -> normalized motions (B, max(lengths), D): LEAD's inference.

    z_0 = pipe.latents(captions) (or the given z, to decode one sample several ways), then
    x = D_vae(D_proj(E_proj(z_0))) with `realigner` (LEAD), x = D_vae(z_0) without (MLD): with
    the same checkpoints, a comparison of the two isolates the projector."""
    if z is None:
        z = pipe.latents(captions, generator)                                  # (B, N, Dz)
    if realigner is not None:
        z = realigner.realign(z)                                               # (B, N, Dz)
    return pipe.vae.decode(z, lengths.to(z.device))                            # (B, T, D)
