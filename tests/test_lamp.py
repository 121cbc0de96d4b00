"""Tests for lamp.py: the attention masks (small cases, and their effect inside the BERT layers),
each loss against a hand computation, the quantiser against scipy, BERT loading, and the
adapters used by train.py."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import clip_tokenizer
import lamp
import vqvae
import metrics

CAPTIONS = ["a person walks forward", "a person jumps", "someone waves the right hand",
            "a man walks in a circle", "a person walks forward"]  # the last repeats the first


def tiny_config(**changes) -> lamp.LaMPConfig:
    cfg = lamp.LaMPConfig(vq_codes=16, vq_code_dim=8, vq_width=16, vq_depth=2, hidden_size=32, n_layers=2,
                          n_heads=2, ff_dim=64, max_positions=77, n_queries=12, embed_dim=16)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return clip_tokenizer.Tokenizer.from_pretrained(clip_tokenizer.train_bpe(CAPTIONS * 3, 600, tmp_path_factory.mktemp("bpe")))


@pytest.fixture()
def model(tokenizer):
    torch.manual_seed(0)
    return lamp.LaMP(tiny_config(), len(tokenizer), tokenizer.eot_id).eval()


def motion_batch(B=3, T_=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T_, 263, generator=g), torch.tensor([44, 40, 36, 44, 40][:B])


# ----------------------------------------------------------------------------
# Masks


def test_masks_small_case():
    """Q = 2 queries, text of 4 positions of which the last is padding (after the end token):
    sequence [q0 q1 | t0 t1 t2 pad]. Row r may attend to column c where the entry is 1."""
    valid = torch.tensor([[True, True, True, False]])
    unimodal = [[1, 1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 0]]
    bidirectional = [[1, 1, 1, 1, 1, 0]] * 6
    causal = [[1, 1, 0, 0, 0, 0],
              [1, 1, 0, 0, 0, 0],
              [1, 1, 1, 0, 0, 0],
              [1, 1, 1, 1, 0, 0],
              [1, 1, 1, 1, 1, 0],
              [1, 1, 1, 1, 1, 0]]
    assert lamp.unimodal_mask(2, valid).int().tolist() == [unimodal]
    assert lamp.bidirectional_mask(2, valid).int().tolist() == [bidirectional]
    assert lamp.causal_mask(2, valid).int().tolist() == [causal]
    assert lamp.autoregressive_query_mask(3, 2).int().tolist() == [[[1, 0, 0], [1, 1, 0], [1, 1, 1]]] * 2


def test_extended_mask_is_additive():
    mask = torch.tensor([[[True, False], [True, True]]])
    ext = lamp.extended_mask(mask, torch.float32)
    assert ext.shape == (1, 1, 2, 2)
    assert ext[0, 0].tolist() == [[0.0, torch.finfo(torch.float32).min], [0.0, 0.0]]


def _states(model, ids, mask_fn, feats, motion_valid):
    ids = model.trim(ids)
    valid = model.text_valid(ids)
    mask = mask_fn(model.cfg.n_queries, valid)
    return model.run_layers(model.embed_queries(len(ids)), model.embed_text(ids), mask, model.motion_memory(feats),
                            motion_valid)


def test_masks_act_inside_the_bert_layers(model, tokenizer):
    """Unimodal: text states ignore the motion and queries ignore the text. Causal: token j ignores
    tokens after j. Bidirectional: queries do read the text."""
    torch.manual_seed(1)
    feats, feats2 = torch.randn(2, 2, 10, 8)
    motion_valid = torch.ones(2, 10, dtype=torch.bool)
    ids = tokenizer(["a person walks forward", "a person jumps"])
    ids2 = tokenizer(["a person walks in a circle", "someone waves the right hand"])  # row 0: same prefix
    with torch.no_grad():
        q, t = _states(model, ids, lamp.unimodal_mask, feats, motion_valid)
        q_m, t_m = _states(model, ids, lamp.unimodal_mask, feats2, motion_valid)
        q_t, _ = _states(model, ids2, lamp.unimodal_mask, feats, motion_valid)
        assert torch.allclose(t, t_m, atol=1e-6) and (q - q_m).abs().max() > 1e-4
        assert torch.allclose(q, q_t, atol=1e-6)
        qc, tc = _states(model, ids, lamp.causal_mask, feats, motion_valid)
        qc2, tc2 = _states(model, ids2, lamp.causal_mask, feats, motion_valid)
        assert torch.allclose(qc, qc2, atol=1e-6)
        p = int((ids[0] != ids2[0]).int().argmax())                          # first differing token
        assert p >= 3 and torch.allclose(tc[0, :p], tc2[0, :p], atol=1e-6), "same prefix, same states"
        assert (tc[0, p] - tc2[0, p]).abs().max() > 1e-4
        qb, _ = _states(model, ids, lamp.bidirectional_mask, feats, motion_valid)
        qb2, _ = _states(model, ids2, lamp.bidirectional_mask, feats, motion_valid)
        assert (qb - qb2).abs().max() > 1e-4


def test_padding_and_trimming_change_nothing(model, tokenizer):
    """Keys after the end token are masked, so the 77-long ids and the trimmed ids give the same
    states on the real tokens."""
    ids = tokenizer(["a person jumps", "someone waves the right hand"])
    with torch.no_grad():
        full = model._text_only(ids)                                          # (B, 77, H)
        short = model._text_only(model.trim(ids))
    assert short.shape[1] < 77
    valid = model.text_valid(model.trim(ids))
    assert torch.allclose(full[:, : short.shape[1]][valid], short[valid], atol=1e-5)


# ----------------------------------------------------------------------------
# Losses against hand computations


def test_query_text_similarity_takes_the_best_query():
    """f_m[0] = {(1,0), (0,1)}, f_m[1] = {(-1,0), (0,-1)}; f_t[0] = (1,0), f_t[1] = (0.6,0.8):
    sim[0,0] = max(1, 0) = 1,  sim[0,1] = max(.6, .8) = .8,
    sim[1,0] = max(-1, 0) = 0, sim[1,1] = max(-.6, -.8) = -.6."""
    f_m = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]])
    f_t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert torch.allclose(lamp.query_text_similarity(f_m, f_t), torch.tensor([[1.0, 0.8], [0.0, -0.6]]))


def test_contrastive_loss_hand_computed():
    """logits [[2, 0], [1, 3]], no smoothing:
    rows:    -log(e^2/(e^2+1)) = log(1+e^-2) = 0.126928;  -log(e^3/(e+e^3)) = log(1+e^-2) = 0.126928
    columns: -log(e^2/(e^2+e)) = log(1+e^-1) = 0.313262;  -log(e^3/(1+e^3)) = log(1+e^-3) = 0.048587
    L = 1/2 [(0.126928 + 0.126928)/2 + (0.313262 + 0.048587)/2] = 0.153926."""
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    no_dup = torch.eye(2, dtype=torch.bool)
    assert lamp.contrastive_loss(logits, no_dup, 0.0).item() == pytest.approx(0.153926, abs=1e-5)
    # with smoothing and every column allowed, the same as torch's label smoothing
    target = torch.arange(2)
    expected = 0.5 * (F.cross_entropy(logits, target, label_smoothing=0.1)
                      + F.cross_entropy(logits.T, target, label_smoothing=0.1))
    assert lamp.contrastive_loss(logits, no_dup, 0.1).item() == pytest.approx(expected.item(), abs=1e-6)


def test_identical_captions_are_not_negatives():
    """Texts 0 and 2 are the same sentence: logits[0, 2] and [2, 0] leave the softmax. Row 0 of
    [[1, 0, 5], [0, 1, 0], [5, 0, 1]] then is -log(e/(e+1)) = log(1+e^-1) = 0.313262, and so on."""
    logits = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 0.0], [5.0, 0.0, 1.0]])
    same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]).bool()
    row0 = math.log(1 + math.exp(-1))                 # softmax over {1, 0}
    row1 = math.log(1 + 2 * math.exp(-1))             # softmax over {0, 1, 0}
    expected = (row0 + row1 + row0) / 3               # symmetric logits: columns equal rows
    assert lamp.contrastive_loss(logits, same, 0.0).item() == pytest.approx(expected, abs=1e-6)


def test_matching_loss_hand_computed():
    """B = 1: rows [matched, negative motion, negative text], class 1 = matched.
    logits [[0, 2], [1, 0], [0, 0]] -> [log(1+e^-2), log(1+e^-1), log 2] / 3."""
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 3
    assert lamp.matching_loss(logits).item() == pytest.approx(expected, abs=1e-6)


def test_text_generation_loss_hand_computed():
    """ids [[5, 1, 2, 2]] with the end token 2 at position 2 (position 3 is padding): targets are
    ids[1] = 1 (from position 0) and ids[2] = 2 (from position 1). With logits row 0 = (0, ln 3, 0)
    and row 1 = (0, 0, 0): -log(3/5) and -log(1/3), mean 0.804719; rows 2, 3 do not count."""
    V = 3
    logits = torch.zeros(1, 4, V)
    logits[0, 0, 1] = math.log(3)
    logits[0, 2:] = torch.randn(2, V) * 10                # no target reads these
    ids = torch.tensor([[5, 1, 2, 2]])
    valid = torch.tensor([[True, True, True, False]])
    expected = (-math.log(3 / 5) + math.log(3)) / 2
    assert lamp.text_generation_loss(logits, ids, valid, 0.0).item() == pytest.approx(expected, abs=1e-6)


def test_motion_generation_loss_is_eq_1():
    """Q = 3 queries, n = 2 codes of which the second is padding: only query 0 counts.
    logits[0, 0] = (ln 2, 0, 0), code 0 -> -log(2/4) = ln 2."""
    logits = torch.zeros(1, 3, 3)
    logits[0, 0, 0] = math.log(2)
    logits[0, 1:] = torch.randn(2, 3) * 10
    codes, valid = torch.tensor([[0, 2]]), torch.tensor([[True, False]])
    assert lamp.motion_generation_loss(logits, codes, valid, 0.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_similarity_recall_matches_metrics_on_normalised_embeddings():
    """With one vector per side, sim = m . t of unit vectors ranks as Euclidean distance does."""
    g = torch.Generator().manual_seed(0)
    text, motion = F.normalize(torch.randn(2, 40, 6, generator=g), dim=-1)
    expected = metrics.retrieval_recall(text, motion)
    got = lamp.similarity_recall(motion @ text.T)
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(expected[k]) for k in got)


def test_hard_negatives_are_never_positives():
    """Rows 0 and 1 share a caption; all negatives avoid the diagonal and the duplicates, and a
    dominant logit is drawn (almost) always."""
    same = torch.eye(4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    logits = torch.zeros(4, 4)
    logits[2, 3] = 30.0  # motion 2 is very close to text 3
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        neg_motion, neg_text = lamp.sample_hard_negatives(logits, same, g)
        for i in range(4):
            assert not same[i, neg_text[i]] and not same[neg_motion[i], i]
        assert neg_text[2] == 3 and neg_motion[3] == 2


# ----------------------------------------------------------------------------
# The model as a whole


def test_loss_reaches_every_parameter(model, tokenizer):
    torch.manual_seed(0)
    vq = vqvae.MotionVQVAE(model.cfg, 263)
    x, lengths = motion_batch(4)
    vq(x, lengths)  # train mode: seeds the codebook
    with torch.no_grad():
        z, codes, valid = vq.eval().tokenize(x, lengths)
    total, parts = model.train().loss(z, valid, tokenizer(CAPTIONS[:4]), codes)
    total.backward()
    assert torch.isfinite(total) and set(parts) == {"mtc", "mtm", "mgt", "tgm", "temp"}
    assert total.item() == pytest.approx(sum(parts[k].item() for k in ("mtc", "mtm", "mgt", "tgm")), rel=1e-5)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []



def lamp_loss_inputs(model, tokenizer):
    torch.manual_seed(0)
    vq = vqvae.MotionVQVAE(model.cfg, 263)
    x, lengths = motion_batch(4)
    vq(x, lengths)  # train mode: seeds the codebook
    with torch.no_grad():
        return (*vq.eval().tokenize(x, lengths), tokenizer(CAPTIONS[:4]))


def test_default_loss_is_the_plain_sum_bit_for_bit(model, tokenizer):
    """The default weights (the full model) give mtc + mtm + mgt + tgm, the same bits as before the
    Tab. 5 switches existed."""
    z, codes, valid, ids = lamp_loss_inputs(model, tokenizer)
    total, parts = model.loss(z, valid, ids, codes)
    assert list(parts) == ["mtc", "mtm", "mgt", "tgm", "temp"]
    assert torch.equal(total.detach(), parts["mtc"] + parts["mtm"] + parts["mgt"] + parts["tgm"])


# what only each objective reads: no gradient reaches it when the objective is removed
ONLY_READ_BY = {"mtm": "match_head.weight", "mgt": "lm_transform.dense.weight", "tgm": "motion_head.weight",
                "mtc": None}


@pytest.mark.parametrize("removed", [("mtc",), ("mtm",), ("mgt",), ("tgm",),
                                     ("mtm", "mgt", "tgm"), ("mgt", "tgm")])  # the last two: Tab. 5 rows
def test_a_zero_weight_removes_the_objective(model, tokenizer, removed):
    """With the weights of `removed` 0, the total is the sum of the other objectives of the full
    model on the same batch and the same hard-negative draws; the removed ones are not computed
    and what only they read gets no gradient. (Eval mode: no dropout draws.)"""
    z, codes, valid, ids = lamp_loss_inputs(model, tokenizer)
    torch.manual_seed(1)
    _, full = model.loss(z, valid, ids, codes)
    model.cfg = dataclasses.replace(model.cfg, **{f"lambda_{k}": 0.0 for k in removed})
    torch.manual_seed(1)
    total, parts = model.loss(z, valid, ids, codes)
    kept = [k for k in ("mtc", "mtm", "mgt", "tgm") if k not in removed]
    assert list(parts) == [*kept, "temp"]
    assert float(total.detach()) == pytest.approx(sum(float(full[k]) for k in kept), rel=1e-6)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for k in removed:
        if ONLY_READ_BY[k]:
            assert grads[ONLY_READ_BY[k]] is None, f"{k} was removed but {ONLY_READ_BY[k]} has a gradient"
    assert grads["query_tokens"] is not None


def test_no_objective_is_refused(tokenizer):
    cfg = tiny_config(lambda_mtc=0.0, lambda_mtm=0.0, lambda_mgt=0.0, lambda_tgm=0.0)
    with pytest.raises(ValueError, match="no objective"):
        lamp.LaMP(cfg, len(tokenizer), tokenizer.eot_id)

def test_from_bert_loads_the_checkpoint(tmp_path, tokenizer):
    """A (tiny) BERT saved with save_pretrained: its self-attention and FFN weights are LaMP's,
    the query FFN starts as a copy of the text FFN, the word table is new, sizes follow the file."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    ref = BertModel(BertConfig(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=48, max_position_embeddings=128))
    ref.save_pretrained(tmp_path)
    model = lamp.LaMP.from_bert(tmp_path, tiny_config(), len(tokenizer), tokenizer.eot_id, log=lambda *_: None)
    assert (model.cfg.hidden_size, model.cfg.n_heads, model.cfg.ff_dim, model.cfg.max_positions) == (24, 3, 48, 128)
    layer, ref_layer = model.bert.encoder.layer[1], ref.encoder.layer[1]
    assert torch.equal(layer.attention.self.query.weight, ref_layer.attention.self.query.weight)
    assert torch.equal(model.query_intermediate[1].dense.weight, ref_layer.intermediate.dense.weight)
    assert torch.equal(model.bert.embeddings.position_embeddings.weight, ref.embeddings.position_embeddings.weight)
    assert model.bert.embeddings.word_embeddings.weight.shape == (len(tokenizer) + 2, 24)
    with pytest.raises(FileNotFoundError, match="config.json"):
        lamp.LaMP.from_bert(tmp_path / "nope", tiny_config(), len(tokenizer), tokenizer.eot_id)


