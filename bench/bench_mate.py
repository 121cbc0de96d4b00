"""Benchmark: MATE's text-motion joint segmentation (Eq. 1) on the embedded synthetic dataset,
whose motions carry their true action boundaries (segments.json).

    nice -n 19 python bench/bench_mate.py [--data data/synthetic] [--run RUN]

Prints the sub-text decomposition accuracy of the rule-based splitter (captions split into as
many sub-texts as their motion has actions; MATE Tab. 7 reports 97.0 % for ChatGPT on
HumanML3D), the speed of the exact search in motions per second for grids of 4 and 8 frames
(and of the naive search that embeds every candidate clip with `encode_motion`), and the mean
boundary error in frames against the true boundaries (MATE Tab. 7: 0.73 s = 15 frames on
HumanML3D), beside the error of cutting each motion into N equal parts.

The frozen E_t, E_m are an `alignment` embedder: the one of a finished run with --run, else one
trained here with the tiny preset's evaluator settings (train.py --stage evaluator does the
same). Figures are on the test split, which that embedder never saw.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import synthetic  # noqa: E402
import mate  # noqa: E402
import mate_segmentation  # noqa: E402
import evaluation  # noqa: E402
import loop  # noqa: E402
import metrics  # noqa: E402
import runfolder  # noqa: E402
from config import build_config  # noqa: E402
from t2m_evaluator import T2MEvaluator  # noqa: E402


def train_alignment(dataset, cfg, sched, seed: int = 2000):
    """An embedder trained as train.py's stage_evaluator trains `alignment` (tiny preset)."""
    torch.manual_seed(seed)
    model = T2MEvaluator.trained(cfg, dataset.mean.shape[0], dataset.tags)
    optimizer = torch.optim.AdamW(model.parameters(), lr=sched.lr)
    stream = loop.batches(dataset, sched.batch_size, seed)
    for _ in range(sched.steps):
        batch = next(stream)
        loss, _ = metrics.embedder_loss(model.encode_text(model.tokenizer(batch["caption"])),
                                        model.encode_motion(batch["motion"], batch["lengths"]),
                                        batch["caption"], temperature=cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def naive_records(dataset, embedder, cfg, motions: int):
    """Eq. (1) with every candidate clip embedded by encode_motion itself (the reference the
    shared-work `mate_segmentation.embed_segments` reproduces), on the first `motions` motions."""
    def naive(embedder, motion, spans):
        with torch.no_grad():
            clips = [motion[s:e] for s, e in spans]
            batch = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
            lengths = torch.tensor([e - s for s, e in spans])
            return F.normalize(embedder.encode_motion(batch, lengths), dim=-1)

    fast, mate_segmentation.embed_segments = mate_segmentation.embed_segments, naive
    items = dataset.items
    try:
        dataset.items = items[:motions]
        return mate.prepare_records(dataset, embedder, cfg, torch.device("cpu"), log=lambda *a: None)
    finally:
        mate_segmentation.embed_segments, dataset.items = fast, items


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/synthetic"),
                   help="the synthetic dataset (generated there with 3,000 motions if missing)")
    p.add_argument("--run", type=Path, default=None, help="a run folder with alignment.pt and text_encoder/")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training the embedder (tiny preset: 1)")
    p.add_argument("--naive-motions", type=int, default=40, help="motions timed with the naive search")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data / "segments.json").exists():
        synthetic.generate_synthetic(args.data, n_motions=3000, seed=0)
    preset = build_config("tiny", [])
    train_split = data.MotionTextDataset(args.data, "train")
    test = data.MotionTextDataset(args.data, "test", random_caption=False)
    segments = synthetic.load_segments(args.data)

    start = time.time()
    if args.run:
        state = loop.load_checkpoint(args.run / "alignment.pt", "evaluator")
        embedder = runfolder.BUILDERS["alignment"](state["config"], state["meta"])
        embedder.load_state_dict(state["model"])
        embedder.eval().requires_grad_(False)
        source = f"alignment embedder of {args.run}"
    else:
        embedder = train_alignment(train_split, preset.evaluator, preset.evaluator_train)
        source = (f"alignment embedder trained here ({preset.evaluator_train.steps} steps, tiny preset) "
                  f"in {time.time() - start:.0f} s")
    real = evaluation.evaluate(None, test, embedder, embedder.tokenizer, replications=1, seed=0, log=lambda *a: None)
    print(f"E_t, E_m: {source}; its test R-precision top-1 {real['R-precision top-1'][0]:.3f}, "
          f"top-3 {real['R-precision top-3'][0]:.3f} (chance 1/32 = 0.031)")

    captions = [(name, c) for name, _, caps in test.items for c in caps]
    split_ok = np.mean([len(mate_segmentation.split_caption(c)) == len(segments[n]["actions"]) for n, c in captions])
    print(f"sub-text decomposition accuracy: {100 * split_ok:.1f} % of {len(captions)} test captions "
          f"(MATE Tab. 7, ChatGPT on HumanML3D: 97.0 %)")
    print(f"{len(test)} test motions (mate.prepare_records runs on one CPU thread):")
    for grid in (4, 8):
        cfg = mate.MATEConfig(segment_grid=grid)
        start = time.perf_counter()
        records = mate.prepare_records(test, embedder, cfg, torch.device("cpu"), log=lambda *a: None)
        seconds = time.perf_counter() - start
        report = mate.segmentation_report(records, segments)
        print(f"  grid {grid} frames: {len(test) / seconds:6.1f} motions/s ({seconds:.1f} s); boundary error "
              f"{report['boundary_error_frames']:.1f} frames over {report['boundaries']} boundaries "
              f"(even split {report['even_split_error_frames']:.1f}; the paper: 15 frames)")
        if grid == 4 and args.naive_motions:
            start = time.perf_counter()
            slow = naive_records(test, embedder, cfg, args.naive_motions)
            naive_s = time.perf_counter() - start
            same = all(a.bounds == b.bounds for a, b in zip(slow, records))
            print(f"  grid 4, naive (encode_motion per clip): {args.naive_motions / naive_s:6.1f} motions/s "
                  f"on {args.naive_motions} motions; same partitions as the shared-work search: {same}")


if __name__ == "__main__":
    main()
