"""Tests for t2m_evaluator.py, Guo et al.'s evaluator (released or trained here): the official file layout
(state-dict keys and shapes written out from Guo et al.'s networks/modules.py, not from our
classes) loads strictly; the word vectorizer on a hand-worked vocabulary (sos / eos / unk, POS
indices, VIP override, 20-word truncation); both pipelines against a reference written from the
equations (GRU gates, convolutions) with the sorting, renormalisation, contact drop and
lengths // 4 checked where they happen.

Nothing here needs the real files: tmp_path gets random weights and a ten-word GloVe vocabulary.
"""
import dataclasses
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2m_evaluator import POS_ENUMERATOR, Lexicon, T2MEvaluator, T2MEvaluatorConfig, WordVectorizer
from tiny_evaluator import TINY, tiny_embedder

WORDS = ["sos", "eos", "unk", "a", "man", "walk", "left", "slowly", "the", "forward"]


# ---------------------------------------------------------------------------------------
# The official layout, from Guo et al.'s module definitions


def gru_shapes(input_size: int, H: int) -> dict[str, tuple]:
    """nn.GRU(input_size, H, batch_first=True, bidirectional=True) as `gru`."""
    shapes = {}
    for suffix in ("", "_reverse"):
        shapes.update({f"gru.weight_ih_l0{suffix}": (3 * H, input_size), f"gru.weight_hh_l0{suffix}": (3 * H, H),
                       f"gru.bias_ih_l0{suffix}": (3 * H,), f"gru.bias_hh_l0{suffix}": (3 * H,)})
    return shapes


def output_net_shapes(H: int, E: int) -> dict[str, tuple]:
    """output_net = Sequential(Linear(2H, H), LayerNorm(H), LeakyReLU(0.2), Linear(H, E))."""
    return {"output_net.0.weight": (H, 2 * H), "output_net.0.bias": (H,), "output_net.1.weight": (H,),
            "output_net.1.bias": (H,), "output_net.3.weight": (E, H), "output_net.3.bias": (E,)}


def official_shapes(feat_dim: int) -> dict[str, dict[str, tuple]]:
    """finest.tar's three state dicts at Guo et al.'s evaluator sizes (evaluator_wrapper.py:
    dim_word 300, 15 POS classes, text hidden 512, co-embedding 512, movement 512 / 512, motion
    hidden 1024)."""
    text = {"pos_emb.weight": (300, 15), "pos_emb.bias": (300,), "input_emb.weight": (512, 300),
            "input_emb.bias": (512,), **gru_shapes(512, 512), **output_net_shapes(512, 512), "hidden": (2, 1, 512)}
    # main = Sequential(Conv1d, Dropout, LeakyReLU, Conv1d, Dropout, LeakyReLU): convolutions at 0 and 3
    movement = {"main.0.weight": (512, feat_dim - 4, 4), "main.0.bias": (512,), "main.3.weight": (512, 512, 4),
                "main.3.bias": (512,), "out_net.weight": (512, 512), "out_net.bias": (512,)}
    motion = {"input_emb.weight": (1024, 512), "input_emb.bias": (1024,), **gru_shapes(1024, 1024),
              **output_net_shapes(1024, 512), "hidden": (2, 1, 1024)}
    return {"text_encoder": text, "movement_encoder": movement, "motion_encoder": motion}


