"""Time every metric formula at HumanML3D test size: 4,384 pairs of 512-d embeddings
(and MModality on 100 texts x 30 generations x 512).

    python bench/bench_metrics.py

Issue 4's target: all of them together in at most 5 s on a CPU. Figures are the best of
`--repeats` runs, to keep a busy shared machine from inflating them.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402

N, E = 4384, 512  # HumanML3D test split, T2M embedding size
MM_TEXTS, MM_GENS = 100, 30  # Guo et al.'s MModality protocol


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((N, E)).astype(np.float32)
    motion = (text + 5.0 * rng.standard_normal((N, E))).astype(np.float32)  # noisy partners
    real = rng.standard_normal((N, E)).astype(np.float32)
    mm = rng.standard_normal((MM_TEXTS, MM_GENS, E)).astype(np.float32)
    cases = {
        f"euclidean_distance_matrix {N}x{N}": lambda: metrics.euclidean_distance_matrix(text, motion).shape,
        "fid": lambda: metrics.fid(real, motion),
        "r_precision (pools of 32)": lambda: metrics.r_precision(text, motion).round(3).tolist(),
        "matching_score": lambda: metrics.matching_score(text, motion),
        "diversity (300 pairs)": lambda: metrics.diversity(motion),
        f"multimodality {MM_TEXTS}x{MM_GENS}x{E}": lambda: metrics.multimodality(mm),
        "retrieval_recall (both directions)": lambda: metrics.retrieval_recall(text, motion)["T2M R@1"],
        "mean_ci (20 replications)": lambda: np.round(metrics.mean_ci(rng.standard_normal(20)), 3).tolist(),
    }
    total = 0.0
    print(f"metric functions on {N} x {E} embeddings (best of {args.repeats}):")
    for name, fn in cases.items():
        seconds, out = best_time(fn, args.repeats)
        total += seconds
        value = f"{out:.4g}" if isinstance(out, float) else str(out)
        print(f"  {name:<40s} {seconds:8.3f} s   -> {value}")
    print(f"  {'total':<40s} {total:8.3f} s   (target: <= 5 s)")


if __name__ == "__main__":
    main()
