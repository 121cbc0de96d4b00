"""Text-to-motion evaluation: the metric formulas and the text-motion feature extractor.

Every number in the project's tables is computed here, with the evaluation protocol of
Guo et al. 2022 ("Generating Diverse and Natural 3D Human Motions from Text", the T2M
evaluator) that MLD, LEAD, ATM, MATE and LaMP all report:

- LEAD (seeds/000_c8069c11a3356e2a.txt, arXiv 2410.14508) Sec. 5.1.2: FID (Eq. 11),
  R-precision top-1/2/3, MMdist (Eq. 12), Diversity (Eq. 13), MModality (Eq. 14), each
  reported as mean +- 1.96 std / sqrt(R) over R replications.
- LaMP (seeds/003_d88d83113f8fa35c.txt) Tab. 3: text-to-motion and motion-to-text
  retrieval recall R@{1, 2, 3, 5, 10}.
- Ours, in no paper: Swing (`swing`), how much generated motions move in the body frame
  against the real motions of the same captions and lengths (1 = as lively). The evaluator's
  features barely tell a motion from its held mean pose; Swing does, and so does
  `reconstruction_swing` for the VAE alone.

The metrics are distances between embeddings from Guo et al.'s text-motion co-embedding
model, one class loaded or trained (t2m_evaluator.T2MEvaluator, named here as
metrics.T2MEvaluator): a movement encoder (two strided convolutions, 4x temporal
downsampling) and a bidirectional GRU for motion, a bidirectional GRU over word vectors and
part-of-speech one-hots for text. With the real data and `--evaluator t2m` it is their released
evaluator (networks/modules.py encoders under the official parameter names, GloVe, their own
normalisation, loaded from the files MLD downloads), so its numbers are the papers'. Without
those files (the embedded dataset), train.py's `--stage evaluator` trains the same architecture
here, twice with different seeds: `evaluator` (metrics only) and `alignment` (the training
signal of ATM and MATE), so no method is scored by the model it was trained against.

Differences of an evaluator trained here from the released one:
- Text input. GloVe cannot be downloaded here: the word vectors are learned, one row per lemma
  of the training captions seen at least twice (rarer ones share unk's row). The POS tags are
  the training captions' own (`word/POS` in texts/*.txt), read for any caption by a
  context-free lexicon (t2m_evaluator.Lexicon: each word's most frequent tag there), so that
  sub-texts (MATE) and new prompts are tagged the same way; the stage reports how often it
  agrees with the files' tags.
- Training objective. Guo et al. use a margin contrastive loss (margin 10) on Euclidean
  distances with one negative per pair (the batch shifted by a random offset), on top of
  a movement encoder pretrained as an autoencoder and then frozen. Here the whole
  evaluator is trained end to end with a symmetric InfoNCE loss on negative Euclidean
  distances (see `embedder_loss` for why).
- Padding. Guo et al.'s convolutions read whatever follows a clip in its batch (the last
  strided windows read a few padded frames); a trained evaluator (mask_padding) zeroes frames
  and first-layer outputs past each length, so an embedding does not depend on how much padding
  its batch has.
- The Real row's FID compares the ground-truth embeddings with themselves (exactly 0);
  in Guo et al.'s code it compares two passes over randomly cropped test motions (about
  0.002 on HumanML3D).

note: like Guo et al.'s, these features are trained only to tell captions apart, so they
barely register defects no caption mentions (per-frame jitter, for one); FID here
measures how far generated motions drift in what they show, not how clean they are.

Glossary: B batch, T frames, D feature width, L tokens, E embed dim, N samples,
R replications.
"""

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.stats
import torch
import torch.nn as nn
import torch.nn.functional as F

import diffusion
import projector
from data import collate, features_to_joints
# Guo et al.'s evaluator (loaded or trained) lives in t2m_evaluator.py; metrics.T2MEvaluator names it here
from t2m_evaluator import FOOT_CONTACT_DIMS, T2MEvaluator, T2MEvaluatorConfig, _valid  # noqa: F401

DOWNSAMPLE = 4  # two stride-2 convolutions in the movement encoder: 4 frames -> 1 step


# ---------------------------------------------------------------------------------------
# Helpers


