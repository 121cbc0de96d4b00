"""The captions of the embedded synthetic dataset: paraphrase templates, conjugation, and the
`lemma/POS` tokens HumanML3D's text files carry (DESIGN.md, "The embedded synthetic dataset").

synthetic.py draws a motion as a program of 1-3 actions with modifiers (direction, side,
speed, rotation, count); `caption_for` turns that program into one caption: a subject, then a
paraphrase of each action joined by "then", and the caption's part-of-speech tokens, as
HumanML3D stores them (`caption#lemma/POS ...#0.0#0.0`, spaCy's universal tags). Different
draws give the 3-5 paraphrases per motion.

Notation: an action's `p` is the parameter dict synthesize_motion returns ("mods": its
modifiers, "count", "angle"); a template is a verb phrase whose *-marked words are verbs
("walk*" -> "walks" or "is walking") and whose {slots} the modifiers fill.

Differences from HumanML3D:
- Captions come from templates over a small vocabulary, not from annotators: they have none
  of real captions' variety, and methods compared on them are compared on this benchmark only.
- Tags come from a lexicon and one context rule (`_pos_tag`), not spaCy; every caption word
  must be in the lexicon (an assert says which is missing).
- The words of the held-out styles (STYLE_WORDS) never reach a train/val/test caption, so
  motion textual inversion has words to learn (synthetic.py checks this when writing).
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------
# The vocabulary and a small rule-based part-of-speech tagger

VERBS = {  # lemma -> (third person singular, present participle)
    "walk": ("walks", "walking"), "jog": ("jogs", "jogging"), "run": ("runs", "running"),
    "jump": ("jumps", "jumping"), "leap": ("leaps", "leaping"), "wave": ("waves", "waving"),
    "kick": ("kicks", "kicking"), "squat": ("squats", "squatting"), "crouch": ("crouches", "crouching"),
    "bend": ("bends", "bending"), "turn": ("turns", "turning"),
    "rotate": ("rotates", "rotating"), "step": ("steps", "stepping"), "move": ("moves", "moving"),
    "shuffle": ("shuffles", "shuffling"), "circle": ("circles", "circling"),
    "punch": ("punches", "punching"), "throw": ("throws", "throwing"), "box": ("boxes", "boxing"),
    "clap": ("claps", "clapping"), "applaud": ("applauds", "applauding"),
    "raise": ("raises", "raising"), "lift": ("lifts", "lifting"), "put": ("puts", "putting"),
    "stand": ("stands", "standing"), "wait": ("waits", "waiting"), "stay": ("stays", "staying"),
    "take": ("takes", "taking"), "do": ("does", "doing"), "make": ("makes", "making"),
    "dash": ("dashes", "dashing"),
    "limp": ("limps", "limping"), "skip": ("skips", "skipping"), "march": ("marches", "marching"),
    "tiptoe": ("tiptoes", "tiptoeing"), "sneak": ("sneaks", "sneaking"),
    "shamble": ("shambles", "shambling"), "stagger": ("staggers", "staggering"),
}

# word -> (lemma, universal POS tag), the tags spaCy gives in HumanML3D's text files
LEXICON = {w: (w, "DET") for w in ("a", "the", "his", "her", "their", "both")}
LEXICON.update({w: (w, "ADP") for w in ("with", "in", "to", "on", "like", "above", "at", "into")})
LEXICON.update({w: (w, "ADV") for w in (
    "forward", "forwards", "backward", "backwards", "ahead", "then", "first", "slowly", "quickly",
    "fast", "briskly", "once", "twice", "around", "sideways", "still", "back", "down",
    "up", "out", "together", "clockwise", "counterclockwise", "anticlockwise", "along", "happily",
    "cheerfully", "quietly", "proudly", "again")})
LEXICON.update({w: (w, "ADJ") for w in ("slow", "quick", "light", "few", "steady", "idle", "high",
                                        "straight", "quarter", "half", "several", "left", "right")})
LEXICON.update({w: (w, "NOUN") for w in (
    "person", "man", "woman", "figure", "human", "hand", "arm", "leg", "foot", "fist", "head",
    "circle", "place", "pace", "air", "kick", "walk", "jog", "squat", "turn", "line", "limp",
    "soldier", "zombie", "bounce", "side")})
LEXICON.update({"hands": ("hand", "NOUN"), "arms": ("arm", "NOUN"), "knees": ("knee", "NOUN"),
                "steps": ("step", "NOUN"), "squats": ("squat", "NOUN"), "punches": ("punch", "NOUN"),
                "times": ("time", "NOUN"), "tiptoes": ("tiptoe", "NOUN"),
                "someone": ("someone", "PRON"), "and": ("and", "CCONJ"),
                "is": ("be", "AUX"), "two": ("two", "NUM"), "three": ("three", "NUM"),
                "one": ("one", "NUM"), "hello": ("hello", "INTJ")})


def _pos_tag(words: list[str], verbs: set[int]) -> list[str]:
    """`lemma/POS` for each word. Verbs are known from the template; the rest is looked up,
    with one context rule: "left"/"right" before a noun is an ADJ ("left hand"), otherwise a
    NOUN ("to the left")."""
    tags = []
    for i, word in enumerate(words):
        if i in verbs:
            lemma = next(l for l, forms in VERBS.items() if word in forms or word == l)
            tags.append(f"{lemma}/VERB")
            continue
        assert word in LEXICON, f"caption word {word!r} is missing from the tagger's lexicon"
        lemma, pos = LEXICON[word]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in ("left", "right") and (LEXICON.get(nxt, ("", ""))[1] != "NOUN" or i + 1 in verbs):
            pos = "NOUN"
        tags.append(f"{lemma}/{pos}")
    return tags


# ----------------------------------------------------------------------------
# Paraphrase templates and captions

SUBJECTS = {"a person": "their", "someone": "their", "a man": "his", "the man": "his",
            "a woman": "her", "the woman": "her", "the person": "their", "a figure": "their",
            "a human": "their"}
SLOW, QUICK = ("slowly", "at a slow pace"), ("quickly", "fast", "briskly", "at a quick pace")
FORWARD, BACKWARD = ("forward", "forwards", "ahead"), ("backward", "backwards")
CW, CCW = ("clockwise",), ("counterclockwise", "anticlockwise")

# action -> templates; {dir} {speed} {side} {hand} {leg} {rot} {count} {pos} are slots
TEMPLATES = {
    "walk": ["walk* {dir}{speed}", "take* a few steps {dir}{speed}",
             "walk* {dir} in a straight line{speed}", "move* {dir} at a walk{speed}"],
    "jog": ["jog* {dir}", "do* a light jog {dir}", "jog* {dir} at a steady pace",
            "move* {dir} at a jog"],
    "run": ["run* {dir}{speed}", "run* {dir} in a straight line{speed}", "dash* {dir}{speed}"],
    "jump": ["jump* {count}", "jump* up {count}", "jump* in place {count}",
             "leap* into the air {count}"],
    "wave": ["wave* {pos} {side} {hand}{speed}", "wave* with {pos} {side} {hand}{speed}",
             "raise* {pos} {side} {hand} and wave*{speed}",
             "wave* hello with {pos} {side} {hand}{speed}"],
    "kick": ["kick* with {pos} {side} {leg} {count}", "kick* {pos} {side} {leg} forward {count}",
             "do* a kick with {pos} {side} {leg}", "kick* out with the {side} {leg} {count}"],
    "squat": ["squat* down{speed} {count}", "bend* {pos} knees and squat*{speed}",
              "crouch* down and stand* back up{speed}", "do* {squats}{speed}"],
    "turn": ["turn* {rot}", "turn* around {rot}", "rotate* {rot} in place", "make* a {turn} turn {rot}"],
    "side_step": ["take* side steps to the {side}", "step* sideways to the {side}",
                  "shuffle* sideways to the {side}", "move* to the {side} with side steps"],
    "walk_circle": ["walk* in a circle {rot}", "walk* {rot} in a circle",
                    "walk* around in a {rot} circle", "circle* around {rot}"],
    "punch": ["punch* with {pos} {side} {hand}", "throw* punches with {pos} {side} {hand}",
              "punch* forward with {pos} {side} fist", "box* with {pos} {side} {hand}"],
    "clap": ["clap* {pos} hands{speed}", "clap*{speed}", "clap* {pos} hands together{speed}",
             "applaud*{speed}"],
    "raise_arms": ["raise* {both} {arms}", "lift* {both} {arms} up", "put* {both} {arms} up in the air",
                   "raise* {both} {arms} above {pos} head"],
    "stand": ["stand* still", "stand* in place", "wait* in place", "stay* still", "stand* idle"],
    # the held-out styles
    "limp": ["limp* {dir}", "walk* {dir} with a limp", "limp* along", "limp* {dir} on one leg"],
    "skip": ["skip* {dir}", "skip* along happily", "skip* {dir} cheerfully",
             "skip* {dir} with a bounce"],
    "march": ["march* {dir}", "march* {dir} like a soldier", "march* {dir} with high knees",
              "march* along proudly"],
    "tiptoe": ["tiptoe* {dir}", "walk* {dir} on tiptoes", "tiptoe* {dir} quietly",
               "sneak* {dir} on tiptoes"],
    "zombie_walk": ["walk* like a zombie", "walk* {dir} like a zombie", "shamble* {dir} like a zombie",
                    "stagger* {dir} like a zombie with {pos} arms out"],
}
STYLE_WORDS = {  # never in a train/val/test caption (checked when writing)
    "limp", "limps", "limping", "skip", "skips", "skipping", "march", "marches", "marching",
    "tiptoe", "tiptoes", "tiptoeing", "zombie", "zombies"}


def _clause(action: str, p: dict, pronoun: str, rng: np.random.Generator) -> str:
    """One paraphrase of an action as a verb phrase with *-marked verbs."""
    def pick(options):
        return options[rng.integers(len(options))]

    mods, count = p["mods"], p.get("count", 1)
    slots = {
        "dir": pick(BACKWARD if mods.get("direction") == "backward" else FORWARD),
        "speed": {"slowly": " " + pick(SLOW), "quickly": " " + pick(QUICK)}.get(mods.get("speed"), ""),
        "side": mods.get("side", ""), "hand": pick(("hand", "arm")), "leg": pick(("leg", "foot")),
        "rot": pick(CW if mods.get("rot") == "clockwise" else CCW),
        "count": {1: pick(("", "once")), 2: pick(("twice", "two times")), 3: "three times"}.get(
            count, pick(("several times", "again and again"))),
        "squats": {1: "a squat", 2: "two squats", 3: "three squats"}.get(count, "several squats"),
        "turn": "half" if p["angle"] == 180 else "quarter",
        "pos": pronoun,
        "both": "both" if mods.get("hand") == "both" else f"{pronoun} {mods.get('hand')}",
        "arms": pick(("arms", "hands")) if mods.get("hand") == "both" else pick(("arm", "hand")),
    }
    return pick(TEMPLATES[action]).format(**slots)


def caption_for(actions: list[str], params: list[dict], rng: np.random.Generator) -> tuple[str, str]:
    """A caption and its `lemma/POS` tokens: subject + clauses joined by "then"."""
    subject = list(SUBJECTS)[rng.integers(len(SUBJECTS))]
    progressive = rng.random() < 0.25  # "is walking" instead of "walks"
    joiner = [" then ", ", then ", " and then "][rng.integers(3)]
    text = joiner.join(_clause(a, p, SUBJECTS[subject], rng) for a, p in zip(actions, params))
    if len(actions) > 1 and not progressive and rng.random() < 0.2:
        text = "first " + text
    words, verbs = subject.split(), set()
    for raw in text.replace(",", "").split():
        if raw.endswith("*"):
            lemma = raw[:-1]
            if progressive:
                words.append("is")
            verbs.add(len(words))
            words.append(VERBS[lemma][1 if progressive else 0])
        else:
            words.append(raw)
    caption = " ".join(words).replace(" then", ", then" if "," in joiner else " then")
    if rng.random() < 0.5:
        caption += "."
    return caption, " ".join(_pos_tag(words, verbs))
