"""Tests for safe_pickle.py: crafted pickles that would run a command do not, a Lightning-like
checkpoint loads with its tensors intact and its config objects as placeholders, plain pickles
and arrays round-trip, and every unreadable file is a ValueError naming it."""
import builtins
import collections
import os
import pathlib
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

from safe_pickle import Placeholder, load_pickle, load_torch_checkpoint


class RunsCommand:
    """Unpickling this with plain pickle runs `touch target` (os.system)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class ExecsCode:
    """Unpickling this with plain pickle writes target (builtins.exec)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return builtins.exec, (f"open({self.target!r}, 'w').write('pwned')",)


class WritesWithPathlib:
    """Unpickling this with plain pickle writes target through pathlib, a global that is on no
    refusal list: it must come out inert."""

    def __init__(self, target):
        self.target = pathlib.Path(target)

    def __reduce__(self):
        return pathlib.Path.write_text, (self.target, "pwned")


class FakeDictConfig:
    """Pickles like OmegaConf's DictConfig: NEWOBJ of the class, then BUILD with a state dict
    holding nested objects of other classes."""

    def __init__(self, content: dict):
        self._content = content
        self._metadata = FakeMetadata(key=None, flags={"readonly": False})


class FakeMetadata:
    def __init__(self, key, flags):
        self.key, self.flags = key, flags


def _same_path_pattern(path) -> str:
    return re.escape(str(path))


@pytest.mark.parametrize("payload", [RunsCommand, ExecsCode], ids=["os.system", "builtins.exec"])
def test_a_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path, payload):
    target = tmp_path / "pwned"
    file = tmp_path / "evil.pkl"
    file.write_bytes(pickle.dumps({"words": ["a"], "x": payload(target)}, protocol=2))
    with pytest.raises(ValueError, match=_same_path_pattern(file)) as info:
        load_pickle(file)
    assert "refused" in str(info.value)
    assert not target.exists()
    # the torch route: the same object inside a torch.save checkpoint
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": payload(target)}, ckpt)
    with pytest.raises(ValueError, match=_same_path_pattern(ckpt)) as info:
        load_torch_checkpoint(ckpt)
    assert "refused" in str(info.value)
    assert not target.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol", [2, 4])
def test_an_unlisted_global_that_would_write_a_file_stays_inert(tmp_path, protocol):
    """Protocol 4 names pathlib's Path.write_text directly: it becomes a placeholder class, and
    "calling" it gives a placeholder. Protocol 2 reaches it as builtins.getattr(Path, "write_text"):
    getattr becomes a placeholder, whose result is not callable, so the file fails to load."""
    target = tmp_path / "pwned"
    file = tmp_path / "evil.pkl"
    file.write_bytes(pickle.dumps(WritesWithPathlib(target), protocol=protocol))
    if protocol == 4:
        result = load_pickle(file)
        assert isinstance(result, Placeholder) and result.source == "pathlib.Path.write_text"
    else:
        with pytest.raises(ValueError, match=_same_path_pattern(file)):
            load_pickle(file)
    assert not target.exists()
    ckpt = tmp_path / "evil.ckpt"  # torch's restricted unpickler refuses the protocol-4 version outright
    torch.save({"x": WritesWithPathlib(target)}, ckpt, pickle_protocol=protocol)
    with pytest.raises(ValueError, match=_same_path_pattern(ckpt)):
        load_torch_checkpoint(ckpt)
    assert not target.exists()


