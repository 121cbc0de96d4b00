"""Tests for clip_tokenizer.py: parity with transformers.CLIPTokenizer, hand-worked BPE cases,
round trips of the files."""
import gzip
import html
import json
import random

import pytest
import regex
import torch

ftfy = pytest.importorskip("ftfy")  # a runtime requirement of clip.py; without it HF's slow tokenizer falls back
transformers = pytest.importorskip("transformers")

import clip_tokenizer  # noqa: E402

# ----------------------------------------------------------------------------------------
# Strings for the parity test

SUBJECTS = ["a person", "the man", "A woman", "someone", "The Figure", "he", "she", "a child", "an old man",
            "a dancer", "the athlete", "a SOLDIER"]
VERBS = ["walks", "jogs", "runs", "jumps", "waves", "kicks", "squats", "turns", "side-steps", "punches",
         "claps", "raises", "stands", "limps", "skips", "marches", "tiptoes", "spins", "crawls", "bows"]
TAILS = ["forward", "backward", "to the left", "to the right", "in a circle", "clockwise",
         "counterclockwise", "slowly", "quickly", "with the left hand", "with the right leg",
         "then stops.", "twice!", "3 times", "and then sits down", "like a zombie", "on tiptoes",
         "while waving both arms", "it's tired", "they're happy", "we'll see", "i'd say", "(carefully)"]
HAND_WRITTEN = [
    "", " ", "   \t\n  ", ".", "!!!", "?!?!...", "---", "((((x))))", "''", "'s", "'S", "it's IT'S it'S",
    "rock'n'roll", "they'll've", "o'clock", "don't stop", "A PERSON WALKS", "MiXeD CaSe WaLk",
    "café naïve façade résumé", "ÉCOLE Ångström", "Straße", "Ὀδυσσεύς", "Москва идёт", "東京で走る人",
    "사람이 걷는다", "مرحبا بالعالم", "नमस्ते दुनिया", "ปลาทอง", "emoji 🤖🎉🕺💃", "👍🏽 thumbs",
    "family 👨‍👩‍👧", "flag 🇫🇷🇯🇵", "heart ❤️ and ✨stars✨", "math ∑∫√π≈", "arrows → ← ↑ ↓",
    "tabs\tand\nnewlines\r\nhere", "no\u00a0break\u00a0space", "zero\u200bwidth", "1234567890",
    "3.14159", "1,000,000 steps", "v2.0-beta_3", "email@example.com", "http://x.org/a?b=c&d=e",
    "#hashtag @mention $100 50% ^caret* ~tilde` |pipe|", "<b>bold</b>", "<|startoftext|>",
    "a <|endoftext|> b", "walk<|endoftext|>", "____", "a_b_c", "x" * 300, "ab " * 100,
    "a person walks " * 20, "1 2 3 4 5 6 7 8 9 0 " * 10, "!?" * 80,
]
# Strings that OpenAI's clean-up changes but transformers >= 5 (whose CLIPTokenizer is the
# `tokenizers` one: NFC + whitespace + lower case, no ftfy, no HTML unescape) does not.
NEEDS_CLEANING = [
    "fish &amp; chips", "&lt;tag&gt;", "&quot;quoted&quot;", "it&#39;s", "&amp;amp; twice", "a&nbsp;b",
    "&eacute;t&eacute;", "“curly” ‘quotes’", "ﬁne ﬂow", "Ｆｕｌｌ ｗｉｄｔｈ", "mojibake Ã©tÃ©",
    "ΟΔΟΣ ΚΑΙ ΛΟΓΟΣ", "x\x1cy", "<b>&amp;</b>",
]


def random_strings(n, seed=0):
    """Deterministic random strings over letters, digits, punctuation, spaces and non-ASCII."""
    pool = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            " .,;:!?'\"()[]{}-_/\\&*+=<>#@$%^~`|" "éèüößçñåøæœЖжλπ中文字😀🎉✓→ ")
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def captions(n, seed=0):
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(TAILS)}" for _ in range(n)]


PARITY_STRINGS = HAND_WRITTEN + captions(80, seed=1) + random_strings(80, seed=2)


