"""The training loop every stage shares: batches, `fit`, checkpoints, exact resume, torchrun.

    fit(path, model, loss_fn, stream, sched, ...)  minimise loss_fn over sched.steps batches

One loop for every model of the recipe (nanoGPT's train.py is the model): AdamW, an optional
half-cosine learning rate, one autocast context for mixed precision, a checkpoint dict
`{model, optimizer, config, meta, step, done, running, rng}` written atomically, and `--resume`
that continues an interrupted stage to the same weights as an uninterrupted run (the batch
streams are seeded and replayed; the RNG that drives noise and dropout is restored).

Several processes (torchrun) run data-parallel with torch's own DistributedDataParallel: each
process takes its rows of the configured (global) batch, DDP averages the gradients. The loss
functions call their models' methods (encode_motion, tokenize, loss), not `forward`, so the loop
wraps each one in a module whose forward is the loss: DDP then sees every call.

Nothing here knows the run folder: the stages pass the path, the resume flag, the precision
and what the checkpoint must record.
"""
import contextlib
import dataclasses
import math
import os
import shutil
import sys
import time
try:
    import resource  # Unix: the process's peak resident memory
except ImportError:  # Windows
    resource = None
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import data


@dataclass
class Schedule:
    """How long and how fast one training stage runs (AdamW throughout, as MLD and LEAD)."""
    steps: int
    batch_size: int
    lr: float
    log_every: int = 100   # progress line every this many steps
    ckpt_every: int = 500  # checkpoint (for --resume) every this many steps
    cosine: bool = False   # ours: decay lr to 0 over `steps` by a half cosine (MLD: constant)
    micro_batch: int = 0   # ours: rows per forward pass, gradients summed over them (0: the whole batch)
    AT_LEAST_ZERO: ClassVar = ("micro_batch",)  # ranges: config.check_ranges


def learning_rate(sched: Schedule, step: int) -> float:
    """The rate for the update that follows `step` completed steps (0-based): constant, or
    lr * (1 + cos(pi * step / steps)) / 2 with `cosine` (SGDR without restarts, Loshchilov &
    Hutter 2017), which helps the few-hundred-step CPU runs finish near a minimum."""
    if not sched.cosine:
        return sched.lr
    return sched.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, sched.steps) / sched.steps))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """Mixed precision as one autocast context; fp32: none."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


# ----------------------------------------------------------------------------
# Checkpoints: one dict per stage, written atomically, loaded without pickle code execution


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file and a rename, so an interruption
    never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the pid: no two processes share one
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, stage: str) -> dict:
    """Load a checkpoint written by `--stage stage` (weights only: nothing in it can run code). A
    missing file names the stage to run (and a NAME.prev.pt an interrupted retraining left); an
    unreadable one says whether it is no checkpoint at all, a truncated one, or one holding
    Python objects, and which stage rewrites it."""
    path = Path(path)
    if not path.exists():
        previous = path.with_name(path.stem + ".prev.pt")
        kept = (f"; {previous} is the checkpoint a retraining that did not finish kept: rename it to "
                f"{path.name} to use it" if previous.exists() else "")
        raise FileNotFoundError(f"{path} not found: run `python train.py --stage {stage}` first "
                                f"(with the same --out){kept}")
    rewrite = f"`python train.py --stage {stage}` (without --resume) rewrites it"
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's zip reader, unpickler, EOF and allow-list refusals
        if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # neither torch's zip nor a legacy pickle
            reason = f"not a checkpoint at all: {'an empty file' if not head else 'not a torch archive'}"
        elif "Weights only load failed" in str(err):
            reason = ("it holds Python objects a checkpoint of this project never holds (refused: loading them "
                      "could run code)")
        elif head == b"PK\x03\x04":  # a zip archive, as torch.save writes, that does not read to its end
            reason = f"truncated or damaged: a torch archive of {path.stat().st_size} bytes that does not read whole"
        else:
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or ['?'])[0].split('. ')[0]}"
        raise ValueError(f"{path}: not a readable checkpoint ({reason}); {rewrite}") from None
    if not isinstance(state, dict) or not {"model", "step", "done"} <= set(state):
        raise ValueError(f"{path}: not a checkpoint of this project (no model, step, done); {rewrite}")
    return state


def check_free_space(folder: Path, model: nn.Module) -> None:
    """Room in `folder` for the checkpoint of `model` that fit writes (its state and AdamW's two
    moments per trainable parameter, twice over while the temporary file is renamed), before any work."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    adam = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    need, free = 2 * (state + adam), shutil.disk_usage(folder).free
    if free < need:
        raise OSError(f"{folder}: {free / 2**20:.0f} MiB free, the checkpoint needs about {need / 2**20:.0f} "
                      f"MiB: free some space or give another --out")


