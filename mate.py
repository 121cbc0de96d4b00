"""MATE: motion-aligned word embeddings for the text encoder of text-to-motion models.

Paper: Motion-Aligned Word Embeddings for Text-to-Motion Generation (Han, Lyu, Sebe;
../shared/seeds/004_fcd44ad5e4e1e096.txt). Implements Sec. 3.3-3.4; the text-motion joint
segmentation of Sec. 3.2 (Eq. 1) that gives each sub-text its segment [s_n, e_n) is in
mate_segmentation.py:

    word-query attention                f_word^m = MultiHead(Q, K, V)                            Eq. (2)
                                        Q = Proj(WE(w)),  K = (1 + lambda prior) * F^m,  V = F^m   Eq. (3)
    Gaussian attention prior            prior(t) = exp(-(t - c_n)^2 / (2 sigma_n^2))              Eq. (4)
    self-disentanglement (prototypes)   L_self                                                    Eq. (5)
    cross-disentanglement               L_cross = mean_N |cos(f_wi^mi, f_wj^mi)| + |cos(f_wi^mi, f_wi^mj)|
    word alignment (symmetric InfoNCE)  L_align                                                   Eq. (6)
                                        L_word = L_self + L_cross + L_align                       Eq. (7)
    sentence alignment, reconstruction  L_sent (InfoNCE of f^t, f^m),  L_rec (decoder of f^m)
                                        L_all = L_rec + lambda_1 L_word + lambda_2 L_sent        Eq. (8)

Only the word-embedding table WE of the text encoder is trained (Sec. 3.4, Tab. 4), together
with MATE's own heads (motion encoder and decoder, Proj, the attention, the prototypes, a text
head); the rest of the text encoder stays frozen and gradients reach the table through it.
`bind_word_table` makes the text encoder read its table from `MATE.word_table`; after training,
`clip.TextEncoder.set_word_embeddings` swaps that table into a fresh encoder, which then
conditions a diffusion model trained from scratch (Sec. 4.1, "retrain the models").

Reading order: the attention prior (Eq. 4), the config, the modules (Eqs. 2-3), the losses
(Eqs. 5-8), the training records and batches, the word-level probe, and the experiment protocol
(the word table's training setup, the probe and segmentation tables, the Tab. 3 loss ablation).

Differences from the paper:
- WE(w) of a word that BPE splits into several tokens is the mean of their rows (not said).
  Prototypes live in Proj's output space, from Proj(WE(lemma)) ("initialised with their WE").
- w is drawn uniformly from the caption's content words (no FUNCTION_WORDS), not from every
  token; K = one prototype per lemma. The cross queries f_wj^mi use no attention prior: w_j
  has no segment in m_i.
- InfoNCE (Eq. 6, L_sent): in-batch pairs sharing the lemma (Eq. 6) or the motion (L_sent) are
  not negatives; L_sent is symmetric; L_rec is MSE over valid frames. tau, lambda, lambda_1,
  lambda_2 and the motion encoder/decoder are not given by the paper: see MATEConfig.
- Tab. 3 (train.py --ablations): each loss is removed by a zero weight and the word table and
  denoiser retrained; variants are compared by the word-level probe (`ablation_probe`), not the
  paper's Top-1, FID and MM-Dist. Eq. (1) runs before any loss: no ablation rows for it.

Glossary: B batch, T frames, D feature width, L tokens (77), W text width, C text embedding
width (c), E MATE feature width, K prototypes, N sub-texts, P word pieces.
"""
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import projector
from mate_segmentation import FUNCTION_WORDS, joint_segmentation, lemmatize, split_caption, words_of
from metrics import mean_ci
from vae import sinusoidal_positions

# ----------------------------------------------------------------------------
# 1. The attention prior (Eq. 4)


def gaussian_prior(T: int, bounds: torch.Tensor) -> torch.Tensor:
    """bounds (B, 2) = (s_n, e_n) of the segment holding w -> prior (B, T) over all frames.

    Eq. (4): prior(t) = exp(-(t - c_n)^2 / (2 sigma_n^2)), c_n = (s_n + e_n) / 2,
    sigma_n = (e_n - s_n) / 2; over 0 <= t < T (Tab. 6: better than inside the segment only)."""
    s, e = bounds[:, 0:1].float(), bounds[:, 1:2].float()              # (B, 1)
    assert bool((e > s).all()), "every segment needs e_n > s_n"
    t = torch.arange(T, device=bounds.device, dtype=torch.float32)[None]  # (1, T)
    center, sigma = (s + e) / 2, (e - s) / 2
    # Eq. (4): exp(-(t - c_n)^2 / (2 sigma_n^2))
    return torch.exp(-((t - center) ** 2) / (2 * sigma ** 2))          # (B, T)


