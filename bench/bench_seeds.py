"""Benchmark: the Tab. 1 and Tab. 3 analogues across training seeds, and the papers' claims tested on them.

    python bench/bench_seeds.py --base runs/final --seeds 3 [--base-seed 0] [--out DIR] [train.py options]

A finished base run (`python train.py --stage all --out runs/final`) gives the parts every seed
shares: the dataset, the text encoder, the VAE, the `evaluator` and `alignment` embedders and LaMP
(text_encoder/, vae.pt, evaluator.pt, alignment.pt, lamp*.pt), copied into one folder per seed,
DIR/seed_S (default DIR: BASE/seeds). For each seed S the methods are then trained with
`--set run.seed=S`: `lamp_t2m`, `diffusion`, `projector`, `atm`, `mate`, and scored by `eval` and `inversion`
(with `--text-encoder lamp` too, for `diffusion`, `projector`, `atm` and `eval`, when the base run
has the LaMP-conditioned table). The first seed, --base-seed (train.py's default 0: give the seed
the base run was trained with), is the base run itself: its trained checkpoints are copied, not
retrained, and only scored again, so every seed is scored by the same code. MotionLCM (lcm.pt) is
not part of the seeds. Copies (not links) keep the base run as it is; they hash like the
originals, so train.py's provenance check (`trained_on`) stays quiet. A seed folder whose copy
differs from the base run's is refused. Stages whose STAGE.json exists are skipped, so a second
call continues an interrupted benchmark. `--stages` runs some of them (the others' rows are then
missing and their claims "not run"). Options the script does not know go to every train.py
call (`--preset`, `--data`, `--synthetic-dir`, `--clip`, `--evaluator`, `--set`, ...): give the
ones the base run was made with.

Prints and writes DIR/seeds.md and DIR/seeds.json:
- every table the seeds share (the Tab. 1 analogue `t2m`, its fit table `t2m_fit` on training
  clips, `mti`, ...), each cell `mean ± h [r]`: the mean over the K seeds, h the 95% half-width
  across training seeds (Student t, K - 1 degrees of freedom: metrics.seed_ci), and in brackets r,
  the papers' ±: each model's 1.96 std / sqrt(R) over R sampling replications, averaged over seeds;
- the claims: for each comparison a paper makes, on each metric, whether the method beats its
  baseline with 95% confidence across seeds ("holds"), does not differ ("no difference") or is
  worse ("reversed"), from the paired-by-seed differences (metrics.claim_direction); "not run"
  where a row is missing. Nothing is tuned per method: every seed runs the same recipe.
"""
import argparse
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
import metrics  # noqa: E402
import runfolder  # noqa: E402

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
REQUIRED = ["vae.pt", "evaluator.pt", "alignment.pt"]
NOT_SEEDED = {"lcm.pt"}  # the base run's checkpoints left out of the seeds
TRAINING_STAGES = ["lamp_t2m", "diffusion", "projector", "atm", "mate"]
SCORING_STAGES = ["eval", "inversion"]
LAMP_STAGES = ["diffusion", "projector", "atm", "eval"]  # the stages that take --text-encoder lamp
LOWER_IS_BETTER = {"FID", "MMdist"}
T2M_METRICS = ("FID", "R-precision top-1", "R-precision top-3", "MMdist")
# (claim, method's (section, row), baseline's (section, row), metrics, the paper's words); "{ev}" is
# the evaluator suffix of the t2m sections; "+N steps" stands for ATM's fine-tuning steps
CLAIMS = [
    ("LEAD vs MLD", ("t2m{ev}", "LEAD"), ("t2m{ev}", "MLD"), T2M_METRICS,
     "LEAD Sec. 5.3: a significant FID gain; R-precision and MMdist comparable"),
    ("MLD+ATM vs MLD", ("t2m{ev}", "MLD+ATM"), ("t2m{ev}", "MLD"), T2M_METRICS,
     "ATM Sec. 4.2: better on every metric, FID only marginally"),
    ("MLD+ATM vs its control", ("t2m{ev}", "MLD+ATM"), ("t2m{ev}", "MLD (+N steps, L_mse only)"), T2M_METRICS,
     "ours: the same fine-tuning steps with L_mse alone"),
    ("LEAD+ATM vs its control", ("t2m{ev}", "LEAD+ATM"), ("t2m{ev}", "LEAD (+N steps, L_mse only)"), T2M_METRICS,
     "ours: the same fine-tuning steps with L_mse alone"),
    ("MLD+MATE vs MLD", ("t2m{ev}", "MLD+MATE"), ("t2m{ev}", "MLD"), T2M_METRICS,
     "MATE Sec. 4.2: better on every metric"),
    ("MTI_lead vs MTI_mld", ("mti", "MTI_lead"), ("mti", "MTI_mld"), ("FID", "R-precision top-3", "MMdist"),
     "LEAD Sec. 5.5: better realism and text alignment"),
    ("MTI_lead vs MTI_mld, w/ project", ("mti", "MTI_lead w/ project"), ("mti", "MTI_mld w/ project"),
     ("FID", "R-precision top-3", "MMdist"), "LEAD Sec. 5.5: better realism and text alignment"),
    ("LaMP vs CLIP conditioning (MLD)", ("t2m_lamp{ev}", "MLD"), ("t2m{ev}", "MLD"), T2M_METRICS,
     "LaMP Tab. 6: better on every metric"),
    ("LaMP vs CLIP conditioning (LEAD)", ("t2m_lamp{ev}", "LEAD"), ("t2m{ev}", "LEAD"), T2M_METRICS,
     "LaMP Tab. 6: better on every metric"),
    ("LaMP-T2M vs MoMask-style (CLIP)", ("t2m{ev}", "LaMP-T2M"), ("t2m{ev}", "MoMask-style (CLIP)"), T2M_METRICS,
     "LaMP Tabs. 1, 6: better on every metric"),
    ("Tab. 6: + LaMP text vs CLIP", ("t2m{ev}", "+ LaMP text (bidirectional)"), ("t2m{ev}", "MoMask-style (CLIP)"),
     T2M_METRICS, "LaMP Tab. 6: better on every metric"),
    ("Tab. 6: + query tokens vs + LaMP text", ("t2m{ev}", "+ query tokens (bidirectional)"),
     ("t2m{ev}", "+ LaMP text (bidirectional)"), T2M_METRICS, "LaMP Tab. 6: top-1 better, FID and MMdist worse"),
    ("Tab. 6: decoder-only vs bidirectional", ("t2m{ev}", "LaMP-T2M"), ("t2m{ev}", "+ query tokens (bidirectional)"),
     T2M_METRICS, "LaMP Tab. 6: better on every metric"),
]


