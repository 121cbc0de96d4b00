"""MATE's text-motion joint segmentation (Eq. 1) and the caption helpers it needs.

Paper: Motion-Aligned Word Embeddings for Text-to-Motion Generation (Han, Lyu, Sebe;
../shared/seeds/004_fcd44ad5e4e1e096.txt), Sec. 3.2. The model and its losses (Eqs. 2-8)
are in mate.py, which calls this file once per training motion, before any training:

    min_{s_n, e_n} sum_n 1 - cos(E_t(t^n), E_m(m[s_n:e_n]))                      Eq. (1)

A caption t is split into temporally ordered sub-texts t^1..t^N (`split_caption`); the motion
m is cut into N contiguous segments [s_n, e_n) minimising Eq. (1) (`joint_segmentation`). The
segment of the sub-text holding the sampled word w centres mate.py's attention prior (Eq. 4).
`lemmatize` gives the lemma each prototype stands for (Sec. 4.1); `FUNCTION_WORDS` are never
sampled as w.

Reading order: sub-text decomposition, lemmatisation, the grid and the exact search
(`best_partition`), the segment embeddings with the work overlapping clips share done once
(`embed_segments`, equal to the embedder's own forward and faster: bench/bench_mate.py), and
Eq. (1) for one motion and all its captions.

Differences from the paper:
- Sub-texts come from a deterministic rule-based splitter on sequence markers ("then", "after
  that", "followed by", "X after Y-ing", ...), not ChatGPT. A bare "and" never splits, so
  "walks and sits down" stays one sub-text where ChatGPT might split it.
- E_t, E_m are the run's frozen `alignment` embedder (Guo et al.'s evaluator architecture
  trained here, contrastive on Euclidean distances, its lexicon tagging each sub-text:
  t2m_evaluator.T2MEvaluator), not HumanTOMATO's retrieval model.
- The search is exact (dynamic programming) over boundaries on a grid of `segment_grid` frames,
  segments at least `min_segment` long; the paper does not say at which resolution it searches.
- Lemmatisation is rule-based, checked against the synthetic dataset's tags (tests); the paper
  does not name its lemmatiser.

Glossary: T frames, D feature width, E embedding width, N sub-texts, P grid points, S segments.
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from metrics import DOWNSAMPLE
from t2m_evaluator import FOOT_CONTACT_DIMS

# ----------------------------------------------------------------------------
# 1. Sub-text decomposition (replaces the paper's ChatGPT step, Sec. 3.2)

# Markers that end one action and start the next, in the caption's order. Longest first, so
# "and then" is consumed whole; "before" keeps the order too ("X before Y" = X, then Y).
# "before"/"after" only split when a gerund or a subject follows ("after walking", "before he
# sits"), so "stands before the door" or "runs after the ball" stay whole.
_SUBJECT = r"(?:he|she|they|it|someone|somebody|the person|the man|the woman|a person)\b"
_CLAUSE = rf"(?=\w+ing\b|{_SUBJECT})"
_SEQUENCE = re.compile(
    r"\s*,?\s*\b(?:and then|then|and after that|after that|after which|and afterwards|afterwards|"
    r"followed by|and finally|finally|and lastly|lastly|and next|"
    rf"before {_CLAUSE})\b\s*,?\s*")
_AFTER = re.compile(rf"^(.+?)\s*,?\s+after\s+{_CLAUSE}(.+)$")      # "X after Y" -> Y, X
_LEADING = re.compile(rf"^(before|after)\s+{_CLAUSE}([^,]+),\s*(.+)$")  # "after Y, X" -> Y, X
_FIRST = re.compile(r"(?<!the )\b(?:at first|first|initially)\b\s*")
# a piece made only of these words is a subject cut off by a marker ("he then turns")
_SUBJECT_WORDS = {"he", "she", "they", "it", "someone", "somebody", "person", "man", "woman", "human",
                  "figure", "the", "a", "an"}


def _split_sentence(sentence: str) -> list[str]:
    sentence = sentence.strip(" ,")
    if not sentence:
        return []
    leading = _LEADING.match(sentence)
    if leading:  # "before Y, X" -> X, Y ;  "after Y, X" -> Y, X
        word, clause, main = leading.groups()
        first, second = (clause, main) if word == "after" else (main, clause)
        return _split_sentence(first) + _split_sentence(second)
    pieces = _SEQUENCE.split(sentence)
    if len(pieces) > 1:
        return [sub for piece in pieces for sub in _split_sentence(piece)]
    after = _AFTER.match(sentence)
    if after:  # "X after Y" -> Y, X
        return _split_sentence(after.group(2)) + _split_sentence(after.group(1))
    return [sentence]


def split_caption(caption: str) -> list[str]:
    """A caption -> its temporally ordered sub-texts (lower case, markers removed).

    "a person walks forward, then turns around and then sits down"
        -> ["a person walks forward", "turns around", "sits down"]
    "a man sits down after walking forward" -> ["walking forward", "a man sits down"]
    A caption without markers is one sub-text."""
    text = re.sub(r"\s+", " ", caption.lower()).strip()
    pieces = [p for sentence in re.split(r"\s*[.;!?]+\s*", text) for p in _split_sentence(sentence)]
    merged: list[str] = []
    for piece in pieces:  # glue a stranded subject to what follows it
        if merged and set(merged[-1].split()) <= _SUBJECT_WORDS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    if len(merged) > 1:  # "first" only orders the sub-texts; drop it once they are split
        merged = [_FIRST.sub("", p).strip() or p for p in merged]
    return merged or [text]


# ----------------------------------------------------------------------------
# 2. Lemmatisation (the prototypes are per lemma, Sec. 4.1)

_IRREGULAR = {
    "is": "be", "are": "be", "was": "be", "were": "be", "been": "be", "being": "be", "am": "be",
    "does": "do", "did": "do", "done": "do", "has": "have", "had": "have", "having": "have",
    "goes": "go", "went": "go", "gone": "go", "ran": "run", "took": "take", "taken": "take",
    "made": "make", "sat": "sit", "stood": "stand", "threw": "throw", "thrown": "throw",
    "got": "get", "came": "come", "spun": "spin", "swung": "swing", "bent": "bend", "fell": "fall",
    "fallen": "fall", "began": "begin", "leapt": "leap", "knelt": "kneel", "held": "hold",
    "kept": "keep", "lay": "lie", "lying": "lie", "feet": "foot", "men": "man", "women": "woman",
    "people": "person", "doing": "do", "going": "go", "using": "use", "lunging": "lunge",
    "lunged": "lunge", "changing": "change",
}
# words whose ending only looks inflected
_KEEP = {"forwards", "backwards", "sideways", "towards", "afterwards", "always", "downwards",
         "upwards", "left", "speed", "across", "this", "thus", "his", "its", "bus", "plus",
         "during", "nothing", "something", "anything", "everything", "ceiling", "evening"}
_VOWELS = set("aeiou")


def _restore_e(stem: str) -> str:
    """Put back the silent e that -ing/-ed removed: wav(ing) -> wave, rais(ed) -> raise,
    shuffl(ing) -> shuffle, rotat(ing) -> rotate; walk, wait, turn are left alone."""
    if len(stem) < 2:
        return stem
    a, b = stem[-2], stem[-1]
    syllables = len(re.findall(r"[aeiou]+", stem))
    if b in "vcu" or (b == "s" and a in _VOWELS) or (b == "l" and a in "bcdfgkptz"):
        return stem + "e"
    if stem.endswith("at") and len(stem) > 2 and stem[-3] not in _VOWELS and syllables > 1:
        return stem + "e"  # rotat -> rotate, but eat, wait stay
    # one syllable ending consonant-vowel-consonant was not doubled, so its e was silent:
    # tak -> take, mak -> make (compare stepp -> step, handled before this)
    if (syllables == 1 and len(stem) >= 3 and b not in _VOWELS | set("wxy") and a in _VOWELS
            and stem[-3] not in _VOWELS):
        return stem + "e"
    return stem


def _strip_suffix(word: str, suffix: str) -> str:
    stem = word[: -len(suffix)]
    if len(stem) >= 2 and stem[-1] == stem[-2] and stem[-1] not in _VOWELS | set("lsz"):
        return stem[:-1]  # running -> run, stepped -> step (but falling, passing keep ll, ss)
    return _restore_e(stem)


def lemmatize(word: str) -> str:
    """A rule-based English lemmatiser for motion captions: walks, walking, walked -> walk;
    punches -> punch; knees -> knee; is -> be; feet -> foot. Adverbs and adjectives keep
    their form (slowly, forwards)."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _KEEP or len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"  # carries -> carry
    if w.endswith("ied") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("ing") and len(w) > 5:
        return _strip_suffix(w, "ing")
    if w.endswith("ed") and len(w) > 4 and not w.endswith("eed"):
        return _strip_suffix(w, "ed")
    if re.search(r"(?:ch|sh|ss|x|zz)es$", w):
        return w[:-2]  # punches -> punch, boxes -> box
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]  # walks -> walk, waves -> wave, knees -> knee
    return w


