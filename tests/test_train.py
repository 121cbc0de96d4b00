"""train.py: configuration overrides, checkpoints, resume, and the command line's errors."""
import dataclasses
import types

import pytest
import torch

import train


def test_overrides_are_type_checked():
    cfg = train.build_config("paper", ["vae.n_layers=3", "projector.lambda_var=0", "vae_train.lr=3e-4",
                                       "diffusion.set_alpha_to_one=true", "projector.kind=mlp"])
    assert cfg.vae.n_layers == 3 and isinstance(cfg.vae.n_layers, int)
    assert cfg.projector.lambda_var == 0.0 and isinstance(cfg.projector.lambda_var, float)
    assert cfg.vae_train.lr == 3e-4
    assert cfg.diffusion.set_alpha_to_one is True
    assert cfg.projector.kind == "mlp"
    assert train.RunConfig().vae.n_layers == 9, "overrides must not leak into the defaults"


@pytest.mark.parametrize("item, message", [
    ("vae.n_layers=three", "expected int"),
    ("vae.depth=3", "unknown config key 'vae.depth'"),
    ("nope.x=1", "unknown config section 'nope'"),
    ("vae.n_layers", "expected section.field=value"),
    ("diffusion.set_alpha_to_one=maybe", "expected bool"),
])
def test_bad_overrides_are_rejected(item, message):
    with pytest.raises(ValueError, match=message):
        train.build_config("paper", [item])


def test_presets_only_name_existing_fields():
    for name, overrides in train.PRESETS.items():
        train.apply_overrides(train.RunConfig(), overrides)  # raises on an unknown key or bad type


def test_checkpoint_is_atomic_and_safe(tmp_path):
    path = tmp_path / "x.pt"
    train.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {"a": 1, "t": (1, 2)}, "step": 3,
                                 "done": True})
    assert not list(tmp_path.glob("*.tmp"))
    state = train.load_checkpoint(path, "vae")
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="--stage diffusion"):
        train.load_checkpoint(tmp_path / "missing.pt", "diffusion")


@dataclasses.dataclass
class ToyConfig:
    width: int = 3


def _toy_run(tmp_path, resume: bool):
    return types.SimpleNamespace(out=tmp_path, resume=resume, device=torch.device("cpu"), loaded={},
                                 cfg=train.build_config("tiny", []), rank=0, world=1)


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

    sched = train.Schedule(steps=10, batch_size=8, lr=1e-2, log_every=5, ckpt_every=2)
    with pytest.raises(KeyboardInterrupt):
        train.fit(_toy_run(tmp_path, False), "toy", model, ToyConfig(), loss_fn, _toy_stream(), sched, {})
    state = train.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert state["step"] == 4 and not state["done"]
    train.fit(_toy_run(tmp_path, True), "toy", model, ToyConfig(), loss_fn, _toy_stream(), sched, {})
    assert "resuming from" in capsys.readouterr().out
    state = train.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert state["step"] == 10 and state["done"] and state["config"] == {"width": 3}
    assert calls["n"] == 6 + 6, "resumed run should do exactly the 6 remaining steps"


def test_cosine_learning_rate_by_hand():
    """lr (1 + cos(pi s / S)) / 2 with S = 100, lr = 1e-3: 1e-3 at s = 0, 5e-4 at s = 50,
    (1 + cos(pi / 4)) / 2 * 1e-3 = 8.5355e-4 at s = 25, 0 at s = 100; constant without `cosine`."""
    sched = train.Schedule(steps=100, batch_size=8, lr=1e-3, cosine=True)
    assert train.learning_rate(sched, 0) == pytest.approx(1e-3)
    assert train.learning_rate(sched, 25) == pytest.approx(8.535534e-4, rel=1e-6)
    assert train.learning_rate(sched, 50) == pytest.approx(5e-4)
    assert train.learning_rate(sched, 100) == pytest.approx(0.0, abs=1e-12)
    assert train.learning_rate(dataclasses.replace(sched, cosine=False), 50) == 1e-3


