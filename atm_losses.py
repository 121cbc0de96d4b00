"""ATM: inter-motion and intra-motion alignment losses, added to latent diffusion training.

Paper: ATM: Enhanced Alignment for Text-to-Motion Generation (Han, Lyu, Yu, Sebe;
../shared/seeds/002_f70d1cb769d79b2a.txt), Sec. 3.2-3.3 and the settings of Sec. 4.1:

    j* = argmin_{j != i} D(m^_i, m^_j) / D(m_i, m_j)                                  Eq. (2)
         (D(m^_i, m^_j) := inf where cos(t_i, t_j) > eps: similar texts are no negatives)
    L_inter = max{0, D(t_i, m^_i) - D(t_i, m^_j*) + phi_ter},
              phi_ter = D(t_i, m_j*) - D(t_i, m_i)                                    Eq. (3)
    k* = argmax_k D(m^_i^k, m_i^k);   c^ = m^_i^k*,  c = m_i^k*                        Eq. (4)
    c^_pos = argmax_k D(c^, c^_k) / D(c, c_k)   over every other clip of the batch      Eq. (5)
    c^_neg = argmin_k D(c^, c^_k) / D(c, c_k)                                          Eq. (6)
    L_intra = max{0, D(c^, c^_pos) - D(c^, c^_neg) + phi_tra},
              phi_tra = D(c, c_neg) - D(c, c_pos),   only where cos(m^_i, m_i) < gamma  Eq. (7)
    L_all = L_mse + lambda (L_inter + L_intra)                                        Eq. (8)

Notation (code -> paper):
    text_emb  t_i      caption embedding in the alignment space (B, E)
    gen_emb   m^_i     generated motion embedding (B, E), carries the gradient
    real_emb  m_i      ground-truth motion embedding (B, E), cached
    text_sim  cos(t_i, t_j)   text-text cosine similarity (B, B)
    *_clip_emb  m^_i^k, m_i^k  embeddings of the 2 s clips (B, K, E); clip_mask (B, K)
D is the Euclidean distance in the space of train.py's frozen `alignment` embedder (trained like
the evaluator but separately seeded, so no method is scored by the model that trained it). As in
Sec. 4.1, texts, real motions and real clips are embedded once and cached.

Latent diffusion (LEAD, ../shared/seeds/000_c8069c11a3356e2a.txt): ATM applies its losses "to
the final denoised motion sequence" (Sec. 3.3), which MDM predicts directly. A latent model
predicts noise, so here that motion is the decoded one-step estimate of LEAD's Eq. (10),
m^ = D_vae(z0^), z0^ = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t); the gradient runs
through the frozen VAE, embedder and text encoder to the denoiser (`diffusion_atm_loss`).

Glossary: B batch, T frames, D feature width, K clips per motion, E embedding width,
n latent tokens, d latent width, W text-condition width.

Differences from the paper:
- Text similarity (the eps rule of Eq. 2) is the cosine of the frozen CLIP embeddings c (the
  denoiser's condition), not of Sentence-BERT's (ref. [34]), which is not available here.
- The embedder is Guo et al.'s evaluator architecture trained here (t2m_evaluator.T2MEvaluator,
  InfoNCE on Euclidean distances), not HumanTOMATO's TMR-style module (ref. [23], 256-d).
- Pairs whose real embeddings coincide (distance 0 in Eqs. 2, 5-6) are skipped; each loss is
  averaged over the rows that have a triplet (the paper does not say how it reduces).
- Mining (Eqs. 2, 4-6) runs on detached embeddings; the triplets of Eqs. (3), (7) carry the
  gradient through every generated motion in them; the margins use only cached embeddings.
- `--stage atm` fine-tunes the trained denoiser with L_all (the paper trains from scratch,
  400k steps of batch 64); rows whose condition was dropped for guidance take no part in ATM.
- ATM applies at the uniformly drawn training step t (not said; MDM predicts x0 at every t).
  note: at large t, z0^ amplifies the noise error by 1 / sqrt(abar_t) (~15 at t = 999).
- Clips: 2 s windows from the first frame, a last one under 1 s discarded (Sec. 4.1); such a
  window is a masked zero row, never the least aligned clip (Eq. 4) nor a proxy (Eqs. 5-6).
"""
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from data import collate
from diffusion import diffusion_loss