# Closed-class words: never sampled as the query word w (they carry no motion of their own).
FUNCTION_WORDS = frozenset(
    "a an the his her their its my your our this that these those he she they it him them "
    "someone somebody one be do have and or but so then with of to in on at into onto from by "
    "for as while first after before afterwards finally next lastly again also".split())


def words_of(text: str) -> list[str]:
    """The words of a caption as CLIP's tokenizer sees them (lower case letter runs)."""
    return re.findall(r"[a-z]+", text.lower())


# ----------------------------------------------------------------------------
# 3. Text-motion joint segmentation (Sec. 3.2, Eq. 1)


def grid_points(T: int, grid: int) -> list[int]:
    """Candidate boundaries 0, grid, 2 grid, ..., T (T always included)."""
    return list(range(0, T, grid)) + [T]


def best_partition(cost: torch.Tensor, points: list[int]) -> tuple[list[tuple[int, int]], float]:
    """Exact minimiser of Eq. (1) over contiguous partitions on the grid, by dynamic programming.

    cost (N, P, P): cost[n, a, b] = 1 - cos(E_t(t^n), E_m(m[points[a]:points[b]])), +inf where a
    segment is not allowed. Segments chain (s_{n+1} = e_n), the first starts at points[0] = 0 and
    the last ends at points[-1] = T. Returns ([(s_n, e_n)] in frames, the minimal total cost).

        best[0][b] = cost[0, 0, b]
        best[n][b] = min_a best[n-1][a] + cost[n, a, b]      (a < b)
    """
    N, P, _ = cost.shape
    assert P == len(points), f"cost is over {P} grid points, {len(points)} given"
    best = cost[0, 0].clone()                                          # (P,) one segment from 0 to b
    choices = []
    for n in range(1, N):
        total = best[:, None] + cost[n]                                # (P a, P b)
        best, arg = total.min(dim=0)                                   # (P,), (P,)
        choices.append(arg)
    if not torch.isfinite(best[-1]):
        raise ValueError(f"no partition of {points[-1]} frames into {N} allowed segments")
    ends = [P - 1]
    for arg in reversed(choices):  # backtrack the start of each segment
        ends.append(int(arg[ends[-1]]))
    ends = ends[::-1]                                                  # N grid indices of the ends
    starts = [0] + ends[:-1]
    return [(points[a], points[b]) for a, b in zip(starts, ends)], float(best[-1])


