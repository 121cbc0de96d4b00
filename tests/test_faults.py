"""Fault injection: every loader given truncated, empty, wrong-dtype and garbage files; `fit`
interrupted between steps and during a checkpoint write; each configuration range. Every case
asserts the error type and that the message names the file, line or field."""
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import config
import data
import evaluation
import loop
import runfolder
import train

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------
# Loaders: one per kind of file


def bad_files(tmp_path, good: bytes) -> dict:
    """The four broken variants of a good file's bytes."""
    cases = {"truncated": good[: len(good) // 2], "empty": b"", "garbage": b"\x00not an array at all" * 9}
    for name, content in cases.items():
        (tmp_path / f"{name}.npy").write_bytes(content)
    np.save(tmp_path / "wrong_dtype.npy", np.array(["a", "b"]))
    return {name: tmp_path / f"{name}.npy" for name in (*cases, "wrong_dtype")}


@pytest.mark.parametrize("case", ["truncated", "empty", "garbage", "wrong_dtype"])
def test_motion_and_statistics_files_name_the_file(tmp_path, case):
    np.save(tmp_path / "good.npy", np.zeros((60, 263), np.float32))
    path = bad_files(tmp_path, (tmp_path / "good.npy").read_bytes())[case]
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data._load_motion(path, 263)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.load_array(path, "Mean.npy", mmap=True)  # dataset_summary reads shapes memory-mapped


def test_a_dataset_with_a_broken_file_names_it(tmp_path):
    """The reader on a layout whose Mean.npy is truncated, then whose caption file has a bad
    time field, then is not UTF-8: each error names the file (and the line)."""
    for sub in ("new_joint_vecs", "texts"):
        (tmp_path / sub).mkdir()
    np.save(tmp_path / "new_joint_vecs" / "A.npy", np.zeros((60, 263), np.float32))
    np.save(tmp_path / "Mean.npy", np.zeros(263, np.float32))
    np.save(tmp_path / "Std.npy", np.ones(263, np.float32))
    (tmp_path / "train.txt").write_text("A\n")
    (tmp_path / "texts" / "A.txt").write_text("a person walks#a/DET#0.0#0.0\nsomeone walks#x/X#abc#2.0\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'texts' / 'A.txt'}:2") + ".*seconds"):
        data.MotionTextDataset(tmp_path, "train")
    (tmp_path / "texts" / "A.txt").write_bytes("une personne marche#x/X#0#0\n".encode("latin-1") + b"\xe9\n")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "texts" / "A.txt")) + ".*UTF-8"):
        data.MotionTextDataset(tmp_path, "train")
    (tmp_path / "Mean.npy").write_bytes((tmp_path / "Mean.npy").read_bytes()[:90])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "Mean.npy"))):
        data.MotionTextDataset(tmp_path, "train")


class Evil:
    """A pickle that would run a command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("case, reason", [
    ("truncated", "truncated or damaged"), ("empty", "not a checkpoint at all: an empty file"),
    ("damaged", "truncated or damaged"), ("random", "not a checkpoint at all: not a torch archive"),
    ("code", "holds Python objects")])
def test_a_broken_checkpoint_names_the_file_the_reason_and_the_stage(tmp_path, case, reason):
    """Each kind of broken file gets its own reason (random bytes used to be refused as holding
    Python objects)."""
    good = tmp_path / "good.pt"
    loop.save_checkpoint(good, {"model": {"w": torch.ones(3)}, "step": 1, "done": True})
    path, marker = tmp_path / "vae.pt", tmp_path / "ran"
    content = {"truncated": good.read_bytes()[:100], "empty": b"", "damaged": b"PK\x03\x04 not a zip" * 20,
               "random": bytes(np.random.default_rng(0).integers(0, 128, 4096, dtype=np.uint8))}
    if case == "code":
        torch.save({"model": Evil(marker), "step": 1, "done": True}, path)
    else:
        path.write_bytes(content[case])
    with pytest.raises(ValueError, match=re.escape(str(path)) + f".*{re.escape(reason)}.*--stage vae"):
        loop.load_checkpoint(path, "vae")
    assert not marker.exists(), "loading a checkpoint must never run its code"


# ----------------------------------------------------------------------------
# fit: interrupted, resumed, retrained, its provenance


class Noisy(torch.nn.Module):
    """A model whose training draws from the global RNG (dropout), like the real ones."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def stream(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(8, 3, generator=g)
        yield {"x": x, "y": x.sum(1, keepdim=True)}


def toy_run(out, resume=False):
    return types.SimpleNamespace(out=out, resume=resume, device=torch.device("cpu"), loaded={}, cache={},
                                 cfg=config.build_config("tiny", []))