def test_a_lightning_like_checkpoint_keeps_tensors_and_stubs_the_config(tmp_path):
    state_dict = collections.OrderedDict([("vae.skel_embedding.weight", torch.randn(4, 3)),
                                          ("denoiser.pos", torch.randn(3, 4))])
    config = FakeDictConfig({"latent_dim": [1, 256], "nested": FakeDictConfig({"lr": 1e-4})})
    ckpt = {"epoch": 6, "global_step": 120, "pytorch-lightning_version": "1.8.6",
            "state_dict": state_dict,
            "hyper_parameters": {"cfg": config, "hparams_type": FakeDictConfig},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4, 3)}},
                                  "param_groups": [{"lr": 1e-4, "params": [0]}]}],
            "callbacks": {"stats": np.arange(3.0)}}
    path = tmp_path / "mld.ckpt"
    torch.save(ckpt, path)
    out = load_torch_checkpoint(path)
    assert list(out["state_dict"]) == list(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(out["state_dict"][key], value)
    assert out["epoch"] == 6 and out["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4
    np.testing.assert_array_equal(out["callbacks"]["stats"], np.arange(3.0))
    cfg = out["hyper_parameters"]["cfg"]
    assert isinstance(cfg, Placeholder) and not isinstance(cfg, FakeDictConfig)
    assert cfg.source == f"{FakeDictConfig.__module__}.FakeDictConfig"
    assert not hasattr(cfg, "_content"), "a placeholder ignores the pickled state"
    assert issubclass(out["hyper_parameters"]["hparams_type"], Placeholder), "a class reference stays a class"


def test_a_tensor_only_checkpoint_loads_directly(tmp_path):
    path = tmp_path / "finest.tar"
    torch.save({"text_encoder": {"hidden": torch.randn(2, 1, 5)}, "epoch": 3}, path)
    out = load_torch_checkpoint(path)
    assert out["epoch"] == 3 and out["text_encoder"]["hidden"].shape == (2, 1, 5)


def test_plain_pickles_arrays_and_unknown_classes(tmp_path):
    """GloVe's files are a list of words and a dict word -> index (protocol 3, no globals);
    arrays and OrderedDicts rebuild for real; a class from a module that does not even exist
    becomes a placeholder without being imported."""
    words, idx = ["sos", "eos", "unk", "walk"], {"sos": 0, "eos": 1, "unk": 2, "walk": 3}
    (tmp_path / "words.pkl").write_bytes(pickle.dumps(words, protocol=3))
    (tmp_path / "idx.pkl").write_bytes(pickle.dumps(idx, protocol=3))
    assert load_pickle(tmp_path / "words.pkl") == words
    assert load_pickle(tmp_path / "idx.pkl") == idx
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5),
              "od": collections.OrderedDict(x=1)}
    (tmp_path / "arrays.pkl").write_bytes(pickle.dumps(arrays, protocol=4))
    out = load_pickle(tmp_path / "arrays.pkl")
    np.testing.assert_array_equal(out["a"], arrays["a"])
    assert out["a"].dtype == np.float32 and out["s"] == 2.5 and out["od"] == arrays["od"]
    # GLOBAL 'no_such_module_xyz Thing', EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, BUILD, STOP
    ghost = b"\x80\x02cno_such_module_xyz\nThing\n)\x81}b."
    (tmp_path / "ghost.pkl").write_bytes(ghost)
    thing = load_pickle(tmp_path / "ghost.pkl")
    assert isinstance(thing, Placeholder) and thing.source == "no_such_module_xyz.Thing"


def test_unreadable_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a pickle at all" * 10)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    full = tmp_path / "full.ckpt"
    torch.save({"w": torch.randn(100, 100)}, full)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps(list(range(100)))[:-20])
    for path in (garbage, empty, truncated, tmp_path / "missing.ckpt"):
        with pytest.raises(ValueError, match=_same_path_pattern(path)):
            load_torch_checkpoint(path)
    for path in (garbage, empty, broken, tmp_path / "missing.pkl"):
        with pytest.raises(ValueError, match=_same_path_pattern(path)):
            load_pickle(path)
    # a zip whose data.pkl was swapped for a refused payload is caught by the listing step
    swapped = tmp_path / "swapped.ckpt"
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(swapped, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(RunsCommand(tmp_path / "pwned"), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="refused"):
        load_torch_checkpoint(swapped)
    assert not (tmp_path / "pwned").exists()
