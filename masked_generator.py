"""The masked token generator: MoMask's masked transformer and LaMP-T2M, its decoder-only variant.

Papers: LaMP (Li et al., ICLR 2025, arXiv 2410.07093; ../shared/seeds/003_d88d83113f8fa35c.txt)
Sec. 3.2 and A.3.3, over MoMask's masked transformer (Guo et al., CVPR 2024, arXiv 2312.00063,
Sec. 3.2; sizes and decoding constants from its code). Implements

    gamma(r) = cos(pi r / 2),  r ~ U(0, 1)           share of a clip's tokens masked   Sec. 3.2.1
    [M] with p 0.88 x 0.9, a random code with p 0.1, unchanged otherwise (BERT)        Sec. 3.2.1
    L_mask = sum_{k: m_k = [M]} -log p(m_k | m^M, t)                                   Eq. (2)
    decoder-only: causal self-attention at training, bidirectional at inference        Eq. (3), A.3.3
    logits = l(ids, null) + s (l(ids, t) - l(ids, null))   classifier-free guidance    MoMask Sec. 3.2
    K iterations: predict every masked token, keep the confident ones, re-mask the
    gamma(k / (K - 1)) n least confident                                               MoMask Sec. 3.2

over the codes of the motion tokenizer (vqvae.py). The text enters as one prefix token, the
condition vector through a Linear; the condition is frozen and chosen by `condition` (Tab. 6):
`clip` (MoMask's: CLIP's text feature), `lamp_text` ("+ LaMP": the LaMP text transformer's start
token), `lamp_queries` ("+ Query tokens": LaMP's queries cross-attending to the text, averaged,
`LaMP.text_condition`); `causal` gives "+ Decoder-only". LaMP-T2M is all three.

Notation: ids m (B, n) codes with [M] = S and [PAD] = S + 1; cond c (B, C); logits (B, n, S).

Differences from the paper:
- One codebook (vqvae.py): the paper names both a 6-layer residual VQ and "a single codebook
  without a refinement step"; the LaMP code trains one. No residual transformer.
- The mask count is round(gamma(r) n) of each clip's n tokens (MoMask's code; the paper: ceil;
  MoMask's code counts padding in n). Eq. (2) is averaged over the masked tokens (the code).
- The LaMP code's "causal" mask is a float lower-triangular 1/0 matrix that PyTorch *adds* to
  the attention logits: nothing is masked, at training or inference. Here `causal` masks.
- The LaMP code passes no padding mask to its transformer; here padded keys are masked. Its
  frozen condition adds a trained Linear before the queries; here LaMP stays whole and frozen.
- Gumbel-max sampling (the issue's and MoMask's `gsample`); LaMP's default draws from the
  softmax instead: the same distribution.

Glossary: B batch, n motion tokens (frames / 4), S codes, C condition width, W width, K iterations.
"""
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100  # label that F.cross_entropy skips: tokens that were not masked
CONDITIONS = ("clip", "lamp_text", "lamp_queries")


@dataclass
class MaskedGeneratorConfig:
    width: int = 384              # MoMask latent_dim; the "paper sizes"
    n_layers: int = 6             # paper sizes (MoMask's code: 8)
    n_heads: int = 6              # MoMask
    ff_dim: int = 1024            # MoMask ff_size
    dropout: float = 0.2          # MoMask
    cond_drop: float = 0.1        # MoMask cond_drop_prob: condition zeroed, for guidance
    random_share: float = 0.1     # Sec. 3.2.1: share of masked tokens given a random code
    mask_share: float = 0.88      # of the others, the share given [M] (MoMask code; paper: 80 / 10 / 10)
    condition: str = "lamp_queries"  # one of CONDITIONS (Tab. 6)
    causal: bool = True           # Sec. 3.2.2 decoder-only; False: MoMask's bidirectional training
    iterations: int = 10          # MoMask K (time_steps)
    guidance: float = 4.0         # MoMask cond_scale: 4 on HumanML3D, 2 on KIT-ML
    top_k: float = 0.9            # MoMask topk_filter_thres: logits outside the top 10% dropped
    temperature: float = 1.0      # MoMask
    AT_LEAST_ZERO: ClassVar = ("guidance", "temperature")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("dropout", "cond_drop", "random_share", "mask_share", "top_k")

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"lamp_t2m.condition={self.condition!r}: choose one of {', '.join(CONDITIONS)}")
        if self.iterations < 2:
            raise ValueError(f"lamp_t2m.iterations={self.iterations}: the schedule needs at least 2 (MoMask: 10)")


