"""LaMP-M2T: motion captioning with a frozen language model behind LaMP's query tokens.

Paper: LaMP (Li et al., ICLR 2025, arXiv 2410.07093; ../shared/seeds/003_d88d83113f8fa35c.txt)
Sec. 3.4 and Tab. 4, with the facts the paper leaves out taken from its code (github.com/
gentlefress/LaMP, models/m2t/m2t_trans.py, as BLIP-2's OPT captioner). Implements

    h = LaMP.query_states(E(x))                 queries after the frozen motion encoder (B, Q, H)
    p = opt_proj(h)                             "a fully connected layer" to the LM width (B, Q, W)
    [p_1 .. p_Q | s w_1 .. w_k e]               soft prompt, then the caption framed by a start
                                                token s and an end token e (OPT: "\\n")
    L = -mean_j log p_LM(w_j | p, s, w_<j)      causal LM loss over the batch's caption tokens
                                                (w_{k+1} = e); -100 (no target) on p, s, padding
    W x + b + (alpha / r) B A dropout(x)         LoRA (Hu et al. 2021) on q_proj and v_proj; the
                                                LM is otherwise frozen
    beam search, 5 beams, from [p | s] to e      decoding (the LaMP code: HF generate)

Trained: LaMP's queries and the layers they pass through (the LaMP code trains its Q-Former with
the captioner; only the motion encoder is frozen), opt_proj and LoRA's A, B. The Tab. 4 analogue
(`caption_rows`, `caption_retrieval`) scores captions of the test motions beside a retrieval
baseline (the caption of the nearest training motion in LaMP's space) and a human ceiling (one
annotator's caption against the others').

Differences from the paper:
- The offline default LM is a small OPT (`offline_lm`) over the project's CLIP BPE ids, first
  pretrained as a language model on the training captions (`lm_loss_fn`); OPT-2.7B loads with
  `load_lm(folder)`. The CLIP BPE has no "\\n" token: there a caption ends with its end token.
- No "a man is" after the soft prompt at inference (the LaMP code adds it; training never saw it).
  The start token is given, not predicted (the LaMP code also predicts OPT's BOS, a constant).
- A caption longer than `max_tokens` keeps its end token (the LaMP code cuts it with the text).
- LaMP's text-only parts (word and position tables, text FFNs, heads, temperature) are frozen:
  the soft prompt never reaches them. Captioner trains a copy of LaMP; the run's LaMP is untouched.
- Beam search ranks by the summed log-probability divided by the generated length, end token
  included (HF's length_penalty 1.0); finished captions stay in the beam and compete with the
  running ones (HF keeps beams running beside a list of finished ones).
- BERTScore with LaMP's own text transformer (`lamp_bert_scorer`), not roberta-large, and without
  baseline rescaling: the numbers compare rows of one run, never the paper's.

Glossary: B batch, T frames, D feature width, n motion tokens (T / 4), Q queries, H LaMP width,
W LM width, L caption tokens, V LM vocabulary, K beams, r LoRA rank.
"""
import copy
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoTokenizer, DynamicCache, OPTConfig, OPTForCausalLM

import caption_metrics
from data import collate
from metrics import matching_score, r_precision

IGNORE = -100  # label that the LM's cross-entropy skips: soft prompt, start token, padding
LORA_TARGETS = ("q_proj", "v_proj")  # peft's default for OPT, which the LaMP code uses
# note: transformers 5.25 renamed the LM's past_key_values argument to cache (the old name warns)
CACHE_ARG = "cache" if "cache" in inspect.signature(OPTForCausalLM.forward).parameters else "past_key_values"


# ----------------------------------------------------------------------------
# Configuration


