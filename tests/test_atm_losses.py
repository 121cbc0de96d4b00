"""Tests for atm_losses.py: ATM's mining and losses on a hand-worked batch of 4 (Eqs. 2-8), the
text-similarity exclusion, the gamma gate, clip cutting, and the gradient path
denoiser -> Eq. (10) -> frozen VAE decoder -> frozen embedder."""
import dataclasses
import math

import pytest
import torch

from atm_losses import (ATMConfig, atm_loss, clip_frames, diffusion_atm_loss, embed_motions,
                        inter_motion_loss, intra_motion_loss)
from diffusion import Denoiser, DiffusionConfig, GaussianDiffusion
from t2m_evaluator import T2MEvaluator, T2MEvaluatorConfig
from vae import MotionVAE, VAEConfig

r2, r5, r10, r17, r18, r20, r32, r65 = (math.sqrt(v) for v in (2, 5, 10, 17, 18, 20, 32, 65))


# ----------------------------------------------------------------------------
# The hand-worked batch of 4 (2-d embeddings)


def inter_batch():
    """Sequences. Real m = (0,0) (3,0) (0,4) (3,4); generated m^ = (0,0) (1,0) (0,2) (3,4);
    texts t = (0,1) (3,1) (1,4) (4,3); texts 0 and 1 are near-paraphrases (cos 0.9 > 0.85).

    D(m_i, m_j):   0-1 3, 0-2 4, 0-3 5, 1-2 5, 1-3 4, 2-3 3
    D(m^_i, m^_j): 0-1 1, 0-2 2, 0-3 5, 1-2 sqrt5, 1-3 sqrt20, 2-3 sqrt13
    Eq. (2) ratios D(m^)/D(m), row i over j != i:
        row 0: j1 1/3,        j2 2/4 = .5,      j3 5/5 = 1
        row 1: j0 1/3,        j2 sqrt5/5 = .447, j3 sqrt20/4 = 1.118
        row 2: j0 .5,         j1 .447,          j3 sqrt13/3 = 1.202
        row 3: j0 1,          j1 1.118,         j2 1.202
    Without exclusion j* = 1, 0, 1, 0. With texts 0-1 excluded (ratio := inf), rows 0 and 1
    lose their best negative: j* = 2, 2, 1, 0.
    Eq. (3) with exclusion, hinge = D(t_i, m^_i) - D(t_i, m^_j*) + D(t_i, m_j*) - D(t_i, m_i):
        row 0: 1 - 1 + 3 - 1                              = 2
        row 1: sqrt5 - sqrt10 + sqrt18 - 1                = 2.3164
        row 2: sqrt5 - 4 + sqrt20 - 1                     = 1.7082
        row 3: 1 - 5 + 5 - sqrt2 = -0.414 -> max{0, .}    = 0
    L_inter = (2 + 2.3164 + 1.7082 + 0) / 4 = 1.5062."""
    text = torch.tensor([[0., 1], [3, 1], [1, 4], [4, 3]])
    gen = torch.tensor([[0., 0], [1, 0], [0, 2], [3, 4]])
    real = torch.tensor([[0., 0], [3, 0], [0, 4], [3, 4]])
    sim = torch.full((4, 4), 0.1).fill_diagonal_(1.0)
    sim[0, 1] = sim[1, 0] = 0.9
    return text, gen, real, sim


INTER_ROWS = [2.0, r5 - r10 + r18 - 1, r5 - 4 + r20 - 1, 0.0]


