"""CLIP's text encoder: captions -> the condition c, frozen; and the offline stand-in's pretraining.

Papers: CLIP (Radford et al. 2021, arXiv 2103.00020) is the text encoder of every paper here.
LEAD (seed 000_c8069c11a3356e2a, arXiv 2410.14508) uses CLIP as its frozen text encoder
tau_theta (Sec. 4.1.1 (3), Sec. 5.2: CLIP ViT-L/14): the diffusion model is conditioned on the
projected pooled embedding c, and the projector is aligned to c (Eq. 4). Motion textual
inversion (Sec. 4.2, Eq. 9) adds a pseudo-word C_* to CLIP's vocabulary and learns only its
embedding v_*. MATE (seed 004_fcd44ad5e4e1e096) retrains only CLIP's word-embedding table
(Sec. 3.4) and swaps it into the otherwise unchanged encoder. The tokenizer is clip_tokenizer.py.

Layout: the `TextEncoder` around transformers' CLIPTextModelWithProjection (encoding, caching,
textual-inversion words, MATE's table), then the offline stand-in's pretraining and its report
(`paraphrase_loss`, `pretrain_text`, `paraphrase_report`, `offline_report`).

Differences from the papers:
- Without `--clip` (no network), `TextEncoder.offline`: a small CLIP text tower pretrained with
  CLIP's InfoNCE between two captions of one motion (`paraphrase_loss`), never a motion feature;
  it knows which captions say the same thing, no language beyond them (bench/bench_text.py).
- The word-embedding table is wrapped by `WordEmbeddings`, so added words get their own
  trainable rows while CLIP's table stays frozen.

Glossary: B batch, L tokens (77), W text width, D projected embedding width.
"""
import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import ClassVar
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError
from transformers import CLIPTextConfig, CLIPTextModelWithProjection
from transformers.utils import logging as transformers_logging

from clip_tokenizer import CONTEXT_LENGTH, Tokenizer, train_bpe

OFFLINE_STAMP = "offline_clip.json"  # the settings an offline encoder folder was built from


# ----------------------------------------------------------------------------------------
# The text encoder


@dataclass
class ClipConfig:
    """The offline text encoder, built when no --clip is given. The papers use OpenAI's
    ViT-L/14 text tower (MLD/LEAD: c is 768-d); its sizes are given for comparison."""
    vocab_size: int = 2048         # ours (BPE trained on the captions); ViT-L/14: 49408
    context_length: int = CONTEXT_LENGTH  # CLIP (Radford et al. 2021)
    hidden_size: int = 256         # ours, W; ViT-L/14: 768
    num_layers: int = 4            # ours; ViT-L/14: 12
    num_heads: int = 4             # ours; ViT-L/14: 12
    intermediate_size: int = 1024  # ours, 4 x W as in CLIP; ViT-L/14: 3072
    projection_dim: int = 256      # ours, D; ViT-L/14: 768
    # Text-only pretraining of the stand-in (`pretrain_text`), in place of CLIP's 400M
    # image-text pairs. 0 steps: the random-weight tower, with no semantic geometry.
    # Measured in bench/bench_text.py (tiny sizes, 1 thread): 200 steps ~ 40 s; paraphrase
    # retrieval is as good after 150 steps as after 300, and batch 128/256 or temperatures
    # 0.03-0.15 move it by under 0.01.
    pretrain_steps: int = 200      # ours
    pretrain_batch: int = 64       # ours: caption pairs per step, from as many groups
    pretrain_lr: float = 1e-3      # ours, AdamW, linear warm-up then cosine decay
    pretrain_warmup: int = 20      # ours: warm-up steps
    temperature: float = 0.1       # ours, fixed; CLIP learns it, starting from 0.07 (Radford et al. Sec. 2.5)
    AT_LEAST_ZERO: ClassVar = ("pretrain_steps", "pretrain_warmup")  # ranges: config.check_ranges


@contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars for a moment (restored afterwards)."""
    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


class WordEmbeddings(nn.Module):
    """CLIP's token table (frozen) plus one trainable row per added word.

    Ids below `table.num_embeddings` read the table, the others read `added`. Keeping the
    rows apart (rather than growing the table) means the optimizer of textual inversion sees
    only the new rows, and CLIP's table cannot drift.
    """

    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.table = table
        self.added = nn.Parameter(table.weight.new_zeros(0, table.embedding_dim))  # (n_added, W)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        V = self.table.num_embeddings
        vectors = self.table(ids.clamp(max=V - 1))  # (B, L, W)
        if len(self.added) == 0:
            return vectors
        extra = F.embedding((ids - V).clamp(min=0), self.added)  # (B, L, W)
        # torch.where sends the gradient of each position to the branch it took.
        return torch.where((ids >= V).unsqueeze(-1), extra, vectors)  # (B, L, W)


class TextEncoder(nn.Module):
    """Frozen CLIP text transformer + our Tokenizer: captions -> (c (B, D), states (B, L, W)).

    c is what Hugging Face's `get_text_features` returns: the text projection of the final
    layer-normed state at the end token. It is not L2-normalised (as MLD).
    """

    def __init__(self, model: CLIPTextModelWithProjection, tokenizer: Tokenizer):
        super().__init__()
        n_rows = model.get_input_embeddings().num_embeddings
        if n_rows != len(tokenizer) or tokenizer.added:
            raise ValueError(f"the text model has {n_rows} token rows but the tokenizer has {len(tokenizer)} "
                             f"ids ({len(tokenizer.added)} added); load both from the same folder")
        self.model = model
        self.tokenizer = tokenizer
        model.set_input_embeddings(WordEmbeddings(model.get_input_embeddings()))
        self.requires_grad_(False)
        self.eval()
        self.cache: dict[str, torch.Tensor] = {}  # caption -> c (D,)

    # --- loading

    @classmethod
    def from_pretrained(cls, name_or_dir) -> "TextEncoder":
        """Real (or offline-built) weights from a folder written by save_pretrained, or from a
        model name already in the local Hugging Face cache (nothing is downloaded)."""
        path = Path(name_or_dir)
        if not path.is_dir():
            path = _cached_snapshot(str(name_or_dir))
        # A full CLIP checkpoint also holds the vision tower: transformers would list each of
        # its unused weights. Quiet that report, and check instead that no text weight is missing.
        with quiet_transformers():
            model, info = CLIPTextModelWithProjection.from_pretrained(
                path, local_files_only=True, output_loading_info=True)
        if info["missing_keys"]:
            raise ValueError(f"{path} has no weights for {sorted(info['missing_keys'])[:4]}...: "
                             "is it a CLIP text model (or a full CLIP model)?")
        return cls(model, Tokenizer.from_pretrained(path))

    @classmethod
    def offline(cls, captions: list[list[str]] | list[str], out_dir, seed: int = 0,
                config: ClipConfig | None = None, log=print) -> "TextEncoder":
        """The stand-in for CLIP when no real weights are given: a small CLIP text tower with a
        BPE trained on the captions, pretrained on them by `pretrain_text` (captions of one
        motion are paraphrases; no motion feature is involved), saved to `out_dir` and loaded
        back through `from_pretrained` (the real-weights path).

        `captions`: the training split's caption groups, one list per motion or annotated
        sub-span, e.g. `[captions for _, _, captions in dataset.items]`. A flat list of strings
        is read as one group per caption: it holds no paraphrase pair, so the tower keeps its
        random weights (the log says so). An `out_dir` built from the same settings and caption
        groups is reused; `offline_report` compares it with its random initialisation."""
        config = config or ClipConfig()
        groups = caption_groups(captions)
        out_dir = Path(out_dir)
        settings = {"config": asdict(config), "seed": seed,
                    "captions_sha256": hashlib.sha256(json.dumps(groups).encode()).hexdigest()}
        stamp = out_dir / OFFLINE_STAMP
        pairs = sum(len(g) >= 2 for g in groups)  # groups with a paraphrase pair
        steps = config.pretrain_steps if pairs >= 2 else 0
        what = (f"pretrained on {pairs} caption groups, text only" if steps else "random weights")
        notice = f"{what}, NOT real CLIP: pass --clip NAME_OR_DIR for the papers' setting"
        if stamp.exists() and json.loads(stamp.read_text()).get("settings") == settings:
            log(f"[clip] reusing the offline text encoder in {out_dir} ({notice})")
            return cls.from_pretrained(out_dir)
        log(f"[clip] building an offline text encoder in {out_dir}: BPE on {sum(map(len, groups))} "
            f"captions, {config.num_layers} layers of width {config.hidden_size} ({notice})")
        if config.pretrain_steps and not steps:
            log("[clip] no two captions share a group (a flat caption list?): nothing to pretrain "
                "on; pass the captions grouped by motion")
        stamp.unlink(missing_ok=True)  # a build that stops half way must not look finished
        tokenizer = Tokenizer.from_pretrained(
            train_bpe([c for g in groups for c in g], config.vocab_size, out_dir))
        encoder = cls(_initial_model(tokenizer, config, seed), tokenizer)
        stats = {}
        if steps:
            with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
                stats = pretrain_text(encoder, groups, steps, config.pretrain_batch, config.pretrain_lr,
                                      config.temperature, config.pretrain_warmup, seed, log)
        encoder.save_pretrained(out_dir)
        stamp.write_text(json.dumps({"settings": settings, "pretraining": stats}, indent=1))
        return cls.from_pretrained(out_dir)

    def save_pretrained(self, out_dir) -> Path:
        """Write model and tokenizer as a Hugging Face folder that `from_pretrained` (and
        transformers) read back. CLIP's own table is saved, so added words must not exist."""
        if self.tokenizer.added:
            raise ValueError(f"added words {sorted(self.tokenizer.added)} belong to an experiment "
                             "and are not saved; save before add_token")
        out_dir = Path(out_dir)
        wrapper = self.model.get_input_embeddings()
        self.model.set_input_embeddings(wrapper.table)  # the plain nn.Embedding, CLIP's key names
        try:
            with quiet_transformers():
                self.model.save_pretrained(out_dir)
        finally:
            self.model.set_input_embeddings(wrapper)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir

    # --- sizes and device

    @property
    def dim(self) -> int:
        """D, the width of c."""
        return self.model.config.projection_dim

    @property
    def width(self) -> int:
        """W, the width of the token states."""
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.weight.device

    def train(self, mode: bool = True) -> "TextEncoder":
        # note: stays in eval mode when a parent module calls .train(): CLIP is frozen.
        return super().train(False)

    # --- encoding

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) captions -> c (B, D), token states (B, L, W)."""
        return self.encode_ids(self.tokenizer(texts))

    def encode_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) from `tokenizer` -> c (B, D), token states (B, L, W)."""
        B, L = ids.shape
        assert L <= self.model.config.max_position_embeddings, f"{L} tokens exceed CLIP's context"
        ids = ids.to(self.device)
        is_end = ids == self.tokenizer.eot_id  # (B, L)
        assert is_end.any(dim=1).all(), "every row needs an end token (use the tokenizer's output)"
        # Final-layer-normed states; no attention mask, as CLIP (attention is causal anyway).
        states = self.model.text_model(input_ids=ids).last_hidden_state  # (B, L, W)
        # The pooled state is at the FIRST end token (padding repeats it). Found by id, not
        # by argmax(ids) as in OpenAI's code: added words have ids above the end token's.
        end = is_end.int().argmax(dim=1)  # (B,)
        pooled = states[torch.arange(B, device=ids.device), end]  # (B, W)
        c = self.model.text_projection(pooled)  # (B, D)
        return c, states

    @torch.no_grad()
    def encode_cached(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """c (B, D) without gradient; each distinct caption is encoded once per encoder."""
        assert not self.word_embeddings.weight.requires_grad, \
            "encode_cached assumes a frozen word table; while training it (MATE) use encode()"
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            ids = self.tokenizer(chunk)  # (b, L)
            # Attention is causal: the states up to an end token do not depend on what follows,
            # so cutting the batch after its last end token gives the same c for less work.
            n = int((ids == self.tokenizer.eot_id).int().argmax(dim=1).max()) + 1
            c, _ = self.encode_ids(ids[:, :n])  # (b, D)
            self.cache.update(zip(chunk, c))
        return torch.stack([self.cache[t] for t in texts]).to(self.device)  # (B, D)

    # --- textual inversion (LEAD Sec. 4.2)

    def add_token(self, word: str, init_word: str) -> int:
        """Add `word` (e.g. "<*>") with one trainable embedding row, initialised from the
        embedding of `init_word` (a coarse descriptor such as "walk"). Returns its id.
        Add words before building the optimizer: each addition makes a new `added_embeddings`."""
        init_ids = self.tokenizer.encode(init_word)
        if len(init_ids) != 1:
            raise ValueError(f"init_word {init_word!r} is {len(init_ids)} tokens in this vocabulary; "
                             "textual inversion starts from a single-token word")
        token_id = self.tokenizer.add_token(word)
        embeddings = self.model.get_input_embeddings()
        assert token_id == embeddings.table.num_embeddings + len(embeddings.added), "ids and rows out of step"
        row = embeddings.table.weight[init_ids[0]].detach().clone()  # (W,)
        embeddings.added = nn.Parameter(torch.cat([embeddings.added.detach(), row[None]]))  # (n_added, W)
        self.cache.clear()
        return token_id

    @property
    def added_embeddings(self) -> nn.Parameter:
        """(n_added, W), the only parameters that require grad after add_token."""
        return self.model.get_input_embeddings().added

    # --- word-embedding table (MATE)

    @property
    def word_embeddings(self) -> nn.Embedding:
        """CLIP's token table (V, W). MATE may train it in place with
        `word_embeddings.weight.requires_grad_(True)`: the gradient flows through the frozen
        transformer into it."""
        return self.model.get_input_embeddings().table

    def set_word_embeddings(self, weight: torch.Tensor):
        """Swap in a table (V, W), e.g. MATE's retrained one; it is frozen like the rest."""
        table = self.word_embeddings
        if tuple(weight.shape) != tuple(table.weight.shape):
            raise ValueError(f"word table must be {tuple(table.weight.shape)}, got {tuple(weight.shape)}")
        table.weight = nn.Parameter(weight.detach().to(table.weight), requires_grad=False)
        self.cache.clear()


def _cached_snapshot(name: str) -> Path:
    """The local folder of a Hugging Face model that was downloaded beforehand."""
    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError) as error:
        raise FileNotFoundError(
            f"--clip {name!r} is neither a local folder nor a model in the local Hugging Face cache. "
            "The weights must be downloaded beforehand (e.g. `hf download " + name + "` on a machine "
            "with network, then copy the cache or pass the folder); nothing is downloaded here."
        ) from error


