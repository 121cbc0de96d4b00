"""Benchmark: MotionLCM's 1-, 2- and 4-step sampling against 50-step guided DDIM, same denoiser.

    python bench/bench_lcm.py [--repeats 7] [--run runs/default]

MotionLCM's target: one-step sampling of 32 motions at least 20x faster than 50-step guided DDIM
on the same denoiser size (the README's figure for the latter: 0.82 s for 32 motions). With
the tiny preset's sizes (config.build_config("tiny", [])) and random weights (the speed does not
depend on them), one torch thread, this times generating 32 motions of 120 frames with the VAE
decode included: guided DDIM as projector.Pipeline samples it (MLD, no realigner: per step one
denoiser pass over the conditional and unconditional batch of 64) and MotionLCM's lcm.lcm_sample
at 1, 2 and 4 steps (per step one pass over 32, the guidance scale an input), the latents
decoded by projector.generate(..., z=z_0), each also without the decode (schedule.ddim_sample,
lcm.lcm_sample: the latents alone); the text embeddings c are random, so no text encoder runs.
Each figure is the median of `--repeats` calls after one warm-up. Also printed: the VAE decode
alone, which every sampler pays once, so that DDIM / decode bounds the speed-up with the decode
included.

--run DIR loads DIR's vae.pt and diffusion.pt (and lcm.pt if the `lcm` stage has run; else the
student is a copy of the denoiser, as lcm.ConsistencyDenoiser.from_teacher makes it).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diffusion  # noqa: E402
import lcm  # noqa: E402
import projector  # noqa: E402
import runfolder  # noqa: E402
import vae  # noqa: E402
from config import build_config  # noqa: E402

FEAT_DIM = 263      # HumanML3D features (the synthetic dataset's too)
N_MOTIONS = 32
FRAMES = 120
LCM_STEPS = (1, 2, 4)
TARGET = 20.0       # the speed-up target for one step


def median_seconds(fn, repeats: int) -> float:
    """fn() once to warm up, then the median wall time of `repeats` calls."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_models(cfg):
    """-> (VAE, denoiser, student) at the preset's sizes with random weights, in eval mode."""
    latent_shape = (cfg.vae.n_tokens, cfg.vae.latent_dim)
    motion_vae = vae.MotionVAE(cfg.vae, FEAT_DIM)
    denoiser = diffusion.Denoiser(cfg.diffusion, latent_shape, cfg.text.projection_dim)
    student = lcm.ConsistencyDenoiser.from_teacher(denoiser, cfg.lcm)
    return [m.eval().requires_grad_(False) for m in (motion_vae, denoiser, student)]


def trained_models(cfg, out: Path):
    """-> (VAE, denoiser, student) from a run folder's checkpoints, on the CPU."""
    run = runfolder.Run(cfg=cfg, out=out, data_root=Path("data/synthetic"), synthetic=True,
                        device=torch.device("cpu"), clip=None, resume=False,
                        args=argparse.Namespace(ablations=False, text_encoder="clip", evaluator="evaluator"))
    motion_vae, denoiser = runfolder.load_model(run, "vae"), runfolder.load_denoiser(run)
    if (out / "lcm.pt").exists():
        student = runfolder.load_lcm(run)
    else:
        print(f"note: {out / 'lcm.pt'} not found: the student is a copy of the denoiser")
        student = lcm.ConsistencyDenoiser.from_teacher(denoiser, cfg.lcm).eval().requires_grad_(False)
    return motion_vae, denoiser, student


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed calls per sampler (median)")
    p.add_argument("--run", type=Path, help="a run folder of the tiny preset (default: random weights)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = build_config("tiny", [])
    motion_vae, denoiser, student = trained_models(cfg, args.run) if args.run else random_models(cfg)
    # no text encoder: c is random and every sampler below is handed z_0 or c, never captions
    pipe = projector.Pipeline(None, motion_vae, denoiser)
    schedule = pipe.schedule                                                      # GaussianDiffusion(denoiser.cfg)
    captions = [""] * N_MOTIONS  # not read: projector.generate decodes the z_0 it is given
    c = torch.randn(N_MOTIONS, denoiser.text_dim)                                 # (B, W)
    c_uncond = torch.randn(denoiser.text_dim)                                     # tau("")
    lengths = torch.full((N_MOTIONS,), FRAMES)                                    # (B,)
    z = torch.randn(N_MOTIONS, *motion_vae.latent_shape)                          # (B, n, d)

    print(f"{'trained weights from ' + str(args.run) if args.run else 'random weights'}, tiny preset: "
          f"latent {tuple(motion_vae.latent_shape)}, denoiser {denoiser.cfg.n_layers} layers "
          f"(ff {denoiser.cfg.ff_dim}), text width {denoiser.text_dim}; {N_MOTIONS} motions of "
          f"{FRAMES} frames, 1 thread, median of {args.repeats}")
    shape = (N_MOTIONS, *motion_vae.latent_shape)
    decode = median_seconds(lambda: motion_vae.decode(z, lengths), args.repeats)
    # (latents alone, with the decode) per sampler
    rows = {f"guided DDIM, {schedule.cfg.sample_steps} steps": (
        median_seconds(lambda: schedule.ddim_sample(denoiser, c, c_uncond, shape), args.repeats),
        median_seconds(lambda: projector.generate(pipe, captions, lengths,
                                                  z=schedule.ddim_sample(denoiser, c, c_uncond, shape)),
                       args.repeats))}
    for n in LCM_STEPS:
        rows[f"MotionLCM, {n} step{'s' if n > 1 else ''}"] = (
            median_seconds(lambda: lcm.lcm_sample(student, schedule, c, steps=n), args.repeats),
            median_seconds(lambda: projector.generate(pipe, captions, lengths,
                                                      z=lcm.lcm_sample(student, schedule, c, steps=n)),
                           args.repeats))
    print(f"  {'VAE decode alone':22s}                      {decode:.3f} s")
    (ddim_z, ddim), *_ = rows.values()
    for name, (latents, full) in rows.items():
        print(f"  {name:22s} latents {latents:.3f} s, with decode {full:.3f} s   "
              f"DDIM / this: {ddim_z / latents:5.1f}x latents, {ddim / full:5.1f}x with decode")
    one = rows["MotionLCM, 1 step"][1]
    print("  README: 0.82 s for 32 motions with guided DDIM (decode included)")
    print(f"  target: one step >= {TARGET:.0f}x faster with the decode: {ddim / one:.1f}x, "
          f"{'met' if ddim / one >= TARGET else 'missed'}; the decode alone ({decode:.3f} s) caps "
          f"that ratio near DDIM / decode = {ddim / decode:.1f}x")


if __name__ == "__main__":
    main()
