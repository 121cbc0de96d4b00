"""The metric formulas of text-to-motion evaluation, each a plain function of embeddings.

The protocol of Guo et al. 2022 ("Generating Diverse and Natural 3D Human Motions from Text")
that MLD, LEAD, ATM, MATE and LaMP all report, computed on the embeddings of a text-motion
co-embedding model (t2m_evaluator.T2MEvaluator); evaluation.py runs the protocol:

- LEAD (seeds/000_c8069c11a3356e2a.txt, arXiv 2410.14508) Sec. 5.1.2: FID (Eq. 11),
  R-precision top-1/2/3, MMdist (Eq. 12), Diversity (Eq. 13), MModality (Eq. 14), each
  reported as mean +- 1.96 std / sqrt(R) over R replications (`mean_ci`).
- LaMP (seeds/003_d88d83113f8fa35c.txt) Tab. 3: text-to-motion and motion-to-text retrieval
  recall R@{1, 2, 3, 5, 10}.
- Ours, in no paper: Swing (`swing`), how much generated motions move in the body frame against
  the real motions of the same captions and lengths (1 = as lively); `seed_ci` and
  `claim_direction` read a claim across training seeds (bench/bench_seeds.py).
- On joint positions: the foot skating ratio of GMD (Karunratanakul et al. 2023, its
  `calculate_skating_ratio`, also OmniControl's) with its thresholds (SKATING_*), and ours beside
  it: each clip's foot lift (m) and root speed (m/s), which the evaluation reads as ratios to the
  real clips'.
- The evaluator's training objective when it is trained here (`embedder_loss`).

Differences from the paper:
- An evaluator trained here learns its word vectors and is trained end to end with a symmetric
  InfoNCE loss (`embedder_loss`), where Guo et al. use GloVe and a margin loss (t2m_evaluator.py).
- note: like Guo et al.'s, the features are trained only to tell captions apart, so they barely
  register defects no caption mentions (jitter, a held pose): hence Swing.

Glossary: B batch, T frames, D feature width, E embed dim, N samples, R replications.
"""

import math

import numpy as np
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F

from t2m_evaluator import T2MEvaluator, _valid

DOWNSAMPLE = 4  # two stride-2 convolutions in the movement encoder: 4 frames -> 1 step
FEET = (10, 11)       # HumanML3D's left and right foot joints (the toes; SMPL's "foot"), as GMD
WRISTS = (20, 21)     # HumanML3D's left and right wrists
SKATING_HEIGHT = 0.05  # m: a foot lower than this in both frames of a step is on the floor (GMD thresh_height)
SKATING_SPEED = 0.5    # m/s: a foot on the floor faster than this skates (GMD thresh_vel; 2.5 cm a frame at 20 fps)
SKATING_WINDOW = 5     # steps: ... and its speed averaged over this centred window too (GMD avg_window)


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
# Motion quality on joint positions: foot skating (GMD), foot lift, root speed


def _clip_lengths(lengths, B: int, T: int) -> np.ndarray:
    """lengths (B,) as an int array, each a clip of 2..T frames (these figures are frame steps)."""
    n = np.asarray(_as_numpy(lengths), dtype=np.int64).reshape(-1)
    assert n.shape == (B,), f"{n.size} lengths for {B} clips"
    if (n < 2).any() or (n > T).any():
        raise ValueError(f"clip lengths must lie in 2..{T} frames (a step needs two frames, and no clip can "
                         f"outrun its {T} padded frames), got {n.min()}..{n.max()}")
    return n


