"""Tests for mate.py: the segmentation report against known action boundaries, every loss
(Eqs. 4-8) against a hand computation or an independent loop, and that MATE trains only the
text encoder's word table (plus its own heads). The segmentation itself (Eq. 1) is tested in
test_mate_segmentation.py."""
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

import clip
import mate
from mate_segmentation import FUNCTION_WORDS, lemmatize, split_caption, words_of

CAPTIONS = [
    "a person walks forward then turns around", "someone jumps twice.",
    "a man waves his left hand, then kicks with the right leg", "the person turns clockwise",
    "a person walks slowly backward and then runs quickly forward",
    "a woman walks in a circle counterclockwise", "a figure claps their hands, after that squats down",
]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    config = clip.ClipConfig(vocab_size=600, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32, projection_dim=12)
    folder = tmp_path_factory.mktemp("clip")
    clip.TextEncoder.offline(CAPTIONS, folder, seed=0, config=config, log=lambda *a: None)
    return folder


@pytest.fixture(scope="module")
def text(clip_dir):
    return clip.TextEncoder.from_pretrained(clip_dir)


# ----------------------------------------------------------------------------
# Eq. (1) against the known action boundaries


def test_segmentation_report_on_a_hand_example():
    motion = torch.zeros(40, 3)
    records = [mate.Record("m", motion, "c", [(0, 12), (12, 40)], [("walk", 0)], frozenset()),
               mate.Record("m", motion, "c", [(0, 40)], [("walk", 0)], frozenset())]
    report = mate.segmentation_report(records, {"m": {"bounds": [[0, 16], [16, 40]]}})
    # the first caption matches the 2 actions (error |12 - 16| = 4, even split |20 - 16| = 4)
    assert report["decomposition_accuracy"] == 0.5 and report["boundaries"] == 1
    assert report["boundary_error_frames"] == 4 and report["even_split_error_frames"] == 4


# ----------------------------------------------------------------------------
# Eqs. (4)-(8)


def test_gaussian_prior_hand_values():
    """s = 2, e = 6: c = 4, sigma = 2, prior(t) = exp(-(t - 4)^2 / 8) over all 8 frames."""
    prior = mate.gaussian_prior(8, torch.tensor([[2, 6]]))
    expected = torch.tensor([math.exp(-((t - 4) ** 2) / 8) for t in range(8)])
    torch.testing.assert_close(prior[0], expected)
    assert prior[0, 4] == 1 and prior[0, 2] == pytest.approx(math.exp(-0.5))


def test_self_loss_hand_value():
    """f = prototype 0, prototypes orthonormal: cos = (1, 0), loss = log(1 + exp(-1/tau))."""
    tau = 0.5
    loss = mate.self_loss(torch.tensor([[2.0, 0.0]]), torch.eye(2), torch.tensor([0]), tau)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1 / tau)), rel=1e-6)


def test_cross_loss_hand_value():
    """f_self = e1, e2; f_cross[0, 1] = (1, 1), f_cross[1, 0] = (1, 0). Pair (0, 1):
    |cos(e1, (1,1))| + |cos(e1, (1,0))| = 1/sqrt2 + 1; pair (1, 0): |cos(e2, (1,0))| +
    |cos(e2, (1,1))| = 0 + 1/sqrt2; the mean is (1 + sqrt2) / 2. The diagonal is not a pair."""
    f_self = torch.eye(2)
    f_cross = torch.tensor([[[5.0, 5.0], [1.0, 1.0]], [[1.0, 0.0], [7.0, 7.0]]])
    negative = torch.tensor([[False, True], [True, False]])
    assert float(mate.cross_loss(f_self, f_cross, negative)) == pytest.approx((1 + math.sqrt(2)) / 2)
    assert float(mate.cross_loss(f_self, f_cross, torch.zeros(2, 2, dtype=torch.bool))) == 0.0


def info_nce_loop(a, b, tau, same=None):
    """Eq. (6) written as a double loop, 1/(2|V|) sum_i (-log p(b_i | a_i) - log p(a_i | b_i))."""
    cos = lambda x, y: float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    B, total = len(a), 0.0
    for i in range(B):
        keep = [j for j in range(B) if j == i or same is None or not same[i][j]]
        total -= math.log(math.exp(cos(a[i], b[i]) / tau) / sum(math.exp(cos(a[i], b[j]) / tau) for j in keep))
        keep = [j for j in range(B) if j == i or same is None or not same[j][i]]
        total -= math.log(math.exp(cos(b[i], a[i]) / tau) / sum(math.exp(cos(b[i], a[j]) / tau) for j in keep))
    return total / (2 * B)


