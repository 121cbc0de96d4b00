"""Benchmark: training step time, peak memory and sampling speed of the paper-sized models.

    python bench/bench_gpu.py [--device auto] [--steps N] [--sample-repeats N]
                              [--precisions fp32,bf16] [--batch-div N] [--sample-batch 32]
                              [--set section.field=value ...]

Issue "Past one GPU". The paper preset's models (config.build_config("paper", [])) with random
weights, text width 768 (CLIP ViT-L/14, the paper's; the offline encoder's projection_dim is
not used here): MLD's VAE (9 layers, 1 x 256 latent), the denoiser and the LEAD projector.
Printed, on one device (cuda if available, else cpu):

- training: ms per step after warm-up (AdamW, forward + loss + backward + step) and peak memory
  (torch.cuda.max_memory_allocated after the warm-up, so with the optimizer state; on a CPU the
  process's max RSS, once, at the end) for each model at the paper's batch sizes (VAE 128,
  denoiser 128, projector 1024: config.RunConfig's schedules) on random inputs of the right
  shapes: motions (B, 196, 263) normalised with lengths 40..196, latents (B, 1, 256), text
  c (B, 768). Precisions: fp32; bf16, one torch.autocast context around forward and loss (the
  STYLE.md rule); fp16, the same plus a GradScaler (CUDA only).
- sampling: seconds per prompt at batch 1 and prompts per second at batch 32 (`--sample-batch`),
  50 DDIM steps with classifier-free guidance (schedule.ddim_sample) and the VAE decode of 196
  frames (projector.generate with that z_0), for MLD (realigner=None) and LEAD (the projector),
  the ratio LEAD / MLD; and MotionLCM one-step sampling (lcm.lcm_sample, then the same decode;
  the student is a copy of the denoiser, which is all the speed depends on). The text embeddings
  c are random: no text encoder runs. Beside them the papers' figures: LEAD 0.245 s and MLD
  0.236 s per prompt (LEAD Sec. 5.3 "Inference Time"; the GPU is not named there, Sec. 5.2 trains
  on a GeForce 3090), MotionLCM about 0.03 s at one step.

On a CPU the same runs with few steps and repeats and training batches divided by 16
(`--batch-div`; one CPU thread takes about a second per VAE step at batch 1), and the figures
are labelled CPU figures: they are not comparable with the papers' GPU numbers. `--set` overrides
the paper preset as train.py's does (tests/test_bench_gpu.py shrinks the models with it).
"""
import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diffusion  # noqa: E402
import lcm  # noqa: E402
import projector  # noqa: E402
import vae  # noqa: E402
from config import build_config  # noqa: E402
from runfolder import pick_device  # noqa: E402

FEAT_DIM = 263   # HumanML3D features: 12 J - 1 with J = 22 joints
FRAMES = 196     # HumanML3D's longest clip (vae.max_len)
MIN_FRAMES = 40  # HumanML3D's shortest clip
TEXT_DIM = 768   # CLIP ViT-L/14 text embedding, the paper's text encoder (Sec. 5.2)
BATCH = {"vae": 128, "denoiser": 128, "projector": 1024}   # the paper preset's schedules
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAPER = ("paper (per prompt, GPU not named; LEAD trains on a 3090): LEAD 0.245 s, MLD 0.236 s (LEAD / MLD 1.04); "
         "MotionLCM ~0.03 s at one step")


# ----------------------------------------------------------------------------
# Timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """fp32: no context; bf16 / fp16: the one autocast context around forward and loss."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    """fn() once to warm up, then the median wall time of `repeats` calls."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------
# Training: one model, its random batch and its loss