# ----------------------------------------------------------------------------
# The seed folders


def same_files(a: Path, b: Path) -> bool:
    """Whether file or folder `b` holds exactly what `a` holds (byte for byte)."""
    if a.is_dir():
        files = [f.relative_to(a) for f in a.rglob("*") if f.is_file()]
        return b.is_dir() and all((b / f).is_file() and filecmp.cmp(a / f, b / f, shallow=False) for f in files)
    return b.is_file() and filecmp.cmp(a, b, shallow=False)


def copy_into(base: Path, folder: Path, names: list[str]) -> list[str]:
    """Copy base/NAME to folder/NAME for each name (file or folder) the base run has; a copy there
    already must be identical. Returns the names copied or found."""
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names:
        source, target = base / name, folder / name
        if not source.exists():
            continue
        if target.exists():
            if not same_files(source, target):
                raise ValueError(f"{target} differs from {source}: this seed folder was made from another base "
                                 f"run; remove {folder} to start the seed over")
        elif source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        done.append(name)
    return done


def checkpoints(base: Path) -> list[str]:
    """The base run's NAME.pt files, without the `.prev.pt` a retraining keeps."""
    return sorted(p.name for p in base.glob("*.pt") if not p.name.endswith(".prev.pt"))


def shared(base: Path) -> list[str]:
    """What every seed shares: the text encoder, the VAE, the two embedders, LaMP (lamp.pt, lamp_vq.pt
    and its --ablations variants; not the masked generators lamp_t2m*.pt, which are seeded)."""
    return ["text_encoder", *REQUIRED, *(name for name in checkpoints(base)
                                         if name.startswith("lamp") and not name.startswith("lamp_t2m"))]


def trained(base: Path) -> list[str]:
    """The base run's checkpoints of the seeded stages: all but the shared ones and MotionLCM's."""
    return [name for name in checkpoints(base) if name not in shared(base) and name not in NOT_SEEDED]


def prepare(base: Path, folder: Path, is_base: bool, stages=TRAINING_STAGES) -> None:
    """A seed folder: the shared parts, and for the base seed its trained checkpoints too (those of
    `stages`)."""
    missing = [name for name in REQUIRED if not (base / name).exists()]
    if missing:
        raise ValueError(f"{base} has no {', '.join(missing)}: finish the base run first "
                         f"(python train.py --stage all --out {base})")
    own = [n for n in trained(base) if runfolder.stage_of(n.removesuffix(".pt")) in stages] if is_base else []
    copy_into(base, folder, shared(base) + own)


