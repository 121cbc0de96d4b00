"""Benchmark: every training stage's step time, peak memory and FLOPs at the paper preset's
batches, the hours its schedules imply, and the sampling speed of MLD, LEAD and MotionLCM.

    python bench/bench_gpu.py [--device auto] [--parts stages,sampling] [--stages vae,diffusion,...]
                              [--steps N] [--precisions fp32,bf16] [--micro-div 1,4] [--budget 22]
                              [--data DIR] [--clip NAME] [--llm DIR] [--out DIR] [--motions 1500]
                              [--mem-limit GiB] [--sample-repeats N] [--sample-batch 32] [--set ...]

Issue 32. Training (`--parts stages`): each training stage runs as train.py runs it (the preset's
models, its batch sizes, its loss terms, data loading included), in a child process per stage,
precision and micro-batch divisor (`--micro-div 4`: `*_train.micro_batch` = batch / 4), every
schedule cut to `--steps` steps. Each training ends with loop.fit's summary line: seconds per step
after the first, peak memory (CUDA: torch's reserved bytes; CPU: the process's peak resident set)
and the first step's FLOPs (torch's FlopCounterMode, `run.flops`). Printed per checkpoint, then
per stage: the hours the preset's schedules take at the measured s/step (GPU-hours on a GPU); an
estimate for an RTX 3090 (LEAD Sec. 5.2's card) from the FLOPs at an assumed 30% of its peak
(35.6 TFLOPS fp32, 71 bf16 with fp32 accumulation); and the largest micro-batch whose peak fits
`--budget` GiB, the peak taken as linear in the rows per forward pass through the measured points.
The data are the embedded dataset (`--motions`, enough for the projector's batch of 1024), or
`--data DIR`, each clip padded to 196 frames (`--no-longest` keeps their lengths): every batch is
the worst case for memory, and its time an upper bound. Without `--llm` the captioner's LM is the
small stand-in tests/test_paper_preset.py uses (at OPT-2.7B's sizes pretraining it from scratch
needs ~42 GB: captioner.check_offline_lm_fits).

Sampling (`--parts sampling`): seconds per prompt at batch 1 and prompts per second at batch 32,
50 DDIM steps with classifier-free guidance and the VAE decode of 196 frames, for MLD (no
projector) and LEAD (the projector), and MotionLCM at one step; random weights and random text
embeddings (no text encoder runs). Beside them the papers' figures: LEAD 0.245 s and MLD 0.236 s
per prompt (LEAD Sec. 5.3; the GPU is not named there), MotionLCM about 0.03 s at one step.

On a CPU: 3 steps, fp32 only, each child's address space capped (`--mem-limit`, 90% of RAM) so
a stage that does not fit fails cleanly; the figures are labelled CPU figures. CPU resident memory
stands in for GPU memory (the same fp32 tensors; the CPU figure also holds Python, torch and the
data, about 1 GiB; a GPU adds its CUDA context outside torch's count). `--set` overrides the
preset as train.py's does (tests/test_bench_gpu.py shrinks it with the smoke preset).
"""
import argparse
import contextlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import diffusion  # noqa: E402
import lcm  # noqa: E402
import projector  # noqa: E402
import vae  # noqa: E402
from captioner import device_memory  # noqa: E402
from config import RunConfig, build_config  # noqa: E402
from runfolder import pick_device  # noqa: E402

FEAT_DIM = 263   # HumanML3D features: 12 J - 1 with J = 22 joints
FRAMES = 196     # HumanML3D's longest clip (vae.max_len)
TEXT_DIM = 768   # CLIP ViT-L/14 text embedding, the paper's text encoder (Sec. 5.2)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAPER = ("paper (per prompt, GPU not named; LEAD trains on a 3090): LEAD 0.245 s, MLD 0.236 s (LEAD / MLD 1.04); "
         "MotionLCM ~0.03 s at one step")
TRAINING = ("evaluator", "lamp", "lamp_t2m", "lamp_m2t", "vae", "diffusion", "projector", "atm", "mate", "lcm")
SCHEDULES = [name for name in RunConfig.__dataclass_fields__ if name.endswith("_train")]
# RTX 3090 peak TFLOPS (NVIDIA's GA102 whitepaper): fp32 on CUDA cores (torch's default: no TF32 for
# matmuls), bf16 / fp16 tensor cores with fp32 accumulation; the sustained share is our assumption
TFLOPS = {"fp32": 35.6, "bf16": 71.0, "fp16": 71.0}
UTILISATION = 0.3
# the stages' own evaluations, small (as tests/test_paper_preset.py), and the offline text encoder
QUICK = ["text.pretrain_steps=2", "text.pretrain_batch=8", "diffusion.sample_steps=2", "eval.replications=1",
         "eval.diversity_times=10", "mate.probe_captions=2", "lamp_t2m.iterations=2", "lamp_m2t.beams=2"]