def train_toy(out, sched, interrupt_at=None, resume=False):
    """fit a fresh Noisy (seeded like a stage) on the toy stream; the loss adds noise from the
    global RNG as the diffusion loss does. interrupt_at: the call that raises KeyboardInterrupt."""
    torch.manual_seed(0)
    model, calls = Noisy(), {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt  # as a SIGKILL between two steps: nothing after the last checkpoint
        noise = 0.01 * torch.randn_like(batch["y"])
        return ((model(batch["x"]) - batch["y"] - noise) ** 2).mean(), {}

    runfolder.fit(toy_run(out, resume), "toy", model, ToyConfig(), loss_fn, stream(), sched, {})
    return model


class ToyConfig:
    pass


def test_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.dataclasses, "asdict", lambda cfg: {})
    sched = loop.Schedule(steps=23, batch_size=8, lr=1e-2, log_every=100, ckpt_every=500)  # every 5 steps
    straight = train_toy(tmp_path / "a", sched)
    with pytest.raises(KeyboardInterrupt):
        train_toy(tmp_path / "b", sched, interrupt_at=13)
    assert loop.load_checkpoint(tmp_path / "b" / "toy.pt", "toy")["step"] == 10  # min(500, 23 // 4) = 5
    resumed = train_toy(tmp_path / "b", sched, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_write_killed_midway_keeps_the_last_one(tmp_path, monkeypatch):
    """torch.save dies after writing half the temporary file: the previous checkpoint is
    untouched and loads; the stray .tmp is overwritten by the next write."""
    path = tmp_path / "toy.pt"
    loop.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 5, "done": False})
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as handle:
            handle.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        loop.save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 10, "done": False})
    monkeypatch.setattr(torch, "save", real_save)
    assert loop.load_checkpoint(path, "toy")["step"] == 5
    loop.save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 10, "done": True})
    assert loop.load_checkpoint(path, "toy")["step"] == 10


def test_a_corrupt_checkpoint_is_replaced_by_a_rerun_and_named_by_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop.dataclasses, "asdict", lambda cfg: {})
    sched = loop.Schedule(steps=4, batch_size=8, lr=1e-2, log_every=100)
    (tmp_path / "toy.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="toy.pt.*--stage toy"):
        train_toy(tmp_path, sched, resume=True)
    train_toy(tmp_path, sched)  # without --resume: retrains, the old file kept until done
    assert "kept as" in capsys.readouterr().out
    assert loop.load_checkpoint(tmp_path / "toy.pt", "toy")["done"]
    assert not (tmp_path / "toy.prev.pt").exists()


def test_a_retrained_prerequisite_is_named(tmp_path, monkeypatch, capsys):
    """diffusion.pt records the vae.pt it was trained on; replacing vae.pt makes loading
    diffusion.pt warn and name the stage to rerun."""
    monkeypatch.setattr(loop.dataclasses, "asdict", lambda cfg: {})
    run = toy_run(tmp_path)
    loop.save_checkpoint(tmp_path / "vae.pt", {"model": {"w": torch.ones(2)}, "step": 1, "done": True, "meta": {}})
    runfolder.finished(run, "vae")  # what a stage does when it loads the VAE
    model = torch.nn.Linear(3, 1)
    loss_fn = lambda b: (((model(b["x"]) - b["y"]) ** 2).mean(), {})  # noqa: E731
    runfolder.fit(run, "diffusion", model, ToyConfig(), loss_fn, stream(), loop.Schedule(steps=2, batch_size=8, lr=1e-2), {})
    runfolder.finished(toy_run(tmp_path), "diffusion")
    assert "warning" not in capsys.readouterr().out
    loop.save_checkpoint(tmp_path / "vae.pt", {"model": {"w": torch.zeros(2)}, "step": 1, "done": True, "meta": {}})
    runfolder.finished(toy_run(tmp_path), "diffusion")
    assert "--stage diffusion" in capsys.readouterr().out


# ----------------------------------------------------------------------------
# The configuration and the command line, checked before any work


@pytest.mark.parametrize("setting, field", [
    ("vae_train.steps=0", "vae_train.steps"), ("diffusion_train.batch_size=0", "diffusion_train.batch_size"),
    ("eval.replications=0", "eval.replications"), ("eval.mm_num_gens=5", "eval.mm_num_gens"),
    ("diffusion.cond_drop=1.5", "diffusion.cond_drop"), ("projector_train.lr=0", "projector_train.lr"),
    ("vae.lambda_kl=-1", "vae.lambda_kl"), ("data.min_len=300", "data.max_len"),
    ("lcm.w_min=20", "lcm.w_max"), ("atm.eps=2", "atm.eps")])
def test_each_range_names_its_field(setting, field, capsys):
    with pytest.raises(ValueError, match=re.escape(field)):
        config.build_config("tiny", [setting])
    assert train.main(["--stage", "eval", "--set", setting]) == 2
    assert field in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--num", "0"], "--num 0"), (["--text", ""], "empty prompt"), (["--device", "gpu"], "--device 'gpu'")])
def test_bad_arguments_are_named(args, message, capsys):
    assert train.main(["--stage", "sample", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_names_the_available_ones(capsys):
    assert train.main(["--stage", "sample", "--device", "cuda"]) == 2
    assert "this machine has cpu" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# The run folder under faults: a bad rate, a full or unwritable disk, two writers (issue 31)


def test_a_non_finite_loss_in_a_retraining_restores_the_previous_checkpoint(tmp_path, monkeypatch):
    """Retraining over a finished toy.pt moves it to toy.prev.pt; a NaN before this run's first
    checkpoint puts it back under its own name, and the message says so (it used to name a
    toy.pt that no longer existed)."""
    monkeypatch.setattr(loop.dataclasses, "asdict", lambda cfg: {})
    sched = loop.Schedule(steps=4, batch_size=8, lr=1e-2, log_every=100)
    train_toy(tmp_path, sched)
    before = loop.load_checkpoint(tmp_path / "toy.pt", "toy")
    model = torch.nn.Linear(3, 1)
    nan = lambda batch: ((model(batch["x"]) * float("nan")).mean(), {})  # noqa: E731
    with pytest.raises(loop.NonFiniteLoss, match=r"from before this run is back at .*toy\.pt.*\(vae_train\.lr\)"):
        loop.fit(tmp_path / "toy.pt", model, nan, stream(), sched, config=ToyConfig(), meta={}, stage="toy",
                 lr_key="vae_train.lr")
    after = loop.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert not (tmp_path / "toy.prev.pt").exists() and after["done"]
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])


def test_a_missing_checkpoint_names_the_prev_file_beside_it(tmp_path):
    loop.save_checkpoint(tmp_path / "vae.prev.pt", {"model": {}, "step": 3, "done": True})
    with pytest.raises(FileNotFoundError, match=r"vae\.prev\.pt .*rename it to vae\.pt"):
        loop.load_checkpoint(tmp_path / "vae.pt", "vae")


def test_a_full_disk_is_named_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    calls = []
    with pytest.raises(OSError, match=re.escape(str(tmp_path)) + r": 0 MiB free, the checkpoint needs"):
        loop.fit(tmp_path / "toy.pt", Noisy(), lambda b: calls.append(1), stream(),
                 loop.Schedule(steps=2, batch_size=8, lr=1e-2), config=ToyConfig(), meta={}, stage="toy")
    assert not calls and not list(tmp_path.iterdir()), "no work done, nothing written"


def test_an_unwritable_out_is_named_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"  # a folder under a file cannot be made (root can write anywhere else)
    assert train.main(["--stage", "data", "--out", str(out), "--synthetic-dir", str(tmp_path / "syn")]) == 2
    assert f"--out {out}: cannot write there" in capsys.readouterr().err
    assert not (tmp_path / "syn").exists(), "the dataset was not generated first"


def test_inf_and_nan_settings_are_refused_on_the_command_line(capsys):
    assert train.main(["--stage", "vae", "--set", "vae_train.lr=inf"]) == 2
    assert "vae_train.lr=inf: must be a finite number" in capsys.readouterr().err


def test_json_records_are_strict(tmp_path):
    """A NaN figure is written as null (JSON has no NaN), in STAGE.json and in results.json."""
    runfolder.write_json(tmp_path / "x.json", {"loss": float("nan"), "rows": [1.0, float("inf")]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"loss": None, "rows": [1.0, None]}
    evaluation.write_results(tmp_path, "t2m", {"Real": {"FID": (0.0, 0.0)}, "MLD": {"FID": (float("nan"), 0.0)}})
    rows = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))["t2m"]["rows"]
    assert rows["MLD"]["FID"] == [None, 0.0] and "| MLD | nan ± 0.000 |" in (tmp_path / "results.md").read_text()