def candidate_segments(T: int, n_max: int, grid: int, min_len: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The grid points and the (a, b) index pairs any partition into up to n_max sub-texts uses:
    with n_max = 2 only segments touching 0 or T, from 3 every pair; each at least min_len long."""
    points = grid_points(T, grid)
    P = len(points)
    pairs = [(a, b) for a in range(P) for b in range(a + 1, P)
             if points[b] - points[a] >= min_len and (n_max >= 3 or a == 0 or b == P - 1)]
    return points, pairs


def _one_direction(gru: nn.GRU, reverse: bool) -> nn.GRU:
    """A one-directional GRU holding the forward (or the reverse) weights of a bidirectional one."""
    one = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True).to(gru.weight_ih_l0)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        getattr(one, name).data.copy_(getattr(gru, name + ("_reverse" if reverse else "")))
    return one


def _run(gru: nn.GRU, sequences: list[torch.Tensor], h0: torch.Tensor) -> torch.Tensor:
    """Every step's state of a one-directional GRU from the state h0 (H,) over sequences of
    different lengths (n, K, H)."""
    packed = nn.utils.rnn.pack_sequence(sequences, enforce_sorted=False)
    start = h0[None, None].expand(1, len(sequences), -1).contiguous()  # (1, n, H)
    states, _ = nn.utils.rnn.pad_packed_sequence(gru(packed, start)[0], batch_first=True)
    return states


@torch.no_grad()
def embed_segments(embedder, motion: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Unit-norm E_m(m[s:e]) for each span of one motion (T, D) -> (S, E), equal to
    `embedder.encode_motion(m[s:e])` of a t2m_evaluator.T2MEvaluator trained here (mask_padding:
    frames past a clip read as zeros; a test checks it), with the work that overlapping clips
    share done once.

    encode_motion runs two convolutions (kernel 4, stride 2, padding 1: one GRU step per 4
    frames) and a bidirectional GRU. For a clip whose bounds are multiples of 4, step k reads
    the same frames as step s/4 + k of the whole motion, except that the clip sees zeros where
    the motion has frames before s or from e on. That changes only its first step (it depends
    on s alone) and its last step (on e alone). So, per motion:
      1. the convolutions run once over the whole motion, plus one first-step input per start
         and one last-step input per end (with the zeros put in);
      2. the forward GRU runs once per start over the rest of the motion; a clip's forward
         state is one more GRU step, on its last-step input, from the state at its step K - 2;
      3. the backward GRU runs once per end, down to frame 0; a clip's backward state is one
         more step, on its first-step input, from the state after its steps K-1 .. 1;
      4. the output head on both states, as encode_motion."""
    assert not embedder.training, "call embedder.eval() (dropout)"
    assert embedder.cfg.mask_padding, "segments are embedded as an evaluator trained here reads clips (mask_padding)"
    T, D = motion.shape
    step = DOWNSAMPLE  # 4 frames per GRU step
    assert all(s % step == 0 and e % step == 0 and e - s >= 2 * step for s, e in spans), \
        f"span bounds must be multiples of {step} frames, spans at least {2 * step} long"
    conv1, conv2 = embedder.movement_encoder.main[0], embedder.movement_encoder.main[3]
    gru, h0 = embedder.motion_encoder.gru, embedder.motion_encoder.hidden[:, 0]  # h0 (2, Hg): learned
    # the movement encoder's out_net, then the motion encoder's input_emb: two Linear maps in a row
    motion_in = lambda h: embedder.motion_encoder.input_emb(embedder.movement_encoder.out_net(h))  # noqa: E731
    x = motion[:, :D - FOOT_CONTACT_DIMS]                              # (T, D'), as encode_motion
    frames = F.pad(x, (0, 0, 1, 1))                                    # (T+2, D'): row i is frame i - 1
    c1 = conv1(x.T[None])[0].T                                         # (T/2, H1) before the activation
    a1 = F.leaky_relu(c1, 0.2)                                         # (T/2, H1)
    inner = motion_in(F.leaky_relu(conv2(a1.T[None])[0].T, 0.2))       # (T/4, Hg) GRU inputs, whole motion

    def gru_input(window: torch.Tensor) -> torch.Tensor:               # (n, 4, H1) -> (n, Hg), one step
        return motion_in(F.leaky_relu(F.conv1d(window.transpose(1, 2), conv2.weight, conv2.bias)[..., 0], 0.2))

    # 1. first-step inputs (first conv output misses frame s - 1) and last-step inputs (misses frame e)
    starts, ends = sorted({s for s, _ in spans}), sorted({e for _, e in spans})
    s_, e_ = torch.tensor(starts, device=x.device), torch.tensor(ends, device=x.device)
    zero = a1.new_zeros(len(starts), a1.shape[1])
    first = F.leaky_relu(c1[s_ // 2] - frames[s_] @ conv1.weight[:, :, 0].T, 0.2)       # (nS, H1)
    x_first = gru_input(torch.stack([zero, first, a1[s_ // 2 + 1], a1[s_ // 2 + 2]], 1))  # (nS, Hg)
    zero = a1.new_zeros(len(ends), a1.shape[1])
    last = F.leaky_relu(c1[e_ // 2 - 1] - frames[e_ + 1] @ conv1.weight[:, :, 3].T, 0.2)  # (nE, H1)
    x_last = gru_input(torch.stack([a1[e_ // 2 - 3], a1[e_ // 2 - 2], last, zero], 1))  # (nE, Hg)
    # 2-3. one GRU run per start (forward) and per end (backward, reversed in time)
    fwd, bwd = _one_direction(gru, False), _one_direction(gru, True)
    fwd_states = _run(fwd, [torch.cat([x_first[i:i + 1], inner[s // step + 1:]]) for i, s in enumerate(starts)], h0[0])
    # fwd_states (nS, K, Hg): state after the clip's steps 0..k
    bwd_states = _run(bwd, [torch.cat([x_last[i:i + 1], inner[:e // step - 1].flip(0)]) for i, e in enumerate(ends)], h0[1])
    # bwd_states (nE, K, Hg): state after the clip's steps K-1 down to K-1-k
    # each clip: one more step in each direction
    start_row, end_row = {s: i for i, s in enumerate(starts)}, {e: i for i, e in enumerate(ends)}
    si = torch.tensor([start_row[s] for s, _ in spans], device=x.device)      # (S,)
    ei = torch.tensor([end_row[e] for _, e in spans], device=x.device)
    n = torch.tensor([(e - s) // step for s, e in spans], device=x.device)   # K of each clip
    h_fwd, _ = fwd(x_last[ei][:, None], fwd_states[si, n - 2][None])   # (S, 1, Hg)
    h_bwd, _ = bwd(x_first[si][:, None], bwd_states[ei, n - 2][None])
    # 4. the head of encode_motion on [forward, backward]
    return F.normalize(embedder.motion_encoder.output_net(torch.cat([h_fwd[:, 0], h_bwd[:, 0]], -1)), dim=-1)


@torch.no_grad()
def joint_segmentation(embedder, motion: torch.Tensor, captions_subtexts: list[list[str]],
                       grid: int, min_len: int) -> list[list[tuple[int, int]]]:
    """Eq. (1) for one motion (T, D) and each of its captions (given as sub-text lists) ->
    per caption [(s_n, e_n)] in frames. Segment embeddings are computed once per motion and
    shared by its captions; a caption with one sub-text gets the whole motion."""
    T = len(motion)
    n_max = max(len(s) for s in captions_subtexts)
    out = [[(0, T)] for _ in captions_subtexts]
    if n_max == 1:
        return out
    assert grid % DOWNSAMPLE == 0 and T % DOWNSAMPLE == 0, \
        f"boundaries on the embedder's {DOWNSAMPLE}-frame steps: grid and T must be multiples of {DOWNSAMPLE}"
    assert n_max <= T // grid, f"{n_max} sub-texts cannot share {T} frames on a grid of {grid}"
    # a motion too short for n_max segments of min_len gets shorter ones (never below 2 steps)
    min_len = max(grid, 2 * DOWNSAMPLE, min(min_len, grid * (T // (grid * n_max))))
    points, pairs = candidate_segments(T, n_max, grid, min_len)
    seg = embed_segments(embedder, motion, [(points[a], points[b]) for a, b in pairs])   # (S, E)
    a_idx, b_idx = (torch.tensor(x, device=motion.device) for x in zip(*pairs))
    texts = [t for subtexts in captions_subtexts for t in subtexts]
    text = F.normalize(embedder.encode_text(embedder.tokenizer(texts)), dim=-1)   # (sum N, E)
    offset = 0
    for k, subtexts in enumerate(captions_subtexts):
        N, offset = len(subtexts), offset + len(subtexts)
        if N == 1:
            continue
        cost = torch.full((N, len(points), len(points)), math.inf, device=motion.device)
        # Eq. (1): cost of sub-text n on segment (a, b) = 1 - cos(E_t(t^n), E_m(m[s:e]))
        cost[:, a_idx, b_idx] = 1.0 - text[offset - N:offset] @ seg.T  # (N, S)
        out[k], _ = best_partition(cost.cpu(), points)
    return out
