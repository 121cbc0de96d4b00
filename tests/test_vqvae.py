"""Tests for vqvae.py: the quantiser against scipy's nearest neighbour, the straight-through
gradient and commitment, the EMA update and Code Reset by hand, the VQ-VAE's shapes and loss
(Eqs. 5-7), padding ignored, codebook usage by hand."""
import numpy as np
import pytest
import scipy.spatial.distance
import torch

import lamp
import vqvae


def tiny_config(**changes) -> lamp.LaMPConfig:
    """The vq_* fields the VQ-VAE reads live in lamp.LaMPConfig (the `lamp` config section)."""
    return lamp.LaMPConfig(**{**dict(vq_codes=16, vq_code_dim=8, vq_width=16, vq_depth=2), **changes})


def motion_batch(B=3, T_=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T_, 263, generator=g), torch.tensor([44, 40, 36, 44, 40][:B])


# ----------------------------------------------------------------------------
# Motion tokenizer


def test_quantizer_nearest_matches_scipy():
    torch.manual_seed(0)
    q = vqvae.Quantizer(16, 8, 0.99, 1.0)
    q.codebook.copy_(torch.randn(16, 8))
    z = torch.randn(5, 7, 8)
    expected = scipy.spatial.distance.cdist(z.reshape(-1, 8).numpy(), q.codebook.numpy()).argmin(1)
    assert np.array_equal(q.nearest(z).reshape(-1).numpy(), expected)


def test_quantizer_straight_through_and_commitment():
    """Codes {0, 10} in 1-d; z = (1, 9, 100 [padding]) quantises to (0, 10, -); the commitment over
    the valid tokens is ((1-0)^2 + (9-10)^2) / 2 = 1, and dz of sum(output) is exactly 1."""
    q = vqvae.Quantizer(2, 1, 0.99, 1.0).eval()
    q.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    q.initialised.fill_(True)
    z = torch.tensor([[[1.0], [9.0], [100.0]]], requires_grad=True)
    out, codes, commit = q(z, torch.tensor([[True, True, False]]))
    assert codes.tolist() == [[0, 1, 1]] and out[0, :2, 0].tolist() == [0.0, 10.0]
    assert commit.item() == pytest.approx(1.0)
    out.sum().backward()
    assert z.grad.tolist() == [[[1.0], [1.0], [1.0]]]


def test_ema_update_and_code_reset_hand_computed():
    """lambda = 0.5, codes {0, 10} with sums {0, 10} and counts {1, 1}; data x = (1, 3) both
    nearest code 0. Code 0: sum 0.5*0 + 0.5*4 = 2, count 0.5*1 + 0.5*2 = 1.5 -> centre 4/3.
    Code 1: count 0.5 < 1, dead -> reset to one of the data vectors (1 or 3)."""
    q = vqvae.Quantizer(2, 1, 0.5, 1.0)
    q.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    q.code_sum.copy_(q.codebook)
    q.code_count.fill_(1.0)
    q.initialised.fill_(True)
    q.update(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0]))
    assert q.code_sum[0].item() == pytest.approx(2.0) and q.code_count.tolist() == [1.5, 0.5]
    assert q.codebook[0].item() == pytest.approx(4 / 3)
    assert q.codebook[1].item() in (1.0, 3.0)


def test_vq_vae_shapes_and_loss():
    """T = 44 -> n = 11 tokens (downsampling 4); lengths 44, 40, 36 -> 11, 10, 9 valid tokens.
    vq_loss hand case: x_hat = x + 0.1 on every frame -> SmoothL1 0.5 * 0.1^2 = 0.005, velocity 0."""
    torch.manual_seed(0)
    cfg = tiny_config()
    vq = vqvae.MotionVQVAE(cfg, 263)
    x, lengths = motion_batch()
    x_hat, commit, codes = vq(x, lengths)
    assert x_hat.shape == x.shape and codes.shape == (3, 11)
    z, valid = vq.encode(x, lengths)
    assert z.shape == (3, 11, 8) and valid.sum(1).tolist() == [11, 10, 9]
    loss, parts = vqvae.vq_loss(x + 0.1, x, lengths, torch.tensor(2.0), cfg)
    assert parts["recon"].item() == pytest.approx(0.005, abs=1e-6)
    assert parts["velocity"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.005 + cfg.vq_commit * 2.0, abs=1e-6)


def test_what_lies_past_a_length_is_ignored():
    """Frames past a clip's length are zeroed before the encoder: garbage there gives exactly the
    features that zeros give."""
    torch.manual_seed(0)
    vq = vqvae.MotionVQVAE(tiny_config(), 263).eval()
    x, _ = motion_batch(1, 40)
    zeros = torch.cat([x, torch.zeros(1, 16, 263)], dim=1)
    garbage = torch.cat([x, torch.randn(1, 16, 263)], dim=1)
    with torch.no_grad():
        assert torch.equal(vq.encode(zeros, torch.tensor([40]))[0], vq.encode(garbage, torch.tensor([40]))[0])


def test_codebook_usage_hand_computed():
    """codes 0, 0, 1, 1 of S = 4: half the codes used, p = (1/2, 1/2) -> perplexity 2."""
    usage = vqvae.codebook_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert usage["used"] == 0.5 and usage["perplexity"] == pytest.approx(2.0)