def intra_batch():
    """Clips, K = 2 per motion, flat index b K + k. Motions 2 and 3 have one kept clip; their
    second windows (flat 5 and 7) hold decoys that would win every argmax if the mask failed.

        flat  real    generated   D(own)
        0     (0,0)   (0,0)       0
        1     (4,0)   (4,3)       3    -> Eq. (4): motion 0's k* = 1 (c^ = (4,3), c = (4,0))
        2     (0,4)   (0,5)       1    -> motion 1's k* = 0 (flat 2)
        3     (4,4)   (4,4)       0
        4     (9,0)   (9,1)       1    -> motion 2's only clip (flat 4)
        6     (8,4)   (8,4)       0    -> motion 3's only clip (flat 6)
    seq_cos = (.5, .5, .9, .5): with gamma = 0.8 motion 2 is gated out.

    Eqs. (5)-(6), ratio D(c^, c^_k) / D(c, c_k) over the other kept clips:
      motion 0 (c^ (4,3), c (4,0)): k0 5/4 = 1.25, k2 sqrt20/sqrt32 = .791, k3 1/4 = .25,
          k4 sqrt29/5 = 1.077, k6 sqrt17/sqrt32 = .729  -> pos 0, neg 3
          phi_tra = D(c, c_3) - D(c, c_0) = 4 - 4 = 0;  hinge = 5 - 1 + 0           = 4
      motion 1 (c^ (0,5), c (0,4)): k0 5/4 = 1.25, k1 sqrt20/sqrt32 = .791, k3 sqrt17/4 = 1.031,
          k4 sqrt97/sqrt97 = 1, k6 sqrt65/8 = 1.008  -> pos 0, neg 1
          phi_tra = sqrt32 - 4;  hinge = 5 - sqrt20 + sqrt32 - 4                     = 2.1847
      motion 2 (c^ (9,1), c (9,0)): k0 sqrt82/9 = 1.006, k1 sqrt29/5 = 1.077, k2 1,
          k3 sqrt34/sqrt41 = .911, k6 sqrt10/sqrt17 = .767  -> pos 1, neg 6
          phi_tra = sqrt17 - 5;  hinge = sqrt29 - sqrt10 + sqrt17 - 5                = 1.3460
      motion 3 (c^ = c = (8,4)): k0 1, k1 sqrt17/sqrt32 = .729, k2 sqrt65/8 = 1.008, k3 1,
          k4 sqrt10/sqrt17 = .767  -> pos 2, neg 1
          phi_tra = sqrt32 - 8;  hinge = sqrt65 - sqrt17 + sqrt32 - 8                = 1.5960
    L_intra (gamma 0.8: motions 0, 1, 3) = (4 + 2.1847 + 1.5960) / 3 = 2.5936."""
    real = torch.tensor([[[0., 0], [4, 0]], [[0, 4], [4, 4]], [[9, 0], [4, 1]], [[8, 4], [0, 0]]])
    gen = torch.tensor([[[0., 0], [4, 3]], [[0, 5], [4, 4]], [[9, 1], [100, 0]], [[8, 4], [50, 50]]])
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, False]])
    seq_cos = torch.tensor([0.5, 0.5, 0.9, 0.5])
    return gen, real, mask, seq_cos


INTRA_ROWS = [4.0, 5 - r20 + r32 - 4, math.sqrt(29) - r10 + r17 - 5, r65 - r17 + r32 - 8]


def test_inter_motion_hand_worked():
    text, gen, real, sim = inter_batch()
    loss, info = inter_motion_loss(text, gen, real, sim, eps=0.85)
    assert info["negative"].tolist() == [2, 2, 1, 0]
    assert info["valid"].all()
    # phi_ter = D(t_i, m_j*) - D(t_i, m_i): 3 - 1, sqrt18 - 1, sqrt20 - 1, 5 - sqrt2
    torch.testing.assert_close(info["margin"], torch.tensor([2.0, r18 - 1, r20 - 1, 5 - r2]))
    torch.testing.assert_close(info["per_row"], torch.tensor(INTER_ROWS))
    assert loss.item() == pytest.approx(sum(INTER_ROWS) / 4, abs=1e-5)
    assert loss.item() == pytest.approx(1.5062, abs=1e-4)


def test_intra_motion_hand_worked():
    gen, real, mask, seq_cos = intra_batch()
    loss, info = intra_motion_loss(gen, real, seq_cos, gamma=0.8, clip_mask=mask)
    assert info["anchor"].tolist() == [1, 2, 4, 6]
    assert info["positive"].tolist() == [0, 0, 1, 2]
    assert info["negative"].tolist() == [3, 1, 6, 1]
    torch.testing.assert_close(info["margin"], torch.tensor([0.0, r32 - 4, r17 - 5, r32 - 8]))
    torch.testing.assert_close(info["per_row"], torch.tensor(INTRA_ROWS))
    assert info["active"].tolist() == [True, True, False, True]
    assert loss.item() == pytest.approx((INTRA_ROWS[0] + INTRA_ROWS[1] + INTRA_ROWS[3]) / 3, abs=1e-5)
    assert loss.item() == pytest.approx(2.5936, abs=1e-4)


