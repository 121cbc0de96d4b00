"""Tests for caption_metrics.py: each metric against its reference package on the same tokens
(nltk's corpus_bleu, rouge_score, pycocoevalcap's CIDEr-D, bert_score on a tiny random BERT saved
to tmp_path), plus hand-worked BLEU and ROUGE-L cases. The packages are test-only
(requirements-dev.txt).
"""
import math

import pytest
import torch

from caption_metrics import bert_score, bleu, caption_tokens, cider_d, rouge_l

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
rouge_tokenize = pytest.importorskip("rouge_score.tokenize")
cider_scorer = pytest.importorskip("pycocoevalcap.cider.cider_scorer")

# (candidate, references): HumanML3D-like captions and the edge cases
CORPUS = [
    ("a person walks forward.", ["a person walks forward."]),  # identical
    ("", ["a man jumps up and down.", "someone jumps"]),  # empty candidate
    ("a person walks forward and then turns around and walks back to the start",
     ["a person walks forward", "someone walks"]),  # longer than its references
    ("the the the the the the", ["the man walks to the chair", "the person sits"]),  # repeated unigram
    ("walks forward walks forward walks forward", ["a person walks forward slowly"]),  # repeated bigram
    ("a man waves his right hand", ["a person waves with the right hand"]),  # single reference
    ("a person runs in a circle",
     ["run", "a person runs around in a big circle quickly", "someone jogs in a circle"]),  # lengths 1, 9, 5
    ("a man sits down", ["the man sat", "a man sits on chair"]),  # closest-length tie (3 and 5): the shorter
    ("jumping jacks", ["a person kneels down slowly"]),  # no overlap
    ("walks", ["a person walks"]),  # one word
    ("A Person, WALKS; forward!", ["a person walks forward."]),  # case and punctuation
    ("jump", ["jump"]),  # identical one word
    ("a person crawls", ["", "a person crawls on the floor"]),  # an empty reference
    ("a person takes 3 steps forward", ["the person takes three steps forward", "walks 3 steps"]),
    ("turns left then walks forward", ["walks forward then turns left"]),  # reordered
    ("a person", ["a person is dancing happily", "a person dances"]),  # short prefix
    ("a man walks forward then stops and looks around",
     ["a man walks forward then stops", "a man walks forward then stops and looks around slowly"]),
    ("someone kicks with the left leg", ["someone kicks with the left leg", "someone kicks with the left leg"]),
    ("person person walks", ["person walks person walks"]),
    ("a woman dances ballet gracefully", ["a person dances", "someone is dancing"]),
    ("the person throws a ball with the right hand",
     ["a person throws something with right hand", "someone throws a ball overhand"]),
    ("a person bends down and picks something up", ["a person picks up an object from the ground"]),
    ("a person walks forward.", ["someone walks forward slowly", "a person steps forward"]),  # repeated candidate
    ("walk walk walk walk", ["a person walks in place"]),
]
CANDS = [c for c, _ in CORPUS]
REFS = [r for _, r in CORPUS]
SUBSETS = [slice(None), slice(0, 12), slice(12, None), slice(0, 24, 3), slice(5, 8)]


def test_caption_tokens_is_rouge_score_tokeniser():
    for text in CANDS + [r for refs in REFS for r in refs] + ["Ünïcode_x  2-step\tturn"]:
        assert caption_tokens(text) == rouge_tokenize.tokenize(text, None)


# ---------------------------------------------------------------------------------------
# BLEU


def _nltk(cands, refs, weights):
    return nltk_bleu.corpus_bleu([[caption_tokens(r) for r in rs] for rs in refs],
                                 [caption_tokens(c) for c in cands], weights=weights)


@pytest.mark.filterwarnings("ignore:\\nThe hypothesis contains 0 counts")
@pytest.mark.parametrize("n", [1, 2, 4])
def test_bleu_matches_nltk(n):
    weights = (1.0 / n,) * n
    for s in SUBSETS:
        assert bleu(CANDS[s], REFS[s], n) == pytest.approx(_nltk(CANDS[s], REFS[s], weights), abs=1e-6)
    for c, rs in CORPUS:  # sentence level: corpora of one
        assert bleu([c], [rs], n) == pytest.approx(_nltk([c], [rs], weights), abs=1e-6)


def test_bleu_hand_worked():
    """c = the man walks forward (4 tokens), r = a man walks forward slowly (5 tokens):
    p_1 = 3/4 (man, walks, forward), p_2 = 2/3 (man walks, walks forward),
    BP = exp(1 - 5/4) = exp(-1/4) = 0.778801; BLEU@1 = 0.75 * 0.778801 = 0.584101;
    BLEU@2 = exp(-1/4) * sqrt(3/4 * 2/3) = exp(-1/4) / sqrt(2) = 0.550695;
    p_4 = 0 (the man walks forward is no reference 4-gram): BLEU@4 = 0 without smoothing."""
    c, r = ["the man walks forward"], [["a man walks forward slowly"]]
    assert bleu(c, r, 1) == pytest.approx(0.75 * math.exp(-0.25), abs=1e-12)
    assert bleu(c, r, 2) == pytest.approx(math.exp(-0.25) / math.sqrt(2), abs=1e-12)
    assert bleu(c, r, 4) == 0.0