def openai_clean(text):
    """OpenAI's simple_tokenizer clean-up, written independently of clip.py."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """A BPE trained on a few hundred varied sentences (so merges are exercised)."""
    texts = captions(300, seed=0) + HAND_WRITTEN + random_strings(40, seed=3)
    return clip_tokenizer.train_bpe(texts, 1200, tmp_path_factory.mktemp("bpe"))


def hf_ids(hf, texts):
    return hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------
# Tokenizer


def test_bytes_to_unicode_is_a_printable_bijection():
    table = clip_tokenizer.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and list(table)[0] == ord("!")


def test_bpe_hand_worked_example():
    """The example of clip_tokenizer.bpe's docstring."""
    ranks = {("l", "o"): 0, ("lo", "w</w>"): 1, ("e", "r</w>"): 2, ("lo", "w"): 3}
    assert clip_tokenizer.bpe(clip_tokenizer.word_to_symbols("lower"), ranks) == ["low", "er</w>"]
    assert clip_tokenizer.bpe(clip_tokenizer.word_to_symbols("low"), ranks) == ["low</w>"]
    assert clip_tokenizer.merge_pair(["a", "a", "a"], ("a", "a")) == ["aa", "a"]
    assert clip_tokenizer.word_to_symbols("é") == ["Ã", "©</w>"]


def test_train_bpe_hand_worked_example(tmp_path):
    """The example of clip_tokenizer.train_bpe's docstring."""
    clip_tokenizer.train_bpe(["hug hug pug", "pun bun hug"], 600, tmp_path)
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges == ["#version: 0.2", "u g</w>", "h ug</w>", "u n</w>", "b un</w>", "p ug</w>", "p un</w>"]
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 520 and vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["ug</w>"] == 512
    assert vocab["<|startoftext|>"] == 518 and vocab["<|endoftext|>"] == 519
    tok = clip_tokenizer.Tokenizer.from_pretrained(tmp_path)
    assert tok.encode("Hug, pun!") == [vocab["hug</w>"], vocab[",</w>"], vocab["pun</w>"], vocab["!</w>"]]


def test_train_bpe_respects_vocab_size_and_is_deterministic(tmp_path):
    texts = captions(200)
    clip_tokenizer.train_bpe(texts, 600, tmp_path / "a")
    clip_tokenizer.train_bpe(list(reversed(texts)), 600, tmp_path / "b")
    assert len(json.loads((tmp_path / "a" / "vocab.json").read_text(encoding="utf-8"))) == 600
    assert (tmp_path / "a" / "merges.txt").read_bytes() == (tmp_path / "b" / "merges.txt").read_bytes()
    with pytest.raises(ValueError, match="514"):
        clip_tokenizer.train_bpe(texts, 300, tmp_path / "c")


def test_parity_with_transformers_clip_tokenizer(vocab_dir):
    """Identical (B, 77) ids to transformers.CLIPTokenizer built from the same files."""
    hf = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    assert len(PARITY_STRINGS) + len(NEEDS_CLEANING) >= 200
    assert len(tok) == len(hf) and tok.sot_id == hf.bos_token_id and tok.eot_id == hf.eos_token_id
    ours = tok(PARITY_STRINGS)
    assert ours.shape == (len(PARITY_STRINGS), 77) and ours.dtype == torch.long
    theirs = hf_ids(hf, PARITY_STRINGS)
    for text, a, b in zip(PARITY_STRINGS, ours, theirs):
        assert a.tolist() == b.tolist(), f"mismatch on {text!r}"
    # The merges were exercised: most caption words are one token.
    assert sum(len(tok.encode(c)) for c in captions(50)) < 1.5 * sum(len(c.split()) for c in captions(50))
    # Texts that need OpenAI's clean-up: same ids once that clean-up is applied for transformers.
    ours = tok(NEEDS_CLEANING)
    theirs = hf_ids(hf, [openai_clean(t) for t in NEEDS_CLEANING])
    for text, a, b in zip(NEEDS_CLEANING, ours, theirs):
        assert a.tolist() == b.tolist(), f"mismatch on {text!r}"


