"""loop.py: checkpoints written atomically and read safely, fit's resume (the same updates and
rates as an uninterrupted run), its stop on a non-finite loss, the cosine rate by hand."""
import dataclasses

import pytest
import torch

import loop


def test_checkpoint_is_atomic_and_safe(tmp_path):
    path = tmp_path / "x.pt"
    loop.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {"a": 1, "t": (1, 2)}, "step": 3,
                                 "done": True})
    assert not list(tmp_path.glob("*.tmp"))
    state = loop.load_checkpoint(path, "vae")
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="--stage diffusion"):
        loop.load_checkpoint(tmp_path / "missing.pt", "diffusion")


@dataclasses.dataclass
class ToyConfig:
    width: int = 3


def _fit(out, resume, model, loss_fn, sched):
    return loop.fit(out / "toy.pt", model, loss_fn, _toy_stream(), sched, config=ToyConfig(), meta={},
                    stage="toy", resume=resume)


def _toy_stream():
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.randn(8, 3, generator=g)
        yield {"x": x, "y": x.sum(1, keepdim=True)}


def test_fit_resumes_from_the_last_checkpoint(tmp_path, capsys):
    """An interruption after step 5 with checkpoints every 2 steps leaves step 4 on disk;
    --resume continues from step 4 and finishes at the full step count."""
    model = torch.nn.Linear(3, 1)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return loss, {"mse": loss.detach()}

    sched = loop.Schedule(steps=10, batch_size=8, lr=1e-2, log_every=5, ckpt_every=2)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, False, model, loss_fn, sched)
    state = loop.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert state["step"] == 4 and not state["done"]
    _fit(tmp_path, True, model, loss_fn, sched)
    assert "resuming from" in capsys.readouterr().out
    state = loop.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert state["step"] == 10 and state["done"] and state["config"] == {"width": 3}
    assert calls["n"] == 6 + 6, "resumed run should do exactly the 6 remaining steps"


def test_cosine_learning_rate_by_hand():
    """lr (1 + cos(pi s / S)) / 2 with S = 100, lr = 1e-3: 1e-3 at s = 0, 5e-4 at s = 50,
    (1 + cos(pi / 4)) / 2 * 1e-3 = 8.5355e-4 at s = 25, 0 at s = 100; constant without `cosine`."""
    sched = loop.Schedule(steps=100, batch_size=8, lr=1e-3, cosine=True)
    assert loop.learning_rate(sched, 0) == pytest.approx(1e-3)
    assert loop.learning_rate(sched, 25) == pytest.approx(8.535534e-4, rel=1e-6)
    assert loop.learning_rate(sched, 50) == pytest.approx(5e-4)
    assert loop.learning_rate(sched, 100) == pytest.approx(0.0, abs=1e-12)
    assert loop.learning_rate(dataclasses.replace(sched, cosine=False), 50) == 1e-3


def test_fit_follows_the_cosine_schedule_across_a_resume(tmp_path, monkeypatch):
    """The rate is a function of the step, so a resumed run uses the same rates as an
    uninterrupted one: record the rate each update uses in both and compare."""
    optimizers = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: optimizers.append(real_adamw(*a, **k)) or optimizers[-1])
    sched = loop.Schedule(steps=8, batch_size=8, lr=1e-2, log_every=4, ckpt_every=2, cosine=True)

    def rates(out, interrupt_at):
        model, seen, calls = torch.nn.Linear(3, 1), [], {"n": 0}

        def loss_fn(batch):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            seen.append(optimizers[-1].param_groups[0]["lr"])
            return ((model(batch["x"]) - batch["y"]) ** 2).mean(), {}

        out.mkdir()
        try:
            _fit(out, False, model, loss_fn, sched)
        except KeyboardInterrupt:
            _fit(out, True, model, loss_fn, sched)
        return seen

    straight, resumed = rates(tmp_path / "a", None), rates(tmp_path / "b", 6)
    assert straight == pytest.approx([loop.learning_rate(sched, s) for s in range(8)])
    assert resumed == straight[:5] + straight[4:], \
        "interrupted in update 6, resumed from the step-4 checkpoint: updates 5..8 again, same rates"


def test_fit_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 1)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return (loss * float("nan") if calls["n"] == 4 else loss), {}

    sched = loop.Schedule(steps=10, batch_size=8, lr=1e-2, log_every=5, ckpt_every=2)
    with pytest.raises(loop.NonFiniteLoss, match="step 4"):
        _fit(tmp_path, False, model, loss_fn, sched)
    state = loop.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_micro_batches_give_the_update_of_the_whole_batch(tmp_path):
    """Gradient accumulation: 4 micro-batches of 2 rows (per-row-mean loss, gradients of loss / 4
    summed) take the same AdamW steps as the batch of 8, and log the same mean loss."""
    def run(micro_batch: int, out):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        seen = []

        def loss_fn(batch):
            seen.append(len(batch["x"]))
            loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
            return loss, {"mse": loss.detach()}

        sched = loop.Schedule(steps=5, batch_size=8, lr=1e-2, log_every=100, micro_batch=micro_batch)
        losses = loop.fit(out / "toy.pt", model, loss_fn, _toy_stream(), sched, config=ToyConfig(), meta={},
                          stage="toy")
        return model.state_dict(), seen, losses

    whole, seen_whole, logged_whole = run(0, tmp_path / "a")
    micro, seen_micro, logged_micro = run(2, tmp_path / "b")
    assert seen_whole == [8] * 5 and seen_micro == [2] * 20
    for name, value in whole.items():
        torch.testing.assert_close(micro[name], value, rtol=1e-5, atol=1e-6)
    assert logged_micro == pytest.approx(logged_whole, rel=1e-5)
    with pytest.raises(ValueError, match="micro-batches of 3"):
        run(3, tmp_path / "c")


def test_fit_ends_with_its_time_memory_and_flops(tmp_path, capsys):
    """The summary line: the schedule, seconds per step after the first, the peak memory, and with
    count_flops the first step's FLOPs: 2 x 8 x 3 x 4 multiply-adds forward, twice that backward."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)

    def loss_fn(batch):
        return model(batch["x"]).square().mean(), {}

    sched = loop.Schedule(steps=3, batch_size=8, lr=1e-2, log_every=100, micro_batch=4)
    loop.fit(tmp_path / "toy.pt", model, loss_fn, _toy_stream(), sched, config=ToyConfig(), meta={}, stage="toy",
             lr_key="toy_train.lr", count_flops=True)
    line = [l for l in capsys.readouterr().out.splitlines() if "s/step" in l][0]
    assert line.startswith("[toy] toy_train: 3 steps of batch 8 (micro-batch 4, fp32), ")
    assert " s/step after the first, peak " in line and " GiB resident (process)" in line
    # forward x @ W^T: 2*8*3*4 = 192; backward: dW (192; x needs no gradient) -> 384 FLOPs, in two micro-batches
    assert line.endswith(f", {384 / 1e9:.4g} GFLOP in the first step"), line