def write_glove(folder, dim: int = 300) -> np.ndarray:
    """our_vab_data.npy (V, dim), our_vab_words.pkl (list), our_vab_idx.pkl (word -> row); rows in
    reverse order of the word list, so a mix-up of list position and row shows."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.random.default_rng(0).standard_normal((len(WORDS), dim)).astype(np.float32)
    np.save(folder / "our_vab_data.npy", vectors)
    (folder / "our_vab_words.pkl").write_bytes(pickle.dumps(WORDS, protocol=3))
    idx = {w: len(WORDS) - 1 - i for i, w in enumerate(WORDS)}
    (folder / "our_vab_idx.pkl").write_bytes(pickle.dumps(idx, protocol=3))
    return vectors


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("deps"))


def write_official(root):
    """deps/t2m/{t2m,kit}/... and deps/glove in MLD's layout under root, random weights."""
    g = torch.Generator().manual_seed(0)
    written = {}
    for dataset, feat_dim, comp in (("t2m", 263, "Comp_v6_KLD01"), ("kit", 251, "Comp_v6_KLD005")):
        sds = {part: OrderedDict((k, 0.05 * torch.randn(shape, generator=g)) for k, shape in shapes.items())
               for part, shapes in official_shapes(feat_dim).items()}
        finest = root / "t2m" / dataset / "text_mot_match" / "model" / "finest.tar"
        finest.parent.mkdir(parents=True)
        optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
        torch.save({**sds, "opt_text_encoder": optimizer, "opt_motion_encoder": optimizer, "epoch": 7, "iter": 99},
                   finest)
        meta = root / "t2m" / dataset / comp / "meta"
        meta.mkdir(parents=True)
        mean, std = np.random.default_rng(1).standard_normal((2, feat_dim)).astype(np.float32)
        np.save(meta / "mean.npy", mean)
        np.save(meta / "std.npy", np.abs(std) + 0.5)
        written[dataset] = (sds, mean, np.abs(std) + 0.5)
    vectors = write_glove(root / "glove")
    return root, written, vectors


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_from_official_loads_the_released_layout_strictly(official, dataset):
    root, written, vectors = official
    sds, mean, std = written[dataset]
    model = T2MEvaluator.from_official(root / "t2m", root / "glove", dataset=dataset)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.text_encoder.hidden, sds["text_encoder"]["hidden"])
    assert torch.equal(model.movement_encoder.main[3].weight, sds["movement_encoder"]["main.3.weight"])
    assert torch.equal(model.motion_encoder.gru.weight_hh_l0_reverse, sds["motion_encoder"]["gru.weight_hh_l0_reverse"])
    np.testing.assert_array_equal(model.mean.numpy(), mean)
    np.testing.assert_array_equal(model.std.numpy(), std)
    # the vocabulary maps each word to its row through our_vab_idx.pkl
    row = model.vectorizer["man/NOUN"][0]
    np.testing.assert_array_equal(model.word_emb.weight[row].numpy(), vectors[len(WORDS) - 1 - WORDS.index("man")])
    feat_dim = {"t2m": 263, "kit": 251}[dataset]
    assert model.embed_texts([["a/DET", "man/NOUN"], ["walk/VERB"]]).shape == (2, 512)
    assert model.embed_motions(torch.randn(2, 40, feat_dim), torch.tensor([40, 24])).shape == (2, 512)


def test_from_official_names_the_file_at_fault(official, tmp_path):
    root, _, _ = official
    with pytest.raises(ValueError, match="dataset"):
        T2MEvaluator.from_official(root / "t2m", root / "glove", dataset="humanml3d")
    deps = tmp_path / "t2m" / "t2m"
    meta = deps / "Comp_v6_KLD01" / "meta"
    meta.mkdir(parents=True)
    np.save(meta / "mean.npy", np.zeros(263, dtype=np.float32))
    with pytest.raises(ValueError, match="std.npy"):
        T2MEvaluator.from_official(tmp_path / "t2m", root / "glove")
    np.save(meta / "std.npy", np.ones(251, dtype=np.float32))  # KIT's width in the t2m folder
    with pytest.raises(ValueError, match=r"std.npy: expected shape \(263,\)"):
        T2MEvaluator.from_official(tmp_path / "t2m", root / "glove")
    np.save(meta / "std.npy", np.ones(263, dtype=np.float32))
    finest = deps / "text_mot_match" / "model" / "finest.tar"
    finest.parent.mkdir(parents=True)
    torch.save({"epoch": 1}, finest)
    with pytest.raises(ValueError, match="finest.tar.*text_encoder"):
        T2MEvaluator.from_official(tmp_path / "t2m", root / "glove")
    torch.save({"text_encoder": {"hidden": torch.zeros(2, 1, 8)}}, finest)  # not Guo et al.'s layout
    with pytest.raises(ValueError, match="finest.tar: text_encoder does not fit"):
        T2MEvaluator.from_official(tmp_path / "t2m", root / "glove")
    (root / "glove" / "our_vab_words.pkl").rename(tmp_path / "words.pkl")
    try:
        with pytest.raises(ValueError, match="our_vab_words.pkl"):
            T2MEvaluator.from_official(root / "t2m", root / "glove")
    finally:
        (tmp_path / "words.pkl").rename(root / "glove" / "our_vab_words.pkl")