STAND_IN_LM = ["lamp_m2t.lm_width=256", "lamp_m2t.lm_layers=2", "lamp_m2t.lm_heads=4", "lamp_m2t.lm_ff=1024"]
SUMMARY = re.compile(  # loop.fit's last line
    r"^\[(?P<ckpt>[^\]]+)\] (?P<sched>\w+): \d+ steps of batch (?P<batch>\d+) \(micro-batch (?P<micro>\d+), "
    r"(?P<prec>\w+)\), (?:(?P<sps>[\d.]+) s/step after the first, )?peak (?P<peak>[\d.]+) GiB "
    r"(?:allocated, (?P<reserved>[\d.]+) GiB reserved \(CUDA\)|resident \(process\))"
    r"(?:, (?P<gflop>[\d.e+-]+) GFLOP in the first step)?$", re.M)


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
# Training: every stage of the recipe, as train.py runs it


def stage_command(args, out: Path, steps: int, extra: list[str]) -> list[str]:
    """train.py's command line for a short run of the preset in `out`: every schedule cut to `steps`
    steps (at its own batch), FLOPs counted, the stages' own evaluations made small."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset", args.preset, "--device", args.device, "--out", str(out)]
    cmd += ["--data", str(args.data)] if args.data else ["--synthetic-dir", str(out / "data")]
    cmd += ["--clip", args.clip] if args.clip else []
    cmd += ["--llm", str(args.llm)] if args.llm else []
    sets = [*QUICK, "run.flops=true", f"data.synthetic_motions={args.motions}"]
    sets += [] if args.llm else STAND_IN_LM
    sets += [f"{name}.{key}={steps}" for name in SCHEDULES for key in ("steps", "log_every")]
    for item in sets + args.set + extra:
        cmd += ["--set", item]
    return cmd


def memory_limit(gib: float):
    """preexec_fn for a CPU child: its address space capped at `gib` GiB, so a stage that does not
    fit fails with torch's allocation error instead of meeting the kernel's OOM killer."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2 ** 30), int(gib * 2 ** 30)))
    return cap if gib > 0 else None


def parse_summaries(text: str) -> list[dict]:
    """The lines loop.fit ends each training with -> one dict per line."""
    return [{**m.groupdict(), "peak": float(m["reserved"] or m["peak"])} for m in SUMMARY.finditer(text)]


def run_stage(args, out: Path, stage: str, steps: int, extra: list[str], device) -> tuple[list[dict], str]:
    """One stage in a child process -> (its summary lines, '' or why it failed)."""
    cmd = stage_command(args, out, steps, extra) + ["--stage", stage]
    limit = args.mem_limit if device.type == "cpu" else 0
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=memory_limit(limit))
    text = done.stdout + done.stderr
    return parse_summaries(text), failure(done.returncode, text, limit)


def failure(returncode: int, text: str, limit: float) -> str:
    """'' for a stage that ran, else why it did not, from its exit status and output."""
    if returncode == 0:
        return ""
    if "can't allocate memory" in text or "out of memory" in text.lower() or "MemoryError" in text:
        return f"out of memory{f' (address space capped at {limit:.1f} GiB)' if limit else ''}"
    if returncode < 0:
        return f"killed by signal {-returncode} (the kernel's OOM killer?)"
    return f"exit {returncode}: " + (text.strip().splitlines() or ["?"])[-1][:160]


def fitting_micro_batch(batch: int, rows: dict[int, float], budget: float) -> int | None:
    """The largest micro-batch (a divisor of `batch`) whose peak fits `budget` GiB, the peak taken
    as linear in the rows per forward pass through two measured points {rows: GiB} (an estimate);
    from one point, that point's rows if it fits (measured), else None."""
    if len(rows) < 2:
        return next((r for r, peak in rows.items() if peak <= budget), None)
    (r0, m0), (r1, m1) = sorted(rows.items())[:2]
    per_row = max((m1 - m0) / (r1 - r0), 1e-9)
    fits = [d for d in range(1, batch + 1) if batch % d == 0 and m0 + per_row * (d - r0) <= budget]
    return max(fits) if fits else None