def training_case(name: str, cfg, batch: int, device: torch.device):
    """-> (model in train mode on device, loss() -> (loss, parts)) for `name` at batch `batch`."""
    latent_shape = (cfg.vae.n_tokens, cfg.vae.latent_dim)                         # (1, 256)
    if name == "vae":
        model = vae.MotionVAE(cfg.vae, FEAT_DIM).to(device)
        lengths = torch.randint(MIN_FRAMES, FRAMES + 1, (batch,), device=device)  # (B,)
        lengths[0] = FRAMES                                                        # pad to 196 frames
        motion = torch.randn(batch, FRAMES, FEAT_DIM, device=device)              # (B, T, D)
        motion = motion * vae.lengths_to_mask(lengths, FRAMES)[..., None]        # zero padding
        # normalised features: the dataset mean is 0 and its std 1
        loss_fn = vae.vae_loss_fn(model, torch.zeros(FEAT_DIM), torch.ones(FEAT_DIM), device)
        return model, lambda: loss_fn({"motion": motion, "lengths": lengths})
    z = torch.randn(batch, *latent_shape, device=device)                          # (B, 1, 256)
    c = torch.randn(batch, TEXT_DIM, device=device)                               # (B, 768)
    if name == "denoiser":
        model = diffusion.Denoiser(cfg.diffusion, latent_shape, TEXT_DIM).to(device)
        schedule = diffusion.GaussianDiffusion(cfg.diffusion).to(device)
        c_uncond = torch.randn(TEXT_DIM, device=device)                           # tau("")
        return model, lambda: schedule.loss(model, z, c, c_uncond)
    if name == "projector":
        model = projector.Projector(cfg.projector, latent_shape, TEXT_DIM).to(device)
        return model, lambda: projector.projector_loss(z, *model(z), c, cfg.projector)
    raise ValueError(f"unknown model {name!r}")


