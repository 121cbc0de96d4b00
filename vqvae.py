"""The motion tokenizer: a 1D-convolutional VQ-VAE over motion features (LaMP Sec. 3.1.1).

Paper: LaMP: Language-Motion Pretraining for Motion Generation, Retrieval, and Captioning
(Li et al., ICLR 2025, arXiv 2410.07093; ../shared/seeds/003_d88d83113f8fa35c.txt), Sec. 3.1.1
and A.3.1, which follow T2M-GPT (Zhang et al. 2023). Implements

    m_{1:n} = E(x_{1:T})                      encoder, temporal downsampling 4 (A.3.1)
    b_i = argmin_s || m_i - z_s ||_2          nearest-code quantisation        Eq. (5)
    L_vq = L_recon + beta || m - sg[z] ||^2   (L_emb: the EMA codebook)        Eq. (6)
    L_recon = |x - x_hat|_1 + alpha |V(x) - V(x_hat)|_1                        Eq. (7)

with the EMA codebook and Code Reset of T2M-GPT's QuantizeEMAReset. LaMP (lamp.py) reads the
encoder's features and codes; the masked generator (masked_generator.py) generates its codes.

Notation: z, feats = m_{1:n}, encoder output (B, n, d), n = T / 4; codebook C (S, d); codes b (B, n).
The sizes are the vq_* fields of lamp.LaMPConfig (the `lamp` config section).

Differences from the paper:
- A single codebook (Sec. 2, A.3.1 "vanilla VQ-VAE"), not the 6-layer residual VQ that A.3.1 also
  mentions. L_emb of Eq. (6) is replaced by the EMA update A.3.1 names.
- Norms of Eqs. (6)-(7) are element means; Eq. (7) uses SmoothL1 on all features (T2M-GPT).
- Whole padded clips are tokenised (losses and codebook statistics masked past each length)
  instead of T2M-GPT's 64-frame windows.

Glossary: B batch, T frames, D feature width, n motion tokens (T / 4), d code width, S codes, W width.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import collate


# ----------------------------------------------------------------------------
# Motion tokenizer: 1D-convolutional VQ-VAE (Sec. 3.1.1, A.3.1)


class ResBlock1D(nn.Module):
    """T2M-GPT's ResConv1DBlock: x + Conv1x1(ReLU(DilatedConv3(ReLU(x))))."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.relu(self.conv(F.relu(x))))                    # (B, W, T)


def _res_stack(cfg) -> nn.Sequential:
    """`vq_depth` residual blocks with dilations growth^(depth-1) .. 1 (T2M-GPT: 9, 3, 1)."""
    dilations = [cfg.vq_dilation_growth ** k for k in reversed(range(cfg.vq_depth))]
    return nn.Sequential(*[ResBlock1D(cfg.vq_width, d) for d in dilations])


def motion_encoder(cfg, feat_dim: int) -> nn.Sequential:
    """E of Sec. 3.1.1: (B, D, T) -> (B, d, T / 4); stride-2 convolutions downsample (A.3.1)."""
    W = cfg.vq_width
    layers = [nn.Conv1d(feat_dim, W, 3, padding=1), nn.ReLU()]
    for _ in range(cfg.vq_down):
        layers += [nn.Conv1d(W, W, 4, stride=2, padding=1), _res_stack(cfg)]
    return nn.Sequential(*layers, nn.Conv1d(W, cfg.vq_code_dim, 3, padding=1))


def motion_decoder(cfg, feat_dim: int) -> nn.Sequential:
    """D of Sec. 3.1.1: (B, d, T / 4) -> (B, D, T); nearest-neighbour upsampling (A.3.1)."""
    W = cfg.vq_width
    layers = [nn.Conv1d(cfg.vq_code_dim, W, 3, padding=1), nn.ReLU()]
    for _ in range(cfg.vq_down):
        layers += [_res_stack(cfg), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(W, W, 3, padding=1)]
    return nn.Sequential(*layers, nn.Conv1d(W, W, 3, padding=1), nn.ReLU(), nn.Conv1d(W, feat_dim, 3, padding=1))


