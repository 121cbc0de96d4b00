"""Tests for mate_segmentation.py: the sub-text splitter and the lemmatiser on real-looking
captions, the exact segmentation search (Eq. 1) against brute force and on a toy with a known
optimum, and the shared-work segment embedding against the embedder's own forward."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import mate_segmentation
import synthetic_captions
from t2m_evaluator import T2MEvaluator, T2MEvaluatorConfig


def tiny_embedder(seed: int = 0) -> T2MEvaluator:
    """An evaluator as train.py trains one (mask_padding), with small sizes and two captions."""
    torch.manual_seed(seed)
    cfg = T2MEvaluatorConfig(dim_word=8, dim_text_hidden=8, dim_movement_enc_hidden=12,
                             dim_movement_latent=10, dim_motion_hidden=6, dim_coemb_hidden=5,
                             mask_padding=True)
    tagged = {"a man walks": "a/DET man/NOUN walk/VERB", "a man jumps": "a/DET man/NOUN jump/VERB"}
    return T2MEvaluator.trained(cfg, 263, tagged).eval()


# ----------------------------------------------------------------------------
# Sub-texts and lemmas


@pytest.mark.parametrize("caption, expected", [
    ("a person walks forward, then turns around and then sits down.",
     ["a person walks forward", "turns around", "sits down"]),
    ("The person first turns clockwise, then jumps in place once.",
     ["the person turns clockwise", "jumps in place once"]),
    ("a man walks forward. he then turns around", ["a man walks forward", "he turns around"]),
    ("a man sits down after walking forward", ["walking forward", "a man sits down"]),
    ("after walking forward, the person sits down", ["walking forward", "the person sits down"]),
    ("before sitting down, the person waves", ["the person waves", "sitting down"]),
    ("someone jogs in place before he stops", ["someone jogs in place", "he stops"]),
    ("a person walks forward followed by a jump", ["a person walks forward", "a jump"]),
    ("a person kicks, after that he punches and finally bows",
     ["a person kicks", "he punches", "bows"]),
    # no sequence marker: one sub-text ("and", "while" and spatial "before"/"after" never split)
    ("a person bends their knees and squats slowly", ["a person bends their knees and squats slowly"]),
    ("a man waves while walking", ["a man waves while walking"]),
    ("a person runs after the ball", ["a person runs after the ball"]),
    ("the man stands before the door", ["the man stands before the door"]),
])
def test_split_caption(caption, expected):
    assert mate_segmentation.split_caption(caption) == expected


def test_lemmatize_agrees_with_the_synthetic_datasets_tagger():
    """The synthetic captions tag every word as `lemma/POS` (HumanML3D's format); their lexicon
    and verb table are an independent reference."""
    pairs = [(form, lemma) for lemma, forms in synthetic_captions.VERBS.items() for form in (lemma, *forms)]
    pairs += [(word, lemma) for word, (lemma, _) in synthetic_captions.LEXICON.items()]
    wrong = [(w, mate_segmentation.lemmatize(w), l) for w, l in pairs if mate_segmentation.lemmatize(w) != l]
    assert not wrong


@pytest.mark.parametrize("word, lemma", [
    ("sitting", "sit"), ("ran", "run"), ("feet", "foot"), ("stumbles", "stumble"), ("dancing", "dance"),
    ("carries", "carry"), ("walked", "walk"), ("jogged", "jog"), ("waved", "wave"), ("rotated", "rotate"),
    ("crossing", "cross"), ("crawling", "crawl"), ("kneeling", "kneel"), ("hoping", "hope"),
    ("hopping", "hop"), ("sliding", "slide"), ("placed", "place"), ("lowered", "lower"),
    ("forwards", "forwards"), ("slowly", "slowly"), ("left", "left"), ("is", "be"),
])
def test_lemmatize_humanml3d_words(word, lemma):
    assert mate_segmentation.lemmatize(word) == lemma


# ----------------------------------------------------------------------------
# Eq. (1): the exact search


def brute_force(cost, points):
    """Every way of choosing N-1 inner boundaries among the grid points."""
    N, P, _ = cost.shape
    best, arg = math.inf, None
    for inner in itertools.combinations(range(1, P - 1), N - 1):
        idx = (0, *inner, P - 1)
        total = sum(float(cost[n, idx[n], idx[n + 1]]) for n in range(N))
        if total < best:
            best, arg = total, [(points[idx[n]], points[idx[n + 1]]) for n in range(N)]
    return arg, best


@pytest.mark.parametrize("N", [2, 3, 4])
def test_best_partition_matches_brute_force(N):
    g = torch.Generator().manual_seed(N)
    points = mate_segmentation.grid_points(40, 4)                     # 11 points
    for _ in range(5):
        cost = torch.rand(N, len(points), len(points), generator=g)
        cost[:, torch.ones(len(points), len(points)).tril().bool()] = math.inf   # a < b only
        cost[:, 0, 1] = math.inf                                       # a forbidden segment
        bounds, total = mate_segmentation.best_partition(cost, points)
        expected, expected_total = brute_force(cost, points)
        assert bounds == expected and total == pytest.approx(expected_total)
        assert bounds[0][0] == 0 and bounds[-1][1] == 40
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # s_{n+1} = e_n


class OneHotEmbedder:
    """A toy E_t, E_m over three actions: a sub-text's embedding is the one-hot of its action
    (told by its first word), a segment's the mean one-hot of the actions of its frames (the
    action of a frame is its first feature)."""
    ACTIONS = ("walks", "jumps", "turns")

    def tokenizer(self, texts):  # sub-texts -> (n, 2) ids: a start token, then the action
        return torch.tensor([[0, self.ACTIONS.index(t.split()[0])] for t in texts])

    def encode_text(self, ids):
        return F.one_hot(ids[:, 1], 3).float()


def toy_embed_segments(embedder, motion, spans):
    return F.normalize(torch.stack([F.one_hot(motion[s:e, 0].long(), 3).float().mean(0) for s, e in spans]), dim=-1)


def test_joint_segmentation_finds_the_known_optimum(monkeypatch):
    """Actions 0, 1, 2 on frames [0, 12), [12, 28), [28, 40): the only partition of cost 0
    for the sub-texts in that order; in another order the search must find another one."""
    monkeypatch.setattr(mate_segmentation, "embed_segments", toy_embed_segments)
    truth = [(0, 12), (12, 28), (28, 40)]
    motion = torch.zeros(40, 263)
    for k, (s, e) in enumerate(truth):
        motion[s:e, 0] = k
    words = list(OneHotEmbedder.ACTIONS)
    out = mate_segmentation.joint_segmentation(OneHotEmbedder(), motion,
                                               [words, ["walks forward"], ["turns", "walks", "jumps"]],
                                               grid=4, min_len=8)
    assert out[0] == truth
    assert out[1] == [(0, 40)]  # one sub-text: the whole motion, no search
    assert out[2] != truth and out[2][0][0] == 0 and out[2][-1][1] == 40


def test_segment_embeddings_equal_the_embedders_forward():
    embedder = tiny_embedder()
    motion = torch.randn(64, 263)
    spans = [(0, 64), (0, 16), (4, 20), (8, 64), (12, 40), (20, 28), (56, 64), (0, 8), (4, 60), (32, 64)]
    got = mate_segmentation.embed_segments(embedder, motion, spans)
    with torch.no_grad():
        expected = torch.cat([embedder.encode_motion(motion[None, s:e], torch.tensor([e - s])) for s, e in spans])
    torch.testing.assert_close(got, F.normalize(expected, dim=-1), rtol=1e-5, atol=1e-6)
