"""Tests for metrics.py: each formula against a direct numpy/scipy computation and a hand-worked
case, the evaluator's training loss against a hand computation, Swing by hand, the foot skating
ratio against GMD's code and by hand, foot lift and root speed by hand.
"""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import torch

import metrics
from metrics import (diversity, embedder_loss, euclidean_distance_matrix, fid, frechet_distance, matching_score,
                     mean_ci, multimodality, r_precision, retrieval_recall)


def test_euclidean_distance_matrix_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((4, 5))
    np.testing.assert_allclose(euclidean_distance_matrix(a, b), scipy.spatial.distance.cdist(a, b), atol=1e-10)
    # identical rows: rounding must not turn 0 into nan
    assert np.all(np.diagonal(euclidean_distance_matrix(a, torch.tensor(a))) < 1e-6)


def _frechet_by_eigenvalues(mu1, s1, mu2, s2):
    """Independent route: Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD
    matrix, so numpy's eigh replaces scipy's sqrtm of a non-symmetric product."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_frechet_distance_matches_eigenvalue_formula():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200, 6))
    b = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6)) + 0.5
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    expected = _frechet_by_eigenvalues(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert fid(a, b) == pytest.approx(expected, rel=1e-8)


def test_fid_hand_cases():
    """Identical sets: FID 0. Shifting every sample by v keeps the covariance, so the trace
    term cancels and FID = |v|^2 = 3^2 + 4^2 = 25."""
    x = np.random.default_rng(2).standard_normal((100, 4))
    assert abs(fid(x, x)) < 1e-6
    v = np.array([3.0, 4.0, 0.0, 0.0])
    assert fid(x, x + v) == pytest.approx(25.0, abs=1e-6)


def test_frechet_distance_rejects_imaginary_square_root():
    """diag(-1, 1) is not a covariance: sqrtm(I @ diag(-1, 1)) = diag(i, 1)."""
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))


def test_frechet_distance_offsets_singular_product(monkeypatch):
    """When sqrtm of the product is not finite, eps * I is added to both covariances."""
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def sqrtm_failing_once(m):
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(metrics.scipy.linalg, "sqrtm", sqrtm_failing_once)
    s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 4.0])  # product is the zero matrix
    value = frechet_distance(np.zeros(2), s1, np.ones(2), s2)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2)))
    # |mu diff|^2 = 2, traces 1 + 4, Tr sqrt(diag(1e-6 (1 + 1e-6), 1e-6 (4 + 1e-6)))) ~ 3e-3
    assert value == pytest.approx(2 + 5 - 2 * (math.sqrt(1e-6 * (1 + 1e-6)) + math.sqrt(1e-6 * (4 + 1e-6))))


def _r_precision_by_argsort(text, motion, top_k, pool_size, seed):
    """Guo et al.'s route: argsort each text's row of distances, then top-k hit counts."""
    idx = np.random.default_rng(seed).permutation(len(text))
    hits, total = np.zeros(top_k), 0
    for p in range(len(text) // pool_size):
        sel = idx[p * pool_size:(p + 1) * pool_size]
        order = np.argsort(scipy.spatial.distance.cdist(text[sel], motion[sel]), axis=1)  # (32, 32)
        for i in range(pool_size):
            position = int(np.where(order[i] == i)[0][0])
            hits += np.arange(top_k) >= position
        total += pool_size
    return hits / total


def test_r_precision_matches_argsort_and_drops_last_pool():
    rng = np.random.default_rng(3)
    text = rng.standard_normal((100, 8))  # 3 pools of 32, 4 pairs dropped
    motion = text + 1.2 * rng.standard_normal((100, 8))
    got = r_precision(text, motion, top_k=3, pool_size=32, seed=5)
    np.testing.assert_allclose(got, _r_precision_by_argsort(text, motion, 3, 32, 5))
    assert 0 < got[0] < got[1] < got[2] < 1
    assert got[0] * 96 == pytest.approx(round(got[0] * 96))  # counts over 96 pairs, not 100


def test_r_precision_aligned_embeddings_is_one():
    text = np.random.default_rng(4).standard_normal((64, 8))
    np.testing.assert_allclose(r_precision(text, text.copy()), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="pool_size"):
        r_precision(text[:10], text[:10])


def test_matching_score_hand_case():
    """Matched distances |(0,0)-(3,4)| = 5, |(1,0)-(1,0)| = 0, |(0,2)-(0,0)| = 2: MMdist 7/3
    (the diagonal of the 3x3 distance matrix; the off-diagonal entries do not count)."""
    text = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    motion = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    assert matching_score(text, motion) == pytest.approx(7 / 3)
    assert matching_score(text, motion) == pytest.approx(np.trace(euclidean_distance_matrix(text, motion)) / 3)


def test_diversity_matches_direct_computation():
    emb = np.random.default_rng(6).standard_normal((500, 16))
    rng = np.random.default_rng(9)
    first, second = rng.choice(500, 300, replace=False), rng.choice(500, 300, replace=False)
    expected = np.mean([np.linalg.norm(emb[i] - emb[j]) for i, j in zip(first, second)])
    assert diversity(emb, times=300, seed=9) == pytest.approx(expected)
    assert diversity(2 * emb, times=300, seed=9) == pytest.approx(2 * expected)  # distances scale
    assert diversity(np.ones((300, 4)), times=300) == 0.0  # identical motions: no diversity
    with pytest.raises(ValueError, match="diversity_times"):
        diversity(emb[:10], times=300)


def test_multimodality_matches_direct_computation():
    emb = np.random.default_rng(7).standard_normal((5, 30, 8))
    rng = np.random.default_rng(2)
    first, second = rng.choice(30, 10, replace=False), rng.choice(30, 10, replace=False)
    expected = np.mean([np.linalg.norm(emb[j, a] - emb[j, b]) for j in range(5) for a, b in zip(first, second)])
    assert multimodality(emb, times=10, seed=2) == pytest.approx(expected)
    same = np.repeat(emb[:, :1], 30, axis=1)  # every generation of a text identical
    assert multimodality(same, times=10) == 0.0


def test_retrieval_recall_hand_case_both_directions():
    """1-d texts t = (0, 1, 3), motions m = (0.4, 1.9, 2.9).
    Text 1: |1 - 0.4| = 0.6 < |1 - 1.9| = 0.9, so its motion ranks 2nd; texts 0 and 2 rank
    theirs 1st: T2M R@1 = 2/3, R@2 = 1. Motion 1: its text at 0.9 beats |1.9 - 0| = 1.9 and
    |1.9 - 3| = 1.1; motions 0 and 2 also find theirs first: M2T R@1 = R@2 = 1."""
    text = np.array([[0.0], [1.0], [3.0]])
    motion = np.array([[0.4], [1.9], [2.9]])
    got = retrieval_recall(text, motion, ks=(1, 2))
    assert got == pytest.approx({"T2M R@1": 2 / 3, "T2M R@2": 1.0, "M2T R@1": 1.0, "M2T R@2": 1.0})


def test_nearest_neighbour_accuracy_hand_case():
    """1-d points 0, 1, 5, 6, 10 labelled a, a, b, a, b: nearest neighbours (leaving each
    point out) are 1, 0, 6, 5, 6 with labels a, a, a, b, a: points 0, 1 right, 5, 6, 10
    wrong: accuracy 2/5."""
    emb = np.array([[0.0], [1.0], [5.0], [6.0], [10.0]])
    assert metrics.nearest_neighbour_accuracy(emb, ["a", "a", "b", "a", "b"]) == pytest.approx(2 / 5)


def test_mean_ci_hand_case():
    """(1, 2, 3): mean 2, population std sqrt(2/3), CI 1.96 sqrt(2/3) / sqrt(3) = 1.96 sqrt(2) / 3."""
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert ci == pytest.approx(1.96 * math.sqrt(2) / 3)


def test_seed_ci_hand_cases():
    """(1, 2, 3): mean 2, sample std 1, t_{0.975, 2} = 4.302653 (a t table), half-width
    4.302653 / sqrt(3) = 2.484138. (1, 3): mean 2, sample std sqrt(2), t_{0.975, 1} = 12.706205,
    half-width 12.706205 sqrt(2) / sqrt(2) = 12.706205. One seed has no interval."""
    assert metrics.seed_ci([1.0, 2.0, 3.0]) == pytest.approx((2.0, 2.484138), abs=1e-6)
    assert metrics.seed_ci([1.0, 3.0]) == pytest.approx((2.0, 12.706205), abs=1e-6)
    with pytest.raises(ValueError, match="at least two seeds"):
        metrics.seed_ci([4.2])


def test_claim_direction_cases():
    """Paired differences method - baseline over three seeds, half-width t_{0.975, 2} s / sqrt(3):
    - (-2, -2, -2.5): mean -2.167, s 0.289, half 0.717, all below 0: lower-is-better holds, and
      the same numbers where higher is better are reversed;
    - (-1, 1, 0): mean 0: no difference either way;
    - (-0.5, -0.5, -0.5): s = 0, so it holds although the seeds' values (1, 5, 9) vs (1.5, 5.5, 9.5)
      overlap widely: the test pairs by seed, the spread between seeds cancels."""
    method, baseline = [1.0, 2.0, 3.0], [3.0, 4.0, 5.5]
    assert metrics.claim_direction(method, baseline, lower_is_better=True) == "holds"
    assert metrics.claim_direction(method, baseline, lower_is_better=False) == "reversed"
    assert metrics.claim_direction(baseline, method, lower_is_better=False) == "holds"
    for lower in (True, False):
        assert metrics.claim_direction([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], lower) == "no difference"
    assert metrics.claim_direction([1.0, 5.0, 9.0], [1.5, 5.5, 9.5], lower_is_better=True) == "holds"


def test_embedder_loss_hand_case():
    """1-d t = (0, 1), m = (0, 3), temperature 1: distances [[0, 3], [1, 2]], logits = -d.
    Rows (text -> motion): log(1 + e^-3) and log(1 + e^(-1 - (-2))) = log(1 + e).
    Columns (motion -> text): [0, -1] target 0 -> log(1 + e^-1); [-3, -2] target 1 ->
    log(1 + e^-1). Loss = (mean rows + mean columns) / 2."""
    t = torch.tensor([[0.0], [1.0]], requires_grad=True)
    m = torch.tensor([[0.0], [3.0]])
    loss, parts = embedder_loss(t, m, temperature=1.0)
    t2m = (math.log1p(math.exp(-3)) + math.log1p(math.e)) / 2
    m2t = math.log1p(math.exp(-1))
    assert parts["t2m"].item() == pytest.approx(t2m, abs=1e-5)
    assert parts["m2t"].item() == pytest.approx(m2t, abs=1e-5)
    assert loss.item() == pytest.approx((t2m + m2t) / 2, abs=1e-5)
    assert parts["pos_dist"].item() == pytest.approx(1.0, abs=1e-5)  # (0 + 2) / 2
    assert parts["neg_dist"].item() == pytest.approx(2.0)  # (3 + 1) / 2
    loss.backward()
    assert torch.isfinite(t.grad).all()  # zero distance does not give a nan gradient


def test_embedder_loss_matches_logsumexp_and_masks_same_captions():
    rng = np.random.default_rng(8)
    t, m = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    captions = ["a", "b", "a", "c", "b"]
    loss, parts = embedder_loss(torch.tensor(t), torch.tensor(m), captions=captions, temperature=0.5)
    logits = -scipy.spatial.distance.cdist(t, m) / 0.5
    same = np.array([[a == b for b in captions] for a in captions]) & ~np.eye(5, dtype=bool)
    logits[same] = -np.inf
    t2m = np.mean(scipy.special.logsumexp(logits, axis=1) - np.diagonal(logits))
    m2t = np.mean(scipy.special.logsumexp(logits, axis=0) - np.diagonal(logits))
    assert parts["t2m"].item() == pytest.approx(t2m)
    assert parts["m2t"].item() == pytest.approx(m2t)
    assert loss.item() == pytest.approx((t2m + m2t) / 2)
    all_same, _ = embedder_loss(torch.tensor(t), torch.tensor(m), captions=["x"] * 5)
    assert all_same.item() == pytest.approx(0.0, abs=1e-6)  # no negatives left


def test_body_frame_spread_and_swing_by_hand():
    """J = 22 joints, features 12 J - 1 = 263, body-frame positions at 4 : 67.
    - One joint whose x alternates +a, -a over an even number of frames: its RMS distance from
      its mean place is a; the other 20 joints are still, so the spread is a / 21.
    - Frames past each length do not count. Swing: a still pose 0, a motion against itself 1,
      twice its deviations from its mean frame 2; against a direct numpy loop."""
    a, lengths = 0.3, torch.tensor([6, 4])
    x = torch.zeros(2, 6, 263)
    x[:, :, 4 + 3 * 2] = a * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # joint 3's x
    x[1, 4:] = 50.0                                                             # padding
    torch.testing.assert_close(metrics.body_frame_spread(x, lengths),
                               torch.full((2,), a / 21, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    motion = torch.randn(3, 10, 263, generator=g)
    lengths = torch.tensor([10, 7, 5])
    expected = []
    for b, n in enumerate(lengths.tolist()):  # direct: per joint, RMS distance from its mean place
        p = motion[b, :n, 4:67].double().numpy().reshape(n, 21, 3)
        expected.append(np.sqrt(((p - p.mean(0)) ** 2).sum(-1).mean(0)).mean())
    np.testing.assert_allclose(metrics.body_frame_spread(motion, lengths).numpy(), expected, rtol=1e-10)
    still = motion[:, :1].expand_as(motion)
    centre = torch.stack([motion[b, :n].mean(0) for b, n in enumerate(lengths.tolist())])[:, None]
    assert metrics.swing(still, motion, lengths) == 0.0
    assert metrics.swing(motion, motion, lengths) == pytest.approx(1.0)
    assert metrics.swing(centre + 2 * (motion - centre), motion, lengths) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="do not move"):
        metrics.swing(motion, still, lengths)


# ---------------------------------------------------------------------------------------
# Motion quality on joint positions: foot skating (GMD), foot lift, root speed

L, R = metrics.FEET  # 10, 11


def _feet(steps_left, steps_right, y_left, y_right, frames=10):
    """Joints (frames, 22, 3), all zero but the feet: each foot starts at x = 0 and moves along x by
    its per-step displacements (metres), at the given heights (a number or one per frame)."""
    j = np.zeros((frames, 22, 3))
    for foot, steps, y in ((L, steps_left, y_left), (R, steps_right, y_right)):
        j[:len(steps) + 1, foot, 0] = np.concatenate([[0.0], np.cumsum(steps)])
        j[:len(steps) + 1, foot, 1] = y if np.isscalar(y) else y
    return j


def test_foot_skating_ratio_hand_cases():
    """Six clips of n = 6 frames (5 steps) at 20 fps: 0.05 m a step is 1 m/s, over the 0.5 m/s threshold.
    vbar_t averages the speeds of steps t-2..t+2, zeros outside the clip.
    a. left foot on the floor sliding 1 m/s all along, right foot in the air:
       vbar = 3/5, 4/5, 1, 4/5, 3/5 (all > 0.5) -> 5/5 = 1.
    b. as a, but the left foot at 0.1 m in frame 2: steps 1 (frames 1-2) and 2 (2-3) are off the floor -> 3/5.
    c. sliding at 0.02 m a step = 0.4 m/s, under the threshold -> 0.
    d. one fast step (0.1 m = 2 m/s) among still ones: vbar = 2/5 = 0.4 -> 0 (the window rule).
    e. (padding) still, then sliding in the last two steps: v = 0, 0, 0, 1, 1, vbar_3 = vbar_4 = 2/5 -> 0.
       Frames 6-9, past the length, slide both feet at 1 m/s on the floor: counted, they would give
       steps 3 and 4 vbar 3/5 and 4/5 (skating) and 4 more skating steps, 6/9.
    f. left slides in steps 0-2 (v = 1, 1, 1, 0, 0: vbar 3/5 in each), right in steps 2-4 (vbar 3/5
       in each): a step skates if either foot does -> {0..4} = 5/5 (counting feet apart would give 6/5).
    """
    slide, air = [0.05] * 5, 0.5
    clips = [
        _feet(slide, [0] * 5, 0.0, air),
        _feet(slide, [0] * 5, [0, 0, 0.1, 0, 0, 0], air),
        _feet([0.02] * 5, [0] * 5, 0.0, air),
        _feet([0, 0, 0.1, 0, 0], [0] * 5, 0.0, air),
        _feet([0, 0, 0, 0.05, 0.05], [0] * 5, 0.0, 0.0),
        _feet([0.05, 0.05, 0.05, 0, 0], [0, 0, 0.05, 0.05, 0.05], 0.0, 0.0),
    ]
    joints = np.stack(clips)                                          # (6, 10, 22, 3)
    for t in range(6, 10):  # padding: both feet on the floor, sliding 1 m/s from where frame 5 left them
        joints[:, t, [L, R], 0] = joints[:, t - 1, [L, R], 0] + 0.05
        joints[:, t, [L, R], 1] = 0.0
    lengths = np.full(6, 6)
    expected = [1.0, 0.6, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(metrics.foot_skating_ratio(joints, lengths, fps=20), expected)
    np.testing.assert_allclose(metrics.foot_skating_ratio(torch.tensor(joints), torch.tensor(lengths)), expected)
    assert metrics.foot_skating_ratio(joints[4:5], [10])[0] == pytest.approx(6 / 9)  # e, padding counted
    with pytest.raises(ValueError, match="2..10 frames"):
        metrics.foot_skating_ratio(joints, np.full(6, 1))


def _gmd_skating_ratio(joints: np.ndarray) -> np.ndarray:
    """GMD's calculate_skating_ratio (guided-motion-diffusion, data_loaders/humanml/utils/metrics.py),
    restated on (B, T, 22, 3) joints at 20 fps with scipy's uniform_filter1d; every frame counts."""
    from scipy.ndimage import uniform_filter1d
    feet = joints[:, :, [10, 11]].transpose(0, 2, 3, 1)                      # (B, 2, 3, T)
    v = np.linalg.norm(feet[:, :, [0, 2], 1:] - feet[:, :, [0, 2], :-1], axis=2) * 20.0
    v_avg = uniform_filter1d(v, axis=-1, size=5, mode="constant", origin=0)
    y = feet[:, :, 1]
    contact = (y[:, :, :-1] < 0.05) & (y[:, :, 1:] < 0.05)
    skating = contact & (v > 0.5) & (v_avg > 0.5)
    skating = skating[:, 0] | skating[:, 1]
    return skating.sum(1) / skating.shape[1]


