"""train.py: the command line's errors, and what run_stage does around every stage."""
import re
import subprocess
import sys
import types
from pathlib import Path

import torch

import cli
import config
import runfolder
import train
from test_runfolder import _Split


def test_missing_prerequisite_names_the_stage(tmp_path, capsys):
    code = train.main(["--stage", "diffusion", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "nowhere")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_bad_override_on_the_command_line(capsys):
    assert train.main(["--stage", "data", "--set", "vae.depth=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_each_stage_restarts_the_splits_random_choices(tmp_path, monkeypatch):
    """run_stage reseeds every split opened earlier in the process with the run's seed before
    the stage runs, so a stage draws the same crops alone, within --stage all, or after --resume."""
    split, seen = _Split(), []
    monkeypatch.setitem(train.STAGES, "data", lambda run: seen.append(list(split.reseeds)) or {})
    run = types.SimpleNamespace(out=tmp_path / "run", cache={"split:train": split, "other": object()},
                                device=torch.device("cpu"), cfg=config.build_config("tiny", ["run.seed=5"]), args=types.SimpleNamespace(
                                    text_encoder="clip", evaluator="evaluator"))
    runfolder.run_stage(run, "data", train.STAGES["data"])
    assert seen == [[5]]


def test_the_command_line_knows_every_stage_and_preset():
    assert sorted(cli.STAGES) == sorted(train.STAGES)
    assert sorted(cli.PRESETS) == sorted(config.PRESETS)


def test_help_answers_before_torch_loads():
    """`python train.py --help` parses in cli.py alone (issue 31: it took ~7 s importing everything)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "train.py", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "--stage" in done.stdout and "lamp_t2m" in done.stdout
    assert not re.search(r"\|\s+torch$", done.stderr, re.M), "torch was imported for --help"
