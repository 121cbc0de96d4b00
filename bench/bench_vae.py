"""Train variants of the MLD VAE for the same wall time and compare their reconstructions on the
synthetic validation split: MLD's recipe, the tiny preset's, and the levers tried on it.

    python bench/bench_vae.py [--seconds 200 | --steps N] [--data data/synthetic] [--only NAME,NAME]
                              [--no-references]

Each variant (VARIANTS) trains with one torch thread until `--seconds` have passed (the steps it
reaches are printed), with a cosine decay over the steps its first 20 predict, or for exactly
`--steps` steps (the same updates however busy the machine is). Printed per variant: steps, the
running training losses, the mean posterior sigma, and on val the mean per-joint error on global
joints (root trajectory integrated from the velocities), root-aligned joints (MPJPE as MLD reports
it) and body-frame joints (ric: heading ignored), all from the posterior mean, and the swing
(evaluation.reconstruction_swing: how much the reconstructions move in the body frame against the
motions, 1 = as much). References: the same figures when every frame is replaced by the dataset
mean ("mean motion") and by each clip's own mean frame ("clip mean", an oracle), and for a linear
autoencoder fitted in closed form: each clip's first 8 DCT-II coefficients over time (per
feature, a length-free encoding) projected onto the top principal components of the training
clips' coefficients, as many as the tiny VAE's latent has numbers (4 x 128 = 512). It shows what
a 512-number latent can hold when the encoder and decoder need no training.
The levers that did not earn a place in vae.py live here: training on random windows of the
clips (`random_windows`), a velocity term (`velocity_loss`), the starting gain and bias of the
encoder's final LayerNorm. vae.py's docstring lists what each measured.
The dataset must exist (`python train.py --stage data` writes it).
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import evaluation  # noqa: E402
import loop  # noqa: E402
import vae  # noqa: E402

SIZES = dict(latent_dim=128, n_layers=3, ff_dim=256, dropout=0.0)
TINY = dict(n_tokens=4, norm_first=True, position_init="sinusoidal", joint_loss="root_relative")


@dataclass
class Variant:
    fields: dict           # VAEConfig fields beyond SIZES
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 0        # steps of linear learning-rate warm-up before the cosine decay
    crop: int = 0          # train on random windows of this many frames (0: whole clips)
    lambda_vel: float = 0.0  # weight of `velocity_loss` (MLD: none)
    sample: bool = True    # decode z drawn from the posterior (MLD), or its mean mu while training
    noise_ramp: float = 0.0  # fraction of the steps over which the posterior noise grows from 0 to MLD's
    latent_gain: float = 1.0  # starting gain of the encoder's final LayerNorm (mu and logvar scale)
    latent_bias: float = 0.0  # starting bias of that LayerNorm (shifts mu and logvar alike)


VARIANTS = {  # name -> Variant; "mld": 1 token, post-norm, uniform positions, global joints
    "mld": Variant(dict(n_tokens=1), 32, 1e-3),
    "mld+root-relative": Variant(dict(n_tokens=1, joint_loss="root_relative"), 32, 1e-3),
    # the tiny preset before the noise ramp: 4 tokens, pre-norm, sinusoidal start, root-relative
    # joints, batch 16, lr 5e-4; "tiny+noise-ramp" is the preset with it (vae.noise_ramp)
    "tiny": Variant(TINY),
    "tiny+crop64": Variant(TINY, crop=64),
    "tiny+vel1": Variant(TINY, lambda_vel=1.0),
    "tiny+vel4": Variant(TINY, lambda_vel=4.0),
    "tiny+16x32": Variant(dict(TINY, n_tokens=16, latent_dim=32)),
    "tiny+8x64": Variant(dict(TINY, n_tokens=8, latent_dim=64)),
    "tiny+warmup+lr1e-3": Variant(TINY, lr=1e-3, warmup=100),
    "tiny+mean-z": Variant(TINY, sample=False),
    "tiny+16x128": Variant(dict(TINY, n_tokens=16)),
    "tiny+heads8": Variant(dict(TINY, n_heads=8)),
    "tiny+noise-ramp": Variant(TINY, noise_ramp=0.5),
    "tiny+batch8": Variant(TINY, batch_size=8),
    "tiny+gain3": Variant(TINY, latent_gain=3.0),
    "tiny+gain3+noise-ramp": Variant(TINY, latent_gain=3.0, noise_ramp=0.5),
    "tiny+bias-3": Variant(TINY, latent_bias=-3.0),
    # the latent as S slots tied to spans of time (vae.time_slots), same 4 x 128 numbers
    "tiny+noise-ramp+slots8": Variant(dict(TINY, time_slots=8), noise_ramp=0.5),
    "tiny+noise-ramp+slots16": Variant(dict(TINY, time_slots=16), noise_ramp=0.5),
    "tiny+noise-ramp+slots32": Variant(dict(TINY, time_slots=32), noise_ramp=0.5),
}


def errors(reconstruct, dataset) -> dict:
    """evaluation.joint_errors in centimetres, and the motions the reconstructions keep
    (evaluation.reconstruction_quality: foot lift, wrist and root speed as ratios to the clips')."""
    cpu = torch.device("cpu")
    quality = evaluation.reconstruction_quality(reconstruct, dataset, cpu)
    return {**{k: round(100 * v, 2) for k, v in evaluation.joint_errors(reconstruct, dataset, cpu).items()},
            **{k: round(quality[k], 3) for k in ("Foot lift", "Wrist speed", "Root speed", "Foot skating")}}


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


def random_windows(motion: torch.Tensor, lengths: torch.Tensor, crop: int):
    """A random window of at most `crop` frames from each clip: motion (B, T, D), lengths (B,)
    -> (motion (B, min(T, crop), D) zero-padded, lengths (B,)). A clip of n > crop frames keeps
    frames [o, o + crop) with o uniform in 0..n - crop (torch's generator); a shorter one is whole."""
    B, T, D = motion.shape
    new_lengths = lengths.clamp(max=crop)                                                # (B,)
    offsets = (torch.rand(B) * (lengths - new_lengths + 1)).long()                       # (B,)
    frames = offsets[:, None] + torch.arange(int(new_lengths.max()))                     # (B, T')
    windows = motion.gather(1, frames.clamp(max=T - 1)[..., None].expand(-1, -1, D))     # (B, T', D)
    return windows * vae.lengths_to_mask(new_lengths, windows.shape[1])[..., None], new_lengths


def velocity_loss(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """SmoothL1(x_hat[t+1] - x_hat[t], x[t+1] - x[t]) over pairs of valid frames (the velocity
    term of lamp.py's Eq. (7), after MoMask's and LaMP's VQ-VAEs), pred, target (B, T, D)."""
    valid = vae.lengths_to_mask(lengths, pred.shape[1])                                  # (B, T)
    pairs = valid[:, 1:] & valid[:, :-1]                                                 # (B, T-1)
    return F.smooth_l1_loss((pred[:, 1:] - pred[:, :-1])[pairs], (target[:, 1:] - target[:, :-1])[pairs])


def learning_rate(step: int, horizon: int, variant: Variant) -> float:
    """Linear warm-up over variant.warmup steps, then a half-cosine decay to 0 at `horizon`."""
    if step < variant.warmup:
        return variant.lr * (step + 1) / variant.warmup
    done = min(step - variant.warmup, horizon - variant.warmup) / max(1, horizon - variant.warmup)
    return variant.lr * 0.5 * (1.0 + math.cos(math.pi * done))


def train_for(seconds: float, variant: Variant, train_set, val_set, steps: int = 0) -> dict:
    """Train one variant for `seconds` of wall time, or for exactly `steps` steps when steps > 0
    (the same updates whatever else the machine runs); -> its figures on the val split."""
    torch.manual_seed(0)
    cfg = vae.VAEConfig(**{**SIZES, **variant.fields})
    model = vae.MotionVAE(cfg, train_set.mean.shape[0])
    with torch.no_grad():
        model.encoder.norm.weight.fill_(variant.latent_gain)
        model.encoder.norm.bias.fill_(variant.latent_bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=variant.lr)

    def loss_fn(batch, noise: float):
        x, lengths = batch["motion"], batch["lengths"]
        if variant.crop:
            x, lengths = random_windows(x, lengths, variant.crop)
        _, mu, logvar = model.encode(x, lengths, sample=False)
        z = mu + noise * torch.exp(0.5 * logvar) * torch.randn_like(mu)         # noise 1: MLD's z
        x_hat = model.decode(z, lengths)
        loss, parts = vae.vae_loss(x_hat, x, lengths, mu, logvar, train_set.mean, train_set.std,
                                   lambda_kl=cfg.lambda_kl, joint_loss=cfg.joint_loss)
        if variant.lambda_vel:
            parts["vel"] = velocity_loss(x_hat, x, lengths)
            loss = loss + variant.lambda_vel * parts["vel"]
        return loss, parts

    stream = loop.batches(train_set, variant.batch_size, 0)
    running, step, start, horizon = {}, 0, time.time(), steps or 10 ** 9
    model.train()
    while step < steps if steps else time.time() - start < seconds:
        if step == 20 and not steps:  # the cosine horizon: the steps the budget allows at the rate so far
            horizon = int(seconds / ((time.time() - start) / 20))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, horizon, variant) if step >= 20 or steps or variant.warmup else variant.lr
        ramp = min(1.0, (step + 1) / (variant.noise_ramp * horizon)) if variant.noise_ramp else 1.0
        noise = ramp if variant.sample else 0.0
        loss, parts = loss_fn(next(stream), noise)
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
        swing = evaluation.reconstruction_swing(model.reconstruct, val_set, torch.device("cpu"))
        batch = data.collate([val_set[i] for i in range(min(64, len(val_set)))])
        _, _, logvar = model.encode(batch["motion"], batch["lengths"], sample=False)
    return {"steps": step, "seconds": round(time.time() - start), **{k: round(v, 4) for k, v in running.items()},
            "sigma": round(float(torch.exp(0.5 * logvar).mean()), 3), **val, "swing": round(swing, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--steps", type=int, default=0, help="train each variant for exactly this many steps instead")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--only", help="comma-separated variant names to run (default: all)")
    parser.add_argument("--no-references", action="store_true", help="skip the mean / clip mean / linear lines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (args.data / "Mean.npy").exists():
        sys.exit(f"{args.data}: no dataset there; run `python train.py --stage data` first")
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"--only: no variant named {unknown}; choose from {list(VARIANTS)}")
    train_set = data.MotionTextDataset(args.data, "train", seed=0)
    val_set = data.MotionTextDataset(args.data, "val", seed=0)
    zero = lambda x, lengths: torch.zeros_like(x)  # noqa: E731  (normalised 0 = the dataset mean)

    def clip_mean(x, lengths):
        valid = vae.lengths_to_mask(lengths, x.shape[1])[..., None]
        return ((x * valid).sum(1, keepdim=True) / lengths[:, None, None]).expand_as(x) * valid

    def scored(reconstruct):
        swing = evaluation.reconstruction_swing(reconstruct, val_set, torch.device("cpu"))
        return {**errors(reconstruct, val_set), "swing": round(swing, 3)}

    if not args.no_references:
        with torch.no_grad():
            print(f"mean motion: {scored(zero)}")
            print(f"clip mean (oracle): {scored(clip_mean)}")
            print(f"linear DCT-8 + PCA-512 autoencoder (closed form): "
                  f"{scored(linear_dct_autoencoder(train_set))}", flush=True)
    for name in names:
        print(f"{name}: {train_for(args.seconds, VARIANTS[name], train_set, val_set, args.steps)}", flush=True)

if __name__ == "__main__":
    main()
