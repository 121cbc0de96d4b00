"""Train MLD's VAE and the tiny preset's VAE for the same wall time and compare their
reconstructions on the synthetic validation split.

    python bench/bench_vae.py [--seconds 200] [--data data/synthetic] [--only NAME]

Issue 5's target: the VAE stage in at most 4 minutes, with a validation mean per-joint position
error (features -> joints) of 5 cm or less. Each variant trains with one torch thread until
`--seconds` have passed (the steps it reaches are printed), with a cosine decay over the steps
its first 20 predict. Printed per variant: steps, the running training losses, and on val the
mean per-joint error on global joints (root trajectory integrated from the velocities),
root-aligned joints (MPJPE as MLD reports it) and body-frame joints (ric: heading ignored),
all from the posterior mean; plus, as references, the same errors when every frame is replaced
by the dataset mean ("mean motion") and by each clip's own mean frame ("clip mean", an oracle),
and for a linear autoencoder fitted in closed form: each clip's first 8 DCT-II coefficients over
time (per feature, a length-free encoding) projected onto the top principal components of the
training clips' coefficients, as many as the tiny VAE's latent has numbers (4 x 128 = 512).
It shows what a 512-number latent can hold when the encoder and decoder need no training.
The dataset must exist (`python train.py --stage data` writes it).
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import metrics  # noqa: E402
import train  # noqa: E402
import vae  # noqa: E402

SIZES = dict(latent_dim=128, n_layers=3, ff_dim=256, dropout=0.0)
VARIANTS = {  # name -> (VAEConfig fields beyond SIZES, batch size, learning rate)
    "mld (1 token, post-norm, uniform positions, global joints, batch 32, lr 1e-3)":
        (dict(n_tokens=1), 32, 1e-3),
    "mld + root-relative joint loss":
        (dict(n_tokens=1, joint_loss="root_relative"), 32, 1e-3),
    "tiny preset (4 tokens, pre-norm, sinusoidal start, root-relative, batch 16, lr 5e-4)":
        (dict(n_tokens=4, norm_first=True, position_init="sinusoidal", joint_loss="root_relative"), 16, 5e-4),
}


def errors(reconstruct, dataset) -> dict:
    """metrics.joint_errors in centimetres."""
    return {k: round(100 * v, 2) for k, v in metrics.joint_errors(reconstruct, dataset, torch.device("cpu")).items()}


def dct_basis(lengths: torch.Tensor, frames: int, k: int) -> torch.Tensor:
    """(B,) lengths -> (B, frames, k): the orthonormal DCT-II basis over each clip's own length,
    zero past it: coefficients = basis^T x, x = basis coefficients."""
    n = lengths.double()[:, None, None]                                            # (B, 1, 1)
    t = torch.arange(frames, dtype=torch.float64)[None, :, None]                   # (1, T, 1)
    f = torch.arange(k, dtype=torch.float64)[None, None, :]                        # (1, 1, k)
    basis = torch.cos(torch.pi * f * (t + 0.5) / n) * torch.sqrt(2.0 / n)
    basis[..., 0] /= math.sqrt(2.0)                                                # the constant term
    return basis * (t < n)


def linear_dct_autoencoder(train_set, k: int = 8, dims: int = 512):
    """Fit the closed-form linear autoencoder on the training clips; -> reconstruct(x, lengths)."""
    def coefficients(x, lengths):  # (B, k * D), divided by sqrt(length) so clips of any length compare
        basis = dct_basis(lengths, x.shape[1], k)
        return (torch.einsum("btk,btd->bkd", basis, x.double()) / lengths.double().sqrt()[:, None, None]).flatten(1)

    rows = []
    for start in range(0, len(train_set), 64):
        batch = data.collate([train_set[i] for i in range(start, min(start + 64, len(train_set)))])
        rows.append(coefficients(batch["motion"], batch["lengths"]))
    rows = torch.cat(rows)                                                        # (N, k * D)
    centre = rows.mean(0)
    components = torch.linalg.svd(rows - centre, full_matrices=False).Vh[:dims]   # (dims, k * D)

    def reconstruct(x, lengths):
        code = (coefficients(x, lengths) - centre) @ components.T                  # (B, dims): the latent
        c = (code @ components + centre).view(x.shape[0], k, -1) * lengths.double().sqrt()[:, None, None]
        return torch.einsum("btk,bkd->btd", dct_basis(lengths, x.shape[1], k), c).float()
    return reconstruct


def train_for(seconds: float, fields: dict, batch_size: int, lr: float, train_set, val_set) -> dict:
    torch.manual_seed(0)
    cfg = vae.VAEConfig(**SIZES, **fields)
    model = vae.MotionVAE(cfg, train_set.mean.shape[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    stream = train.batches(train_set, batch_size, 0)
    sched = train.Schedule(steps=1, batch_size=batch_size, lr=lr)  # constant until step 20
    running, step, start = {}, 0, time.time()
    model.train()
    while time.time() - start < seconds:
        if step == 20:  # the cosine horizon: the steps the budget allows at the rate so far
            sched = train.Schedule(int(seconds / ((time.time() - start) / 20)), batch_size, lr, cosine=True)
        for group in optimizer.param_groups:
            group["lr"] = train.learning_rate(sched, step)
        batch = next(stream)
        x, lengths = batch["motion"], batch["lengths"]
        x_hat, mu, logvar = model(x, lengths)
        loss, parts = vae.vae_loss(x_hat, x, lengths, mu, logvar, train_set.mean, train_set.std,
                                   lambda_kl=cfg.lambda_kl, joint_loss=cfg.joint_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        for key, value in {"loss": loss, **parts}.items():
            value = float(value.detach())
            running[key] = 0.98 * running.get(key, value) + 0.02 * value
    model.eval()
    with torch.no_grad():
        val = errors(model.reconstruct, val_set)
        batch = data.collate([val_set[i] for i in range(min(64, len(val_set)))])
        _, _, logvar = model.encode(batch["motion"], batch["lengths"], sample=False)
    return {"steps": step, "seconds": round(time.time() - start), **{k: round(v, 4) for k, v in running.items()},
            "sigma": round(float(torch.exp(0.5 * logvar).mean()), 3), **val}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--only", help="run only the variants whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (args.data / "Mean.npy").exists():
        sys.exit(f"{args.data}: no dataset there; run `python train.py --stage data` first")
    train_set = data.MotionTextDataset(args.data, "train", seed=0)
    val_set = data.MotionTextDataset(args.data, "val", seed=0)
    zero = lambda x, lengths: torch.zeros_like(x)  # noqa: E731  (normalised 0 = the dataset mean)

    def clip_mean(x, lengths):
        valid = vae.lengths_to_mask(lengths, x.shape[1])[..., None]
        return ((x * valid).sum(1, keepdim=True) / lengths[:, None, None]).expand_as(x) * valid

    with torch.no_grad():
        print(f"mean motion: {errors(zero, val_set)}")
        print(f"clip mean (oracle): {errors(clip_mean, val_set)}")
        print(f"linear DCT-8 + PCA-512 autoencoder (closed form): "
              f"{errors(linear_dct_autoencoder(train_set), val_set)}", flush=True)
    for name, (fields, batch_size, lr) in VARIANTS.items():
        if args.only and args.only not in name:
            continue
        print(f"{name}: {train_for(args.seconds, fields, batch_size, lr, train_set, val_set)}", flush=True)


if __name__ == "__main__":
    main()
