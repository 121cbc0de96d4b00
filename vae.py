"""The MLD motion VAE: a transformer with long skip connections and two distribution tokens.

Paper: LEAD: Latent Realignment for Human Motion Diffusion (Andreou et al., arXiv 2410.14508;
../shared/seeds/000_c8069c11a3356e2a.txt), Sec. 4.1.1 (1) and the first training stage of
Sec. 4.1.2. LEAD takes the VAE unchanged from MLD (Chen et al., CVPR 2023), so the details
below follow MLD's public code and configs (`mld_vae.py`, `cross_attention.py`,
`configs/modules/motion_vae.yaml`, `config_vae_humanml3d.yaml`):

    encoder  E_vae: [mu token(s), logvar token(s), Linear(D -> d)(x_1..x_T)] + learned positions
             -> skip transformer (self-attention, padded frames masked) -> mu, log sigma^2
             z = mu + sigma * n,  n ~ N(0, I)                          (reparameterisation)
    decoder  D_vae: queries = 0 + learned positions (one per frame), cross-attending to z
             -> skip transformer -> Linear(d -> D) -> zero on padded frames
    loss     SmoothL1(x_hat, x) + SmoothL1(J(x_hat), J(x)) + lambda_KL KL(N(mu, sigma^2) || N(0, I))

where J recovers the 3D joints from de-normalised features (`data.features_to_joints`).
`from_mld_state_dict` renames MLD's released VAE weights (`mld_vae.py`) into this model's.

The skip transformer (`SkipTransformer`, also used by the denoiser in diffusion.py) is MLD's
U-Net-like stack of an odd number of post-norm layers: (L-1)/2 input blocks, one middle block,
(L-1)/2 output blocks; output block i first fuses its input with the output of input block
(L-1)/2 - i through Linear(2d -> d)(cat[x, skip]); a final LayerNorm closes the stack.

Glossary: B batch, T frames, D feature width (263 for HumanML3D), n latent tokens, d latent
width (= transformer width), J joints.

Differences from the paper:
- LEAD says "MSE and KL"; we follow MLD's code: SmoothL1 on features + SmoothL1 on joints +
  1e-4 * KL, the KL a mean over batch, tokens and latent dimensions (MLD's `KLLoss`), the
  reconstruction averaged over valid frames only (MLD: over the zero-padded tensor).
- `joint_loss="root_relative"` (not MLD, off by default) drops the root's x/z from the joint
  term: on drifting clips the global term is almost all root trajectory error.
- `norm_first=True` (pre-norm), `position_init="sinusoidal"` (tables start at the sinusoid,
  not U[0, 1)), 4 latent tokens, batch 16 and a cosine learning-rate decay: not MLD, on in the
  tiny preset only, where they train faster on a CPU budget (bench/bench_vae.py).
- `noise_ramp` (1 = MLD) grows the posterior noise in z = mu + s sigma n from s = 0 to 1 over
  that many steps (tiny preset: half its steps): early latents are about half noise and the
  decoder renders the clip's mean pose (bench/bench_vae.py).
- `time_slots` (0 = MLD; tiny preset 32): the latent's n x d numbers are S slots of n d / S, slot
  i the encoder's frames of the i-th S-th of the clip averaged, then a Linear to (mu, log sigma^2);
  the decoder's per-frame queries add the slots interpolated at their frame's place and cross-attend
  to them. Still a fixed (n, d) latent. At 950 steps the reconstructions keep 56% of the real
  feet's lift and 86% of the wrists' speed against 10% and 23% with MLD's distribution tokens
  (bench/bench_vae.py; 8 and 16 slots: 14% and 28% of the lift).
- MLD's learned positional tables have 500 rows; ours have exactly as many as can be used
  (max_len + 2n in the encoder, max_len with time slots and in the decoder).
"""
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from data import collate, features_to_joints