def test_atm_loss_is_lambda_times_the_sum():
    """Eq. (8) on the hand-worked batch with the gamma gate wide open (the sequence cosines of
    the inter batch then gate nothing): 0.01 (1.5062 + (4 + 2.1847 + 1.3460 + 1.5960) / 4)."""
    text, gen, real, sim = inter_batch()
    gen_clips, real_clips, mask, _ = intra_batch()
    cfg = ATMConfig(gamma=2.0)
    loss, parts = atm_loss(text, gen, real, sim, gen_clips, real_clips, mask, cfg)
    inter, intra = sum(INTER_ROWS) / 4, sum(INTRA_ROWS) / 4
    assert parts["inter"].item() == pytest.approx(inter, abs=1e-5)
    assert parts["intra"].item() == pytest.approx(intra, abs=1e-5)
    assert loss.item() == pytest.approx(0.01 * (inter + intra), abs=1e-7)
    assert parts["atm"] is loss and parts["inter_rows"].item() == 1.0 and parts["intra_rows"].item() == 1.0
    # the separate weights of the ablations (ATM Tab. 3): each term alone
    only_inter, _ = atm_loss(text, gen, real, sim, gen_clips, real_clips, mask, dataclasses.replace(cfg, lambda_intra=0.0))
    only_intra, _ = atm_loss(text, gen, real, sim, gen_clips, real_clips, mask, dataclasses.replace(cfg, lambda_inter=0.0))
    assert only_inter.item() == pytest.approx(0.01 * inter, abs=1e-7)
    assert only_intra.item() == pytest.approx(0.01 * intra, abs=1e-7)


def test_atm_loss_gates_intra_by_sequence_cosine():
    """The gate reads cos(m^_i, m_i) of the sequence embeddings: generated = 2 x real gives
    cos 1 >= 0.8 (no intra term); generated orthogonal to real gives cos 0 < 0.8."""
    text, _, _, sim = inter_batch()
    gen_clips, real_clips, mask, _ = intra_batch()
    real = torch.tensor([[1., 0], [0, 1], [1, 1], [1, -1]])
    for gen, rows in ((2 * real, 0.0), (real.flip(1) * torch.tensor([-1., 1]), 1.0)):
        _, parts = atm_loss(text, gen, real, sim, gen_clips, real_clips, mask, ATMConfig())
        assert parts["intra_rows"].item() == rows
        assert (parts["intra"].item() > 0) == (rows > 0)


# ----------------------------------------------------------------------------
# Text-similarity exclusion and the gamma gate


def test_text_similarity_exclusion():
    """Without exclusion the best negatives are j* = 1, 0, 1, 0 (see inter_batch), and
        row 0: 1 - sqrt2 + sqrt10 - 1 = 1.7481,  row 1: sqrt5 - sqrt10 + sqrt10 - 1 = 1.2361,
        row 2: 1.7082, row 3: 0.
    Text 3 similar to every other text: row 3 has no negative (contributes nothing, the mean
    is over the 3 other rows) and no row may pick 3. All texts similar: the loss is 0."""
    text, gen, real, sim = inter_batch()
    _, info = inter_motion_loss(text, gen, real, torch.zeros(4, 4), eps=0.85)
    assert info["negative"].tolist() == [1, 0, 1, 0]
    torch.testing.assert_close(info["per_row"], torch.tensor([r10 - r2, r5 - 1, r5 - 4 + r20 - 1, 0.0]))

    sim[3, :] = sim[:, 3] = 0.95
    loss, info = inter_motion_loss(text, gen, real, sim, eps=0.85)
    assert info["valid"].tolist() == [True, True, True, False]
    assert info["negative"][:3].tolist() == [2, 2, 1]
    assert loss.item() == pytest.approx(sum(INTER_ROWS[:3]) / 3, abs=1e-5)

    gen.requires_grad_(True)
    loss, info = inter_motion_loss(text, gen, real, torch.ones(4, 4), eps=0.85)
    assert not info["valid"].any() and loss.item() == 0.0
    loss.backward()  # the graph survives a batch without negatives; its gradient is zero
    assert torch.count_nonzero(gen.grad) == 0


def test_gamma_gate():
    """Motion 2 (cos 0.9) joins when gamma = 0.95: L_intra = (4 + 2.1847 + 1.3460 + 1.5960) / 4.
    The gate is strict (cos < gamma), so cos = gamma gates out; everything gated gives 0."""
    gen, real, mask, seq_cos = intra_batch()
    loss, info = intra_motion_loss(gen, real, seq_cos, gamma=0.95, clip_mask=mask)
    assert info["active"].all()
    assert loss.item() == pytest.approx(sum(INTRA_ROWS) / 4, abs=1e-5)
    loss, info = intra_motion_loss(gen, real, torch.tensor([0.5, 0.8, 0.9, 0.5]), gamma=0.8, clip_mask=mask)
    assert info["active"].tolist() == [True, False, False, True]
    assert loss.item() == pytest.approx((INTRA_ROWS[0] + INTRA_ROWS[3]) / 2, abs=1e-5)
    loss, info = intra_motion_loss(gen, real, torch.full((4,), 0.9), gamma=0.8, clip_mask=mask)
    assert not info["active"].any() and loss.item() == 0.0