# ----------------------------------------------------------------------------------------
# The offline stand-in's pretraining: text alone, in place of CLIP's image-text pairs


def caption_groups(captions) -> list[list[str]]:
    """Caption groups in a canonical order (captions sorted and made distinct within a group,
    groups sorted), so that the cache key and the pretraining do not depend on the order the
    dataset listed them in. A flat list of strings is one group per caption. Anything but
    strings is refused: the stand-in learns from text alone, never from motion."""
    if isinstance(captions, (str, bytes)) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"expected a list of caption groups (lists of strings), got {type(captions).__name__}")
    groups = []
    for group in captions:
        group = [group] if isinstance(group, str) else group
        if not isinstance(group, (list, tuple)) or not all(isinstance(c, str) for c in group):
            raise TypeError("caption groups hold strings only (the text stand-in never sees motion), "
                            f"got {type(group).__name__} {group!r:.80}")
        if group:
            groups.append(sorted(set(group)))
    return sorted(groups)


def _initial_model(tokenizer: Tokenizer, config: ClipConfig, seed: int) -> CLIPTextModelWithProjection:
    """The stand-in's random initial weights (transformers' CLIP initialisation), seeded
    without touching the caller's RNG: the same seed and tokenizer give the same tower."""
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=config.context_length,
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        projection_dim=config.projection_dim,
        bos_token_id=tokenizer.sot_id, eos_token_id=tokenizer.eot_id, pad_token_id=tokenizer.pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(text_config)


