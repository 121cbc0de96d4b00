"""Tests for synthetic_captions.py: the part-of-speech tagger on hand-tagged captions, and that
every drawn caption carries one `lemma/POS` token per word, its verbs tagged VERB. (The
captions as written into a dataset are checked in test_synthetic.py.)"""
import re

import numpy as np
import pytest

import synthetic_captions


@pytest.mark.parametrize("words, verbs, expected", [
    # "left" before a noun is an adjective ...
    ("a person waves the left hand", {2}, "a/DET person/NOUN wave/VERB the/DET left/ADJ hand/NOUN"),
    # ... and a noun at the end of a phrase
    ("a man steps to the left", {2}, "a/DET man/NOUN step/VERB to/ADP the/DET left/NOUN"),
    ("someone is jogging forward", {2}, "someone/PRON be/AUX jog/VERB forward/ADV"),
])
def test_pos_tag_hand_tagged(words, verbs, expected):
    assert synthetic_captions._pos_tag(words.split(), verbs) == expected.split()


def test_caption_tokens_follow_the_words():
    actions = ["walk", "turn"]
    params = [{"mods": {"direction": "backward", "speed": "slowly"}, "angle": 90},
              {"mods": {"rot": "clockwise"}, "angle": 180}]
    for seed in range(30):
        caption, tokens = synthetic_captions.caption_for(actions, params, np.random.default_rng(seed))
        words, tags = re.findall(r"[a-z]+", caption), tokens.split()
        assert len(tags) == len(words), caption
        assert "then" in words and any(t.endswith("/VERB") for t in tags)
        assert {"walk/VERB", "step/NOUN", "move/VERB", "walk/NOUN"} & set(tags), caption
        assert not synthetic_captions.STYLE_WORDS & set(words)
