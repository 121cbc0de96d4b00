"""The paper preset end to end (issue 32): every stage of `--stage all --preset paper` at the
papers' model sizes (MLD's VAE and denoiser, LEAD's projector, BERT-base LaMP, Guo et al.'s
evaluator dimensions, OPT-architecture captioner), 2 steps each at batch 8 on a 250-motion dataset
(its test split over R-precision's pool of 32 clips), on the CPU, in a child process whose peak
resident memory is bounded; then `--stage import` of a checkpoint in MLD's layout at MLD's sizes
and `--stage sample` from the imported weights.
Minutes, not seconds: skipped unless pytest runs with --paper (.ci/run does, after the suite)."""
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]
PEAK_GB = 12.0  # measured 8.6 GB (2026-12-07, this 2-core machine); 24 GB is the target GPU's
STEPS = ["data.synthetic_motions=250", "text.pretrain_steps=2", "text.pretrain_batch=8",
         "diffusion.sample_steps=2", "eval.replications=1", "eval.mm_num_texts=2", "eval.mm_num_gens=10",
         "eval.timing_prompts=1", "eval.diversity_times=10", "inversion.test_motions=2", "inversion.steps=2",
         "inversion.styles=1", "inversion.generations=2", "mate.probe_captions=2", "lamp_t2m.iterations=2",
         "lamp_m2t.beams=2",
         # the paper's captioner LM is a pretrained OPT-2.7B, frozen (--llm DIR); the offline stand-in
         # pretrained here at OPT-2.7B's sizes would need ~43 GB for weights, gradients and AdamW's
         # moments (it was killed at 24 GB): a small one stands in, as in the tiny preset
         "lamp_m2t.lm_width=256", "lamp_m2t.lm_layers=2", "lamp_m2t.lm_heads=4", "lamp_m2t.lm_ff=1024"]
STAGES = ("evaluator", "vae", "diffusion", "projector", "lamp_vq", "lamp", "lamp_t2m", "lamp_m2t_lm", "lamp_m2t",
          "atm", "mate", "lcm")


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.paper
def test_every_stage_of_the_paper_preset_runs(tmp_path):
    schedules = [f"{s}_train.{k}" for s in STAGES for k in ("steps=2", "batch_size=8")]
    out = tmp_path / "run"
    base = [sys.executable, str(ROOT / "train.py"), "--preset", "paper", "--device", "cpu",
            "--synthetic-dir", str(tmp_path / "data"), *_sets(STEPS + schedules)]
    done = subprocess.run(base + ["--stage", "all", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in train.ALL_ORDER:
        assert json.loads((out / f"{stage}.json").read_text())["wall_time_s"] >= 0, stage
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # kB on Linux
    assert peak_gb < PEAK_GB, f"the paper preset peaked at {peak_gb:.1f} GB resident (bound {PEAK_GB} GB)"

    # MLD's released checkpoint, at MLD's sizes (random weights in its key layout), imported and sampled
    from test_diffusion import mld_denoiser_state_dict
    from test_vae import mld_vae_state_dict
    text_dim = json.loads((out / "text_encoder" / "config.json").read_text()).get("projection_dim", 768)
    sd = {**{f"vae.{k}": v for k, v in mld_vae_state_dict().items()},
          **{f"denoiser.{k}": v for k, v in mld_denoiser_state_dict(text_dim=text_dim).items()}}
    torch.save({"state_dict": sd}, tmp_path / "mld.ckpt")
    imported = tmp_path / "imported"
    imported.mkdir()
    (imported / "text_encoder").symlink_to(out / "text_encoder")
    for stage, extra in (("import", ["--mld", str(tmp_path / "mld.ckpt")]),
                         ("sample", ["--text", "a person walks forward", "--length", "40", "--no-realign"])):
        done = subprocess.run(base + ["--stage", stage, "--out", str(imported), *extra], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, stage + ": " + done.stdout[-3000:] + done.stderr[-3000:]
    assert (imported / "samples").is_dir()
