"""Tests for bench/bench_vae.py: the linear reference (the closed-form DCT + PCA autoencoder that
the VAE's docstring and README compare against), its DCT basis against scipy's DCT-II and the
autoencoder reproducing a clip's truncated DCT exactly when it keeps every component; and the
levers the bench measures by hand: the velocity term, the training windows, the learning-rate
warm-up."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.fft import dct, idct

spec = importlib.util.spec_from_file_location(
    "bench_vae", Path(__file__).resolve().parents[1] / "bench" / "bench_vae.py")
bench_vae = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_vae)


def test_dct_basis_matches_scipy_and_is_zero_past_each_length():
    rng = np.random.default_rng(0)
    lengths, frames, k = torch.tensor([7, 12]), 12, 5
    x = torch.zeros(2, frames, 3, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        x[b, :n] = torch.from_numpy(rng.standard_normal((n, 3)))
    basis = bench_vae.dct_basis(lengths, frames, k)                               # (2, 12, 5)
    coefficients = torch.einsum("btk,btd->bkd", basis, x)
    for b, n in enumerate(lengths.tolist()):
        expected = dct(x[b, :n].numpy(), type=2, axis=0, norm="ortho")[:k]
        np.testing.assert_allclose(coefficients[b].numpy(), expected, atol=1e-12)
        assert torch.all(basis[b, n:] == 0)
        # orthonormal columns over the clip's own frames
        np.testing.assert_allclose((basis[b].T @ basis[b]).numpy(), np.eye(k), atol=1e-12)


def test_linear_autoencoder_is_exact_with_every_component():
    """With as many components as training clips span, a training clip comes back as its own
    first-k DCT truncation (what scipy's idct of the kept coefficients gives)."""
    rng = np.random.default_rng(1)
    items = [{"motion": torch.from_numpy(rng.standard_normal((n, 4))).float(), "length": n,
              "caption": "", "name": str(i)} for i, n in enumerate((9, 11, 8, 10))]
    k = 3
    reconstruct = bench_vae.linear_dct_autoencoder(items, k=k, dims=4 * k)
    batch = bench_vae.data.collate(items)
    out = reconstruct(batch["motion"], batch["lengths"])
    for b, item in enumerate(items):
        c = dct(item["motion"].double().numpy(), type=2, axis=0, norm="ortho")
        c[k:] = 0
        np.testing.assert_allclose(out[b, :item["length"]].numpy(), idct(c, type=2, axis=0, norm="ortho"),
                                   atol=1e-5)
        assert torch.all(out[b, item["length"]:] == 0)
    # fewer components than the clips span: no longer exact
    short = bench_vae.linear_dct_autoencoder(items, k=k, dims=1)(batch["motion"], batch["lengths"])
    assert not torch.allclose(short, out, atol=1e-3)


def test_learning_rate_warms_up_then_decays_by_half_cosine():
    """warmup 4, horizon 12, lr 1: 1/4, 2/4, 3/4, 4/4 over steps 0-3, then (1 + cos(pi k / 8)) / 2
    over the 8 steps left, reaching 0 at step 12 and staying there. Without warm-up: MLD's rate
    at step 0, the cosine over the whole horizon."""
    variant = bench_vae.Variant({}, lr=1.0, warmup=4)
    rates = [bench_vae.learning_rate(step, 12, variant) for step in range(14)]
    np.testing.assert_allclose(rates[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rates[4:], [(1 + np.cos(np.pi * min(k, 8) / 8)) / 2 for k in range(10)], atol=1e-12)
    plain = bench_vae.Variant({}, lr=0.5)
    assert bench_vae.learning_rate(0, 12, plain) == 0.5
    assert bench_vae.learning_rate(6, 12, plain) == pytest.approx(0.25)


def test_velocity_loss_by_hand():
    """pred = target + c t on one feature: every frame-to-frame difference is off by c on that one
    feature of D = 263, so SmoothL1 = 1/2 c^2 / 263 (|c| < 1), over the 8 + 3 valid pairs only
    (frames past a length never count); a constant offset scores 0."""
    torch.manual_seed(0)
    lengths, c, D = torch.tensor([9, 4]), 0.2, 263
    target = torch.randn(2, 9, D)
    ramp = target.clone()
    ramp[..., 10] += c * torch.arange(9.0)
    ramp[1, 4:] = 5.0                                                          # padding
    torch.testing.assert_close(bench_vae.velocity_loss(ramp, target, lengths), torch.tensor(0.5 * c ** 2 / D))
    assert float(bench_vae.velocity_loss(target + 0.7, target, lengths)) < 1e-12


def test_random_windows_are_slices_of_each_clip():
    """Clips longer than the crop come back as `crop` consecutive frames of themselves (every
    offset 0..n - crop is drawn over many draws), shorter ones whole; padding is zero."""
    torch.manual_seed(0)
    lengths = torch.tensor([12, 5, 8])
    motion = torch.arange(3 * 12, dtype=torch.float32).view(3, 12, 1).expand(3, 12, 4).clone()
    motion[1, 5:] = 0.0
    motion[2, 8:] = 0.0
    offsets = set()
    for _ in range(200):
        windows, new_lengths = bench_vae.random_windows(motion, lengths, crop=8)
        assert windows.shape == (3, 8, 4) and new_lengths.tolist() == [8, 5, 8]
        start = int(windows[0, 0, 0])                                           # frame index in clip 0
        offsets.add(start)
        torch.testing.assert_close(windows[0], motion[0, start:start + 8])
        torch.testing.assert_close(windows[1, :5], motion[1, :5])
        assert torch.all(windows[1, 5:] == 0)
        torch.testing.assert_close(windows[2], motion[2, :8])                  # exactly the crop: whole
    assert offsets == set(range(5))                                            # 0..12 - 8
