import math

import pytest
import torch

import projector as P


def test_align_loss_hand_case():
    """z_proj = (1, 0) against c = (1, 1): cos = 1/sqrt(2); (0, 2) against (0, -3): cos = -1.
    L_align = mean(1 - 1/sqrt(2), 1 - (-1)) = (0.29289 + 2) / 2 = 1.14645."""
    z_proj = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    assert P.align_loss(z_proj, c).item() == pytest.approx(expected, abs=1e-6)


def test_rec_loss_is_element_mean_of_squares():
    """Differences 1, -2, 0, 3 -> squares 1, 4, 0, 9 -> mean 3.5."""
    z = torch.tensor([[[1.0, 2.0]], [[0.0, 3.0]]])
    z_hat = torch.tensor([[[0.0, 4.0]], [[0.0, 0.0]]])
    assert P.rec_loss(z, z_hat).item() == pytest.approx(3.5)


def test_var_loss_hand_case():
    """One latent dimension. P from z = (1, 3): mean 2, std 1. Q from z_hat = (0, 4): mean 2,
    std 2. KL = log(2/1) + (1 + 0) / (2 * 4) - 1/2 = log 2 + 1/8 - 1/2.
    A second dimension identical in P and Q contributes 0, so the mean over d halves it."""
    z = torch.tensor([[1.0, 5.0], [3.0, 7.0]])
    z_hat = torch.tensor([[0.0, 5.0], [4.0, 7.0]])
    expected = (math.log(2) + 1 / 8 - 0.5) / 2
    assert P.var_loss(z, z_hat).item() == pytest.approx(expected, abs=1e-5)
    assert P.var_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)


def test_var_loss_matches_torch_distributions():
    torch.manual_seed(0)
    z, z_hat = torch.randn(64, 1, 8), 2 * torch.randn(64, 1, 8) + 0.5
    p = torch.distributions.Normal(z.flatten(1).mean(0), z.flatten(1).std(0, unbiased=False))
    q = torch.distributions.Normal(z_hat.flatten(1).mean(0), z_hat.flatten(1).std(0, unbiased=False))
    expected = torch.distributions.kl_divergence(p, q).mean()
    assert P.var_loss(z, z_hat).item() == pytest.approx(expected.item(), rel=1e-4)


def test_projector_loss_weights_eq7():
    torch.manual_seed(0)
    cfg = P.ProjectorConfig()
    z, z_hat = torch.randn(8, 1, 4), torch.randn(8, 1, 4)
    z_proj, c = torch.randn(8, 6), torch.randn(8, 6)
    total, parts = P.projector_loss(z, z_proj, z_hat, c, cfg)
    expected = 2.1591 * parts["align"] + 4.7036 * parts["rec"] + 0.05960 * parts["var"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"align", "rec", "var"}


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_projector_shapes_and_gradients(kind):
    cfg = P.ProjectorConfig(kind=kind, n_layers=2, ff_dim=32, dropout=0.0)
    proj = P.Projector(cfg, latent_shape=(2, 16), text_dim=24)
    z = torch.randn(5, 2, 16, requires_grad=True)
    z_proj, z_hat = proj(z)
    assert z_proj.shape == (5, 24) and z_hat.shape == (5, 2, 16)
    assert proj.realign(z).shape == z.shape
    z_hat.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_projector_learns_to_align_and_reconstruct():
    """A few hundred steps on a toy problem: c is a fixed linear map of z; the projector must
    drive both L_align and L_rec well below their starting values."""
    torch.manual_seed(0)
    cfg = P.ProjectorConfig(n_layers=1, ff_dim=64, dropout=0.0)
    proj = P.Projector(cfg, latent_shape=(1, 8), text_dim=12)
    mix = torch.randn(8, 12)
    opt = torch.optim.AdamW(proj.parameters(), lr=3e-3)
    z = torch.randn(256, 1, 8)
    c = z[:, 0] @ mix
    first = None
    for _ in range(400):
        z_proj, z_hat = proj(z)
        loss, parts = P.projector_loss(z, z_proj, z_hat, c, cfg)
        first = first or {k: v.item() for k, v in parts.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["align"].item() < 0.5 * first["align"]
    assert parts["rec"].item() < 0.5 * first["rec"]


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="projector.kind"):
        P.Projector(P.ProjectorConfig(kind="skip"), (1, 8), 8)
