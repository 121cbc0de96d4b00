"""runfolder.py: the training latents encoded once per vae.pt and shared by the stages."""
import types

import pytest
import torch

import config
import runfolder


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
    monkeypatch.setattr(runfolder, "load_model", lambda run, name: f"the {name}")
    monkeypatch.setattr(runfolder, "open_split", lambda run, name: split)
    monkeypatch.setattr(runfolder.vae, "encode_dataset",
                        lambda model, dataset, device: calls.append(model) or (torch.zeros(3, 1, 2), torch.ones(3, 1, 2)))
    run = types.SimpleNamespace(out=tmp_path, cache={}, loaded={}, device="cpu",
                                cfg=config.build_config("tiny", ["run.seed=7"]))
    (tmp_path / "vae.pt").write_bytes(b"first")
    first = runfolder.training_latents(run)
    assert runfolder.training_latents(run) is first and len(calls) == 1 and split.reseeds == [7]
    (tmp_path / "vae.pt").write_bytes(b"a longer second checkpoint")
    runfolder.training_latents(run)
    assert len(calls) == 2
    (tmp_path / "vae.pt").unlink()
    monkeypatch.setattr(runfolder, "load_model", lambda run, name: (_ for _ in ()).throw(FileNotFoundError("no vae.pt")))
    with pytest.raises(FileNotFoundError, match="no vae.pt"):
        runfolder.training_latents(run)
