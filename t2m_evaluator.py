"""Guo et al.'s T2M evaluator, the feature extractor every paper's Tab. 1 numbers are computed in
(MLD, LEAD, ATM, MATE and LaMP all load it as MLD does): `T2MEvaluator.from_official` reads the
official files, `embed_texts` and `embed_motions` give the 512-d embeddings that metrics.py's
formulas take. The same class, built by `T2MEvaluator.trained`, is the evaluator (and ATM's and
MATE's alignment embedder) that train.py trains where the official files are absent (the
embedded dataset): one evaluator architecture, loaded or trained.

Paper: Generating Diverse and Natural 3D Human Motions from Text (Guo et al., CVPR 2022), Sec. 4
(the text and motion encoders trained with a contrastive loss, used for R-precision, FID, MMdist,
Diversity and MModality). No equation here is new; the specification is the public code:

Guo et al. text-to-motion: networks/modules.py (the three encoders), networks/evaluator_wrapper.py
(dimensions, finest.tar, sorting, unit length), utils/word_vectorizer.py (POS classes, VIP words),
data/dataset.py Text2MotionDatasetV2 (sos / eos / unk, 20 words) and collate_fn (batches sorted by
sentence length); MLD: mld/models/modeltype/mld.py t2m_eval, mld/data/get_data.py (the evaluator's
mean/std from Comp_v6_KLD01/meta, KIT Comp_v6_KLD005), configs/base.yaml (the same dimensions).

Layout: the part-of-speech classes and VIP words, the word vectorizer (word rows + POS one-hot),
the lexicon that tags captions for an evaluator trained here, the three encoders with the official
parameter names (so the official state dicts load with strict=True), the evaluator that
renormalises, sorts and packs as the official wrapper does, and its adapter to a dataset.

Differences from the official code:
- Files are read without running pickled code (safe_pickle); each failure names the file.
  Otherwise none for the released evaluator: it must give the official numbers.
- An evaluator trained here differs where the files are missing (learned word vectors, lexicon
  POS tags, padding masked, InfoNCE training): metrics.py's docstring lists it.

Glossary: B batch, T frames, D feature width, L words (22 with sos/eos), H GRU width.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import safe_pickle

FOOT_CONTACT_DIMS = 4  # HumanML3D (263-d) and KIT-ML (251-d) features end with 4 foot contacts


def output_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Guo et al.'s output_net: Linear, LayerNorm, LeakyReLU(0.2), Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden),
                         nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))

POS_ENUMERATOR = {"VERB": 0, "NOUN": 1, "DET": 2, "ADP": 3, "NUM": 4, "AUX": 5, "PRON": 6, "ADJ": 7,
                  "ADV": 8, "Loc_VIP": 9, "Body_VIP": 10, "Obj_VIP": 11, "Act_VIP": 12, "Desc_VIP": 13,
                  "OTHER": 14}  # Guo et al.'s POS_enumerator: the one-hot index of each tag
# words whose own class replaces their tag, looked up in this order (Guo et al.'s VIP_dict)
VIP_WORDS = {
    "Loc_VIP": ("left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back",
                "backward", "up", "down", "straight", "curve"),
    "Body_VIP": ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee",
                 "shoulder", "thigh"),
    "Obj_VIP": ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball",
                "basketball"),
    "Act_VIP": ("walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance",
                "jump", "turn", "stumble", "dance", "stop", "sit", "lift", "lower", "raise", "wash", "stand",
                "kneel", "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate", "spin",
                "spread", "climb"),
    "Desc_VIP": ("slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad",
                 "happily", "angrily", "sadly"),
}
# dataset name -> (feature width D, the folder of the evaluator's own mean.npy / std.npy)
T2M_DATASETS = {"t2m": (263, "Comp_v6_KLD01"), "kit": (251, "Comp_v6_KLD005")}


def _load_npy(path: Path) -> np.ndarray:
    """np.load without pickled objects; ValueError naming the file on any failure."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # missing, truncated, object array, not an .npy
        raise ValueError(f"{path}: not loaded ({type(error).__name__}: {error})") from error