# ----------------------------------------------------------------------------
# Batch streams: endless and seeded, so that --resume can replay them to where they were


def _check_batch(dataset, batch_size: int) -> None:
    if len(dataset) < batch_size:
        raise ValueError(f"the {dataset.split!r} split has {len(dataset)} usable items, fewer than "
                         f"one batch of {batch_size}: lower the batch size or add data")


def batches(dataset, batch_size: int, seed: int):
    """An endless stream of padded batches of similar lengths: each pass shuffles the items,
    sorts windows of 50 batches by length and shuffles the resulting batches, so little of each
    batch is padding (clips run from 40 to 196 frames) while the order stays random."""
    _check_batch(dataset, batch_size)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(motion) for _, motion, _ in dataset.items])
    window = 50 * batch_size
    while True:
        order = rng.permutation(len(dataset))
        groups = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
        for g in rng.permutation(len(groups)):
            yield data.collate([dataset[int(i)] for i in groups[g]])


def latent_batches(dataset, mu: torch.Tensor, logvar: torch.Tensor, batch_size: int, seed: int):
    """An endless stream of {"z", "caption", "index"}: z drawn from each item's cached posterior
    (as MLD samples it, not its mean), with one of the item's captions drawn at random, and the
    items' indices in `dataset` (B,) for stages that cached more per item (ATM)."""
    _check_batch(dataset, batch_size)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=mu.device).manual_seed(seed)
    while True:
        order = rng.permutation(len(dataset))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            captions = [dataset.items[i][2][rng.integers(len(dataset.items[i][2]))] for i in idx]
            idx = torch.as_tensor(idx, device=mu.device)
            noise = torch.randn(mu[idx].shape, generator=generator, device=mu.device)
            yield {"z": mu[idx] + torch.exp(0.5 * logvar[idx]) * noise, "caption": captions, "index": idx}


# ----------------------------------------------------------------------------
# Data parallelism (torchrun): rank 0 alone prints and writes


