"""LaMP: language-motion pretraining (query transformer, four objectives, retrieval).

Paper: LaMP: Language-Motion Pretraining for Motion Generation, Retrieval, and Captioning
(Li et al., ICLR 2025, arXiv 2410.07093; ../shared/seeds/003_d88d83113f8fa35c.txt). Implements

    Sec. 3.1.2, A.3.2  the LaMP model: learnable query tokens; a motion transformer and a text
                       transformer (BERT, transformers' classes) sharing their self-attention
                       layers, the motion side cross-attending to the frozen motion encoder
                       (vqvae.py, Sec. 3.1.1)
    Sec. 3.1.3         the four objectives, each with its attention mask over [queries | text]:
                       motion-text contrastive (unimodal), motion-text matching (bidirectional,
                       hard negatives), motion-grounded text generation (causal) and
                       text-grounded motion generation, Eq. (1)
    Sec. 3.2, A.3.3    LaMP text features as the condition of a motion generator
                       (`LaMPTextEncoder`, a drop-in for clip.TextEncoder)
    Sec. 3.3, Tabs. 2-3, 5  retrieval and the LaMP evaluator (`LaMPEvaluator`, a drop-in for
                       t2m_evaluator.T2MEvaluator); Tab. 5's objectives added in turn (`ablation_rows`)

LaMP-T2M, the masked token generator of Sec. 3.2, is masked_generator.py (conditioned here);
LaMP-M2T, the captioner of Sec. 3.4, is captioner.py (over `LaMP.query_states`).

The attention masks (True = may attend) over the sequence [q_1 .. q_Q | t_1 .. t_L]:

    unimodal (contrastive)     bidirectional (matching)    causal (text generation)
          q    t                     q    t                      q    t
      q [ 1    0 ]               q [ 1    1 ]                q [ 1    0 ]
      t [ 0    1 ]               t [ 1    1 ]                t [ 1   tril ]

Text keys after the first end token (padding) are masked in every case. In text-grounded motion
generation the queries see no motion: they attend to each other causally (query i predicts code
b_i) and cross-attend to the text transformer's output. "LaMP code" below is the authors' release
(github.com/gentlefress/LaMP), which follows BLIP-2's Q-Former.

Notation (code -> paper):
    z, feats       m_{1:n}     motion encoder output (B, n, d), n = T / 4
    query_tokens   q           (Q, H) learnable queries
    f_m, f_t       f_m, f_t    normalised query features (B, Q, E) and text feature (B, E)
    motion_head    F           Eq. (1) classifier over the S codes

Differences from the paper:
- Text ids come from the project's CLIP tokenizer, not BERT's WordPiece; [ENC] and [DEC] ids are
  added above it (as BLIP). With `--bert` the BERT-base layers load, the word table is new.
- 49 queries (A.3.2), one per motion token of a 196-frame clip; the paper's "autoregressive" is
  read as a causal mask among them (the LaMP code attends bidirectionally).
- Eq. (1)'s queries read the text transformer's output (the paper); the LaMP code reads the text
  embedding layer. The diffusion condition is the mean over queries, no extra layer.
- The frozen motion features pass a LayerNorm and a learned position embedding before
  cross-attention (BLIP-2's ln_vision; the LaMP code: a projection only).
- BLIP-2's learned temperature; `init_std` is a field (tiny preset 0.1: narrow models learn faster).
- Constant-rate AdamW (loop.fit); the paper warms up to 2e-4 over 2,000 iterations (Sec. 4.1).
- Pairs with the same caption are not negatives of each other (the synthetic captions repeat).
- `LaMPEvaluator` L2-normalises its one vector per motion (MMdist in [0, 2]); the LaMP code's
  wrapper does not. Tab. 3 reports batches of 32 beside the whole split (TMR's protocol).
- Tab. 5's variants get retrieval rows only (the paper trains LaMP-T2M on each).

Glossary: B batch, T frames, D feature width, n motion tokens (T / 4), d code width, S codes,
Q queries, L text tokens, H transformer width, E embedding width, V vocabulary.
"""
import dataclasses
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import (BertAttention, BertIntermediate, BertOutput,
                                                    BertPredictionHeadTransform)

from data import collate
from vqvae import MotionVQVAE
from metrics import retrieval_recall

IGNORE = -100  # target index that F.cross_entropy skips


# ----------------------------------------------------------------------------
# Configuration