def test_fit_follows_the_cosine_schedule_across_a_resume(tmp_path, monkeypatch):
    """The rate is a function of the step, so a resumed run uses the same rates as an
    uninterrupted one: record the rate each update uses in both and compare."""
    optimizers = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: optimizers.append(real_adamw(*a, **k)) or optimizers[-1])
    sched = train.Schedule(steps=8, batch_size=8, lr=1e-2, log_every=4, ckpt_every=2, cosine=True)

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
            train.fit(_toy_run(out, False), "toy", model, ToyConfig(), loss_fn, _toy_stream(), sched, {})
        except KeyboardInterrupt:
            train.fit(_toy_run(out, True), "toy", model, ToyConfig(), loss_fn, _toy_stream(), sched, {})
        return seen

    straight, resumed = rates(tmp_path / "a", None), rates(tmp_path / "b", 6)
    assert straight == pytest.approx([train.learning_rate(sched, s) for s in range(8)])
    assert resumed == straight[:5] + straight[4:], \
        "interrupted in update 6, resumed from the step-4 checkpoint: updates 5..8 again, same rates"


def test_fit_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 1)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return (loss * float("nan") if calls["n"] == 4 else loss), {}

    sched = train.Schedule(steps=10, batch_size=8, lr=1e-2, log_every=5, ckpt_every=2)
    with pytest.raises(train.NonFiniteLoss, match="step 4"):
        train.fit(_toy_run(tmp_path, False), "toy", model, ToyConfig(), loss_fn, _toy_stream(), sched, {})
    state = train.load_checkpoint(tmp_path / "toy.pt", "toy")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_missing_prerequisite_names_the_stage(tmp_path, capsys):
    code = train.main(["--stage", "diffusion", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "nowhere")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_bad_override_on_the_command_line(capsys):
    assert train.main(["--stage", "data", "--set", "vae.depth=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err


class _Split(list):
    """A stand-in split that records the seeds it is restarted with."""

    def __init__(self, n: int = 3):
        super().__init__(["clip"] * n)
        self.reseeds = []

    def reseed(self, seed: int) -> None:
        self.reseeds.append(seed)


def test_training_latents_are_encoded_once_per_vae_checkpoint(tmp_path, monkeypatch):
    """The diffusion, projector and mate stages share one encoding of the train split, drawn
    from a freshly seeded split; a new vae.pt (another size or time) is encoded again; a missing
    one is load_model's error."""
    calls, split = [], _Split()
    monkeypatch.setattr(train, "load_model", lambda run, name: f"the {name}")
    monkeypatch.setattr(train, "open_split", lambda run, name: split)
    monkeypatch.setattr(train.vae, "encode_dataset",
                        lambda model, dataset, device: calls.append(model) or (torch.zeros(3, 1, 2), torch.ones(3, 1, 2)))
    run = types.SimpleNamespace(out=tmp_path, cache={}, loaded={}, device="cpu",
                                cfg=train.build_config("tiny", ["run.seed=7"]))
    (tmp_path / "vae.pt").write_bytes(b"first")
    first = train.training_latents(run)
    assert train.training_latents(run) is first and len(calls) == 1 and split.reseeds == [7]
    (tmp_path / "vae.pt").write_bytes(b"a longer second checkpoint")
    train.training_latents(run)
    assert len(calls) == 2
    (tmp_path / "vae.pt").unlink()
    monkeypatch.setattr(train, "load_model", lambda run, name: (_ for _ in ()).throw(FileNotFoundError("no vae.pt")))
    with pytest.raises(FileNotFoundError, match="no vae.pt"):
        train.training_latents(run)


def test_each_stage_restarts_the_splits_random_choices(tmp_path, monkeypatch):
    """run_stage reseeds every split opened earlier in the process with the run's seed before
    the stage runs, so a stage draws the same crops alone, within --stage all, or after --resume."""
    split, seen = _Split(), []
    monkeypatch.setitem(train.STAGE_FUNCTIONS, "data", lambda run: seen.append(list(split.reseeds)) or {})
    run = types.SimpleNamespace(out=tmp_path / "run", cache={"split:train": split, "other": object()}, rank=0,
                                cfg=train.build_config("tiny", ["run.seed=5"]), args=types.SimpleNamespace(
                                    text_encoder="clip", evaluator="evaluator"))
    train.run_stage(run, "data")
    assert seen == [[5]]