class WordVectorizer:
    """`word/POS` tokens -> (row of the word table, 15-way part-of-speech one-hot), as Guo et
    al.'s WordVectorizer: a word outside the vocabulary becomes `unk` tagged OTHER; a word in the
    vocabulary and in a VIP list is tagged with that list's class instead of its own tag; a tag
    outside POS_ENUMERATOR counts as OTHER. Row i of the table (T2MEvaluator.word_emb) is
    words[i]: GloVe's vector for the released evaluator, a learned one for an evaluator trained
    here."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        for special in ("sos", "eos", "unk"):  # every caption uses them
            if special not in self.index:
                raise ValueError(f"the vocabulary lacks {special!r}")

    @classmethod
    def from_glove_dir(cls, glove_dir, prefix: str = "our_vab") -> tuple["WordVectorizer", np.ndarray]:
        """{glove_dir}/{prefix}_data.npy (V, 300), _words.pkl (list of V words), _idx.pkl (word ->
        row) -> (the vectorizer, the vectors (V, 300) in the order of its words)."""
        glove_dir = Path(glove_dir)
        data, words_file, idx_file = (glove_dir / f"{prefix}_{s}" for s in ("data.npy", "words.pkl", "idx.pkl"))
        vectors = _load_npy(data)
        words, word_to_index = safe_pickle.load_pickle(words_file), safe_pickle.load_pickle(idx_file)
        if vectors.ndim != 2:
            raise ValueError(f"{data}: GloVe vectors should be (V, dim), got shape {vectors.shape}")
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise ValueError(f"{words_file}: expected a list of words")
        if not isinstance(word_to_index, dict) or any(
                not isinstance(word_to_index.get(w), int) or not 0 <= word_to_index[w] < len(vectors) for w in words):
            raise ValueError(f"{idx_file}: expected a dict giving each word of {words_file.name} a row of {data.name}")
        try:
            vectorizer = cls(words)
        except ValueError as error:
            raise ValueError(f"{words_file}: {error}") from error
        return vectorizer, vectors[[word_to_index[w] for w in vectorizer.words]]

    @staticmethod
    def pos_one_hot(tag: str) -> np.ndarray:
        """(15,) one-hot of POS_ENUMERATOR[tag], OTHER for an unknown tag."""
        one_hot = np.zeros(len(POS_ENUMERATOR), dtype=np.float32)
        one_hot[POS_ENUMERATOR.get(tag, POS_ENUMERATOR["OTHER"])] = 1.0
        return one_hot

    def __getitem__(self, token: str) -> tuple[int, np.ndarray]:
        """'word/POS' -> (the word's row, POS one-hot (15,))."""
        parts = token.split("/")
        if len(parts) != 2:
            raise ValueError(f"expected a 'word/POS' token as in HumanML3D's texts, got {token!r}")
        word, tag = parts
        if word not in self.index:
            return self.index["unk"], self.pos_one_hot("OTHER")
        vip = next((cls for cls, vip_words in VIP_WORDS.items() if word in vip_words), None)
        return self.index[word], self.pos_one_hot(vip or tag)

    def caption(self, tokens: list[str], max_words: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
        """One caption's tokens -> (rows (L,), POS one-hots (L, 15), sent_len), L = max_words + 2,
        as Guo et al.'s dataset: sos, at most max_words tokens, eos, then unk/OTHER padding;
        sent_len counts sos and eos."""
        tokens = ["sos/OTHER"] + list(tokens[:max_words]) + ["eos/OTHER"]
        sent_len = len(tokens)
        tokens += ["unk/OTHER"] * (max_words + 2 - sent_len)
        rows, one_hots = zip(*(self[token] for token in tokens))
        return np.array(rows, dtype=np.int64), np.stack(one_hots), sent_len


def caption_words(caption: str) -> list[str]:
    """A caption's words as HumanML3D's text_process.py keeps them: hyphens dropped, then only
    alphabetic tokens (lower-cased here), so "a man walks, then jumps." -> 6 words."""
    return re.findall(r"[a-z]+", caption.lower().replace("-", ""))


class Lexicon:
    """Tags any caption with `lemma/POS` tokens, for an evaluator trained here: each word's most
    frequent (lemma, tag) among the training split's tagged captions (the `word/POS` fields of
    texts/*.txt), a word never seen there `word/OTHER` (unk for the evaluator). HumanML3D's
    captions were tagged by spaCy in context; this is its context-free majority reading (the
    evaluator stage reports how often it agrees with the files' tags)."""

    def __init__(self, table: dict[str, str]):
        self.table = dict(table)  # word -> "lemma/POS"

    @classmethod
    def from_tagged(cls, tagged: dict[str, str]) -> "Lexicon":
        """tagged: caption -> its "lemma/POS ..." field. Captions whose word count differs from
        their token count (a tokenisation this split cannot align) are skipped."""
        counts: dict[str, dict[str, int]] = {}
        for caption, tags in tagged.items():
            words, tokens = caption_words(caption), tags.split()
            if len(words) != len(tokens):
                continue
            for word, token in zip(words, tokens):
                counts.setdefault(word, {}).setdefault(token, 0)
                counts[word][token] += 1
        # most frequent reading; ties to the alphabetically first, so the table is deterministic
        return cls({w: min(c, key=lambda t: (-c[t], t)) for w, c in sorted(counts.items())})

    def __call__(self, caption: str) -> list[str]:
        return [self.table.get(w, f"{w}/OTHER") for w in caption_words(caption)]

    def agreement(self, tagged: dict[str, str]) -> float:
        """Fraction of the aligned tokens of `tagged` (caption -> tags) this lexicon reads alike."""
        same = total = 0
        for caption, tags in tagged.items():
            mine, theirs = self(caption), tags.split()
            if len(mine) == len(theirs):
                same, total = same + sum(a == b for a, b in zip(mine, theirs)), total + len(mine)
        return same / max(total, 1)


class MovementConvEncoder(nn.Module):
    """Guo et al.'s movement encoder: (B, T, D-4) -> (B, T/4, output), two Conv1d (kernel 4,
    stride 2, padding 1) each followed by Dropout(0.2) and LeakyReLU(0.2), then a Linear."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.main = nn.Sequential(nn.Conv1d(input_size, hidden_size, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2),
                                  nn.Conv1d(hidden_size, output_size, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2))
        self.out_net = nn.Linear(output_size, output_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.main(inputs.permute(0, 2, 1)).permute(0, 2, 1)  # (B, T//4, output)
        return self.out_net(outputs)


class TextEncoderBiGRUCo(nn.Module):
    """Guo et al.'s text encoder: word vector + Linear(POS one-hot) -> Linear -> bidirectional GRU
    from the learned state `hidden` -> last states of both directions -> output MLP."""

    def __init__(self, word_size: int, pos_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.input_emb = nn.Linear(word_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = output_head(2 * hidden_size, hidden_size, output_size)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))  # (directions, 1, H)

    def forward(self, word_embs: torch.Tensor, pos_onehot: torch.Tensor, cap_lens: torch.Tensor) -> torch.Tensor:
        """word_embs (B, L, 300), pos_onehot (B, L, 15), cap_lens (B,) sorted longest first -> (B, E)."""
        x = self.input_emb(word_embs + self.pos_emb(pos_onehot))  # (B, L, H)
        packed = nn.utils.rnn.pack_padded_sequence(x, cap_lens.tolist(), batch_first=True)
        _, last = self.gru(packed, self.hidden.repeat(1, x.shape[0], 1))  # (2, B, H)
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))  # (B, 2H) -> (B, E)


class MotionEncoderBiGRUCo(nn.Module):
    """Guo et al.'s motion encoder: Linear -> bidirectional GRU from the learned state `hidden`
    over the movement steps -> last states of both directions -> output MLP."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = output_head(2 * hidden_size, hidden_size, output_size)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))  # (directions, 1, H)

    def forward(self, inputs: torch.Tensor, m_lens: torch.Tensor) -> torch.Tensor:
        """inputs (B, T', 512) movements, m_lens (B,) steps, sorted longest first -> (B, E)."""
        x = self.input_emb(inputs)  # (B, T', H)
        packed = nn.utils.rnn.pack_padded_sequence(x, m_lens.tolist(), batch_first=True)
        _, last = self.gru(packed, self.hidden.repeat(1, x.shape[0], 1))  # (2, B, H)
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))  # (B, 2H) -> (B, E)