# ---------------------------------------------------------------------------------------
# The word vectorizer, by hand


@pytest.fixture
def vectorizer():
    """Word i of WORDS is row i."""
    return WordVectorizer(WORDS)


def test_pos_enumerator_is_guos_order():
    assert list(POS_ENUMERATOR) == ["VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV", "Loc_VIP",
                                    "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER"]
    assert list(POS_ENUMERATOR.values()) == list(range(15))


@pytest.mark.parametrize("token,row,tag", [
    ("a/DET", 3, 2),           # its own tag
    ("man/NOUN", 4, 1),
    ("walk/VERB", 5, 12),      # Act_VIP replaces VERB
    ("left/ADJ", 6, 9),        # Loc_VIP replaces ADJ
    ("slowly/ADV", 7, 13),     # Desc_VIP
    ("the/XYZ", 8, 14),        # a tag outside the enumerator counts as OTHER
    ("zebra/NOUN", 2, 14),     # out of vocabulary: unk's vector, OTHER
    ("arm/NOUN", 2, 14),       # a VIP word outside the vocabulary is still unk / OTHER
])
def test_word_vectorizer_hand_cases(vectorizer, token, row, tag):
    index, one_hot = vectorizer[token]
    assert index == row
    assert one_hot.shape == (15,) and one_hot.sum() == 1 and one_hot.argmax() == tag


def test_caption_adds_sos_eos_and_pads_with_unk(vectorizer):
    """3 words -> sos, a, man, walk, eos, then 17 x unk: 22 rows, sent_len 5."""
    rows, one_hots, sent_len = vectorizer.caption(["a/DET", "man/NOUN", "walk/VERB"])
    assert rows.shape == (22,) and one_hots.shape == (22, 15) and sent_len == 5
    np.testing.assert_array_equal(rows, [0, 3, 4, 5, 1] + [2] * 17)  # sos a man walk eos unk...
    np.testing.assert_array_equal(one_hots.argmax(1), [14, 2, 1, 12, 14] + [14] * 17)


def test_caption_keeps_at_most_twenty_words(vectorizer):
    """25 words: the first 20 are kept between sos and eos (sent_len 22, no unk padding);
    exactly 20 gives the same layout."""
    words = ["a/DET"] * 19 + ["man/NOUN"] + ["walk/VERB"] * 5   # word 20 is man, 21-25 are cut
    rows, one_hots, sent_len = vectorizer.caption(words)
    assert sent_len == 22 and rows.shape == (22,)
    np.testing.assert_array_equal(rows, [0] + [3] * 19 + [4, 1])
    _, _, sent_len_20 = vectorizer.caption(words[:20])
    assert sent_len_20 == 22
    with pytest.raises(ValueError, match="word/POS"):
        vectorizer["and/or/CCONJ"]
    with pytest.raises(ValueError, match="unk"):
        WordVectorizer(["sos", "eos"])


# ---------------------------------------------------------------------------------------
# Both pipelines against the equations

SMALL = T2MEvaluatorConfig(dim_word=4, dim_text_hidden=6, dim_coemb_hidden=5, dim_movement_enc_hidden=8,
                           dim_movement_latent=7, dim_motion_hidden=9)
D = 263


@pytest.fixture
def small_evaluator(vectorizer):
    torch.manual_seed(0)
    mean, std = torch.randn(D), torch.rand(D) + 0.5
    return T2MEvaluator(SMALL, D, mean, std, vectorizer).eval()