def foot_skating_ratio(joints, lengths, fps: float = 20.0, height: float = SKATING_HEIGHT,
                       speed: float = SKATING_SPEED, window: int = SKATING_WINDOW, feet=FEET) -> np.ndarray:
    """GMD's foot skating ratio of each clip: (B,), the share of its frame steps in which a foot
    slides on the floor. joints (B, T, J, 3) metres, y up, lengths (B,), `fps` frames a second.

    For each foot f and step t -> t+1 of a clip of n frames (t < n - 1):
        v_ft     = fps * || (x, z)_f,t+1 - (x, z)_f,t ||               horizontal speed, m/s
        vbar_ft  = 1/w sum_{|s - t| <= w // 2} v_fs, v_fs = 0 outside the clip
        skate_t  = OR_f [ y_f,t < height  and  y_f,t+1 < height  and  v_ft > speed  and  vbar_ft > speed ]
        ratio    = 1/(n - 1) sum_t skate_t
    GMD reports the mean over clips. vbar is scipy's uniform_filter1d(size=w, mode="constant"), as
    GMD computes it, written out here; heights are measured from y = 0, the floor as the data put it.
    Differences from GMD: each clip counts its own n - 1 steps, and its window sees zeros past its
    end, where GMD's code runs over the padded batch (frames past a length count there).
    """
    j = _as_numpy(joints)
    B, T, J, _ = j.shape
    assert window % 2 == 1, f"a centred window has an odd number of steps, got {window}"
    n = _clip_lengths(lengths, B, T)
    foot = j[:, :, list(feet)]                                                # (B, T, 2, 3)
    step = (np.arange(T - 1)[None, :] < (n - 1)[:, None])[..., None]          # (B, T-1, 1) within the clip
    v = fps * np.linalg.norm(foot[:, 1:, :, [0, 2]] - foot[:, :-1, :, [0, 2]], axis=-1) * step  # (B, T-1, 2)
    h = window // 2
    padded = np.pad(v, ((0, 0), (h, h), (0, 0)))                               # (B, T-1+2h, 2)
    v_bar = sum(padded[:, k:k + T - 1] for k in range(window)) / window        # (B, T-1, 2)
    y = foot[..., 1]                                                           # (B, T, 2)
    on_floor = (y[:, :-1] < height) & (y[:, 1:] < height)                      # (B, T-1, 2)
    skate = (on_floor & (v > speed) & (v_bar > speed)).any(-1) & step[..., 0]  # (B, T-1) either foot
    return skate.sum(1) / (n - 1)


def foot_lift(joints, lengths, feet=FEET) -> np.ndarray:
    """How high each clip lifts its feet: (B,) metres, the range (max - min over the clip's frames)
    of each foot's height y, averaged over the two feet. joints (B, T, J, 3), lengths (B,).
    Independent of where the floor is; a shuffle that never lifts a foot scores near 0."""
    j = _as_numpy(joints)
    B, T = j.shape[:2]
    n = _clip_lengths(lengths, B, T)
    y = j[:, :, list(feet), 1]                                                 # (B, T, 2)
    valid = (np.arange(T)[None, :] < n[:, None])[..., None]                    # (B, T, 1)
    top, bottom = np.where(valid, y, -np.inf).max(1), np.where(valid, y, np.inf).min(1)  # (B, 2)
    return (top - bottom).mean(-1)


def wrist_speed(joints, lengths, fps: float = 20.0, wrists=WRISTS) -> np.ndarray:
    """How fast each clip moves its wrists about its root: (B,) m/s. With w_t a wrist's position
    minus the root's (joint 0) in frame t,
        speed = fps / (n - 1) sum_{t < n - 1} || w_{t+1} - w_t ||,  averaged over the two wrists.
    joints (B, T, J, 3) metres, lengths (B,). Walking in a straight line with still arms scores 0."""
    j = _as_numpy(joints)
    B, T = j.shape[:2]
    n = _clip_lengths(lengths, B, T)
    w = j[:, :, list(wrists)] - j[:, :, :1]                                    # (B, T, 2, 3)
    step = np.linalg.norm(w[:, 1:] - w[:, :-1], axis=-1).mean(-1)              # (B, T-1)
    step = step * (np.arange(T - 1)[None, :] < (n - 1)[:, None])
    return fps * step.sum(1) / (n - 1)


def root_speed(joints, lengths, fps: float = 20.0) -> np.ndarray:
    """Each clip's mean horizontal root speed: (B,) m/s. With r_t the root's (x, z) in frame t,
        speed = fps / (n - 1) sum_{t < n - 1} || r_{t+1} - r_t ||
    joints (B, T, J, 3) metres, y up (the root is joint 0), lengths (B,)."""
    j = _as_numpy(joints)
    B, T = j.shape[:2]
    n = _clip_lengths(lengths, B, T)
    root = j[:, :, 0, [0, 2]]                                                  # (B, T, 2)
    step = np.linalg.norm(root[:, 1:] - root[:, :-1], axis=-1)                # (B, T-1)
    step = step * (np.arange(T - 1)[None, :] < (n - 1)[:, None])
    return fps * step.sum(1) / (n - 1)


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