# ----------------------------------------------------------------------------
# Clips and the gradient path through the frozen models


def tiny_models(feat_dim=263, latent=(1, 16), text_dim=8):
    torch.manual_seed(0)
    vae = MotionVAE(VAEConfig(latent_dim=latent[1], n_layers=3, n_heads=2, ff_dim=32, max_len=100), feat_dim)
    denoiser = Denoiser(DiffusionConfig(n_layers=3, n_heads=2, ff_dim=32, cond_drop=0.0), latent, text_dim)
    emb_cfg = T2MEvaluatorConfig(dim_word=8, dim_text_hidden=8, dim_movement_enc_hidden=8, dim_movement_latent=8,
                                 dim_motion_hidden=8, dim_coemb_hidden=8, mask_padding=True)
    embedder = T2MEvaluator.trained(emb_cfg, feat_dim, {"a man walks": "a/DET man/NOUN walk/VERB"})
    for frozen in (vae, embedder):  # as runfolder.load_model returns them
        frozen.eval().requires_grad_(False)
    return vae, denoiser, embedder


def test_clip_frames_follow_the_paper():
    """Sec. 4.1: 2 s clips, kept from 1 s: 40 / 20 frames on HumanML3D, 25 / 13 on KIT (12.5 fps)."""
    assert clip_frames(ATMConfig(), 20.0) == (40, 20)
    assert clip_frames(ATMConfig(), 12.5) == (25, 13)


def test_embed_motions_cuts_40_frame_clips():
    """Lengths 80, 60, 44, 96: windows [0,40) [40,80) [80,120); kept when >= 20 frames:
    80 -> 40+40, 60 -> 40+20, 44 -> 40 (+4 dropped), 96 -> 40+40 (+16 dropped). Each kept clip
    embeds exactly like the slice embedded on its own."""
    _, _, embedder = tiny_models()
    lengths = torch.tensor([80, 60, 44, 96])
    motion = torch.randn(4, 96, 263)
    with torch.no_grad():
        seq, clips, mask = embed_motions(embedder, motion, lengths, 40, 20)
        assert mask.tolist() == [[True, True, False], [True, True, False], [True, False, False],
                                 [True, True, False]]
        assert clips.shape == (4, 3, 8) and torch.count_nonzero(clips[~mask]) == 0
        torch.testing.assert_close(seq, embedder.encode_motion(motion, lengths))
        alone = embedder.encode_motion(motion[1:2, 40:60], torch.tensor([20]))
        torch.testing.assert_close(clips[1, 1], alone[0], rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_denoiser_through_the_decoder():
    """L_atm alone (which only sees the denoiser through Eq. 10 -> D_vae -> the embedder)
    gives the denoiser a non-zero gradient; the frozen VAE and embedder get none."""
    vae, denoiser, embedder = tiny_models()
    schedule = GaussianDiffusion(denoiser.cfg)
    lengths = torch.tensor([80, 60, 44, 96, 72, 52])
    real = torch.randn(6, 96, 263)
    with torch.no_grad():
        real_emb, real_clips, clip_mask = embed_motions(embedder, real, lengths, 40, 20)
    batch = {"z": torch.randn(6, 1, 16), "c": torch.randn(6, 8), "lengths": lengths,
             "text_emb": torch.randn(6, 8), "motion_emb": real_emb, "clip_emb": real_clips,
             "clip_mask": clip_mask}
    cfg = ATMConfig(gamma=1.0)  # every sequence passes the gate (random models are far from 0.8)
    torch.manual_seed(0)  # the denoiser's dropout
    loss, parts = diffusion_atm_loss(schedule, denoiser, vae, embedder, batch, torch.zeros(8), cfg,
                                     fps=20.0, generator=torch.Generator().manual_seed(0))
    assert parts["atm"].item() > 0, "pick a batch where some triplet is violated"
    assert loss.item() == pytest.approx((parts["mse"] + parts["atm"]).item())
    # the equal-budget control: both weights 0 is L_mse alone, from the same draws
    torch.manual_seed(0)
    control, _ = diffusion_atm_loss(schedule, denoiser, vae, embedder, batch, torch.zeros(8),
                                    dataclasses.replace(cfg, lambda_inter=0.0, lambda_intra=0.0), fps=20.0,
                                    generator=torch.Generator().manual_seed(0))
    assert control.item() == pytest.approx(parts["mse"].item())
    params = list(denoiser.parameters())
    grads = torch.autograd.grad(parts["atm"], params, retain_graph=True, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    loss.backward()
    assert all(p.grad is None for p in list(vae.parameters()) + list(embedder.parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
