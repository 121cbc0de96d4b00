"""Benchmark: generate the embedded synthetic dataset at its default size.

Issue 2 target: at most 60 s on a 2-core machine (the generator is vectorised numpy, one
process). Run from the repository root:

    python bench/bench_data.py [--motions 3000] [--seed 0]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motions", type=int, default=3000, help="dataset size (train.py's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthetic.generate_synthetic(Path(tmp) / "synthetic", n_motions=args.motions, seed=args.seed)
        elapsed = time.perf_counter() - start
        summary = data.dataset_summary(Path(tmp) / "synthetic")
    print(f"generate_synthetic: {args.motions} motions, {summary['frames_total']} frames, "
          f"{summary['captions']} captions in {elapsed:.1f} s "
          f"({1000 * elapsed / args.motions:.1f} ms per motion; target <= 60 s)")


if __name__ == "__main__":
    main()