def _as_numpy(x) -> np.ndarray:
    """Tensor or array -> float64 numpy array (the formulas are computed in float64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def euclidean_distance_matrix(a, b) -> np.ndarray:
    """dist[i, j] = ||a_i - b_j||_2 for a (N1, E) and b (N2, E); returns (N1, N2) float64.

    Uses ||a||^2 + ||b||^2 - 2 a.b (one matrix product), clipped at 0 before the square
    root because rounding can make the sum slightly negative for identical rows.
    """
    a, b = _as_numpy(a), _as_numpy(b)
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1], (
        f"expected (N1, E) and (N2, E) embeddings, got {a.shape} and {b.shape}")
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T  # (N1, N2)
    return np.sqrt(np.clip(sq, 0.0, None))


def mean_ci(values) -> tuple[float, float]:
    """Mean and 95% confidence half-width 1.96 * std / sqrt(R) over R replications.

    std is the population std (ddof=0), as in Guo et al.'s `get_metric_statistics`.
    """
    v = _as_numpy(values).reshape(-1)
    assert v.size >= 1, "mean_ci needs at least one replication"
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def seed_ci(values) -> tuple[float, float]:
    """Mean and 95% confidence half-width across K training seeds (one value per trained model):
    Student's t with K - 1 degrees of freedom, t_{0.975, K-1} * s / sqrt(K), s the sample std
    (ddof=1). Not `mean_ci`'s normal 1.96: K is a handful of seeds, not 20 replications.
    Hand case: [1, 2, 3] -> mean 2, s = 1, t_{0.975, 2} = 4.3027, half-width 4.3027 / sqrt(3) = 2.4841.
    """
    v = _as_numpy(values).reshape(-1)
    if v.size < 2:
        raise ValueError(f"a 95% interval across training seeds needs at least two seeds, got {v.size}: "
                         "one trained model says nothing about how another seed would score")
    half = scipy.stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def claim_direction(method_values, baseline_values, lower_is_better: bool) -> str:
    """Whether `method` beats `baseline` with 95% confidence across training seeds: the paired
    differences d_k = method_k - baseline_k (both scored from seed k's run) and their `seed_ci`
    interval mean +- half. "holds" when the interval lies wholly on the method's better side of 0
    (below it when lower is better), "reversed" when wholly on the worse side, else "no difference"."""
    method, baseline = _as_numpy(method_values).reshape(-1), _as_numpy(baseline_values).reshape(-1)
    assert method.shape == baseline.shape, (
        f"paired by seed: {method.size} method values for {baseline.size} baseline values")
    mean, half = seed_ci(method - baseline)
    better = -mean if lower_is_better else mean  # > 0: the method is better on average
    if better - half > 0:
        return "holds"
    if better + half < 0:
        return "reversed"
    return "no difference"


# ---------------------------------------------------------------------------------------
# The formulas (LEAD Sec. 5.1.2)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (LEAD Eq. 11).

    The matrix square root is scipy.linalg.sqrtm of sigma1 @ sigma2 (as Guo et al. and
    pytorch-fid). When the product is singular sqrtm can return inf/nan; then eps * I is
    added to both covariances. Rounding can leave a tiny imaginary part, which is dropped;
    a non-negligible one (diagonal |imag| > 1e-3) means a covariance is not positive
    semi-definite and raises ValueError.
    """
    mu1, mu2 = _as_numpy(mu1), _as_numpy(mu2)
    sigma1, sigma2 = _as_numpy(sigma1), _as_numpy(sigma2)
    E = mu1.shape[0]
    assert mu1.shape == mu2.shape == (E,) and sigma1.shape == sigma2.shape == (E, E), (
        f"mean/covariance shapes disagree: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(E) * eps  # note: the product was singular
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has imaginary part {imag:.3g}: "
                             "are both covariances positive semi-definite?")
        covmean = covmean.real
    # Eq. (11): FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^(1/2))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(feats_a, feats_b) -> float:
    """FID between two sets of embeddings (N_a, E) and (N_b, E): mean and covariance
    (np.cov, rows are samples, ddof=1) of each set, then `frechet_distance`."""
    a, b = _as_numpy(feats_a), _as_numpy(feats_b)
    assert a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1], (
        f"expected (N, E) embeddings, got {a.shape} and {b.shape}")
    assert min(len(a), len(b)) >= 2, "a covariance needs at least two samples per set"
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def r_precision(text_emb, motion_emb, top_k: int = 3, pool_size: int = 32, seed: int = 0) -> np.ndarray:
    """R-precision top-1..top-k (Guo et al. 2022): returns (top_k,) accuracies.

    Pairs (text_i, motion_i) are shuffled and cut into pools of `pool_size` (the last,
    incomplete pool is dropped, as in MLD's evaluation). In each pool, the 32 candidates
    are ranked by Euclidean distance and a pair counts as a top-k hit when its partner is
    among the k closest.

    note: the papers' prose says "for each motion, rank its text and 31 other texts";
    Guo et al.'s and MLD's code compute dist[text, motion] and rank along each text's row,
    i.e. rank the 32 motions for each text. The published numbers are the code's, so that
    is what is computed here. A tie with the true partner (identical captions in a pool)
    counts as a hit.
    """
    t, m = _as_numpy(text_emb), _as_numpy(motion_emb)
    assert t.shape == m.shape and t.ndim == 2, f"expected paired (N, E) embeddings, got {t.shape}, {m.shape}"
    n_pools = len(t) // pool_size
    if n_pools == 0:
        raise ValueError(f"R-precision needs at least pool_size={pool_size} pairs, got {len(t)}")
    idx = np.random.default_rng(seed).permutation(len(t))[: n_pools * pool_size]
    idx = idx.reshape(n_pools, pool_size)  # (P, 32)
    tp, mp = t[idx], m[idx]  # (P, 32, E)
    sq = (tp * tp).sum(-1)[:, :, None] + (mp * mp).sum(-1)[:, None, :] - 2.0 * tp @ mp.transpose(0, 2, 1)
    dist = np.sqrt(np.clip(sq, 0.0, None))  # (P, 32 texts, 32 motions)
    true = np.diagonal(dist, axis1=1, axis2=2)  # (P, 32)
    rank = (dist < true[:, :, None]).sum(-1)  # (P, 32): motions strictly closer than the partner
    return np.array([(rank < k).mean() for k in range(1, top_k + 1)])


