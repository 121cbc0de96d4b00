"""Tests for clip.py: the text encoder against transformers' own CLIP forward, what it freezes and
trains, the offline stand-in's pretraining and report."""
import inspect
import json
import math
import random
import shutil

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import clip  # noqa: E402
import clip_tokenizer  # noqa: E402
from test_clip_tokenizer import SUBJECTS, TAILS, VERBS, captions, hf_ids, vocab_dir  # noqa: E402,F401


# ----------------------------------------------------------------------------------------
# Text encoder


def tiny_clip_folder(path, vocab_dir):
    """A tiny full CLIPModel (text + vision, like openai/clip-vit-*) saved with its tokenizer.
    Its eos_token_id is 2, as in the configs of the released OpenAI checkpoints (transformers
    then pools at argmax(ids); clip.py pools at the end token's id, the same position here)."""
    tok = clip_tokenizer.Tokenizer.from_pretrained(vocab_dir)
    text_config = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, projection_dim=24, max_position_embeddings=77,
                       bos_token_id=tok.sot_id, eos_token_id=2)
    vision_config = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=32, patch_size=16, projection_dim=24)
    config = transformers.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=24)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def text_features(model, ids):
    out = model.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


@pytest.fixture(scope="module")
def clip_dir(vocab_dir, tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"), vocab_dir)


def test_encoder_matches_transformers_get_text_features(clip_dir):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    reference = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    texts = ["a person walks forward", "", "someone jumps twice!", "a person walks " * 30]
    c, states = enc.encode(texts)
    assert c.shape == (4, 24) and states.shape == (4, 77, 32) and (enc.dim, enc.width) == (24, 32)
    ids = enc.tokenizer(texts)
    with torch.no_grad():
        expected = text_features(reference, ids)
        expected_states = reference.text_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(c, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(states, expected_states, rtol=1e-5, atol=1e-6)


def test_everything_is_frozen(clip_dir):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    assert all(not p.requires_grad for p in enc.parameters())
    assert not enc.training and not enc.model.training
    enc.train()  # a parent module calling .train() must not unfreeze CLIP
    assert not any(m.training for m in enc.modules())
    c, _ = enc.encode(["a person walks"])
    assert not c.requires_grad


def test_add_token_trains_only_its_row(clip_dir):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    c_walk, _ = enc.encode(["a person walks"])
    new_id = enc.add_token("<*>", "walks")
    assert new_id == len(enc.tokenizer) - 1
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is enc.added_embeddings and trainable[0].shape == (1, 32)
    # Initialised from "walks", so "a person <*>" starts where "a person walks" is.
    c_new, _ = enc.encode(["a person <*>"])
    torch.testing.assert_close(c_new, c_walk)
    # The end token is found by id, not by argmax(ids) (the new id is larger than eot's).
    ids = enc.tokenizer(["a person <*>"])
    eot = (ids[0] == enc.tokenizer.eot_id).nonzero()[0, 0]
    assert ids[0].argmax() != eot
    c_new.sum().backward()
    assert enc.added_embeddings.grad is not None and enc.added_embeddings.grad.abs().sum() > 0
    assert enc.word_embeddings.weight.grad is None
    with pytest.raises(ValueError, match="single-token"):
        enc.add_token("<**>", "walks " * 3)


def test_set_word_embeddings_swaps_the_table(clip_dir):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    reference = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    table = torch.randn_like(enc.word_embeddings.weight)
    c_before = enc.encode_cached(["a person walks"])
    enc.set_word_embeddings(table)
    assert not enc.word_embeddings.weight.requires_grad
    with torch.no_grad():
        reference.text_model.embeddings.token_embedding.weight.copy_(table)
        expected = text_features(reference, enc.tokenizer(["a person walks"]))
    c_after = enc.encode_cached(["a person walks"])  # the cache was cleared by the swap
    torch.testing.assert_close(c_after, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(c_before, c_after)
    with pytest.raises(ValueError, match="word table"):
        enc.set_word_embeddings(table[:-1])


def test_encode_cached_encodes_each_caption_once(clip_dir, monkeypatch):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    texts = ["a person walks", "someone runs", "a person walks"]
    seen = []
    encode_ids = enc.encode_ids
    monkeypatch.setattr(enc, "encode_ids", lambda ids: seen.append(ids) or encode_ids(ids))
    c = enc.encode_cached(texts)
    again = enc.encode_cached(list(reversed(texts)))
    assert len(seen) == 1 and seen[0].shape == (2, 5)  # 2 distinct captions, cut after [sot] a person walks [eot]
    encode = enc.encode
    assert c.shape == (3, 24) and not c.requires_grad
    torch.testing.assert_close(c, encode(texts)[0])
    torch.testing.assert_close(again, c.flip(0))


def test_device_and_dtype_follow_to(clip_dir):
    enc = clip.TextEncoder.from_pretrained(clip_dir).to(torch.float64)
    c, states = enc.encode(["a person walks"])
    assert c.dtype == torch.float64 and enc.device == torch.device("cpu")
    if torch.cuda.is_available():
        enc = enc.to("cuda")
        assert enc.encode(["a person walks"])[0].device.type == "cuda"


SMALL = dict(vocab_size=700, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, projection_dim=16)


def paraphrase_groups(n_groups, seed=0):
    """Groups of 3 captions that say one thing with different subjects ("a person jogs slowly",
    "the man jogs slowly", ...): the paraphrase structure of a caption set, in miniature."""
    rng = random.Random(seed)
    meanings = sorted({f"{verb} {tail}" for verb in VERBS[:8] for tail in TAILS[:10]})
    return [[f"{subject} {meaning}" for subject in rng.sample(SUBJECTS, 3)]
            for meaning in rng.sample(meanings, n_groups)]


def test_offline_encoder_is_seeded_saved_and_reused(tmp_path):
    """A flat caption list (one group per caption): no paraphrase pair, so the random tower."""
    config = clip.ClipConfig(**SMALL, pretrain_steps=5)
    texts = captions(100)
    logs = []
    enc = clip.TextEncoder.offline(texts, tmp_path / "a", seed=0, config=config, log=logs.append)
    assert "NOT real CLIP" in logs[0] and "building" in logs[0] and "random weights" in logs[0]
    assert "nothing to pretrain" in logs[1]
    assert enc.dim == 16 and len(enc.tokenizer) <= 700
    assert all(not p.requires_grad for p in enc.parameters())
    # The folder is a normal Hugging Face one: transformers loads model and tokenizer from it.
    hf_tok = transformers.CLIPTokenizer.from_pretrained(tmp_path / "a")
    assert enc.tokenizer(texts[:20]).equal(hf_ids(hf_tok, texts[:20]))
    model = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path / "a").eval()
    with torch.no_grad():
        expected = model(input_ids=enc.tokenizer(texts[:3])).text_embeds
    torch.testing.assert_close(enc.encode(texts[:3])[0], expected, rtol=1e-5, atol=1e-6)
    # Same settings: reused (same weights); same seed elsewhere: same weights; other seed: rebuilt.
    again = clip.TextEncoder.offline(texts, tmp_path / "a", seed=0, config=config, log=logs.append)
    assert "reusing" in logs[-1]
    same = clip.TextEncoder.offline(list(reversed(texts)), tmp_path / "b", seed=0, config=config, log=logs.append)
    n = len(logs)
    other = clip.TextEncoder.offline(texts, tmp_path / "a", seed=1, config=config, log=logs.append)
    assert "building" in logs[n]
    weight = enc.model.text_projection.weight
    assert again.model.text_projection.weight.equal(weight) and same.model.text_projection.weight.equal(weight)
    assert not other.model.text_projection.weight.equal(weight)


def test_offline_encoder_pretrains_on_caption_groups(tmp_path):
    """Caption groups: pretrained (weights move from the seeded initialisation, paraphrases
    come together), cached by settings and groups, and pretrain_steps=0 is the random tower."""
    groups = paraphrase_groups(40)
    config = clip.ClipConfig(**SMALL, pretrain_steps=60, pretrain_batch=16, pretrain_lr=3e-3, pretrain_warmup=5)
    logs = []
    enc = clip.TextEncoder.offline(groups, tmp_path / "a", seed=0, config=config, log=logs.append)
    assert "pretrained on 40 caption groups" in logs[0] and "NOT real CLIP" in logs[0]
    stamp = json.loads((tmp_path / "a" / clip.OFFLINE_STAMP).read_text())
    stats = stamp["pretraining"]
    assert stats["steps"] == 60 and stats["loss_last"] < stats["loss_first"]
    assert all(not p.requires_grad for p in enc.parameters())
    report = clip.offline_report(enc, groups, seed=0, config=config)
    assert report["after"]["top1"] > report["before"]["top1"] + 0.2
    assert report["after"]["paraphrase_cos_mean"] - report["after"]["other_cos_mean"] > \
        report["before"]["paraphrase_cos_mean"] - report["before"]["other_cos_mean"] + 0.2
    # Cached: the order of groups and captions does not matter; other groups rebuild.
    shuffled = [list(reversed(g)) for g in reversed(groups)]
    again = clip.TextEncoder.offline(shuffled, tmp_path / "a", seed=0, config=config, log=logs.append)
    assert "reusing" in logs[-1] and again.model.text_projection.weight.equal(enc.model.text_projection.weight)
    n = len(logs)
    clip.TextEncoder.offline(groups[:-1], tmp_path / "a", seed=0, config=config, log=logs.append)
    assert "building" in logs[n]
    # pretrain_steps=0: exactly the seeded random initialisation that offline_report calls "before".
    random_enc = clip.TextEncoder.offline(groups, tmp_path / "b", seed=0, log=logs.append,
                                          config=clip.ClipConfig(**SMALL, pretrain_steps=0))
    initial = clip._initial_model(random_enc.tokenizer, config, seed=0)
    assert random_enc.model.text_projection.weight.equal(initial.text_projection.weight)
    assert not enc.model.text_projection.weight.equal(initial.text_projection.weight)


def test_paraphrase_loss_hand_worked():
    """Two 2x2 and 3x3 cases worked by hand.

    2x2, temperature 1, a = (e1, e2), b = (e1, (e1 + e2)/sqrt 2), every j != i a negative:
      s = [[1, r], [0, r]], r = 1/sqrt 2
      L_ab = ( -log(e / (e + e^r)) - log(e^r / (1 + e^r)) ) / 2
      L_ba = ( -log(e / (e + 1))   - log(e^r / (e^r + e^r)) ) / 2
    3x3, temperature 1, a = (e1, e2, e3), b = (e1, e1, e3): s = [[1, 1, 0], [0, 0, 0], [0, 0, 1]];
    rows 0 and 2 are one group (so (0, 2) and (2, 0) are no negatives), and b_1 is the same
    string as a_0 (so (0, 1) is no negative):
      rows:    0: only the target left -> 0;  1: -log(1/3);  2: -log(e / (e + 1))
      columns: 0: -log(e / (e + 1));  1: -log(1/2);  2: -log(e / (e + 1))
    """
    e1, e2, e3 = torch.eye(3)
    r = 1 / math.sqrt(2)
    a = torch.stack([e1[:2], e2[:2]])
    b = torch.stack([e1[:2], (e1[:2] + e2[:2]) * r])
    ids = torch.tensor([0, 1])
    loss, parts = clip.paraphrase_loss(3 * a, b, ids, ids, ids, ids + 10, temperature=1.0)  # scale: cosine only
    a_to_b = (-math.log(math.e / (math.e + math.exp(r))) - math.log(math.exp(r) / (1 + math.exp(r)))) / 2
    b_to_a = (-math.log(math.e / (math.e + 1)) + math.log(2)) / 2
    assert parts["a_to_b"].item() == pytest.approx(a_to_b, rel=1e-5)
    assert parts["b_to_a"].item() == pytest.approx(b_to_a, rel=1e-5)
    assert loss.item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-5)
    # 3x3 with a shared group and an identical string
    a, b = torch.stack([e1, e2, e3]), torch.stack([e1, e1, e3])
    group = torch.tensor([0, 1, 0])
    text_a, text_b = torch.tensor([0, 1, 2]), torch.tensor([3, 0, 4])
    loss, parts = clip.paraphrase_loss(a, b, group, group, text_a, text_b, temperature=1.0)
    softplus = math.log(1 + math.exp(-1))  # -log(e / (e + 1))
    assert parts["a_to_b"].item() == pytest.approx((0 + math.log(3) + softplus) / 3, rel=1e-5)
    assert parts["b_to_a"].item() == pytest.approx((2 * softplus + math.log(2)) / 3, rel=1e-5)
    # Temperature divides the cosines: at 0.5 the 3x3 case's terms are those of s / 0.5.
    loss, _ = clip.paraphrase_loss(a, b, group, group, text_a, text_b, temperature=0.5)
    assert loss.item() == pytest.approx(((0 + math.log(3) + math.log(1 + math.exp(-2)))
                                         + (2 * math.log(1 + math.exp(-2)) + math.log(2))) / 6, rel=1e-5)
    with pytest.raises(AssertionError, match="same group"):
        clip.paraphrase_loss(a, b, group, torch.tensor([1, 0, 0]), text_a, text_b, temperature=1.0)


class StubEncoder:
    """Fixed 2-d embeddings by caption, for hand-worked reports."""

    def __init__(self, vectors):
        self.vectors = vectors

    def encode_cached(self, texts):
        return torch.tensor([self.vectors[t] for t in texts])


def test_paraphrase_report_hand_worked():
    """Groups {x, y}, {x, z}, {w} (x in two groups), x = (1, 0), y = (.6, .8), z = (0, 1), w = (-1, 0).
    Queries (w is alone: no paraphrase to find): x of {x,y} -> nearest other string y (.6 > 0 > -1),
    in its group: hit; y -> z (.8): miss; x of {x,z} -> y: miss; z -> y (.8): miss. top1 = 1/4.
    Pairs of distinct strings: paraphrases (x, y) .6 and (x, z) 0; the 7 others
    -1, -.6, -1, 0, 0, .6, .8 (mean -1.2/7, median 0)."""
    enc = StubEncoder({"x": [1, 0], "y": [.6, .8], "z": [0, 1], "w": [-1, 0]})
    report = clip.paraphrase_report(enc, [["y", "x"], ["x", "z"], ["w"]])
    assert report["top1"] == 0.25 and report["queries"] == 4 and report["captions"] == 5
    assert report["paraphrase_cos_mean"] == pytest.approx(0.3) and report["paraphrase_cos_median"] == 0
    assert report["other_cos_mean"] == pytest.approx(-1.2 / 7, abs=1e-4) and report["other_cos_median"] == 0
    enc = StubEncoder({"a1": [1, 0], "a2": [.8, .6], "b1": [0, 1], "b2": [.6, .8]})
    assert clip.paraphrase_report(enc, [["a1", "a2"], ["b1", "b2"]])["top1"] == 0.5  # a1 and b1 hit


def test_pretraining_sees_text_only(clip_dir):
    """The stand-in never sees motion (CLIP never did): pretrain_text takes captions only."""
    assert list(inspect.signature(clip.pretrain_text).parameters) == [
        "encoder", "groups", "steps", "batch_size", "lr", "temperature", "warmup", "seed", "log"]
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    for bad in ([["a person walks", torch.zeros(3)], ["someone runs", "a man runs"]],  # a feature row
                [torch.zeros(4, 263)],                                               # a motion
                [np.array(["a person walks", "someone walks"])],                     # not a list of str
                "a person walks"):
        with pytest.raises(TypeError):
            clip.pretrain_text(enc, bad, steps=1, batch_size=2, lr=1e-3, temperature=0.07)
    with pytest.raises(TypeError, match="strings only"):
        clip.TextEncoder.offline([["a person walks", torch.zeros(263)]], "unused", config=clip.ClipConfig(**SMALL))
    with pytest.raises(ValueError, match="2 distinct captions"):
        clip.pretrain_text(enc, [["a", "a"], ["b"]], steps=1, batch_size=2, lr=1e-3, temperature=0.07)
    assert all(not p.requires_grad for p in enc.parameters())


def test_pretrain_text_brings_paraphrases_together(clip_dir):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    groups = paraphrase_groups(30, seed=1)
    before = clip.paraphrase_report(enc, groups)
    logs = []
    stats = clip.pretrain_text(enc, groups, steps=40, batch_size=16, lr=3e-3, temperature=0.1, warmup=4,
                               seed=0, log=logs.append)
    after = clip.paraphrase_report(enc, groups)
    assert stats["steps"] == 40 and stats["groups"] == 30 and stats["captions"] == 90 and len(logs) == 5
    assert stats["loss_last"] < stats["loss_first"]
    assert after["top1"] > before["top1"] + 0.2
    assert all(not p.requires_grad for p in enc.parameters())
    c, _ = enc.encode(["a person walks"])
    assert not c.requires_grad


def test_text_encoder_save_pretrained_round_trip(clip_dir, tmp_path):
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    loaded = clip.TextEncoder.from_pretrained(enc.save_pretrained(tmp_path / "saved"))
    texts = ["a person walks forward", "someone jumps twice!"]
    torch.testing.assert_close(loaded.encode(texts)[0], enc.encode(texts)[0])
    assert isinstance(enc.model.get_input_embeddings(), clip.WordEmbeddings)  # the wrapper is back
    enc.add_token("<*>", "walks")
    with pytest.raises(ValueError, match="add_token"):
        enc.save_pretrained(tmp_path / "with_added")


def test_model_name_resolves_from_the_local_cache_only(clip_dir, tmp_path, monkeypatch):
    """A name (not a folder) is looked up in the Hugging Face cache layout, never downloaded."""
    import huggingface_hub.constants
    snapshot = tmp_path / "models--someone--tiny-clip" / "snapshots" / "abc123"
    shutil.copytree(clip_dir, snapshot)
    (tmp_path / "models--someone--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-clip" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    enc = clip.TextEncoder.from_pretrained("someone/tiny-clip")
    torch.testing.assert_close(enc.encode(["a person walks"])[0],
                               clip.TextEncoder.from_pretrained(clip_dir).encode(["a person walks"])[0])
    with pytest.raises(FileNotFoundError, match="downloaded beforehand"):
        clip.TextEncoder.from_pretrained("no-such-org/no-such-clip-model")


def test_missing_text_weights_are_an_error(clip_dir, tmp_path):
    """A text model without the projection (CLIPTextModel) cannot give c: say so."""
    transformers.CLIPTextModel.from_pretrained(clip_dir).save_pretrained(tmp_path)
    clip_tokenizer.Tokenizer.from_pretrained(clip_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="text_projection"):
        clip.TextEncoder.from_pretrained(tmp_path)