# ---------------------------------------------------------------------------------------
# ROUGE-L


def test_rouge_l_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])  # default: no stemming
    for s in SUBSETS:
        expected = [scorer.score_multi(rs, c)["rougeL"].fmeasure for c, rs in zip(CANDS[s], REFS[s])]
        assert rouge_l(CANDS[s], REFS[s]) == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    for c, rs in CORPUS:
        assert rouge_l([c], [rs]) == pytest.approx(scorer.score_multi(rs, c)["rougeL"].fmeasure, abs=1e-6)


def test_rouge_l_hand_worked():
    """c = a person walks then turns left (6), r = the person turns left (4): LCS = person turns
    left = 3, P = 3/6, R = 3/4, F = 2 (1/2)(3/4) / (1/2 + 3/4) = 0.75 / 1.25 = 0.6."""
    assert rouge_l(["a person walks then turns left"], [["the person turns left"]]) == pytest.approx(0.6)
    # the best reference counts, not the mean: 0.6 and 1.0 -> 1.0
    assert rouge_l(["a b"], [["a b c d e f g h", "a b"]]) == 1.0


# ---------------------------------------------------------------------------------------
# CIDEr-D


def _coco_cider(cands, refs):
    """pycocoevalcap's CiderScorer (= coco-caption's "CIDEr", which is CIDEr-D: clipping and the
    Gaussian length penalty) on the same space-joined tokens."""
    scorer = cider_scorer.CiderScorer(n=4, sigma=6.0)  # n = 4 only: its precook ignores n
    for c, rs in zip(cands, refs):
        scorer += (" ".join(caption_tokens(c)), [" ".join(caption_tokens(r)) for r in rs])
    return scorer.compute_score()[0]


def test_cider_d_matches_pycocoevalcap():
    for s in SUBSETS:
        assert cider_d(CANDS[s], REFS[s]) == pytest.approx(_coco_cider(CANDS[s], REFS[s]), abs=1e-6)
    # a corpus of one: every idf is 0
    assert cider_d(["a man walks"], [["a man walks"]]) == 0.0 == _coco_cider(["a man walks"], [["a man walks"]])


def test_cider_d_rewards_consensus():
    """Identical captions score highest; a repeated n-gram earns no more than its reference
    count (the clipping of CIDEr-D); the length penalty lowers a padded copy."""
    refs = [["a person walks forward"], ["a man jumps"], ["someone sits down"]]
    exact = cider_d(["a person walks forward", "a man jumps", "someone sits down"], refs)
    padded = cider_d(["a person walks forward and forward and forward", "a man jumps", "someone sits down"], refs)
    assert exact > padded > 0


# ---------------------------------------------------------------------------------------
# BERTScore


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with random weights and a hand-written WordPiece vocab, saved as a folder:
    the same model for bert_score (model_type=<folder>) and for caption_metrics."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    # "walks" and "jumps" left out: WordPiece splits them into walk ##s, jump ##s
    words = sorted({t for c, rs in CORPUS for s in [c] + rs for t in caption_tokens(s)} - {"walks", "jumps"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", ".", ",", ";", "!"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), model, tokenizer


@pytest.mark.parametrize("layer", [1, 2])
def test_bert_score_matches_package(tiny_bert, monkeypatch, layer):
    bert_score_pkg = pytest.importorskip("bert_score")
    from transformers import BertTokenizer

    # note: bert_score 0.3.13 encodes "" with tokenizer.build_inputs_with_special_tokens, which
    # transformers 5 dropped; restore BERT's definition ([CLS] ids [SEP]) for the reference run.
    def build_inputs_with_special_tokens(self, ids, ids2=None):
        return [self.cls_token_id] + ids + [self.sep_token_id]

    monkeypatch.setattr(BertTokenizer, "build_inputs_with_special_tokens", build_inputs_with_special_tokens,
                        raising=False)
    folder, model, tokenizer = tiny_bert
    for idf in (False, True):
        # bert_score accepts a local folder as model_type once num_layers is given (no model2layers look-up)
        _, _, f = bert_score_pkg.score(CANDS, REFS, model_type=folder, num_layers=layer, idf=idf,
                                       nthreads=0, batch_size=8, device="cpu")
        ours = bert_score(CANDS, REFS, model, tokenizer, layer, idf=idf)
        assert ours == pytest.approx(f.mean().item(), abs=1e-4)
        if not idf:  # per candidate (idf would change with the corpus)
            for (c, rs), expected in zip(CORPUS, f.tolist()):
                assert bert_score([c], [rs], model, tokenizer, layer) == pytest.approx(expected, abs=1e-4)


def test_bert_score_edge_cases(tiny_bert):
    _, model, tokenizer = tiny_bert
    assert bert_score(["a person walks"], [["a person walks"]], model, tokenizer, 2) == pytest.approx(1.0)
    assert bert_score([""], [["a person walks"]], model, tokenizer, 2) == 0.0
    with pytest.raises(ValueError, match="layer"):
        bert_score(["a"], [["a"]], model, tokenizer, 3)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            bert_score(["a"], [["a"]], model, tokenizer, 2)
    finally:
        model.eval()


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="2 candidates but 1"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d(["a"], ["a"])  # a string, not a list of references
    with pytest.raises(ValueError, match="non-empty list"):
        rouge_l(["a"], [[]])