def matching_score(text_emb, motion_emb) -> float:
    """MMdist: mean Euclidean distance between matched text and motion embeddings.

    note: LEAD's Eq. (12) is typeset as (1/N) sqrt(sum_i ||v_i - t_i||); the protocol every
    paper computes (Guo et al.'s `matching_score_sum += dist_mat.trace()` divided by the
    number of pairs) has no square root: MMdist = (1/N) sum_i ||v_i - t_i||, which is what
    is computed here. (Guo et al. sum over their drop-last batches of 32; here over all N
    pairs.)
    """
    t, m = _as_numpy(text_emb), _as_numpy(motion_emb)
    assert t.shape == m.shape and t.ndim == 2, f"expected paired (N, E) embeddings, got {t.shape}, {m.shape}"
    # Eq. (12) as computed: MMdist = 1/N sum_i ||v_i - t_i||
    return float(np.linalg.norm(t - m, axis=1).mean())


def diversity(emb, times: int = 300, seed: int = 0) -> float:
    """Diversity (LEAD Eq. 13): mean distance between `times` random pairs of embeddings.

    Two index sets of size p = times are drawn without replacement (each on its own, as
    Guo et al.'s `calculate_diversity`), and the distances of the paired rows averaged.
    """
    x = _as_numpy(emb)
    assert x.ndim == 2, f"expected (N, E) embeddings, got {x.shape}"
    if len(x) < times:
        raise ValueError(f"Diversity draws {times} samples without replacement but got only "
                         f"{len(x)}; pass a smaller `times` (diversity_times) for a small split")
    rng = np.random.default_rng(seed)
    first, second = rng.choice(len(x), times, replace=False), rng.choice(len(x), times, replace=False)
    # Eq. (13): DIV = 1/p sum_i ||v_i - v_hat_i||
    return float(np.linalg.norm(x[first] - x[second], axis=1).mean())


def multimodality(emb, times: int = 10, seed: int = 0) -> float:
    """MModality (LEAD Eq. 14) for emb (m texts, G generations per text, E).

    For every text, d = times pairs of its own generations are compared: two index sets of
    size d drawn without replacement from the G generations (the same sets for all texts,
    as Guo et al.'s `calculate_multimodality`). Guo et al.: G = 30, d = 10, m = 100.
    """
    x = _as_numpy(emb)
    assert x.ndim == 3, f"expected (texts, generations, E) embeddings, got {x.shape}"
    if x.shape[1] < times:
        raise ValueError(f"MModality draws {times} of the {x.shape[1]} generations per text "
                         "without replacement; generate at least that many")
    rng = np.random.default_rng(seed)
    first, second = rng.choice(x.shape[1], times, replace=False), rng.choice(x.shape[1], times, replace=False)
    # Eq. (14): MModality = 1/(m d) sum_j sum_i ||v_ji - v_hat_ji||
    return float(np.linalg.norm(x[:, first] - x[:, second], axis=2).mean())


def retrieval_recall(text_emb, motion_emb, ks=(1, 2, 3, 5, 10)) -> dict[str, float]:
    """Retrieval recall over the whole set (LaMP Tab. 3), both directions.

    "T2M R@k": for each text, is its motion among the k motions closest to it (Euclidean)?
    "M2T R@k": for each motion, is its text among the k closest texts? Cosine-similarity
    ranking (LaMP's features) equals Euclidean ranking of L2-normalised embeddings, so
    normalise first for that. Ties with the partner count as hits.
    """
    dist = euclidean_distance_matrix(text_emb, motion_emb)  # (N texts, N motions)
    assert dist.shape[0] == dist.shape[1], f"expected paired embeddings, got {dist.shape}"
    true = np.diagonal(dist)  # (N,)
    rank_t2m = (dist < true[:, None]).sum(1)  # motions closer to text i than its own
    rank_m2t = (dist < true[None, :]).sum(0)  # texts closer to motion j than its own
    out = {f"T2M R@{k}": float((rank_t2m < k).mean()) for k in ks}
    out.update({f"M2T R@{k}": float((rank_m2t < k).mean()) for k in ks})
    return out


def nearest_neighbour_accuracy(emb, labels: list) -> float:
    """Leave-one-out 1-nearest-neighbour (Euclidean) label accuracy of emb (N, E): how well
    a space groups same-label samples, a number standing in for LEAD Fig. 3's t-SNE of the
    latent spaces."""
    dist = euclidean_distance_matrix(emb, emb)  # (N, N)
    assert len(labels) == len(dist) >= 2, f"need one label per embedding and at least two, got {len(labels)}"
    np.fill_diagonal(dist, np.inf)  # leave each sample out of its own neighbours
    nearest = dist.argmin(1)  # (N,)
    return float(np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))