# ----------------------------------------------------------------------------
# Small helpers


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True on valid frames."""
    frames = torch.arange(max_len, device=lengths.device)
    return frames[None, :] < lengths[:, None]                                # (B, T)


def slot_pooling(lengths: torch.Tensor, T: int, S: int) -> torch.Tensor:
    """(B, S, T) averaging weights: slot i is the mean of the frames t < length with
    floor(S t / length) = i (S equal spans of each clip's own length; an empty span weighs 0)."""
    t = torch.arange(T, device=lengths.device)
    slot = (t[None, :] * S) // lengths[:, None]                                 # (B, T), >= S past the end
    onehot = (slot[:, None, :] == torch.arange(S, device=lengths.device)[None, :, None]).float()  # (B, S, T)
    return onehot / onehot.sum(-1, keepdim=True).clamp(min=1.0)


def slot_interpolation(lengths: torch.Tensor, T: int, S: int) -> torch.Tensor:
    """(B, T, S) weights that place S slots along each clip: frame t sits at u = S (t + 1/2) /
    length - 1/2 in slot units (slot centres at 0..S-1) and mixes its two nearest slots linearly,
    clamped to the first and last slot at the ends; frames past a length get weights too (masked later)."""
    t = torch.arange(T, device=lengths.device, dtype=torch.float32)
    u = (S * (t[None, :] + 0.5) / lengths[:, None].float() - 0.5).clamp(0, S - 1)  # (B, T)
    lo = u.floor().long()
    w = (u - lo)[..., None]                                                      # (B, T, 1)
    hi = (lo + 1).clamp(max=S - 1)
    return (1 - w) * F.one_hot(lo, S).float() + w * F.one_hot(hi, S).float()    # (B, T, S)


def sinusoidal_positions(n: int, width: int) -> torch.Tensor:
    """The fixed sinusoidal encoding of Vaswani et al.: (n, width)."""
    assert width % 2 == 0, f"sinusoidal positions need an even width, got {width}"
    pos = torch.arange(n, dtype=torch.float32)[:, None]                       # (n, 1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(n, width)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of KL(N(mu, exp(logvar)) || N(0, 1)), as MLD's `KLLoss`."""
    # KL(N(mu, s^2) || N(0, 1)) = 1/2 (mu^2 + s^2 - 1 - log s^2), per latent element
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.mean()


# ----------------------------------------------------------------------------
# The skip transformer shared by the VAE and the denoiser


class SkipTransformer(nn.Module):
    """MLD's transformer with long skip connections (SkipTransformerEncoder / ...Decoder).

    With `cross_attention=False` each block is a self-attention `nn.TransformerEncoderLayer`;
    with `cross_attention=True` a `nn.TransformerDecoderLayer` whose queries also attend to
    `memory`. Layers are post-norm as in MLD (normalize_before=False) unless `norm_first`; the
    stack ends with a LayerNorm either way, as in MLD. Weights of every matrix are
    Xavier-uniform (MLD `_reset_parameters`).
    """

    def __init__(self, n_layers: int, width: int, n_heads: int, ff_dim: int, dropout: float,
                 activation: str = "gelu", cross_attention: bool = False, norm_first: bool = False):
        super().__init__()
        if n_layers % 2 != 1:
            raise ValueError(f"the skip transformer needs an odd number of layers "
                             f"((L-1)/2 input blocks, 1 middle, (L-1)/2 output), got {n_layers}")
        kind = nn.TransformerDecoderLayer if cross_attention else nn.TransformerEncoderLayer
        self.cross_attention = cross_attention

        def layer():
            return kind(width, n_heads, ff_dim, dropout, activation=activation,
                        batch_first=True, norm_first=norm_first)

        n_side = (n_layers - 1) // 2
        self.input_blocks = nn.ModuleList(layer() for _ in range(n_side))
        self.middle_block = layer()
        self.output_blocks = nn.ModuleList(layer() for _ in range(n_side))
        # Linear(2d -> d) over cat[x, skip] in front of each output block
        self.linear_blocks = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(n_side))
        self.norm = nn.LayerNorm(width)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _block(self, block: nn.Module, x, memory, key_padding_mask):
        if self.cross_attention:
            return block(x, memory, tgt_key_padding_mask=key_padding_mask)
        return block(x, src_key_padding_mask=key_padding_mask)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d). key_padding_mask (B, L) is True where a token is padding
        (PyTorch's convention); memory (B, M, d) is required with cross-attention."""
        assert (memory is not None) == self.cross_attention, \
            "memory is the cross-attention input: give it exactly when cross_attention=True"
        skips = []
        for block in self.input_blocks:
            x = self._block(block, x, memory, key_padding_mask)                # (B, L, d)
            skips.append(x)
        x = self._block(self.middle_block, x, memory, key_padding_mask)
        for block, linear in zip(self.output_blocks, self.linear_blocks):
            # the deepest input block meets the first output block (U-Net order)
            x = linear(torch.cat([x, skips.pop()], dim=-1))                     # (B, L, 2d) -> (B, L, d)
            x = self._block(block, x, memory, key_padding_mask)
        return self.norm(x)


# ----------------------------------------------------------------------------
# The VAE


@dataclass
class VAEConfig:
    n_tokens: int = 1         # MLD latent_dim [1, 256]: number of latent tokens n
    latent_dim: int = 256     # MLD latent_dim [1, 256]: token width d (= transformer width)
    n_layers: int = 9         # MLD motion_vae.yaml num_layers: 4 in + 1 middle + 4 out
    n_heads: int = 4          # MLD motion_vae.yaml num_heads
    ff_dim: int = 1024        # MLD motion_vae.yaml ff_size
    dropout: float = 0.1      # MLD motion_vae.yaml dropout
    activation: str = "gelu"  # MLD motion_vae.yaml activation
    max_len: int = 196        # HumanML3D longest clip in feature rows (MLD DATASET.SAMPLER.MAX_LEN)
    lambda_kl: float = 1e-4   # MLD config_vae_humanml3d.yaml LOSS.LAMBDA_KL
    joint_loss: str = "global"  # MLD: "global" joints; ours: "root_relative" (docstring)
    norm_first: bool = False    # MLD: post-norm layers; ours: pre-norm (docstring)
    position_init: str = "uniform"  # MLD: learned positions from U[0, 1); or "sinusoidal"
    noise_ramp: int = 1         # MLD: full posterior noise from step 1; ours: grown over this many steps
    time_slots: int = 0         # MLD: 0, 2n distribution tokens; ours: S latent slots tied to time (docstring)
    AT_LEAST_ZERO: ClassVar = ("lambda_kl", "time_slots")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("dropout",)


class MotionVAE(nn.Module):
    """E_vae: motion (B, T, D) -> z (B, n, d);  D_vae: z (B, n, d) -> motion (B, T, D)."""

    def __init__(self, cfg: VAEConfig, feat_dim: int):
        super().__init__()
        self.cfg = cfg
        n, d = cfg.n_tokens, cfg.latent_dim
        self.feat_dim = feat_dim
        self.latent_shape = (n, d)
        S = cfg.time_slots
        if S and (n * d) % S:
            raise ValueError(f"vae.time_slots={S} must divide the latent's n * d = {n} * {d} numbers")
        if S:  # the latent is S slots of c = n d / S numbers, each a span of the clip's time
            self.slot_width = n * d // S
            self.to_dist = nn.Linear(d, 2 * self.slot_width)       # a slot's pooled frames -> mu, logvar
            self.from_slot = nn.Linear(self.slot_width, d)         # a slot's z -> the decoder's width
            self.slot_pos = nn.Parameter(sinusoidal_positions(S, d))
        else:  # encoder: 2n learned distribution tokens (MLD: n mu tokens, then n logvar tokens)
            self.dist_tokens = nn.Parameter(torch.randn(2 * n, d))
        self.skel_embedding = nn.Linear(feat_dim, d)
        self.enc_pos = nn.Parameter(self._initial_positions(cfg.max_len + (0 if S else 2 * n)))
        self.encoder = SkipTransformer(cfg.n_layers, d, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                       cfg.activation, norm_first=cfg.norm_first)
        # decoder: one query per frame, zeros (with slots: the slots interpolated) + learned
        # positions, cross-attending to z (with slots: to the slots)
        self.dec_pos = nn.Parameter(self._initial_positions(cfg.max_len))
        self.decoder = SkipTransformer(cfg.n_layers, d, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                       cfg.activation, cross_attention=True, norm_first=cfg.norm_first)
        self.final_layer = nn.Linear(d, feat_dim)

    def _initial_positions(self, length: int) -> torch.Tensor:
        """Starting values of a learned positional table (length, d)."""
        if self.cfg.position_init == "uniform":  # MLD: uniform in [0, 1), not centred on zero
            return torch.rand(length, self.cfg.latent_dim)
        if self.cfg.position_init == "sinusoidal":
            return sinusoidal_positions(length, self.cfg.latent_dim)
        raise ValueError(f"vae.position_init must be 'uniform' or 'sinusoidal', "
                         f"got {self.cfg.position_init!r}")

    def _check_lengths(self, lengths, device) -> torch.Tensor:
        lengths = torch.as_tensor(lengths, device=device)
        assert lengths.dim() == 1, f"lengths is (B,), got shape {tuple(lengths.shape)}"
        if int(lengths.max()) > self.cfg.max_len or int(lengths.min()) < 1:
            raise ValueError(f"motion lengths must lie in 1..max_len={self.cfg.max_len} "
                             f"(the learned positional table), got {lengths.tolist()}")
        return lengths

    def encode(self, motion: torch.Tensor, lengths, sample: bool = True):
        """motion (B, T, D) normalised, lengths (B,) -> (z, mu, logvar), each (B, n, d).

        z is drawn from the posterior by reparameterisation (sample=True, as MLD does in both
        training stages) or is the posterior mean mu (sample=False)."""
        B, T, D = motion.shape
        assert D == self.feat_dim, f"this VAE was built for {self.feat_dim}-d features, got {D}"
        assert T <= self.cfg.max_len, (f"{T} frames exceed max_len={self.cfg.max_len}; crop the "
                                       f"padding to max(lengths) or raise max_len")
        lengths = self._check_lengths(lengths, motion.device)
        assert int(lengths.max()) <= T, f"lengths {lengths.tolist()} exceed the {T} frames given"
        n, d = self.latent_shape
        x = self.skel_embedding(motion)                                          # (B, T, d)
        if self.cfg.time_slots:
            valid = lengths_to_mask(lengths, T)                                  # (B, T)
            h = self.encoder(x + self.enc_pos[:T], key_padding_mask=~valid)      # (B, T, d)
            # each slot: its span's frames averaged -> (mu, logvar) of its c numbers
            out = self.to_dist(slot_pooling(lengths, T, self.cfg.time_slots) @ h)  # (B, S, 2c)
            c = self.slot_width
            mu, logvar = out[..., :c].reshape(B, n, d), out[..., c:].reshape(B, n, d)
        else:
            dist = self.dist_tokens.expand(B, 2 * n, d)                          # (B, 2n, d)
            x = torch.cat([dist, x], dim=1) + self.enc_pos[: 2 * n + T]         # (B, 2n+T, d)
            # the distribution tokens are never padding; frames past each length are
            valid = torch.cat([torch.ones(B, 2 * n, dtype=torch.bool, device=motion.device),
                               lengths_to_mask(lengths, T)], dim=1)              # (B, 2n+T)
            out = self.encoder(x, key_padding_mask=~valid)[:, : 2 * n]          # (B, 2n, d)
            mu, logvar = out[:, :n], out[:, n:]                                  # (B, n, d) each
        if not sample:
            return mu, mu, logvar
        # reparameterisation: z = mu + sigma * noise, sigma = exp(logvar / 2)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return z, mu, logvar

    def decode(self, z: torch.Tensor, lengths) -> torch.Tensor:
        """z (B, n, d), lengths (B,) -> motion (B, max(lengths), D), zero on padded frames."""
        B = z.shape[0]
        assert tuple(z.shape[1:]) == self.latent_shape, \
            f"z must be (B, {self.latent_shape[0]}, {self.latent_shape[1]}), got {tuple(z.shape)}"
        lengths = self._check_lengths(lengths, z.device)
        T = int(lengths.max())
        valid = lengths_to_mask(lengths, T)                                      # (B, T)
        queries = self.dec_pos[:T].expand(B, T, -1)                  # zeros + positions, (B, T, d)
        if self.cfg.time_slots:  # token k holds slots kS/n .. (k+1)S/n - 1, c numbers each
            S = self.cfg.time_slots
            slots = self.from_slot(z.reshape(B, S, self.slot_width)) + self.slot_pos  # (B, S, d)
            queries = queries + slot_interpolation(lengths, T, S) @ slots          # (B, T, d)
            z = slots
        # note: with one latent token (MLD's 1 x 256) every cross-attention weight is 1, so each
        # layer adds the same projection of z to all frames; frames differ by their positions
        out = self.decoder(queries, key_padding_mask=~valid, memory=z)           # (B, T, d)
        out = self.final_layer(out)                                              # (B, T, D)
        return out.masked_fill(~valid[..., None], 0.0)

    def forward(self, motion: torch.Tensor, lengths, sample: bool = True):
        """Reconstruction: -> (motion_hat (B, max(lengths), D), mu, logvar)."""
        z, mu, logvar = self.encode(motion, lengths, sample=sample)
        return self.decode(z, lengths), mu, logvar

    def reconstruct(self, motion: torch.Tensor, lengths) -> torch.Tensor:
        """The posterior mean decoded, D(mu(x)) (B, T, D): what the reconstruction errors score."""
        return self.decode(self.encode(motion, lengths, sample=False)[0], lengths)


@torch.no_grad()
def encode_dataset(model: MotionVAE, dataset, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen VAE's posterior (mu, logvar), each (N, n, d), for every item of `dataset` (one
    crop each), computed once so later stages draw z = mu + sigma * noise without the encoder."""
    mus, logvars = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        _, mu, logvar = model.encode(batch["motion"].to(device), batch["lengths"].to(device))
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


# ----------------------------------------------------------------------------
# MLD's released weights


def from_mld_state_dict(sd: dict[str, torch.Tensor], max_len: int = 196, n_heads: int = 4):
    """MLD's VAE weights -> (VAEConfig, feat_dim, state_dict for MotionVAE).

    sd is the `vae.` part of MLD's Lightning state_dict with that prefix removed (MLD
    `mld_vae.py` MldVae, arch encoder_decoder, PE type mld, MLP_DIST off). Key map (MLD -> here):
        global_motion_token (2n, d)     -> dist_tokens       (n mu tokens, then n logvar tokens)
        query_pos_encoder.pe (500, 1, d) -> enc_pos = pe[:max_len + 2n, 0]
        query_pos_decoder.pe (500, 1, d) -> dec_pos = pe[:max_len, 0]
        everything else (skel_embedding, encoder, decoder, final_layer) keeps its name.
    MLD adds `pe` to the sequence-first tokens exactly as enc_pos / dec_pos are added here, learned
    (PositionEmbeddingLearned1D, a parameter) or sinusoidal (a buffer) alike: only the values move.
    n, d, D, the layer count and feed-forward size are read from the tensor shapes; the number of
    attention heads is not in them (MLD's motion_vae.yaml: 4), nor is normalize_before (MLD: False,
    our default post-norm).
    """
    if "dist_layer.weight" in sd:
        raise ValueError("this MLD VAE uses the MLP_DIST ablation (a Linear(d -> 2d) distribution "
                         "head); only the released two-token layout converts")
    missing = {"global_motion_token", "skel_embedding.weight", "query_pos_encoder.pe", "query_pos_decoder.pe",
               "encoder.middle_block.linear1.weight", "decoder.middle_block.multihead_attn.in_proj_weight"} - sd.keys()
    if missing:
        hint = (" (a decoder without cross-attention is MLD's all_encoder ablation)"
                if "decoder.middle_block.linear1.weight" in sd else "")
        raise ValueError(f"not an MLD encoder_decoder VAE state dict: missing {sorted(missing)}{hint}")
    d, feat_dim = sd["skel_embedding.weight"].shape                              # (d, D)
    two_n, d_token = sd["global_motion_token"].shape                             # (2n, d)
    if d_token != d or two_n % 2:
        raise ValueError(f"global_motion_token should be (2n, {d}) (n mu then n logvar tokens), "
                         f"got {tuple(sd['global_motion_token'].shape)}")
    n = two_n // 2
    n_sides = {len({k.split(".")[2] for k in sd if k.startswith(f"{part}.input_blocks.")})
               for part in ("encoder", "decoder")}
    if len(n_sides) != 1:
        raise ValueError("MLD's VAE encoder and decoder should have the same number of layers")
    for name, rows in (("query_pos_encoder.pe", max_len + 2 * n), ("query_pos_decoder.pe", max_len)):
        if sd[name].dim() != 3 or sd[name].shape[1:] != (1, d) or sd[name].shape[0] < rows:
            raise ValueError(f"{name} should be (max_len, 1, {d}) with at least {rows} rows "
                             f"(max_len={max_len}), got {tuple(sd[name].shape)}")
    cfg = VAEConfig(n_tokens=n, latent_dim=d, n_layers=2 * n_sides.pop() + 1, n_heads=n_heads,
                    ff_dim=sd["encoder.middle_block.linear1.weight"].shape[0], max_len=max_len)
    out = {key: value for key, value in sd.items()
           if key not in ("global_motion_token", "query_pos_encoder.pe", "query_pos_decoder.pe")}
    out["dist_tokens"] = sd["global_motion_token"].clone()                       # (2n, d)
    out["enc_pos"] = sd["query_pos_encoder.pe"][: max_len + 2 * n, 0].clone()    # (max_len + 2n, d)
    out["dec_pos"] = sd["query_pos_decoder.pe"][:max_len, 0].clone()             # (max_len, d)
    return cfg, feat_dim, out


# ----------------------------------------------------------------------------
# Loss


def vae_loss(pred: torch.Tensor, target: torch.Tensor, lengths, mu: torch.Tensor,
             logvar: torch.Tensor, mean, std, lambda_kl: float = 1e-4, joint_loss: str = "global"):
    """MLD's VAE objective -> (total, {"feat", "joint", "kl"}).

    pred, target: (B, T, D) normalised features; lengths (B,); mu, logvar (B, n, d);
    mean, std (D,) the dataset statistics (tensor or numpy) used to de-normalise before
    recovering joints. Reconstruction terms average over valid frames only.
    """
    B, T, D = pred.shape
    assert target.shape == pred.shape, f"pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
    assert (D + 1) % 12 == 0, (f"HumanML3D-style features have 12 J - 1 dims (263 for 22 joints, "
                               f"251 for 21), got {D}")
    lengths = torch.as_tensor(lengths, device=pred.device)
    valid = lengths_to_mask(lengths, T)                                          # (B, T)
    mean = torch.as_tensor(mean, dtype=pred.dtype, device=pred.device)
    std = torch.as_tensor(std, dtype=pred.dtype, device=pred.device)
    # SmoothL1 on the normalised features of valid frames
    feat = F.smooth_l1_loss(pred[valid], target[valid])
    # SmoothL1 on the joints (metres) recovered from de-normalised features, valid frames only
    joints_pred = features_to_joints(pred * std + mean, n_joints=(D + 1) // 12)  # (B, T, J, 3)
    joints_true = features_to_joints(target * std + mean, n_joints=(D + 1) // 12)
    if joint_loss == "root_relative":  # the root's x/z removed from every joint, heights kept
        xz = joints_pred.new_tensor([1.0, 0.0, 1.0])
        joints_pred = joints_pred - joints_pred[..., :1, :] * xz
        joints_true = joints_true - joints_true[..., :1, :] * xz
    elif joint_loss != "global":
        raise ValueError(f"vae.joint_loss must be 'global' or 'root_relative', got {joint_loss!r}")
    joint = F.smooth_l1_loss(joints_pred[valid], joints_true[valid])
    # KL(N(mu, sigma^2) || N(0, I)), mean over batch, tokens and latent dimensions (MLD)
    kl = kl_to_standard_normal(mu, logvar)
    total = feat + joint + lambda_kl * kl
    return total, {"feat": feat, "joint": joint, "kl": kl}


def noise_ramped(stream, steps: int):
    """The batches of `stream`, each with "noise": the scale s of the posterior noise for that
    step, s = min(1, (i + 1) / steps) for the i-th batch (0-based), so steps = 1 is MLD's s = 1
    throughout. The scale rides on the stream so that a resumed run, which replays its stream to
    where it stopped, picks the ramp up at the same step."""
    if steps < 1:
        raise ValueError(f"vae.noise_ramp is a number of steps >= 1 (1: MLD), got {steps}")
    for i, batch in enumerate(stream):
        yield {**batch, "noise": min(1.0, (i + 1) / steps)}


def vae_loss_fn(model: MotionVAE, mean, std, device):
    """loss_fn(batch) -> (loss, parts) for training `model` on dataset batches (vae_loss with the
    model's lambda_kl and joint loss; mean, std: the dataset's, to recover joints). The batch's
    "noise" (`noise_ramped`; 1 when absent) scales the posterior noise of the decoded z."""
    def loss_fn(batch):
        lengths = batch["lengths"].to(device)
        x = batch["motion"][:, :int(lengths.max())].to(device)  # a micro-batch or shard: its own longest clip
        _, mu, logvar = model.encode(x, lengths, sample=False)
        # z = mu + s * sigma * n, n ~ N(0, I): MLD's reparameterisation at s = 1 (the same draw)
        z = mu + batch.get("noise", 1.0) * torch.exp(0.5 * logvar) * torch.randn_like(mu)
        x_hat = model.decode(z, lengths)
        return vae_loss(x_hat, x, lengths, mu, logvar, mean, std, lambda_kl=model.cfg.lambda_kl,
                        joint_loss=model.cfg.joint_loss)
    return loss_fn
