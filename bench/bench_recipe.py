"""Benchmark: the LEAD recipe end to end with the tiny preset on this machine.

    python bench/bench_recipe.py [--out runs/bench] [--keep]

Runs `train.py --stage all` into a fresh run folder (the embedded dataset is reused if it
already exists in data/synthetic), then prints each stage's wall time (from STAGE.json), the
VAE's validation joint error and how the evaluator scores its test reconstructions, the time
to sample 32 motions with 50 DDIM steps and guidance, and the results table. Targets (issues
5 and 6): VAE <= 4 min reaching <= 5 cm, diffusion <= 3 min, sampling 32 motions <= 10 s, the
LEAD recipe <= 15 min.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import projector  # noqa: E402
import runfolder  # noqa: E402
import train  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--keep", action="store_true", help="reuse an existing run folder (--resume)")
    args = p.parse_args()
    if args.out.exists() and not args.keep:
        shutil.rmtree(args.out)
    start = time.time()
    code = train.main(["--stage", "all", "--out", str(args.out)] + (["--resume"] if args.keep else []))
    total = time.time() - start
    if code != 0:
        sys.exit(code)

    print("\n== stage wall times (tiny preset) ==")
    for stage in train.ALL_ORDER:
        figures = json.loads((args.out / f"{stage}.json").read_text())
        print(f"  {stage:10s} {figures['wall_time_s']:8.1f} s")
    print(f"  {'total':10s} {total:8.1f} s  (this process, including imports and loading)")
    lead = ["data", "evaluator", "vae", "diffusion", "projector", "eval", "sample"]
    lead_s = sum(json.loads((args.out / f"{stage}.json").read_text())["wall_time_s"] for stage in lead)
    print(f"  LEAD recipe ({', '.join(lead)}): {lead_s:.1f} s = {lead_s / 60:.1f} min "
          f"(eval here also scores the ATM and MATE rows)")
    vae_fig = json.loads((args.out / "vae.json").read_text())
    print(f"  VAE validation mean per-joint position error: {100 * vae_fig['val_joint_error_m']:.2f} cm "
          f"(root-aligned {100 * vae_fig['val_root_relative_error_m']:.2f} cm, body frame "
          f"{100 * vae_fig.get('val_body_frame_error_m', float('nan')):.2f} cm)")
    for name, row in vae_fig.get("test_reconstruction", {}).items():
        print(f"  evaluator on test {name}s: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))

    run = runfolder.open_run(args.out)  # tiny preset, data/synthetic, device auto
    pipe = runfolder.pipeline(run)
    realigner = runfolder.load_projector(run)
    test = runfolder.open_split(run, "test")
    items = [test[i] for i in range(32)]
    captions, lengths = [it["caption"] for it in items], torch.tensor([it["length"] for it in items])
    projector.generate(pipe, captions[:2], lengths[:2], realigner)  # warm-up
    for name, r in (("MLD", None), ("LEAD", realigner)):
        t0 = time.perf_counter()
        projector.generate(pipe, captions, lengths, r)
        print(f"  sampling 32 motions ({name}, {pipe.schedule.cfg.sample_steps} DDIM steps, guidance "
              f"{pipe.schedule.cfg.guidance_scale:g}): {time.perf_counter() - t0:.2f} s")
    print("\n" + (args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