# ----------------------------------------------------------------------------
# Small helpers


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance D(a_i, b_i): (..., E), (..., E) -> (...)."""
    return (a - b).norm(dim=-1)


def distance_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All Euclidean distances D(a_i, b_j): (N, E), (M, E) -> (N, M), computed exactly
    (not through |a|^2 + |b|^2 - 2ab, which rounds identical points to small non-zeros)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """cos(x_i, x_j) for every pair of rows: (B, E) -> (B, B)."""
    x = F.normalize(x, dim=-1)
    return x @ x.T


def _mean_over(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of values (B,) over the rows where `rows` (B,) is True; 0 (graph kept) if none."""
    return (values * rows).sum() / rows.sum().clamp(min=1)


# ----------------------------------------------------------------------------
# Configuration


@dataclass
class ATMConfig:
    # Sec. 4.1 "weight factor lambda = 0.01", Eq. (8): one lambda on (L_inter + L_intra); two fields
    # (equal by default) so that Tab. 3's ablations and the L_mse-only control switch each off
    lambda_inter: float = 0.01
    lambda_intra: float = 0.01
    eps: float = 0.85              # Sec. 4.1 "similarity threshold eps = 0.85", Sec. 3.2
    gamma: float = 0.8             # Sec. 4.1 "gamma = 0.8", the gate of L_intra, Sec. 3.3
    clip_seconds: float = 2.0      # Sec. 4.1 "a duration of 2 seconds" (40 frames HumanML3D, 25 KIT)
    min_clip_seconds: float = 1.0  # Sec. 4.1 "motion clips shorter than 1 second are discarded"
    AT_LEAST_ZERO: ClassVar = ("lambda_inter", "lambda_intra")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("eps", "gamma")


def clip_frames(cfg: ATMConfig, fps: float) -> tuple[int, int]:
    """(clip length L, shortest kept clip) in frames at `fps`: (40, 20) at 20 fps, (25, 13) at 12.5."""
    clip_len, min_clip = round(cfg.clip_seconds * fps), math.ceil(cfg.min_clip_seconds * fps)
    # note: the embedder reads 4 frames per GRU step (metrics.DOWNSAMPLE), so a clip needs 4
    assert 4 <= min_clip <= clip_len, (f"clips of {cfg.clip_seconds} s, kept from "
                                       f"{cfg.min_clip_seconds} s, give {clip_len} / {min_clip} frames "
                                       f"at {fps} fps; the embedder needs at least 4 frames")
    return clip_len, min_clip


# ----------------------------------------------------------------------------
# Embedding motions and their clips with the frozen alignment embedder


def clip_windows(lengths: torch.Tensor, n_clips: int, clip_len: int, min_clip: int):
    """Successive windows [k L, (k+1) L) of each motion -> (frames (B, K), mask (B, K)).

    frames[b, k] is how many of motion b's frames fall in window k (0 past its end); a window
    is kept (mask True) when it holds at least `min_clip` frames, so only the last window of a
    motion can be short, and only if it holds at least 1 s."""
    starts = torch.arange(n_clips, device=lengths.device) * clip_len                # (K,)
    frames = (lengths[:, None] - starts[None, :]).clamp(0, clip_len)                # (B, K)
    return frames, frames >= min_clip


