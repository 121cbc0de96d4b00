"""Throughput of clip_tokenizer.py and clip.py: the hand-written tokenizer (cold and cached), the BPE
trainer, and the offline text encoder (captions per second). Usage: python bench/bench_clip.py [--n 4000]"""
import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clip  # noqa: E402
import clip_tokenizer  # noqa: E402
import synthetic  # noqa: E402


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """Captions from synthetic.py's generator when it is there, else varied ones made here."""
    try:
        import data
        with tempfile.TemporaryDirectory() as root:
            synthetic.generate_synthetic(root, n_motions=max(50, n // 3), seed=seed, log=lambda *a: None)
            found = data.MotionTextDataset(root, "train").captions()
        print(f"captions: {len(found)} from synthetic.generate_synthetic")
        return found[:n]
    except (ImportError, AttributeError) as error:
        print(f"captions: made here ({error})")
    rng = random.Random(seed)
    subjects = ["a person", "the man", "a woman", "someone", "a figure", "the child", "an athlete"]
    actions = ["walks", "jogs", "runs", "jumps", "waves", "kicks", "squats", "turns around",
               "side-steps", "walks in a circle", "punches", "claps", "raises both arms", "stands still"]
    modifiers = ["forward", "backward", "to the left", "to the right", "clockwise",
                 "counterclockwise", "slowly", "quickly", "with the left hand", "with the right leg", ""]
    captions = []
    for _ in range(n):
        steps = [f"{rng.choice(actions)} {rng.choice(modifiers)}".strip() for _ in range(rng.randint(1, 3))]
        captions.append(f"{rng.choice(subjects)} " + ", then ".join(steps) + rng.choice([".", "", "!"]))
    return captions


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000, help="number of captions")
    parser.add_argument("--n-encode", type=int, default=1024, help="captions for the text encoder")
    parser.add_argument("--batch", type=int, default=256, help="text-encoder batch size")
    args = parser.parse_args()
    captions = synthetic_captions(args.n)
    n = len(captions)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} captions, "
          f"{len(set(captions))} distinct")
    with tempfile.TemporaryDirectory() as tmp:
        folder, seconds = timed(lambda: clip_tokenizer.train_bpe(captions, clip.ClipConfig().vocab_size,
                                                                 Path(tmp) / "bpe"))
        tok = clip_tokenizer.Tokenizer.from_pretrained(folder)
        print(f"train_bpe (vocab {len(tok)}): {seconds:.2f} s")

        tok = clip_tokenizer.Tokenizer.from_pretrained(folder)  # empty word cache
        ids, cold = timed(lambda: tok(captions))
        _, warm = timed(lambda: tok(captions))
        print(f"tokenizer cold:   {n / cold:10.0f} captions/s ({ids.shape[1]} ids each)")
        print(f"tokenizer cached: {n / warm:10.0f} captions/s ({len(tok.cache)} words in the cache)")

        def without_cache():
            for text in captions:
                tok.cache.clear()
                tok.encode(text)
        _, uncached = timed(without_cache)
        print(f"encode, BPE cache cleared before each caption: {n / uncached:10.0f} captions/s")
        from transformers import CLIPTokenizer
        hf = CLIPTokenizer.from_pretrained(folder)
        _, hf_time = timed(lambda: hf(captions, padding="max_length", truncation=True, max_length=77))
        print(f"(transformers CLIPTokenizer, Rust: {n / hf_time:10.0f} captions/s)")

        encoder, seconds = timed(lambda: clip.TextEncoder.offline(captions, Path(tmp) / "enc", log=lambda s: None))
        cfg = clip.ClipConfig()
        print(f"offline encoder build ({cfg.num_layers} layers, W={cfg.hidden_size}, D={cfg.projection_dim}): "
              f"{seconds:.2f} s")
        texts = captions[: args.n_encode]
        m = len(texts)
        with torch.no_grad():
            encoder.encode(texts[:8])  # warm-up
            _, seconds = timed(lambda: [encoder.encode(texts[i:i + args.batch]) for i in range(0, m, args.batch)])
        print(f"text encoder, encode (77 positions, batch {args.batch}): {m / seconds:8.0f} captions/s")
        _, first = timed(lambda: encoder.encode_cached(texts, batch_size=args.batch))
        _, second = timed(lambda: encoder.encode_cached(texts))
        print(f"encode_cached first pass (cut after the last end token): {m / first:8.0f} captions/s, "
              f"cached: {m / second:8.0f} captions/s")


if __name__ == "__main__":
    main()
