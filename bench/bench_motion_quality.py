"""Benchmark: foot skating, foot lift and root speed per action, for the real test clips, the VAE's
reconstructions and the MLD and LEAD samples of a finished run.

    python bench/bench_motion_quality.py [--out runs/default] [--data data/synthetic] [--seed 0]
                                         [--batch-size 64] [--clip NAME_OR_DIR] [--device auto]

For every test clip of the run's dataset (one crop and one caption each, drawn with --seed): the
clip itself ("real"), its reconstruction by the run's VAE (vae.pt, the posterior mean decoded),
and a motion generated for its caption and length by MLD and by LEAD (diffusion.pt, projector.pt:
projector.generate through runfolder.pipeline; both rows decode the same diffused latents,
evaluation.shared_latents, the noise drawn after torch.manual_seed(--seed)), and by the masked
generators of `--stage lamp_t2m` where the run has them (MoMask-style, LaMP-T2M). On the joints of each
(data.features_to_joints, evaluation.clip_quality) it measures GMD's foot skating ratio (with
metrics.SKATING_HEIGHT, SKATING_SPEED, SKATING_WINDOW), the foot lift (each foot's height range over
the clip, cm) and the mean horizontal root speed (m/s), and prints three tables, one per figure,
with a row per action: the clips of one action alone (the synthetic dataset's segments.json names
it: walk, run, jump, ...), then those of 2-3 actions, then all clips; each cell the mean over the
row's clips. Without segments.json (a real dataset) only the "all" row is printed.
What the table shows: whether a generated jump leaves the floor, a generated walk travels as fast
as the real walks, and whether its feet slide where the real ones stand; the evaluator's FID and
R-precision hardly see any of these. The run's dataset must be the one it was trained on (--data).
`--strip FILE.png` also draws the first test walk and jump beside MLD's and LEAD's motions for their
captions (render.render_strip).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import evaluation  # noqa: E402
import runfolder  # noqa: E402
import synthetic  # noqa: E402

SOURCES = ("real", "VAE", "MLD", "LEAD")
T2M = {"lamp_t2m_clip": "MoMask", "lamp_t2m": "LaMP-T2M"}  # the masked generators, where the run has them
FIGURES = {"Foot skating": ("foot skating ratio (GMD)", 1.0, "{:.3f}"),   # column -> (title, scale, format)
           "Foot lift": ("foot lift, cm", 100.0, "{:.1f}"),
           "Root speed": ("root speed, m/s", 1.0, "{:.2f}")}


@torch.no_grad()
def measure(run, pipe, realigner, test, batch_size: int,
            seed: int) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """Names of the test clips and {source: {column: (N,)}} of evaluation.clip_quality, for the
    pipeline `pipe` (MLD) and LEAD's `realigner` and the run's masked generators."""
    generate = evaluation.shared_latents(pipe, {"MLD": None, "LEAD": realigner})
    masked = {row: runfolder.t2m_generate(run, name, row) for name, row in T2M.items()
              if (run.out / f"{name}.pt").exists()}
    mean, std = (torch.as_tensor(a, dtype=torch.float32) for a in (test.mean, test.std))
    test.reseed(seed)
    torch.manual_seed(seed)
    names, parts = [], {s: [] for s in (*SOURCES, *masked)}  # [{column: (B,)}] per batch
    for start in range(0, len(test), batch_size):
        batch = data.collate([test[i] for i in range(start, min(start + batch_size, len(test)))])
        x, lengths = batch["motion"].to(pipe.device), batch["lengths"]
        motions = {"real": x, "VAE": pipe.vae.reconstruct(x, lengths.to(pipe.device)),
                   **generate(batch["caption"], lengths)}
        for fn in masked.values():
            motions.update(fn(batch["caption"], lengths))
        for source, motion in motions.items():  # normalised (B, T, 263) -> de-normalised, on the CPU
            parts[source].append(evaluation.clip_quality(motion.cpu().float() * std + mean, lengths))
        names += batch["name"]
        print(f"  {len(names)}/{len(test)} clips", flush=True)
    return names, {s: {k: np.concatenate([p[k] for p in batches]) for k in FIGURES} for s, batches in parts.items()}


def groups(names: list[str], segments: dict) -> dict[str, np.ndarray]:
    """Row -> indices of its clips: one row per action of the single-action clips (segments' label),
    then the clips of 2-3 actions, then all."""
    rows = {}
    for i, name in enumerate(names):
        segment = segments.get(name)
        if segment is not None:
            rows.setdefault(segment["label"] if len(segment["actions"]) == 1 else "2-3 actions", []).append(i)
    ordered = {k: rows[k] for k in sorted(rows, key=lambda k: (k == "2-3 actions", k))}
    return {**{k: np.array(v) for k, v in ordered.items()}, "all": np.arange(len(names))}


def table(title: str, scale: float, fmt: str, figures: dict, rows: dict) -> str:
    """One figure: a row per group, its clip count, then the mean of each source."""
    lines = [title, f"{'':14s}{'clips':>6s}" + "".join(f"{s:>9s}" for s in figures)]
    for row, idx in rows.items():
        lines.append(f"{row:14s}{len(idx):6d}" + "".join(f"{fmt.format(scale * f[idx].mean()):>9s}"
                                                         for f in figures.values()))
    return "\n".join(lines)


@torch.no_grad()
def strip(pipe, realigner, test, names: list[str], segments: dict, path: Path, seed: int) -> Path:
    """render.render_strip of the first test walk and jump (single-action clips): each real clip
    (its crop and caption as drawn last), then MLD's and LEAD's motion for that caption and length."""
    import render
    wanted = {label: names.index(n) for label in ("walk", "jump") for n in names
              if segments.get(n, {}).get("label") == label and len(segments[n]["actions"]) == 1}
    items = [test[i] for i in wanted.values()]
    batch = data.collate(items)
    torch.manual_seed(seed)
    motions = {"real": batch["motion"], **evaluation.shared_latents(pipe, {"MLD": None, "LEAD": realigner})(
        batch["caption"], batch["lengths"])}
    rows = {}
    for b, (caption, n) in enumerate(zip(batch["caption"], batch["lengths"].tolist())):
        for source, motion in motions.items():
            features = test.denormalize(motion[b, :n].cpu().float())
            rows[f"{source}: {caption}"] = data.features_to_joints(features).numpy()
    return render.render_strip(rows, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="a finished run folder")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the dataset it was trained on")
    p.add_argument("--clip", default=None, help="the --clip the run was trained with (default: its offline encoder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="the test crops, captions and sampling noise")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--strip", type=Path, default=None, help="also draw a test walk and jump, real, MLD and LEAD, "
                                                            "as a PNG (needs matplotlib)")
    args = p.parse_args(argv)
    run = runfolder.open_run(args.out, data_root=args.data, clip=args.clip, device=args.device)
    test = runfolder.open_split(run, "test")
    if test.mean.shape[0] != data.T2M.feat_dim:
        raise ValueError(f"--data {args.data}: {test.mean.shape[0]}-d features; the feet and thresholds are "
                         f"HumanML3D's 22 joints (263-d)")
    segments = synthetic.load_segments(args.data) if (args.data / "segments.json").exists() else {}
    print(f"[bench] {len(test)} test clips of {args.data}, run {args.out}, on {run.device}")
    pipe, realigner = runfolder.pipeline(run), runfolder.load_projector(run)
    names, figures = measure(run, pipe, realigner, test, args.batch_size, args.seed)
    rows = groups(names, segments)
    for column, (title, scale, fmt) in FIGURES.items():
        print()
        print(table(title, scale, fmt, {s: f[column] for s, f in figures.items()}, rows))
    if args.strip:
        print(f"\n[bench] {strip(pipe, realigner, test, names, segments, args.strip, args.seed)}")


if __name__ == "__main__":
    main()