def sinusoids(n: int, width: int) -> torch.Tensor:
    """(n, W) sinusoidal positions (Vaswani et al.; MoMask's PositionalEncoding)."""
    position = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(n, width, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return table.float()


# ----------------------------------------------------------------------------
# The model


class MaskedTransformer(nn.Module):
    """[c | m_1 .. m_n] -> transformer encoder -> logits over the S codes at each motion token."""

    def __init__(self, cfg: MaskedGeneratorConfig, n_codes: int, cond_dim: int, max_tokens: int):
        super().__init__()
        W = cfg.width
        self.cfg, self.n_codes, self.max_tokens = cfg, n_codes, max_tokens
        self.mask_id, self.pad_id = n_codes, n_codes + 1
        self.token_emb = nn.Embedding(n_codes + 2, W)                  # codes, [M], [PAD]
        self.cond_emb = nn.Linear(cond_dim, W)                         # c -> the prefix token
        self.register_buffer("position", sinusoids(max_tokens, W), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(W, cfg.n_heads, cfg.ff_dim, cfg.dropout, activation="gelu",
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        # MoMask's OutputProcess_Bert: Linear, GELU, LayerNorm, Linear to the codebook
        self.head = nn.Sequential(nn.Linear(W, W), nn.GELU(), nn.LayerNorm(W, eps=1e-12), nn.Linear(W, n_codes))
        for module in self.modules():  # MoMask's init: N(0, 0.02), zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, cond: torch.Tensor, valid: torch.Tensor, causal: bool = False):
        """ids (B, n), cond (B, C) (zeros: no condition), valid (B, n) -> logits (B, n, S).
        causal: token k attends to the condition and tokens <= k only (Eq. 3)."""
        B, n = ids.shape
        assert n <= self.max_tokens, f"{n} motion tokens; the model was built for at most {self.max_tokens}"
        x = self.drop(self.token_emb(ids) + self.position[:n])              # (B, n, W)
        x = torch.cat([self.cond_emb(cond)[:, None], x], dim=1)            # (B, 1 + n, W)
        ignored = torch.cat([valid.new_zeros(B, 1), ~valid], dim=1)        # (B, 1 + n) padded keys
        future = torch.triu(torch.ones(n + 1, n + 1, dtype=torch.bool, device=ids.device), 1) if causal else None
        h = self.transformer(x, mask=future, src_key_padding_mask=ignored)  # (B, 1 + n, W)
        return self.head(h[:, 1:])                                          # (B, n, S)


# ----------------------------------------------------------------------------
# Training: masking (Sec. 3.2.1) and the loss (Eq. 2)


def cosine_schedule(r: torch.Tensor) -> torch.Tensor:
    """Sec. 3.2.1: gamma(r) = cos(pi r / 2), the share of tokens masked (r = 0: all of them)."""
    return torch.cos(math.pi * r / 2)


def mask_tokens(codes: torch.Tensor, valid: torch.Tensor, cfg: MaskedGeneratorConfig, n_codes: int,
                generator: torch.Generator | None = None):
    """codes (B, n), valid (B, n) -> (inputs (B, n), labels (B, n), masked (B, n)).

    Each clip masks round(gamma(r) n_b) of its n_b tokens (at least one), r ~ U(0, 1), chosen
    at random; a masked token becomes a random code with p `random_share`, else [M] with p
    `mask_share`, else stays (BERT). labels: the code where masked, IGNORE elsewhere."""
    B, n = codes.shape
    device, mask_id, pad_id = codes.device, n_codes, n_codes + 1
    uniform = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    count = (valid.sum(1) * cosine_schedule(uniform(B))).round().clamp(min=1)         # (B,)
    order = uniform(B, n).masked_fill(~valid, 2.0).argsort(1).argsort(1)              # random rank, padding last
    masked = order < count[:, None]                                                   # (B, n)
    labels = codes.masked_fill(~masked, IGNORE)
    fate = uniform(B, n)
    to_random = masked & (fate < cfg.random_share)
    to_mask = masked & ~to_random & (fate < cfg.random_share + (1 - cfg.random_share) * cfg.mask_share)
    random_codes = torch.randint(0, n_codes, (B, n), generator=generator, device=device)
    inputs = torch.where(to_random, random_codes, codes).masked_fill(to_mask, mask_id)
    return inputs.masked_fill(~valid, pad_id), labels, masked


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (2): -log p(m_k | m^M, t) over the masked tokens (labels != IGNORE), averaged."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def loss_fn(model: MaskedTransformer, tokenizer, text, device):
    """loss_fn(batch) -> (loss, parts): the frozen motion tokenizer's codes of the batch, masked,
    predicted from the frozen text condition (zeroed for `cond_drop` of the clips)."""
    cfg = model.cfg

    def compute(batch):
        with torch.no_grad():
            _, codes, valid = tokenizer.tokenize(batch["motion"].to(device), batch["lengths"].to(device))
            cond = text.encode_cached(batch["caption"]).to(device)                   # (B, C)
        keep = torch.rand(len(cond), device=device) >= cfg.cond_drop                  # MoMask mask_cond
        inputs, labels, masked = mask_tokens(codes, valid, cfg, model.n_codes)
        logits = model(inputs, cond * keep[:, None], valid, causal=cfg.causal)       # (B, n, S)
        loss = masked_token_loss(logits, labels)
        accuracy = (logits.argmax(-1) == codes)[masked].float().mean()
        return loss, {"accuracy": accuracy.detach()}
    return compute


# ----------------------------------------------------------------------------
# Inference: guided, iterative decoding (MoMask Sec. 3.2; LaMP A.3.3: bidirectional)


def guided_logits(model: MaskedTransformer, ids, cond, valid, scale: float) -> torch.Tensor:
    """Classifier-free guidance: l(null) + s (l(c) - l(null)), both in one batch."""
    if scale == 1:
        return model(ids, cond, valid)
    both = model(ids.repeat(2, 1), torch.cat([cond, torch.zeros_like(cond)]), valid.repeat(2, 1))
    conditional, unconditional = both.chunk(2)
    return unconditional + scale * (conditional - unconditional)


def top_k_filter(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep the ceil((1 - threshold) S) largest logits of each row, -inf elsewhere (MoMask top_k)."""
    k = max(1, math.ceil((1 - threshold) * logits.shape[-1]))
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def gumbel_sample(logits: torch.Tensor, temperature: float, generator=None) -> torch.Tensor:
    """argmax(l / tau + g), g ~ Gumbel(0, 1): a draw from softmax(l / tau) (the Gumbel-max trick)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-20, 1 - 1e-7)
    return (logits / max(temperature, 1e-10) - torch.log(-torch.log(u))).argmax(-1)


@torch.no_grad()
def generate(model: MaskedTransformer, cond: torch.Tensor, n_tokens: torch.Tensor, generator=None,
             trace: list | None = None) -> torch.Tensor:
    """cond (B, C), n_tokens (B,) -> codes (B, n) ([PAD] past each n_b), in K iterations.

    Iteration k (t = k / (K - 1)): re-mask the round(gamma(t) n_b) (at least 1) least confident
    tokens among those predicted at k - 1 (all of them at k = 0), predict them with guidance,
    top-k filtering and Gumbel sampling; a token not re-masked is final. `trace` collects
    each iteration's re-masked positions (B, n)."""
    cfg, B = model.cfg, len(cond)
    n_tokens = n_tokens.to(cond.device).long()
    assert int(n_tokens.min()) >= 1, "every clip needs at least one motion token (4 frames)"
    n = int(n_tokens.max())
    valid = torch.arange(n, device=cond.device)[None, :] < n_tokens[:, None]       # (B, n)
    ids = torch.full((B, n), model.mask_id, device=cond.device).masked_fill(~valid, model.pad_id)
    scores = torch.zeros(B, n, device=cond.device).masked_fill(~valid, float("inf"))  # inf: never re-masked
    for k in range(cfg.iterations):
        t = torch.tensor(k / (cfg.iterations - 1))
        count = (cosine_schedule(t) * n_tokens).round().clamp(min=1)              # (B,)
        remask = scores.argsort(1).argsort(1) < count[:, None]                     # lowest confidence first
        ids = ids.masked_fill(remask, model.mask_id)
        logits = guided_logits(model, ids, cond, valid, cfg.guidance)              # (B, n, S)
        picked = gumbel_sample(top_k_filter(logits, cfg.top_k), cfg.temperature, generator)
        ids = torch.where(remask, picked, ids)
        confidence = logits.softmax(-1).gather(-1, picked[..., None])[..., 0]      # p without temperature
        scores = confidence.masked_fill(~remask, float("inf"))
        if trace is not None:
            trace.append(remask.clone())
    return ids


@torch.no_grad()
def generate_motion(model: MaskedTransformer, tokenizer, text, captions: list[str], lengths: torch.Tensor,
                    generator=None) -> torch.Tensor:
    """Captions and lengths (frames) -> normalised motion (B, max(lengths), D): the codes of
    `generate` for lengths // 4 tokens, decoded by the motion tokenizer (padding tokens as zero
    vectors); frames past 4 (lengths // 4) are zero."""
    device = model.position.device
    lengths = torch.as_tensor(lengths, device=device).long()
    n_tokens = lengths // tokenizer.down
    codes = generate(model, text.encode_cached(captions).to(device), n_tokens, generator)
    valid = torch.arange(codes.shape[1], device=device)[None, :] < n_tokens[:, None]
    motion = tokenizer.decode(codes, valid)                                         # (B, 4 n, D)
    T, frames = int(lengths.max()), n_tokens * tokenizer.down
    motion = F.pad(motion, (0, 0, 0, max(0, T - motion.shape[1])))[:, :T]
    return motion * (torch.arange(T, device=device)[None, :] < frames[:, None])[..., None]
