"""A tiny Guo et al. evaluator trained here (t2m_evaluator.T2MEvaluator.trained) over a ten-word
vocabulary, shared by the tests of metrics.py, evaluation.py and t2m_evaluator.py."""
import torch

from t2m_evaluator import T2MEvaluator, T2MEvaluatorConfig

TINY = T2MEvaluatorConfig(dim_word=8, dim_text_hidden=8, dim_coemb_hidden=6, dim_movement_enc_hidden=8,
                          dim_movement_latent=8, dim_motion_hidden=8, mask_padding=True, min_word_count=1)
WORDS = ["a", "person", "walks", "runs", "jumps", "waves", "forward", "backward", "slowly", "then"]
TAGS = {"a": "a/DET", "person": "person/NOUN", "walks": "walk/VERB", "runs": "run/VERB", "jumps": "jump/VERB",
        "waves": "wave/VERB", "forward": "forward/ADV", "backward": "backward/ADV", "slowly": "slowly/ADV",
        "then": "then/ADV"}


def tagged(captions) -> dict:
    """caption -> its word/POS field, as data.py reads texts/*.txt."""
    return {c: " ".join(TAGS[w] for w in c.split()) for c in captions}


def tiny_embedder(seed=0, feat_dim=12):
    torch.manual_seed(seed)
    tags = tagged([f"a person {v} {d} slowly then" for v in WORDS[2:6] for d in WORDS[6:8]])
    return T2MEvaluator.trained(TINY, feat_dim, tags).eval()