def stage_plan(is_base: bool, lamp: bool, stages=TRAINING_STAGES + SCORING_STAGES) -> list[tuple[str, list[str]]]:
    """(stage, extra train.py arguments) in order, of `stages` alone: the base seed is only scored again."""
    plan = [(s, []) for s in ([] if is_base else TRAINING_STAGES) + SCORING_STAGES if s in stages]
    if lamp:
        plan += [(s, ["--text-encoder", "lamp"]) for s in LAMP_STAGES if (s == "eval" or not is_base) and s in stages]
    return plan


def run_seed(folder: Path, seed: int, plan, passed: list[str]) -> None:
    """Each stage of `plan` as `python train.py --stage STAGE --out FOLDER --set run.seed=SEED`,
    skipped when its STAGE.json (runfolder.record_path) exists; --resume continues a checkpoint that
    an interrupted call left behind."""
    for stage, extra in plan:
        argv = ["--stage", stage, "--out", str(folder), "--set", f"run.seed={seed}", "--resume", *extra, *passed]
        record = runfolder.record_path(SimpleNamespace(args=cli.parse_args(argv, ""), out=folder), stage)
        if record.exists():
            print(f"[seeds] seed {seed}: {' '.join([stage, *extra])} already done ({record})")
            continue
        own = " ".join(argv[:len(argv) - len(passed)]) + (" + the options given" if passed else "")
        print(f"[seeds] seed {seed}: python train.py {own}", flush=True)
        if subprocess.run([sys.executable, str(TRAIN), *argv]).returncode != 0:
            raise RuntimeError(f"seed {seed}: `python train.py {own}` failed (its message is above)")


# ----------------------------------------------------------------------------
# Aggregation across seeds


def row_key(name: str) -> str:
    """A row name with ATM's step count as N: 'MLD (+40 steps, L_mse only)' -> 'MLD (+N steps, L_mse only)'."""
    return re.sub(r"\+\d+ steps", "+N steps", name)


def collect(results: list[dict]) -> dict:
    """results.json of each seed -> {section: {"title", "rows": {row: {metric: [(mean, ±) per seed]}}}},
    keeping the sections, rows and metrics every seed has, in the first seed's order."""
    table = {}
    for section, first in results[0].items():
        if not all(section in r for r in results):
            continue
        rows = {}
        for name, metrics_ in first["rows"].items():
            cells = {m: [tuple(r[section]["rows"][name][m]) for r in results] for m in metrics_
                     if all(m in r[section]["rows"].get(name, {}) for r in results)}
            if cells:
                rows[name] = cells
        table[section] = {"title": first["title"], "rows": rows}
    return table


def summarise(table: dict) -> dict:
    """{section: {row: {metric: {"mean", "seed_ci", "replication_ci", "seeds"}}}}: seed_ci the 95%
    half-width across seeds (metrics.seed_ci), replication_ci each model's own ± averaged over seeds."""
    out = {}
    for section, content in table.items():
        out[section] = {}
        for name, cells in content["rows"].items():
            out[section][name] = {}
            for metric, pairs in cells.items():
                values = [mean for mean, _ in pairs]
                mean, half = metrics.seed_ci(values)
                out[section][name][metric] = {"mean": mean, "seed_ci": half, "seeds": values,
                                              "replication_ci": sum(ci for _, ci in pairs) / len(pairs)}
    return out


def claims(table: dict, suffix: str = "") -> list[dict]:
    """Each claim of CLAIMS on each of its metrics: the two rows' means, the paired difference
    (method - baseline) with its 95% interval across seeds, and metrics.claim_direction's verdict."""
    by_key = {section: {row_key(name): cells for name, cells in content["rows"].items()}
              for section, content in table.items()}
    found = []
    for label, (m_section, m_row), (b_section, b_row), columns, paper in CLAIMS:
        method = by_key.get(m_section.format(ev=suffix), {}).get(m_row, {})
        baseline = by_key.get(b_section.format(ev=suffix), {}).get(b_row, {})
        for metric in columns:
            entry = {"claim": label, "metric": metric, "paper": paper, "verdict": "not run"}
            if metric in method and metric in baseline:
                a, b = [m for m, _ in method[metric]], [m for m, _ in baseline[metric]]
                difference = metrics.seed_ci([x - y for x, y in zip(a, b)])
                entry.update(method=metrics.seed_ci(a), baseline=metrics.seed_ci(b), difference=difference,
                             verdict=metrics.claim_direction(a, b, lower_is_better=metric in LOWER_IS_BETTER))
            found.append(entry)
    return found


# ----------------------------------------------------------------------------
# The report


def _cell(pair) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def _difference(pair) -> str:
    """Three significant digits: a difference can be consistent across seeds and far below 0.001."""
    return f"{pair[0]:+.3g} ± {pair[1]:.3g}"


