"""Tests for bench/bench_seeds.py, without training: the seed folders (what is copied, that train.py's
provenance check stays quiet on the copies, that a foreign copy is refused), the stage plan and its
skipping of finished stages, and the aggregation and claims on results.json files written by hand,
checked against hand computations (t_{0.975, 2} = 4.302653)."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import config
import evaluation
import loop
import runfolder

spec = importlib.util.spec_from_file_location(
    "bench_seeds", Path(__file__).resolve().parents[1] / "bench" / "bench_seeds.py")
bench_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_seeds)

T_2 = 4.302653  # t_{0.975, 2}: three seeds


def write_base(root: Path) -> Path:
    """A base run folder: the shared parts (a LaMP variant among them), a diffusion.pt that records
    what it was trained on, MotionLCM's checkpoint and a kept previous checkpoint."""
    base = root / "base"
    (base / "text_encoder").mkdir(parents=True)
    (base / "text_encoder" / "config.json").write_text("{}")
    for name in ("vae", "evaluator", "alignment", "lamp_mtc", "lamp_t2m", "lcm", "projector.prev"):
        loop.save_checkpoint(base / f"{name}.pt", {"model": {"w": torch.randn(3)}, "step": 1, "done": True,
                                                   "meta": {}})
    run = make_run(base)
    trained_on = {"vae.pt": runfolder.fingerprint(run, base / "vae.pt"),
                  "text_encoder": runfolder.fingerprint(run, base / "text_encoder")}
    loop.save_checkpoint(base / "diffusion.pt", {"model": {}, "step": 1, "done": True,
                                                  "meta": {"trained_on": trained_on}})
    return base


def make_run(out: Path) -> runfolder.Run:
    return runfolder.Run(cfg=config.build_config("tiny", []), out=out, data_root=out, synthetic=False,
                     device=torch.device("cpu"), clip=None, resume=False,
                     args=argparse.Namespace(text_encoder="clip", evaluator="evaluator"))


def test_seed_folders_copy_the_shared_parts_and_stay_quiet(tmp_path, capsys):
    base = write_base(tmp_path)
    bench_seeds.prepare(base, tmp_path / "seed_0", is_base=True)
    bench_seeds.prepare(base, tmp_path / "seed_1", is_base=False)
    assert sorted(p.name for p in (tmp_path / "seed_0").iterdir()) == [
        "alignment.pt", "diffusion.pt", "evaluator.pt", "lamp_mtc.pt", "lamp_t2m.pt", "text_encoder",
        "vae.pt"]  # no lcm, .prev
    assert (tmp_path / "seed_1" / "lamp_mtc.pt").exists(), "LaMP is shared"
    assert not (tmp_path / "seed_1" / "lamp_t2m.pt").exists(), "its masked generators are seeded"
    assert not (tmp_path / "seed_1" / "diffusion.pt").exists(), "the other seeds train their own"
    runfolder.finished(make_run(tmp_path / "seed_0"), "diffusion")
    assert "[provenance]" not in capsys.readouterr().out
    bench_seeds.prepare(base, tmp_path / "lead_0", is_base=True, stages=["diffusion", "projector"])
    assert (tmp_path / "lead_0" / "diffusion.pt").exists() and not (tmp_path / "lead_0" / "lamp_t2m.pt").exists()
    bench_seeds.prepare(base, tmp_path / "seed_1", is_base=False)  # a second call: the copies are there
    (tmp_path / "seed_1" / "text_encoder" / "config.json").write_text('{"other": 1}')
    with pytest.raises(ValueError, match="differs from"):
        bench_seeds.prepare(base, tmp_path / "seed_1", is_base=False)
    (base / "evaluator.pt").unlink()
    with pytest.raises(ValueError, match="finish the base run"):
        bench_seeds.prepare(base, tmp_path / "seed_2", is_base=False)


def test_stage_plan_and_finished_stages_are_skipped(tmp_path, monkeypatch):
    assert bench_seeds.stage_plan(is_base=True, lamp=False) == [("eval", []), ("inversion", [])]
    plan = bench_seeds.stage_plan(is_base=False, lamp=True)
    assert [s for s, _ in plan] == ["lamp_t2m", "diffusion", "projector", "atm", "mate", "eval", "inversion",
                                    "diffusion", "projector", "atm", "eval"]
    lead = ["diffusion", "projector", "eval"]  # --stages: LEAD's alone
    assert [s for s, _ in bench_seeds.stage_plan(is_base=False, lamp=True, stages=lead)] == lead + ["diffusion", "projector", "eval"]
    assert bench_seeds.stage_plan(is_base=True, lamp=False, stages=lead) == [("eval", [])]
    calls = []
    finished = argparse.Namespace(returncode=0)
    monkeypatch.setattr(bench_seeds.subprocess, "run", lambda cmd: calls.append(cmd) or finished)
    (tmp_path / "eval.json").write_text("{}")
    bench_seeds.run_seed(tmp_path, 5, [("diffusion", []), ("eval", []), ("eval", ["--text-encoder", "lamp"])],
                         ["--preset", "tiny"])
    assert [c[c.index("--stage") + 1] for c in calls] == ["diffusion", "eval"]  # eval.json exists: skipped
    assert "run.seed=5" in calls[0] and calls[0][-2:] == ["--preset", "tiny"] and "lamp" in calls[1]
    monkeypatch.setattr(bench_seeds.subprocess, "run", lambda cmd: argparse.Namespace(returncode=2))
    with pytest.raises(RuntimeError, match="seed 5: `python train.py --stage diffusion"):
        bench_seeds.run_seed(tmp_path, 5, [("diffusion", [])], [])