def embed_motions(embedder, motion: torch.Tensor, lengths: torch.Tensor, clip_len: int, min_clip: int,
                  n_clips: int | None = None):
    """Embed whole motions and their clips: motion (B, T, D) normalized, lengths (B,) ->
    (seq (B, E), clips (B, K, E), clip_mask (B, K)).

    K = n_clips, by default ceil(T / L). Only the kept clips are run through the embedder;
    the others are zero rows with clip_mask False, and every loss below ignores them. Wrap in
    torch.no_grad() for the cached real motions; for generated ones the gradient flows to
    `motion`. cuDNN is switched off here because cuDNN's GRU has no backward pass in eval mode
    (the frozen embedder is in eval mode so that its dropout is off); on a CPU it changes nothing.
    """
    B, T, D = motion.shape
    K = math.ceil(T / clip_len) if n_clips is None else n_clips
    assert K * clip_len >= T, f"{K} clips of {clip_len} frames do not cover {T} frames"
    frames, mask = clip_windows(lengths, K, clip_len, min_clip)                      # (B, K) each
    padded = F.pad(motion, (0, 0, 0, K * clip_len - T))                              # (B, K L, D)
    b, k = mask.nonzero(as_tuple=True)                                               # (N,) each
    with torch.backends.cudnn.flags(enabled=False):
        seq = embedder.encode_motion(motion, lengths)                                # (B, E)
        kept = embedder.encode_motion(padded.view(B, K, clip_len, D)[b, k], frames[b, k])  # (N, E)
    clips = seq.new_zeros(B, K, seq.shape[-1]).index_put((b, k), kept)               # (B, K, E)
    return seq, clips, mask


# ----------------------------------------------------------------------------
# Inter-motion alignment (Sec. 3.2)


