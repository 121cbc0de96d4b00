"""Tests for metrics.py: each formula against a direct numpy/scipy computation and a
hand-worked case, an evaluator trained here (its padding invariance, its lexicon reading of
captions), its loss against a hand computation, the evaluation driver on a tiny fake dataset,
the results tables, and the VAE's joint errors and Swing by hand.

Nothing here needs clip.py or a dataset folder: the dataset is a list of dicts, the captions'
word/POS tags a ten-word table.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import torch

import diffusion
import metrics
import projector
import vae
from metrics import (T2MEvaluator, T2MEvaluatorConfig, diversity, embedder_loss, euclidean_distance_matrix,
                     evaluate, fid, frechet_distance, matching_score, mean_ci, multimodality, r_precision,
                     results_table, retrieval_recall, write_results)
from t2m_evaluator import Lexicon


def test_euclidean_distance_matrix_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((4, 5))
    np.testing.assert_allclose(euclidean_distance_matrix(a, b), scipy.spatial.distance.cdist(a, b), atol=1e-10)
    # identical rows: rounding must not turn 0 into nan
    assert np.all(np.diagonal(euclidean_distance_matrix(a, torch.tensor(a))) < 1e-6)


def _frechet_by_eigenvalues(mu1, s1, mu2, s2):
    """Independent route: Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD
    matrix, so numpy's eigh replaces scipy's sqrtm of a non-symmetric product."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_frechet_distance_matches_eigenvalue_formula():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200, 6))
    b = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6)) + 0.5
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    expected = _frechet_by_eigenvalues(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert fid(a, b) == pytest.approx(expected, rel=1e-8)


def test_fid_hand_cases():
    """Identical sets: FID 0. Shifting every sample by v keeps the covariance, so the trace
    term cancels and FID = |v|^2 = 3^2 + 4^2 = 25."""
    x = np.random.default_rng(2).standard_normal((100, 4))
    assert abs(fid(x, x)) < 1e-6
    v = np.array([3.0, 4.0, 0.0, 0.0])
    assert fid(x, x + v) == pytest.approx(25.0, abs=1e-6)


def test_frechet_distance_rejects_imaginary_square_root():
    """diag(-1, 1) is not a covariance: sqrtm(I @ diag(-1, 1)) = diag(i, 1)."""
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))


def test_frechet_distance_offsets_singular_product(monkeypatch):
    """When sqrtm of the product is not finite, eps * I is added to both covariances."""
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def sqrtm_failing_once(m):
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(metrics.scipy.linalg, "sqrtm", sqrtm_failing_once)
    s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 4.0])  # product is the zero matrix
    value = frechet_distance(np.zeros(2), s1, np.ones(2), s2)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2)))
    # |mu diff|^2 = 2, traces 1 + 4, Tr sqrt(diag(1e-6 (1 + 1e-6), 1e-6 (4 + 1e-6)))) ~ 3e-3
    assert value == pytest.approx(2 + 5 - 2 * (math.sqrt(1e-6 * (1 + 1e-6)) + math.sqrt(1e-6 * (4 + 1e-6))))