@dataclass
class CaptionerConfig:
    lora_rank: int = 16            # LaMP code LoraConfig r (r)
    lora_alpha: float = 32.0       # LaMP code lora_alpha: the update is scaled by alpha / r = 2
    lora_dropout: float = 0.05     # LaMP code lora_dropout (bias "none": biases stay frozen)
    max_tokens: int = 32           # LaMP code max_length: a caption with its start and end tokens
    beams: int = 5                 # LaMP code num_beams
    # the offline LM (`offline_lm`); the defaults are OPT-2.7B's shape (Sec. 3.4), the tiny preset shrinks it
    lm_width: int = 2560           # OPT-2.7B hidden_size (W)
    lm_layers: int = 32            # OPT-2.7B num_hidden_layers
    lm_heads: int = 32             # OPT-2.7B num_attention_heads
    lm_ff: int = 10240             # OPT-2.7B ffn_dim
    lm_positions: int = 2048       # OPT max_position_embeddings (Q + max_tokens are needed)
    lm_dropout: float = 0.1        # OPT dropout
    AT_LEAST_ZERO: ClassVar = ()   # ranges: config.check_ranges
    FRACTIONS: ClassVar = ("lora_dropout", "lm_dropout")

    def __post_init__(self):
        if self.max_tokens < 3:
            raise ValueError(f"lamp_m2t.max_tokens={self.max_tokens}: a caption needs a start token, a word and "
                             "an end token")
        if self.lm_width % self.lm_heads:
            raise ValueError(f"lamp_m2t.lm_width={self.lm_width} must be a multiple of "
                             f"lamp_m2t.lm_heads={self.lm_heads}")


# ----------------------------------------------------------------------------
# LoRA (Hu et al. 2021, Eq. 3), as peft's Linear: the LaMP code's get_peft_model


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) B(A(dropout(x))), W and b frozen. A starts kaiming-uniform
    (a = sqrt(5), peft), B at zero: at initialisation y is the frozen layer's output."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Linear(base.in_features, r, bias=False)                    # (r, in)
        self.B = nn.Linear(r, base.out_features, bias=False)                   # (out, r)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)
        self.dropout = nn.Dropout(dropout)
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        # note: A and B stay float32 beside an fp16 LM (peft does the same cast)
        update = self.B(self.A(self.dropout(x.to(self.A.weight.dtype))))
        return y + (self.scale * update).to(y.dtype)


