"""Caption metrics of motion-to-text evaluation, each a plain function of strings.

LaMP (seeds/003_d88d83113f8fa35c.txt) Tab. 4 reports motion captioning as MotionGPT (Jiang et al.
2023) does: Bleu@1, Bleu@4, Rouge, Cider and BertScore of generated captions against the dataset's
captions; its LaMP-BertScore (Sec. 3.4, Tab. 1) is BertScore of LaMP-M2T's caption of a generated
motion. Each function takes N candidate strings and, per candidate, a list of reference strings:

- `bleu`: corpus BLEU@n (Papineni et al. 2002, "BLEU: a Method for Automatic Evaluation of
  Machine Translation"), as nltk's `corpus_bleu` without smoothing.
- `rouge_l`: ROUGE-L F1 (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"),
  as the `rouge_score` package's "rougeL" with `score_multi`, averaged over candidates.
- `cider_d`: CIDEr-D (Vedantam et al. 2015, "CIDEr: Consensus-based Image Description
  Evaluation", arXiv 1411.5726), as coco-caption's cider_scorer.py (pycocoevalcap's `Cider`).
- `bert_score`: BERTScore F1 (Zhang et al. 2020, "BERTScore: Evaluating Text Generation with
  BERT", arXiv 1904.09675), as the `bert_score` package's `score`.

tests/test_caption_metrics.py checks each against that package on the same tokens.

Tokenisation: BLEU, ROUGE-L and CIDEr-D share `caption_tokens`, rouge_score's default tokeniser
(lower-case; every run of characters outside a-z, 0-9 separates tokens and is dropped, so
punctuation never counts as a word, as coco-caption's PTBTokenizer drops it). BERTScore uses the
model's own tokenizer.

Differences from the reference implementations:
- coco-caption tokenises with the Java Stanford PTBTokenizer ("person's" -> "person", "'s");
  here "person's" -> "person", "s". Scores can differ from published ones by that.
- coco-caption's ROUGE-L (beta = 1.2, best precision and best recall taken separately over the
  references) is not this one: this is rouge_score's F1 of the best reference.
- BERTScore: no baseline rescaling (it needs the package's downloaded baseline file), so the
  numbers are not on the scale of MotionGPT's and LaMP's (rescaled, idf on); no padding
  artefact (bert_score pads a batch with similarity 0, so a token whose best cosine is negative
  scores 0 there when its partner is not the longest sentence of its batch; here it keeps its
  true best cosine).

Glossary: N candidates, B batch, L tokens, D hidden width, M reference sentences.
"""

import math
import re
from collections import Counter

import torch
import torch.nn.functional as F

NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")  # rouge_score's tokenize.NON_ALPHANUM_PATTERN


# ---------------------------------------------------------------------------------------
# Helpers


def caption_tokens(text: str) -> list[str]:
    """Lower-case, split on every run of non-[a-z0-9] characters, drop empties (rouge_score's
    default tokeniser, no stemming): "A man walks, then SITS." -> [a, man, walks, then, sits]."""
    return [t for t in NON_ALPHANUMERIC.split(text.lower()) if t]


def _check(candidates, references):
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("caption metrics need at least one candidate")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")


def _ngram_counts(tokens: list[str], k: int) -> Counter:
    """Counts of the k-grams of one token list: tuple of k tokens -> count."""
    return Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))


# ---------------------------------------------------------------------------------------
# BLEU


def bleu(candidates: list[str], references: list[list[str]], n: int = 4) -> float:
    """Corpus BLEU@n, Papineni et al. 2002 Sec. 2, as nltk's `corpus_bleu(weights=(1/n,) * n)`.

        p_k  = sum_c sum_g min(count_c(g), max_r count_r(g)) / sum_c max(1, #k-grams of c)
        BP   = 1 if c_len > r_len, else exp(1 - r_len / c_len)   (0 when c_len = 0)
        BLEU = BP * exp(sum_{k=1..n} (1/n) log p_k)

    with g the k-grams, c_len the total candidate length and r_len the sum over candidates of
    the reference length closest to the candidate's (ties: the shorter). Tokens: `caption_tokens`.
    BLEU is 0.0 when some p_k is 0 (no smoothing; nltk returns 0 or a number below 1e-70).
    note: the max(1, .) is nltk's: a candidate shorter than k adds 1 to the denominator of p_k.
    """
    _check(candidates, references)
    matches, totals = [0] * n, [0] * n  # per order k = 1..n, summed over the corpus
    c_len = r_len = 0
    for cand, refs in zip(candidates, references):
        c, rs = caption_tokens(cand), [caption_tokens(r) for r in refs]
        for k in range(1, n + 1):
            counts = _ngram_counts(c, k)
            ref_counts = [_ngram_counts(r, k) for r in rs]
            # clipped count: a k-gram is credited at most as often as one reference holds it
            matches[k - 1] += sum(min(m, max(rc[g] for rc in ref_counts)) for g, m in counts.items())
            totals[k - 1] += max(1, sum(counts.values()))
        c_len += len(c)
        r_len += min((len(r) for r in rs), key=lambda length: (abs(length - len(c)), length))
    if min(matches) == 0:
        return 0.0
    bp = 1.0 if c_len > r_len else math.exp(1.0 - r_len / c_len)
    return bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / n)