def time_training(model, loss_fn, precision: str, steps: int, warmup: int, device: torch.device):
    """-> (ms per step over `steps` steps after `warmup`, peak bytes on CUDA or None, last loss)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def step():
        with autocast(device, precision):
            loss, _ = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    ms = 1000 * (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return ms, peak, float(loss.detach())


def report_training(cfg, precisions, steps, warmup, batch_div, device) -> None:
    print(f"\n== training: ms/step over {steps} steps after {warmup} warm-up, AdamW ==")
    for name, full in BATCH.items():
        batch = max(2, full // batch_div)  # L_var fits a Gaussian over the batch: 2 at least
        for precision in precisions:
            torch.manual_seed(0)
            model, loss_fn = training_case(name, cfg, batch, device)
            ms, peak, loss = time_training(model, loss_fn, precision, steps, warmup, device)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            memory = f"peak {peak / 2 ** 20:8.0f} MiB" if peak is not None else "peak n/a (CPU)"
            print(f"  {name:9s} batch {batch:4d} {precision}: {ms:9.1f} ms/step  {memory}  "
                  f"({params:.1f} M params, last loss {loss:.3f})", flush=True)
            del model, loss_fn
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("  paper: the projector's 200 epochs (~4,600 steps of 1024) took ~2 h on a 3090 "
          "(Sec. 5.2): ~1.6 s/step, everything included")


# ----------------------------------------------------------------------------
# Sampling: MLD, LEAD and MotionLCM


def report_sampling(cfg, precisions, repeats, sample_batch, device) -> None:
    torch.manual_seed(0)
    latent_shape = (cfg.vae.n_tokens, cfg.vae.latent_dim)
    motion_vae = vae.MotionVAE(cfg.vae, FEAT_DIM).to(device).eval().requires_grad_(False)
    denoiser = diffusion.Denoiser(cfg.diffusion, latent_shape, TEXT_DIM).to(device).eval().requires_grad_(False)
    realigner = projector.Projector(cfg.projector, latent_shape, TEXT_DIM).to(device).eval().requires_grad_(False)
    student = lcm.ConsistencyDenoiser.from_teacher(denoiser, lcm.LCMConfig()).to(device).eval().requires_grad_(False)
    # no text encoder: c is random, so each sampler is handed z_0 and the captions are never read
    pipe = projector.Pipeline(None, motion_vae, denoiser)
    schedule = pipe.schedule                                                      # GaussianDiffusion(cfg.diffusion)
    c_uncond = torch.randn(TEXT_DIM, device=device)                               # tau("")

    def ddim(c):
        return schedule.ddim_sample(denoiser, c, c_uncond, (c.shape[0], *latent_shape))  # (B, 1, 256)

    def decoded(z, lengths, r=None):
        return projector.generate(pipe, [""] * z.shape[0], lengths, r, z=z)

    samplers = {
        "MLD": lambda c, lengths: decoded(ddim(c), lengths, None),
        "LEAD": lambda c, lengths: decoded(ddim(c), lengths, realigner),
        "MotionLCM 1 step": lambda c, lengths: decoded(lcm.lcm_sample(student, schedule, c, steps=1), lengths),
    }
    print(f"\n== sampling: {cfg.diffusion.sample_steps} DDIM steps, guidance {cfg.diffusion.guidance_scale} "
          f"(MotionLCM: 1 step, w {lcm.LCMConfig().sample_w}), VAE decode of {FRAMES} frames, "
          f"median of {repeats} ==")
    for precision in precisions:
        seconds = {}
        for name, sample in samplers.items():
            for batch in (1, sample_batch):
                c = torch.randn(batch, TEXT_DIM, device=device)                   # (B, 768)
                lengths = torch.full((batch,), FRAMES, device=device)
                with autocast(device, precision):
                    seconds[name, batch] = median_seconds(lambda: sample(c, lengths), repeats, device)
            print(f"  {precision} {name:17s} batch 1: {seconds[name, 1]:.4f} s/prompt   batch {sample_batch}: "
                  f"{sample_batch / seconds[name, sample_batch]:8.1f} prompts/s "
                  f"({seconds[name, sample_batch]:.3f} s)", flush=True)
        print(f"  {precision} LEAD / MLD: {seconds['LEAD', 1] / seconds['MLD', 1]:.3f} at batch 1, "
              f"{seconds['LEAD', sample_batch] / seconds['MLD', sample_batch]:.3f} at batch {sample_batch}")
    print(f"  {PAPER}")


# ----------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cpu")
    p.add_argument("--steps", type=int, help="timed training steps (default 200 on GPU, 2 on CPU)")
    p.add_argument("--sample-repeats", type=int, help="timed sampling calls (default 10 on GPU, 2 on CPU)")
    p.add_argument("--precisions", help="comma-separated fp32, bf16, fp16 (default fp32,bf16, "
                                        "and fp16 on CUDA)")
    p.add_argument("--batch-div", type=int, help="divide the training batch sizes by this "
                                                 "(default 1 on GPU, 16 on CPU)")
    p.add_argument("--sample-batch", type=int, default=32, help="the batch of the throughput figure")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override the paper preset (repeatable), as train.py --set")
    args = p.parse_args(argv)
    # note: one CPU thread, as the other benches; on a GPU the host only launches kernels
    torch.set_num_threads(1)
    device = pick_device(args.device)
    gpu = device.type != "cpu"
    steps = args.steps or (200 if gpu else 2)
    repeats = args.sample_repeats or (10 if gpu else 2)
    batch_div = args.batch_div or (1 if gpu else 16)
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    for precision in precisions:
        if precision not in DTYPES:
            raise ValueError(f"--precisions: {precision!r} is not one of {', '.join(DTYPES)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("--precisions fp16 needs CUDA (its GradScaler is CUDA's)")
    if batch_div < 1 or args.sample_batch < 1:
        raise ValueError("--batch-div and --sample-batch must be at least 1")
    cfg = build_config("paper", args.set)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    if device.type == "cuda":
        print(f"TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32: {torch.backends.cudnn.allow_tf32}")
    if not gpu:
        print("note: these are CPU figures (few steps, one thread): not comparable with the "
              "papers' GPU numbers")
    if batch_div > 1:
        print(f"note: training batches are the paper's divided by {batch_div} (--batch-div)")
    if args.set:
        print(f"note: the paper preset with --set {' '.join(args.set)}")
    report_training(cfg, precisions, steps, max(1, steps // 20) if gpu else 1, batch_div, device)
    report_sampling(cfg, precisions, repeats, args.sample_batch, device)
    if device.type == "cpu":  # ru_maxrss is in KiB on Linux; the whole process, all rows above
        print(f"\nprocess max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10:.0f} MiB "
              f"(getrusage: the peak over every row above, not per model)")


if __name__ == "__main__":
    main()