def paraphrase_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, group_a: torch.Tensor, group_b: torch.Tensor,
                    text_a: torch.Tensor, text_b: torch.Tensor, temperature: float):
    """Symmetric InfoNCE between two captions of each of B groups (CLIP's objective, Radford
    et al. Fig. 3, with a caption in place of the image and a fixed temperature). Row i of
    emb_a and row i of emb_b are two different captions of one group (one motion, or one
    annotated sub-span); group_* (B,) name the groups, text_* (B,) the caption strings (equal
    ids: identical strings).

        s_ij = cos(a_i, b_j) / temperature
        N(i) = { j : group_b[j] != group_a[i] and text_b[j] != text_a[i] }    (the negatives)
        L_ab = -1/B sum_i log( exp(s_ii) / (exp(s_ii) + sum_{j in N(i)} exp(s_ij)) )
        L_ba = the same over the columns of s,   L = (L_ab + L_ba) / 2

    Another caption of the same group, or the same string in another group, is no negative:
    pushing a paraphrase (or a caption from itself) away would teach the opposite of meaning.
    Returns L and its parts {"a_to_b", "b_to_a", "accuracy"} (accuracy: fraction of rows and
    columns whose own pair scores highest).
    """
    B, D = emb_a.shape
    assert emb_b.shape == (B, D), f"both views must be (B, D) = {(B, D)}, got {tuple(emb_b.shape)}"
    assert group_a.shape == group_b.shape == text_a.shape == text_b.shape == (B,), "one id per row"
    assert (group_a == group_b).all(), "row i of both views must be captions of the same group"
    a = F.normalize(emb_a, dim=-1)  # (B, D)
    b = F.normalize(emb_b, dim=-1)  # (B, D)
    logits = a @ b.T / temperature  # (B, B), s_ij
    not_negative = (group_a[:, None] == group_b[None, :]) | (text_a[:, None] == text_b[None, :])  # (B, B)
    not_negative.fill_diagonal_(False)  # the pair itself is the target
    logits = logits.masked_fill(not_negative, float("-inf"))
    target = torch.arange(B, device=logits.device)
    a_to_b = F.cross_entropy(logits, target)  # L_ab, rows
    b_to_a = F.cross_entropy(logits.T, target)  # L_ba, columns
    loss = (a_to_b + b_to_a) / 2
    with torch.no_grad():
        accuracy = ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean()) / 2
    return loss, {"a_to_b": a_to_b.detach(), "b_to_a": b_to_a.detach(), "accuracy": accuracy}