# ---------------------------------------------------------------------------------------
# ROUGE-L


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, the O(|a| |b|) dynamic programme row by row."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l(candidates: list[str], references: list[list[str]]) -> float:
    """Mean over candidates of the best ROUGE-L F1 over its references (Lin 2004 Sec. 3.1):

        P = LCS(c, r) / |c|,   R = LCS(c, r) / |r|,   F = 2 P R / (P + R)   (0 if P + R = 0)

    with |.| in `caption_tokens` (rouge_score's tokeniser, no stemming); F = 0 when c or r has no
    token. This is rouge_score's "rougeL" fmeasure and `score_multi` (best F over references):
    Lin's F_lcs with beta = 1, not coco-caption's beta = 1.2.
    """
    _check(candidates, references)
    total = 0.0
    for cand, refs in zip(candidates, references):
        c, best = caption_tokens(cand), 0.0
        for ref in refs:
            r = caption_tokens(ref)
            lcs = _lcs_length(r, c)
            if lcs > 0:  # else F = 0, an empty side included
                p, rec = lcs / len(c), lcs / len(r)
                best = max(best, 2 * p * rec / (p + rec))
        total += best
    return total / len(candidates)


# ---------------------------------------------------------------------------------------
# CIDEr-D


def _all_ngrams(text: str, n: int) -> Counter:
    """Counts of the k-grams of `caption_tokens(text)` for k = 1..n (coco-caption's `precook`)."""
    tokens = caption_tokens(text)
    return sum((_ngram_counts(tokens, k) for k in range(1, n + 1)), Counter())


def _tfidf(counts: Counter, df: Counter, log_n: float, n: int) -> list[dict]:
    """g_k(s): per order k, k-gram -> tf * idf, idf = log(N) - log(max(1, df)) (Vedantam Eq. 1)."""
    vecs = [{} for _ in range(n)]
    for g, tf in counts.items():
        vecs[len(g) - 1][g] = tf * (log_n - math.log(max(1.0, df[g])))
    return vecs