class Quantizer(nn.Module):
    """The codebook C (S, d): nearest-code lookup, straight-through gradient, commitment term,
    EMA update and Code Reset (A.3.1 "Optimization strategy"; T2M-GPT's QuantizeEMAReset).

    The codebook is a buffer, not a parameter: it moves by the EMA of the encoder outputs
    assigned to each code (which replaces L_emb of Eq. 6), so no optimizer touches it.
    """

    def __init__(self, n_codes: int, code_dim: int, ema: float, reset_below: float):
        super().__init__()
        self.n_codes, self.ema, self.reset_below = n_codes, ema, reset_below
        self.register_buffer("codebook", torch.zeros(n_codes, code_dim))       # (S, d)
        self.register_buffer("code_sum", torch.zeros(n_codes, code_dim))       # (S, d) EMA of sums
        self.register_buffer("code_count", torch.zeros(n_codes))               # (S,) EMA of counts
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. (5): s = argmin_j ||z_j - m_i||_2 for z (..., d) -> indices (...)."""
        flat = z.reshape(-1, z.shape[-1])                                      # (N, d)
        # ||m - z_j||^2 = ||m||^2 - 2 m.z_j + ||z_j||^2; ||m||^2 does not change the argmin
        dist = -2.0 * flat @ self.codebook.T + (self.codebook ** 2).sum(1)[None, :]  # (N, S)
        return dist.argmin(1).reshape(z.shape[:-1])

    def _random_rows(self, x: torch.Tensor) -> torch.Tensor:
        """S rows drawn from x (N, d), x repeated when N < S (T2M-GPT `_tile`, without its noise)."""
        repeats = -(-self.n_codes // len(x))
        pool = x.repeat(repeats, 1)
        return pool[torch.randperm(len(pool), device=x.device)[: self.n_codes]]   # (S, d)

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """T2M-GPT: the first training batch's encoder outputs x (N, d) seed the codebook."""
        self.codebook.copy_(self._random_rows(x))
        self.code_sum.copy_(self.codebook)
        self.code_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA step and Code Reset from the valid encoder outputs x (N, d) and their codes (N,):

            sum_s   <- lambda sum_s   + (1 - lambda) sum_{i: s_i = s} m_i
            count_s <- lambda count_s + (1 - lambda) |{i: s_i = s}|
            z_s     <- sum_s / count_s          if count_s >= reset_below, else a random m_i
        """
        onehot = F.one_hot(idx, self.n_codes).to(x.dtype)                      # (N, S)
        self.code_sum.mul_(self.ema).add_((1 - self.ema) * onehot.T @ x)
        self.code_count.mul_(self.ema).add_((1 - self.ema) * onehot.sum(0))
        alive = (self.code_count >= self.reset_below)[:, None]                 # (S, 1)
        centres = self.code_sum / self.code_count.clamp_min(1e-12)[:, None]
        self.codebook.copy_(torch.where(alive, centres, self._random_rows(x)))

    def forward(self, z: torch.Tensor, valid: torch.Tensor):
        """z (B, n, d), valid (B, n) -> (quantised z with straight-through gradient (B, n, d),
        codes (B, n), commitment ||m - sg[z_s]||^2 averaged over valid tokens). In training
        mode the codebook then takes its EMA / reset step (T2M-GPT's order)."""
        assert z.shape[:2] == valid.shape, f"valid must be (B, n) = {tuple(z.shape[:2])}, got {tuple(valid.shape)}"
        if self.training and not bool(self.initialised):
            self.initialise(z[valid].detach())
        assert bool(self.initialised), "the codebook is empty: train the VQ-VAE first (train mode seeds it)"
        codes = self.nearest(z.detach())                                       # (B, n)
        q = self.codebook[codes]                                               # (B, n, d), a copy
        if self.training:
            self.update(z[valid].detach(), codes[valid])
        # Eq. (6), L_com: ||m_i - sg[z_s]||^2 (element mean over valid tokens)
        commit = ((z - q) ** 2)[valid].mean()
        # straight-through: the forward pass sees z_s, the gradient flows to m_i unchanged
        return z + (q - z).detach(), codes, commit


def frames_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) True on the first lengths[b] steps."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class MotionVQVAE(nn.Module):
    """motion (B, T, D) normalised -> codes (B, T / 4) -> motion (B, T, D)."""

    def __init__(self, cfg, feat_dim: int):
        super().__init__()
        self.cfg, self.feat_dim, self.down = cfg, feat_dim, 2 ** cfg.vq_down
        self.encoder = motion_encoder(cfg, feat_dim)
        self.quantizer = Quantizer(cfg.vq_codes, cfg.vq_code_dim, cfg.vq_ema, cfg.vq_reset_below)
        self.decoder = motion_decoder(cfg, feat_dim)

    def encode(self, motion: torch.Tensor, lengths: torch.Tensor):
        """-> z (B, n, d) before quantisation, valid (B, n); n = ceil(T / 4), token k valid
        when it lies inside the clip (k < length // 4)."""
        B, T, D = motion.shape
        assert D == self.feat_dim, f"the VQ-VAE was built for {self.feat_dim}-d features, got {D}"
        lengths = torch.as_tensor(lengths, device=motion.device).long()
        x = motion * frames_mask(lengths, T)[..., None]                        # zero past each length
        x = F.pad(x, (0, 0, 0, (-T) % self.down))                              # (B, T', D), T' % 4 == 0
        z = self.encoder(x.transpose(1, 2)).transpose(1, 2)                    # (B, n, d)
        return z, frames_mask(lengths // self.down, z.shape[1])

    def tokenize(self, motion: torch.Tensor, lengths: torch.Tensor):
        """-> (z (B, n, d), codes (B, n), valid (B, n)): LaMP's motion features and Eq. (1)'s labels."""
        z, valid = self.encode(motion, lengths)
        return z, self.quantizer.nearest(z), valid

    def decode(self, codes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """codes (B, n), valid (B, n) -> motion (B, 4 n, D); invalid tokens enter as zero vectors
        (MoMask decodes its padding so)."""
        q = self.quantizer.codebook[codes.clamp(0, self.quantizer.n_codes - 1)] * valid[..., None]  # (B, n, d)
        return self.decoder(q.transpose(1, 2)).transpose(1, 2)

    def forward(self, motion: torch.Tensor, lengths: torch.Tensor):
        """-> (reconstruction (B, T, D), commitment, codes (B, n))."""
        z, valid = self.encode(motion, lengths)
        q, codes, commit = self.quantizer(z, valid)
        x_hat = self.decoder(q.transpose(1, 2)).transpose(1, 2)               # (B, T', D)
        return x_hat[:, : motion.shape[1]], commit, codes


def vq_loss(x_hat: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor, commit: torch.Tensor,
            cfg):
    """Eqs. (6)-(7) on valid frames -> (loss, {"recon", "velocity", "commit"}).

        L_vq = L_recon + beta L_com,   L_recon = |m - m_hat|_1 + alpha |V(m) - V(m_hat)|_1
    with SmoothL1 for |.|_1 (T2M-GPT) and V(m)_i = m_{i+1} - m_i."""
    assert x_hat.shape == x.shape, f"{tuple(x_hat.shape)} vs {tuple(x.shape)}"
    valid = frames_mask(lengths.to(x.device), x.shape[1])                      # (B, T)
    recon = F.smooth_l1_loss(x_hat[valid], x[valid])
    # V(m): frame differences; the pair (i, i+1) is valid when frame i+1 is
    vel_valid = valid[:, 1:]
    velocity = F.smooth_l1_loss((x_hat[:, 1:] - x_hat[:, :-1])[vel_valid], (x[:, 1:] - x[:, :-1])[vel_valid])
    # Eq. (6) with Eq. (7): L_recon + beta L_com (L_emb is the EMA update)
    loss = recon + cfg.vq_velocity * velocity + cfg.vq_commit * commit
    return loss, {"recon": recon.detach(), "velocity": velocity.detach(), "commit": commit.detach()}


def codebook_usage(codes: torch.Tensor, n_codes: int) -> dict[str, float]:
    """Share of the S codes used by `codes` (any shape) and the perplexity exp(H(p)) of their
    frequencies p (S for uniform use, 1 for a collapsed codebook)."""
    counts = torch.bincount(codes.reshape(-1).cpu(), minlength=n_codes).double()  # (S,)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"used": float((counts > 0).double().mean()), "perplexity": float(entropy.exp()),
            "codes": n_codes}


# ----------------------------------------------------------------------------
# Training and inspection


def vq_loss_fn(vq: MotionVQVAE, cfg, device):
    """loss_fn(batch) -> (loss, parts) of the motion tokenizer (Sec. 3.1.1) on dataset batches."""
    def loss_fn(batch):
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        x_hat, commit, _ = vq(x, lengths)
        return vq_loss(x_hat, x, lengths, commit, cfg)
    return loss_fn


@torch.no_grad()
def codebook_usage_on(vq: MotionVQVAE, dataset, device, batch_size: int = 64) -> dict[str, float]:
    """codebook_usage of the codes `vq` gives the valid motion tokens of `dataset`."""
    codes = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        _, c, valid = vq.tokenize(batch["motion"].to(device), batch["lengths"].to(device))
        codes.append(c[valid])
    return codebook_usage(torch.cat(codes), vq.cfg.vq_codes)