@dataclass
class LaMPConfig:
    # motion tokenizer (Sec. 3.1.1, A.3.1, which follows T2M-GPT)
    vq_codes: int = 512            # A.3.1: "512 512-dimensional codes" (S)
    vq_code_dim: int = 512         # A.3.1 (d)
    vq_width: int = 512            # T2M-GPT / MoMask encoder and decoder channels
    vq_depth: int = 3              # T2M-GPT: residual blocks per resolution
    vq_dilation_growth: int = 3    # T2M-GPT: dilations 9, 3, 1
    vq_down: int = 2               # A.3.1 "downscale factor of 4": two stride-2 convolutions
    vq_ema: float = 0.99           # A.3.1 lambda of the EMA codebook (T2M-GPT mu)
    vq_commit: float = 0.02        # Eq. (6) beta (T2M-GPT commit)
    vq_velocity: float = 0.5       # Eq. (7) alpha (T2M-GPT loss_vel)
    vq_reset_below: float = 1.0    # Code Reset: EMA usage count under which a code is dead (T2M-GPT)
    # LaMP transformer (Sec. 3.1.2, A.3.2): initialised from BERT-base
    hidden_size: int = 768         # BERT-base; A.3.2 "dimensionality of 768" (H)
    n_layers: int = 12             # BERT-base
    n_heads: int = 12              # BERT-base
    ff_dim: int = 3072             # BERT-base intermediate size
    max_positions: int = 512       # BERT-base position table (text needs 77)
    dropout: float = 0.1           # BERT-base hidden and attention dropout
    init_std: float = 0.02         # BERT-base initializer_range (~0.55 / sqrt(768): small for narrow models)
    n_queries: int = 49            # A.3.2 "sequence length of queries as 49" (BLIP-2: 32) (Q)
    cross_attention_every: int = 2  # BLIP-2 / LaMP code cross_attention_freq
    embed_dim: int = 512           # LaMP code text_proj / motion_proj width (BLIP-2: 256) (E)
    temperature: float = 0.07      # BLIP-2 initial contrastive temperature (learned)
    label_smoothing: float = 0.1   # BLIP-2 code (contrastive, LM); LaMP code (contrastive, Eq. 1)
    # the four objectives' weights (LaMP code: the plain sum). A weight of 0 removes the objective,
    # which is then not computed: Tab. 5's rows add them one at a time from contrastive alone
    lambda_mtc: float = 1.0        # motion-text contrastive
    lambda_mtm: float = 1.0        # motion-text matching (Tab. 5 "+ motion-text matching")
    lambda_mgt: float = 1.0        # motion-grounded text generation (Tab. 5 "+ motion-grounded text generation")
    lambda_tgm: float = 1.0        # text-grounded motion generation, Eq. (1) (Tab. 5 "+ text-grounded motion generation")
    AT_LEAST_ZERO: ClassVar = ("vq_commit", "vq_velocity", "vq_reset_below", "lambda_mtc", "lambda_mtm",
                               "lambda_mgt", "lambda_tgm")  # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("vq_ema", "dropout", "label_smoothing")


# ----------------------------------------------------------------------------
# Attention masks over [queries | text] (Sec. 3.1.3). True = the row may attend to the column.


def _query_columns(n_queries: int, text_valid: torch.Tensor):
    """(N,) True on query positions, and (B, N) True on keys that exist (queries, text up to
    its end token), N = Q + L."""
    B, L = text_valid.shape
    is_query = torch.arange(n_queries + L, device=text_valid.device) < n_queries
    keys = torch.cat([text_valid.new_ones(B, n_queries), text_valid], dim=1)
    return is_query, keys


def unimodal_mask(n_queries: int, text_valid: torch.Tensor) -> torch.Tensor:
    """Contrastive: queries see queries, text sees text (no leak between them). (B, N, N)."""
    is_query, keys = _query_columns(n_queries, text_valid)
    same_side = is_query[:, None] == is_query[None, :]                         # (N, N)
    return same_side[None] & keys[:, None, :]


def bidirectional_mask(n_queries: int, text_valid: torch.Tensor) -> torch.Tensor:
    """Matching: every position sees every query and every text token. (B, N, N)."""
    is_query, keys = _query_columns(n_queries, text_valid)
    N = len(is_query)
    return keys[:, None, :].expand(-1, N, N)


def causal_mask(n_queries: int, text_valid: torch.Tensor) -> torch.Tensor:
    """Text generation: queries see queries; text token j sees all queries and text tokens
    0..j (so it cannot read the words it has to predict). (B, N, N)."""
    is_query, keys = _query_columns(n_queries, text_valid)
    pos = torch.arange(len(is_query), device=text_valid.device)
    text_rule = is_query[None, :] | (pos[None, :] <= pos[:, None])             # (N, N)
    rule = torch.where(is_query[:, None], is_query[None, :].expand_as(text_rule), text_rule)
    return rule[None] & keys[:, None, :]


def autoregressive_query_mask(n_queries: int, batch: int, device=None) -> torch.Tensor:
    """Text-grounded motion generation: query i sees queries 0..i (no text in the sequence; the
    text arrives through cross-attention). (B, Q, Q)."""
    return torch.ones(n_queries, n_queries, dtype=torch.bool, device=device).tril().expand(batch, -1, -1)


def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean (B, rows, keys) -> the additive (B, 1, rows, keys) mask BERT's attention adds
    to its scores: 0 where attending is allowed, the most negative float elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min)[:, None]


