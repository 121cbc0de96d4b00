"""Tests for the linear reference in bench/bench_vae.py (the closed-form DCT + PCA autoencoder
that the VAE's docstring and README compare against): the DCT basis against scipy's DCT-II, and
the autoencoder reproducing a clip's truncated DCT exactly when it keeps every component."""
import importlib.util
from pathlib import Path

import numpy as np
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