def test_state_dict_round_trip(model, tokenizer):
    rebuilt = lamp.LaMP(lamp.LaMPConfig(**dataclasses.asdict(model.cfg)), model.vocab_size, model.eot_id).eval()
    rebuilt.load_state_dict(model.state_dict())
    ids = tokenizer(CAPTIONS[:2])
    with torch.no_grad():
        assert torch.equal(rebuilt.text_condition(ids), model.text_condition(ids))


def test_adapters_for_train_py(model, tokenizer):
    """LaMPTextEncoder: (B, H), cached, frozen; LaMPEvaluator: normalised (B, E) embeddings."""
    encoder = lamp.LaMPTextEncoder(model, tokenizer)
    c = encoder.encode_cached(CAPTIONS)
    assert c.shape == (5, encoder.dim) and torch.equal(c[0], c[4]) and len(encoder.cache) == 4
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training
    torch.manual_seed(0)
    vq = vqvae.MotionVQVAE(model.cfg, 263)
    x, lengths = motion_batch(3)
    vq(x, lengths)
    evaluator = lamp.LaMPEvaluator(vq, model)
    text, motion = evaluator.encode_text(tokenizer(CAPTIONS[:3])), evaluator.encode_motion(x, lengths)
    assert text.shape == motion.shape == (3, model.cfg.embed_dim)
    assert torch.allclose(text.norm(dim=1), torch.ones(3)) and torch.allclose(motion.norm(dim=1), torch.ones(3))
    tokenizer_with_more = clip_tokenizer.Tokenizer(dict(tokenizer.encoder), sorted(tokenizer.ranks, key=tokenizer.ranks.get))
    tokenizer_with_more.add_token("<*>")
    with pytest.raises(ValueError, match="token ids"):
        lamp.LaMPTextEncoder(model, tokenizer_with_more)


def test_ablation_rows_order_and_names():
    """Tab. 5's variants enter the retrieval table protocol by protocol, before the full model's
    rows, renamed after their Tab. 5 row; their evaluator rows (the same model) are dropped."""
    def table(value):
        return {f"{m}, {p}": {"T2M R@1": (value, 0.0)} for p in ("whole split", "batches of 32")
                for m in ("LaMP (best query)", "LaMP (mean of queries)", "evaluator")}
    rows = lamp.ablation_rows(table(0.9), {"LaMP with contrastive learning": table(0.1), "+ matching": table(0.2)})
    assert list(rows)[:6] == ["LaMP with contrastive learning (best query), whole split",
                              "LaMP with contrastive learning (mean of queries), whole split",
                              "+ matching (best query), whole split", "+ matching (mean of queries), whole split",
                              "LaMP (best query), whole split", "LaMP (mean of queries), whole split"]
    assert list(rows)[6:8] == ["evaluator, whole split", "LaMP with contrastive learning (best query), batches of 32"]
    assert len(rows) == 14 and rows["+ matching (best query), batches of 32"]["T2M R@1"][0] == 0.2
    assert rows["evaluator, batches of 32"]["T2M R@1"][0] == 0.9