def test_foot_skating_ratio_matches_gmd_on_whole_clips():
    """Clips with no padding: GMD's code and ours agree clip by clip (feet wandering about the floor
    at about the thresholds, so every rule decides some steps)."""
    rng = np.random.default_rng(0)
    joints = np.zeros((16, 40, 22, 3))
    joints[:, :, [L, R], 0] = np.cumsum(rng.uniform(0, 0.05, (16, 40, 2)), axis=1)
    joints[:, :, [L, R], 2] = np.cumsum(rng.uniform(-0.01, 0.01, (16, 40, 2)), axis=1)
    joints[:, :, [L, R], 1] = rng.uniform(0, 0.08, (16, 40, 2))
    ours, gmd = metrics.foot_skating_ratio(joints, np.full(16, 40)), _gmd_skating_ratio(joints)
    np.testing.assert_allclose(ours, gmd, atol=1e-12)
    assert 0.05 < ours.mean() < 0.95


def test_wrist_speed_hand_case():
    """Clip 0 (n = 3 of 5 frames): the left wrist steps (0.03, 0.04, 0) then (0, 0, 0.1) about the
    root, 0.05 and 0.1 m, the right wrist is still: 20 fps * (0.15 / 2) / 2 wrists = 0.75 m/s;
    padding frames far away do not count. Clip 1: the whole body walks 0.05 m a frame, the wrists
    with the root: 0 m/s."""
    LW, RW = metrics.WRISTS
    j = np.zeros((2, 5, 22, 3))
    j[0, :3, LW] = [[0.3, 1.0, 0.0], [0.33, 1.04, 0.0], [0.33, 1.04, 0.1]]
    j[0, :3, RW] = [-0.3, 1.0, 0.0]
    j[0, 3:, LW] = 9.0
    j[1] = 0.05 * np.arange(5)[:, None, None] * np.array([1.0, 0.0, 0.0])
    j[1, :, [LW, RW], 1] += 1.0
    np.testing.assert_allclose(metrics.wrist_speed(j, torch.tensor([3, 5]), fps=20), [0.75, 0.0], atol=1e-12)