def body_frame_spread(features: torch.Tensor, lengths) -> torch.Tensor:
    """How far each clip's joints move about their own mean place in the body frame: (B,) metres.

    features (B, T, D) de-normalised HumanML3D-style features (D = 12 J - 1), lengths (B,). With
    p_btj the root-invariant position of non-root joint j (features 4 : 3J + 1: heading removed,
    the root's x/z at the origin, heights kept) and n_b the clip's valid frames:

        s_b = 1/(J-1) sum_j sqrt( 1/n_b sum_{t < n_b} || p_btj - pbar_bj ||^2 ),
        pbar_bj = 1/n_b sum_{t < n_b} p_btj

    i.e. per joint the root-mean-square distance from its temporal mean (the temporal std of
    its 3D position), averaged over the joints. A held pose scores 0; the limbs' swing, a
    crouch or a jump raise it. The root (always at the origin here) is left out.
    """
    B, T, D = features.shape
    assert (D + 1) % 12 == 0, (f"HumanML3D-style features have 12 J - 1 dims (263 for 22 joints, "
                               f"251 for 21), got {D}")
    J = (D + 1) // 12
    lengths = torch.as_tensor(lengths, device=features.device)
    p = features[..., 4:4 + 3 * (J - 1)].double().unflatten(-1, (J - 1, 3))   # (B, T, J-1, 3)
    valid = _valid(lengths, T)[..., None, None]                               # (B, T, 1, 1)
    n = lengths.double()[:, None, None]                                       # (B, 1, 1)
    centre = (p * valid).sum(1) / n                                           # (B, J-1, 3)
    square = ((p - centre[:, None]) ** 2 * valid).sum(1).sum(-1) / n[..., 0]  # (B, J-1)
    return square.sqrt().mean(-1)                                             # (B,)


def swing(motions: torch.Tensor, real: torch.Tensor, lengths) -> float:
    """Swing (ours, not a paper metric): how much motions move against the real motions of the
    same clips, at the same lengths; 1.0 = as lively as the real ones, 0 = frozen poses.

        Swing = sum_b s_b(motions) / sum_b s_b(real)          (s: body_frame_spread)

    the ratio of the clip-averaged spreads (not the mean of per-clip ratios, which a clip that
    barely moves, "a person stands", would dominate). Both (B, T, D) de-normalised features.
    The evaluator's features, trained only to tell captions apart, barely register a motion
    that shows the right pose but not its swing; this figure does.
    """
    assert motions.shape[0] == real.shape[0], f"{motions.shape[0]} motions for {real.shape[0]} real ones"
    denominator = float(body_frame_spread(real, lengths).sum())
    if denominator <= 0:
        raise ValueError("the real motions do not move at all: Swing is a ratio to their spread")
    return float(body_frame_spread(motions, lengths).sum()) / denominator


# ---------------------------------------------------------------------------------------
# Training an evaluator here (t2m_evaluator.T2MEvaluator.trained): its loss