def test_info_nce_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert float(mate.info_nce(a, b, 0.1)) == pytest.approx(info_nce_loop(a.numpy(), b.numpy(), 0.1), rel=1e-5)
    same = torch.zeros(5, 5, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True  # the same word twice: not a negative of each other
    expected = info_nce_loop(a.numpy(), b.numpy(), 0.1, same.tolist())
    assert float(mate.info_nce(a, b, 0.1, same)) == pytest.approx(expected, rel=1e-5)


def test_rec_loss_ignores_padding():
    target, pred = torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)
    pred[0, :, 0] = torch.tensor([1.0, 1.0, 100.0])   # frame 2 of motion 0 is padding
    pred[1, :, 0] = torch.tensor([2.0, 0.0, 0.0])
    # valid squared errors: 1, 1 (motion 0) and 4, 0, 0 (motion 1) -> mean 6 / 5
    assert float(mate.rec_loss(pred, target, torch.tensor([2, 3]))) == pytest.approx(6 / 5)


def test_mate_loss_is_eq8_of_its_parts():
    cfg = mate.MATEConfig(lambda_word=0.5, lambda_sent=2.0)
    g = torch.Generator().manual_seed(0)
    B, E, K = 3, 4, 5
    out = {"f_self": torch.randn(B, E, generator=g), "f_cross": torch.randn(B, B, E, generator=g),
           "f_e": torch.randn(B, E, generator=g), "f_t": torch.randn(B, E, generator=g),
           "f_m": torch.randn(B, E, generator=g), "motion_hat": torch.randn(B, 6, 2, generator=g)}
    batch = {"target": torch.tensor([0, 3, 1]), "negative": ~torch.eye(B, dtype=torch.bool),
             "same_word": torch.zeros(B, B, dtype=torch.bool), "same_motion": torch.zeros(B, B, dtype=torch.bool),
             "motion": torch.randn(B, 6, 2, generator=g), "lengths": torch.tensor([6, 4, 5])}
    total, parts = mate.mate_loss(out, batch, torch.randn(K, E, generator=g), cfg)
    word = parts["self"] + parts["cross"] + parts["align"]               # Eq. (7)
    assert float(total) == pytest.approx(float(parts["rec"] + 0.5 * word + 2.0 * parts["sent"]), rel=1e-6)
    expected = info_nce_loop(out["f_e"].numpy(), out["f_self"].numpy(), cfg.temperature)
    assert float(parts["align"]) == pytest.approx(expected, rel=1e-5)



def test_mate_loss_default_is_the_papers_sum_bit_for_bit():
    """With the default weights (the full model) L_all is Eq. (8) with Eq. (7) inside, as written
    before the Tab. 3 switches existed: the same float operations, so the same bits."""
    cfg = mate.MATEConfig()
    g = torch.Generator().manual_seed(1)
    B, E, K = 4, 6, 5
    out = {"f_self": torch.randn(B, E, generator=g), "f_cross": torch.randn(B, B, E, generator=g),
           "f_e": torch.randn(B, E, generator=g), "f_t": torch.randn(B, E, generator=g),
           "f_m": torch.randn(B, E, generator=g), "motion_hat": torch.randn(B, 7, 3, generator=g)}
    batch = {"target": torch.tensor([0, 3, 1, 4]), "negative": ~torch.eye(B, dtype=torch.bool),
             "same_word": torch.zeros(B, B, dtype=torch.bool), "same_motion": torch.eye(B, dtype=torch.bool),
             "motion": torch.randn(B, 7, 3, generator=g), "lengths": torch.tensor([7, 4, 5, 6])}
    prototypes = torch.randn(K, E, generator=g)
    total, parts = mate.mate_loss(out, batch, prototypes, cfg)
    l_self = mate.self_loss(out["f_self"], prototypes, batch["target"], cfg.temperature)
    l_cross = mate.cross_loss(out["f_self"], out["f_cross"], batch["negative"])
    l_align = mate.info_nce(out["f_e"], out["f_self"], cfg.temperature, batch["same_word"])
    l_sent = mate.info_nce(out["f_t"], out["f_m"], cfg.temperature, batch["same_motion"])
    l_rec = mate.rec_loss(out["motion_hat"], batch["motion"], batch["lengths"])
    assert torch.equal(total, l_rec + cfg.lambda_word * (l_self + l_cross + l_align) + cfg.lambda_sent * l_sent)
    assert list(parts) == ["self", "cross", "align", "sent", "rec"]