# ----------------------------------------------------------------------------
# 2. Configuration and modules (Eqs. 2-3)


@dataclass
class MATEConfig:
    # The paper does not describe its motion encoder/decoder; TMR's (Petrovich et al. 2023,
    # the retrieval family MATE's segmentation model belongs to) sizes are used.
    latent_dim: int = 256        # TMR latent_dim: E, the width of f^m, F^m and Proj's output
    n_layers: int = 6            # TMR num_layers (encoder and decoder each)
    n_heads: int = 4             # TMR num_heads; also the heads of MultiHead in Eq. (2)
    ff_dim: int = 1024           # TMR ff_size
    dropout: float = 0.1         # TMR dropout
    max_len: int = 196           # HumanML3D's longest clip (positions of the decoder)
    prior_lambda: float = 1.0    # ours: lambda of Eq. (3), not given in the paper
    temperature: float = 0.1     # TMR's InfoNCE temperature; tau of Eqs. (5)-(6) is not given
    lambda_word: float = 1.0     # ours: lambda_1 of Eq. (8), not given
    lambda_sent: float = 1.0     # ours: lambda_2 of Eq. (8), not given
    # Eq. (7) sums L_self, L_cross, L_align and Eq. (8) adds L_rec, each with weight 1. A weight
    # of 0 (here or lambda_sent) removes the term, which is then not computed: Tab. 3's rows
    lambda_self: float = 1.0     # Eq. (7); 0: Tab. 3 "L_self" removed
    lambda_cross: float = 1.0    # Eq. (7); 0: Tab. 3 "L_cross" removed
    lambda_align: float = 1.0    # Eq. (7); 0: Tab. 3 "L_align" removed
    lambda_rec: float = 1.0      # Eq. (8); 0: Tab. 3 "L_rec" removed
    segment_grid: int = 4        # ours: Eq. (1) boundaries every 4 frames (HumanML3D's length unit)
    min_segment: int = 16        # ours: shortest segment, 0.8 s at 20 fps
    # the probe's word pairs, close in language, apart in motion (Sec. 3.1, Figs. 4-5; issue 9)
    word_pairs: tuple[str, ...] = ("clockwise:counterclockwise", "left:right", "forward:backward",
                                   "slowly:quickly")
    probe_captions: int = 64     # ours: test captions per word pair in the probe (2 motions each)
    AT_LEAST_ZERO: ClassVar = ("prior_lambda", "lambda_word", "lambda_sent", "lambda_self", "lambda_cross",
                               "lambda_align", "lambda_rec")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("dropout",)


def loss_weights(cfg: MATEConfig) -> dict[str, float]:
    """The weight of each term of L_all (Eqs. 7-8) that is not removed: {name: weight > 0}.
    The Eq. (7) terms carry lambda_1 (lambda_word) times their own weight (1 in the paper)."""
    weights = {"self": cfg.lambda_word * cfg.lambda_self, "cross": cfg.lambda_word * cfg.lambda_cross,
               "align": cfg.lambda_word * cfg.lambda_align, "sent": cfg.lambda_sent, "rec": cfg.lambda_rec}
    return {name: w for name, w in weights.items() if w != 0}


def _masked_transformer(cfg: MATEConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.latent_dim, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                       activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)