@dataclass
class T2MEvaluatorConfig:
    dim_word: int = 300                # Guo evaluator_wrapper.py; MLD base.yaml t2m_textencoder.dim_word
    dim_pos_ohot: int = 15             # len(POS_enumerator); MLD dim_pos_ohot
    dim_text_hidden: int = 512         # Guo evaluator_wrapper.py; MLD dim_text_hidden
    dim_coemb_hidden: int = 512        # both encoders' output E; MLD dim_coemb_hidden / dim_motion_latent
    dim_movement_enc_hidden: int = 512  # Guo base_options.py; MLD dim_move_hidden
    dim_movement_latent: int = 512     # Guo base_options.py; MLD dim_move_latent
    dim_motion_hidden: int = 1024      # Guo evaluator_wrapper.py; MLD dim_motion_hidden
    max_text_len: int = 20             # Guo evaluator_wrapper.py; MLD DATASET.SAMPLER.MAX_TEXT_LEN
    unit_length: int = 4               # Guo base_options.py; MLD DATASET.HUMANML3D/KIT.UNIT_LEN
    # ours, for an evaluator trained here (the released one: False)
    mask_padding: bool = False  # frames past a length read as zeros, however long the padding
    temperature: float = 0.1    # InfoNCE temperature of metrics.embedder_loss (Guo et al.: a margin loss)
    min_word_count: int = 2     # training-caption words seen fewer times share unk's learned vector