def embedder_loss(text_emb: torch.Tensor, motion_emb: torch.Tensor, captions: list[str] | None = None,
                  temperature: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE on negative Euclidean distances between a batch of paired
    text (B, E) and motion (B, E) embeddings.

        d_ij = ||t_i - m_j||,   logits_ij = -d_ij / temperature
        L = 1/2 [ CE(rows of logits, i) + CE(columns of logits, j) ]

    Why this and not Guo et al.'s margin loss: the metrics rank 32 candidates by Euclidean
    distance, and InfoNCE trains exactly that ranking against all B - 1 in-batch negatives
    in both directions (Guo et al. use one shifted negative per pair), so it reaches the
    quality target in a few CPU minutes. Distances, not cosine, because the metrics (FID,
    MMdist, Diversity) live in the unnormalised Euclidean space.
    Pairs whose captions are identical (the same sentence describes several motions) are
    not negatives: their logits are masked out of the softmax.
    Returns (loss, parts) with parts "t2m", "m2t" and, for monitoring, the mean matched
    and unmatched distances "pos_dist", "neg_dist".
    """
    B, E = text_emb.shape
    assert motion_emb.shape == (B, E), (
        f"expected paired embeddings, got {tuple(text_emb.shape)} and {tuple(motion_emb.shape)}")
    sq = (text_emb ** 2).sum(1)[:, None] + (motion_emb ** 2).sum(1)[None, :] - 2.0 * text_emb @ motion_emb.T
    dist = sq.clamp_min(1e-12).sqrt()  # (B texts, B motions); the clamp keeps sqrt's gradient finite
    logits = -dist / temperature
    eye = torch.eye(B, dtype=torch.bool, device=dist.device)
    negative = ~eye
    if captions is not None:
        assert len(captions) == B, f"{len(captions)} captions for a batch of {B}"
        same = torch.tensor([[a == b for b in captions] for a in captions], device=dist.device)  # (B, B)
        negative &= ~same
        logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(B, device=dist.device)
    t2m = F.cross_entropy(logits, target)  # each text picks its motion among the B motions
    m2t = F.cross_entropy(logits.T, target)  # each motion picks its text among the B texts
    loss = 0.5 * (t2m + m2t)
    neg_dist = dist[negative].mean() if negative.any() else dist.new_zeros(())
    parts = {"t2m": t2m.detach(), "m2t": m2t.detach(), "pos_dist": dist.diagonal().mean().detach(),
             "neg_dist": neg_dist.detach()}
    return loss, parts


def embedder_loss_fn(model: T2MEvaluator, temperature: float, device):
    """loss_fn(batch) -> (loss, parts) for training an evaluator on dataset batches (embedder_loss)."""
    def loss_fn(batch):
        motion_emb = model.encode_motion(batch["motion"].to(device), batch["lengths"].to(device))
        return embedder_loss(model.encode_text(model.tokenizer(batch["caption"])), motion_emb, batch["caption"],
                             temperature=temperature)
    return loss_fn


# ---------------------------------------------------------------------------------------
# Evaluation driver (Guo et al.'s protocol)

MM_PAIRS = 10  # MModality: pairs of generations compared per text (Guo et al.'s d = 10)
METRICS = ("FID", "R-precision top-1", "R-precision top-2", "R-precision top-3", "MMdist", "Diversity", "MModality",
           "Swing")


def _device_of(model) -> torch.device:
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    return params[0].device if params else torch.device("cpu")


def _default_collate(collate_fn):
    return collate_fn or collate  # data.py pads items into {"motion", "lengths", "caption", "name"}


def _statistics(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dataset's per-dimension (mean, std) as float32 CPU tensors, to de-normalise motions,
    or None for a dataset without them (the tests' lists of items): then there is no Swing."""
    if not (hasattr(dataset, "mean") and hasattr(dataset, "std")):
        return None
    return tuple(torch.as_tensor(a, dtype=torch.float32) for a in (dataset.mean, dataset.std))


@torch.no_grad()
def embed_dataset(dataset, evaluator, tokenizer, generate_fn=None, batch_size: int = 32,
                  collate_fn=None) -> dict:
    """Embed every item of `dataset` once (one random caption each).

    Returns {"text": (N, E), "real": (N, E) ground-truth motions, "captions": [N]} and,
    with a generate_fn(captions, lengths) -> (B, Tmax, D), "generated": (N, E) for motions
    generated from the same captions and lengths. When the dataset has `mean` and `std`, also
    "real_spread" and "generated_spread" (N,): each clip's `body_frame_spread` (metres, at its
    length), what Swing compares; they draw no random numbers. Arrays are float64 numpy.
    """
    collate_fn = _default_collate(collate_fn)
    device = _device_of(evaluator)
    stats = _statistics(dataset)
    text, real, generated, captions = [], [], [], []
    spread = {"real": [], "generated": []}  # name -> [(B,) per batch]
    for start in range(0, len(dataset), batch_size):
        batch = collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        lengths = batch["lengths"].to(device)  # (B,)
        ids = tokenizer(batch["caption"]).to(device)  # (B, 77)
        text.append(evaluator.encode_text(ids))
        real.append(evaluator.encode_motion(batch["motion"].to(device), lengths))
        motions = {"real": batch["motion"]}
        if generate_fn is not None:
            motion = generate_fn(batch["caption"], batch["lengths"])  # (B, Tmax, D)
            assert motion.shape[0] == len(lengths) and motion.shape[1] >= int(lengths.max()), (
                f"generate_fn returned {tuple(motion.shape)} for lengths up to {int(lengths.max())}")
            generated.append(evaluator.encode_motion(motion.to(device), lengths))
            motions["generated"] = motion
        if stats is not None:
            mean, std = stats
            for name, m in motions.items():  # de-normalised, on the CPU
                spread[name].append(body_frame_spread(m.detach().cpu().float() * std + mean, batch["lengths"]))
        captions += list(batch["caption"])
    out = {"text": _as_numpy(torch.cat(text)), "real": _as_numpy(torch.cat(real)), "captions": captions}
    if generate_fn is not None:
        out["generated"] = _as_numpy(torch.cat(generated))
    out.update({f"{name}_spread": _as_numpy(torch.cat(s)) for name, s in spread.items() if s})
    return out


@torch.no_grad()
def _multimodality_embeddings(generate_fn, dataset, evaluator, num_texts: int, num_gens: int,
                              seed: int) -> np.ndarray:
    """Generate num_gens motions for each of num_texts random items (their caption and
    ground-truth length) and embed them: (num_texts, num_gens, E)."""
    device = _device_of(evaluator)
    picks = np.random.default_rng(seed).choice(len(dataset), min(num_texts, len(dataset)), replace=False)
    out = []
    for i in picks:
        item = dataset[int(i)]
        lengths = torch.full((num_gens,), int(item["length"]), dtype=torch.long)  # (G,)
        motion = generate_fn([item["caption"]] * num_gens, lengths)  # (G, Tmax, D)
        out.append(evaluator.encode_motion(motion.to(device), lengths.to(device)))  # (G, E)
    return _as_numpy(torch.stack(out))  # (m, G, E)


def evaluate(generate_fn, dataset, evaluator, tokenizer, replications: int, batch_size: int = 32,
             mm_num_texts: int = 100, mm_num_gens: int = 30, mm_times: int = MM_PAIRS, diversity_times: int = 300,
             seed: int = 0, collate_fn=None, log=print) -> dict[str, tuple[float, float]]:
    """Every metric over R replications: {metric: (mean, 1.96 std / sqrt(R))}.

    Each replication embeds the whole split with fresh random crops and captions (drawn after
    `dataset.reseed(seed + r)` where the dataset has one, so that every method's replication r
    sees the same draws; generate_fn's noise after torch.manual_seed(seed + r)), then computes
    FID (generated vs ground-truth motion embeddings), R-precision top-1/2/3 and MMdist
    (generated motions vs the captions they were generated from), Diversity (300 pairs of
    generated motions) and, when generate_fn is given and mm_num_texts > 0, MModality
    (mm_num_gens generations for mm_num_texts captions, mm_times pairs each).
    When the dataset has `mean` and `std`, also Swing (`swing`: the generated motions' body-frame
    spread over that of the ground-truth clips they stand beside, same items and lengths).
    generate_fn=None gives the Real row: a second pass over the ground-truth motions (fresh
    random crops) stands in for the generated ones, so FID is near but not exactly 0 (Guo et
    al.'s Real row reads 0.002 on HumanML3D for the same reason) and Swing is the second pass's
    spread over the first's, near but not exactly 1; there is no MModality.
    generate_fn(captions: list[str], lengths: LongTensor (B,)) -> normalized (B, Tmax, D).
    """
    assert replications >= 1, "need at least one replication"
    was_training = evaluator.training if isinstance(evaluator, nn.Module) else None
    if was_training is not None:
        evaluator.eval()
    per_rep = {}  # metric -> [value per replication]
    start = time.time()
    try:
        for r in range(replications):
            torch.manual_seed(seed + r)  # generate_fn's noise: each replication reproducible
            if hasattr(dataset, "reseed"):  # and its crops and captions: the same for every row
                dataset.reseed(seed + r)
            emb = embed_dataset(dataset, evaluator, tokenizer, generate_fn, batch_size, collate_fn)
            if generate_fn is not None:
                motion, spread = emb["generated"], emb.get("generated_spread")
            else:  # Real row: a second pass (fresh crops) of the ground truth, as Guo et al.
                second = embed_dataset(dataset, evaluator, tokenizer, None, batch_size, collate_fn)
                motion, spread = second["real"], second.get("real_spread")
            top = r_precision(emb["text"], motion, top_k=3, seed=seed + r)
            values = {"FID": fid(emb["real"], motion),
                      "R-precision top-1": top[0], "R-precision top-2": top[1], "R-precision top-3": top[2],
                      "MMdist": matching_score(emb["text"], motion),
                      "Diversity": diversity(motion, diversity_times, seed=seed + r)}
            if generate_fn is not None and mm_num_texts > 0:
                mm = _multimodality_embeddings(generate_fn, dataset, evaluator, mm_num_texts, mm_num_gens, seed + r)
                values["MModality"] = multimodality(mm, mm_times, seed=seed + r)
            if spread is not None:
                # Swing = sum_b s_b(motions) / sum_b s_b(real), as `swing` (no random numbers drawn)
                values["Swing"] = float(spread.sum() / emb["real_spread"].sum())
            for name, value in values.items():
                per_rep.setdefault(name, []).append(float(value))
            log(f"eval replication {r + 1}/{replications}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in values.items()) + f" ({time.time() - start:.1f} s)")
    finally:
        if was_training:
            evaluator.train()
    return {name: mean_ci(v) for name, v in per_rep.items()}


# ---------------------------------------------------------------------------------------
# The text-to-motion evaluation protocol (LEAD Tab. 1, Sec. 5.1.2) and the VAE's errors


@dataclass
class EvalConfig:
    replications: int = 20      # the papers: mean +- 1.96 std / sqrt(20)
    mm_num_texts: int = 100     # MModality: 100 texts (MLD, LEAD Sec. 5.1.2)
    mm_num_gens: int = 30       # ... 30 generations each, 10 pairs (Guo et al.)
    diversity_times: int = 300  # Diversity over 300 random pairs (Guo et al., LEAD Eq. 13)
    timing_prompts: int = 10    # prompts timed one at a time for the per-prompt inference time


class Pipeline:
    """Frozen text encoder, VAE and denoiser: text -> normalized motion, with or without the
    LEAD realignment (projector.generate), as every row of the Tab. 1 analogue generates.

    MLD and LEAD rows share one pipeline and differ only after the diffusion: `generate` keeps the
    last `memory` z_0 it sampled, keyed by the captions and the torch RNG state they were drawn
    from, and a call with the same captions from the same state takes z_0 from there and leaves
    the RNG where the sampling left it. The LEAD row (replication r reseeded as the MLD row's)
    then realigns the very latents the MLD row decoded: the same numbers as sampling again, in
    half the time, and the two rows differ by the projector alone."""

    def __init__(self, text, motion_vae, denoiser, memory: int = 1024):
        self.text, self.vae, self.denoiser = text, motion_vae, denoiser
        self.device = _device_of(denoiser)
        self.schedule = diffusion.GaussianDiffusion(denoiser.cfg).to(self.device)
        self.c_uncond = text.encode_cached([""])[0]                               # (C,)
        self.memory, self.samples = memory, {}  # (captions, RNG state) -> (z_0, RNG state after)

    def generate(self, captions: list[str], lengths: torch.Tensor, realigner=None) -> torch.Tensor:
        key = (tuple(captions), _rng_state(self.device))
        if key in self.samples:
            z, after = self.samples[key]
            _set_rng_state(self.device, after)
        else:
            c = self.text.encode_cached(captions)                                 # (B, C)
            z = self.schedule.ddim_sample(self.denoiser, c, self.c_uncond,
                                          (len(captions), *self.vae.latent_shape))  # (B, N, Dz)
            if len(self.samples) >= self.memory:
                self.samples.pop(next(iter(self.samples)))  # the oldest
            self.samples[key] = (z, _rng_state(self.device))
        return projector.decode(self.vae, z, lengths.to(self.device), realigner)  # (B, T, D)


def _rng_state(device: torch.device) -> bytes:
    """The torch RNG state the sampler draws from on `device` (CPU, or CPU and that CUDA device)."""
    state = torch.random.get_rng_state().numpy().tobytes()
    return state + (torch.cuda.get_rng_state(device).numpy().tobytes() if device.type == "cuda" else b"")


def _set_rng_state(device: torch.device, state: bytes) -> None:
    n = torch.random.get_rng_state().numel()
    torch.random.set_rng_state(torch.frombuffer(bytearray(state[:n]), dtype=torch.uint8))
    if device.type == "cuda":
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(state[n:]), dtype=torch.uint8), device)