def test_foot_lift_and_root_speed_hand_cases():
    """Clip 0 has n = 4 of 6 frames; frames 4-5 are padding far away (5 m high, 10 m off).
    Foot lift: left y = 0, 0.1, 0.3, 0.05 (range 0.3), right y = 0.02, 0.02, 0.12, 0.02 (range 0.1):
    mean 0.2 m. Root (x, z) steps (0.03, 0.04), (0, 0), (0.06, 0.08): lengths 0.05, 0, 0.1 m, so
    20 fps * 0.15 / 3 = 1.0 m/s; the root's height changes do not count.
    Clip 1 (n = 6): both feet held at 0.07 m: lift 0; root 0.02 m a frame along x: 0.4 m/s."""
    j = np.zeros((2, 6, 22, 3))
    j[0, :4, L, 1] = [0.0, 0.1, 0.3, 0.05]
    j[0, :4, R, 1] = [0.02, 0.02, 0.12, 0.02]
    j[0, :4, 0, 0], j[0, :4, 0, 2] = [0.0, 0.03, 0.03, 0.09], [0.0, 0.04, 0.04, 0.12]
    j[0, :4, 0, 1] = [0.9, 1.0, 0.8, 0.9]
    j[0, 4:, :, 1], j[0, 4:, 0, 0] = 5.0, 10.0                      # padding
    j[1, :, [L, R], 1] = 0.07
    j[1, :, 0, 0] = 0.02 * np.arange(6)
    lengths = torch.tensor([4, 6])
    np.testing.assert_allclose(metrics.foot_lift(j, lengths), [0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(metrics.root_speed(torch.tensor(j), lengths, fps=20), [1.0, 0.4], atol=1e-12)
    np.testing.assert_allclose(metrics.root_speed(j, lengths, fps=10), [0.5, 0.2], atol=1e-12)