def pretrain_text(encoder: TextEncoder, groups: list[list[str]], steps: int, batch_size: int, lr: float,
                  temperature: float, warmup: int = 100, seed: int = 0, log=print) -> dict:
    """Train the whole text tower of `encoder` in place with `paraphrase_loss`, on captions
    grouped by motion (or sub-span) and nothing else: each step draws `batch_size` groups with
    at least two distinct captions, and two distinct captions of each. AdamW, `lr` reached by
    linear warm-up over `warmup` steps, then cosine decay to 0. The encoder is frozen again
    afterwards. Returns {"steps", "seconds", "groups", "captions", "loss_first", "loss_last",
    "accuracy_last"}."""
    groups = caption_groups(groups)
    if encoder.tokenizer.added:
        raise ValueError("pretrain the text tower before adding words (add_token)")
    usable = [g for g in groups if len(g) >= 2]
    if len(usable) < 2:
        raise ValueError(f"pretraining needs at least 2 groups with 2 distinct captions, got {len(usable)}")
    # 1. Every distinct caption tokenised once; its row is its text id.
    texts = sorted({c for g in usable for c in g})
    row = {t: i for i, t in enumerate(texts)}
    ids = encoder.tokenizer(texts)  # (N, L)
    members = [torch.tensor([row[c] for c in g]) for g in usable]
    B = min(batch_size, len(usable))
    generator = torch.Generator().manual_seed(seed)
    encoder.model.requires_grad_(True)
    params = [p for p in encoder.model.parameters() if p.numel()]  # not the empty `added` rows
    optimizer = torch.optim.AdamW(params, lr=lr)
    start, first, parts = time.perf_counter(), None, {}
    for step in range(steps):
        # 2. B distinct groups, two distinct captions of each: views a and b.
        chosen = torch.randperm(len(usable), generator=generator)[:B]  # (B,)
        pair = torch.stack([members[g][torch.randperm(len(members[g]), generator=generator)[:2]]
                            for g in chosen.tolist()])  # (B, 2) text ids
        both = ids[torch.cat([pair[:, 0], pair[:, 1]])]  # (2B, L)
        # Causal attention: nothing after the last end token changes c, so cut the batch there.
        n = int((both == encoder.tokenizer.eot_id).int().argmax(dim=1).max()) + 1
        c, _ = encoder.encode_ids(both[:, :n])  # (2B, D)
        # 3. The loss, then one AdamW step at the scheduled learning rate.
        loss, parts = paraphrase_loss(c[:B], c[B:], chosen, chosen, pair[:, 0], pair[:, 1], temperature)
        for group in optimizer.param_groups:
            group["lr"] = _warmup_cosine(step, steps, warmup, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        first = float(loss) if first is None else first
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            log(f"[clip] pretraining step {step + 1}/{steps}: loss {float(loss):.3f}, "
                f"in-batch accuracy {float(parts['accuracy']):.3f}, {time.perf_counter() - start:.0f} s")
    encoder.requires_grad_(False)
    encoder.cache.clear()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "groups": len(usable),
            "captions": len(texts), "loss_first": first, "loss_last": float(loss) if steps else None,
            "accuracy_last": float(parts["accuracy"]) if steps else None}