def rank_and_world() -> tuple[int, int]:
    """(this process, processes) under torchrun; (0, 1) alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_distributed(stages: list[str], allowed) -> None:
    """Under torchrun with several processes, only the `allowed` (training) stages: the others run
    on one process."""
    others = [s for s in stages if s not in allowed]
    if others and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ValueError(f"--stage {' '.join(others)} runs on one process (python train.py ...); under "
                         f"torchrun run the training stages one at a time: {', '.join(allowed)}")


def start_distributed(device: torch.device) -> torch.device:
    """Under torchrun: one process per GPU (NCCL) or CPU process (gloo), the process group from
    the environment torchrun sets; returns this process's device. Ranks other than 0 are silent."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def shard(batch: dict, rank: int, world: int) -> dict:
    """This rank's rows of a global batch (rows rank*B/W .. (rank+1)*B/W of every tensor and list
    of B entries, and of both axes of the (B, B) matrices named in batch["pairwise"]): the
    configured batch size is the global one, split evenly across the ranks."""
    B = len(batch["caption"]) if "caption" in batch else len(next(v for v in batch.values() if torch.is_tensor(v)))
    if B % world:
        raise ValueError(f"a batch of {B} does not split evenly over {world} processes: make the "
                         f"batch size (*_train.batch_size) a multiple of {world}")
    rows, pairwise = slice(rank * B // world, (rank + 1) * B // world), batch.get("pairwise", ())
    return {k: v[rows, rows] if k in pairwise else  # (B, B) matrices over the rows: cut on both axes
            v[rows] if (torch.is_tensor(v) or isinstance(v, list)) and len(v) == B else v
            for k, v in batch.items()}


def micro_batches(batch: dict, size: int) -> list[dict]:
    """A (this process's) batch as consecutive micro-batches of `size` rows (0: the batch itself),
    whose gradients fit sums into the whole batch's (gradient accumulation)."""
    B = len(batch["caption"]) if "caption" in batch else len(next(v for v in batch.values() if torch.is_tensor(v)))
    if size == 0 or size >= B:
        return [batch]
    if B % size:
        raise ValueError(f"a batch of {B} rows does not split into micro-batches of {size}: make "
                         f"*_train.micro_batch divide the (per-process) batch size")
    return [shard(batch, i, B // size) for i in range(B // size)]


class LossModule(nn.Module):
    """`loss_fn` as the forward of a module holding `model`: what DistributedDataParallel wraps,
    so that its gradient hooks see the parameters every loss function reaches."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict):
        return self.loss_fn(batch)


def _averaged(values: list, world: int) -> torch.Tensor:
    """Scalars (tensors or numbers) as one float64 tensor, averaged over the ranks."""
    flat = torch.tensor([float(v.detach()) if torch.is_tensor(v) else float(v) for v in values], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(flat)
        flat /= world
    return flat


def peak_memory(device: torch.device) -> str:
    """The peak memory, for a stage's summary: on CUDA the bytes torch allocated and reserved on
    `device` since the last reset; elsewhere the process's peak resident set over its whole life."""
    if device.type == "cuda":
        return (f"peak {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB allocated, "
                f"{torch.cuda.max_memory_reserved(device) / 2 ** 30:.2f} GiB reserved (CUDA)")
    if resource is None:
        return "peak memory n/a"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 10 if sys.platform == "darwin" else 1)
    return f"peak {kib / 2 ** 20:.2f} GiB resident (process)"


# ----------------------------------------------------------------------------
# The loop


class NonFiniteLoss(RuntimeError):
    pass


def fit(path: Path, model: nn.Module, loss_fn, stream, sched: Schedule, *, config, meta: dict,
        stage: str, resume: bool = False, precision: str = "fp32", device=torch.device("cpu"),
        seed: int = 0, lr_key: str = "the stage's *_train.lr", after_step=None, count_flops: bool = False) -> dict:
    """Minimise `loss_fn(batch) -> (loss, parts)` over `sched.steps` batches of `stream`.

    Writes `path` = {model, optimizer, config, meta, step, done, running, rng} (config: the
    model's dataclass; meta: what else its constructor needs and what it was trained on) at
    least four times and at the end. `resume` continues from it to the same weights as an
    uninterrupted run, under torchrun too (every rank's RNG state is saved). Without it an existing
    checkpoint is kept as NAME.prev.pt until the new one is done. A non-finite loss stops the stage
    and keeps the last good checkpoint under its name. `after_step()` runs after each update
    (MotionLCM's EMA). `stage` names the stage that writes `path` and `lr_key` its rate, for the
    messages; `seed` seeds each rank's noise under torchrun. Ends with a summary line: seconds per
    step after the first (checkpoint writes left out), peak memory and (`count_flops`) the first step's FLOPs on this process.
    Returns the final running averages of the loss parts.
    """
    path = Path(path)
    previous = path.with_name(path.stem + ".prev.pt")
    rank, world = rank_and_world()
    if rank == 0:
        check_free_space(path.parent, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sched.lr)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    step, running, rng = 0, {}, None
    if resume and path.exists():
        state = load_checkpoint(path, stage)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, running = state["step"], state.get("running", {})
        print(f"[{path.stem}] resuming from {path} at step {step}/{sched.steps}")
        for _ in range(step if step < sched.steps else 0):  # the stream back where it was
            next(stream)
        rng = state.get("rng_ranks", [state["rng"]] if "rng" in state else None)  # one CPU state per rank
        if rng is not None and len(rng) == world:  # (else: resumes, but not bit for bit)
            torch.set_rng_state(rng[rank])
    elif path.exists() and rank == 0:
        os.replace(path, previous)
        print(f"[{path.stem}] retraining from scratch; the existing checkpoint is kept as {previous} until "
              f"the new one is done (pass --resume to continue an interrupted run instead)")
    forward = LossModule(model, loss_fn)
    if world > 1:  # the same weights everywhere (DDP broadcasts rank 0's); noise and dropout differ by rank
        forward = nn.parallel.DistributedDataParallel(forward, find_unused_parameters=True, broadcast_buffers=False)
        if rng is None or len(rng) != world:
            torch.manual_seed(1000 * seed + 7919 * step + rank)
    every = max(1, min(sched.ckpt_every, sched.steps // 4))
    written, writing = [], []  # the steps this call checkpointed, and the seconds each write took

    def checkpoint(done: bool):
        began = time.time()
        states = [torch.get_rng_state()]  # every rank's, so that a resume draws what it would have drawn
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, torch.get_rng_state())
        if rank == 0:
            save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "config": dataclasses.asdict(config), "meta": meta, "step": step,
                                   "done": done, "running": running, "rng": states[0], "rng_ranks": states})
        written.append(step)
        writing.append(time.time() - began)

    model.train()
    start, start_step, flops, timed_from = time.time(), step, None, None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while step < sched.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(sched, step)
        batch = next(stream)
        micro = micro_batches(shard(batch, rank, world) if world > 1 else batch, sched.micro_batch)
        optimizer.zero_grad(set_to_none=True)
        values = []  # per micro-batch: the loss and its parts
        counter = FlopCounterMode(display=False) if count_flops and step == start_step else None
        with counter or contextlib.nullcontext():  # (entering it again would restart its count)
            for i, rows in enumerate(micro):
                # under DDP the gradients are averaged over the ranks once, after the last micro-batch
                with forward.no_sync() if world > 1 and i < len(micro) - 1 else contextlib.nullcontext():
                    with autocast(precision, device):
                        loss, parts = forward(rows)
                    # mean over the micro-batches of their (per-row mean) losses: the whole batch's gradient
                    (scaler.scale(loss / len(micro)) if scaler else loss / len(micro)).backward()
                values.append([float(v.detach()) if torch.is_tensor(v) else float(v) for v in (loss, *parts.values())])
        mean = torch.tensor(values, dtype=torch.float64).mean(0).tolist()
        logged = {key: float(v) for key, v in zip(["loss", *parts], _averaged(mean, world))}
        if not math.isfinite(logged["loss"]):
            if not written and previous.exists() and rank == 0:  # nothing of this run's is good: the old one returns
                os.replace(previous, path)
            kept = (f"the checkpoint of step {written[-1]} of this run is kept as {path}" if written else
                    f"the checkpoint from before this run is back at {path}" if path.exists() else "no checkpoint is kept")
            raise NonFiniteLoss(f"[{path.stem}] the loss became {logged['loss']} at step {step + 1}; {kept}. "
                                f"Lower the learning rate ({lr_key}) and rerun"
                                + (" with --resume." if written else "."))
        scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        if after_step is not None:
            after_step()
        step += 1
        if counter is not None:
            flops = counter.get_total_flops()
        for key, value in logged.items():
            running[key] = 0.98 * running.get(key, value) + 0.02 * value
        if step % sched.log_every == 0 or step == sched.steps:
            rate = (step - start_step) / (time.time() - start)
            eta = (sched.steps - step) / max(rate, 1e-9)
            print(f"[{path.stem}] step {step}/{sched.steps} "
                  + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                  + f" | {rate:.1f} it/s, {eta:.0f} s left", flush=True)
        if step % every == 0 and step < sched.steps:
            checkpoint(done=False)
        if step == start_step + 1:  # the first step (allocation, warm-up) is not timed
            timed_from, written_before = time.time(), len(writing)
    if step > start_step:
        timed = step - start_step - 1
        print(f"[{path.stem}] {lr_key.removesuffix('.lr')}: {step - start_step} steps of batch {sched.batch_size}"
              f" (micro-batch {sched.micro_batch or sched.batch_size // world}, {precision}), "
              + (f"{(time.time() - timed_from - sum(writing[written_before:])) / timed:.3f} s/step after the first, "
                 if timed else "")
              + peak_memory(device) + (f", {flops / 1e9:.4g} GFLOP in the first step" if flops else ""), flush=True)
    checkpoint(done=True)
    previous.unlink(missing_ok=True)
    model.eval()
    return {k: round(v, 5) for k, v in running.items()}