def _r_precision_by_argsort(text, motion, top_k, pool_size, seed):
    """Guo et al.'s route: argsort each text's row of distances, then top-k hit counts."""
    idx = np.random.default_rng(seed).permutation(len(text))
    hits, total = np.zeros(top_k), 0
    for p in range(len(text) // pool_size):
        sel = idx[p * pool_size:(p + 1) * pool_size]
        order = np.argsort(scipy.spatial.distance.cdist(text[sel], motion[sel]), axis=1)  # (32, 32)
        for i in range(pool_size):
            position = int(np.where(order[i] == i)[0][0])
            hits += np.arange(top_k) >= position
        total += pool_size
    return hits / total


def test_r_precision_matches_argsort_and_drops_last_pool():
    rng = np.random.default_rng(3)
    text = rng.standard_normal((100, 8))  # 3 pools of 32, 4 pairs dropped
    motion = text + 1.2 * rng.standard_normal((100, 8))
    got = r_precision(text, motion, top_k=3, pool_size=32, seed=5)
    np.testing.assert_allclose(got, _r_precision_by_argsort(text, motion, 3, 32, 5))
    assert 0 < got[0] < got[1] < got[2] < 1
    assert got[0] * 96 == pytest.approx(round(got[0] * 96))  # counts over 96 pairs, not 100


def test_r_precision_aligned_embeddings_is_one():
    text = np.random.default_rng(4).standard_normal((64, 8))
    np.testing.assert_allclose(r_precision(text, text.copy()), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="pool_size"):
        r_precision(text[:10], text[:10])


def test_matching_score_hand_case():
    """Matched distances |(0,0)-(3,4)| = 5, |(1,0)-(1,0)| = 0, |(0,2)-(0,0)| = 2: MMdist 7/3
    (the diagonal of the 3x3 distance matrix; the off-diagonal entries do not count)."""
    text = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    motion = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    assert matching_score(text, motion) == pytest.approx(7 / 3)
    assert matching_score(text, motion) == pytest.approx(np.trace(euclidean_distance_matrix(text, motion)) / 3)


def test_diversity_matches_direct_computation():
    emb = np.random.default_rng(6).standard_normal((500, 16))
    rng = np.random.default_rng(9)
    first, second = rng.choice(500, 300, replace=False), rng.choice(500, 300, replace=False)
    expected = np.mean([np.linalg.norm(emb[i] - emb[j]) for i, j in zip(first, second)])
    assert diversity(emb, times=300, seed=9) == pytest.approx(expected)
    assert diversity(2 * emb, times=300, seed=9) == pytest.approx(2 * expected)  # distances scale
    assert diversity(np.ones((300, 4)), times=300) == 0.0  # identical motions: no diversity
    with pytest.raises(ValueError, match="diversity_times"):
        diversity(emb[:10], times=300)


def test_multimodality_matches_direct_computation():
    emb = np.random.default_rng(7).standard_normal((5, 30, 8))
    rng = np.random.default_rng(2)
    first, second = rng.choice(30, 10, replace=False), rng.choice(30, 10, replace=False)
    expected = np.mean([np.linalg.norm(emb[j, a] - emb[j, b]) for j in range(5) for a, b in zip(first, second)])
    assert multimodality(emb, times=10, seed=2) == pytest.approx(expected)
    same = np.repeat(emb[:, :1], 30, axis=1)  # every generation of a text identical
    assert multimodality(same, times=10) == 0.0


def test_retrieval_recall_hand_case_both_directions():
    """1-d texts t = (0, 1, 3), motions m = (0.4, 1.9, 2.9).
    Text 1: |1 - 0.4| = 0.6 < |1 - 1.9| = 0.9, so its motion ranks 2nd; texts 0 and 2 rank
    theirs 1st: T2M R@1 = 2/3, R@2 = 1. Motion 1: its text at 0.9 beats |1.9 - 0| = 1.9 and
    |1.9 - 3| = 1.1; motions 0 and 2 also find theirs first: M2T R@1 = R@2 = 1."""
    text = np.array([[0.0], [1.0], [3.0]])
    motion = np.array([[0.4], [1.9], [2.9]])
    got = retrieval_recall(text, motion, ks=(1, 2))
    assert got == pytest.approx({"T2M R@1": 2 / 3, "T2M R@2": 1.0, "M2T R@1": 1.0, "M2T R@2": 1.0})


def test_nearest_neighbour_accuracy_hand_case():
    """1-d points 0, 1, 5, 6, 10 labelled a, a, b, a, b: nearest neighbours (leaving each
    point out) are 1, 0, 6, 5, 6 with labels a, a, a, b, a: points 0, 1 right, 5, 6, 10
    wrong: accuracy 2/5."""
    emb = np.array([[0.0], [1.0], [5.0], [6.0], [10.0]])
    assert metrics.nearest_neighbour_accuracy(emb, ["a", "a", "b", "a", "b"]) == pytest.approx(2 / 5)


def test_mean_ci_hand_case():
    """(1, 2, 3): mean 2, population std sqrt(2/3), CI 1.96 sqrt(2/3) / sqrt(3) = 1.96 sqrt(2) / 3."""
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert ci == pytest.approx(1.96 * math.sqrt(2) / 3)


def test_seed_ci_hand_cases():
    """(1, 2, 3): mean 2, sample std 1, t_{0.975, 2} = 4.302653 (a t table), half-width
    4.302653 / sqrt(3) = 2.484138. (1, 3): mean 2, sample std sqrt(2), t_{0.975, 1} = 12.706205,
    half-width 12.706205 sqrt(2) / sqrt(2) = 12.706205. One seed has no interval."""
    assert metrics.seed_ci([1.0, 2.0, 3.0]) == pytest.approx((2.0, 2.484138), abs=1e-6)
    assert metrics.seed_ci([1.0, 3.0]) == pytest.approx((2.0, 12.706205), abs=1e-6)
    with pytest.raises(ValueError, match="at least two seeds"):
        metrics.seed_ci([4.2])


def test_claim_direction_cases():
    """Paired differences method - baseline over three seeds, half-width t_{0.975, 2} s / sqrt(3):
    - (-2, -2, -2.5): mean -2.167, s 0.289, half 0.717, all below 0: lower-is-better holds, and
      the same numbers where higher is better are reversed;
    - (-1, 1, 0): mean 0: no difference either way;
    - (-0.5, -0.5, -0.5): s = 0, so it holds although the seeds' values (1, 5, 9) vs (1.5, 5.5, 9.5)
      overlap widely: the test pairs by seed, the spread between seeds cancels."""
    method, baseline = [1.0, 2.0, 3.0], [3.0, 4.0, 5.5]
    assert metrics.claim_direction(method, baseline, lower_is_better=True) == "holds"
    assert metrics.claim_direction(method, baseline, lower_is_better=False) == "reversed"
    assert metrics.claim_direction(baseline, method, lower_is_better=False) == "holds"
    for lower in (True, False):
        assert metrics.claim_direction([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], lower) == "no difference"
    assert metrics.claim_direction([1.0, 5.0, 9.0], [1.5, 5.5, 9.5], lower_is_better=True) == "holds"


# --------------------------------------------------------------------------------------
# The evaluator trained here (t2m_evaluator.T2MEvaluator.trained): padding, its text reading

TINY = T2MEvaluatorConfig(dim_word=8, dim_text_hidden=8, dim_coemb_hidden=6, dim_movement_enc_hidden=8,
                          dim_movement_latent=8, dim_motion_hidden=8, mask_padding=True, min_word_count=1)
WORDS = ["a", "person", "walks", "runs", "jumps", "waves", "forward", "backward", "slowly", "then"]
TAGS = {"a": "a/DET", "person": "person/NOUN", "walks": "walk/VERB", "runs": "run/VERB", "jumps": "jump/VERB",
        "waves": "wave/VERB", "forward": "forward/ADV", "backward": "backward/ADV", "slowly": "slowly/ADV",
        "then": "then/ADV"}


def _tagged(captions) -> dict:
    """caption -> its word/POS field, as data.py reads texts/*.txt."""
    return {c: " ".join(TAGS[w] for w in c.split()) for c in captions}


def _tiny_embedder(seed=0, feat_dim=12):
    torch.manual_seed(seed)
    tagged = _tagged([f"a person {v} {d} slowly then" for v in WORDS[2:6] for d in WORDS[6:8]])
    return T2MEvaluator.trained(TINY, feat_dim, tagged).eval()


def test_embedder_shapes_and_motion_padding_is_ignored():
    model = _tiny_embedder()
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
    model = _tiny_embedder()
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


def test_embedder_loss_hand_case():
    """1-d t = (0, 1), m = (0, 3), temperature 1: distances [[0, 3], [1, 2]], logits = -d.
    Rows (text -> motion): log(1 + e^-3) and log(1 + e^(-1 - (-2))) = log(1 + e).
    Columns (motion -> text): [0, -1] target 0 -> log(1 + e^-1); [-3, -2] target 1 ->
    log(1 + e^-1). Loss = (mean rows + mean columns) / 2."""
    t = torch.tensor([[0.0], [1.0]], requires_grad=True)
    m = torch.tensor([[0.0], [3.0]])
    loss, parts = embedder_loss(t, m, temperature=1.0)
    t2m = (math.log1p(math.exp(-3)) + math.log1p(math.e)) / 2
    m2t = math.log1p(math.exp(-1))
    assert parts["t2m"].item() == pytest.approx(t2m, abs=1e-5)
    assert parts["m2t"].item() == pytest.approx(m2t, abs=1e-5)
    assert loss.item() == pytest.approx((t2m + m2t) / 2, abs=1e-5)
    assert parts["pos_dist"].item() == pytest.approx(1.0, abs=1e-5)  # (0 + 2) / 2
    assert parts["neg_dist"].item() == pytest.approx(2.0)  # (3 + 1) / 2
    loss.backward()
    assert torch.isfinite(t.grad).all()  # zero distance does not give a nan gradient


def test_embedder_loss_matches_logsumexp_and_masks_same_captions():
    rng = np.random.default_rng(8)
    t, m = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    captions = ["a", "b", "a", "c", "b"]
    loss, parts = embedder_loss(torch.tensor(t), torch.tensor(m), captions=captions, temperature=0.5)
    logits = -scipy.spatial.distance.cdist(t, m) / 0.5
    same = np.array([[a == b for b in captions] for a in captions]) & ~np.eye(5, dtype=bool)
    logits[same] = -np.inf
    t2m = np.mean(scipy.special.logsumexp(logits, axis=1) - np.diagonal(logits))
    m2t = np.mean(scipy.special.logsumexp(logits, axis=0) - np.diagonal(logits))
    assert parts["t2m"].item() == pytest.approx(t2m)
    assert parts["m2t"].item() == pytest.approx(m2t)
    assert loss.item() == pytest.approx((t2m + m2t) / 2)
    all_same, _ = embedder_loss(torch.tensor(t), torch.tensor(m), captions=["x"] * 5)
    assert all_same.item() == pytest.approx(0.0, abs=1e-6)  # no negatives left


# --------------------------------------------------------------------------------------
# The evaluation driver and the tables

def _collate(items):
    """Pads items like data.collate: motions zero-padded to the longest."""
    T = max(item["length"] for item in items)
    motion = torch.zeros(len(items), T, items[0]["motion"].shape[1])
    for b, item in enumerate(items):
        motion[b, :item["length"]] = item["motion"]
    return {"motion": motion, "lengths": torch.tensor([item["length"] for item in items]),
            "caption": [item["caption"] for item in items], "name": [item["name"] for item in items]}


def _fake_dataset(n=40, feat_dim=12):
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        length = 8 + 4 * (i % 5)
        caption = f"a person {WORDS[2 + i % 4]} {WORDS[6 + i % 3]}"
        items.append({"motion": torch.randn(length, feat_dim, generator=gen), "length": length,
                      "caption": caption, "name": f"m{i:03d}"})
    return items


def test_evaluate_real_and_generated_rows():
    dataset, model = _fake_dataset(), _tiny_embedder()
    logs = []
    real = evaluate(None, dataset, model, model.tokenizer, replications=2, batch_size=16, diversity_times=20,
                    collate_fn=_collate, log=logs.append)
    # a list of items has no mean / std to de-normalise with: no Swing
    assert set(real) == set(metrics.METRICS) - {"MModality", "Swing"}
    assert abs(real["FID"][0]) < 1e-6  # ground truth against itself
    assert len(logs) == 2 and "replication 2/2" in logs[1]

    def noise(captions, lengths):  # not the data's distribution (that is standard normal)
        return 2.0 + 3.0 * torch.randn(len(captions), int(lengths.max()) + 3, 12)

    gen = evaluate(noise, dataset, model, model.tokenizer, replications=3, batch_size=16, mm_num_texts=4,
                   mm_num_gens=12, diversity_times=20, collate_fn=_collate, log=lambda s: None)
    assert set(gen) == set(metrics.METRICS) - {"Swing"}
    for name, (mean, ci) in gen.items():
        assert math.isfinite(mean) and math.isfinite(ci) and ci >= 0, name
    assert gen["FID"][0] > 0.01
    assert gen["MModality"][0] > 0
    assert not model.training


class _WithStats(list):
    """A list of items with the dataset statistics `mean` and `std` (D,), as MotionTextDataset."""

    def __init__(self, items, seed=0):
        super().__init__(items)
        g = torch.Generator().manual_seed(seed)
        D = items[0]["motion"].shape[1]
        self.mean, self.std = torch.randn(D, generator=g).numpy(), (0.5 + torch.rand(D, generator=g)).numpy()


def _by_caption(dataset, transform):
    """generate_fn returning transform(item's own motion) for each caption (captions unique)."""
    motions = {item["caption"]: item["motion"] for item in dataset}

    def generate(captions, lengths):
        out = torch.zeros(len(captions), int(lengths.max()), dataset[0]["motion"].shape[1])
        for b, (caption, n) in enumerate(zip(captions, lengths.tolist())):
            out[b, :n] = transform(motions[caption][:n])
        return out
    return generate


def test_evaluate_swing_column_and_unchanged_metrics():
    """With a dataset's mean / std, every row has Swing: the Real row's second pass of the same
    (here uncropped) clips gives exactly 1; generated motions that are each clip itself: 1; each
    clip's mean frame held still: 0; twice each clip's deviations from its mean frame: 2 (the
    de-normalisation x * std + mean is affine per dimension, so deviations double in metres too).
    Swing draws no random numbers: the other metrics equal those of the same items without stats."""
    words = [(a, b, c) for a in WORDS[2:6] for b in WORDS[6:8] for c in WORDS[8:]]  # 16 unique captions
    items = []
    for i, item in enumerate(_fake_dataset(n=40, feat_dim=263)):
        a, b, c = words[i % len(words)]
        items.append(dict(item, caption=f"a person {a} {b} {c}" + " then" * (i // len(words))))
    dataset, model = _WithStats(items), _tiny_embedder(feat_dim=263)
    kwargs = dict(replications=2, batch_size=16, mm_num_texts=0, diversity_times=20, collate_fn=_collate,
                  log=lambda s: None)
    real = evaluate(None, dataset, model, model.tokenizer, **kwargs)
    assert real["Swing"] == pytest.approx((1.0, 0.0))

    def doubled(x):
        centre = x.mean(0, keepdim=True)
        return centre + 2.0 * (x - centre)

    for transform, expected in ((lambda x: x, 1.0), (lambda x: x.mean(0, keepdim=True).expand_as(x), 0.0),
                                (doubled, 2.0)):
        row = evaluate(_by_caption(dataset, transform), dataset, model, model.tokenizer, **kwargs)
        assert row["Swing"][0] == pytest.approx(expected, abs=1e-5)
    plain = evaluate(_by_caption(dataset, doubled), list(dataset), model, model.tokenizer, **kwargs)
    assert plain == {k: v for k, v in row.items() if k != "Swing"}


class _Drawing(list):
    """Items drawn like MotionTextDataset's: a random crop (4 frames fewer, at a random offset) and
    one of two captions, from a generator that `reseed` restarts."""

    def __init__(self, items, seed=0):
        super().__init__(items)
        self.reseed(seed)

    def reseed(self, seed):
        self._rng = np.random.default_rng(seed)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        offset, length = int(self._rng.integers(0, 5)), item["length"] - 4
        caption = item["caption"] + (" then" if self._rng.integers(2) else "")
        return dict(item, motion=item["motion"][offset:offset + length], length=length, caption=caption)


def test_rows_with_the_same_generator_score_the_same():
    """t2m_rows reseeds the dataset per replication, so two rows with one generator score exactly
    alike although every pass over the dataset draws new crops and captions."""
    dataset, model = _Drawing(_fake_dataset()), _tiny_embedder()
    assert [dataset[0]["caption"] for _ in range(8)] != [dataset[0]["caption"]] * 8, "draws must vary"

    def noise(captions, lengths):
        return torch.randn(len(captions), int(lengths.max()), 12)

    cfg = metrics.EvalConfig(replications=2, mm_num_texts=2, mm_num_gens=10, diversity_times=20)
    rows = metrics.t2m_rows({"Real": None, "A": noise, "B": noise}, dataset, model, model.tokenizer, cfg, seed=3,
                            log=lambda s: None)
    assert rows["A"] == rows["B"]


def test_body_frame_spread_and_swing_by_hand():
    """J = 22 joints, features 12 J - 1 = 263, body-frame positions at 4 : 67.
    - One joint whose x alternates +a, -a over an even number of frames: its RMS distance from
      its mean place is a; the other 20 joints are still, so the spread is a / 21.
    - Frames past each length do not count. Swing: a still pose 0, a motion against itself 1,
      twice its deviations from its mean frame 2; against a direct numpy loop."""
    a, lengths = 0.3, torch.tensor([6, 4])
    x = torch.zeros(2, 6, 263)
    x[:, :, 4 + 3 * 2] = a * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # joint 3's x
    x[1, 4:] = 50.0                                                             # padding
    torch.testing.assert_close(metrics.body_frame_spread(x, lengths),
                               torch.full((2,), a / 21, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    motion = torch.randn(3, 10, 263, generator=g)
    lengths = torch.tensor([10, 7, 5])
    expected = []
    for b, n in enumerate(lengths.tolist()):  # direct: per joint, RMS distance from its mean place
        p = motion[b, :n, 4:67].double().numpy().reshape(n, 21, 3)
        expected.append(np.sqrt(((p - p.mean(0)) ** 2).sum(-1).mean(0)).mean())
    np.testing.assert_allclose(metrics.body_frame_spread(motion, lengths).numpy(), expected, rtol=1e-10)
    still = motion[:, :1].expand_as(motion)
    centre = torch.stack([motion[b, :n].mean(0) for b, n in enumerate(lengths.tolist())])[:, None]
    assert metrics.swing(still, motion, lengths) == 0.0
    assert metrics.swing(motion, motion, lengths) == pytest.approx(1.0)
    assert metrics.swing(centre + 2 * (motion - centre), motion, lengths) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="do not move"):
        metrics.swing(motion, still, lengths)


def test_results_table_and_write_results(tmp_path):
    real = {"FID": (0.0, 0.0), "R-precision top-1": (0.5, 0.01), "R-precision top-2": (0.7, 0.01),
            "R-precision top-3": (0.8, 0.01), "MMdist": (3.0, 0.02), "Diversity": (9.5, 0.1)}
    a = dict(real, FID=(0.5, 0.02), Diversity=(9.0, 0.1), MModality=(2.5, 0.1))
    b = dict(real, FID=(0.3, 0.02), Diversity=(8.0, 0.1), MModality=(2.0, 0.1))
    table = results_table({"MLD": a, "Real": real, "LEAD": b}, "HumanML3D", note="20 replications")
    lines = table.splitlines()
    assert lines[0] == "### HumanML3D"
    header = lines[2]
    for column in ["FID ↓", "R-precision top-1 ↑", "R-precision top-2 ↑", "R-precision top-3 ↑",
                   "MMdist ↓", "Diversity →", "MModality ↑"]:
        assert column in header
    assert lines[4].startswith("| Real |") and lines[5].startswith("| MLD |") and lines[6].startswith("| LEAD |")
    assert "**0.300 ± 0.020**" in lines[6]  # lower FID wins
    assert "**9.000 ± 0.100**" in lines[5]  # Diversity closest to Real's 9.5 wins
    assert lines[4].rstrip().endswith("| - |")  # Real has no MModality
    assert "20 replications" in table

    write_results(tmp_path, "t2m", {"Real": real, "LEAD": b}, title="Text-to-motion")
    write_results(tmp_path, "retrieval", {"evaluator": {"T2M R@1": (0.4, 0.0), "M2T R@1": (0.3, 0.0)}})
    write_results(tmp_path, "t2m", {"Real": real, "MLD": a}, title="Text-to-motion")  # replaces its section
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert list(saved) == ["t2m", "retrieval"]
    assert set(saved["t2m"]["rows"]) == {"Real", "MLD"}
    assert "### Text-to-motion" in md and "| MLD |" in md and "| LEAD |" not in md
    assert "T2M R@1 ↑" in md and "M2T R@1 ↑" in md


# ---------------------------------------------------------------------------------------
# The VAE's reconstruction errors (joint positions recovered from the features)


class _Clips:
    """A stand-in dataset: random normalised features for two clips, with mean and std."""

    def __init__(self, lengths=(6, 9), feat_dim=263, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(feat_dim, generator=g).numpy()
        self.std = (0.5 + torch.rand(feat_dim, generator=g)).numpy()
        self.items = [torch.randn(n, feat_dim, generator=g) * 0.1 for n in lengths]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"motion": self.items[i], "length": len(self.items[i]), "caption": "", "name": str(i)}


def test_joint_errors_by_hand():
    """Hand cases (J = 22 joints, every valid frame of both clips):
    - raise the root's height (feature 3) by d metres: only the root joint moves (the other
      joints' heights are stored absolute), so global = d / J, root-aligned = (J - 1) d / J (the
      root moves against all the others), body frame = 0 (feature 3 is not a body-frame position);
    - move joint 5's body-frame x (feature 4 + 3 * 4) by d: the heading turns it about Y but keeps
      its length, so every error is d / J."""
    clips, d, J = _Clips(), 0.3, 22
    std = torch.as_tensor(clips.std)

    def shifted(feature):
        def reconstruct(x, lengths):
            out = x.clone()
            out[..., feature] += d / std[feature]                     # d metres once de-normalised
            return out * metrics._valid(lengths, x.shape[1])[..., None]
        return reconstruct

    errors = metrics.joint_errors(shifted(3), clips, torch.device("cpu"), batch_size=1)
    assert errors["global"] == pytest.approx(d / J, rel=1e-4)
    assert errors["root-aligned"] == pytest.approx((J - 1) * d / J, rel=1e-4)
    assert errors["body frame"] == pytest.approx(0.0, abs=1e-6)
    errors = metrics.joint_errors(shifted(4 + 3 * 4), clips, torch.device("cpu"))
    for name in ("global", "root-aligned", "body frame"):
        assert errors[name] == pytest.approx(d / J, rel=1e-4), name
    perfect = metrics.joint_errors(lambda x, lengths: x, clips, torch.device("cpu"))
    assert all(v == pytest.approx(0.0, abs=1e-7) for v in perfect.values())


def test_reconstruction_swing_hand_cases():
    """The identity reconstructs with Swing 1, each clip's mean frame with 0, twice each clip's
    deviations from it with 2 (normalised or not: x * std + mean is affine per dimension)."""
    clips = _Clips(lengths=(6, 9, 12))

    def about_clip_mean(scale):
        def reconstruct(x, lengths):
            valid = metrics._valid(lengths, x.shape[1])[..., None]               # (B, T, 1)
            centre = (x * valid).sum(1, keepdim=True) / lengths[:, None, None]   # (B, 1, D)
            return (centre + scale * (x - centre)) * valid
        return reconstruct

    cpu = torch.device("cpu")
    assert metrics.reconstruction_swing(lambda x, lengths: x, clips, cpu) == pytest.approx(1.0)
    assert metrics.reconstruction_swing(about_clip_mean(0.0), clips, cpu) == pytest.approx(0.0, abs=1e-12)
    assert metrics.reconstruction_swing(about_clip_mean(2.0), clips, cpu, batch_size=2) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------
# Pipeline: MLD and LEAD rows share their diffusion samples


class _Text:
    """A text encoder stand-in: c is a fixed function of the caption's length."""
    dim = 8

    def encode_cached(self, captions):
        return torch.stack([torch.full((self.dim,), float(len(c)) / 10) for c in captions])


class _Realigner:
    """Records the latents it is given; realigns by doubling."""
    def __init__(self):
        self.seen = []

    def realign(self, z):
        self.seen.append(z.clone())
        return 2 * z


def _tiny_pipeline(**kwargs) -> metrics.Pipeline:
    torch.manual_seed(0)
    motion_vae = vae.MotionVAE(vae.VAEConfig(latent_dim=8, n_layers=1, n_heads=2, ff_dim=16, max_len=40), 263).eval()
    denoiser = diffusion.Denoiser(diffusion.DiffusionConfig(n_layers=1, n_heads=2, ff_dim=16, sample_steps=3),
                                  motion_vae.latent_shape, _Text.dim).eval()
    return metrics.Pipeline(_Text(), motion_vae, denoiser, **kwargs)


@torch.no_grad()
def test_pipeline_shares_samples_only_from_the_same_rng_state(monkeypatch):
    """From the same seed and captions, the LEAD call realigns exactly the z_0 the MLD call
    decoded, without sampling again, and leaves the RNG where the MLD call did; the MLD output is
    projector.generate's; another RNG state or other captions sample afresh."""
    pipe, realigner, calls = _tiny_pipeline(), _Realigner(), []
    sample = pipe.schedule.ddim_sample
    monkeypatch.setattr(pipe.schedule, "ddim_sample", lambda *a, **k: calls.append(1) or sample(*a, **k))
    captions, lengths = ["a person walks", "jumps"], torch.tensor([16, 24])
    torch.manual_seed(3)
    mld = pipe.generate(captions, lengths)
    after_mld = torch.random.get_rng_state()
    torch.manual_seed(3)
    reference = projector.generate(pipe.vae, pipe.denoiser, pipe.schedule, _Text().encode_cached(captions),
                                   pipe.c_uncond, lengths)
    torch.testing.assert_close(mld, reference, rtol=0, atol=0)
    torch.manual_seed(3)
    lead = pipe.generate(captions, lengths, realigner)
    assert len(calls) == 2  # the MLD call and the reference; the LEAD call sampled nothing
    assert torch.equal(torch.random.get_rng_state(), after_mld)
    torch.manual_seed(3)
    z = pipe.schedule.ddim_sample(pipe.denoiser, _Text().encode_cached(captions), pipe.c_uncond, (2, *pipe.vae.latent_shape))
    torch.testing.assert_close(realigner.seen[0], z, rtol=0, atol=0)
    torch.testing.assert_close(lead, pipe.vae.decode(2 * z, lengths), rtol=0, atol=0)
    pipe.generate(captions, lengths)           # the RNG moved on: a fresh sample
    torch.manual_seed(3)
    pipe.generate(["jumps", "a person walks"], lengths)  # other captions: a fresh sample
    assert len(calls) == 5
    small = _tiny_pipeline(memory=1)          # the oldest sample is forgotten past `memory`
    for seed in (1, 2):
        torch.manual_seed(seed)
        small.generate(captions, lengths)
    assert len(small.samples) == 1