def _warmup_cosine(step: int, steps: int, warmup: int, lr: float) -> float:
    """Learning rate at `step`: linear from lr/warmup up to lr, then cosine down to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def paraphrase_report(encoder, groups: list[list[str]], threshold: float = 0.85) -> dict:
    """How well the text space groups paraphrases, on caption groups (e.g. the test split's).

    Each distinct caption of a group that has at least two is a query; its candidates are the
    distinct caption strings other than its own. The query is a hit when its nearest candidate
    by cosine of c is a caption of its own group (a string in several groups counts for each):
        top1 = #hits / #queries   (paraphrase retrieval, text -> text)
    Cosine spread over the pairs of distinct strings: paraphrase pairs (same group) and
    other pairs (different groups), each as mean, median and the fraction above `threshold`
    (ATM's paraphrase rule skips negatives whose text cosine exceeds 0.85); and the mean
    length |c| (c is not normalised downstream, so its scale matters to the diffusion model).
    note: captions of two motions that happen to say the same thing ("a person stands still",
    "someone stays still") count as other pairs here, so top1 has a ceiling below 1 on data
    where many motions share one description.
    """
    groups = caption_groups(groups)
    texts = [c for g in groups for c in g]
    owner = torch.tensor([k for k, g in enumerate(groups) for _ in g])  # (N,)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    text_id = torch.tensor([ids[t] for t in texts])  # (N,)
    c = encoder.encode_cached(texts).float().cpu()  # (N, D)
    e = F.normalize(c, dim=-1)  # (N, D)
    N = len(texts)
    is_query = torch.tensor([len(g) >= 2 for g in groups for _ in g])  # (N,)
    held = set(zip(text_id.tolist(), owner.tolist()))  # (string, group) pairs
    hits, paraphrase, other = [], [], []
    for start in range(0, N, 1024):  # rows in chunks: N x N may not fit for a large test set
        rows = torch.arange(start, min(start + 1024, N))  # (n,)
        sim = e[rows] @ e.T  # (n, N)
        same_text = text_id[rows, None] == text_id[None, :]  # (n, N), includes the query itself
        same_group = owner[rows, None] == owner[None, :]  # (n, N)
        nearest = sim.masked_fill(same_text, float("-inf")).argmax(dim=1)  # (n,)
        hit = torch.tensor([(t, g) in held for t, g in zip(text_id[nearest].tolist(), owner[rows].tolist())])
        hits.append(hit[is_query[rows]])
        upper = (rows[:, None] < torch.arange(N)[None, :]) & ~same_text  # (n, N), each pair once
        paraphrase.append(sim[upper & same_group])
        other.append(sim[upper & ~same_group])
    hits, paraphrase, other = torch.cat(hits), torch.cat(paraphrase), torch.cat(other)

    def stat(values, fn):
        return round(float(fn(values)), 4) if len(values) else float("nan")

    return {"top1": stat(hits.float(), torch.mean), "queries": len(hits), "captions": N, "groups": len(groups),
            "paraphrase_cos_mean": stat(paraphrase, torch.mean),
            "paraphrase_cos_median": stat(paraphrase, torch.median),
            "paraphrase_above": stat((paraphrase > threshold).float(), torch.mean),
            "other_cos_mean": stat(other, torch.mean), "other_cos_median": stat(other, torch.median),
            "other_above": stat((other > threshold).float(), torch.mean),
            "c_norm_mean": stat(c.norm(dim=-1), torch.mean)}


def offline_report(encoder: TextEncoder, groups: list[list[str]], seed: int = 0,
                   config: ClipConfig | None = None) -> dict:
    """`paraphrase_report` of the offline stand-in (after pretraining) and of its random
    initialisation (before: the same seed, config and tokenizer), on `groups`."""
    config = config or ClipConfig()
    before = TextEncoder(_initial_model(encoder.tokenizer, config, seed), encoder.tokenizer)
    return {"before": paraphrase_report(before.to(encoder.device), groups),
            "after": paraphrase_report(encoder, groups)}
