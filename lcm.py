"""MotionLCM: a latent consistency model distilled from the trained MLD denoiser, sampled in 1-4 steps.

Papers: MotionLCM: Real-time Controllable Motion Generation via Latent Consistency Model (Dai et
al., ECCV 2024, arXiv 2404.19759), Sec. 3.2 "Motion Latent Consistency Distillation", which applies
Latent Consistency Models (Luo et al., arXiv 2310.04378) Secs. 4.1-4.3 to MLD's motion latent.
LEAD (../shared/seeds/000_c8069c11a3356e2a.txt, Tab. 5) realigns MotionLCM's 1-, 2- and 4-step
latents with the LEAD projector, not retrained: `projector.generate` with a Pipeline holding the
consistency model, and evaluation.few_step_rows for the table.
Constants are MotionLCM's public code (Dai-Wenxun/MotionLCM, the ECCV "V1" release: configs_v1/,
train_motionlcm.py) and the diffusers 0.24.0 LCMScheduler it samples with (see LCMConfig);
the stored papers have no equation numbers we could check, so equations cite sections.

The teacher eps_phi is the frozen diffusion.Denoiser; the student f_theta is a copy of it that
also reads the guidance scale w; the target f_theta- is an exponential moving average of the
student. One distillation step draws a grid step (the paper's n), w and eps, and

    z_{t_{n+k}} = sqrt(abar) z_0 + sqrt(1 - abar) eps                  q(z_t | z_0) at t_{n+k}
    eps~ = (1 + w) eps_phi(z, c, t) - w eps_phi(z, "", t)              LCM Sec. 4.2, guided noise
                                                                       (= LEAD Eq. 8 with s = 1 + w)
    z^_{t_n} = sqrt(abar_{t_n}) x0~ + sqrt(1 - abar_{t_n}) eps~        LCM Sec. 4.3: one DDIM step
        with x0~ = (z - sqrt(1 - abar) eps~) / sqrt(abar)              over k teacher steps (LEAD Eq. 10)
    f_theta(z, w, c, t) = c_skip(t) z + c_out(t) x0_theta(z, w, c, t)  LCM Sec. 4.1, the consistency
        with x0_theta = (z - sqrt(1 - abar_t) eps_theta(z, w, c, t)) / sqrt(abar_t)    function
    c_skip(t) = sd^2 / ((s t)^2 + sd^2),  c_out(t) = s t / sqrt((s t)^2 + sd^2)   c_skip(0) = 1,
                                                                       c_out(0) = 0: f(z, 0) = z
    L = mean d(f_theta(z_{t_{n+k}}, w, c, t_{n+k}), f_theta-(z^_{t_n}, w, c, t_n))   LCM Sec. 4.3
    d(a, b) = sqrt((a - b)^2 + c^2) - c                                MotionLCM's pseudo-Huber
    theta- <- mu theta- + (1 - mu) theta      after each optimizer step (LCM Sec. 3, from CMs)

and sampling (LCM's multistep latent consistency sampling, after the multistep sampler of
consistency models) alternates an x0 estimate with re-noising to the next timestep:
x0 = f_theta(z_tau_i, w, c, tau_i), z_tau_{i+1} = sqrt(abar_tau_{i+1}) x0 + sqrt(1 - abar_tau_{i+1})
eps; the last x0 is the sample.

Notation (code -> paper):
    z0, z_t                  z_0, z_t           clean / noised VAE latent (B, n, d)
    t_start, t_end           t_{n+k}, t_n       (B,) steps 0..T-1, t_n = max(t_{n+k} - k, 0)
    num_ddim_timesteps       N                  the teacher's DDIM grid (k-1, 2k-1, ..., T-1)
    k = T // N               k                  skipping interval (1000 // 50 = 20)
    w                        omega              guidance scale, LCM convention (LEAD's s = 1 + w)
    student, target, teacher theta, theta-, phi online / EMA / frozen networks
    ema_decay                mu                 EMA rate
    huber_c                  c                  pseudo-Huber constant
    sigma_data, timestep_scaling  sd, s         c_skip / c_out constants (LCM's first scheduler
                                                wrote s t as t / 0.1)

Glossary: B batch, n latent tokens, d latent width, W text width, E w-embedding width.

Differences from the paper:
- The distance is MotionLCM's elementwise pseudo-Huber, averaged over (B, n, d), not improved
  consistency training's sqrt(||a - b||^2 + c^2) - c over a whole sample (Song & Dhariwal
  2023); with c = 0.001 it is nearly the mean absolute error.
- MotionLCM leaves its teacher and target in train mode (dropout 0.1 acts); here the caller
  puts both in eval(), so the target is deterministic (with the tiny preset's dropout 0 they agree).
- MotionLCM's training schedule (batch 256, lr 2e-4, 1000 warmup steps then cosine, AdamW, no
  weight decay, clip norm 1, 1000 epochs) and the tiny preset's: the comment under LCMConfig.
"""
import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from diffusion import Denoiser, GaussianDiffusion