def longest_copy(src: Path, dst: Path, frames: int) -> Path:
    """A copy of the HumanML3D-layout folder `src` whose clips all have `frames` frames, each clip's
    last frame repeated (a step's memory and time depend on shapes only): every batch is then a
    batch of the longest clips, the worst case for memory."""
    if not (dst / "train.txt").exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("new_joint_vecs", "new_joints"), dirs_exist_ok=True)
        for folder in ("new_joint_vecs", "new_joints"):
            (dst / folder).mkdir(exist_ok=True)
            for path in sorted((src / folder).glob("*.npy")):
                x = np.load(path)
                np.save(dst / folder / path.name, np.pad(x, [(0, max(0, frames - len(x)))] + [(0, 0)] * (x.ndim - 1),
                                                         mode="edge")[:frames])
    return dst


def report_stages(args, cfg, precisions, steps, device) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_gpu_"))
    gpu = device.type != "cpu"
    print(f"\n== training: every stage of the {args.preset} preset at its batch, {steps} steps each "
          f"(s/step after the first), in {out} ==")
    if not (out / "data.json").exists():
        rows, why = run_stage(args, out, "data", steps, [], device)
        if why:
            raise SystemExit(f"the data stage failed: {why}")
    if args.longest:
        args.data = longest_copy(args.data or out / "data", out / "data_longest", cfg.data.max_len)
        print(f"  every clip padded to {cfg.data.max_len} frames ({args.data}): each batch is the worst case for "
              f"memory, and its time an upper bound")
    results = []  # (stage, precision, div, summary or None, why)
    for stage in args.stages:
        for precision in precisions:
            for div in args.micro_div:
                extra = [f"run.precision={precision}"]
                extra += [f"{name}.micro_batch={getattr(cfg, name).batch_size // div}" for name in SCHEDULES
                          if div > 1 and getattr(cfg, name).batch_size % div == 0]
                summaries, why = run_stage(args, out, stage, steps, extra, device)
                results += [(stage, precision, div, row, "") for row in summaries]
                if why or not summaries:
                    results.append((stage, precision, div, None, why or "no training summary printed"))
                    print(f"  {stage:10s} {precision} micro 1/{div}: {why or 'no training summary printed'}",
                          flush=True)
                for row in summaries:
                    print_row(stage, cfg, row, gpu)
    print_hours(cfg, results, gpu, args.budget)


def print_row(stage: str, cfg, row: dict, gpu: bool) -> None:
    sched = getattr(cfg, row["sched"])
    sps = float(row["sps"]) if row["sps"] else None
    hours = f"{sched.steps * sps / 3600:9.2f} h" if sps else "        ? h"
    flop = f"{float(row['gflop']) / 1e3:8.3g}" if row["gflop"] else "       ?"
    print(f"  {stage:10s} {row['ckpt']:22s} batch {row['batch']:>4s} micro {row['micro']:>4s} {row['prec']}: "
          f"{row['sps'] or '?':>8s} s/step  peak {row['peak']:6.2f} GiB  {flop} TFLOP/step  "
          f"{sched.steps:>7d} steps -> {hours}{'' if gpu else ' (CPU)'}", flush=True)