class MotionEncoder(nn.Module):
    """motion (B, T, D) -> sequence feature f^m (B, E) (a learned summary token, as TMR/ACTOR)
    and frame features F^m (B, T, E)."""

    def __init__(self, cfg: MATEConfig, feat_dim: int):
        super().__init__()
        self.embed = nn.Linear(feat_dim, cfg.latent_dim)
        self.token = nn.Parameter(torch.randn(cfg.latent_dim) * 0.02)
        self.register_buffer("pos", sinusoidal_positions(cfg.max_len + 1, cfg.latent_dim), persistent=False)
        self.transformer = _masked_transformer(cfg)

    def forward(self, motion: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = motion.shape
        assert T + 1 <= len(self.pos), f"{T} frames exceed max_len={len(self.pos) - 1}"
        x = torch.cat([self.token.expand(B, 1, -1), self.embed(motion)], dim=1) + self.pos[:T + 1]  # (B, 1+T, E)
        mask = torch.cat([valid.new_ones(B, 1), valid], dim=1)         # (B, 1+T)
        h = self.transformer(x, src_key_padding_mask=~mask)            # (B, 1+T, E)
        return h[:, 0], h[:, 1:]                                       # (B, E), (B, T, E)


class MotionDecoder(nn.Module):
    """f^m (B, E) -> motion (B, T, D): one query per frame (position + f^m), a transformer, a
    linear read-out (L_rec keeps f^m informative, Sec. 3.4)."""

    def __init__(self, cfg: MATEConfig, feat_dim: int):
        super().__init__()
        self.register_buffer("pos", sinusoidal_positions(cfg.max_len, cfg.latent_dim), persistent=False)
        self.transformer = _masked_transformer(cfg)
        self.out = nn.Linear(cfg.latent_dim, feat_dim)

    def forward(self, f_m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T = valid.shape
        x = self.pos[:T][None] + f_m[:, None]                          # (B, T, E)
        return self.out(self.transformer(x, src_key_padding_mask=~valid)) * valid[..., None]  # (B, T, D)


class MATE(nn.Module):
    """The trainable parts of MATE: the word table WE (a copy of the text encoder's, bound to it
    with `bind_word_table`), Proj, the motion encoder and decoder, the word-query attention,
    the K prototypes and a text head giving f^t from the text encoder's c."""

    def __init__(self, cfg: MATEConfig, feat_dim: int, word_table: torch.Tensor, text_dim: int,
                 n_prototypes: int):
        super().__init__()
        W, E = word_table.shape[1], cfg.latent_dim
        if not loss_weights(cfg):
            raise ValueError("mate: every loss weight is 0 (lambda_rec, lambda_sent, lambda_word x lambda_self/"
                             "cross/align): L_all (Eq. 8) would have nothing to train")
        self.cfg = cfg
        self.word_table = nn.Parameter(word_table.detach().clone())    # (V, W) WE, Sec. 3.4
        self.proj = nn.Linear(W, E)                                    # Proj of Eqs. (3) and (6)
        self.motion_encoder = MotionEncoder(cfg, feat_dim)
        self.attention = nn.MultiheadAttention(E, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
        self.prototypes = nn.Parameter(torch.zeros(n_prototypes, E))   # (K, E) f^p, see init_prototypes
        self.text_head = nn.Linear(text_dim, E)                        # f^t = text_head(c)
        self.motion_decoder = MotionDecoder(cfg, feat_dim)

    def word_vectors(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """WE(w): the mean of the table rows of each word's BPE pieces. ids, mask (B, P) -> (B, W)."""
        rows = self.word_table[ids] * mask[..., None]                  # (B, P, W)
        return rows.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    @torch.no_grad()
    def init_prototypes(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Prototype k starts at Proj(WE(lemma_k)) (Sec. 4.1: initialised from the word embeddings)."""
        assert ids.shape[0] == len(self.prototypes), f"{ids.shape[0]} lemmas for {len(self.prototypes)} prototypes"
        self.prototypes.copy_(self.proj(self.word_vectors(ids, mask)))

    def attend(self, query: torch.Tensor, frames: torch.Tensor, valid: torch.Tensor,
               prior: torch.Tensor | None) -> torch.Tensor:
        """Eqs. (2)-(3): query (B, Q, E) over frames F^m (B, T, E) -> (B, Q, E);
        K = (1 + lambda prior) * F^m, V = F^m; prior (B, T) or None (K = F^m)."""
        # Eq. (3): K = (1 + lambda AttentionPrior) * F^m, V = F^m
        keys = frames if prior is None else (1 + self.cfg.prior_lambda * prior[..., None]) * frames  # (B, T, E)
        # Eq. (2): f_word^m = MultiHead(Q, K, V)
        out, _ = self.attention(query, keys, frames, key_padding_mask=~valid, need_weights=False)
        return out

    def forward(self, batch: dict, c: torch.Tensor) -> dict:
        """batch from `record_batches` (on the model's device), c (B, C) the text encoder's
        embedding of the captions (computed through the bound table) -> every feature of Sec. 3."""
        motion, lengths = batch["motion"], batch["lengths"]
        B, T, D = motion.shape
        valid = torch.arange(T, device=motion.device)[None] < lengths[:, None]   # (B, T)
        f_m, frames = self.motion_encoder(motion, valid)               # (B, E), (B, T, E)
        # Eq. (3): Q = Proj(WE(w)); also f^e of Eq. (6)
        f_e = self.proj(self.word_vectors(batch["word_ids"], batch["word_mask"]))  # (B, E)
        prior = gaussian_prior(T, batch["bounds"])                     # (B, T), Eq. (4)
        f_self = self.attend(f_e[:, None], frames, valid, prior)[:, 0]  # (B, E)  f_{w_i}^{m_i}
        out = {"f_m": f_m, "f_e": f_e, "f_self": f_self, "f_t": self.text_head(c)}
        weights = loss_weights(self.cfg)  # what a removed loss alone reads is not computed (Tab. 3)
        if "cross" in weights:  # every word of the batch queries every motion: f_cross[i, j] = f_{w_j}^{m_i}
            out["f_cross"] = self.attend(f_e[None].expand(B, B, -1), frames, valid, None)   # (B, B, E)
        if "rec" in weights:
            out["motion_hat"] = self.motion_decoder(f_m, valid)        # (B, T, D)
        return out


def bind_word_table(text, model: MATE) -> None:
    """Make the text encoder (clip.TextEncoder) read its token table from model.word_table, so
    the gradient of anything computed from text.encode_ids reaches the table; every other
    parameter of the text encoder stays frozen. Use a text encoder of its own for training."""
    table = text.word_embeddings
    assert tuple(table.weight.shape) == tuple(model.word_table.shape), \
        f"table {tuple(model.word_table.shape)} does not fit the encoder's {tuple(table.weight.shape)}"
    table.weight = model.word_table
    text.cache.clear()


# ----------------------------------------------------------------------------
# 3. Losses (Eqs. 5-8), plain functions of tensors


def self_loss(f_word: torch.Tensor, prototypes: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (5): mean_i -log softmax_k(cos(f_wi^mi, f_wk^p) / tau)[target_i].
    f_word (B, E), prototypes (K, E), target (B,) prototype index of each w_i."""
    logits = F.normalize(f_word, dim=-1) @ F.normalize(prototypes, dim=-1).T / tau   # (B, K)
    # Eq. (5): -log exp(cos(f_wi^mi, f_wi^p)/tau) / sum_k exp(cos(f_wi^mi, f_wk^p)/tau), mean over i
    return F.cross_entropy(logits, target)


def cross_loss(f_self: torch.Tensor, f_cross: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Sec. 3.3: mean over negative pairs (i, j) of |cos(f_wi^mi, f_wj^mi)| + |cos(f_wi^mi, f_wi^mj)|.
    f_self (B, E); f_cross (B, B, E) with f_cross[i, j] = f_{w_j}^{m_i}; negative (B, B) bool."""
    if not bool(negative.any()):
        return f_self.new_zeros(())
    a = F.normalize(f_self, dim=-1)                                    # (B, E)
    cross = F.normalize(f_cross, dim=-1)                               # (B, B, E)
    word_in_motion = (a[:, None] * cross).sum(-1).abs()               # [i, j] = |cos(f_wi^mi, f_wj^mi)|
    motion_by_word = (a[:, None] * cross.transpose(0, 1)).sum(-1).abs()  # [i, j] = |cos(f_wi^mi, f_wi^mj)|
    # L_cross = 1/|N| sum_{(i,j) in N} |cos(f_wi^mi, f_wj^mi)| + |cos(f_wi^mi, f_wi^mj)|
    return (word_in_motion + motion_by_word)[negative].mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities of paired rows a (B, E), b (B, E):
    1/(2B) sum_i [-log softmax_j(cos(a_i, b_j)/tau)[i] - log softmax_j(cos(b_i, a_j)/tau)[i]]
    (Eq. 6 with a = f^e, b = f^m_w; L_sent with a = f^t, b = f^m). same (B, B) bool marks
    off-diagonal pairs that are not negatives (left out of the softmax)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau   # (B, B)
    if same is not None:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    # Eq. (6): 1/(2|V|) sum_i [-log p(b_i | a_i) - log p(a_i | b_i)]
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def rec_loss(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """L_rec: mean squared error over the valid frames of (B, T, D)."""
    valid = torch.arange(target.shape[1], device=target.device)[None] < lengths[:, None]   # (B, T)
    return F.mse_loss(pred[valid], target[valid])


def mate_loss(out: dict, batch: dict, prototypes: torch.Tensor, cfg: MATEConfig) -> tuple[torch.Tensor, dict]:
    """Eqs. (5)-(8) from MATE.forward's features -> (L_all, parts). A term whose weight is 0
    (MATE Tab. 3's "Loss Removed" rows) is not computed and is absent from parts."""
    tau, kept = cfg.temperature, loss_weights(cfg)
    zero = out["f_m"].new_zeros(())
    l_self = self_loss(out["f_self"], prototypes, batch["target"], tau) if "self" in kept else zero    # Eq. (5)
    l_cross = cross_loss(out["f_self"], out["f_cross"], batch["negative"]) if "cross" in kept else zero  # Sec. 3.3
    l_align = info_nce(out["f_e"], out["f_self"], tau, batch["same_word"]) if "align" in kept else zero  # Eq. (6)
    # Eq. (7): L_word = L_self + L_cross + L_align (each weighted 1 in the paper)
    l_word = cfg.lambda_self * l_self + cfg.lambda_cross * l_cross + cfg.lambda_align * l_align
    l_sent = info_nce(out["f_t"], out["f_m"], tau, batch["same_motion"]) if "sent" in kept else zero
    l_rec = rec_loss(out["motion_hat"], batch["motion"], batch["lengths"]) if "rec" in kept else zero
    # Eq. (8): L_all = L_rec + lambda_1 L_word + lambda_2 L_sent
    total = cfg.lambda_rec * l_rec + cfg.lambda_word * l_word + cfg.lambda_sent * l_sent
    parts = {"self": l_self, "cross": l_cross, "align": l_align, "sent": l_sent, "rec": l_rec}
    return total, {k: v.detach() for k, v in parts.items() if k in kept}


# ----------------------------------------------------------------------------
# 4. Training records: (motion, caption, sub-texts, segments, words), and their batches


@dataclass
class Record:
    name: str
    motion: torch.Tensor                  # (T, D) normalized, T a multiple of the dataset's unit
    caption: str
    bounds: list[tuple[int, int]]         # (s_n, e_n) frames of each sub-text's segment, Eq. (1)
    words: list[tuple[str, int]]          # (content word, index of its sub-text): candidates for w
    lemmas: frozenset[str]                # every lemma of the caption (negative pairs, Sec. 3.3)


def prepare_records(dataset, embedder, cfg: MATEConfig, device, log=print) -> list[Record]:
    """One Record per (item, caption) of a data.MotionTextDataset: the caption split into
    sub-texts and the motion segmented against them by Eq. (1), once (the embedder is frozen).
    Motions start at frame 0 (bounds are frame indices of the whole clip). Captions without a
    content word (nothing to query) are left out."""
    records = []
    threads = torch.get_num_threads()
    # note: one motion at a time makes small tensors; on a busy shared CPU, a second intra-op
    # thread spin-waits more than it computes (measured 10-100x slower with 2 threads there)
    torch.set_num_threads(1)
    try:
        for name, raw, captions in dataset.items:
            records += _item_records(name, raw, captions, dataset, embedder, cfg, device)
    finally:
        torch.set_num_threads(threads)
    left_out = sum(len(captions) for _, _, captions in dataset.items) - len(records)
    log(f"[mate] {len(records)} (motion, caption) records from {len(dataset)} motions"
        + (f", {left_out} captions without a content word left out" if left_out else ""))
    return records


def _item_records(name, raw, captions, dataset, embedder, cfg: MATEConfig, device) -> list[Record]:
    T = (len(raw) // dataset.unit) * dataset.unit
    motion = torch.from_numpy(dataset.normalize(raw[:T])).float()      # (T, D)
    # a caption with more sub-texts than grid cells keeps its tail as one sub-text
    cells = T // cfg.segment_grid
    subtexts = [subs[:cells - 1] + [" ".join(subs[cells - 1:])] if len(subs) > cells else subs
                for subs in (split_caption(c) for c in captions)]
    bounds = joint_segmentation(embedder, motion.to(device), subtexts, cfg.segment_grid, cfg.min_segment)
    records = []
    for caption, subs, b in zip(captions, subtexts, bounds):
        words = [(w, n) for n, sub in enumerate(subs) for w in words_of(sub) if w not in FUNCTION_WORDS]
        if words:
            records.append(Record(name, motion, caption, b, words, frozenset(lemmatize(w) for w in words_of(caption))))
    return records


def segmentation_report(records: list[Record], segments: dict[str, dict]) -> dict:
    """Eq. (1) against known action boundaries (the synthetic dataset's segments.json, bounds in
    frames): the share of captions split into as many sub-texts as their motion has actions
    (cf. the paper's Tab. 7 "text decomposition accuracy"), and over those with at least two
    actions, the mean |predicted - true| inner boundary in frames (Tab. 7 "segmentation
    error"), for Eq. (1) and for the even split of the motion into N parts."""
    matched, errors, even = 0, [], []
    known = [r for r in records if r.name in segments]
    for r in known:
        truth = [e for _, e in segments[r.name]["bounds"][:-1]]       # inner boundaries
        if len(truth) + 1 != len(r.bounds):
            continue
        matched += 1
        T = len(r.motion)
        for k, t in enumerate(truth):
            errors.append(abs(r.bounds[k][1] - t))
            even.append(abs(round((k + 1) * T / len(r.bounds)) - t))
    return {"captions": len(known), "decomposition_accuracy": matched / max(len(known), 1),
            "boundaries": len(errors), "boundary_error_frames": float(np.mean(errors)) if errors else float("nan"),
            "even_split_error_frames": float(np.mean(even)) if even else float("nan")}


def vocabulary(records: list[Record]) -> list[str]:
    """The lemmas of the training captions, sorted: one prototype each (K = len)."""
    return sorted({lemma for r in records for lemma in r.lemmas})


def word_ids(tokenizer, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BPE ids of each word, padded: ids (N, P) long, mask (N, P) float."""
    pieces = [tokenizer.encode(w) for w in words]
    assert all(pieces), "every word needs at least one token"
    P = max(len(p) for p in pieces)
    ids = torch.zeros(len(words), P, dtype=torch.long)
    mask = torch.zeros(len(words), P)
    for i, p in enumerate(pieces):
        ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1.0
    return ids, mask


def collate_records(records: list[Record], tokenizer, lemma_index: dict[str, int],
                    rng: np.random.Generator) -> dict:
    """A batch for MATE.forward / mate_loss, with one word w drawn per record."""
    B = len(records)
    picks = [r.words[rng.integers(len(r.words))] for r in records]
    words = [w for w, _ in picks]
    lemmas = [lemmatize(w) for w in words]
    lengths = torch.tensor([len(r.motion) for r in records])
    motion = torch.zeros(B, int(lengths.max()), records[0].motion.shape[1])   # (B, Tmax, D)
    for i, r in enumerate(records):
        motion[i, :len(r.motion)] = r.motion
    ids, mask = word_ids(tokenizer, words)
    # (i, j) is a negative pair when neither caption holds the other's word (Sec. 3.3)
    absent = torch.tensor([[lemmas[j] not in records[i].lemmas for j in range(B)] for i in range(B)])
    same_word = torch.tensor([[a == b for b in lemmas] for a in lemmas])
    same_motion = torch.tensor([[a.name == b.name for b in records] for a in records])
    ids_text = tokenizer([r.caption for r in records])                # (B, 77)
    # note: CLIP's attention is causal, so the tokens after the last end token change nothing
    # in c: cut them (as clip.TextEncoder.encode_cached does) for a 2-4x cheaper text pass
    ids_text = ids_text[:, :int((ids_text == tokenizer.eot_id).int().argmax(1).max()) + 1]
    return {"motion": motion, "lengths": lengths, "ids": ids_text,
            "word_ids": ids, "word_mask": mask, "target": torch.tensor([lemma_index[l] for l in lemmas]),
            "bounds": torch.tensor([r.bounds[n] for r, (_, n) in zip(records, picks)]),
            "negative": absent & absent.T, "same_word": same_word, "same_motion": same_motion,
            "pairwise": ("negative", "same_word", "same_motion"),  # (B, B): loop.shard cuts both axes
            "caption": [r.caption for r in records], "word": words}


def record_batches(records: list[Record], batch_size: int, seed: int, tokenizer, lemma_index: dict[str, int]):
    """An endless stream of batches (collate_records) of similar motion lengths, as
    loop.batches: each pass shuffles the records, sorts windows of 50 batches by length and
    shuffles the batches, so little of a batch is padding while the order stays random."""
    if len(records) < batch_size:
        raise ValueError(f"{len(records)} MATE records, fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    lengths = np.array([len(r.motion) for r in records])
    window = 50 * batch_size
    while True:
        order, groups = rng.permutation(len(records)), []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
        for g in rng.permutation(len(groups)):
            yield collate_records([records[i] for i in groups[g]], tokenizer, lemma_index, rng)


# ----------------------------------------------------------------------------
# 5. The word-level probe (Sec. 4.4, Figs. 4-5): near-synonyms in language, opposites in motion


def parse_pairs(pairs: tuple[str, ...]) -> list[tuple[str, str]]:
    """("clockwise:counterclockwise", ...) -> [("clockwise", "counterclockwise"), ...]."""
    out = [tuple(p.split(":")) for p in pairs]
    bad = [p for p in out if len(p) != 2 or not all(p)]
    if bad:
        raise ValueError(f"mate.word_pairs: expected 'word:word' items, got {pairs}")
    return out


def word_cosine(table: torch.Tensor, tokenizer, a: str, b: str) -> float:
    """cos(WE(a), WE(b)) in a word table (V, W), WE the mean over BPE pieces."""
    ids, mask = word_ids(tokenizer, [a, b])
    ids, mask = ids.to(table.device), mask.to(table.device)
    vec = (table[ids] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)   # (2, W)
    return float(F.cosine_similarity(vec[0], vec[1], dim=0))


def swap_word(caption: str, a: str, b: str) -> str | None:
    """The caption with the whole word a replaced by b (None when a is absent)."""
    pattern = re.compile(rf"\b{re.escape(a)}\b", re.IGNORECASE)
    return pattern.sub(b, caption) if pattern.search(caption) else None


def caption_pairs(captions: list[str], a: str, b: str, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` (caption, the same caption with a <-> b swapped) pairs, from captions
    holding a and from captions holding b (half each when both exist)."""
    found = {w: [(c, swap_word(c, w, o)) for c in dict.fromkeys(captions) if swap_word(c, w, o)]
             for w, o in ((a, b), (b, a))}
    half = max(limit // 2, limit - len(found[b]))
    return (found[a][:half] + found[b])[:limit]


@torch.no_grad()
def pair_accuracy(generate_fn, evaluator, pairs: list[tuple[str, str]],
                  length: int) -> tuple[float, float]:
    """How often a motion generated from one caption of a pair lies closer (Euclidean, the
    evaluator's metric space) to its own caption than to the other one -> (mean, 95% CI half
    width) over the 2 x len(pairs) motions. generate_fn(captions, lengths (B,)) -> normalized
    motions (B, T, D). 0.5 = the word makes no difference the evaluator can see."""
    if not pairs:
        return float("nan"), float("nan")
    first, second = [p[0] for p in pairs], [p[1] for p in pairs]
    captions = first + second
    lengths = torch.full((len(captions),), length, dtype=torch.long)
    device = next(evaluator.parameters()).device
    motion = evaluator.encode_motion(generate_fn(captions, lengths).to(device), lengths.to(device))  # (2M, E)
    own = evaluator.encode_text(evaluator.tokenizer(captions).to(device))                          # (2M, E)
    other = evaluator.encode_text(evaluator.tokenizer(second + first).to(device))                  # (2M, E)
    correct = (motion - own).norm(dim=-1) < (motion - other).norm(dim=-1)   # (2M,)
    return mean_ci(correct.float().cpu().numpy())


@torch.no_grad()
def probe_length(dataset, unit: int) -> int:
    """One motion length for every probe: the split's median, a multiple of the unit."""
    return int(np.median([len(m) for _, m, _ in dataset.items])) // unit * unit


def word_probe(plain, with_mate, evaluator, dataset, cfg: MATEConfig, length: int, seed: int,
               log=print) -> dict:
    """For word pairs close in language but opposite in motion (Sec. 4.4, Figs. 4-5): the cosine
    of their word embeddings in the original and the MATE table, and how often the `evaluator`
    places a motion generated from a caption of `dataset` nearer to that caption than to the same
    caption with the word swapped, for the plain (MLD) and the MATE pipeline (projector.Pipeline),
    all motions `length` frames. -> {row: {column: (mean, CI)}}."""
    tokenizer = plain.text.tokenizer
    before, after = plain.text.word_embeddings.weight, with_mate.text.word_embeddings.weight
    rows = {}
    for a, b in parse_pairs(cfg.word_pairs):
        pairs = caption_pairs(dataset.captions(), a, b, cfg.probe_captions)
        row = {"WE cos, original": (word_cosine(before, tokenizer, a, b), 0.0),
               "WE cos, MATE": (word_cosine(after, tokenizer, a, b), 0.0)}
        for label, pipe in (("MLD", plain), ("MLD+MATE", with_mate)):
            torch.manual_seed(seed)  # the same noise for both models
            row[f"{label} pair acc."] = pair_accuracy(
                lambda captions, lengths, p=pipe: projector.generate(p, captions, lengths),
                evaluator, pairs, length)
        rows[f"{a} / {b} ({len(pairs)} caption pairs)"] = row
        log(f"[mate] probe {a} / {b}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in row.items()))
    return rows


def probe_note(length: int) -> str:
    return (f"WE cos: cosine of the two words' embedding rows (mean over BPE pieces) in the original "
            f"and the MATE table. Pair acc.: share of motions ({length} frames) generated from a test "
            f"caption that the `evaluator` places nearer (Euclidean) to that caption than to the caption "
            f"with the word swapped (0.5 = not heard), ± 95% CI.")



@torch.no_grad()
def ablation_probe(pipelines: dict, evaluator, dataset, cfg: MATEConfig, length: int, seed: int,
                   log=print) -> tuple[dict, str]:
    """The Tab. 3 analogue: the word-level probe pooled over the word pairs, for each variant
    {row: projector.Pipeline whose text encoder holds that variant's word table and whose denoiser
    was retrained on it}: the mean over the word pairs of the cosine of their embedding rows, and
    the pair accuracy over every caption pair of every word pair (as `word_probe`, the same noise
    for every variant). -> ({row: {column: (mean, CI)}}, note)."""
    words = parse_pairs(cfg.word_pairs)
    pairs = [p for a, b in words for p in caption_pairs(dataset.captions(), a, b, cfg.probe_captions)]
    rows = {}
    for row, pipe in pipelines.items():
        tokenizer, table = pipe.text.tokenizer, pipe.text.word_embeddings.weight
        torch.manual_seed(seed)
        rows[row] = {"WE cos": (float(np.mean([word_cosine(table, tokenizer, a, b) for a, b in words])), 0.0),
                     "pair acc.": pair_accuracy(lambda captions, lengths, p=pipe: projector.generate(p, captions, lengths),
                                                evaluator, pairs, length)}
        log(f"[mate] ablation probe {row}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in rows[row].items()))
    note = (f"Each row's word table is trained with that loss removed from L_all (Eqs. 7-8; the same records, "
            f"batches and steps as the full model) and the denoiser retrained on it from scratch, as the paper "
            f"retrains its T2M model; the paper reports Top-1, FID and MM-Dist of those models (Tab. 3). Here: WE "
            f"cos, the mean over the {len(words)} probe word pairs of the cosine of their embedding rows; pair "
            f"acc. over the {2 * len(pairs)} motions ({length} frames) of all their test caption pairs, as in "
            f"the word-level probe (0.5 = the word is not heard), ± 95% CI.")
    return rows, note


def segmentation_rows(report: dict) -> tuple[dict, str]:
    """segmentation_report as the Tab. 7 analogue -> (rows, note)."""
    rows = {"Eq. (1) search": {"decomposition acc.": (report["decomposition_accuracy"], 0.0),
                               "boundary error (frames)": (report["boundary_error_frames"], 0.0),
                               "even split error (frames)": (report["even_split_error_frames"], 0.0)}}
    note = (f"{report['captions']} training captions; boundary errors over {report['boundaries']} inner "
            f"boundaries of captions split into as many sub-texts as their motion has actions; the "
            f"even split cuts the motion into N equal parts (a baseline). The paper: 0.73 s = 15 frames.")
    return rows, note


def word_table_training(records: list[Record], text, feat_dim: int, cfg: MATEConfig, batch_size: int,
                        seed: int, device, log=print):
    """Stage 2 of the protocol (Sec. 3.4): MATE's heads and prototypes (one per lemma of the
    training captions), the text encoder's word table bound to MATE's and trained through the
    frozen encoder with L_all (Eq. 8). -> (model, loss_fn(batch) -> (loss, parts), batch stream,
    checkpoint meta); the caller's training loop steps it."""
    lemmas = vocabulary(records)
    index = {lemma: k for k, lemma in enumerate(lemmas)}
    torch.manual_seed(seed)
    model = MATE(cfg, feat_dim, text.word_embeddings.weight, text.dim, len(lemmas)).to(device)
    model.init_prototypes(*(t.to(device) for t in word_ids(text.tokenizer, lemmas)))
    bind_word_table(text, model)
    log(f"[mate] {len(lemmas)} prototypes (lemmas of the training captions); training the "
        f"{tuple(model.word_table.shape)} word table through the frozen text encoder")

    def loss_fn(batch):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        c, _ = text.encode_ids(batch["ids"])                                        # (B, C), through WE
        return mate_loss(model(batch, c), batch, model.prototypes, cfg)

    stream = record_batches(records, batch_size, seed, text.tokenizer, index)
    meta = {"feat_dim": int(feat_dim), "text_dim": text.dim, "vocabulary": lemmas}
    return model, loss_fn, stream, meta