def report(table: dict, summary: dict, found: list[dict], seeds: list[int], base_seed: int,
           shared_note: str | None = None) -> str:
    """Markdown: one table per shared section, then the claims."""
    K = len(seeds)
    shared_note = shared_note or (f"seed {base_seed} is the base run's models, scored again); the dataset, text "
                                  f"encoder, VAE, evaluator and alignment embedder are the base run's, shared.")
    lines = ["# Across training seeds", "",
             f"Seeds {', '.join(map(str, seeds))} (K = {K}; {shared_note}",
             f"Each cell: mean over the K seeds ± the 95% half-width across training seeds (Student t, K - 1 = {K - 1} "
             f"degrees of freedom) [in brackets: the papers' ±, one model's 1.96 std / sqrt(R) over its R sampling "
             f"replications, averaged over the seeds]. The seeds' ± is the one that says whether a method "
             f"differs from another; the bracketed one only how precisely one model was measured.", ""]
    for section, rows in summary.items():
        columns = list(dict.fromkeys(m for cells in rows.values() for m in cells))
        lines += [f"## {table[section]['title']} (`{section}`)", "",
                  "| Method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for name, cells in rows.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{cells[m]['mean']:.3f} ± {cells[m]['seed_ci']:.3f} [{cells[m]['replication_ci']:.3f}]"
                if m in cells else "-" for m in columns) + " |")
        lines.append("")
    lines += ["## The papers' claims across seeds", "",
              "Verdict: the paired-by-seed difference (method − baseline) has a 95% interval wholly on the "
              "method's better side of 0 (holds), wholly on its worse side (reversed), or across 0 (no "
              "difference). FID and MMdist: lower is better; R-precision: higher. A verdict says whether the "
              "direction is consistent across seeds, not whether the difference is large: read its size beside it.",
              "",
              "| Claim | Metric | method | baseline | method − baseline | verdict | the paper says |",
              "|---|---|---|---|---|---|---|"]
    for i, c in enumerate(found):
        figures = [_cell(c["method"]), _cell(c["baseline"]), _difference(c["difference"])] if "difference" in c \
            else ["-"] * 3
        paper = c["paper"] if i == 0 or found[i - 1]["claim"] != c["claim"] else ""  # once per claim
        lines.append(f"| {c['claim']} | {c['metric']} | " + " | ".join(figures) + f" | **{c['verdict']}** | {paper} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Other options are passed to every train.py call.")
    p.add_argument("--base", type=Path, required=True, help="a finished run folder (train.py --stage all --out BASE)")
    p.add_argument("--seeds", type=int, required=True, help="K training seeds, the base run's among them (K >= 2)")
    p.add_argument("--base-seed", type=int, default=0, help="the run.seed the base run was trained with (default 0)")
    p.add_argument("--out", type=Path, default=None, help="where the seed folders go (default BASE/seeds)")
    p.add_argument("--stages", default=",".join(TRAINING_STAGES + SCORING_STAGES),
                   help="the seeded and scoring stages to run (default all; e.g. diffusion,projector,eval: LEAD's alone)")
    args, passed = p.parse_known_args(argv)
    stages = args.stages.split(",")
    if unknown := sorted(set(stages) - set(TRAINING_STAGES + SCORING_STAGES)):
        p.error(f"--stages: {unknown} are not among {TRAINING_STAGES + SCORING_STAGES}")
    for option in ("--out", "--stage", "--text-encoder", "--resume", "run.seed"):
        if any(a == option or a.startswith(option + "=") for a in passed):
            p.error(f"{option} is set by the benchmark for each train.py call; leave it out")
    if args.seeds < 2:
        p.error(f"--seeds {args.seeds}: a 95% interval across training seeds needs at least two seeds "
                "(one trained model says nothing about how another seed would score)")
    out = args.out or args.base / "seeds"
    seeds = [args.base_seed + k for k in range(args.seeds)]
    lamp = "t2m_lamp" in json.loads((args.base / "results.json").read_text()) \
        if (args.base / "results.json").exists() else False
    try:
        for seed in seeds:
            folder, is_base = out / f"seed_{seed}", seed == args.base_seed
            prepare(args.base, folder, is_base, stages)
            run_seed(folder, seed, stage_plan(is_base, lamp, stages), passed)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = [json.loads((out / f"seed_{s}" / "results.json").read_text()) for s in seeds]
    table = collect(results)
    summary = summarise(table)
    suffix = runfolder.evaluator_suffix(SimpleNamespace(args=cli.parse_args(["--stage", "eval", *passed], "")))
    found = claims(table, suffix)
    text = report(table, summary, found, seeds, args.base_seed)
    write_atomic(out / "seeds.md", text)
    write_atomic(out / "seeds.json", json.dumps({"seeds": seeds, "base": str(args.base), "tables": summary,
                                                 "claims": found}, indent=2) + "\n")
    print(text + f"\n[seeds] written to {out / 'seeds.md'} and {out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
