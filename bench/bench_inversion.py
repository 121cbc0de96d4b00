"""Time one motion textual inversion (LEAD Sec. 5.2: 20 Adam steps, batches of 4 segments) with
models of the `--preset` sizes (tiny by default), for each of the three objectives.

    python bench/bench_inversion.py [--preset tiny] [--steps 20] [--threads N]

Issue 7's target: one inversion with the tiny preset in at most 10 s on a CPU. The models are
freshly initialised (timing does not depend on trained weights), the text encoder is the offline
one built on a few captions, and the example is a synthetic walk (at most 120 frames). Figures are
the best of `--repeats` runs, to keep a busy shared machine from inflating them.

note: the tiny models make many small operations; on a CPU that other processes keep busy, two
or more torch threads wait on each other and can be ten times slower than `--threads 1`.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import synthetic  # noqa: E402
import inversion  # noqa: E402
from clip import TextEncoder  # noqa: E402
from config import PRESETS, RunConfig, build_config  # noqa: E402
from diffusion import Denoiser, GaussianDiffusion  # noqa: E402
from projector import Projector  # noqa: E402
from vae import MotionVAE  # noqa: E402

CAPTIONS = ["a person walks forward", "someone jumps then waves with the right hand",
            "the man runs in a circle clockwise", "a robot kicks with the left leg",
            "she squats down slowly", "he walks backward then turns around", "they walk slowly"]


def build(cfg: RunConfig, folder: Path) -> inversion.FrozenModels:
    text = TextEncoder.offline(CAPTIONS, folder, config=cfg.text, log=lambda *_: None)
    vae = MotionVAE(cfg.vae, data.T2M.feat_dim)
    denoiser = Denoiser(cfg.diffusion, vae.latent_shape, text.dim)
    proj = Projector(cfg.projector, vae.latent_shape, text.dim)
    for model in (vae, denoiser, proj):
        model.eval().requires_grad_(False)
    return inversion.FrozenModels(text, vae, denoiser, GaussianDiffusion(cfg.diffusion), proj)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=None, help="default: 20 (Sec. 5.2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args.preset, [])
    inv = inversion.InversionConfig()  # steps and batch are the paper's in every preset
    if args.steps:
        inv.steps = args.steps
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        models = build(cfg, Path(folder))
    joints, _, _, _ = synthetic.synthesize_motion(np.random.default_rng(0), actions=[("walk", {})])
    example = torch.from_numpy(data.joints_to_features(joints)[:120])        # (T, D); timing only
    print(f"one inversion, preset {args.preset}: {inv.steps} steps x batch {inv.batch_size}, "
          f"example {len(example)} frames, VAE {cfg.vae.n_layers}x{cfg.vae.latent_dim}, denoiser "
          f"{cfg.diffusion.n_layers} layers, text {cfg.text.num_layers}x{cfg.text.hidden_size}, "
          f"{torch.get_num_threads()} threads (best of {args.repeats}):")
    for objective in inversion.OBJECTIVES:
        best = float("inf")
        for r in range(args.repeats):
            start = time.perf_counter()
            inversion.invert(models, [example], f"<{objective}{r}>", "walk", inv, objective=objective, seed=r)
            best = min(best, time.perf_counter() - start)
        print(f"  MTI_{objective:<5s} {best:7.2f} s   (target: <= 10 s)")


if __name__ == "__main__":
    main()