# ----------------------------------------------------------------------------
# Small helpers: the w embedding, the boundary scalings, the timestep grids


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """MotionLCM's embedding of the guidance scale: w (B,) -> (B, dim), laid out [sin | cos].

    As train_motionlcm.py guidance_scale_embedding: w is multiplied by 1000 and the frequencies are
    10000^(-i / (dim/2 - 1)), i = 0..dim/2-1. note: not diffusion.timestep_embedding's layout
    ([cos | sin], i / (dim/2)); the learned projection after it does not care, but a checkpoint
    converted from MotionLCM would."""
    assert w.dim() == 1, f"one guidance scale per sample: w is (B,), got shape {tuple(w.shape)}"
    assert dim % 2 == 0, f"the w embedding needs an even width, got {dim}"
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=w.device) / (half - 1))  # (E/2,)
    args = (w.float() * 1000.0)[:, None] * freqs[None, :]                                    # (B, E/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)                             # (B, E)


def boundary_scalings(t: torch.Tensor, sigma_data: float, timestep_scaling: float):
    """c_skip(t), c_out(t) (each shaped like t) of the consistency function (LCM Sec. 4.1).

    c_skip(t) = sd^2 / ((s t)^2 + sd^2),  c_out(t) = s t / sqrt((s t)^2 + sd^2), with t the integer
    step: c_skip(0) = 1 and c_out(0) = 0, so f(z, 0) = z (the boundary condition); already at
    t = 19 (s t = 190) c_skip is 7e-6, so away from t = 0 f is the x0 prediction itself."""
    st = t.float() * timestep_scaling
    c_skip = sigma_data ** 2 / (st ** 2 + sigma_data ** 2)
    c_out = st / torch.sqrt(st ** 2 + sigma_data ** 2)
    return c_skip, c_out