def test_cleaning_follows_openai():
    assert clip_tokenizer.normalize("Fish &amp;amp; Chips") == "fish & chips"
    assert clip_tokenizer.normalize("“Hi”  \t there\n") == '"hi" there'
    assert clip_tokenizer.normalize("ﬁne Ｆｕｌｌ Ã©tÃ©") == "fine full été"
    assert clip_tokenizer.normalize("ΟΔΟΣ") == "οδος"  # Python's lower() knows the final sigma
    assert clip_tokenizer.pretokenize("It's 2 cats!!") == ["it", "'s", "2", "cats", "!!"]


def test_truncation_keeps_the_end_token(vocab_dir):
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    long_text = "a person walks forward " * 40
    ids = tok([long_text, "hi"])
    assert ids[0, 0] == tok.sot_id and ids[0, -1] == tok.eot_id
    assert ids[0, 1:-1].tolist() == tok.encode(long_text)[:75]
    assert ids[1, :4].tolist() == [tok.sot_id, *tok.encode("hi"), tok.eot_id][:4]
    assert (ids[1, 2 + len(tok.encode("hi")):] == tok.pad_id).all()
    with pytest.raises(TypeError):
        tok("a single string")


def test_encode_decode_round_trip(vocab_dir):
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    assert tok.decode(tok.encode("A person walks in a circle")) == "a person walks in a circle"
    assert tok.decode(tok(["hi, you!"])[0]) == "hi , you !"
    for text in PARITY_STRINGS:
        if "<|" in text:  # decode drops special tokens
            continue
        ids = tok.encode(text)
        assert tok.encode(tok.decode(ids)) == ids, f"round trip failed on {text!r}"


def test_other_file_formats_and_save_pretrained_round_trip(vocab_dir, tmp_path):
    """OpenAI's merges-only .gz and a tokenizer.json give the same tokenizer; save -> load is exact."""
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    lines = (vocab_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    gz = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(lines) + "\n")
    hf = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
    (tmp_path / "json").mkdir()
    hf.backend_tokenizer.save(str(tmp_path / "json" / "tokenizer.json"))  # the `tokenizers` format
    for other in (clip_tokenizer.Tokenizer.from_pretrained(gz), clip_tokenizer.Tokenizer.from_pretrained(tmp_path),
                  clip_tokenizer.Tokenizer.from_pretrained(tmp_path / "json")):
        assert other.encoder == tok.encoder
        assert other(PARITY_STRINGS).equal(tok(PARITY_STRINGS))
    saved = clip_tokenizer.Tokenizer.from_pretrained(tok.save_pretrained(tmp_path / "saved"))
    assert saved.encoder == tok.encoder and saved.ranks == tok.ranks
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        clip_tokenizer.Tokenizer.from_pretrained(tmp_path / "nothing")


def test_added_token_is_atomic_and_matches_transformers(vocab_dir):
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    hf = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
    before = tok.encode("(<*>)")
    new_id = tok.add_token("<*>")
    hf.add_tokens(["<*>"])
    assert new_id == len(tok) - 1 == hf.convert_tokens_to_ids("<*>")
    texts = ["a person <*> forward", "(<*>)", "<*><*>", "The man <*>, then <*>!", "x<*>y"]
    assert tok(texts).equal(hf_ids(hf, texts))
    assert new_id not in before and tok.encode("(<*>)").count(new_id) == 1
    assert tok.decode(tok.encode("a person <*> forward")) == "a person <*> forward"
    with pytest.raises(ValueError):
        tok.add_token("<*>")
    with pytest.raises(ValueError):
        tok.add_token("Upper")


def test_check_fits_names_a_prompt_longer_than_the_context(vocab_dir):
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    tok.check_fits(["a person walks"])
    n = len(tok.encode("walks " * 100)) + 2
    with pytest.raises(ValueError, match=rf"--text is {n} tokens long, more than the text encoder's 77: 'walks walks"):
        tok.check_fits(["a person walks", "walks " * 100], "--text")