def cider_d(candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (Vedantam et al. 2015 Sec. 3 and 4), as coco-caption's cider_scorer.py:

        idf(g)       = log(N) - log(max(1, df(g))),  df(g) = #candidates whose references hold g
        g_k(s)       = tf_s(g) * idf(g) over the k-grams g of s
        sim_k(c, r)  = sum_g min(g_k(c), g_k(r)) g_k(r) / (|g_k(c)| |g_k(r)|)   (0 if a norm is 0)
        CIDEr-D(c)   = 10 / n * sum_k 1/|R| sum_r sim_k(c, r) exp(-(l(c) - l(r))^2 / (2 sigma^2))

    and the corpus score is the mean over the N candidates. Tokens: `caption_tokens`.
    note: tf is the raw count, as coco-caption's; the paper's Eq. (1) divides it by the caption's
    n-gram total, which changes the clipping min(g_k(c), g_k(r)).
    l(s) = |s| is the word count. note: coco-caption counts bigrams, |s| - 1: the same difference
    unless a caption is empty, and then the cosine is 0 anyway. Its `n` is fixed at 4 in effect
    (its `precook` always counts up to 4-grams, and n < 4 fails), so only n = 4 is checked.
    note: with N = 1 every idf is log(1) - log(1) = 0, so CIDEr-D needs a corpus; it is 0 here.
    """
    _check(candidates, references)
    cands = [_all_ngrams(c, n) for c in candidates]
    refs = [[_all_ngrams(r, n) for r in rs] for rs in references]
    df = Counter(g for rs in refs for g in set().union(*rs))  # once per candidate's reference set
    log_n = math.log(len(candidates))
    scores = []
    for cand, rs in zip(cands, refs):
        vc = _tfidf(cand, df, log_n, n)
        total = 0.0
        for ref in rs:
            vr = _tfidf(ref, df, log_n, n)
            delta = sum(cand[g] for g in cand if len(g) == 1) - sum(ref[g] for g in ref if len(g) == 1)
            penalty = math.exp(-delta ** 2 / (2 * sigma ** 2))  # Gaussian length penalty, delta = |c| - |r|
            for k in range(n):
                norm = math.sqrt(sum(v * v for v in vc[k].values()) * sum(v * v for v in vr[k].values()))
                # clipping min(g_k(c), g_k(r)): repeating a reference n-gram earns nothing more
                dot = sum(min(v, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, v in vc[k].items())
                total += (dot / norm if norm > 0 else 0.0) * penalty
        scores.append(10.0 * total / (n * len(rs)))
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------
# BERTScore


@torch.no_grad()
def _embed(sentences: list[str], model, tokenizer, layer: int, batch_size: int) -> list[tuple]:
    """Per sentence: (token ids (L,), unit hidden states of `layer` (L, D)), [CLS]/[SEP] included."""
    # note: a tokenizer saved without model_max_length reports ~1e30, which truncation rejects
    max_len = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 10 ** 9))
    ids = [tokenizer.encode(s.strip(), add_special_tokens=True, truncation=True, max_length=max_len)
           for s in sentences]
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        L = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), L), tokenizer.pad_token_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros(len(batch), L, dtype=torch.long)  # (B, L), 1 = real token
        for i, x in enumerate(batch):
            input_ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
        out_b = model(input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hidden = out_b.hidden_states  # layers + 1 tensors (B, L, D); 0 = embeddings
        if not 0 <= layer < len(hidden):
            raise ValueError(f"layer must be in [0, {len(hidden) - 1}] (0 = embeddings), got {layer}")
        h = F.normalize(hidden[layer].float(), dim=-1).cpu()  # (B, L, D), unit rows
        out += [(torch.tensor(x), h[i, :len(x)]) for i, x in enumerate(batch)]
    return out


def bert_score(candidates: list[str], references: list[list[str]], model, tokenizer, layer: int,
               idf: bool = False, batch_size: int = 64) -> float:
    """Mean BERTScore F1 (Zhang et al. 2020 Sec. 3), as bert_score's `score(num_layers=layer)`.

    x_i, y_j are the unit hidden states of `layer` (hidden_states[layer], 0 = embeddings: for BERT
    and RoBERTa the output of bert_score's model cut to `layer` layers) of the candidate's and
    reference's tokens:

        P = sum_i w(x_i) max_j x_i . y_j / sum_i w(x_i)
        R = sum_j w(y_j) max_i x_i . y_j / sum_j w(y_j),   F = 2 P R / (P + R)

    w = 1 (idf=False) or idf(t) = log((M + 1) / (df(t) + 1)) over the M reference sentences
    (idf=True; a token absent from them gets log(M + 1)). [CLS] and [SEP] get w = 0 but stay
    matchable, as in bert_score; F = 0 when a side has no weight (an empty sentence). With several
    references a candidate keeps its best F. Baseline rescaling is off. Tokens: `tokenizer` on
    the stripped sentence, with special tokens (bert_score adds add_prefix_space=True for GPT-2
    and RoBERTa tokenizers: build those with add_prefix_space=True to match it).
    """
    _check(candidates, references)
    if model.training:
        raise ValueError("bert_score needs the model in eval mode (dropout off): call model.eval()")
    flat_refs = [r for rs in references for r in rs]
    sentences = list(dict.fromkeys(candidates + flat_refs))  # unique, in first-seen order
    embedded = dict(zip(sentences, _embed(sentences, model, tokenizer, layer, batch_size)))
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    df = Counter(t for r in flat_refs for t in set(embedded[r][0].tolist()))
    M = len(flat_refs)

    def weights(ids: torch.Tensor) -> torch.Tensor:  # (L,)
        if not idf:
            return (~torch.isin(ids, special)).float()
        return torch.tensor([math.log((M + 1) / (df[t] + 1)) for t in ids.tolist()])

    def f1(ids_c, x, ids_r, y) -> float:
        wc, wr = weights(ids_c), weights(ids_r)
        if wc.sum() == 0 or wr.sum() == 0:
            return 0.0  # an empty side (bert_score: 0/0 = nan, set to 0)
        sim = x @ y.T  # (L_c, L_r) cosine similarities
        p = (wc * sim.max(dim=1).values).sum() / wc.sum()  # greedy: each candidate token's best match
        r = (wr * sim.max(dim=0).values).sum() / wr.sum()  # each reference token's best match
        return float(2 * p * r / (p + r)) if p + r != 0 else 0.0

    best = [max(f1(*embedded[c], *embedded[r]) for r in refs) for c, refs in zip(candidates, references)]
    return sum(best) / len(best)
