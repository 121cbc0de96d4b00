"""Fault injection: every loader given truncated, empty, wrong-dtype and garbage files; `fit`
interrupted between steps and during a checkpoint write; each configuration range. Every case
asserts the error type and that the message names the file, line or field."""
import os
import re
import types

import numpy as np
import pytest
import torch

import config
import data
import loop
import runfolder
import train

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


@pytest.mark.parametrize("case", ["truncated", "empty", "garbage", "code"])
def test_a_broken_checkpoint_names_the_file_and_the_stage(tmp_path, case):
    good = tmp_path / "good.pt"
    loop.save_checkpoint(good, {"model": {"w": torch.ones(3)}, "step": 1, "done": True})
    path, marker = tmp_path / "vae.pt", tmp_path / "ran"
    content = {"truncated": good.read_bytes()[:100], "empty": b"", "garbage": b"PK\x03\x04 not a zip" * 20}
    if case == "code":
        torch.save({"model": Evil(marker), "step": 1, "done": True}, path)
    else:
        path.write_bytes(content[case])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*--stage vae"):
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