def _valid(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) mask, True on the first lengths[b] steps."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class T2MEvaluator(nn.Module):
    """Guo et al.'s evaluator, loaded (`from_official`: the released weights, GloVe, its own
    mean/std) or trained here (`trained`: learned word vectors over the training captions'
    lemmas, their POS tags read by a `Lexicon`, the training split's mean/std).

    `embed_texts` and `embed_motions` give the E-d features the papers' FID, R-precision, MMdist,
    Diversity and MModality are computed on. Both take a batch in any order and return it in that
    order (the official encoders need it sorted longest first; the sorting is undone here).
    metrics.py's interface: `tokenizer(captions)` (a trained evaluator's lexicon; the released
    one reads the dataset's tagged captions through DatasetEvaluator), `encode_text(tokens)` and
    `encode_motion(x, lengths)` on features already in this evaluator's normalisation."""

    def __init__(self, cfg: T2MEvaluatorConfig, feat_dim: int, mean, std, vectorizer: WordVectorizer,
                 lexicon: Lexicon | None = None):
        super().__init__()
        assert feat_dim > FOOT_CONTACT_DIMS, (
            f"motion features must hold more than the {FOOT_CONTACT_DIMS} foot contacts, got {feat_dim}")
        self.cfg, self.feat_dim, self.vectorizer, self.lexicon = cfg, feat_dim, vectorizer, lexicon
        self.word_emb = nn.Embedding(len(vectorizer.words), cfg.dim_word)  # GloVe's rows, or learned
        self.text_encoder = TextEncoderBiGRUCo(cfg.dim_word, cfg.dim_pos_ohot, cfg.dim_text_hidden,
                                               cfg.dim_coemb_hidden)
        self.movement_encoder = MovementConvEncoder(feat_dim - FOOT_CONTACT_DIMS, cfg.dim_movement_enc_hidden,
                                                    cfg.dim_movement_latent)
        self.motion_encoder = MotionEncoderBiGRUCo(cfg.dim_movement_latent, cfg.dim_motion_hidden,
                                                   cfg.dim_coemb_hidden)
        # the evaluator's own normalisation (Comp_v6_KLD01/meta), not the dataset's Mean.npy / Std.npy
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))  # (D,)
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32))  # (D,)

    @classmethod
    def from_official(cls, t2m_dir, glove_dir, dataset: str = "t2m") -> "T2MEvaluator":
        """The released evaluator in MLD's deps layout, in eval mode without gradients:
        {t2m_dir}/{dataset}/text_mot_match/model/finest.tar (state dicts text_encoder,
        movement_encoder, motion_encoder), {t2m_dir}/{dataset}/Comp_v6_KLD01/meta/{mean,std}.npy
        (KIT: Comp_v6_KLD005) and GloVe {glove_dir}/our_vab_{data.npy,words.pkl,idx.pkl}."""
        if dataset not in T2M_DATASETS:
            raise ValueError(f"dataset must be one of {sorted(T2M_DATASETS)}, got {dataset!r}")
        feat_dim, comp = T2M_DATASETS[dataset]
        root = Path(t2m_dir) / dataset
        finest = root / "text_mot_match" / "model" / "finest.tar"
        stats = {}
        for name in ("mean", "std"):
            stats[name] = _load_npy(root / comp / "meta" / f"{name}.npy")
            if stats[name].shape != (feat_dim,):
                raise ValueError(f"{root / comp / 'meta' / name}.npy: expected shape ({feat_dim},) for "
                                 f"{dataset}, got {stats[name].shape}")
        vectorizer, vectors = WordVectorizer.from_glove_dir(glove_dir)
        cfg = T2MEvaluatorConfig(dim_word=vectors.shape[1])
        model = cls(cfg, feat_dim, stats["mean"], stats["std"], vectorizer)
        model.word_emb.weight.data.copy_(torch.as_tensor(vectors, dtype=torch.float32))
        checkpoint = safe_pickle.load_torch_checkpoint(finest)
        for part in ("text_encoder", "movement_encoder", "motion_encoder"):
            if not isinstance(checkpoint, dict) or part not in checkpoint:
                raise ValueError(f"{finest}: expected a dict with the state dict {part!r}")
            try:
                getattr(model, part).load_state_dict(checkpoint[part], strict=True)
            except RuntimeError as error:
                raise ValueError(f"{finest}: {part} does not fit Guo et al.'s layout: {error}") from error
        return model.eval().requires_grad_(False)

    @classmethod
    def trained(cls, cfg: T2MEvaluatorConfig, feat_dim: int, tagged: dict[str, str]) -> "T2MEvaluator":
        """A new evaluator to train on a dataset whose training split's tagged captions are
        `tagged` (caption -> "lemma/POS ..."): its vocabulary is their lemmas seen at least
        cfg.min_word_count times (plus sos, eos, unk), its normalisation the identity (it reads
        the dataset's normalised features). `meta()` holds what rebuilds it from a checkpoint."""
        lexicon = Lexicon.from_tagged(tagged)
        counts: dict[str, int] = {}
        for caption in tagged:
            for token in lexicon(caption):
                counts[token.split("/")[0]] = counts.get(token.split("/")[0], 0) + 1
        words = ["sos", "eos", "unk"] + sorted(w for w, n in counts.items()
                                               if n >= cfg.min_word_count and w not in ("sos", "eos", "unk"))
        return cls(cfg, feat_dim, torch.zeros(feat_dim), torch.ones(feat_dim), WordVectorizer(words), lexicon)

    def meta(self) -> dict:
        """Plain data (weights_only-safe) that, with the config and state dict, rebuilds this
        trained evaluator: `T2MEvaluator.rebuild(cfg, meta)`."""
        assert self.lexicon is not None, "the released evaluator is rebuilt with from_official"
        return {"feat_dim": self.feat_dim, "words": self.vectorizer.words, "lexicon": self.lexicon.table}

    @classmethod
    def rebuild(cls, cfg: T2MEvaluatorConfig, meta: dict) -> "T2MEvaluator":
        D = meta["feat_dim"]
        return cls(cfg, D, torch.zeros(D), torch.ones(D), WordVectorizer(meta["words"]), Lexicon(meta["lexicon"]))

    def embed_texts(self, tokens: list[list[str]]) -> torch.Tensor:
        """Per caption its `word/POS` tokens (a HumanML3D texts line's second field, split on
        spaces) -> (B, E), in input order."""
        rows, tags, sent_len = zip(*(self.vectorizer.caption(t, self.cfg.max_text_len) for t in tokens))
        sent_len = torch.tensor(sent_len)  # (B,)
        # Guo et al.'s collate_fn sorts the batch by sentence length, longest first
        order = torch.argsort(sent_len, descending=True, stable=True)
        device = self.mean.device
        rows = torch.as_tensor(np.stack(rows)[order.numpy()], device=device)  # (B, 22) sorted
        words = self.word_emb(rows)  # (B, 22, dim_word)
        tags = torch.as_tensor(np.stack(tags)[order.numpy()], dtype=torch.float32, device=device)  # (B, 22, 15)
        emb = self.text_encoder(words, tags, sent_len[order])  # (B, E) sorted
        return emb[torch.argsort(order).to(device)]

    def embed_motions(self, features: torch.Tensor, lengths) -> torch.Tensor:
        """features (B, T, D) DE-normalised (the dataset's Mean/Std undone), lengths (B,) -> (B, E),
        in input order.

        note: with the released evaluator (mask_padding False), frames past a length enter the
        convolutions as given, as in Guo et al.'s and MLD's code (the strided windows at a clip's
        end read up to two of them). MLD passes its batch zero-padded in the dataset's
        normalisation, i.e. padded with Mean once de-normalised."""
        return self.encode_motion((features - self.mean) / self.std, lengths)

    def encode_motion(self, x: torch.Tensor, lengths) -> torch.Tensor:
        """x (B, T, D) in this evaluator's normalisation, lengths (B,) -> (B, E), in input order."""
        B, T, D = x.shape
        assert D == self.feat_dim, f"this evaluator reads {self.feat_dim}-d features, got {D}"
        lengths = torch.as_tensor(lengths, device=x.device).long()
        assert lengths.shape == (B,), f"expected one length per motion, got {tuple(lengths.shape)}"
        unit = self.cfg.unit_length
        if int(lengths.min()) < unit or int(lengths.max()) > T:
            raise ValueError(f"motion lengths must lie in [{unit}, T={T}] ({unit} frames make one GRU "
                             f"step), got {lengths.tolist()}")
        # sorted longest first (Guo et al.'s align_idx), foot contacts dropped, unit length 4
        order = torch.argsort(lengths, descending=True, stable=True)
        x, lengths = x[order][..., : D - FOOT_CONTACT_DIMS], lengths[order]
        movements = self._masked_movements(x, lengths) if self.cfg.mask_padding else self.movement_encoder(x)
        emb = self.motion_encoder(movements, lengths // unit)  # (B, E) sorted
        return emb[torch.argsort(order)]

    def _masked_movements(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The movement encoder with frames past each length, and first-convolution outputs past
        lengths // 2, set to zero: the strided windows at a clip's end then read the same zeros
        however long its batch's padding is (an evaluator trained here; not the released one)."""
        conv1, drop1, act1, conv2, drop2, act2 = self.movement_encoder.main
        h = act1(drop1(conv1((x * _valid(lengths, x.shape[1])[..., None]).transpose(1, 2))))  # (B, H, T//2)
        h = h * _valid(lengths // 2, h.shape[-1])[:, None, :]
        h = act2(drop2(conv2(h)))  # (B, latent, T//4)
        return self.movement_encoder.out_net(h.transpose(1, 2))  # (B, T//4, latent)

    def tokenizer(self, captions: list[str]) -> "CaptionTokens":
        """Captions -> their `lemma/POS` tokens read by this evaluator's lexicon."""
        if self.lexicon is None:
            raise ValueError("the released evaluator reads the dataset's tagged captions: wrap it in "
                             "DatasetEvaluator (train.py does for --evaluator t2m)")
        return CaptionTokens(self.lexicon(c) for c in captions)

    def encode_text(self, tokens: list[list[str]]) -> torch.Tensor:
        return self.embed_texts(tokens)


# ---------------------------------------------------------------------------------------
# The evaluator behind metrics.py's embedder interface


class CaptionTokens(list):
    """Captions as word/POS token lists; `.to(device)` returns them unchanged, so they pass
    where metrics.py moves a tokenizer's ids to the evaluator's device."""

    def to(self, device) -> "CaptionTokens":
        return self


class DatasetEvaluator(nn.Module):
    """The released T2MEvaluator for one dataset, with the interface evaluation.evaluate calls: `tokenizer(captions)` looks up each caption's word/POS tokens in the
    dataset's texts/ files (`tags`: caption -> "word/POS ..."), `encode_text(tokens)`, and
    `encode_motion(x, lengths)` on the dataset's normalized features, de-normalised here with
    its Mean/Std before the evaluator renormalises them with its own (as MLD's renorm4t2m)."""

    def __init__(self, evaluator: T2MEvaluator, mean, std, tags: dict[str, str]):
        super().__init__()
        self.evaluator, self.tags = evaluator, tags
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))  # (D,)
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32))    # (D,)

    def tokenizer(self, captions: list[str]) -> CaptionTokens:
        missing = [c for c in captions if c not in self.tags]
        if missing:
            raise ValueError(f"no word/POS tokens for the caption {missing[0]!r}: Guo et al.'s evaluator "
                             f"reads the tagged captions of the dataset's texts/*.txt")
        return CaptionTokens(self.tags[c].split() for c in captions)

    def encode_text(self, tokens: list[list[str]]) -> torch.Tensor:
        return self.evaluator.embed_texts(tokens)                                       # (B, 512)

    def encode_motion(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.evaluator.embed_motions(motion * self.std + self.mean, lengths)     # (B, 512)