@torch.no_grad()
def mine_inter_negative(gen_emb: torch.Tensor, real_emb: torch.Tensor, text_sim: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (2): the in-batch misaligned example of each generated motion -> (j* (B,), valid (B,)).

    valid[i] is False when no j qualifies (every other text too similar); j*[i] is then 0."""
    B = gen_emb.shape[0]
    assert text_sim.shape == (B, B), f"text_sim is the (B, B) text cosine matrix, got {tuple(text_sim.shape)}"
    d_gen = distance_matrix(gen_emb, gen_emb)                                        # (B, B)
    d_real = distance_matrix(real_emb, real_emb)                                     # (B, B)
    # j != i; D(m^_i, m^_j) = inf where cos(t_i, t_j) > eps; real pairs at distance 0 skipped
    eye = torch.eye(B, dtype=torch.bool, device=gen_emb.device)
    candidate = ~eye & (text_sim <= eps) & (d_real > 0)                              # (B, B)
    # Eq. (2): j* = argmin_{j != i} D(m^_i, m^_j) / D(m_i, m_j)
    ratio = (d_gen / d_real).masked_fill(~candidate, float("inf"))                   # (B, B)
    return ratio.argmin(dim=1), candidate.any(dim=1)


def inter_motion_loss(text_emb: torch.Tensor, gen_emb: torch.Tensor, real_emb: torch.Tensor,
                      text_sim: torch.Tensor, eps: float = 0.85):
    """L_inter (Eqs. 2-3), averaged over the rows that have a valid negative.

    text_emb, gen_emb, real_emb (B, E); text_sim (B, B) = cos(t_i, t_j) from a text encoder.
    Returns (loss, info) with info = {"negative": j* (B,), "valid": (B,) bool,
    "margin": phi_ter (B,), "per_row": the hinge of Eq. (3) (B,)}."""
    B, E = gen_emb.shape
    assert text_emb.shape == real_emb.shape == (B, E), \
        f"text, generated and real embeddings must all be (B, E) = ({B}, {E})"
    j, valid = mine_inter_negative(gen_emb.detach(), real_emb, text_sim, eps)       # (B,) each
    # Eq. (3): phi_ter = D(t_i, m_i^h) - D(t_i, m_i), m_i^h the real motion of example j*
    margin = distance(text_emb, real_emb[j]) - distance(text_emb, real_emb)         # (B,)
    # Eq. (3): L_inter = max{0, D(t_i, m^_i) - D(t_i, m^_i^h) + phi_ter}
    hinge = F.relu(distance(text_emb, gen_emb) - distance(text_emb, gen_emb[j]) + margin)  # (B,)
    info = {"negative": j, "valid": valid, "margin": margin, "per_row": hinge}
    return _mean_over(hinge, valid), info


# ----------------------------------------------------------------------------
# Intra-motion alignment (Sec. 3.3)


@torch.no_grad()
def mine_clip_proxies(gen_clip_emb: torch.Tensor, real_clip_emb: torch.Tensor, clip_mask: torch.Tensor):
    """Eqs. (4)-(6) on detached clip embeddings (B, K, E) -> dict of (B,) tensors:
    "anchor" the least aligned clip k* as a flat index b K + k into the B K clips, "positive",
    "negative" the proxies as flat indices, "has_proxies" True where at least two other kept
    clips exist (the two proxies can then differ)."""
    B, K, E = gen_clip_emb.shape
    # Eq. (4): k* = argmax_k D(m^_i^k, m_i^k) over the kept clips of motion i
    d_own = distance(gen_clip_emb, real_clip_emb).masked_fill(~clip_mask, -float("inf"))  # (B, K)
    anchor = torch.arange(B, device=clip_mask.device) * K + d_own.argmax(dim=1)      # (B,)
    gen, real = gen_clip_emb.reshape(B * K, E), real_clip_emb.reshape(B * K, E)     # (BK, E)
    d_gen = distance_matrix(gen[anchor], gen)                                        # (B, BK)
    d_real = distance_matrix(real[anchor], real)                                     # (B, BK)
    # every other kept clip of the mini-batch, its own motion's included; c^ itself excluded
    others = torch.arange(B * K, device=anchor.device)[None, :] != anchor[:, None]
    candidate = clip_mask.reshape(1, B * K) & others & (d_real > 0)                  # (B, BK)
    ratio = d_gen / d_real                                                           # (B, BK)
    # Eq. (5): c^_pos = argmax_k D(c^, c^_k) / D(c, c_k)
    positive = ratio.masked_fill(~candidate, -float("inf")).argmax(dim=1)            # (B,)
    # Eq. (6): c^_neg = argmin_k D(c^, c^_k) / D(c, c_k)
    negative = ratio.masked_fill(~candidate, float("inf")).argmin(dim=1)             # (B,)
    has_proxies = clip_mask.any(dim=1) & (candidate.sum(dim=1) >= 2)
    return {"anchor": anchor, "positive": positive, "negative": negative, "has_proxies": has_proxies}


def intra_motion_loss(gen_clip_emb: torch.Tensor, real_clip_emb: torch.Tensor, seq_cos: torch.Tensor,
                      gamma: float = 0.8, clip_mask: torch.Tensor | None = None):
    """L_intra (Eqs. 4-7), averaged over the motions it applies to.

    gen_clip_emb, real_clip_emb (B, K, E) the clips of each generated / real motion (same
    windows); seq_cos (B,) = cos(m^_i, m_i) of the whole sequences; clip_mask (B, K) True on
    kept clips (default: all). A motion takes part when seq_cos < gamma and two proxies exist.
    Returns (loss, info) with info = the indices of `mine_clip_proxies`, "active" (B,) bool,
    "margin" phi_tra (B,) and "per_row" the hinge of Eq. (7) (B,)."""
    B, K, E = gen_clip_emb.shape
    assert real_clip_emb.shape == (B, K, E), \
        f"real clips {tuple(real_clip_emb.shape)} must match generated clips {(B, K, E)}"
    assert seq_cos.shape == (B,), f"seq_cos is one cosine per motion, (B,) = ({B},), got {tuple(seq_cos.shape)}"
    if clip_mask is None:
        clip_mask = torch.ones(B, K, dtype=torch.bool, device=gen_clip_emb.device)
    mined = mine_clip_proxies(gen_clip_emb.detach(), real_clip_emb, clip_mask)
    gen, real = gen_clip_emb.reshape(B * K, E), real_clip_emb.reshape(B * K, E)     # (BK, E)
    c_hat, c = gen[mined["anchor"]], real[mined["anchor"]]                           # (B, E) each
    pos, neg = mined["positive"], mined["negative"]                                  # (B,) each
    # Eq. (7): phi_tra = D(c, c_neg) - D(c, c_pos)
    margin = distance(c, real[neg]) - distance(c, real[pos])                         # (B,)
    # Eq. (7): L_intra = max{0, D(c^, c^_pos) - D(c^, c^_neg) + phi_tra}
    hinge = F.relu(distance(c_hat, gen[pos]) - distance(c_hat, gen[neg]) + margin)  # (B,)
    # Sec. 3.3: applied only where cos(m^_i, m_i) < gamma
    active = (seq_cos.detach() < gamma) & mined["has_proxies"]                       # (B,)
    info = {**mined, "active": active, "margin": margin, "per_row": hinge}
    return _mean_over(hinge, active), info


# ----------------------------------------------------------------------------
# The ATM term of Eq. (8)


def atm_loss(text_emb: torch.Tensor, gen_emb: torch.Tensor, real_emb: torch.Tensor, text_sim: torch.Tensor,
             gen_clip_emb: torch.Tensor, real_clip_emb: torch.Tensor, clip_mask: torch.Tensor,
             cfg: ATMConfig):
    """lambda (L_inter + L_intra), Eq. (8) without L_mse -> (loss, parts).

    parts: "inter", "intra" (unweighted), "atm" (= loss), and for monitoring "inter_rows" and
    "intra_rows", the fractions of the batch with a negative / past the gamma gate."""
    L_inter, inter = inter_motion_loss(text_emb, gen_emb, real_emb, text_sim, cfg.eps)
    # Sec. 3.3: cos(m^_i, m_i) of the whole sequences, in the alignment embedding space
    seq_cos = F.cosine_similarity(gen_emb, real_emb, dim=-1)                         # (B,)
    L_intra, intra = intra_motion_loss(gen_clip_emb, real_clip_emb, seq_cos, cfg.gamma, clip_mask)
    # Eq. (8): lambda (L_inter + L_intra), as lambda_inter L_inter + lambda_intra L_intra
    loss = cfg.lambda_inter * L_inter + cfg.lambda_intra * L_intra
    return loss, {"inter": L_inter, "intra": L_intra, "atm": loss,
                  "inter_rows": inter["valid"].float().mean(), "intra_rows": intra["active"].float().mean()}


def diffusion_atm_loss(schedule, denoiser, motion_vae, embedder, batch: dict, c_uncond: torch.Tensor,
                       cfg: ATMConfig, fps: float, generator: torch.Generator | None = None):
    """One training step's L_all = L_mse + lambda (L_inter + L_intra) (Eq. 8) for latent
    diffusion -> (loss, {"mse", "inter", "intra", "atm", "inter_rows", "intra_rows"}).

    batch: "z" (B, n, d) latents from the VAE posterior, "c" (B, W) text conditions,
    "lengths" (B,), and the cached alignment-space embeddings "text_emb" (B, E),
    "motion_emb" (B, E), "clip_emb" (B, K, E), "clip_mask" (B, K) of the captions and real
    motions (K >= the clips of the longest motion; `embed_motions` under no_grad makes them).
    schedule: diffusion.GaussianDiffusion; motion_vae, embedder frozen."""
    z0, c, lengths = batch["z"], batch["c"], batch["lengths"]
    B = z0.shape[0]
    # 1. L_mse: LEAD Eq. (2) with condition dropout, drawn as GaussianDiffusion.loss draws it
    t = torch.randint(0, schedule.cfg.train_steps, (B,), device=z0.device, generator=generator)
    noise = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=generator)
    z_t = schedule.q_sample(z0, t, noise)                                            # (B, n, d)
    drop = torch.rand(B, device=z0.device, generator=generator) < schedule.cfg.cond_drop
    c_in = torch.where(drop[:, None], c_uncond.reshape(1, -1).expand_as(c), c)       # (B, W)
    eps_pred = denoiser(z_t, t, c_in)                                                # (B, n, d)
    mse, _ = diffusion_loss(eps_pred, noise)
    keep = ~drop  # ATM on the rows that saw their text
    if int(keep.sum()) < 2 or cfg.lambda_inter == cfg.lambda_intra == 0.0:  # no negative / the L_mse control
        zero = mse.new_zeros(())
        return mse, {"mse": mse, "inter": zero, "intra": zero, "atm": zero,
                     "inter_rows": zero, "intra_rows": zero}
    # 2. LEAD Eq. (10): z0^ = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)
    z0_hat = schedule.predict_x0(z_t[keep], t[keep], eps_pred[keep])                 # (b, n, d)
    # 3. the final denoised motion m^ = D_vae(z0^), embedded with its clips
    lengths = lengths[keep]
    motion = motion_vae.decode(z0_hat, lengths)                                      # (b, T, D)
    clip_len, min_clip = clip_frames(cfg, fps)
    gen_emb, gen_clips, gen_mask = embed_motions(embedder, motion, lengths, clip_len, min_clip)
    K = gen_mask.shape[1]
    real_clips, real_mask = batch["clip_emb"][keep][:, :K], batch["clip_mask"][keep][:, :K]
    assert torch.equal(gen_mask, real_mask), \
        "the cached real clips must come from the same lengths (and clip settings) as this batch"
    # 4. Eq. (8): L_mse + lambda (L_inter + L_intra); text similarity from the text encoder
    atm, parts = atm_loss(batch["text_emb"][keep], gen_emb, batch["motion_emb"][keep],
                          cosine_matrix(c[keep]), gen_clips, real_clips, real_mask, cfg)
    return mse + atm, {"mse": mse, **parts}


# ----------------------------------------------------------------------------
# Training protocol (Sec. 4.1): targets cached once, one loss per batch of latents


@torch.no_grad()
def encode_atm_targets(motion_vae, embedder, dataset,
                       cfg: ATMConfig, device, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """What ATM reads about the real training motions, computed once (ATM Sec. 4.1), from one
    crop of each item: "mu", "logvar" (N, n, d) the VAE posterior (as vae.encode_dataset), "lengths"
    (N,), and in the alignment space "motion_emb" (N, E), "clip_emb" (N, K, E), "clip_mask"
    (N, K), K the clips of the longest motion. Items go through in order of length, so that
    little of each batch is padding, and come back in dataset order."""
    clip_len, min_clip = clip_frames(cfg, dataset.skeleton.fps)
    n_clips = math.ceil(motion_vae.cfg.max_len / clip_len)
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.items[i][1]))
    parts = {key: [] for key in ("mu", "logvar", "lengths", "motion_emb", "clip_emb", "clip_mask")}
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        _, mu, logvar = motion_vae.encode(x, lengths)                                  # (b, n, d) each
        seq, clips, mask = embed_motions(embedder, x, lengths, clip_len, min_clip, n_clips)
        for key, value in zip(parts, (mu, logvar, lengths, seq, clips, mask)):
            parts[key].append(value)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # dataset index -> row of the sorted pass
    return {key: torch.cat(values)[back.to(device)] for key, values in parts.items()}


def atm_loss_fn(schedule, denoiser, motion_vae, embedder, text, targets: dict, cfg: ATMConfig, fps: float):
    """loss_fn(batch) -> (L_all, parts) for batches {"z", "caption", "index"} of training latents
    (indices into the dataset `targets` was encoded from): the condition c from the frozen text
    encoder, t from the alignment embedder (each distinct caption embedded once), the real
    motions' embeddings from `targets` (encode_atm_targets)."""
    c_uncond = text.encode_cached([""])[0]                                            # (W,)
    text_cache = {}  # caption -> t (E,)

    @torch.no_grad()
    def alignment_text(captions: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in text_cache))
        if missing:
            tokens = embedder.tokenizer(missing).to(c_uncond.device)                   # its own reading
            text_cache.update(zip(missing, embedder.encode_text(tokens)))              # (m, E)
        return torch.stack([text_cache[c] for c in captions])                          # (B, E)

    def loss_fn(batch):
        idx = batch["index"]                                                           # (B,)
        atm_batch = {"z": batch["z"], "c": text.encode_cached(batch["caption"]),
                     "text_emb": alignment_text(batch["caption"]),
                     **{key: targets[key][idx] for key in ("lengths", "motion_emb", "clip_emb", "clip_mask")}}
        return diffusion_atm_loss(schedule, denoiser, motion_vae, embedder, atm_batch, c_uncond, cfg, fps=fps)

    return loss_fn