def t2m_rows(methods: dict, dataset, evaluator, tokenizer, cfg: EvalConfig, seed: int,
             log=print) -> dict:
    """The Tab. 1 protocol: {name: evaluate(...)} for methods {name: generate_fn or None}
    (None: the Real row), in the given order. Replication r of every row scores the same random
    crops and captions (`evaluate` reseeds the dataset with seed + r), so rows differ by their
    generators alone."""
    rows = {}
    for name, generate_fn in methods.items():
        log(f"[eval] {name}" + (f" ({cfg.replications} replications)" if generate_fn is None else ""))
        rows[name] = evaluate(generate_fn, dataset, evaluator, tokenizer, replications=cfg.replications,
                              mm_num_texts=cfg.mm_num_texts, mm_num_gens=cfg.mm_num_gens,
                              diversity_times=cfg.diversity_times, seed=seed)
    return rows


def seconds_per_prompt(pipe: Pipeline, dataset, realigner, prompts: int) -> tuple[float, float]:
    """Wall time of generating one motion for one prompt (batch of 1), mean and 95% CI."""
    times = []
    for i in range(prompts + 1):
        item = dataset[i % len(dataset)]
        start = time.perf_counter()
        pipe.generate([item["caption"]], torch.tensor([item["length"]]), realigner)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return mean_ci(times[1:])  # the first call warms up caches and kernels


