"""Benchmark: the offline text stand-in (clip.py), pretrained on the training captions alone.

    nice -n 19 python bench/bench_text.py [--data DIR] [--steps N] [--batch B] [--lr LR] ...

Builds the tiny preset's text tower as `train.py --stage data` does (BPE on the training
captions, then `pretrain_text` on the captions grouped by motion), with one torch thread as the
tiny preset sets, and prints the build time and `clip.offline_report` on the test split's
caption groups: paraphrase retrieval top-1 (text -> text among the test captions) and the
cosine spread of paraphrase and other pairs, before (the random initial tower) and after.

On the synthetic dataset many motions share one description (19 test motions just stand), and
captions of two such motions are paraphrases that the per-motion top-1 counts as misses. So the
same report is also printed with the test groups merged by their action list (segments.json),
beside the per-motion ceiling of a text space that knows exactly the action list and nothing
more (a nearest caption drawn at random among those with the same list). Even a space that
knew each motion's whole program (actions, modifiers, repeat counts, turn angles, much of which
no caption states) would reach only 0.736 per motion on this test split (measured once by
re-drawing the programs with synthetic.synthesize_motion); the captions of two motions with
one program are exchangeable, so no text encoder can tell them apart.

Measured (2-core CPU, one thread, defaults of ClipConfig, 2026-11-30): build 36 s, of which
pretraining 35 s; per-motion top-1 0.114 -> 0.657 (ceiling by action list 0.641), by action
list 0.293 -> 0.999; paraphrase cosine median 0.786 -> 0.958, other pairs 0.673 -> -0.021.
"""
import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clip  # noqa: E402
import data  # noqa: E402
import synthetic  # noqa: E402
from config import PRESETS  # noqa: E402


def tiny_text_config(**pretraining) -> clip.ClipConfig:
    """ClipConfig with the tiny preset's text.* overrides, then the given pretraining fields."""
    sizes = {key[len("text."):]: value for key, value in PRESETS["tiny"].items() if key.startswith("text.")}
    return replace(clip.ClipConfig(**sizes), **{k: v for k, v in pretraining.items() if v is not None})


def groups_of(root, split: str) -> tuple[list[list[str]], list[str]]:
    """The split's caption groups (one per item: a motion or an annotated sub-span) and names."""
    items = data.MotionTextDataset(root, split).items
    return [captions for _, _, captions in items], [name for name, _, _ in items]


def merged_by_meaning(root, groups: list[list[str]], names: list[str]) -> tuple[list[list[str]], float]:
    """Groups merged by action list (synthetic only), and the per-motion top-1 ceiling of a
    space that sees the action list only: a query's nearest other caption is then any of the
    T - 1 other captions with the same list, k - 1 of which are its own group's."""
    segments = synthetic.load_segments(root)
    key = [tuple(segments[name.split("_")[0]]["actions"]) for name in names]
    merged, total = defaultdict(list), Counter()
    for k, group in zip(key, groups):
        distinct = sorted(set(group))
        merged[k] += distinct
        total[k] += len(distinct)
    chances = [(len(set(g)) - 1) / (total[k] - 1) for k, g in zip(key, groups) for _ in set(g) if len(set(g)) > 1]
    return list(merged.values()), sum(chances) / len(chances)


def show(title: str, report: dict) -> None:
    for when in ("before", "after"):
        r = report[when]
        print(f"  {title:<22} {when:<6}: top-1 {r['top1']:.3f} ({r['queries']} queries); cosine of paraphrases "
              f"mean {r['paraphrase_cos_mean']:.3f} median {r['paraphrase_cos_median']:.3f} "
              f"(> 0.85: {r['paraphrase_above']:.3f}), of other pairs mean {r['other_cos_mean']:.3f} "
              f"median {r['other_cos_median']:.3f} (> 0.85: {r['other_above']:.3f}); |c| {r['c_norm_mean']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a dataset folder (default: the synthetic one, generated in a temp dir)")
    parser.add_argument("--steps", type=int, help="text.pretrain_steps (default: ClipConfig's)")
    parser.add_argument("--batch", type=int, help="text.pretrain_batch")
    parser.add_argument("--lr", type=float, help="text.pretrain_lr")
    parser.add_argument("--warmup", type=int, help="text.pretrain_warmup")
    parser.add_argument("--temperature", type=float, help="text.temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tiny preset: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = tiny_text_config(pretrain_steps=args.steps, pretrain_batch=args.batch, pretrain_lr=args.lr,
                              pretrain_warmup=args.warmup, temperature=args.temperature)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {config}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "synthetic"
        if not args.data:
            synthetic.generate_synthetic(root, n_motions=3000, seed=0)
        train_groups, _ = groups_of(root, "train")
        test_groups, test_names = groups_of(root, "test")
        start = time.perf_counter()
        encoder = clip.TextEncoder.offline(train_groups, Path(tmp) / "text_encoder", seed=args.seed, config=config)
        build = time.perf_counter() - start
        stats = json.loads((Path(tmp) / "text_encoder" / clip.OFFLINE_STAMP).read_text())["pretraining"]
        print(f"build {build:.1f} s in all, of which pretraining {stats.get('seconds', 0):.1f} s: {stats}")
        print(f"test split: {len(test_groups)} groups, {sum(map(len, test_groups))} captions")
        show("per motion", clip.offline_report(encoder, test_groups, seed=args.seed, config=config))
        if (root / "segments.json").exists():
            merged, ceiling = merged_by_meaning(root, test_groups, test_names)
            print(f"  (per-motion top-1 of a space that knows only each motion's action list: {ceiling:.3f})")
            show(f"by action list ({len(merged)})", clip.offline_report(encoder, merged, seed=args.seed, config=config))


if __name__ == "__main__":
    main()