def print_hours(cfg, results, gpu: bool, budget: float) -> None:
    """Per stage and precision: the hours its schedules take at the measured s/step (each checkpoint
    at its least-divided run), an RTX 3090 estimate from the FLOPs, the micro-batch that fits."""
    print(f"\n== per stage: the {'measured' if gpu else 'CPU'} hours of the preset's schedules; estimated "
          f"hours on an RTX 3090 (the counted FLOPs at {UTILISATION:.0%} of its {TFLOPS['fp32']} fp32 / "
          f"{TFLOPS['bf16']} bf16 TFLOPS); the micro-batch whose peak fits {budget:g} GiB (linear in rows, "
          f"estimated) ==")
    by_stage = {}
    for stage, precision, div, row, why in results:
        by_stage.setdefault((stage, precision), []).append((div, row, why))
    for (stage, precision), runs in by_stage.items():
        measured = estimated = 0.0
        fits = []
        for ckpt in dict.fromkeys(row["ckpt"] for _, row, _ in runs if row):
            rows = sorted((div, row) for div, row, _ in runs if row and row["ckpt"] == ckpt)
            first = rows[0][1]                                           # the least-divided run that ran
            steps = getattr(cfg, first["sched"]).steps
            measured += steps * float(first["sps"] or "nan") / 3600
            estimated += steps * float(first["gflop"] or "nan") * 1e9 / (UTILISATION * TFLOPS[precision] * 1e12) / 3600
            micro = fitting_micro_batch(int(first["batch"]), {int(r["micro"]): r["peak"] for _, r in rows}, budget)
            fits.append(f"{ckpt} {micro or '?'}/{first['batch']}")
        failed = "; ".join(f"micro 1/{div}: {why}" for div, _, why in runs if why)
        print(f"  {stage:10s} {precision}: {measured:8.2f} h {'measured' if gpu else 'CPU'}, {estimated:7.2f} h "
              f"estimated (3090); fits {budget:g} GiB: {', '.join(fits) or '?'}" + (f"  [{failed}]" if failed else ""),
              flush=True)


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
    p.add_argument("--parts", default="stages,sampling", help="comma-separated: stages, sampling")
    p.add_argument("--stages", default=",".join(TRAINING), help=f"training stages, in order (default all: "
                                                                  f"{','.join(TRAINING)})")
    p.add_argument("--preset", default="paper", help="train.py's preset (default paper)")
    p.add_argument("--steps", type=int, help="steps per schedule, the first untimed (default 20 on GPU, 3 on CPU)")
    p.add_argument("--precisions", help="comma-separated fp32, bf16, fp16 (default fp32,bf16 on GPU, fp32 on CPU)")
    p.add_argument("--micro-div", default="1,4", help="comma-separated divisors of each batch into micro-batches")
    p.add_argument("--budget", type=float, default=22.0, help="GiB a stage's peak must fit (a 24 GB card, less "
                                                              "its CUDA context and headroom)")
    p.add_argument("--motions", type=int, default=1500, help="embedded dataset size (its train split must hold "
                                                             "the largest batch: the projector's 1024)")
    p.add_argument("--data", type=Path, help="a HumanML3D-layout folder instead of the embedded dataset")
    p.add_argument("--no-longest", dest="longest", action="store_false", help="keep the clips' lengths (default: "
                   "every clip padded to the longest, so each batch is the worst case for memory)")
    p.add_argument("--clip", help="train.py --clip (a local CLIP folder or name)")
    p.add_argument("--llm", type=Path, help="train.py --llm (a local OPT folder): the paper's captioner LM")
    p.add_argument("--out", type=Path, help="run folder for the stages (default: a new temporary folder)")
    p.add_argument("--mem-limit", type=float, help="CPU: each stage's address space in GiB (default 90%% of RAM; "
                                                   "0: none)")
    p.add_argument("--sample-repeats", type=int, help="timed sampling calls (default 10 on GPU, 2 on CPU)")
    p.add_argument("--sample-batch", type=int, default=32, help="the batch of the throughput figure")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override the preset (repeatable), as train.py --set")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # sampling, as the other benches; the stages run with the preset's threads
    device = pick_device(args.device)
    args.device = device.type
    gpu = device.type != "cpu"
    parts = args.parts.split(",")
    args.stages = [s for s in args.stages.split(",") if s]
    args.micro_div = [int(d) for d in args.micro_div.split(",")]
    steps = args.steps or (20 if gpu else 3)
    repeats = args.sample_repeats or (10 if gpu else 2)
    precisions = (args.precisions or ("fp32,bf16" if gpu else "fp32")).split(",")
    if args.mem_limit is None:
        args.mem_limit = 0.9 * (device_memory(torch.device("cpu")) or 0) / 2 ** 30  # 0: unknown, no cap
    for part in parts:
        if part not in ("stages", "sampling"):
            raise ValueError(f"--parts: {part!r} is not stages or sampling")
    for stage in args.stages:
        if stage not in TRAINING:
            raise ValueError(f"--stages: {stage!r} is not a training stage ({', '.join(TRAINING)})")
    for precision in precisions:
        if precision not in DTYPES:
            raise ValueError(f"--precisions: {precision!r} is not one of {', '.join(DTYPES)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("--precisions fp16 needs CUDA (its GradScaler is CUDA's)")
    if steps < 2 or args.sample_batch < 1 or min(args.micro_div) < 1:
        raise ValueError("--steps must be at least 2 (the first is not timed); --sample-batch, --micro-div >= 1")
    cfg = build_config(args.preset, args.set)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device: {name}, torch {torch.__version__}")
    if device.type == "cuda":
        print(f"TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32: {torch.backends.cudnn.allow_tf32}")
    if not gpu:
        print(f"note: these are CPU figures: not comparable with the papers' GPU numbers; each stage's address "
              f"space is capped at {args.mem_limit:.1f} GiB")
    if args.set:
        print(f"note: the {args.preset} preset with --set {' '.join(args.set)}")
    if "stages" in parts:
        report_stages(args, cfg, precisions, steps, device)
    if "sampling" in parts:
        report_sampling(cfg, precisions, repeats, args.sample_batch, device)


if __name__ == "__main__":
    main()
