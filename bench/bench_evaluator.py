"""Real-motion figures of a run's `evaluator` (and `alignment`) embedder: on the test split's real
motions with their captions, R-precision top-1 / top-3 (pools of 32) and MMdist, each averaged over
two passes, and the FID between the two passes (Guo et al.'s Real row: the same clips, drawn with
other random crops and captions). The closer to 0 that FID, the less the features move when
nothing about the motion changes; the R-precision says how well they tell captions apart.

    python bench/bench_evaluator.py --run runs/final [--data data/synthetic]

It reads evaluator.pt / alignment.pt through the recipe's own loaders (loop.load_checkpoint,
runfolder.BUILDERS), and falls back to the run's CLIP tokenizer for embedders that have no reader
of their own, so it also scores runs made before the evaluator became Guo et al.'s architecture
(to compare before and after).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import evaluation  # noqa: E402
import loop  # noqa: E402
import metrics  # noqa: E402
import runfolder  # noqa: E402
from clip_tokenizer import Tokenizer  # noqa: E402


def load_embedder(run: Path, name: str):
    state = loop.load_checkpoint(run / f"{name}.pt", "evaluator")
    model = runfolder.BUILDERS[name](state["config"], state["meta"])
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False), sum(p.numel() for p in model.parameters())


def real_figures(test, model, tokenizer, passes: int = 2) -> dict:
    """Top-1, top-3 and MMdist over `passes` passes (one random crop and caption per clip each),
    and the FID between the first two passes' motion embeddings."""
    runs = [evaluation.embed_dataset(test, model, tokenizer) for _ in range(passes)]
    top = np.stack([metrics.r_precision(r["text"], r["real"], seed=k) for k, r in enumerate(runs)])  # (P, 3)
    return {"top-1": float(top[:, 0].mean()), "top-3": float(top[:, 2].mean()),
            "MMdist": float(np.mean([metrics.matching_score(r["text"], r["real"]) for r in runs])),
            "FID (2nd pass)": metrics.fid(runs[0]["real"], runs[1]["real"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run folder with evaluator.pt")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the dataset the run used")
    p.add_argument("--seed", type=int, default=0, help="the test split's crop and caption draws")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    for name in ("evaluator", "alignment"):
        if not (args.run / f"{name}.pt").exists():
            continue
        model, n_params = load_embedder(args.run, name)
        tokenizer = getattr(model, "tokenizer", None) or Tokenizer.from_pretrained(args.run / "text_encoder")
        test = data.MotionTextDataset(args.data, "test", seed=args.seed)
        figures = real_figures(test, model, tokenizer)
        print(f"{name} ({type(model).__name__}, {n_params / 1e6:.2f} M parameters), {len(test)} test motions: "
              + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