@torch.no_grad()
def latent_structure(motion_vae, realigner, dataset, segments: dict) -> dict | None:
    """The quantitative stand-in for LEAD's t-SNE (Fig. 3 right): leave-one-out 1-NN accuracy
    of the action label for test latents, in the VAE space and in the projected space.
    Needs action labels (`segments`, the synthetic dataset's); uses single-action motions."""
    if not segments:
        return None
    device = _device_of(motion_vae)
    items = [dataset[i] for i in range(len(dataset))]
    items = [it for it in items if len(segments.get(it["name"], {}).get("actions", [])) == 1]
    labels = [segments[it["name"]]["actions"][0] for it in items]
    z_all, proj_all = [], []
    for start in range(0, len(items), 64):
        batch = collate(items[start:start + 64])
        z, _, _ = motion_vae.encode(batch["motion"].to(device), batch["lengths"].to(device), sample=False)
        z_all.append(z.flatten(1))
        proj_all.append(realigner.project(z))
    z_all, proj_all = torch.cat(z_all), torch.cat(proj_all)
    return {"motions": len(items), "actions": len(set(labels)),
            "vae_space": nearest_neighbour_accuracy(z_all, labels),
            "projected_space": nearest_neighbour_accuracy(proj_all, labels)}


@torch.no_grad()
def joint_errors(reconstruct, dataset, device, batch_size: int = 64) -> dict[str, float]:
    """Mean per-joint position errors (metres) of reconstruct(x, lengths) -> x_hat, both
    normalised features (B, T, D), over the valid frames of `dataset`:
      "global"        joints from features, the root trajectory integrated from the velocities;
      "root-aligned"  the root joint subtracted from both (MPJPE as MLD reports it; the heading
                      integrated from the root's angular velocity still counts);
      "body frame"    the root-invariant positions (features 4 : 3J+1), heading ignored; the
                      root sits at their origin and counts as a joint with zero error."""
    mean, std = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (dataset.mean, dataset.std))
    sums, count = {"global": 0.0, "root-aligned": 0.0, "body frame": 0.0}, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        features = [f * std + mean for f in (reconstruct(x, lengths), x)]        # de-normalised
        J = (x.shape[-1] + 1) // 12
        j_hat, j = (features_to_joints(f, n_joints=J) for f in features)  # (B, T, J, 3)
        valid = _valid(lengths, x.shape[1])                          # (B, T)
        sums["global"] += float((j_hat - j).norm(dim=-1)[valid].sum())
        sums["root-aligned"] += float(((j_hat - j_hat[..., :1, :]) - (j - j[..., :1, :])).norm(dim=-1)[valid].sum())
        ric_hat, ric = (f[..., 4:4 + 3 * (J - 1)].unflatten(-1, (J - 1, 3)) for f in features)
        sums["body frame"] += float((ric_hat - ric).norm(dim=-1)[valid].sum())
        count += int(valid.sum()) * J
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def reconstruction_swing(reconstruct, dataset, device, batch_size: int = 64) -> float:
    """Swing of reconstruct(x, lengths) -> x_hat (normalised features, (B, T, D)) over `dataset`:
    sum over clips of x_hat's `body_frame_spread` over that of x (1.0 = the reconstructions move
    as much as the motions; a decoder that renders each clip's mean pose scores 0)."""
    mean, std = _statistics(dataset)
    sums = {"reconstruction": 0.0, "real": 0.0}
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        for name, f in (("reconstruction", reconstruct(x, lengths)), ("real", x)):
            sums[name] += float(body_frame_spread(f.cpu().float() * std + mean, batch["lengths"]).sum())
    return sums["reconstruction"] / sums["real"]


