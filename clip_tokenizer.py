"""CLIP's tokenizer, written by hand: byte-level BPE, and a small BPE trainer for the offline default.

Paper: CLIP (Radford et al. 2021, arXiv 2103.00020), the text encoder of every paper here; the
code follows OpenAI's `simple_tokenizer.py` step by step:
  1. clean the text: ftfy.fix_text, HTML unescape (twice), collapse whitespace, lower case;
  2. split it into words with CLIP's regex (letter runs, single digits, punctuation runs,
     English contractions);
  3. map each word's UTF-8 bytes to printable unicode characters (`bytes_to_unicode`), so BPE
     never meets a space or a control character and never needs an unknown token;
  4. apply the BPE merges in rank order, the last symbol of a word carrying `</w>`;
  5. look the symbols up in the vocabulary, frame with <|startoftext|> ... <|endoftext|>,
     pad/truncate to 77 positions keeping the end token.
The vocabulary layout is CLIP's: 256 byte symbols, the same 256 with `</w>`, one entry per
merge, then the two special tokens (49408 = 256 + 256 + 48,894 merges + 2 for real CLIP).
Without `--clip` (no network) `train_bpe` learns merges from the training captions instead.

But (differences from OpenAI's tokenizer):
- Padding uses the end token's id (as Hugging Face's CLIP tokenizer), not 0. Attention is
  causal, so the state at the end token, and hence c, is the same either way.
- Special tokens and words added with `add_token` (motion textual inversion's "<*>") are split
  off before the regex (as Hugging Face does), so a placeholder stays one token even inside "(<*>)".

Glossary: L tokens (77).
"""
import gzip
import html
import json
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch


CONTEXT_LENGTH = 77  # CLIP's text context, all released models
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
# OpenAI's bpe_simple_vocab_16e6.txt.gz holds ~262k merges, CLIP uses the first 48,894:
# 49408 (vocabulary) - 256 (bytes) - 256 (bytes + </w>) - 2 (special tokens).
OPENAI_N_MERGES = 49408 - 256 - 256 - 2

# ----------------------------------------------------------------------------------------
# 1-2. Text clean-up and pre-tokenisation


def basic_clean(text: str) -> str:
    """Repair mojibake, curly quotes, ligatures and full-width forms (ftfy, which also applies
    NFC), then decode HTML entities; twice, because captions scraped from the web are often
    escaped twice ("&amp;amp;")."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapse every run of whitespace (tabs, newlines, no-break spaces) to one space."""
    return regex.sub(r"\s+", " ", text).strip()


def normalize(text: str) -> str:
    """What CLIP does to a caption before splitting it: clean, collapse spaces, lower case."""
    return whitespace_clean(basic_clean(text)).lower()


# CLIP's word splitter, read alternative by alternative (tried left to right at each position):
WORD_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d"""  # English contractions become their own words ("it" "'s")
    r"""|[\p{L}]+"""                 # a run of letters in any script
    r"""|[\p{N}]"""                  # ONE digit: numbers are spelled digit by digit
    r"""|[^\s\p{L}\p{N}]+""",        # a run of anything else that is not a space (punctuation, emoji)
    regex.IGNORECASE,
)
# note: whitespace matches no alternative, so `findall` drops it: a word never holds a space.
# OpenAI's pattern also starts with the two special tokens; here they are split off earlier.


def pretokenize(text: str) -> list[str]:
    """Cleaned, lower-cased words of `text`, as CLIP's BPE sees them."""
    return WORD_PATTERN.findall(normalize(text))