def test_two_claims_of_one_name_never_coincide(tmp_path):
    names = [runfolder.claim(lambda k: tmp_path / f"run{k}", folder=True) for _ in range(3)]
    assert [p.name for p in names] == ["run1", "run2", "run3"] and all(p.is_dir() for p in names)
    assert runfolder.claim(lambda k: tmp_path / f"rec{k}.json").name == "rec1.json"
    assert runfolder.claim(lambda k: tmp_path / f"rec{k}.json").name == "rec2.json"


def _train_py(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_second_writer_on_one_folder_is_refused_at_once(tmp_path):
    """Two real train.py processes write into one --out: the second is refused before doing any
    work, naming the first's stage and pid (they used to run side by side and share temporary
    files); the lock dies with the process that held it (here killed mid-stage)."""
    common = ["--out", str(tmp_path / "run"), "--synthetic-dir", str(tmp_path / "syn"), "--device", "cpu",
              "--set", "data.synthetic_motions=60", "--set", "text.pretrain_steps=100000"]  # busy until killed
    first = _train_py("--stage", "data", *common)
    try:
        lock = tmp_path / "run" / ".lock"
        for _ in range(1200):  # until the first holds the lock (its imports take seconds)
            if lock.exists() and lock.read_text():
                break
            time.sleep(0.1)
        second = _train_py("--stage", "vae", *common)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"is in use: `python train.py --stage data` (pid {first.pid})" in err and "nothing was done" in err
        assert not (tmp_path / "run" / "vae.json").exists()
    finally:
        first.kill()
        first.communicate()
    run = types.SimpleNamespace(out=tmp_path / "run")
    with runfolder.writing(run, ["vae"]):  # free again
        assert "(pid " in lock.read_text()