def mate_model_and_batch(text, cfg):
    records = records_for(text)
    lemmas = mate.vocabulary(records)
    torch.manual_seed(0)
    model = mate.MATE(cfg, 263, text.word_embeddings.weight, text.dim, len(lemmas))
    model.init_prototypes(*mate.word_ids(text.tokenizer, lemmas))
    batch = mate.collate_records(records, text.tokenizer, {l: k for k, l in enumerate(lemmas)}, np.random.default_rng(0))
    with torch.no_grad():
        c, _ = text.encode_ids(batch["ids"])
    return model, batch, c


@pytest.mark.parametrize("removed, field, only_it_reads", [
    ("self", "lambda_self", "prototypes"), ("cross", "lambda_cross", None), ("align", "lambda_align", None),
    ("sent", "lambda_sent", "text_head.weight"), ("rec", "lambda_rec", "motion_decoder.out.weight")])
def test_a_zero_weight_removes_the_term(text, removed, field, only_it_reads):
    """Tab. 3's "Loss Removed" rows: with the term's weight 0, L_all is the sum of the other
    terms of the full model on the same batch (the same word draws), the term is not computed
    (absent from parts), and what only it reads gets no gradient."""
    cfg = mate.MATEConfig(latent_dim=8, n_layers=1, n_heads=2, ff_dim=16, dropout=0.0, lambda_word=0.5,
                          lambda_sent=2.0)
    model, batch, c = mate_model_and_batch(text, cfg)
    _, full = mate.mate_loss(model(batch, c), batch, model.prototypes, cfg)
    model.cfg = ablated = dataclasses.replace(cfg, **{field: 0.0})
    out = model(batch, c)
    total, parts = mate.mate_loss(out, batch, model.prototypes, ablated)
    weight = {"self": 0.5, "cross": 0.5, "align": 0.5, "sent": 2.0, "rec": 1.0}
    expected = sum(weight[k] * float(v) for k, v in full.items() if k != removed)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    assert set(parts) == set(full) - {removed}
    assert ("f_cross" in out) == (removed != "cross") and ("motion_hat" in out) == (removed != "rec")
    total.backward()
    if only_it_reads:
        assert dict(model.named_parameters())[only_it_reads].grad is None
    assert model.word_table.grad is not None


def test_every_weight_zero_is_refused(text):
    cfg = mate.MATEConfig(latent_dim=8, n_layers=1, n_heads=2, ff_dim=16, lambda_rec=0.0, lambda_sent=0.0,
                          lambda_word=0.0)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        mate_model_and_batch(text, cfg)


# ----------------------------------------------------------------------------
# Batches, the model, and what it trains


def records_for(text):
    motion = torch.randn(24, 263)
    out = []
    for k, caption in enumerate(CAPTIONS[:4]):
        subs = split_caption(caption)
        bounds = [(8 * n, 8 * (n + 1)) for n in range(len(subs))]
        bounds[-1] = (bounds[-1][0], 24)
        words = [(w, n) for n, s in enumerate(subs) for w in words_of(s) if w not in FUNCTION_WORDS]
        out.append(mate.Record(f"m{k // 2}", motion, caption, bounds, words,
                               frozenset(lemmatize(w) for w in words_of(caption))))
    return out