def ddim_grid(train_steps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The teacher's DDIM timesteps the distillation runs on, ascending: (N,) long.

    k = T // N; grid = k - 1, 2k - 1, ..., N k - 1 (T = 1000, N = 50: 19, 39, ..., 999), as
    train_motionlcm.py DDIMSolver and diffusers' LCMScheduler (lcm_origin_timesteps) build it."""
    if not 0 < num_ddim_timesteps <= train_steps:
        raise ValueError(f"num_ddim_timesteps must lie in 1..{train_steps}, got {num_ddim_timesteps}")
    k = train_steps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * k - 1


def lcm_timesteps(steps: int, train_steps: int, num_ddim_timesteps: int) -> list[int]:
    """The timesteps of `steps`-step sampling, descending, picked from the distillation grid as
    diffusers 0.24.0 LCMScheduler.set_timesteps does (MotionLCM V1's sampler): grid index
    floor(i N / steps), i = 0..steps-1, counted from the top. N = 50: 1 -> [999], 2 -> [999, 499],
    4 -> [999, 759, 499, 259]."""
    if not 0 < steps <= num_ddim_timesteps:
        raise ValueError(f"LCM sampling takes 1..{num_ddim_timesteps} steps (the distillation "
                         f"grid's size, num_ddim_timesteps), got {steps}")
    grid = ddim_grid(train_steps, num_ddim_timesteps).flip(0).tolist()   # T-1, T-1-k, ..., k-1
    return [grid[(i * num_ddim_timesteps) // steps] for i in range(steps)]


# ----------------------------------------------------------------------------
# Config


@dataclass
class LCMConfig:
    # values of MotionLCM V1 (the ECCV paper): configs_v1/motionlcm_t2m.yaml TRAIN (the same in
    # the first commit's configs/motionlcm_t2m.yaml), unless said otherwise
    w_min: float = 5.0            # TRAIN.w_min; w ~ U[w_min, w_max], LCM convention (s = 1 + w)
    w_max: float = 15.0           # TRAIN.w_max
    num_ddim_timesteps: int = 50  # TRAIN.num_ddim_timesteps (k = 1000 // 50 = 20); also the
    #                               sampler's grid: configs_v1/modules/scheduler_lcm.yaml
    #                               original_inference_steps 50
    loss_type: str = "huber"      # TRAIN.loss_type: "huber" or "l2"
    huber_c: float = 0.001        # TRAIN.huber_c
    w_embed_dim: int = 256        # TRAIN.unet_time_cond_proj_dim
    ema_decay: float = 0.95       # TRAIN.ema_decay
    sigma_data: float = 0.5       # train_motionlcm.py scalings_for_boundary_conditions; diffusers
    timestep_scaling: float = 10.0  # LCMScheduler get_scalings_for_boundary_condition_discrete
    sample_steps: int = 1         # configs_v1/modules/scheduler_lcm.yaml num_inference_steps
    sample_w: float = 6.5         # model.guidance_scale 7.5, embedded as 7.5 - 1 (mld/models/
    #                               modeltype/mld.py _diffusion_reverse)
    AT_LEAST_ZERO: ClassVar = ("w_min", "w_max", "huber_c")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("ema_decay",)

    def __post_init__(self):
        if not self.w_min <= self.w_max:
            raise ValueError(f"lcm.w_min ({self.w_min}) must not exceed lcm.w_max ({self.w_max})")
        if self.loss_type not in ("huber", "l2"):
            raise ValueError(f"lcm.loss_type must be 'huber' or 'l2', got {self.loss_type!r}")
        if self.sample_steps > self.num_ddim_timesteps:
            raise ValueError(f"lcm.num_ddim_timesteps={self.num_ddim_timesteps}: must be >= lcm.sample_steps "
                             f"({self.sample_steps})")


# The fit schedule (train.py's Schedule for the `lcm` stage), configs_v1/motionlcm_t2m.yaml TRAIN:
# BATCH_SIZE 256, learning_rate 2e-4, lr_scheduler "cosine" after lr_warmup_steps 1000,
# max_train_epochs 1000 (HumanML3D's ~23k training motions: ~90 steps an epoch, ~90k steps),
# AdamW betas (0.9, 0.999), adam_weight_decay 0.0, adam_epsilon 1e-8, max_grad_norm 1.0.
# loop.fit runs AdamW with torch's default weight decay (0.01), no warmup and no clipping.
# MotionLCM-V2 (configs/motionlcm_t2m.yaml, a later 16 x 32 latent) changed num_ddim_timesteps to
# 10, huber_c to 0.5, batch to 128 and the sampling guidance scale s to 8.0 / 12.5 / 13.5 for
# 1 / 2 / 4 steps (w = s - 1; configs/modules/scheduler_lcm.yaml cfg_step_map), with its own
# timesteps [799], [699, 299], [699, 399, 299, 299] (timesteps_step_map).
# Tiny preset (CPU minutes): lcm.num_ddim_timesteps = 10 (V2's grid: the t = 0 boundary is
# 10 teacher steps from t = 999 instead of 50, so consistency reaches the top in fewer updates),
# lcm_train steps 2000, batch 64, lr 2e-4: one step (student forward and backward, teacher on
# 2B, target on B) measured 86-98 ms on one thread of the 2-core CPU, about twice a diffusion
# step, so ~3.3 minutes.


# ----------------------------------------------------------------------------
# The consistency model f_theta(z, w, c, t)


class ConsistencyDenoiser(nn.Module):
    """The student: a diffusion.Denoiser that also reads the guidance scale w (LCM Sec. 4.2).

    As MotionLCM's TimestepEmbedding(cond_proj_dim=256): w_proj = Linear(E -> W, no bias) maps
    the w embedding into the time sinusoid's space, where it is added before the time MLP. Its
    weight starts at zero (MotionLCM zero_init_cond), so a fresh student is the teacher.
    `denoiser` holds the teacher's parameter names: diffusion.pt's model loads into it."""

    def __init__(self, denoiser: Denoiser, cfg: LCMConfig):
        super().__init__()
        self.cfg = cfg
        self.denoiser = denoiser
        self.w_proj = nn.Linear(cfg.w_embed_dim, denoiser.text_dim, bias=False)
        nn.init.zeros_(self.w_proj.weight)

    @classmethod
    def from_teacher(cls, teacher: Denoiser, cfg: LCMConfig) -> "ConsistencyDenoiser":
        """A trainable student holding a copy of the teacher's weights (the teacher is untouched)."""
        student = cls(copy.deepcopy(teacher), cfg)
        return student.requires_grad_(True)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                w: torch.Tensor) -> torch.Tensor:
        """z_t (B, n, d), t (B,) long, c (B, W), w (B,) -> eps_theta (B, n, d)."""
        assert w.shape == (z_t.shape[0],), f"one guidance scale per sample: w is (B,), got {tuple(w.shape)}"
        # MotionLCM TimestepEmbedding.forward: the w embedding joins the time sinusoid before the MLP
        return self.denoiser(z_t, t, c, time_cond=self.w_proj(guidance_scale_embedding(w, self.cfg.w_embed_dim)))

    def consistency_x0(self, schedule: GaussianDiffusion, z_t: torch.Tensor, t: torch.Tensor,
                       c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """f_theta(z_t, w, c, t) = c_skip(t) z_t + c_out(t) x0_theta (LCM Sec. 4.1): (B, n, d)."""
        eps = self(z_t, t, c, w)                                                        # (B, n, d)
        # LEAD Eq. (10): x0_theta = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)
        x0 = schedule.predict_x0(z_t, t, eps)
        c_skip, c_out = boundary_scalings(t, self.cfg.sigma_data, self.cfg.timestep_scaling)  # (B,)
        # f = c_skip(t) z_t + c_out(t) x0_theta
        return c_skip.view(-1, 1, 1) * z_t + c_out.view(-1, 1, 1) * x0


def ema_copy(student: ConsistencyDenoiser) -> ConsistencyDenoiser:
    """The target network theta-: a frozen copy of the fresh student (MotionLCM loads the
    teacher's weights into both, with the same zero w projection). It only supplies training
    targets: MotionLCM evaluates and saves the online student (train_motionlcm.py puts `unet`,
    not `target_unet`, into the model it validates and checkpoints)."""
    return copy.deepcopy(student).requires_grad_(False)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """theta- <- mu theta- + (1 - mu) theta, parameter by parameter (call after each optimizer step)."""
    names_t = [name for name, _ in target.named_parameters()]
    names_o = [name for name, _ in online.named_parameters()]
    if names_t != names_o:
        raise ValueError(f"the target and online networks must have the same parameters; "
                         f"{len(names_t)} vs {len(names_o)}, first names {names_t[:2]} vs {names_o[:2]}")
    for p_t, p_o in zip(target.parameters(), online.parameters()):
        # theta- <- mu theta- + (1 - mu) theta
        p_t.mul_(decay).add_(p_o.detach(), alpha=1.0 - decay)


# ----------------------------------------------------------------------------
# Distillation (plain functions)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """MotionLCM's distance, mean over every element of sqrt((a - b)^2 + c^2) - c."""
    assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
    # d(a, b) = sqrt((a - b)^2 + c^2) - c
    return (torch.sqrt((a - b) ** 2 + c ** 2) - c).mean()


@torch.no_grad()
def teacher_ddim_step(teacher: nn.Module, schedule: GaussianDiffusion, z: torch.Tensor,
                      t_start: torch.Tensor, t_end: torch.Tensor, c: torch.Tensor,
                      c_uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The teacher's guided DDIM step (eta 0) z_{t_{n+k}} -> z^_{t_n}, per-sample t and w: (B, n, d)."""
    # LCM Sec. 4.2: eps~ = (1 + w) eps_phi(z, c) - w eps_phi(z, ""), LEAD Eq. (8) with s = 1 + w
    eps = schedule.guided_eps(teacher, z, t_start, c, c_uncond, (1.0 + w).view(-1, 1, 1))
    # LEAD Eq. (10): x0~ = (z - sqrt(1 - abar_{t_{n+k}}) eps~) / sqrt(abar_{t_{n+k}})
    # (MotionLCM guides the two x0 predictions instead, x0_c + w (x0_c - x0_u): the same, x0 being
    # linear in eps)
    x0 = schedule.predict_x0(z, t_start, eps)
    a_end = schedule.alphas_cumprod[t_end].view(-1, 1, 1)                                # (B, 1, 1)
    # DDIM (formula 12, eta 0): z^_{t_n} = sqrt(abar_{t_n}) x0~ + sqrt(1 - abar_{t_n}) eps~
    return a_end.sqrt() * x0 + (1 - a_end).sqrt() * eps


def consistency_pair(student: ConsistencyDenoiser, target: ConsistencyDenoiser, teacher: nn.Module,
                     schedule: GaussianDiffusion, z0: torch.Tensor, c: torch.Tensor,
                     c_uncond: torch.Tensor, t_start: torch.Tensor, w: torch.Tensor,
                     noise: torch.Tensor):
    """The two sides of the consistency loss for given draws: (prediction, target), each (B, n, d).

    prediction = f_theta(z_{t_{n+k}}, w, c, t_{n+k}) (with gradients); target = f_theta-(z^_{t_n},
    w, c, t_n) (without), z^_{t_n} the teacher's guided DDIM step over the k skipped steps."""
    k = schedule.cfg.train_steps // student.cfg.num_ddim_timesteps
    # t_n = t_{n+k} - k, clamped at 0 (the lowest grid step, k - 1, steps down to t = 0)
    t_end = (t_start - k).clamp(min=0)
    # 1. z_{t_{n+k}} = sqrt(abar) z_0 + sqrt(1 - abar) eps
    z_start = schedule.q_sample(z0, t_start, noise)                                      # (B, n, d)
    # 2. the online prediction f_theta(z_{t_{n+k}}, w, c, t_{n+k})
    prediction = student.consistency_x0(schedule, z_start, t_start, c, w)
    with torch.no_grad():
        # 3. the teacher's guided step to t_n, then the EMA target f_theta-(z^_{t_n}, w, c, t_n)
        z_end = teacher_ddim_step(teacher, schedule, z_start, t_start, t_end, c, c_uncond, w)
        goal = target.consistency_x0(schedule, z_end, t_end, c, w)
    return prediction, goal


def distillation_loss(student: ConsistencyDenoiser, target: ConsistencyDenoiser, teacher: nn.Module,
                      schedule: GaussianDiffusion, z0: torch.Tensor, c: torch.Tensor,
                      c_uncond: torch.Tensor, cfg: LCMConfig, generator: torch.Generator | None = None):
    """One latent consistency distillation loss (MotionLCM Sec. 3.2) -> (loss, {"huber" or "l2"}).

    Draws, in MotionLCM's order, eps ~ N(0, I), a grid index i ~ U{0..N-1} (t_{n+k} = (i+1) k - 1)
    and w ~ U[w_min, w_max]; z0 (B, n, d) latents from the frozen VAE, c (B, W), c_uncond the one
    embedding of "". Call ema_update(target, student, cfg.ema_decay) after each optimizer step."""
    B, device = z0.shape[0], z0.device
    noise = torch.randn(z0.shape, device=device, dtype=z0.dtype, generator=generator)
    index = torch.randint(0, cfg.num_ddim_timesteps, (B,), device=device, generator=generator)
    t_start = ddim_grid(schedule.cfg.train_steps, cfg.num_ddim_timesteps).to(device)[index]  # (B,)
    w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(B, device=device, generator=generator)
    prediction, goal = consistency_pair(student, target, teacher, schedule, z0, c, c_uncond,
                                        t_start, w, noise)
    if cfg.loss_type == "huber":
        loss = pseudo_huber(prediction, goal, cfg.huber_c)
    else:
        loss = (prediction - goal).pow(2).mean()
    return loss, {cfg.loss_type: loss}


def distillation_loss_fn(student: ConsistencyDenoiser, target: ConsistencyDenoiser, teacher: nn.Module,
                         schedule: GaussianDiffusion, text, cfg: LCMConfig):
    """loss_fn(batch) -> (loss, parts) for batches {"z", "caption"} of training latents, c from the
    frozen text encoder `text`; the caller runs ema_update after each optimizer step."""
    c_uncond = text.encode_cached([""])[0]                                                # (W,)

    def loss_fn(batch):
        target.eval()  # the target only supplies goals, whatever mode the training loop sets
        return distillation_loss(student, target, teacher, schedule, batch["z"],
                                 text.encode_cached(batch["caption"]), c_uncond, cfg)
    return loss_fn


# ----------------------------------------------------------------------------
# Sampling in 1-4 steps (projector.Pipeline samples with it when given a consistency model)


@torch.no_grad()
def lcm_sample(model: ConsistencyDenoiser, schedule: GaussianDiffusion, c: torch.Tensor,
               steps: int | None = None, w: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """z_T ~ N(0, I) -> z_0 (B, n, d) by multistep latent consistency sampling.

    steps and w (LCM convention) default to the model's config (1 and 6.5). No classifier-free
    pair of passes: w enters as the model's input. Timesteps: lcm_timesteps."""
    assert not model.training, "call model.eval() before sampling (dropout would be on)"
    steps = model.cfg.sample_steps if steps is None else steps
    w = model.cfg.sample_w if w is None else w
    B = c.shape[0]
    shape = (B, *model.denoiser.latent_shape)
    taus = lcm_timesteps(steps, schedule.cfg.train_steps, model.cfg.num_ddim_timesteps)
    w_batch = torch.full((B,), float(w), device=c.device)                                # (B,)
    # z_T ~ N(0, I) (diffusers' init_noise_sigma is 1 for LCM)
    z = torch.randn(shape, device=c.device, generator=generator)
    for i, tau in enumerate(taus):
        t_batch = torch.full((B,), tau, device=c.device, dtype=torch.long)
        # x0 = f_theta(z_tau_i, w, c, tau_i)
        x0 = model.consistency_x0(schedule, z, t_batch, c, w_batch)
        if i + 1 < len(taus):
            # re-noise to the next timestep: z_tau_{i+1} = sqrt(abar) x0 + sqrt(1 - abar) eps
            a_next = schedule.alphas_cumprod[taus[i + 1]]
            noise = torch.randn(shape, device=c.device, generator=generator)
            z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * noise
    return x0