# ----------------------------------------------------------------------------------------
# 3. Bytes as printable unicode characters


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to 256 printable characters.

    The 188 bytes that are already visible Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ')
    map to themselves; the other 68 (space, control codes, ...) are moved, in order, to
    chr(256), chr(257), ... So the space byte 0x20 becomes 'Ġ' (chr(288)). The dict is in
    vocabulary order: its values are CLIP's token ids 0..255.
    """
    visible = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = list(visible)
    chars = list(visible)
    n_moved = 0
    for b in range(256):
        if b not in visible:
            byte_values.append(b)
            chars.append(256 + n_moved)
            n_moved += 1
    return dict(zip(byte_values, map(chr, chars)))


def word_to_symbols(word: str) -> list[str]:
    """A pre-tokenised word as its starting BPE symbols: one per UTF-8 byte, the last one
    marked with `</w>`. "hug" -> ['h', 'u', 'g</w>']; "é" (2 bytes) -> ['Ã', '©</w>']."""
    byte_encoder = bytes_to_unicode()
    symbols = [byte_encoder[b] for b in word.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return symbols


# ----------------------------------------------------------------------------------------
# 4. Byte-pair encoding


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of `pair`, scanning left to right, by the
    concatenated symbol. merge_pair(['a', 'a', 'a'], ('a', 'a')) -> ['aa', 'a']."""
    merged = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the pair with the lowest rank (earliest learned) until no known pair is left.

    Hand-worked example, ranks {('l','o'): 0, ('lo','w</w>'): 1, ('e','r</w>'): 2, ('lo','w'): 3}:
      "lower" starts as  l  o  w  e  r</w>   pairs (l,o)=0 (o,w)=- (w,e)=- (e,r</w>)=2
      merge rank 0  ->   lo w  e  r</w>      pairs (lo,w)=3 (w,e)=- (e,r</w>)=2
      merge rank 2  ->   lo w  er</w>        pairs (lo,w)=3 (w,er</w>)=-
      merge rank 3  ->   low er</w>          pairs (low,er</w>)=-   -> done
      "low"   starts as  l  o  w</w>  -> lo w</w> -> low</w>      (rank 1 applies here)
    The order matters: 'er</w>' is formed before 'low' although it appears later in the word.
    """
    while len(symbols) > 1:
        pairs = set(zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        symbols = merge_pair(symbols, best)
    return symbols


# ----------------------------------------------------------------------------------------
# 5. The tokenizer


class Tokenizer:
    """CLIP's tokenizer. `encode(text)` -> BPE ids without start/end tokens;
    `tokenizer(list_of_texts)` -> LongTensor (B, 77): [sot] ids [eot] [eot]... (pad = eot)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
                 context_length: int = CONTEXT_LENGTH):
        for token in (SOT, EOT):
            if token not in vocab:
                raise ValueError(f"the vocabulary has no {token!r}; is it a CLIP vocabulary?")
        for a, b in merges:
            if a + b not in vocab:
                raise ValueError(f"merge ({a!r}, {b!r}) makes {a + b!r}, which is not in the vocabulary")
        assert context_length >= 2, "the context must hold at least the start and end tokens"
        self.encoder = dict(vocab)  # str -> int
        self.decoder = {i: token for token, i in self.encoder.items()}  # int -> str
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # (str, str) -> int
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}  # str -> int
        self.context_length = context_length
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self.pad_id = self.eot_id
        self.added: dict[str, int] = {}  # word -> id, for words added by add_token
        self.cache: dict[str, tuple[int, ...]] = {}  # pre-tokenised word -> its BPE ids
        self._update_split_pattern()

    # --- loading and saving

    @classmethod
    def from_pretrained(cls, path) -> "Tokenizer":
        """Read a Hugging Face CLIP folder (vocab.json + merges.txt, or tokenizer.json) or
        OpenAI's bpe_simple_vocab_16e6.txt.gz (the file or a folder holding it)."""
        path = Path(path)
        if path.is_dir() and (path / "vocab.json").exists() and (path / "merges.txt").exists():
            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
            return cls(vocab, _parse_merges(lines))
        if path.is_dir() and (path / "tokenizer.json").exists():
            model = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            return cls(model["vocab"], merges)
        if path.is_dir() and (path / "bpe_simple_vocab_16e6.txt.gz").exists():
            path = path / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file() and path.name.endswith(".gz"):
            return cls.from_openai_merges(path)
        raise FileNotFoundError(
            f"{path}: expected a folder with vocab.json + merges.txt (or tokenizer.json), "
            "or OpenAI's bpe_simple_vocab_16e6.txt.gz"
        )

    @classmethod
    def from_openai_merges(cls, gz_path) -> "Tokenizer":
        """OpenAI ships only the merges; the vocabulary is rebuilt in CLIP's layout."""
        with gzip.open(gz_path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        merges = _parse_merges(lines)[:OPENAI_N_MERGES]
        return cls(build_vocab(merges), merges)

    def save_pretrained(self, out_dir) -> Path:
        """Write vocab.json + merges.txt (Hugging Face format). Words added with add_token are
        not written: they belong to an experiment, which re-adds them."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        base_vocab = {t: i for t, i in self.encoder.items() if t not in self.added}
        merges = sorted(self.ranks, key=self.ranks.get)
        _write_vocab(out_dir, base_vocab, merges)
        return out_dir

    # --- added words (textual inversion)

    def add_token(self, word: str) -> int:
        """Add `word` (say "<*>") as one token with the next free id; encode keeps it atomic."""
        if not word or regex.search(r"\s", word):
            raise ValueError(f"an added token must be one non-empty word without spaces, got {word!r}")
        if word != normalize(word):
            raise ValueError(f"added tokens are matched in cleaned, lower-cased text; {word!r} would "
                             f"never match (use {normalize(word)!r})")
        if word in self.added or word in (SOT, EOT):
            raise ValueError(f"{word!r} is already a special or added token")
        token_id = len(self.encoder)
        self.encoder[word] = token_id
        self.decoder[token_id] = word
        self.added[word] = token_id
        self._update_split_pattern()
        return token_id

    def _update_split_pattern(self):
        # Special and added tokens are cut out of the text before the word regex runs; the
        # capturing group keeps them in `split`'s output. Longest first, so "<**>" beats "<*>".
        atomic = sorted([SOT, EOT, *self.added], key=len, reverse=True)
        self.split_pattern = regex.compile("(" + "|".join(regex.escape(w) for w in atomic) + ")")

    # --- encoding and decoding

    def __len__(self) -> int:
        return len(self.encoder)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added words included."""
        return len(self.encoder)

    def word_ids(self, word: str) -> tuple[int, ...]:
        """BPE ids of one pre-tokenised word, cached (a caption set has few distinct words)."""
        if word not in self.cache:
            symbols = bpe(word_to_symbols(word), self.ranks)
            self.cache[word] = tuple(self.encoder[s] for s in symbols)
        return self.cache[word]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without the start and end tokens."""
        ids = []
        # Odd pieces of the split are special or added tokens, even pieces ordinary text.
        for i, piece in enumerate(self.split_pattern.split(normalize(text))):
            if i % 2 == 1:
                ids.append(self.encoder[piece])
            else:
                for word in WORD_PATTERN.findall(piece):
                    ids.extend(self.word_ids(word))
        return ids

    def check_fits(self, texts: list[str], source: str = "a prompt") -> None:
        """A ValueError naming the first of `texts` longer than the context (77 tokens with the
        start and end tokens): the encoder would silently read only its beginning."""
        for text in texts:
            n = len(self.encode(text)) + 2
            if n > self.context_length:
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise ValueError(f"{source} is {n} tokens long, more than the text encoder's {self.context_length}: "
                                 f"{shown!r}; shorten it (the encoder would read only its first "
                                 f"{self.context_length - 2} tokens)")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B,) captions -> LongTensor (B, L): [sot] ids [eot] pad ..., L = context_length."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer expects a list of captions; wrap a single caption in a list")
        L = self.context_length
        out = torch.full((len(texts), L), self.pad_id, dtype=torch.long)  # (B, L)
        for b, text in enumerate(texts):
            # note: truncate the text, not the framed sequence, so the end token always survives
            row = [self.sot_id, *self.encode(text)[: L - 2], self.eot_id]
            out[b, : len(row)] = torch.tensor(row)
        return out

    def decode(self, ids) -> str:
        """Text of `ids` (list or 1-d tensor), special tokens dropped. Words are separated by
        one space, so punctuation comes back spaced: "hi, you" -> "hi , you"."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces, symbols = [], []
        for i in ids:
            if i in (self.sot_id, self.eot_id):
                continue
            if self.decoder[i] in self.added:
                pieces.append(self._symbols_to_text(symbols))
                pieces.append(self.decoder[i] + " ")
                symbols = []
            else:
                symbols.append(self.decoder[i])
        pieces.append(self._symbols_to_text(symbols))
        return "".join(pieces).strip()

    def _symbols_to_text(self, symbols: list[str]) -> str:
        raw = bytearray(self.byte_decoder[c] for c in "".join(symbols))
        # '<', '/', 'w', '>' are visible bytes, so `</w>` survives the byte round trip as text.
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


def _parse_merges(lines: list[str]) -> list[tuple[str, str]]:
    """merges.txt lines "a b" -> [('a', 'b')], skipping the "#version" header and blank lines."""
    if lines and "#version" in lines[0]:  # HF: "#version: 0.2"; OpenAI: "bpe_simple_vocab_16e6.txt#version: 0.2"
        lines = lines[1:]
    merges = []
    for line in lines:
        if line.strip():
            a, b = line.split()
            merges.append((a, b))
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + </w>, one token per merge, SOT, EOT.
    A merge whose result already exists (the same string reached by two merge paths) adds
    no second entry."""
    tokens = list(bytes_to_unicode().values())
    tokens += [t + END_OF_WORD for t in tokens]
    tokens += [a + b for a, b in merges]
    tokens += [SOT, EOT]
    vocab = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab


def _write_vocab(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]):
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------
# A small BPE trainer (for the offline default; real CLIP learned its merges the same way on
# a web corpus)


def train_bpe(texts: list[str], vocab_size: int, out_dir) -> Path:
    """Learn byte-level BPE merges on `texts` and write vocab.json + merges.txt in CLIP's
    layout, loadable by `Tokenizer` and by `transformers.CLIPTokenizer`.

    Words are CLIP's pre-tokenised, lower-cased words, each ending with `</w>`. Each step merges
    the most frequent adjacent pair (counted over the words, weighted by word frequency); ties
    go to the smallest pair in string order, so the result is deterministic. Training stops at
    `vocab_size` entries or when every word is a single symbol (then the vocabulary is smaller).

    Hand-worked example, texts ["hug hug pug", "pun bun hug"]:
      words  h u g</w> x3,  p u g</w> x1,  p u n</w> x1,  b u n</w> x1
      1. (u, g</w>)  4 times  -> h ug</w>, p ug</w>, p u n</w>, b u n</w>
      2. (h, ug</w>) 3        -> hug</w>, p ug</w>, p u n</w>, b u n</w>
      3. (u, n</w>)  2        -> hug</w>, p ug</w>, p un</w>, b un</w>
      4-6. three pairs tie at 1: (b, un</w>) < (p, ug</w>) < (p, un</w>)
    then no pair is left: 512 + 6 + 2 = 520 entries.
    """
    if vocab_size < 2 * 256 + 2:
        raise ValueError(f"vocab_size must be >= 514 (bytes, bytes + </w>, 2 special tokens), got {vocab_size}")
    # Step 1: distinct words as symbol lists, with their frequencies.
    counts: dict[str, int] = {}
    for text in texts:
        for word in pretokenize(text):
            counts[word] = counts.get(word, 0) + 1
    words = [word_to_symbols(w) for w in counts]  # list of symbol lists
    freqs = list(counts.values())
    # Step 2: pair counts, and which words hold each pair (updated incrementally below).
    pair_counts: dict[tuple[str, str], int] = {}
    holders: dict[tuple[str, str], set[int]] = {}
    for i in range(len(words)):
        _count_pairs(words[i], freqs[i], i, pair_counts, holders)
    # Step 3: merge the most frequent pair until the vocabulary is full or nothing is left.
    merges = []
    tokens = set(build_vocab(merges))  # grows by one per merge whose result is a new string
    while len(tokens) < vocab_size and pair_counts:
        top = max(pair_counts.values())
        best = min(pair for pair, n in pair_counts.items() if n == top)
        merges.append(best)
        tokens.add(best[0] + best[1])
        for i in sorted(holders.pop(best)):
            _count_pairs(words[i], -freqs[i], i, pair_counts, holders)
            words[i] = merge_pair(words[i], best)
            _count_pairs(words[i], freqs[i], i, pair_counts, holders)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_vocab(out_dir, build_vocab(merges), merges)
    return out_dir


def _count_pairs(symbols, freq, index, pair_counts, holders):
    """Add `freq` (negative: remove) for every adjacent pair of one word."""
    for pair in zip(symbols, symbols[1:]):
        n = pair_counts.get(pair, 0) + freq
        if n > 0:
            pair_counts[pair] = n
            holders.setdefault(pair, set()).add(index)
        else:
            pair_counts.pop(pair, None)


