"""Time one ATM training step against one plain latent-diffusion step, same models, same batch.

    nice -n 19 python bench/bench_atm.py [--preset tiny] [--batch-size 16] [--set section.field=value ...]

The plain step is LEAD's Eq. (2) (GaussianDiffusion.loss); the ATM step adds ATM's Eq. (8)
term on the one-step estimate of Eq. (10), decoded by the frozen VAE and embedded, with its
clips, by the frozen alignment embedder (atm_losses.diffusion_atm_loss). Both include the
backward pass and the AdamW update. Models are built at the sizes of config.py's preset
(with --set overrides, as on train.py's command line); lengths are drawn like HumanML3D's
(40..196 frames, multiples of 4). Prints the seconds per step of each, their ratio, and how
many ATM steps fit in a time budget. Figures are medians over --steps timed steps.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atm_losses  # noqa: E402
import diffusion  # noqa: E402
import vae  # noqa: E402
from config import build_config  # noqa: E402
from t2m_evaluator import T2MEvaluator  # noqa: E402

FEAT_DIM = 263  # HumanML3D features


def median_step_time(step, steps: int) -> float:
    step()  # warm-up: allocator, thread pools
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16, help="the tiny preset's atm_train batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stage budget to convert into steps")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    cfg = build_config(args.preset, args.sets)
    torch.manual_seed(0)
    B, text_dim = args.batch_size, cfg.text.projection_dim
    motion_vae = vae.MotionVAE(cfg.vae, FEAT_DIM).eval().requires_grad_(False)
    embedder = T2MEvaluator.trained(cfg.evaluator, FEAT_DIM, {"a man walks": "a/DET man/NOUN walk/VERB"})
    embedder.eval().requires_grad_(False)
    denoiser = diffusion.Denoiser(cfg.diffusion, motion_vae.latent_shape, text_dim).train()
    schedule = diffusion.GaussianDiffusion(cfg.diffusion)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    atm_cfg = atm_losses.ATMConfig()
    clip_len, min_clip = atm_losses.clip_frames(atm_cfg, 20.0)

    lengths = 4 * torch.randint(10, 50, (B,))                                        # (B,) 40..196
    real = torch.randn(B, int(lengths.max()), FEAT_DIM)                              # (B, T, D)
    with torch.no_grad():  # the cached part of ATM: computed once, outside the timed steps
        real_emb, real_clips, clip_mask = atm_losses.embed_motions(embedder, real, lengths, clip_len, min_clip)
    batch = {"z": torch.randn(B, *motion_vae.latent_shape), "c": torch.randn(B, text_dim),
             "lengths": lengths, "text_emb": torch.randn(B, real_emb.shape[1]),
             "motion_emb": real_emb, "clip_emb": real_clips, "clip_mask": clip_mask}
    c_uncond = torch.zeros(text_dim)

    def update(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def plain_step():
        update(schedule.loss(denoiser, batch["z"], batch["c"], c_uncond)[0])

    def atm_step():
        update(atm_losses.diffusion_atm_loss(schedule, denoiser, motion_vae, embedder, batch, c_uncond,
                                             atm_cfg, fps=20.0)[0])

    print(f"preset {args.preset!r}: VAE latent {motion_vae.latent_shape}, {cfg.vae.n_layers} layers; "
          f"denoiser {cfg.diffusion.n_layers} layers; embedder GRU {cfg.evaluator.dim_motion_hidden}; "
          f"batch {B}, frames {int(lengths.min())}..{int(lengths.max())}, "
          f"{int(clip_mask.sum())} clips; {torch.get_num_threads()} threads")
    plain = median_step_time(plain_step, args.steps)
    atm = median_step_time(atm_step, args.steps)
    print(f"  plain diffusion step  {plain * 1000:9.1f} ms")
    print(f"  ATM step              {atm * 1000:9.1f} ms")
    print(f"  ratio ATM / plain     {atm / plain:9.1f} x")
    print(f"  ATM steps in {args.budget_s:.0f} s  {int(args.budget_s / atm):9d}")


if __name__ == "__main__":
    main()