def gru_last_by_hand(sd: dict, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Last states of a bidirectional GRU over the valid steps x (L, in), both directions from h0
    (2, H): r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h (PyTorch's GRU); the
    backward direction starts at the last valid step. Returns (2H,) = [forward, backward]."""
    H = h0.shape[-1]
    last = []
    for direction, steps in (("", x), ("_reverse", x.flip(0))):
        w_i, w_h = sd[f"gru.weight_ih_l0{direction}"], sd[f"gru.weight_hh_l0{direction}"]
        b_i, b_h = sd[f"gru.bias_ih_l0{direction}"], sd[f"gru.bias_hh_l0{direction}"]
        h = h0[0 if direction == "" else 1]
        for x_t in steps:
            gi, gh = w_i @ x_t + b_i, w_h @ h + b_h
            r, z = torch.sigmoid(gi[:H] + gh[:H]), torch.sigmoid(gi[H:2 * H] + gh[H:2 * H])
            n = torch.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
        last.append(h)
    return torch.cat(last)


def output_net_by_hand(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Linear -> LayerNorm -> LeakyReLU(0.2) -> Linear."""
    h = x @ sd["output_net.0.weight"].T + sd["output_net.0.bias"]
    h = F.layer_norm(h, h.shape[-1:], sd["output_net.1.weight"], sd["output_net.1.bias"])
    return F.leaky_relu(h, 0.2) @ sd["output_net.3.weight"].T + sd["output_net.3.bias"]


def test_text_pipeline_sorts_by_length_and_matches_the_equations(small_evaluator, vectorizer):
    captions = [["walk/VERB"], ["a/DET", "man/NOUN", "walk/VERB", "left/ADV", "slowly/ADV"], ["the/DET", "man/NOUN"]]
    seen = {}
    small_evaluator.text_encoder.register_forward_pre_hook(lambda m, args: seen.update(lens=args[2].tolist()))
    emb = small_evaluator.embed_texts(captions)
    assert emb.shape == (3, 5)
    assert seen["lens"] == [7, 4, 3], "sentence lengths (sos + words + eos), longest first as Guo's collate_fn"
    sd = small_evaluator.text_encoder.state_dict()
    for i, tokens in enumerate(captions):
        rows, one_hots, sent_len = (torch.as_tensor(a) for a in vectorizer.caption(tokens))
        vectors = small_evaluator.word_emb.weight[rows].detach()
        # word vector + pos_emb(one-hot), then input_emb, over the sos..eos rows only
        x = vectors[:sent_len] + one_hots[:sent_len] @ sd["pos_emb.weight"].T + sd["pos_emb.bias"]
        x = x @ sd["input_emb.weight"].T + sd["input_emb.bias"]
        expected = output_net_by_hand(sd, gru_last_by_hand(sd, x, sd["hidden"][:, 0]))
        torch.testing.assert_close(emb[i], expected, atol=1e-5, rtol=1e-5)


def test_motion_pipeline_renormalises_drops_contacts_and_restores_order(small_evaluator):
    """Lengths (13, 24, 17): sorted (24, 17, 13), i.e. rows (1, 2, 0), 6 / 4 / 3 GRU steps.
    The movement encoder sees (x * std_d + mean_d - mean_e) / std_e without the last 4 dims."""
    torch.manual_seed(1)
    features = torch.randn(3, 24, D) * 2 + 1  # de-normalised
    lengths = torch.tensor([13, 24, 17])
    seen = {}
    small_evaluator.movement_encoder.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    small_evaluator.motion_encoder.register_forward_pre_hook(lambda m, args: seen.update(steps=args[1].tolist()))
    emb = small_evaluator.embed_motions(features, lengths)
    mean, std = small_evaluator.mean, small_evaluator.std
    torch.testing.assert_close(seen["x"], ((features - mean) / std)[[1, 2, 0], :, : D - 4])
    assert seen["steps"] == [6, 4, 3]
    move = small_evaluator.movement_encoder.state_dict()
    sd = small_evaluator.motion_encoder.state_dict()
    for i in range(3):
        x = ((features[i] - mean) / std)[:, : D - 4].T[None]                    # (1, D-4, T)
        h = F.leaky_relu(F.conv1d(x, move["main.0.weight"], move["main.0.bias"], stride=2, padding=1), 0.2)
        h = F.leaky_relu(F.conv1d(h, move["main.3.weight"], move["main.3.bias"], stride=2, padding=1), 0.2)
        h = h[0].T @ move["out_net.weight"].T + move["out_net.bias"]            # (T/4, 7)
        h = h[: int(lengths[i]) // 4] @ sd["input_emb.weight"].T + sd["input_emb.bias"]
        expected = output_net_by_hand(sd, gru_last_by_hand(sd, h, sd["hidden"][:, 0]))
        torch.testing.assert_close(emb[i], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="lengths"):
        small_evaluator.embed_motions(features, torch.tensor([3, 24, 17]))  # 3 frames: no GRU step


# ---------------------------------------------------------------------------------------
# The evaluator trained here: padding, its text reading


def test_embedder_shapes_and_motion_padding_is_ignored():
    model = tiny_embedder()
    motion = torch.randn(3, 24, 12)
    lengths = torch.tensor([24, 16, 8])
    with torch.no_grad():
        emb = model.encode_motion(motion, lengths)
        assert emb.shape == (3, 6)
        garbage = motion.clone()
        garbage[1, 16:] = 100.0
        garbage[2, 8:] = -7.0
        torch.testing.assert_close(model.encode_motion(garbage, lengths), emb)
        # the same motion alone, with no padding at all
        torch.testing.assert_close(model.encode_motion(motion[2:, :8], lengths[2:]), emb[2:])
        # foot contacts (last 4 dims) are not read
        no_feet = motion.clone()
        no_feet[..., -4:] = 5.0
        torch.testing.assert_close(model.encode_motion(no_feet, lengths), emb)
        # a change inside the valid frames does change it
        changed = motion.clone()
        changed[1, 15] += 1.0
        assert not torch.allclose(model.encode_motion(changed, lengths)[1], emb[1])
        # the released evaluator's reading (no masking) sees the padding
        model.cfg = dataclasses.replace(TINY, mask_padding=False)
        assert not torch.allclose(model.encode_motion(garbage, lengths)[1], emb[1])


def test_embedder_reads_captions_as_lemma_pos_tokens():
    """The vocabulary holds sos/eos/unk and the training lemmas; captions are read by the lexicon
    (case, punctuation and hyphens as HumanML3D's text_process drops them), an unseen word as
    unk; the text embedding depends on the words and on nothing past the caption."""
    model = tiny_embedder()
    assert model.vectorizer.words == ["sos", "eos", "unk", "a", "backward", "forward", "jump", "person",
                                      "run", "slowly", "then", "walk", "wave"]
    assert model.tokenizer(["A person walks, then jumps!", "a zebra runs"]) == [
        ["a/DET", "person/NOUN", "walk/VERB", "then/ADV", "jump/VERB"], ["a/DET", "zebra/OTHER", "run/VERB"]]
    assert model.vectorizer["zebra/OTHER"][0] == model.vectorizer.index["unk"]
    with torch.no_grad():
        emb = model.encode_text(model.tokenizer(["a person walks forward", "a person runs"]))
        assert emb.shape == (2, 6)
        torch.testing.assert_close(model.encode_text(model.tokenizer(["a person runs"])), emb[1:])  # batch-free
        assert not torch.allclose(model.encode_text(model.tokenizer(["a person walks backward"]))[0], emb[0])
    # a rebuilt model (what train.py's checkpoints hold) reads alike
    again = T2MEvaluator.rebuild(TINY, model.meta())
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(again.tokenizer(["a person walks forward"])), emb[:1])


def test_lexicon_majority_reading_and_agreement():
    """Each word's most frequent token among the aligned training captions; a caption whose word
    count differs from its tokens is skipped; agreement counts matching tokens."""
    tagged = {"to the left": "to/ADP the/DET left/NOUN", "left hand up": "left/ADJ hand/NOUN up/ADV",
              "the left arm": "the/DET left/ADJ arm/NOUN", "don't walk": "do/AUX walk/VERB"}
    lexicon = Lexicon.from_tagged(tagged)
    assert lexicon.table["left"] == "left/ADJ" and "don" not in lexicon.table  # 2 ADJ vs 1 NOUN; skipped
    assert lexicon("Left-hand") == ["lefthand/OTHER"]
    assert lexicon.agreement(tagged) == pytest.approx(8 / 9)  # "to the left": left read as ADJ