# ----------------------------------------------------------------------------
# The LaMP model (Sec. 3.1.2, A.3.2): BLIP-2's Q-Former over motion


def _init_bert_style(module: nn.Module, std: float) -> None:
    """BERT's initialisation: Linear/Embedding weights N(0, std), biases 0, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def bert_config(cfg: LaMPConfig, vocab_size: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.n_layers,
                      num_attention_heads=cfg.n_heads, intermediate_size=cfg.ff_dim,
                      max_position_embeddings=cfg.max_positions, hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout, initializer_range=cfg.init_std,
                      pad_token_id=None)  # note: padding repeats the end token, whose embedding must train


class LaMP(nn.Module):
    """Queries and text in one BERT stack. Layer k, over x = [queries (B, Q, H) | text (B, L, H)]:

        h = SelfAttention_k(x, mask)           shared by the motion and the text transformer
        h_q = CrossAttention_k(h_q, memory)    queries only, every `cross_attention_every` layers
        x = [QueryFFN_k(h_q) | TextFFN_k(h_t)]

    The text transformer is a transformers BertModel (embeddings, self-attention, text FFN);
    the motion transformer adds the queries, the cross-attention and the query FFN (BERT
    classes too), as BLIP-2's Q-Former. `memory` is the motion encoder's output projected to H
    (or, for text-grounded motion generation, the text transformer's output).
    """

    def __init__(self, cfg: LaMPConfig, vocab_size: int, eot_id: int):
        super().__init__()
        assert cfg.max_positions >= 77, "the text holds the tokenizer's 77 positions"
        if not (cfg.lambda_mtc or cfg.lambda_mtm or cfg.lambda_mgt or cfg.lambda_tgm):
            raise ValueError("lamp: lambda_mtc, lambda_mtm, lambda_mgt and lambda_tgm are all 0: no objective to train")
        self.cfg, self.vocab_size, self.eot_id = cfg, vocab_size, eot_id
        # [ENC] and [DEC] replace the start token for matching and for generation
        self.enc_id, self.dec_id = vocab_size, vocab_size + 1
        config = bert_config(cfg, vocab_size + 2)
        H, std = cfg.hidden_size, config.initializer_range
        self.bert = BertModel(config, add_pooling_layer=False)                 # the text transformer
        self.query_tokens = nn.Parameter(torch.randn(cfg.n_queries, H) * std)  # q (Q, H)
        self.cross_attention = nn.ModuleDict({
            str(k): BertAttention(config, is_cross_attention=True)
            for k in range(cfg.n_layers) if k % cfg.cross_attention_every == 0})
        self.query_intermediate = nn.ModuleList([BertIntermediate(config) for _ in range(cfg.n_layers)])
        self.query_output = nn.ModuleList([BertOutput(config) for _ in range(cfg.n_layers)])
        self.motion_norm = nn.LayerNorm(cfg.vq_code_dim)     # BLIP-2's ln_vision on the frozen features
        self.motion_in = nn.Linear(cfg.vq_code_dim, H)       # motion features -> cross-attention width
        self.motion_pos = nn.Parameter(torch.randn(cfg.n_queries, H) * std)    # (Q, H), one per motion token
        self.text_in = nn.Linear(H, H)                       # text states -> cross-attention (Eq. 1 path)
        self.text_proj = nn.Linear(H, cfg.embed_dim)         # f_t
        self.motion_proj = nn.Linear(H, cfg.embed_dim)       # f_m
        self.match_head = nn.Linear(H, 2)                    # matched / unmatched
        self.lm_transform = BertPredictionHeadTransform(config)  # LM head, decoder tied to the word table
        self.lm_bias = nn.Parameter(torch.zeros(vocab_size + 2))
        self.motion_head = nn.Linear(H, cfg.vq_codes)        # F of Eq. (1)
        for part in (self.cross_attention, self.query_intermediate, self.query_output, self.motion_norm,
                     self.motion_in, self.text_in, self.text_proj, self.motion_proj, self.match_head,
                     self.lm_transform, self.motion_head):
            _init_bert_style(part, std)
        self.temp = nn.Parameter(torch.tensor(cfg.temperature))
        self.copy_text_ffn_to_queries()

    @torch.no_grad()
    def copy_text_ffn_to_queries(self) -> None:
        """BLIP-2 starts each query FFN as a copy of the text FFN of its layer."""
        for k, layer in enumerate(self.bert.encoder.layer):
            self.query_intermediate[k].load_state_dict(layer.intermediate.state_dict())
            self.query_output[k].load_state_dict(layer.output.state_dict())

    @classmethod
    def from_bert(cls, folder, cfg: LaMPConfig, vocab_size: int, eot_id: int, log=print) -> "LaMP":
        """LaMP initialised from a local BERT checkpoint (A.3.2: BERT-base): embeddings (but the
        word table), self-attention and FFN of every layer; the transformer sizes are the
        checkpoint's. Cross-attention, queries and heads start random (as BLIP-2)."""
        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"--bert {folder}: expected a BERT folder with config.json and weights "
                                    "(save_pretrained layout); nothing is downloaded")
        ref = BertConfig.from_pretrained(folder)
        cfg = dataclasses.replace(cfg, hidden_size=ref.hidden_size, n_layers=ref.num_hidden_layers,
                                  n_heads=ref.num_attention_heads, ff_dim=ref.intermediate_size,
                                  max_positions=ref.max_position_embeddings, init_std=ref.initializer_range)
        log(f"[lamp] text transformer from {folder}: {cfg.n_layers} layers of width {cfg.hidden_size}; "
            f"new word table for the project's {vocab_size} + 2 ids")
        model = cls(cfg, vocab_size, eot_id)
        pretrained = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
        state = {k: v for k, v in pretrained.state_dict().items() if k != "embeddings.word_embeddings.weight"}
        missing, unexpected = model.bert.load_state_dict(state, strict=False)
        assert missing == ["embeddings.word_embeddings.weight"] and not unexpected, (missing, unexpected)
        model.copy_text_ffn_to_queries()
        return model

    # --- the shared stack

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> word + position embeddings, LayerNorm, dropout (B, L, H)."""
        assert int(ids.max()) < self.vocab_size + 2, "an id is outside LaMP's vocabulary (tokenizer changed?)"
        return self.bert.embeddings(input_ids=ids)

    def embed_queries(self, batch: int) -> torch.Tensor:
        """q through the embeddings' LayerNorm and dropout, as BLIP-2: (B, Q, H)."""
        emb = self.bert.embeddings
        return emb.dropout(emb.LayerNorm(self.query_tokens).expand(batch, -1, -1))

    def motion_memory(self, feats: torch.Tensor) -> torch.Tensor:
        """Motion encoder output (B, n, d) -> cross-attention memory (B, n, H)."""
        n = feats.shape[1]
        assert n <= self.cfg.n_queries, (f"{n} motion tokens but {self.cfg.n_queries} queries/positions: "
                                         f"clips may be at most {4 * self.cfg.n_queries} frames")
        return self.motion_in(self.motion_norm(feats)) + self.motion_pos[:n]

    def run_layers(self, queries, text, mask, memory=None, memory_valid=None):
        """queries (B, Q, H), text (B, L, H), mask (B, Q+L, Q+L) bool, memory (B, M, H) with
        memory_valid (B, M) -> (query states (B, Q, H), text states (B, L, H))."""
        B, Q, _ = queries.shape
        x = torch.cat([queries, text], dim=1)                                  # (B, Q+L, H)
        assert mask.shape == (B, x.shape[1], x.shape[1]), f"mask {tuple(mask.shape)} for {x.shape[1]} positions"
        self_mask = extended_mask(mask, x.dtype)                               # (B, 1, Q+L, Q+L)
        cross_mask = None if memory is None else extended_mask(memory_valid[:, None, :], x.dtype)  # (B, 1, 1, M)
        for k, layer in enumerate(self.bert.encoder.layer):
            h, _ = layer.attention(x, attention_mask=self_mask)                # shared self-attention
            h_q, h_t = h[:, :Q], h[:, Q:]
            if memory is not None and str(k) in self.cross_attention:
                h_q, _ = self.cross_attention[str(k)](h_q, None, memory, cross_mask)  # (B, Q, H)
            h_q = self.query_output[k](self.query_intermediate[k](h_q), h_q)   # query FFN
            h_t = layer.output(layer.intermediate(h_t), h_t)                   # text FFN
            x = torch.cat([h_q, h_t], dim=1)
        return x[:, :Q], x[:, Q:]

    # --- text handling

    def text_valid(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) True up to and including the first end token (clip_tokenizer.Tokenizer pads with it)."""
        is_end = ids == self.eot_id
        assert bool(is_end.any(1).all()), f"every row of ids needs the end token {self.eot_id}"
        return torch.arange(ids.shape[1], device=ids.device)[None, :] <= is_end.int().argmax(1)[:, None]

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """Cut (B, 77) ids after the batch's last first-end-token: the masks hide what follows,
        so the result is the same for less work."""
        return ids[:, : int(self.text_valid(ids).sum(1).max())]

    def _text_only(self, ids: torch.Tensor) -> torch.Tensor:
        """The text transformer alone (no queries): (B, L, H)."""
        empty = self.query_tokens.new_zeros(len(ids), 0, self.cfg.hidden_size)
        return self.run_layers(empty, self.embed_text(ids), unimodal_mask(0, self.text_valid(ids)))[1]

    def _text_grounded_queries(self, text_states: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        """Queries (causal among themselves) cross-attending to the text: g (B, Q, H)."""
        B = len(text_states)
        empty = text_states.new_zeros(B, 0, self.cfg.hidden_size)
        mask = autoregressive_query_mask(self.cfg.n_queries, B, text_states.device)
        return self.run_layers(self.embed_queries(B), empty, mask, self.text_in(text_states), text_valid)[0]

    # --- features (retrieval, evaluator, diffusion condition)

    def text_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """f_t: the start token's state, projected and L2-normalised (B, E)."""
        ids = self.trim(ids)
        return F.normalize(self.text_proj(self._text_only(ids)[:, 0]), dim=-1)

    def query_states(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The queries after attending to the motion (B, Q, H): the captioner's soft prompt (Sec. 3.4)."""
        B = len(feats)
        empty = feats.new_zeros(B, 0, self.cfg.hidden_size)
        mask = unimodal_mask(self.cfg.n_queries, valid.new_ones(B, 0))
        return self.run_layers(self.embed_queries(B), empty, mask, self.motion_memory(feats), valid)[0]

    def query_features(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """f_m: the query states, projected, normalised (B, Q, E)."""
        return F.normalize(self.motion_proj(self.query_states(feats, valid)), dim=-1)

    def motion_embedding(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One vector per motion: the normalised mean of f_m over the queries (B, E)."""
        return F.normalize(self.query_features(feats, valid).mean(1), dim=-1)

    def text_feature(self, ids: torch.Tensor) -> torch.Tensor:
        """The text transformer's start-token state, unprojected (B, H): Tab. 6's "+ LaMP" condition."""
        return self._text_only(self.trim(ids))[:, 0]

    def text_condition(self, ids: torch.Tensor) -> torch.Tensor:
        """The condition for a motion generator (A.3.3): mean over the queries of the
        text-grounded query states (B, H)."""
        ids = self.trim(ids)
        return self._text_grounded_queries(self._text_only(ids), self.text_valid(ids)).mean(1)

    # --- the four objectives (Sec. 3.1.3)

    def loss(self, feats: torch.Tensor, motion_valid: torch.Tensor, ids: torch.Tensor, codes: torch.Tensor):
        """feats (B, n, d) from the frozen motion encoder, motion_valid (B, n), ids (B, 77) of the
        captions, codes (B, n) their VQ indices -> (weighted sum of the four losses, parts). An
        objective whose weight (lambda_*) is 0 is not computed and is absent from parts (Tab. 5)."""
        B, Q, cfg = len(feats), self.cfg.n_queries, self.cfg
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)  # BLIP-2 keeps the learned temperature in range
        ids = self.trim(ids)
        valid = self.text_valid(ids)                                           # (B, L)
        same = (ids[:, None, :] == ids[None, :, :]).all(-1)                    # (B, B) identical captions
        memory, queries = self.motion_memory(feats), self.embed_queries(B)
        eps, parts = cfg.label_smoothing, {}

        # 1. contrastive: [queries | text] with the unimodal mask (its similarities pick the
        #    matching's hard negatives, its text states feed step 4: it always runs)
        q, t = self.run_layers(queries, self.embed_text(ids), unimodal_mask(Q, valid), memory, motion_valid)
        f_m = F.normalize(self.motion_proj(q), dim=-1)                         # (B, Q, E)
        f_t = F.normalize(self.text_proj(t[:, 0]), dim=-1)                     # (B, E)
        logits = query_text_similarity(f_m, f_t) / self.temp                   # (B motions, B texts)
        if cfg.lambda_mtc:
            parts["mtc"] = contrastive_loss(logits, same, eps)

        # 2. matching: (motion, text), (hard negative motion, text), (motion, hard negative text)
        if cfg.lambda_mtm:
            neg_motion, neg_text = sample_hard_negatives(logits.detach(), same)
            enc = ids.clone()
            enc[:, 0] = self.enc_id
            ids3, valid3 = torch.cat([enc, enc, enc[neg_text]]), torch.cat([valid, valid, valid[neg_text]])
            memory3 = torch.cat([memory, memory[neg_motion], memory])
            motion_valid3 = torch.cat([motion_valid, motion_valid[neg_motion], motion_valid])
            q3, _ = self.run_layers(self.embed_queries(3 * B), self.embed_text(ids3),
                                    bidirectional_mask(Q, valid3), memory3, motion_valid3)
            parts["mtm"] = matching_loss(self.match_head(q3).mean(1))          # logits averaged over queries

        # 3. motion-grounded text generation: [queries | [DEC] text] with the causal mask
        if cfg.lambda_mgt:
            dec = ids.clone()
            dec[:, 0] = self.dec_id
            _, t_dec = self.run_layers(queries, self.embed_text(dec), causal_mask(Q, valid), memory, motion_valid)
            word_table = self.bert.embeddings.word_embeddings.weight          # (V, H), tied decoder
            lm_logits = F.linear(self.lm_transform(t_dec), word_table, self.lm_bias)  # (B, L, V)
            parts["mgt"] = text_generation_loss(lm_logits, ids, valid, eps)

        # 4. text-grounded motion generation, Eq. (1): queries read the text transformer's output
        if cfg.lambda_tgm:
            g = self._text_grounded_queries(t, valid)                          # (B, Q, H)
            parts["tgm"] = motion_generation_loss(self.motion_head(g), codes, motion_valid, eps)

        weights = {"mtc": cfg.lambda_mtc, "mtm": cfg.lambda_mtm, "mgt": cfg.lambda_mgt, "tgm": cfg.lambda_tgm}
        total = sum(weights[k] * loss for k, loss in parts.items())  # LaMP code: the plain sum (weights 1)
        return total, {**{k: v.detach() for k, v in parts.items()}, "temp": self.temp.detach()}


# ----------------------------------------------------------------------------
# The losses as plain functions


def query_text_similarity(f_m: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """sim[i, j] = max_q <f_m[i, q], f_t[j]>: the best of motion i's queries for text j (B, B)."""
    assert f_m.dim() == 3 and f_t.dim() == 2 and f_m.shape[-1] == f_t.shape[-1], \
        f"expected f_m (B, Q, E) and f_t (B, E), got {tuple(f_m.shape)}, {tuple(f_t.shape)}"
    return (f_m @ f_t.T).max(dim=1).values                                     # (B, Q, B) -> (B, B)


def smoothed_cross_entropy(logits: torch.Tensor, allowed: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy of rows of logits (N, N) with target i for row i, against
    (1 - eps) onehot_i + eps uniform over the allowed columns; disallowed columns are out of
    the softmax. With every column allowed this is F.cross_entropy(label_smoothing=eps)."""
    N = len(logits)
    logp = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)  # (N, N)
    uniform = allowed / allowed.sum(1, keepdim=True)                           # (N, N)
    target = (1 - smoothing) * torch.eye(N, device=logits.device) + smoothing * uniform
    return -(target * logp.masked_fill(~allowed, 0.0)).sum(1).mean()


def contrastive_loss(logits: torch.Tensor, same: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Motion-text contrastive loss on logits[i, j] = sim(motion i, text j) / temperature:

        L = 1/2 [ CE(row i of logits, i) + CE(column j of logits, j) ]

    Pairs with identical captions (same[i, j], off the diagonal) are not negatives."""
    B = len(logits)
    assert logits.shape == same.shape == (B, B), f"expected (B, B) logits and mask, got {tuple(logits.shape)}"
    allowed = ~same | torch.eye(B, dtype=torch.bool, device=logits.device)
    m2t = smoothed_cross_entropy(logits, allowed, smoothing)                   # each motion picks its text
    t2m = smoothed_cross_entropy(logits.T, allowed.T, smoothing)               # each text picks its motion
    return 0.5 * (m2t + t2m)


def similarity_recall(sim: torch.Tensor, ks=(1, 2, 3, 5, 10)) -> dict[str, float]:
    """Retrieval recall from a similarity matrix sim[i, j] = sim(motion i, text j), pairs on the
    diagonal (LaMP Tab. 3 with the best-query similarity, which no single vector represents).
    Same keys and tie rule as metrics.retrieval_recall: "T2M R@k" is the share of texts whose
    motion is among their k most similar motions, "M2T R@k" the converse."""
    N = len(sim)
    assert sim.shape == (N, N), f"expected a square (motions, texts) matrix, got {tuple(sim.shape)}"
    true = sim.diagonal()                                                      # (N,)
    rank_t2m = (sim > true[None, :]).sum(0)                                    # motions beating text j's own
    rank_m2t = (sim > true[:, None]).sum(1)                                    # texts beating motion i's own
    out = {f"T2M R@{k}": float((rank_t2m < k).float().mean()) for k in ks}
    out.update({f"M2T R@{k}": float((rank_m2t < k).float().mean()) for k in ks})
    return out


def sample_hard_negatives(logits: torch.Tensor, same: torch.Tensor, generator: torch.Generator | None = None):
    """BLIP-2's hard negatives for matching, from logits[i, j] = sim(motion i, text j) / temp:
    for each text j a motion drawn with probability softmax_i(logits[i, j]) over i != j, for
    each motion i a text drawn with softmax_j(logits[i, j]) over j != i. Pairs with identical
    captions are never drawn (unless a row has nothing else). -> (neg_motion (B,), neg_text (B,))."""
    B = len(logits)
    assert B >= 2, "hard negatives need a batch of at least two pairs"
    eye = torch.eye(B, dtype=torch.bool, device=logits.device)
    allowed = ~same & ~eye
    allowed = torch.where(allowed.any(1, keepdim=True), allowed, ~eye)         # a row of duplicates
    allowed_t = torch.where(allowed.T.any(1, keepdim=True), allowed.T, ~eye)
    text_weights = F.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)       # (B motions, B texts)
    motion_weights = F.softmax(logits.T.masked_fill(~allowed_t, float("-inf")), dim=1)  # (B texts, B motions)
    neg_text = torch.multinomial(text_weights, 1, generator=generator)[:, 0]
    neg_motion = torch.multinomial(motion_weights, 1, generator=generator)[:, 0]
    return neg_motion, neg_text


def matching_loss(logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over (3B, 2) logits ordered [B matched | 2B unmatched] pairs
    (class 1 = matched)."""
    assert logits.dim() == 2 and logits.shape[1] == 2 and len(logits) % 3 == 0, \
        f"expected (3B, 2) logits, got {tuple(logits.shape)}"
    B = len(logits) // 3
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
    return F.cross_entropy(logits, labels)


def text_generation_loss(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor,
                         smoothing: float) -> torch.Tensor:
    """Motion-grounded text generation: position j predicts token j + 1, for every token up to
    and including the end token; mean cross-entropy over those targets."""
    B, L, V = logits.shape
    assert ids.shape == valid.shape == (B, L), f"ids and valid must be (B, L) = ({B}, {L})"
    targets = ids[:, 1:].masked_fill(~valid[:, 1:], IGNORE)                    # (B, L-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=smoothing)


def motion_generation_loss(logits: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor,
                           smoothing: float) -> torch.Tensor:
    """Eq. (1): L_tgm = sum_i CE(F(g_i), b_i), query i against code i, as a mean over the valid
    codes of the batch (LaMP code: CrossEntropyLoss mean). logits (B, Q, S), codes (B, n)."""
    B, Q, S = logits.shape
    n = codes.shape[1]
    assert n <= Q and valid.shape == codes.shape, f"{n} codes for {Q} queries, valid {tuple(valid.shape)}"
    targets = codes.new_full((B, Q), IGNORE)
    targets[:, :n] = codes.masked_fill(~valid, IGNORE)
    # Eq. (1): Cross-Entropy(F(g_i), b_i)
    return F.cross_entropy(logits.reshape(-1, S), targets.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=smoothing)


# ----------------------------------------------------------------------------
# LaMP in the rest of the project


class LaMPTextEncoder(nn.Module):
    """`--text-encoder lamp` (Sec. 3.2): the interface the diffusion stage uses of
    clip.TextEncoder - `encode_cached(texts) -> (B, D)`, `.dim`, `.tokenizer` - with D = H and
    the condition of `LaMP.text_condition` (queries=False: `LaMP.text_feature`). Frozen."""

    def __init__(self, model: LaMP, tokenizer, queries: bool = True):
        super().__init__()
        if len(tokenizer) != model.vocab_size:
            raise ValueError(f"LaMP was trained on {model.vocab_size} token ids, the tokenizer has "
                             f"{len(tokenizer)}: use the tokenizer of the run that trained it")
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.features = model.text_condition if queries else model.text_feature
        self.cache: dict[str, torch.Tensor] = {}  # caption -> condition (H,)

    @property
    def dim(self) -> int:
        return self.model.cfg.hidden_size

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    def train(self, mode: bool = True) -> "LaMPTextEncoder":
        return super().train(False)  # note: stays in eval mode (no dropout): it is frozen

    @torch.no_grad()
    def encode_cached(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(B,) captions -> (B, H); each distinct caption is encoded once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            self.cache.update(zip(chunk, self.features(self.tokenizer(chunk).to(self.device))))
        return torch.stack([self.cache[t] for t in texts]).to(self.device)


class LaMPEvaluator(nn.Module):
    """`--evaluator lamp` (Tab. 2) and LaMP retrieval (Tab. 3): the interface of
    the evaluator (t2m_evaluator.T2MEvaluator) over the frozen VQ encoder and LaMP, with
    `tokenizer` the CLIP tokenizer LaMP was trained with. Embeddings are L2-normalised, so
    Euclidean ranking is LaMP's cosine ranking."""

    def __init__(self, vq: MotionVQVAE, model: LaMP, tokenizer=None):
        super().__init__()
        self.vq, self.model = vq.requires_grad_(False).eval(), model.requires_grad_(False).eval()
        self.tokenizer = tokenizer

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, 77) from clip_tokenizer.Tokenizer -> (B, E)."""
        return self.model.text_embedding(ids.to(self.model.query_tokens.device))

    def encode_motion(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """motion (B, T, D) normalised, lengths (B,) -> (B, E)."""
        z, valid = self.vq.encode(motion, lengths)
        return self.model.motion_embedding(z, valid)

    def query_features(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """f_m of every query, for the best-query similarity of Sec. 3.1.3: (B, Q, E)."""
        z, valid = self.vq.encode(motion, lengths)
        return self.model.query_features(z, valid)


# ----------------------------------------------------------------------------
# Experiment protocol: the two training stages' losses, the codebook on held-out motions,
# retrieval (Tab. 3)


def lamp_loss_fn(model: "LaMP", vq: MotionVQVAE, tokenizer, device):
    """loss_fn(batch) -> (loss, parts) of LaMP's four objectives (Sec. 3.1.3) over the frozen
    tokenizer's motion features and codes."""
    def loss_fn(batch):
        with torch.no_grad():
            z, codes, valid = vq.tokenize(batch["motion"].to(device), batch["lengths"].to(device))
        return model.loss(z, valid, tokenizer(batch["caption"]).to(device), codes)
    return loss_fn


@torch.no_grad()
def retrieval_rows(lamp_embedder: "LaMPEvaluator", evaluator, dataset, tokenizer, device,
                   batch_size: int = 64) -> dict:
    """LaMP Tab. 3: both models encode the same batches (one random caption per clip), then
    text-to-motion and motion-to-text R@1, 2, 3, 5, 10 over the whole split; LaMP both with its
    training similarity (the best query, Sec. 3.1.3) and with one vector per motion (what
    `--evaluator lamp` uses)."""
    feats = {"text": [], "queries": [], "lamp_text": [], "motion": []}
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        ids = tokenizer(batch["caption"]).to(device)                              # (B, 77)
        motion, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        feats["lamp_text"].append(lamp_embedder.encode_text(ids))                 # (B, E)
        feats["queries"].append(lamp_embedder.query_features(motion, lengths))    # (B, Q, E)
        feats["text"].append(evaluator.encode_text(evaluator.tokenizer(batch["caption"]).to(device)))  # (B, E')
        feats["motion"].append(evaluator.encode_motion(motion, lengths))          # (B, E')
    feats = {k: torch.cat(v) for k, v in feats.items()}
    mean_query = torch.nn.functional.normalize(feats["queries"].mean(1), dim=-1)  # = LaMPEvaluator.encode_motion
    rows = {}
    for protocol, span in (("whole split", len(dataset)), ("batches of 32", 32)):
        # TMR's protocols: rank against the whole test split, or within consecutive batches of 32
        # (the last, partial batch dropped); recall averaged over the batches
        parts = [slice(s, s + span) for s in range(0, len(dataset) - span + 1, span)]
        recalls = {
            "LaMP (best query)": [similarity_recall(query_text_similarity(feats["queries"][b], feats["lamp_text"][b]))
                                  for b in parts],
            "LaMP (mean of queries)": [retrieval_recall(feats["lamp_text"][b], mean_query[b]) for b in parts],
            "evaluator": [retrieval_recall(feats["text"][b], feats["motion"][b]) for b in parts],
        }
        for name, per_batch in recalls.items():
            rows[f"{name}, {protocol}"] = {k: (sum(r[k] for r in per_batch) / len(per_batch), 0.0) for k in per_batch[0]}
    return rows



def ablation_rows(full: dict, variants: dict[str, dict]) -> dict:
    """Tab. 5's rows in the Tab. 3 table: `full` from retrieval_rows of the full model, `variants`
    {Tab. 5 row: retrieval_rows of LaMP trained with fewer objectives}, in Tab. 5's order (one
    objective added per row). Protocol by protocol, each variant's LaMP rows (renamed after its
    Tab. 5 row), then the full model's rows ("+ text-grounded motion generation") and the evaluator's."""
    protocols = dict.fromkeys(name.rsplit(", ", 1)[1] for name in full)   # "whole split", "batches of 32"
    rows = {}
    for protocol in protocols:
        for label, table in variants.items():
            rows.update({name.replace("LaMP", label, 1): row for name, row in table.items()
                         if name.startswith("LaMP") and name.endswith(f", {protocol}")})
        rows.update({name: row for name, row in full.items() if name.endswith(f", {protocol}")})
    return rows


ABLATION_NOTE = ("Tab. 5 rows (--ablations): LaMP retrained from the same initialisation on the same batches with "
                 "the contrastive objective alone, then adding motion-text matching, then motion-grounded text "
                 "generation; the LaMP rows have all four (Tab. 5's '+ text-grounded motion generation'). The paper's "
                 "Tab. 5 scores LaMP-T2M's generations, not retrieval.")


def retrieval_note(n_clips: int, source: str, usage: dict, n_codes: int) -> str:
    return (f"{n_clips} test clips of {source}, one caption each, ranked against the whole split or within "
            f"consecutive batches of 32 (TMR's protocols (a) and (d)). The paper says only 'a test set of TMR'; "
            f"its TMR row (R@1 67.16) is TMR's batch-of-32 figure and its T2M row is Guo et al.'s pools of 32, "
            f"so its Tab. 3 uses batches of 32. Recall as a fraction (the paper: %). LaMP ranks by cosine (best "
            f"query: max over its queries), the evaluator by Euclidean distance. Codebook: "
            f"{100 * usage['used']:.1f}% of {n_codes} codes used on val, perplexity {usage['perplexity']:.1f}.")
