"""Reading downloaded pickles without running their code.

The files this project takes from other projects are pickles: MLD's released checkpoints
(PyTorch Lightning `.ckpt`: tensors beside OmegaConf configs and Lightning objects), Guo et
al.'s evaluator (`finest.tar`, written by torch.save) and its GloVe vocabulary
(`our_vab_words.pkl`, `our_vab_idx.pkl`, plain pickles). Unpickling runs code: a pickle names
globals ("module.name"), the unpickler imports them, and the file can have them called with
arguments of its choosing (`os.system("...")`). Python's pickle documentation ("Restricting
Globals") gives the remedy followed here: decide for every global what it may become.

- Allowed: what tensors, arrays and plain containers are made of. For torch checkpoints that is
  torch's own `weights_only` allow-list; numpy's array rebuilders and `collections.OrderedDict`
  are added for both kinds of file.
- Refused, the whole file with a ValueError: the modules and builtins that reach processes,
  files, imports or the interpreter (`REFUSED_MODULES`, `REFUSED_BUILTINS`). No checkpoint
  names them for a benign reason.
- Everything else becomes an inert stand-in: a `Placeholder` subclass that records the global's
  name; calling it, building or filling its instances ignores every argument and state. MLD's
  OmegaConf `hyper_parameters` come back as placeholders; the tensors around them are intact.

Nothing a file names is ever imported. Torch checkpoints go through torch's restricted unpickler
(`torch.load(..., weights_only=True)`), lent the placeholders through
`torch.serialization.safe_globals` as (stand-in, "module.name") pairs. Plain pickles go through
`RestrictedUnpickler`, whose allowed globals are all C types and functions, so a pickle's BUILD
instruction cannot rewrite the attributes of a Python function it was given.

Every failure (no such file, truncated, not a pickle, a refused global) is a ValueError naming
the file.

Design note: checkpoints are not read with torch.load(..., pickle_module=<a restricted
unpickler>, weights_only=False). torch's own restricted unpickler also checks which objects the
BUILD, SETITEMS and APPEND instructions may touch, which a `find_class` override cannot. The cost:
a pickled dict or list subclass of an unknown class inside a checkpoint is refused rather than
read as a placeholder, and placeholders need the zip format torch.save has written since
PyTorch 1.6 (an older file loads only when every global in it is allowed).
"""
import collections
import pickle
from pathlib import Path

import numpy as np
import torch

REFUSED_MODULES = {"os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib", "runpy",
                   "pty", "ctypes", "pickle", "_pickle", "marshal", "code", "codeop", "multiprocessing",
                   "webbrowser"}
REFUSED_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "breakpoint", "input"}


def _array_globals() -> dict[str, object]:
    """numpy's array, scalar and dtype rebuilders under the names numpy 1 and numpy 2 pickle them
    with, taken from live objects' own __reduce__ (numpy 2 renamed numpy.core to numpy._core)."""
    reconstruct = np.empty(0).__reduce__()[0]  # multiarray._reconstruct(ndarray, shape, dtype)
    scalar = np.float64(0).__reduce__()[0]     # multiarray.scalar(dtype, bytes)
    out = {"collections.OrderedDict": collections.OrderedDict, "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{module}._reconstruct"] = reconstruct
        out[f"{module}.scalar"] = scalar
    return out


ARRAY_GLOBALS = _array_globals()


# ----------------------------------------------------------------------------
# Placeholders


class Placeholder:
    """An inert stand-in for an instance of a class (or the result of a call) that a file names
    and this project does not load. `source` is the "module.name" it replaces."""

    source = "?"  # set on each subclass by `placeholder_for`

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ: cls.__new__(cls, *args)
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):  # pickle's REDUCE: cls(*args)
        pass

    def __setstate__(self, state):  # pickle's BUILD
        pass

    def __setitem__(self, key, value):  # SETITEMS on a pickled dict subclass (plain pickles)
        pass

    def extend(self, items):  # APPENDS on a pickled list subclass (plain pickles)
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {self.source}>"


_placeholders: dict[str, type] = {}  # "module.name" -> its Placeholder subclass


def placeholder_for(full_name: str) -> type:
    """The Placeholder subclass standing in for the global `full_name`, one per name."""
    if full_name not in _placeholders:
        _placeholders[full_name] = type(f"Placeholder[{full_name}]", (Placeholder,), {"source": full_name})
    return _placeholders[full_name]


def _refusal(module: str, name: str) -> str | None:
    """Why the global module.name refuses the whole file, or None."""
    if module.split(".")[0] in REFUSED_MODULES:
        return f"{module}.{name}: module {module} reaches processes, files or the interpreter"
    if module in ("builtins", "__builtin__") and name in REFUSED_BUILTINS:
        return f"{module}.{name}: runs code or opens files"
    return None


# ----------------------------------------------------------------------------
# Plain pickles


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class never imports: ARRAY_GLOBALS are returned, refused
    globals raise pickle.UnpicklingError, anything else is `placeholder_for` its name."""

    def find_class(self, module: str, name: str):
        why = _refusal(module, name)
        if why is not None:
            raise pickle.UnpicklingError(f"refused global {why}")
        full_name = f"{module}.{name}"
        return ARRAY_GLOBALS.get(full_name) or placeholder_for(full_name)


def load_pickle(path):
    """A plain pickle file (GloVe's our_vab_words.pkl / our_vab_idx.pkl) read by
    RestrictedUnpickler; ValueError naming the file on any failure."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except Exception as error:  # OSError, EOFError, UnpicklingError, and whatever garbage raises
        raise ValueError(f"{path}: not loaded as a pickle ({type(error).__name__}: {error})") from error


# ----------------------------------------------------------------------------
# Torch checkpoints


def _short(error: Exception) -> str:
    """torch's weights_only errors run to a page of advice; keep the line that says what failed."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("Check the documentation of torch.load")]
    return f"{type(error).__name__}: {lines[-1][:400] if lines else ''}"


def load_torch_checkpoint(path):
    """A torch.save file (a Lightning .ckpt, Guo's finest.tar) on the CPU, without running code.

    1. torch.load(weights_only=True) with numpy's array rebuilders allowed;
    2. if that meets globals outside the allow-list (a zip checkpoint's pickle is listed without
       running it by torch.serialization.get_unsafe_globals_in_checkpoint): refuse the file if
       one is refused (ValueError), else load again with a placeholder lent for each.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    arrays = [(obj, name) for name, obj in ARRAY_GLOBALS.items()]
    # BUILD on a numpy dtype is checked against the dtype's own class (numpy.dtypes.Float32DType, ...)
    arrays += [(getattr(np.dtypes, n), f"numpy.dtypes.{n}") for n in np.dtypes.__all__]
    with torch.serialization.safe_globals(arrays):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            first = error
        except Exception as error:  # RuntimeError (zip), EOFError, ...: not a readable checkpoint
            raise ValueError(f"{path}: not a readable torch checkpoint ({_short(error)})") from error
        try:  # only a zip checkpoint's globals can be listed; anything else ends here
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unknown = []
        if not unknown:
            raise ValueError(f"{path}: not a readable torch checkpoint ({_short(first)})") from first
        for full_name in unknown:
            module, _, name = full_name.rpartition(".")
            why = _refusal(module, name)
            if why is not None:
                raise ValueError(f"{path}: refused global {why}")
        stand_ins = [(placeholder_for(full_name), full_name) for full_name in unknown]
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not loadable without running code ({_short(error)})") from error
