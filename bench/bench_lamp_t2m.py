"""Benchmark: LaMP Tab. 6 across training seeds: the four masked generators retrained per seed.

    python bench/bench_lamp_t2m.py --base runs/final --seeds 3 [--out DIR] [--preset tiny] [--data DIR] [--set K=V]

A base run that finished `data`, `evaluator` and `lamp` (e.g. `python train.py --stage all --out
runs/final`) gives what every seed shares: the text encoder, evaluator.pt, lamp.pt, lamp_vq.pt,
copied into DIR/seed_S (default DIR: BASE/t2m_seeds). Each seed S then trains
`python train.py --stage lamp_t2m --ablations --set run.seed=S` there (MoMask-style (CLIP), the
"+ LaMP text" and "+ query tokens" rows and LaMP-T2M, on the same batches and budget), and the four
are scored with the eval stage's protocol (evaluation.t2m_rows: the test split, the run's
`evaluator`, the preset's replications) into DIR/seed_S/t2m_seeds.json. A seed whose record exists
is not scored again; its training resumes (--resume) where an interrupted call stopped.

Prints and writes DIR/t2m_seeds.md and .json: the rows as mean ± 95% half-width across seeds
[the papers' ± in brackets], and Tab. 6's claims (bench_seeds.CLAIMS' LaMP-T2M entries), each
"holds", "no difference" or "reversed" from the paired-by-seed differences (metrics.claim_direction).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_seeds  # noqa: E402
import evaluation  # noqa: E402
import runfolder  # noqa: E402
import train  # noqa: E402

SHARED = ["text_encoder", "evaluator.pt", "lamp.pt", "lamp_vq.pt"]
ROWS = {**train.T2M_ROWS, **train.T2M_ABLATIONS}  # checkpoint -> (row, overrides)


def train_seed(folder: Path, seed: int, passed: list[str]) -> None:
    """`--stage lamp_t2m --ablations` for one seed, unless its record exists."""
    if (folder / "lamp_t2m.json").exists():
        print(f"[t2m seeds] seed {seed}: lamp_t2m already trained ({folder / 'lamp_t2m.json'})")
        return
    argv = ["--stage", "lamp_t2m", "--ablations", "--out", str(folder), "--set", f"run.seed={seed}", "--resume", *passed]
    print(f"[t2m seeds] seed {seed}: python train.py {' '.join(argv)}", flush=True)
    if subprocess.run([sys.executable, str(bench_seeds.TRAIN), *argv]).returncode != 0:
        raise RuntimeError(f"seed {seed}: train.py --stage lamp_t2m failed (its message is above)")


def score_seed(folder: Path, seed: int, args) -> dict:
    """The eval stage's protocol on the four generators of one seed -> {"t2m": {"title", "rows"}}."""
    record = folder / "t2m_seeds.json"
    if record.exists():
        return json.loads(record.read_text())
    run = runfolder.open_run(folder, args.data, preset=args.preset, sets=[*args.sets, f"run.seed={seed}"])
    if run.cfg.run.threads:
        torch.set_num_threads(run.cfg.run.threads)
    test, evaluator = runfolder.open_split(run, "test"), runfolder.load_model(run, "evaluator")
    methods = {"Real": None, **{row: runfolder.t2m_generate(run, name, row) for name, (row, _) in ROWS.items()}}
    rows = evaluation.t2m_rows(methods, test, evaluator, evaluator.tokenizer, run.cfg.eval, seed)
    result = {"t2m": {"title": "LaMP Tab. 6 analogue", "rows": runfolder.as_lists(rows)}}
    bench_seeds.write_atomic(record, json.dumps(evaluation.strict_json(result), indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="a run that finished data, evaluator and lamp")
    p.add_argument("--seeds", type=int, required=True, help="K training seeds (K >= 2)")
    p.add_argument("--base-seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--out", type=Path, help="where the seed folders go (default BASE/t2m_seeds)")
    p.add_argument("--preset", default="tiny", help="the base run's --preset")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the base run's dataset folder")
    p.add_argument("--set", dest="sets", action="append", default=[], help="the base run's --set items")
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error(f"--seeds {args.seeds}: a 95% interval across training seeds needs at least two seeds")
    out = args.out or args.base / "t2m_seeds"
    seeds = [args.base_seed + k for k in range(args.seeds)]
    passed = ["--preset", args.preset, "--data", str(args.data), *(x for s in args.sets for x in ("--set", s))]
    results = []
    try:
        for seed in seeds:
            folder = out / f"seed_{seed}"
            bench_seeds.copy_into(args.base, folder, SHARED)
            missing = [name for name in SHARED if not (folder / name).exists()]
            if missing:
                raise ValueError(f"{args.base} has no {', '.join(missing)}: run data, evaluator and lamp first")
            train_seed(folder, seed, passed)
            results.append(score_seed(folder, seed, args))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = bench_seeds.collect(results)
    summary = bench_seeds.summarise(table)
    found = [c for c in bench_seeds.claims(table) if "LaMP-T2M" in c["claim"] or "Tab. 6:" in c["claim"]]
    text = bench_seeds.report(table, summary, found, seeds, args.base_seed, "every seed trains the four generators); "
                              "the dataset, text encoder, evaluator, LaMP and its VQ-VAE are the base run's, shared.")
    bench_seeds.write_atomic(out / "t2m_seeds.md", text)
    bench_seeds.write_atomic(out / "t2m_seeds.json", json.dumps({"seeds": seeds, "base": str(args.base),
                                                                 "tables": summary, "claims": found}, indent=2) + "\n")
    print(text + f"\n[t2m seeds] written to {out / 't2m_seeds.md'} and {out / 't2m_seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