def add_lora(model: nn.Module, targets=LORA_TARGETS, r: int = 16, alpha: float = 32.0,
             dropout: float = 0.05) -> list[str]:
    """Freeze `model` and replace, in place, every nn.Linear whose name ends with one of
    `targets` by a LoRALinear around it. Returns the wrapped modules' names."""
    model.requires_grad_(False)
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not names:
        raise ValueError(f"no nn.Linear named {' or '.join(targets)} in {type(model).__name__}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return names


# ----------------------------------------------------------------------------
# Caption tokens: one interface over the project's CLIP BPE and a Hugging Face tokenizer


class CaptionText:
    """Captions <-> LM ids: [start] text ids [end]. Subclasses set start_id, end_id, vocab_size
    and implement text_ids(caption) and decode(ids)."""
    start_id: int
    end_id: int
    vocab_size: int

    def frame(self, captions: list[str], max_tokens: int):
        """(B,) captions -> ids (B, L) [start] text [end] padded with the end token, valid (B, L)
        True up to the end token; L <= max_tokens. note: the text is cut, the end token stays."""
        rows = [[self.start_id, *self.text_ids(c)[: max_tokens - 2], self.end_id] for c in captions]
        L = max(len(row) for row in rows)
        ids = torch.full((len(rows), L), self.end_id, dtype=torch.long)      # (B, L)
        valid = torch.zeros(len(rows), L, dtype=torch.bool)                   # (B, L)
        for b, row in enumerate(rows):
            ids[b, :len(row)], valid[b, :len(row)] = torch.tensor(row), True
        return ids, valid


class ClipCaptionText(CaptionText):
    """The project's CLIP BPE (clip_tokenizer.Tokenizer): start = <|startoftext|>, end =
    <|endoftext|> (its vocabulary has no "\\n")."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.start_id, self.end_id, self.vocab_size = tokenizer.sot_id, tokenizer.eot_id, len(tokenizer)

    def text_ids(self, caption: str) -> list[int]:
        return self.tokenizer.encode(caption)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)


class HFCaptionText(CaptionText):
    """A Hugging Face tokenizer (OPT's GPT-2 BPE): start = its BOS token, end = the token of "\\n"
    (the LaMP code's eos_token_id)."""

    def __init__(self, tokenizer):
        newline = tokenizer("\n", add_special_tokens=False).input_ids
        if len(newline) != 1:
            raise ValueError(f"the tokenizer writes '\\n' as {len(newline)} tokens {newline}; the captioner "
                             "ends a caption with one token (OPT: 50118)")
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no BOS token to start a caption with (OPT: </s>)")
        self.tokenizer = tokenizer
        self.start_id, self.end_id, self.vocab_size = tokenizer.bos_token_id, newline[0], len(tokenizer)

    def text_ids(self, caption: str) -> list[int]:
        return self.tokenizer(caption.strip(), add_special_tokens=False).input_ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------
# The language model: offline (small OPT pretrained on the captions) or OPT-2.7B from a folder


def offline_lm(tokenizer, cfg: CaptionerConfig):
    """A random OPT of cfg's lm_* sizes over the CLIP BPE ids -> (OPTForCausalLM, ClipCaptionText).
    Pretrain it on the captions with `lm_loss_fn` before the captioner uses it."""
    text = ClipCaptionText(tokenizer)
    config = OPTConfig(vocab_size=text.vocab_size, hidden_size=cfg.lm_width, num_hidden_layers=cfg.lm_layers,
                       num_attention_heads=cfg.lm_heads, ffn_dim=cfg.lm_ff, word_embed_proj_dim=cfg.lm_width,
                       max_position_embeddings=cfg.lm_positions, dropout=cfg.lm_dropout,
                       bos_token_id=text.start_id, eos_token_id=text.end_id,
                       pad_token_id=None)  # note: padding repeats the end token, whose embedding must train
    return OPTForCausalLM(config), text


def offline_lm_parameters(cfg: CaptionerConfig, vocab_size: int = 49_408) -> int:
    """The parameters of `offline_lm(cfg)` (vocab_size: the BPE's, CLIP's 49,408 by default)."""
    W, F_, L = cfg.lm_width, cfg.lm_ff, cfg.lm_layers
    layer = 4 * (W * W + W) + (W * F_ + F_) + (F_ * W + W) + 2 * 2 * W   # q k v out, fc1, fc2, two LayerNorms
    return L * layer + (vocab_size + cfg.lm_positions + 2) * W + 2 * W  # tied token table, positions, final norm


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on `device`: a CUDA card's, else the machine's RAM (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return None


def check_offline_lm_fits(cfg: CaptionerConfig, device: torch.device, available: int | None = None) -> None:
    """Refuse, before any work, an offline LM whose pretraining cannot fit: its fp32 weights, gradients
    and AdamW's two moments (16 bytes a parameter, activations not counted) against `available`
    bytes (default: device_memory). The paper preset's sizes are OPT-2.7B's: about 42 GB."""
    available = device_memory(device) if available is None else available
    need = 16 * offline_lm_parameters(cfg)
    if available is not None and need > available:
        raise ValueError(
            f"lamp_m2t: without --llm the captioner's LM is pretrained here from scratch at lamp_m2t.lm_width="
            f"{cfg.lm_width}, lm_layers={cfg.lm_layers}, lm_ff={cfg.lm_ff} ({offline_lm_parameters(cfg) / 1e9:.2f} B "
            f"parameters; the paper preset's are OPT-2.7B's); its weights, gradients and AdamW's moments alone need "
            f"about {need / 1e9:.1f} GB, and this {device.type} has {available / 1e9:.1f} GB. Give --llm DIR (a "
            f"pretrained OPT, frozen, as LaMP does) or a smaller stand-in: --set lamp_m2t.lm_width=256 --set "
            f"lamp_m2t.lm_layers=2 --set lamp_m2t.lm_heads=4 --set lamp_m2t.lm_ff=1024")


def lm_loss_fn(lm: OPTForCausalLM, text: CaptionText, max_tokens: int, device):
    """loss_fn(batch) -> (loss, parts) for loop.fit: the LM alone on the batch's captions,
    -log p(w_j | s, w_<j) for every token after the start token (end token included)."""
    def loss_fn(batch):
        ids, valid = text.frame(batch["caption"], max_tokens)                # (B, L)
        ids, valid = ids.to(device), valid.to(device)
        out = lm(input_ids=ids, attention_mask=valid.long(), labels=ids.masked_fill(~valid, IGNORE))
        return out.loss, {}
    return loss_fn


def load_lm(folder, dtype: torch.dtype = torch.float32):
    """OPT (the paper: OPT-2.7B) and its tokenizer from a local save_pretrained folder; nothing is
    downloaded -> (OPTForCausalLM, HFCaptionText). On a GPU pass dtype=torch.float16 (the LaMP code)."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: expected an OPT folder (config.json, weights and tokenizer files, "
                                "save_pretrained layout); nothing is downloaded")
    lm = OPTForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    text = HFCaptionText(AutoTokenizer.from_pretrained(folder, local_files_only=True))
    return lm, text


# ----------------------------------------------------------------------------
# The captioner (Sec. 3.4)


def on_query_path(name: str) -> bool:
    """True for the LaMP parameters that LaMP.query_states passes through: the queries, the motion
    memory, cross-attention, the query FFNs, the self-attention the text shares, the embeddings'
    LayerNorm. The rest of LaMP serves text only."""
    parts = name.split(".")
    return (parts[0] in ("query_tokens", "motion_pos", "motion_norm", "motion_in", "cross_attention",
                         "query_intermediate", "query_output")
            or name.startswith("bert.embeddings.LayerNorm.")
            or (name.startswith("bert.encoder.layer.") and parts[4] == "attention"))


class Captioner(nn.Module):
    """motion -> frozen motion encoder -> LaMP's queries (trained) -> opt_proj -> soft prompt of Q
    vectors before the caption in a frozen LM with LoRA. `lamp_model` is copied; `lm` gets its
    LoRA layers in place."""

    def __init__(self, lamp_model, vq, lm: OPTForCausalLM, text: CaptionText, cfg: CaptionerConfig):
        super().__init__()
        Q, H = lamp_model.cfg.n_queries, lamp_model.cfg.hidden_size
        if Q + cfg.max_tokens > lm.config.max_position_embeddings:
            raise ValueError(f"the LM has {lm.config.max_position_embeddings} positions, fewer than {Q} queries "
                             f"+ {cfg.max_tokens} caption tokens")
        if text.vocab_size > lm.config.vocab_size:
            raise ValueError(f"the tokenizer has {text.vocab_size} ids, the LM's table {lm.config.vocab_size}: "
                             "use the LM's own tokenizer")
        self.cfg, self.text = cfg, text
        self.vq = vq.requires_grad_(False).eval()                             # frozen motion encoder
        self.lamp = copy.deepcopy(lamp_model)
        for name, p in self.lamp.named_parameters():
            p.requires_grad_(on_query_path(name))
        self.lm = lm
        self.lora = add_lora(lm, LORA_TARGETS, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        self.opt_proj = nn.Linear(H, lm.get_input_embeddings().embedding_dim)  # H -> W

    def train(self, mode: bool = True) -> "Captioner":
        super().train(mode)
        self.vq.eval()  # note: frozen, so always in eval mode
        return self

    def soft_prompt(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """motion (B, T, D) normalised, lengths (B,) -> p (B, Q, W) in the LM's dtype."""
        with torch.no_grad():
            z, valid = self.vq.encode(motion, lengths)                        # (B, n, d), (B, n)
        h = self.lamp.query_states(z, valid)                                  # (B, Q, H)
        return self.opt_proj(h).to(self.lm.get_input_embeddings().weight.dtype)  # (B, Q, W)

    def loss(self, motion: torch.Tensor, lengths: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The LM's causal loss on the captions after their motions' soft prompts."""
        prompt = self.soft_prompt(motion, lengths)                            # (B, Q, W)
        B, Q, _ = prompt.shape
        ids, valid = (t.to(prompt.device) for t in self.text.frame(captions, self.cfg.max_tokens))  # (B, L)
        inputs = torch.cat([prompt, self.lm.get_input_embeddings()(ids)], dim=1)  # (B, Q + L, W)
        attention = torch.cat([valid.new_ones(B, Q), valid], dim=1).long()    # (B, Q + L)
        labels = ids.masked_fill(~valid, IGNORE)
        labels[:, 0] = IGNORE                                                 # s is given, never predicted
        labels = torch.cat([labels.new_full((B, Q), IGNORE), labels], dim=1)  # (B, Q + L)
        # L = -mean_j log p_LM(w_j | p, s, w_<j)   (the LM shifts the labels by one)
        return self.lm(inputs_embeds=inputs, attention_mask=attention, labels=labels).loss


def loss_fn(captioner: Captioner, device):
    """loss_fn(batch) -> (loss, parts) for loop.fit."""
    def compute(batch):
        return captioner.loss(batch["motion"].to(device), batch["lengths"].to(device), batch["caption"]), {}
    return compute


# ----------------------------------------------------------------------------
# Decoding: batched beam search


@torch.no_grad()
def beam_search(next_logprobs, batch: int, start_id: int, end_id: int, beams: int, max_new: int,
                device=None) -> list[list[int]]:
    """The best continuation of [start] for each of `batch` items, all batch x beams rows at once.

    next_logprobs(tokens (N, t), parents) -> log p of the next token (N, V), N = batch x beams,
    row b * beams + k being beam k of item b; parents (N,) holds the row each beam continues
    since the previous call (None at the first: a cache of past states follows it). A candidate's
    score is its summed log-probability divided by its generated length (end token included); a
    finished beam stays as one candidate
    with its score. Stops when every beam has ended or after max_new tokens. Returns the tokens
    after the start token, without the end token. beams = 1 is greedy decoding. `device`: where
    next_logprobs returns its rows (the bookkeeping stays there)."""
    K = beams
    tokens = torch.full((batch * K, 1), start_id, dtype=torch.long, device=device)  # (N, 1)
    score = torch.full((batch, K), float("-inf"), device=device)              # summed log p of each beam
    score[:, 0] = 0.0                                                         # K copies of one beam: keep one
    length = torch.zeros(batch, K, device=device)                             # generated tokens so far
    done = torch.zeros(batch, K, dtype=torch.bool, device=device)
    rows = None                                                               # (N,) parent rows
    for t in range(max_new):
        # 1. every beam's continuations; a finished beam has one, repeating e at no cost
        logp = next_logprobs(tokens, rows).float()                            # (N, V)
        V = logp.shape[-1]
        assert logp.shape == (batch * K, V) and V >= K, f"expected ({batch * K}, V >= {K}) log-probabilities"
        ended = torch.full((V,), float("-inf"), device=device)
        ended[end_id] = 0.0
        logp = torch.where(done[..., None], ended, logp.view(batch, K, V))    # (B, K, V)
        total = score[..., None] + logp                                       # (B, K, V)
        new_length = torch.where(done, length, torch.full_like(length, t + 1))[..., None]  # (B, K, 1)
        # 2. keep the K best candidates of each item: score(y) = log p(y) / |y|
        top = (total / new_length).view(batch, K * V).topk(K, dim=1).indices  # (B, K) of K V
        parent, token = top // V, top % V                                     # (B, K) each
        score = total.view(batch, K * V).gather(1, top)
        length = new_length.expand(-1, -1, V).reshape(batch, K * V).gather(1, top)
        done = done.gather(1, parent) | (token == end_id)
        # 3. each kept candidate is its parent's tokens and the new one
        rows = (parent + K * torch.arange(batch, device=device)[:, None]).view(-1)  # (N,)
        tokens = torch.cat([tokens[rows], token.view(-1, 1)], dim=1)          # (N, t + 2)
        if bool(done.all()):
            break
    best = (score / length.clamp(min=1)).argmax(1)                            # (B,)
    out = []
    for b in range(batch):
        seq = tokens[b * K + int(best[b]), 1:].tolist()
        out.append(seq[: seq.index(end_id)] if end_id in seq else seq)
    return out


@torch.no_grad()
def caption(captioner: Captioner, motion: torch.Tensor, lengths: torch.Tensor, beams: int | None = None) -> list[str]:
    """motion (B, T, D) normalised, lengths (B,) -> B captions (plain text), by beam search from
    [p | s] to the end token, at most max_tokens - 1 tokens after s. beams: cfg.beams if None."""
    K = beams or captioner.cfg.beams
    was_training = captioner.training
    captioner.eval()
    prompt = captioner.soft_prompt(motion, lengths)                           # (B, Q, W)
    B = len(prompt)
    prompt = prompt.repeat_interleave(K, dim=0)                               # (B K, Q, W)
    embed, cache = captioner.lm.get_input_embeddings(), DynamicCache()

    def next_logprobs(tokens, parents):                                       # (B K, t) -> (B K, V)
        if parents is None:                                                   # [p | s], filling the cache
            inputs = torch.cat([prompt, embed(tokens)], dim=1)                # (B K, Q + 1, W)
        else:                                                                 # the newest token only
            cache.reorder_cache(parents)
            inputs = embed(tokens[:, -1:])                                    # (B K, 1, W)
        out = captioner.lm(inputs_embeds=inputs, use_cache=True, logits_to_keep=1, **{CACHE_ARG: cache})
        return F.log_softmax(out.logits[:, -1].float(), dim=-1)               # (B K, V)

    text = captioner.text
    ids = beam_search(next_logprobs, B, text.start_id, text.end_id, K, captioner.cfg.max_tokens - 1, prompt.device)
    captioner.train(was_training)
    return [text.decode(seq) for seq in ids]


def _batches(dataset, batch_size: int):
    """(indices, collated batch) over `dataset` in order, drawn from a fork (the dataset's crop and
    caption generator is left where it was)."""
    draws = dataset.fork()
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        yield idx, collate([draws[i] for i in idx])


def caption_dataset(captioner: Captioner, dataset, device, beams: int | None = None, batch_size: int = 32) -> list[str]:
    """One caption per item of `dataset`, in order."""
    out = []
    for _, batch in _batches(dataset, batch_size):
        out += caption(captioner, batch["motion"].to(device), batch["lengths"].to(device), beams)
    return out


# ----------------------------------------------------------------------------
# Experiment protocol: the Tab. 4 analogue


@torch.no_grad()
def retrieval_captions(lamp_evaluator, train, test, device, batch_size: int = 64) -> list[str]:
    """The baseline without generation: for each test motion, the first caption of the training
    motion nearest in LaMP's motion space (LaMPEvaluator.encode_motion, cosine)."""
    def embed(dataset):
        feats = [lamp_evaluator.encode_motion(b["motion"].to(device), b["lengths"].to(device))
                 for _, b in _batches(dataset, batch_size)]
        return F.normalize(torch.cat(feats).float(), dim=-1)                 # (N, E)
    nearest = (embed(test) @ embed(train).T).argmax(1)                        # (N_test,) cosine
    return [train.items[int(j)][2][0] for j in nearest]


def human_captions(test) -> tuple[list[str], list[list[str]]]:
    """The human ceiling: for each test motion with at least two captions, its first caption as
    the candidate, its other captions as the references."""
    groups = [captions for _, _, captions in test.items if len(captions) >= 2]
    return [g[0] for g in groups], [g[1:] for g in groups]


def caption_rows(candidates_by_row: dict[str, list[str]], references: list[list[str]], bert_model,
                 bert_tokenizer, bert_layer: int) -> dict:
    """{row: candidates} against the same references -> {row: {metric: (value, 0.0)}}, the metrics
    of Tab. 4 scaled by 100 as it prints them (BLEU, ROUGE-L, CIDEr-D and BERTScore F1)."""
    rows = {}
    for row, candidates in candidates_by_row.items():
        scores = {"BLEU@1": caption_metrics.bleu(candidates, references, n=1),
                  "BLEU@4": caption_metrics.bleu(candidates, references, n=4),
                  "ROUGE-L": caption_metrics.rouge_l(candidates, references),
                  "CIDEr-D": caption_metrics.cider_d(candidates, references),
                  "BERTScore": caption_metrics.bert_score(candidates, references, bert_model, bert_tokenizer,
                                                          bert_layer)}
        rows[row] = {metric: (100.0 * value, 0.0) for metric, value in scores.items()}
    return rows


@torch.no_grad()
def caption_retrieval(captions: list[str], test, evaluator, tokenizer, seed: int, batch_size: int = 64) -> dict:
    """Tab. 4's R-precision and MMdist: caption i against test motion i in the run's evaluator
    (pools of 32, metrics.r_precision; MMdist over all pairs, metrics.matching_score)."""
    if len(captions) != len(test):
        raise ValueError(f"got {len(captions)} captions for {len(test)} test motions")
    device = next(evaluator.parameters()).device
    text, motion = [], []
    for idx, batch in _batches(test, batch_size):
        text.append(evaluator.encode_text(tokenizer([captions[i] for i in idx]).to(device)))   # (B, E)
        motion.append(evaluator.encode_motion(batch["motion"].to(device), batch["lengths"].to(device)))
    text, motion = (torch.cat(e).double().cpu().numpy() for e in (text, motion))
    top = r_precision(text, motion, top_k=3, seed=seed)
    return {"R-precision top-1": float(top[0]), "R-precision top-3": float(top[2]),
            "MMdist": matching_score(text, motion)}


class LaMPBertTokens:
    """What caption_metrics.bert_score asks of a tokenizer, over the CLIP BPE: [sot] ids [eot]."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cls_token_id, self.sep_token_id, self.pad_token_id = tokenizer.sot_id, tokenizer.eot_id, tokenizer.eot_id
        self.model_max_length = tokenizer.context_length

    def encode(self, text: str, add_special_tokens: bool = True, truncation: bool = True,
               max_length: int | None = None) -> list[int]:
        ids = self.tokenizer.encode(text)
        limit = max_length or self.model_max_length
        if not add_special_tokens:
            return ids[:limit] if truncation else ids
        return [self.cls_token_id, *(ids[: limit - 2] if truncation else ids), self.sep_token_id]


def lamp_bert_scorer(lamp_model, tokenizer):
    """BERTScore's model offline: LaMP's text transformer (a transformers BertModel over the CLIP
    BPE ids), its last layer -> (model, tokenizer adapter, layer) for caption_rows. Not
    roberta-large: its numbers compare rows of one run only. The model is put in eval mode."""
    return lamp_model.bert.eval(), LaMPBertTokens(tokenizer), lamp_model.cfg.n_layers


TAB4_ROWS = ("LaMP-M2T", "Retrieval (nearest training motion)", "Human (another annotator)")


def tab4(model: Captioner, lamp_evaluator, bert, evaluator, train, test, seed: int, device) -> tuple[dict, list]:
    """The Tab. 4 analogue on the test motions with at least two captions, every row scored
    against the same references, each motion's captions but its first: LaMP-M2T's caption, the
    retrieval baseline's and the first caption itself (the human ceiling). bert: lamp_bert_scorer.
    -> ({row: {metric: (value, 0)}}, [(name, LaMP-M2T's caption, references)] for 5 motions)."""
    keep = [i for i, (_, _, captions) in enumerate(test.items) if len(captions) >= 2]
    if not keep:
        raise ValueError("Tab. 4 needs test motions with at least two captions (a human ceiling and references)")
    subset = test.subset(keep, seed=seed)
    references = [captions[1:] for _, _, captions in subset.items]
    candidates = dict(zip(TAB4_ROWS, (caption_dataset(model, subset, device),
                                      retrieval_captions(lamp_evaluator, train, subset, device),
                                      [captions[0] for _, _, captions in subset.items])))
    rows = caption_rows(candidates, references, *bert)
    for row, captions in candidates.items():
        figures = caption_retrieval(captions, subset, evaluator, evaluator.tokenizer, seed)
        rows[row].update({metric: (value, 0.0) for metric, value in figures.items()})
    examples = [(subset.items[i][0], candidates[TAB4_ROWS[0]][i], references[i]) for i in range(min(5, len(keep)))]
    return rows, examples


def tab4_note(test, source: str, llm) -> str:
    motions = sum(len(captions) >= 2 for _, _, captions in test.items)
    lm = llm or "a small OPT trained here on the captions (not OPT-2.7B)"
    return (f"{motions} test motions of {source} with two captions or more; every row against the same "
            f"references, each motion's captions but its first (the Human row's candidate). BLEU, ROUGE-L, "
            f"CIDEr-D and BERTScore x 100 (BERTScore in this run's LaMP text transformer, not roberta-large, "
            f"no baseline rescaling: rows compare within the run); R-precision (pools of 32) and MMdist: the "
            f"captions against their motions in the run's `evaluator`. Language model: {lm}. The paper (LaMP "
            f"Tab. 4, HumanML3D): top-1 0.547, MMdist 2.808, BLEU@1 47.8, BLEU@4 13.04, ROUGE 37.1, CIDEr 28.9.")