def test_collate_negatives_and_masks(text):
    records = records_for(text)
    lemmas = mate.vocabulary(records)
    batch = mate.collate_records(records, text.tokenizer, {l: k for k, l in enumerate(lemmas)},
                                 np.random.default_rng(0))
    words = [lemmatize(w) for w in batch["word"]]
    for i, j in itertools.product(range(4), range(4)):
        expected = words[j] not in records[i].lemmas and words[i] not in records[j].lemmas
        assert bool(batch["negative"][i, j]) == expected
        assert bool(batch["same_motion"][i, j]) == (i // 2 == j // 2)
    assert not batch["negative"].diagonal().any()
    assert (batch["ids"] == text.tokenizer.eot_id).any(1).all()  # cut after the last end token only


def test_only_the_word_table_and_mates_heads_train(text, clip_dir):
    """One AdamW step on L_all: the text encoder's transformer and projection are untouched,
    its word table (bound to MATE's) moved, and a fresh encoder given the table through
    set_word_embeddings computes the same c as the bound one."""
    records = records_for(text)
    lemmas = mate.vocabulary(records)
    cfg = mate.MATEConfig(latent_dim=8, n_layers=1, n_heads=2, ff_dim=16, dropout=0.0)
    torch.manual_seed(0)
    model = mate.MATE(cfg, 263, text.word_embeddings.weight, text.dim, len(lemmas))
    model.init_prototypes(*mate.word_ids(text.tokenizer, lemmas))
    enc = clip.TextEncoder.from_pretrained(clip_dir)
    table_key = "model.text_model.embeddings.token_embedding.table.weight"
    frozen = {k: v.clone() for k, v in enc.state_dict().items() if k != table_key}
    table_before = enc.word_embeddings.weight.detach().clone()
    mate.bind_word_table(enc, model)
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == [table_key]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = mate.collate_records(records, enc.tokenizer, {l: k for k, l in enumerate(lemmas)}, np.random.default_rng(0))
    c, _ = enc.encode_ids(batch["ids"])
    loss, parts = mate.mate_loss(model(batch, c), batch, model.prototypes, cfg)
    loss.backward()
    assert all(p.grad is None for n, p in enc.named_parameters() if n != table_key)
    optimizer.step()
    for k, v in enc.state_dict().items():
        if k != table_key:
            assert torch.equal(v, frozen[k]), f"{k} changed"
    assert not torch.equal(model.word_table, table_before)
    used = torch.unique(batch["ids"])
    assert (model.word_table[used] - table_before[used]).abs().max() > 1e-3  # rows of the captions moved
    fresh = clip.TextEncoder.from_pretrained(clip_dir)
    fresh.set_word_embeddings(model.word_table)
    with torch.no_grad():
        c_fresh, c_bound = fresh.encode(["a person walks forward"])[0], enc.encode(["a person walks forward"])[0]
    torch.testing.assert_close(c_fresh, c_bound)


def test_attention_prior_weights_the_keys():
    """Eq. (3): with lambda = 0 the prior changes nothing; with lambda > 0 it does."""
    cfg = mate.MATEConfig(latent_dim=8, n_layers=1, n_heads=2, ff_dim=16, dropout=0.0, prior_lambda=0.0)
    torch.manual_seed(0)
    model = mate.MATE(cfg, 263, torch.randn(10, 6), 4, 3).eval()
    q, frames = torch.randn(2, 1, 8), torch.randn(2, 12, 8)
    valid = torch.ones(2, 12, dtype=torch.bool)
    prior = mate.gaussian_prior(12, torch.tensor([[0, 4], [4, 12]]))
    torch.testing.assert_close(model.attend(q, frames, valid, prior), model.attend(q, frames, valid, None))
    model.cfg.prior_lambda = 3.0
    assert not torch.allclose(model.attend(q, frames, valid, prior), model.attend(q, frames, valid, None))


# ----------------------------------------------------------------------------
# The word probe


def test_swap_word_and_caption_pairs():
    assert mate.swap_word("a man turns counterclockwise", "clockwise", "counterclockwise") is None
    assert mate.swap_word("a man turns clockwise", "clockwise", "counterclockwise") == "a man turns counterclockwise"
    caps = ["he turns clockwise", "she turns counterclockwise", "he walks"]
    assert mate.caption_pairs(caps, "clockwise", "counterclockwise", 4) == [
        ("he turns clockwise", "he turns counterclockwise"), ("she turns counterclockwise", "she turns clockwise")]


def test_word_cosine_hand_value(text):
    table = torch.zeros_like(text.word_embeddings.weight)
    a, b = text.tokenizer.encode("walks"), text.tokenizer.encode("jumps")
    table[a] = torch.tensor([1.0] + [0.0] * 15)
    table[b] = torch.tensor([1.0, 1.0] + [0.0] * 14)
    assert mate.word_cosine(table, text.tokenizer, "walks", "jumps") == pytest.approx(1 / math.sqrt(2))


class CaptionEvaluator(torch.nn.Module):
    """A 1-d stand-in evaluator: a caption's embedding is its first token id, a motion's its
    first feature."""
    def encode_text(self, ids):
        return ids[:, 1:2].float()

    def encode_motion(self, motion, lengths):
        return motion[:, 0, :1]


def test_pair_accuracy(text):
    pairs = [("he turns clockwise", "she turns clockwise"), ("a man walks", "someone jumps")]
    evaluator = CaptionEvaluator()
    evaluator.tokenizer = text.tokenizer
    evaluator.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))

    def faithful(captions, lengths):
        return text.tokenizer(captions)[:, 1].float()[:, None, None].expand(-1, int(lengths[0]), 263)

    def swapped(captions, lengths):
        half = len(captions) // 2
        return faithful(captions[half:] + captions[:half], lengths)

    assert mate.pair_accuracy(faithful, evaluator, pairs, 8) == (1.0, 0.0)
    assert mate.pair_accuracy(swapped, evaluator, pairs, 8) == (0.0, 0.0)