def write_seed(folder: Path, k: int) -> None:
    """Seed k's results: LEAD's FID 1, 2, 3 and MLD's 3, 4, 5.5 (paired differences -2, -2, -2.5);
    top-1 of MLD+ATM and its control equal but for seed 2; each model's own ± is 0.1 * (k + 1)."""
    ci = 0.1 * (k + 1)
    rows = {"Real": {"FID": (0.0, 0.0)},
            "MLD": {"FID": ([3.0, 4.0, 5.5][k], ci), "R-precision top-1": (0.2, ci)},
            "LEAD": {"FID": ([1.0, 2.0, 3.0][k], ci), "R-precision top-1": (0.2, ci)},
            "MLD+ATM": {"FID": (6.0, ci), "R-precision top-1": ([0.1, 0.2, 0.3][k], ci)},
            "MLD (+40 steps, L_mse only)": {"FID": (6.0, ci), "R-precision top-1": ([0.2, 0.1, 0.3][k], ci)}}
    evaluation.write_results(folder, "t2m", rows, "Text-to-motion")
    mti = {"MTI_mld": {"FID": (2.0, 0.0)}, "MTI_lead": {"FID": (2.5 + 0.1 * k, 0.0)}}
    evaluation.write_results(folder, "mti", mti, "MTI")
    if k:
        evaluation.write_results(folder, "only_some", {"X": {"FID": (1.0, 0.0)}}, "not in every seed")


def test_aggregation_and_claims_by_hand(tmp_path):
    for k in range(3):
        write_seed(tmp_path / f"s{k}", k)
    table = bench_seeds.collect([json.loads((tmp_path / f"s{k}" / "results.json").read_text()) for k in range(3)])
    assert set(table) == {"t2m", "mti"}, "a section missing from one seed is left out"
    lead = bench_seeds.summarise(table)["t2m"]["LEAD"]["FID"]
    # (1, 2, 3): mean 2, s 1, half T_2 / sqrt(3); the models' own ± (0.1, 0.2, 0.3) average to 0.2
    assert lead["mean"] == pytest.approx(2.0) and lead["seed_ci"] == pytest.approx(T_2 / 3 ** 0.5, abs=1e-5)
    assert lead["replication_ci"] == pytest.approx(0.2) and lead["seeds"] == [1.0, 2.0, 3.0]
    found = {(c["claim"], c["metric"]): c for c in bench_seeds.claims(table)}
    fid = found[("LEAD vs MLD", "FID")]
    # differences (-2, -2, -2.5): mean -13/6, s = sqrt(1/12), half T_2 sqrt(1/12) / sqrt(3) = T_2 / 6
    assert fid["verdict"] == "holds" and fid["difference"] == pytest.approx((-13 / 6, T_2 / 6), abs=1e-5)
    assert found[("LEAD vs MLD", "R-precision top-1")]["verdict"] == "no difference"  # equal: s = 0, mean 0
    assert found[("MLD+ATM vs its control", "R-precision top-1")]["verdict"] == "no difference"  # (-0.1, 0.1, 0)
    assert found[("MTI_lead vs MTI_mld", "FID")]["verdict"] == "reversed"  # (0.5, 0.6, 0.7): 0.6 ± 0.248
    assert found[("LaMP vs CLIP conditioning (LEAD)", "FID")]["verdict"] == "not run"
    assert found[("MLD+MATE vs MLD", "FID")]["verdict"] == "not run"


def test_main_reports_from_finished_seed_folders(tmp_path, capsys):
    """Seed folders whose stages have all written their STAGE.json: main trains nothing, aggregates
    and writes seeds.md / seeds.json. One seed is refused with a message."""
    base = write_base(tmp_path)
    out = tmp_path / "seeds"
    for k in range(3):
        folder = out / f"seed_{k}"
        write_seed(folder, k)
        for stage in bench_seeds.TRAINING_STAGES + bench_seeds.SCORING_STAGES:
            (folder / f"{stage}.json").write_text("{}")
    assert bench_seeds.main(["--base", str(base), "--seeds", "3", "--out", str(out)]) == 0
    md = (out / "seeds.md").read_text()
    assert "| LEAD vs MLD | FID |" in md and "**holds**" in md and "**not run**" in md
    assert f"2.000 ± {T_2 / 3 ** 0.5:.3f} [0.200]" in md  # LEAD's FID: across seeds [replications]
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["tables"]["t2m"]["LEAD"]["FID"]["mean"] == pytest.approx(2.0)
    assert "already done" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_seeds.main(["--base", str(base), "--seeds", "1"])
    assert "at least two seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_seeds.main(["--base", str(base), "--seeds", "2", "--set", "run.seed=3"])