@torch.no_grad()
def reconstruction_metrics(reconstruct, dataset, evaluator, tokenizer, seed: int, batch_size: int = 64) -> dict:
    """How the evaluator sees reconstructions reconstruct(x, lengths) of `dataset` against the
    motions themselves: R-precision top-1..3 and MMdist with their captions for both, and the
    FID of the reconstructions against the motions, in one pass.
    A VAE whose reconstructions the evaluator cannot match to their captions bounds every
    generated row of the eval table."""
    device = _device_of(evaluator)
    text, real, recon = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        text.append(evaluator.encode_text(tokenizer(batch["caption"]).to(device)))   # (B, E)
        real.append(evaluator.encode_motion(x, lengths))
        recon.append(evaluator.encode_motion(reconstruct(x, lengths), lengths))
    text, real, recon = (torch.cat(e).double().cpu().numpy() for e in (text, real, recon))
    figures = {}
    for name, motion in (("real", real), ("reconstruction", recon)):
        top = r_precision(text, motion, top_k=3, seed=seed)
        figures[name] = {**{f"R-precision top-{k + 1}": round(float(top[k]), 4) for k in range(3)},
                         "MMdist": round(matching_score(text, motion), 4)}
    figures["reconstruction"]["FID"] = round(fid(real, recon), 4)  # against the real ones
    return figures


# ---------------------------------------------------------------------------------------
# Results tables (results.md / results.json in the run folder)

ARROWS = {"FID": "↓", "MMdist": "↓", "Diversity": "→", "MModality": "↑", "Swing": "→"}  # → : closer to Real is better


def _arrow(metric: str) -> str:
    if metric in ARROWS:
        return ARROWS[metric]
    return "↑" if metric.startswith("R-precision") or "R@" in metric else ""


def _best_row(rows: dict, metric: str) -> str | None:
    """Name of the best method (Real excluded) in one column, as the papers bold it."""
    scored = {name: r[metric][0] for name, r in rows.items() if name != "Real" and metric in r}
    arrow = _arrow(metric)
    if len(scored) < 2 or not arrow:
        return None
    if arrow == "→":
        if "Real" not in rows or metric not in rows["Real"]:
            return None
        target = rows["Real"][metric][0]
        return min(scored, key=lambda n: abs(scored[n] - target))
    return (min if arrow == "↓" else max)(scored, key=scored.get)


def results_table(rows: dict, title: str, note: str = "") -> str:
    """Markdown table laid out like the papers': one row per method (Real first), columns
    FID ↓, R-precision top-1/2/3 ↑, MMdist ↓, Diversity →, MModality ↑, Swing → (then any
    other metric the rows carry, such as retrieval R@k), cells "mean ± CI", best method in bold,
    "-" where a row has no value (Real has no MModality)."""
    names = sorted(rows, key=lambda n: n != "Real")  # Real first, the rest in insertion order
    seen = [m for r in rows.values() for m in r]
    columns = [m for m in METRICS if m in seen] + [m for m in dict.fromkeys(seen) if m not in METRICS]
    best = {m: _best_row(rows, m) for m in columns}
    lines = [f"### {title}", ""]
    lines.append("| Method | " + " | ".join(f"{m} {_arrow(m)}".rstrip() for m in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for name in names:
        cells = []
        for m in columns:
            if m not in rows[name]:
                cells.append("-")
                continue
            mean, ci = rows[name][m]
            cell = f"{mean:.3f} ± {ci:.3f}"
            cells.append(f"**{cell}**" if best[m] == name else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(out_dir, section: str, rows: dict, title: str | None = None, note: str = "") -> Path:
    """Add or replace one section (one table) of out_dir/results.json and regenerate
    out_dir/results.md from all sections, so later stages add their tables without
    overwriting earlier ones. Returns the path of results.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    sections = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {}
    sections[section] = {"title": title or section, "note": note,
                         "rows": {name: {m: [float(v[0]), float(v[1])] for m, v in r.items()}
                                  for name, r in rows.items()}}
    _write_atomic(json_path, json.dumps(sections, indent=2, ensure_ascii=False) + "\n")
    md = ["# Results", ""] + [results_table(s["rows"], s["title"], s["note"]) for s in sections.values()]
    md_path = out_dir / "results.md"
    _write_atomic(md_path, "\n".join(md))
    return md_path
