"""The command line: every stage of the LEAD recipe and its companion papers.

    python train.py --stage STAGE [--preset tiny|paper] [--out runs/default] [--set key=value ...]

Stages, in the order `--stage all` runs them (LEAD Sec. 4.1.2 trains VAE, then diffusion, then
the projector):

    data       generate (or validate) the dataset, train the offline BPE + text encoder, summary
    evaluator  the two text-motion embedders: `evaluator` (metrics) and `alignment` (ATM, MATE)
    lamp       LaMP pretraining (then --text-encoder lamp, --evaluator lamp)
    vae        the MLD motion VAE
    diffusion  the latent diffusion model, VAE and text encoder frozen
    projector  the LEAD projector, everything else frozen
    atm        ATM fine-tuning of the denoiser
    mate       MATE word table, then the denoiser and projector retrained on it
    eval       the Tab. 1 analogue: Real, MLD, LEAD (+ATM, +MATE, ablations)
    sample     text -> motion files (+ stick-figure animations)
    inversion  motion textual inversion

Each stage reads what the stages before it wrote into `--out` and writes its own checkpoint
there; a missing prerequisite is an error naming the stage to run. Configuration is one
dataclass per section (`data`, `text`, ...; the model sections live in their modules), the
paper's values by default; `--preset tiny` is a set of overrides for a CPU, and `--set
section.field=value` overrides single fields, type-checked, unknown keys rejected.

This file stays importable: nothing runs at import time, so tests call `main([...])`.
"""
import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import atm_losses
import data
import diffusion
import inversion
import lamp
import mate
import metrics
import projector
import synthetic
import vae
from atm_losses import ATMConfig
from clip import ClipConfig, TextEncoder
from diffusion import DiffusionConfig
from inversion import InversionConfig
from lamp import LaMPConfig
from mate import MATEConfig
from metrics import EmbedderConfig
from projector import ProjectorConfig
from vae import VAEConfig

# ----------------------------------------------------------------------------
# Configuration


@dataclass
class DataConfig:
    synthetic_motions: int = 3000  # size of the embedded synthetic dataset (issue 2: >= 3,000)
    synthetic_seed: int = 0        # the generator is deterministic for a seed
    min_len: int = 40              # HumanML3D: clips of 40..196 frames at 20 fps
    max_len: int = 196
    unit: int = 4                  # HumanML3D crops lengths to a multiple of 4


@dataclass
class Schedule:
    """How long and how fast one training stage runs (AdamW throughout, as MLD and LEAD)."""
    steps: int
    batch_size: int
    lr: float
    log_every: int = 100   # progress line every this many steps
    ckpt_every: int = 500  # checkpoint (for --resume) every this many steps
    cosine: bool = False   # ours: decay lr to 0 over `steps` by a half cosine (MLD: constant)


def learning_rate(sched: Schedule, step: int) -> float:
    """The rate for the update that follows `step` completed steps (0-based): constant, or
    lr * (1 + cos(pi * step / steps)) / 2 with `cosine` (SGDR without restarts, Loshchilov &
    Hutter 2017), which helps the few-hundred-step CPU runs finish near a minimum."""
    if not sched.cosine:
        return sched.lr
    return sched.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, sched.steps) / sched.steps))


@dataclass
class EvalConfig:
    replications: int = 20      # the papers: mean +- 1.96 std / sqrt(20)
    mm_num_texts: int = 100     # MModality: 100 texts (MLD, LEAD Sec. 5.1.2)
    mm_num_gens: int = 30       # ... 30 generations each, 10 pairs (Guo et al.)
    diversity_times: int = 300  # Diversity over 300 random pairs (Guo et al., LEAD Eq. 13)
    timing_prompts: int = 10    # prompts timed one at a time for the per-prompt inference time


@dataclass
class RunOptions:
    seed: int = 0     # seeds the offline text encoder and every training stage
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core)


@dataclass
class RunConfig:
    run: RunOptions = field(default_factory=RunOptions)
    data: DataConfig = field(default_factory=DataConfig)
    text: ClipConfig = field(default_factory=ClipConfig)
    evaluator: EmbedderConfig = field(default_factory=EmbedderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    atm: ATMConfig = field(default_factory=ATMConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    mate: MATEConfig = field(default_factory=MATEConfig)
    # Schedules for the paper preset are ours where the papers give epochs on HumanML3D; raise
    # them for a faithful reproduction (MLD trains both stages for thousands of epochs).
    evaluator_train: Schedule = field(default_factory=lambda: Schedule(50_000, 32, 1e-4))
    vae_train: Schedule = field(default_factory=lambda: Schedule(200_000, 128, 1e-4))       # MLD lr
    diffusion_train: Schedule = field(default_factory=lambda: Schedule(200_000, 128, 1e-4))  # MLD lr
    # LEAD Sec. 5.2: batch 1024, lr 1e-4, 200 epochs (~ 4,600 steps over HumanML3D's ~23k pairs)
    projector_train: Schedule = field(default_factory=lambda: Schedule(4_600, 1024, 1e-4))
    lamp: LaMPConfig = field(default_factory=LaMPConfig)
    # MoMask's VQ-VAE: batch 256, lr 2e-4, 50 epochs (~4,600 steps over HumanML3D's ~23k clips)
    lamp_vq_train: Schedule = field(default_factory=lambda: Schedule(4_600, 256, 2e-4))
    # LaMP code (options/lamp_option.py): batch 128, lr 2e-4, 200 epochs (~36,600 steps)
    lamp_train: Schedule = field(default_factory=lambda: Schedule(36_600, 128, 2e-4))
    # ATM Sec. 4.1: MDM+ATM trains from scratch, 400k steps of batch 64, lr 1e-4 (MDM's);
    # we fine-tune diffusion.pt (ours: a tenth of those steps)
    atm_train: Schedule = field(default_factory=lambda: Schedule(40_000, 64, 1e-4))
    # ours: MATE gives no schedule; lr as TMR. The table, Proj, the heads and prototypes share it.
    mate_train: Schedule = field(default_factory=lambda: Schedule(20_000, 64, 1e-4))


# A preset is nothing but a set of overrides on the defaults (the defaults are the papers').
# tiny: sized so `--stage all` fits a 2-core CPU in minutes (measured in bench/, see README).
PRESETS: dict[str, dict[str, object]] = {
    "paper": {},
    "tiny": {
        # note: the tiny models' operations are too small to share between threads; on 2 cores
        # 1 thread measured 0.5 s per evaluator step, 2 threads 3.5 s while another job ran
        "run.threads": 1,
        # c is 512-d (as CLIP ViT-B): at least as wide as the 4 x 128 VAE latent, so that E_proj
        # maps the latent into a wider space as LEAD's does (1 x 256 -> 768), not a narrower one
        "text.hidden_size": 128, "text.num_layers": 2, "text.intermediate_size": 512,
        "text.projection_dim": 512,
        "evaluator.word_dim": 64, "evaluator.text_hidden": 128, "evaluator.movement_hidden": 128,
        "evaluator.movement_dim": 128, "evaluator.motion_hidden": 128, "evaluator.embed_dim": 64,
        "evaluator_train.steps": 400, "evaluator_train.batch_size": 64, "evaluator_train.lr": 1e-3,
        # note: dropout off on CPU: attention dropout forces PyTorch's slow attention path
        # VAE: not MLD's 1 x 256 post-norm recipe, which needs far more steps than a CPU has
        # in minutes (vae.py, "Differences from the paper"; bench/bench_vae.py)
        "vae.latent_dim": 128, "vae.n_layers": 3, "vae.ff_dim": 256, "vae.dropout": 0.0,
        "vae.n_tokens": 4, "vae.norm_first": True, "vae.position_init": "sinusoidal",
        "vae.joint_loss": "root_relative",
        "vae_train.steps": 800, "vae_train.batch_size": 16, "vae_train.lr": 5e-4,
        "vae_train.cosine": True,
        "diffusion.n_layers": 5, "diffusion.ff_dim": 256, "diffusion.dropout": 0.0,
        "diffusion_train.steps": 3000, "diffusion_train.batch_size": 64, "diffusion_train.lr": 5e-4,
        "projector.n_layers": 3, "projector.ff_dim": 256, "projector.dropout": 0.0,
        # batch 128 (83 epochs): keeps `--stage mate`, which retrains the projector, in 6 minutes
        "projector_train.steps": 1500, "projector_train.batch_size": 128, "projector_train.lr": 1e-4,
        "eval.replications": 3, "eval.mm_num_texts": 20, "eval.mm_num_gens": 10,
        "atm_train.steps": 40, "atm_train.batch_size": 16, "atm_train.lr": 5e-4, "atm_train.log_every": 10,
        # inversion: 16 test motions (the paper: 100) x 3 objectives + 5 styles x 3 objectives
        "inversion.test_motions": 16, "inversion.generations": 2, "inversion.render": ("lead+proj",),
        # LaMP: the stage takes about 3 minutes on this 2-core machine (one torch thread)
        "lamp.vq_codes": 128, "lamp.vq_code_dim": 64, "lamp.vq_width": 64, "lamp.vq_depth": 2,
        "lamp.hidden_size": 64, "lamp.n_layers": 2, "lamp.n_heads": 2, "lamp.ff_dim": 128,
        "lamp.max_positions": 77, "lamp.embed_dim": 64, "lamp.init_std": 0.1, "lamp.dropout": 0.0,
        "lamp_vq_train.steps": 300, "lamp_vq_train.batch_size": 32, "lamp_vq_train.lr": 1e-3,
        "lamp_vq_train.log_every": 50,
        "lamp_train.steps": 500, "lamp_train.batch_size": 32, "lamp_train.lr": 1e-3, "lamp_train.log_every": 50,
        "mate.latent_dim": 64, "mate.n_layers": 2, "mate.ff_dim": 128, "mate.dropout": 0.0,
        "mate.segment_grid": 8,
        "mate.probe_captions": 32, "mate_train.steps": 200, "mate_train.batch_size": 32,
        "mate_train.lr": 3e-4, "mate_train.log_every": 50,
    },
}

STAGES = ["data", "evaluator", "vae", "diffusion", "projector", "eval", "sample",
          "inversion", "atm", "mate", "lamp"]


def _parse_value(text: str, kind, key: str):
    """Parse `text` as the dataclass field type `kind`; a mismatch is an error naming `key`."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in (int, float, str):
            return kind(text)
        if origin is tuple:
            item = typing.get_args(kind)[0]
            return tuple(item(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--set {key}={text}: expected {getattr(kind, '__name__', kind)}") from None
    raise ValueError(f"--set {key}: fields of type {kind} cannot be set from the command line")


def apply_overrides(cfg: RunConfig, overrides: dict[str, object]) -> RunConfig:
    """Set `section.field` values on `cfg` (strings are parsed; other values type-checked)."""
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in sections:
            raise ValueError(f"unknown config section {section!r} in {key!r}; sections: {sorted(sections)}")
        target = sections[section]
        kinds = typing.get_type_hints(type(target))
        if name not in kinds:
            raise ValueError(f"unknown config key {key!r}; {section} has: {', '.join(sorted(kinds))}")
        kind = kinds[name]
        if isinstance(value, str) and kind is not str:
            value = _parse_value(value, kind, key)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        expected = typing.get_origin(kind) or kind
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"{key}={value!r}: expected {getattr(kind, '__name__', kind)}")
        setattr(target, name, value)
    return cfg


def build_config(preset: str, sets: list[str]) -> RunConfig:
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {sorted(PRESETS)}")
    cfg = apply_overrides(RunConfig(), PRESETS[preset])
    overrides = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected section.field=value")
        overrides[key.strip()] = value.strip()
    return apply_overrides(cfg, overrides)


# ----------------------------------------------------------------------------
# Checkpoints: one dict per stage, written atomically, loaded without pickle code execution


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file and a rename, so an interruption
    never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, stage: str) -> dict:
    """Load a checkpoint written by `--stage stage`; a missing file names the stage to run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python train.py --stage {stage}` first "
                                f"(with the same --out)")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: Path, obj: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------
# Run context shared by the stages


@dataclass
class Run:
    cfg: RunConfig
    out: Path
    data_root: Path
    synthetic: bool
    device: torch.device
    clip: str | None
    resume: bool
    args: argparse.Namespace
    cache: dict = field(default_factory=dict)  # models loaded once per process (text encoder)


def dataset_root(run: Run) -> Path:
    """The dataset folder; the synthetic one is generated on first use."""
    root = run.data_root
    if run.synthetic:
        settings = {"motions": run.cfg.data.synthetic_motions, "seed": run.cfg.data.synthetic_seed}
        marker = root / "settings.json"
        if not marker.exists() or json.loads(marker.read_text()) != settings:
            print(f"[data] generating the embedded synthetic dataset into {root} "
                  f"({settings['motions']} motions, seed {settings['seed']})")
            synthetic.generate_synthetic(root, n_motions=settings["motions"], seed=settings["seed"])
            write_json(marker, settings)
    elif not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder (expected the HumanML3D layout: "
                                f"new_joint_vecs/, texts/, Mean.npy, Std.npy, train.txt, ...)")
    return root


def open_split(run: Run, split: str) -> "data.MotionTextDataset":
    """One split of the dataset, read once per process; the skeleton (HumanML3D's 22 joints or
    KIT-ML's 21) is told by the feature size in Mean.npy."""
    key = f"split:{split}"
    if key not in run.cache:
        root, c = dataset_root(run), run.cfg.data
        skeletons = {s.feat_dim: s for s in (data.T2M, data.KIT)}
        feat_dim = np.load(root / "Mean.npy").shape[-1] if (root / "Mean.npy").exists() else data.T2M.feat_dim
        if feat_dim not in skeletons:
            raise ValueError(f"{root / 'Mean.npy'}: {feat_dim}-d features match neither HumanML3D "
                             f"(263) nor KIT-ML (251)")
        run.cache[key] = data.MotionTextDataset(root, split, min_len=c.min_len, max_len=c.max_len,
                                                unit=c.unit, skeleton=skeletons[feat_dim],
                                                seed=run.cfg.run.seed)
    return run.cache[key]


# ----------------------------------------------------------------------------
# The training loop shared by every stage


class NonFiniteLoss(RuntimeError):
    pass


def batches(dataset, batch_size: int, seed: int):
    """An endless stream of padded batches of similar lengths: each pass shuffles the items,
    sorts windows of 50 batches by length and shuffles the resulting batches, so little of each
    batch is padding (clips run from 40 to 196 frames) while the order stays random."""
    if len(dataset) < batch_size:
        raise ValueError(f"the {dataset.split!r} split has {len(dataset)} usable items, fewer than "
                         f"one batch of {batch_size}: lower the batch size or add data")
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


@torch.no_grad()
def encode_latents(motion_vae: vae.MotionVAE, dataset, device, batch_size: int = 64):
    """The frozen VAE's posterior (mu, logvar), each (N, n, d), for every item of `dataset`,
    computed once so later stages draw z = mu + sigma * noise without re-running the encoder."""
    mus, logvars = [], []
    for start in range(0, len(dataset), batch_size):
        batch = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        _, mu, logvar = motion_vae.encode(batch["motion"].to(device), batch["lengths"].to(device))
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


def training_latents(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_latents of the train split through the run's VAE, computed once per process and
    shared by the stages that train on it (diffusion, projector, mate) while vae.pt stays the
    same file (`--stage all` would otherwise encode the same motions three times)."""
    path = run.out / "vae.pt"
    key = (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None
    if key is None or run.cache.get("latents", (None,))[0] != key:
        # the data first, then the VAE: each missing prerequisite is named by its own error
        train, motion_vae = open_split(run, "train"), load_vae(run)
        print(f"[latents] encoding the {len(train)} training motions once with {path}")
        train.reseed(run.cfg.run.seed)  # the same crops whichever stage asks first
        run.cache["latents"] = (key, encode_latents(motion_vae, train, run.device))
    return run.cache["latents"][1]


def latent_batches(dataset, mu: torch.Tensor, logvar: torch.Tensor, batch_size: int, seed: int):
    """An endless stream of {"z", "caption", "index"}: z drawn from each item's cached posterior
    (as MLD samples it, not its mean), with one of the item's captions drawn at random, and the
    items' indices in `dataset` (B,) for stages that cached more per item (ATM)."""
    if len(dataset) < batch_size:
        raise ValueError(f"the {dataset.split!r} split has {len(dataset)} usable items, fewer than "
                         f"one batch of {batch_size}: lower the batch size or add data")
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


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fit(run: Run, name: str, model: torch.nn.Module, config, loss_fn, stream, sched: Schedule,
        meta: dict) -> dict:
    """Minimise `loss_fn(batch) -> (loss, parts)` over `sched.steps` batches of `stream`.

    Writes run.out/NAME.pt = {model, optimizer, config, meta, step, done} (config: the model's
    dataclass, meta: what else its constructor needs) every ckpt_every steps
    and at the end; `--resume` continues from it. A non-finite loss stops the stage and keeps
    the last good checkpoint. Returns the final running averages of the loss parts.
    """
    path = run.out / f"{name}.pt"
    optimizer = torch.optim.AdamW(_trainable(model), lr=sched.lr)
    step = 0
    if path.exists():
        state = load_checkpoint(path, name)
        if run.resume:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
            print(f"[{name}] resuming from {path} at step {step}/{sched.steps}")
        elif not state.get("done"):
            print(f"[{name}] note: {path} holds an interrupted run (step {state['step']}); "
                  f"starting over (pass --resume to continue it)")

    def checkpoint(done: bool):
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "config": dataclasses.asdict(config), "meta": meta,
                               "step": step, "done": done})

    model.train()
    running, start, start_step = {}, time.time(), step
    while step < sched.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(sched, step)
        loss, parts = loss_fn(next(stream))
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"[{name}] the loss became {loss.item()} at step {step + 1}; "
                                f"the last good checkpoint ({path}) is kept. Lower the learning "
                                f"rate ({name}_train.lr) and rerun with --resume.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        for key, value in {"loss": loss, **parts}.items():
            value = float(value.detach()) if torch.is_tensor(value) else float(value)
            running[key] = 0.98 * running.get(key, value) + 0.02 * value
        if step % sched.log_every == 0 or step == sched.steps:
            rate = (step - start_step) / (time.time() - start)
            eta = (sched.steps - step) / max(rate, 1e-9)
            print(f"[{name}] step {step}/{sched.steps} "
                  + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                  + f" | {rate:.1f} it/s, {eta:.0f} s left", flush=True)
        if step % sched.ckpt_every == 0 and step < sched.steps:
            checkpoint(done=False)
    checkpoint(done=True)
    model.eval()
    return {k: round(v, 5) for k, v in running.items()}


# ----------------------------------------------------------------------------
# Loading what earlier stages wrote


def load_model(run: Run, name: str, stage: str, build) -> torch.nn.Module:
    """Rebuild the model of run.out/NAME.pt from its saved config, frozen, on run.device."""
    state = load_checkpoint(run.out / f"{name}.pt", stage)
    if not state.get("done"):
        raise FileNotFoundError(f"{run.out / (name + '.pt')} is an interrupted run (step "
                                f"{state['step']}): finish it with `python train.py --stage "
                                f"{stage} --resume`")
    model = build(state["config"], state["meta"])
    model.load_state_dict(state["model"])
    return model.to(run.device).eval().requires_grad_(False)


def clip_text_encoder(run: Run, mate: bool = False) -> TextEncoder:
    """The frozen text encoder: real CLIP with --clip, else the offline one of --stage data.
    mate=True: a second one with MATE's word table swapped in (MATE Sec. 4.1: the
    MATE-enhanced encoder replaces the original; everything but the table is unchanged)."""
    if mate:
        if run.cache.get("text_mate") is None:
            clip_text_encoder(run)  # the prerequisite check and its message
            encoder = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder")
            encoder.set_word_embeddings(load_mate_table(run))
            run.cache["text_mate"] = encoder.to(run.device)
        return run.cache["text_mate"]
    if run.cache.get("text") is None:
        if run.clip:
            encoder = TextEncoder.from_pretrained(run.clip)
        else:
            folder = run.out / "text_encoder"
            if not (folder / "config.json").exists():
                raise FileNotFoundError(f"{folder} not found: run `python train.py --stage data` "
                                        f"first (it builds the offline text encoder)")
            print(f"[clip] offline text encoder from {folder} (random weights, not real CLIP; "
                  f"--clip NAME_OR_DIR loads real weights)")
            encoder = TextEncoder.from_pretrained(folder)
        run.cache["text"] = encoder.to(run.device)
    return run.cache["text"]


def text_encoder(run: Run):
    """The frozen text condition of the diffusion pipeline: CLIP (clip.TextEncoder), or with
    --text-encoder lamp LaMP's text features (lamp.LaMPTextEncoder, the same interface)."""
    if run.args.text_encoder == "clip":
        return clip_text_encoder(run)
    if run.cache.get("lamp_text") is None:
        run.cache["lamp_text"] = lamp.LaMPTextEncoder(load_lamp(run), clip_text_encoder(run).tokenizer).to(run.device)
    return run.cache["lamp_text"]


def conditioned(run: Run, name: str) -> str:
    """Checkpoint / results name for the run's text condition: `diffusion` with CLIP,
    `diffusion_lamp` with --text-encoder lamp, so both live side by side in one --out."""
    return name if run.args.text_encoder == "clip" else f"{name}_{run.args.text_encoder}"


def load_lamp_vq(run: Run) -> lamp.MotionVQVAE:
    return load_model(run, "lamp_vq", "lamp", lambda cfg, meta: lamp.MotionVQVAE(LaMPConfig(**cfg), meta["feat_dim"]))


def load_lamp(run: Run) -> lamp.LaMP:
    return load_model(run, "lamp", "lamp",
                      lambda cfg, meta: lamp.LaMP(LaMPConfig(**cfg), meta["vocab_size"], meta["eot_id"]))


def eval_embedder(run: Run):
    """The embedder the eval metrics are computed in: `evaluator`, or LaMP (Tab. 2)."""
    if run.args.evaluator == "lamp":
        return lamp.LaMPEvaluator(load_lamp_vq(run), load_lamp(run))
    return load_embedder(run, "evaluator")


# 6. Names of the results sections and STAGE.json records


def eval_section(run: Run) -> str:
    """The t2m table's section: `t2m`, `t2m_lamp` (LaMP-conditioned models), with
    `_lamp_evaluator` appended when the metrics are LaMP's (--evaluator lamp)."""
    return conditioned(run, "t2m") + ("_lamp_evaluator" if run.args.evaluator == "lamp" else "")


def eval_title(run: Run) -> str:
    title = ("Text-to-motion, LaMP evaluator (LaMP Tab. 2 analogue: LaMP-R-precision, LaMP-MMdist)"
             if run.args.evaluator == "lamp" else "Text-to-motion (LEAD Tab. 1 analogue)")
    return title + ("; LaMP text condition (LaMP Sec. 3.2)" if run.args.text_encoder == "lamp" else "")


def eval_note_space(run: Run) -> str:
    if run.args.evaluator == "lamp":
        return ("Metrics in the space of this run's LaMP (L2-normalised features, so MMdist lies in "
                "[0, 2]; not the paper's checkpoint)")
    return "Metrics in the space of this run's `evaluator` embedder (not Guo et al.'s)"


CONDITIONED_STAGES = ("diffusion", "projector", "atm", "eval", "sample")  # their models read the condition


def record_name(run: Run, stage: str) -> str:
    """Name of a stage's STAGE.json: `diffusion_lamp` with --text-encoder lamp,
    `eval_lamp_evaluator` with --evaluator lamp, so no record overwrites another."""
    name = conditioned(run, stage) if stage in CONDITIONED_STAGES else stage
    return name + ("_lamp_evaluator" if stage == "eval" and run.args.evaluator == "lamp" else "")


def load_mate_table(run: Run) -> torch.Tensor:
    """MATE's word-embedding table (V, W) from run.out/mate.pt (written by --stage mate)."""
    state = load_checkpoint(run.out / "mate.pt", "mate")
    if not state.get("done"):
        raise FileNotFoundError(f"{run.out / 'mate.pt'} is an interrupted run (step {state['step']}): "
                                f"finish it with `python train.py --stage mate --resume`")
    return state["model"]["word_table"]


def load_vae(run: Run) -> vae.MotionVAE:
    return load_model(run, "vae", "vae",
                      lambda cfg, meta: vae.MotionVAE(vae.VAEConfig(**cfg), meta["feat_dim"]))


DENOISER_STAGES = {  # checkpoint -> the stage writing it
    "diffusion": "diffusion", "diffusion_atm": "atm", "diffusion_mate": "mate",
    "diffusion_lamp": "diffusion", "diffusion_atm_lamp": "atm"}


def load_denoiser(run: Run, name: str | None = None) -> diffusion.Denoiser:
    name = name or conditioned(run, "diffusion")
    return load_model(run, name, DENOISER_STAGES.get(name, name),
                      lambda cfg, meta: diffusion.Denoiser(diffusion.DiffusionConfig(**cfg),
                                                           tuple(meta["latent_shape"]), meta["text_dim"]))


PROJECTOR_STAGES = {"projector_mate": "mate"}  # the others are written by --stage projector


def load_projector(run: Run, name: str | None = None) -> projector.Projector:
    name = name or conditioned(run, "projector")
    return load_model(run, name, PROJECTOR_STAGES.get(name, "projector"),
                      lambda cfg, meta: projector.Projector(projector.ProjectorConfig(**cfg),
                                                            tuple(meta["latent_shape"]), meta["text_dim"]))


def load_embedder(run: Run, name: str) -> metrics.TextMotionEmbedder:
    return load_model(run, name, "evaluator",
                      lambda cfg, meta: metrics.TextMotionEmbedder(
                          metrics.EmbedderConfig(**cfg), meta["feat_dim"], meta["vocab_size"], meta["eot_id"]))


# ----------------------------------------------------------------------------
# Stages


def stage_data(run: Run) -> dict:
    """Generate or validate the dataset, print its summary, build the offline text encoder."""
    root = dataset_root(run)
    summary = data.dataset_summary(root)
    print(f"[data] {root}")
    for key, value in summary.items():
        if key != "length_histogram":
            print(f"  {key}: {value}")
    print("  length histogram (frames: motions):")
    hist = summary["length_histogram"]
    top = max(hist.values()) if hist else 1
    for bucket, count in hist.items():
        print(f"    {bucket:>9}: {count:6d} {'#' * max(1, round(40 * count / top))}")
    usable = {split: len(open_split(run, split)) for split in ("train", "val", "test")}
    print(f"  usable after the length rules: {usable}")
    figures = {"summary": summary, "usable": usable}
    if not run.clip:
        captions = open_split(run, "train").captions()
        encoder = TextEncoder.offline(captions, run.out / "text_encoder", seed=run.cfg.run.seed,
                                      config=run.cfg.text)
        print(f"  offline BPE vocabulary: {len(encoder.tokenizer)} tokens "
              f"(asked for {run.cfg.text.vocab_size}), in {run.out / 'text_encoder'}")
        figures["bpe_vocab_size"] = len(encoder.tokenizer)
    return figures


def stage_evaluator(run: Run) -> dict:
    """Two independently seeded text-motion embedders (metrics.py): `evaluator` scores every
    method; `alignment` is the training signal of ATM and MATE, so no method is scored by it."""
    train, test = open_split(run, "train"), open_split(run, "test")
    tokenizer = clip_text_encoder(run).tokenizer
    sched, figures = run.cfg.evaluator_train, {}
    meta = {"feat_dim": train.mean.shape[0], "vocab_size": len(tokenizer), "eot_id": tokenizer.eot_id}
    for offset, name in enumerate(("evaluator", "alignment")):
        seed = run.cfg.run.seed + 1000 * (offset + 1)
        torch.manual_seed(seed)
        model = metrics.TextMotionEmbedder(run.cfg.evaluator, **meta).to(run.device)

        def loss_fn(batch):
            ids = tokenizer(batch["caption"]).to(run.device)                        # (B, 77)
            motion_emb = model.encode_motion(batch["motion"].to(run.device), batch["lengths"].to(run.device))
            return metrics.embedder_loss(model.encode_text(ids), motion_emb, batch["caption"],
                                         temperature=run.cfg.evaluator.temperature)

        losses = fit(run, name, model, run.cfg.evaluator, loss_fn, batches(train, sched.batch_size, seed), sched, meta)
        real = metrics.evaluate(None, test, model, tokenizer, replications=1, seed=seed,
                                diversity_times=run.cfg.eval.diversity_times)
        figures[name] = {"final_losses": losses, "test_real": {k: round(v[0], 4) for k, v in real.items()}}
        print(f"[{name}] real test motions: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in real.items()))
    return figures


@torch.no_grad()
def joint_errors(reconstruct, dataset, device, batch_size: int = 64) -> dict[str, float]:
    """Mean per-joint position errors (metres) of reconstruct(x, lengths) -> x_hat, both
    normalised features (B, T, D), over the valid frames of `dataset`:
      "global"        joints from features, the root trajectory integrated from the velocities;
      "root-aligned"  the root joint subtracted from both (MPJPE as MLD reports it; the heading
                      integrated from the root's angular velocity still counts);
      "body frame"    the root-invariant positions (features 4 : 3J+1), heading ignored; the
                      root sits at their origin and counts as a joint with zero error."""
    mean, std = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (dataset.mean, dataset.std))
    sums, count = {"global": 0.0, "root-aligned": 0.0, "body frame": 0.0}, 0
    for start in range(0, len(dataset), batch_size):
        batch = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        features = [f * std + mean for f in (reconstruct(x, lengths), x)]        # de-normalised
        J = (x.shape[-1] + 1) // 12
        j_hat, j = (data.features_to_joints(f, n_joints=J) for f in features)  # (B, T, J, 3)
        valid = vae.lengths_to_mask(lengths, x.shape[1])                          # (B, T)
        sums["global"] += float((j_hat - j).norm(dim=-1)[valid].sum())
        sums["root-aligned"] += float(((j_hat - j_hat[..., :1, :]) - (j - j[..., :1, :])).norm(dim=-1)[valid].sum())
        ric_hat, ric = (f[..., 4:4 + 3 * (J - 1)].unflatten(-1, (J - 1, 3)) for f in features)
        sums["body frame"] += float((ric_hat - ric).norm(dim=-1)[valid].sum())
        count += int(valid.sum()) * J
    return {k: v / count for k, v in sums.items()}


def vae_reconstruct(model: vae.MotionVAE):
    """reconstruct(x, lengths) through the posterior mean, for joint_errors."""
    return lambda x, lengths: model.decode(model.encode(x, lengths, sample=False)[0], lengths)


@torch.no_grad()
def reconstruction_metrics(run: Run, model: vae.MotionVAE, split: str = "test", batch_size: int = 64) -> dict:
    """How the evaluator sees the VAE's reconstructions (posterior mean) of `split` against the
    motions themselves: R-precision top-1..3 and MMdist with their captions for both, and the
    FID of the reconstructions against the motions, in one pass.
    A VAE whose reconstructions the evaluator cannot match to their captions bounds every
    generated row of the eval table."""
    dataset, evaluator = open_split(run, split), load_embedder(run, "evaluator")
    tokenizer, reconstruct = clip_text_encoder(run).tokenizer, vae_reconstruct(model)
    text, real, recon = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(run.device), batch["lengths"].to(run.device)
        text.append(evaluator.encode_text(tokenizer(batch["caption"]).to(run.device)))   # (B, E)
        real.append(evaluator.encode_motion(x, lengths))
        recon.append(evaluator.encode_motion(reconstruct(x, lengths), lengths))
    text, real, recon = (torch.cat(e).double().cpu().numpy() for e in (text, real, recon))
    figures = {}
    for name, motion in (("real", real), ("reconstruction", recon)):
        top = metrics.r_precision(text, motion, top_k=3, seed=run.cfg.run.seed)
        figures[name] = {**{f"R-precision top-{k + 1}": round(float(top[k]), 4) for k in range(3)},
                         "MMdist": round(metrics.matching_score(text, motion), 4)}
    figures["reconstruction"]["FID"] = round(metrics.fid(real, recon), 4)  # against the real ones
    return figures


def stage_vae(run: Run) -> dict:
    """Stage 1 of LEAD Sec. 4.1.2: the motion VAE, on motions alone."""
    train, val = open_split(run, "train"), open_split(run, "val")
    cfg, sched = run.cfg.vae, run.cfg.vae_train
    torch.manual_seed(run.cfg.run.seed)
    model = vae.MotionVAE(cfg, train.mean.shape[0]).to(run.device)
    mean, std = train.mean, train.std

    def loss_fn(batch):
        x, lengths = batch["motion"].to(run.device), batch["lengths"].to(run.device)
        x_hat, mu, logvar = model(x, lengths)
        return vae.vae_loss(x_hat, x, lengths, mu, logvar, mean, std, lambda_kl=cfg.lambda_kl,
                            joint_loss=cfg.joint_loss)

    losses = fit(run, "vae", model, cfg, loss_fn, batches(train, sched.batch_size, run.cfg.run.seed),
                 sched, {"feat_dim": train.mean.shape[0]})
    errors = joint_errors(vae_reconstruct(model), val, run.device)
    print(f"[vae] validation mean per-joint position error: {100 * errors['global']:.2f} cm "
          f"(root-aligned: {100 * errors['root-aligned']:.2f} cm, body frame: "
          f"{100 * errors['body frame']:.2f} cm)")
    figures = {"final_losses": losses, "val_joint_error_m": round(errors["global"], 5),
               "val_root_relative_error_m": round(errors["root-aligned"], 5),
               "val_body_frame_error_m": round(errors["body frame"], 5)}
    if (run.out / "evaluator.pt").exists():
        figures["test_reconstruction"] = recon = reconstruction_metrics(run, model)
        for name, row in recon.items():
            print(f"[vae] evaluator on test {name}s: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    else:
        print("[vae] no evaluator.pt in the run folder: run --stage evaluator to have the "
              "reconstructions scored by it")
    return figures


def train_denoiser(run: Run, name: str, text: TextEncoder, latents: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The latent denoiser conditioned on `text`'s c, VAE and text encoder frozen (LEAD Sec.
    4.1.2), on latents = (mu, logvar) of the training motions' VAE posteriors (encode_latents),
    written to run.out/NAME.pt. MATE retrains it from scratch on its own text encoder."""
    train = open_split(run, "train")
    mu, logvar = latents
    cfg, sched = run.cfg.diffusion, run.cfg.diffusion_train
    print(f"[{name}] encoding {len(train.captions())} training captions once")
    text.encode_cached(train.captions())
    c_uncond = text.encode_cached([""])[0]                                          # (C,)
    print(f"[{name}] latent posterior: mean |mu| {mu.abs().mean():.3f}, std of mu {mu.std():.3f}, "
          f"mean sigma {torch.exp(0.5 * logvar).mean():.3f}")
    torch.manual_seed(run.cfg.run.seed)
    schedule = diffusion.GaussianDiffusion(cfg).to(run.device)
    model = diffusion.Denoiser(cfg, tuple(mu.shape[1:]), text.dim).to(run.device)

    def loss_fn(batch):
        return schedule.loss(model, batch["z"], text.encode_cached(batch["caption"]), c_uncond)

    stream = latent_batches(train, mu, logvar, sched.batch_size, run.cfg.run.seed)
    losses = fit(run, name, model, cfg, loss_fn, stream, sched,
                 {"latent_shape": list(mu.shape[1:]), "text_dim": text.dim})
    return {"final_losses": losses}


def stage_diffusion(run: Run) -> dict:
    """Stage 2: the latent denoiser, VAE and text encoder frozen (LEAD Sec. 4.1.2)."""
    latents = training_latents(run)
    return train_denoiser(run, conditioned(run, "diffusion"), text_encoder(run), latents)


PROJECTOR_ABLATIONS = {  # LEAD Tab. 6: run name -> overrides of the projector config
    "projector_no_align": {"lambda_align": 0.0},
    "projector_no_rec": {"lambda_rec": 0.0},
    "projector_no_var": {"lambda_var": 0.0},
    "projector_mlp": {"kind": "mlp"},
}


def train_projector(run: Run, name: str, text: TextEncoder, latents: tuple[torch.Tensor, torch.Tensor],
                    overrides: dict | None = None) -> dict:
    """One projector aligned to `text`'s c (LEAD Eq. 7), on latents = (mu, logvar) of the
    training motions' VAE posteriors, written to run.out/NAME.pt."""
    train = open_split(run, "train")
    mu, logvar = latents
    sched = run.cfg.projector_train
    cfg = dataclasses.replace(run.cfg.projector, **(overrides or {}))
    torch.manual_seed(run.cfg.run.seed)
    model = projector.Projector(cfg, tuple(mu.shape[1:]), text.dim).to(run.device)

    def loss_fn(batch):
        z_proj, z_hat = model(batch["z"])
        return projector.projector_loss(batch["z"], z_proj, z_hat, text.encode_cached(batch["caption"]), model.cfg)

    meta = {"latent_shape": list(mu.shape[1:]), "text_dim": text.dim}
    stream = latent_batches(train, mu, logvar, sched.batch_size, run.cfg.run.seed)
    return {"final_losses": fit(run, name, model, cfg, loss_fn, stream, sched, meta)}


def stage_projector(run: Run) -> dict:
    """Stage 3: the projector, VAE, denoiser and text encoder frozen (LEAD Sec. 4.1.2).
    Latents are drawn from the posterior of the training motions (the distribution the
    diffusion model imitates), paired with one of their captions' CLIP embedding."""
    train = open_split(run, "train")
    text = text_encoder(run)
    load_denoiser(run)  # the recipe's order: a projector is trained for a finished diffusion stage
    text.encode_cached(train.captions())
    latents = training_latents(run)
    variants = {conditioned(run, "projector"): {},
                **({conditioned(run, n): o for n, o in PROJECTOR_ABLATIONS.items()} if run.args.ablations else {})}
    return {name: train_projector(run, name, text, latents, overrides) for name, overrides in variants.items()}


# ----------------------------------------------------------------------------
# ATM (atm_losses.py): fine-tuning the denoiser with inter/intra-motion alignment


@torch.no_grad()
def alignment_text(run: Run, embedder: metrics.TextMotionEmbedder, tokenizer,
                   captions: list[str]) -> torch.Tensor:
    """The captions' embeddings t (B, E) in the alignment space, each distinct caption embedded
    once per process (kept in run.cache, like the text encoder's encode_cached)."""
    cache = run.cache.setdefault("alignment_text", {})  # caption -> (E,)
    missing = list(dict.fromkeys(c for c in captions if c not in cache))
    if missing:
        cache.update(zip(missing, embedder.encode_text(tokenizer(missing).to(run.device))))  # (m, E)
    return torch.stack([cache[c] for c in captions])


@torch.no_grad()
def encode_atm_targets(motion_vae: vae.MotionVAE, embedder: metrics.TextMotionEmbedder, dataset,
                       cfg: ATMConfig, device, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """What ATM reads about the real training motions, computed once (ATM Sec. 4.1), from one
    crop of each item: "mu", "logvar" (N, n, d) the VAE posterior (as encode_latents), "lengths"
    (N,), and in the alignment space "motion_emb" (N, E), "clip_emb" (N, K, E), "clip_mask"
    (N, K), K the clips of the longest motion. Items go through in order of length, so that
    little of each batch is padding, and come back in dataset order."""
    clip_len, min_clip = atm_losses.clip_frames(cfg, dataset.skeleton.fps)
    n_clips = math.ceil(motion_vae.cfg.max_len / clip_len)
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.items[i][1]))
    parts = {key: [] for key in ("mu", "logvar", "lengths", "motion_emb", "clip_emb", "clip_mask")}
    for start in range(0, len(order), batch_size):
        batch = data.collate([dataset[i] for i in order[start:start + batch_size]])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        _, mu, logvar = motion_vae.encode(x, lengths)                                  # (b, n, d) each
        seq, clips, mask = atm_losses.embed_motions(embedder, x, lengths, clip_len, min_clip, n_clips)
        for key, value in zip(parts, (mu, logvar, lengths, seq, clips, mask)):
            parts[key].append(value)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # dataset index -> row of the sorted pass
    return {key: torch.cat(values)[back.to(device)] for key, values in parts.items()}


def stage_atm(run: Run) -> dict:
    """ATM (issue 8): fine-tune the trained denoiser with L_mse + lambda (L_inter + L_intra)
    (ATM Eq. 8) on z0^ = F(eps) (LEAD Eq. 10) decoded by the frozen VAE and embedded by the
    frozen `alignment` embedder (never the evaluator). Writes diffusion_atm.pt."""
    train = open_split(run, "train")
    text, motion_vae = text_encoder(run), load_vae(run)
    embedder = load_embedder(run, "alignment")
    cfg, sched, seed = run.cfg.atm, run.cfg.atm_train, run.cfg.run.seed
    # fine-tuning starts from the finished diffusion stage (ATM trains from scratch)
    denoiser = load_denoiser(run).requires_grad_(True)
    schedule = diffusion.GaussianDiffusion(denoiser.cfg).to(run.device)
    c_uncond = text.encode_cached([""])[0]                                            # (W,)
    # texts are embedded (and kept) as batches draw them; the motions all at once, here
    print(f"[atm] caching the posterior, motion and clip embeddings of {len(train)} training motions once")
    real = encode_atm_targets(motion_vae, embedder, train, cfg, run.device)
    torch.manual_seed(seed)

    def loss_fn(batch):
        idx = batch["index"]                                                          # (B,)
        atm_batch = {"z": batch["z"], "c": text.encode_cached(batch["caption"]),
                     "text_emb": alignment_text(run, embedder, text.tokenizer, batch["caption"]),  # (B, E)
                     **{key: real[key][idx] for key in ("lengths", "motion_emb", "clip_emb", "clip_mask")}}
        return atm_losses.diffusion_atm_loss(schedule, denoiser, motion_vae, embedder, atm_batch, c_uncond,
                                             cfg, fps=train.skeleton.fps)

    stream = latent_batches(train, real["mu"], real["logvar"], sched.batch_size, seed)
    meta = {"latent_shape": list(motion_vae.latent_shape), "text_dim": text.dim}
    losses = fit(run, conditioned(run, "diffusion_atm"), denoiser, denoiser.cfg, loss_fn, stream, sched, meta)
    return {"final_losses": losses}


# ----------------------------------------------------------------------------
# MATE (mate.py)


def stage_mate(run: Run) -> dict:
    """MATE (seed 004): split every training caption into sub-texts and segment its motion
    against them (Eq. 1, frozen `alignment` embedder); train the text encoder's word table with
    L_all (Eq. 8) through the frozen encoder; then retrain the diffusion model (diffusion_mate)
    and the LEAD projector (projector_mate) from scratch on the MATE text encoder, as the paper
    retrains its T2M models (Sec. 4.1); finally the word-pair probe."""
    train, cfg, sched = open_split(run, "train"), run.cfg.mate, run.cfg.mate_train
    if run.args.text_encoder != "clip":
        raise ValueError("--stage mate retrains CLIP's word embeddings: run it without --text-encoder lamp")
    alignment = load_embedder(run, "alignment")
    clip_text_encoder(run)  # the prerequisite check and its message
    # a text encoder of the stage's own: its table is bound to MATE's and trained
    text = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)
    figures = {}

    # 1. Eq. (1) once for every (motion, caption): the alignment embedder is frozen.
    start = time.time()
    records = mate.prepare_records(train, alignment, text.tokenizer, cfg, run.device)
    figures["segmentation_s"] = round(time.time() - start, 2)
    print(f"[mate] joint segmentation of {len(train)} motions in {figures['segmentation_s']:.1f} s "
          f"(grid {cfg.segment_grid} frames)")
    if run.synthetic:  # the synthetic dataset knows its action boundaries
        report = mate.segmentation_report(records, synthetic.load_segments(run.data_root))
        figures["segmentation"] = report
        metrics.write_results(run.out, "mate_segmentation", {"Eq. (1) search": {
            "decomposition acc.": (report["decomposition_accuracy"], 0.0),
            "boundary error (frames)": (report["boundary_error_frames"], 0.0),
            "even split error (frames)": (report["even_split_error_frames"], 0.0)}},
            "MATE text-motion joint segmentation (Tab. 7 analogue)",
            f"{report['captions']} training captions; boundary errors over {report['boundaries']} inner "
            f"boundaries of captions split into as many sub-texts as their motion has actions; the "
            f"even split cuts the motion into N equal parts (a baseline). The paper: 0.73 s = 15 frames.")

    # 2. MATE: the word table (bound into `text`) and MATE's heads, L_all (Eq. 8).
    lemmas = mate.vocabulary(records)
    index = {lemma: k for k, lemma in enumerate(lemmas)}
    torch.manual_seed(run.cfg.run.seed)
    model = mate.MATE(cfg, train.mean.shape[0], text.word_embeddings.weight, text.dim, len(lemmas)).to(run.device)
    model.init_prototypes(*(t.to(run.device) for t in mate.word_ids(text.tokenizer, lemmas)))
    mate.bind_word_table(text, model)
    print(f"[mate] {len(lemmas)} prototypes (lemmas of the training captions); training the "
          f"{tuple(model.word_table.shape)} word table through the frozen text encoder")

    def loss_fn(batch):
        batch = {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        c, _ = text.encode_ids(batch["ids"])                                        # (B, C), through WE
        return mate.mate_loss(model(batch, c), batch, model.prototypes, cfg)

    stream = mate.record_batches(records, sched.batch_size, run.cfg.run.seed, text.tokenizer, index)
    meta = {"feat_dim": int(train.mean.shape[0]), "text_dim": text.dim, "vocabulary": lemmas}
    start = time.time()
    figures["final_losses"] = fit(run, "mate", model, cfg, loss_fn, stream, sched, meta)
    figures["mate_train_s"] = round(time.time() - start, 2)

    # 3. The diffusion model and the projector, retrained from scratch on the MATE encoder
    #    (the same configs and schedules as diffusion.pt and projector.pt: a fair comparison).
    text_mate = clip_text_encoder(run, mate=True)
    start = time.time()
    latents = training_latents(run)
    figures["diffusion_mate"] = train_denoiser(run, "diffusion_mate", text_mate, latents)
    figures["diffusion_mate_s"] = round(time.time() - start, 2)
    start = time.time()
    figures["projector_mate"] = train_projector(run, "projector_mate", text_mate, latents)
    figures["projector_mate_s"] = round(time.time() - start, 2)

    # 4. The word-level probe, before and after MATE.
    start = time.time()
    figures["probe"] = mate_probe(run)
    figures["probe_s"] = round(time.time() - start, 2)
    return figures


@torch.no_grad()
def mate_probe(run: Run) -> dict:
    """For word pairs close in language but opposite in motion (MATE Sec. 4.4, Figs. 4-5): the
    cosine of their word embeddings in the original and the MATE table, and how often the
    `evaluator` places a motion generated from a test caption nearer to that caption than to
    the same caption with the word swapped, for the plain (MLD) and the MATE diffusion model."""
    test, cfg = open_split(run, "test"), run.cfg.mate
    evaluator = load_embedder(run, "evaluator")
    plain, with_mate = Pipeline(run), Pipeline(run, "diffusion_mate", mate=True)
    tokenizer = plain.text.tokenizer
    before, after = plain.text.word_embeddings.weight, with_mate.text.word_embeddings.weight
    unit = run.cfg.data.unit
    length = int(np.median([len(m) for _, m, _ in test.items])) // unit * unit  # one length for all probes
    rows = {}
    for a, b in mate.parse_pairs(cfg.word_pairs):
        pairs = mate.caption_pairs(test.captions(), a, b, cfg.probe_captions)
        row = {"WE cos, original": (mate.word_cosine(before, tokenizer, a, b), 0.0),
               "WE cos, MATE": (mate.word_cosine(after, tokenizer, a, b), 0.0)}
        for label, pipe in (("MLD", plain), ("MLD+MATE", with_mate)):
            torch.manual_seed(run.cfg.run.seed)  # the same noise for both models
            row[f"{label} pair acc."] = mate.pair_accuracy(
                lambda captions, lengths, p=pipe: p.generate(captions, lengths, None),
                evaluator, tokenizer, pairs, length)
        rows[f"{a} / {b} ({len(pairs)} caption pairs)"] = row
        print(f"[mate] probe {a} / {b}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in row.items()))
    metrics.write_results(run.out, "mate_probe", rows, "MATE word-level probe (Sec. 4.4 analogue)",
                          f"WE cos: cosine of the two words' embedding rows (mean over BPE pieces) in the "
                          f"original and the MATE table. Pair acc.: share of motions ({length} frames) "
                          f"generated from a test caption that the `evaluator` places nearer (Euclidean) to "
                          f"that caption than to the caption with the word swapped (0.5 = not heard), ± 95% CI.")
    return {name: {k: list(v) for k, v in row.items()} for name, row in rows.items()}


# ----------------------------------------------------------------------------
# Evaluation and sampling


@torch.no_grad()
def retrieval_rows(lamp_embedder: lamp.LaMPEvaluator, evaluator, dataset, tokenizer, device,
                   batch_size: int = 64) -> dict:
    """LaMP Tab. 3: both models encode the same batches (one random caption per clip), then
    text-to-motion and motion-to-text R@1, 2, 3, 5, 10 over the whole split; LaMP both with its
    training similarity (the best query, Sec. 3.1.3) and with one vector per motion (what
    `--evaluator lamp` uses)."""
    feats = {"text": [], "queries": [], "lamp_text": [], "motion": []}
    for start in range(0, len(dataset), batch_size):
        batch = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        ids = tokenizer(batch["caption"]).to(device)                              # (B, 77)
        motion, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        feats["lamp_text"].append(lamp_embedder.encode_text(ids))                 # (B, E)
        feats["queries"].append(lamp_embedder.query_features(motion, lengths))    # (B, Q, E)
        feats["text"].append(evaluator.encode_text(ids))                          # (B, E')
        feats["motion"].append(evaluator.encode_motion(motion, lengths))          # (B, E')
    feats = {k: torch.cat(v) for k, v in feats.items()}
    mean_query = torch.nn.functional.normalize(feats["queries"].mean(1), dim=-1)  # = LaMPEvaluator.encode_motion
    recalls = {
        "LaMP (best query)": lamp.similarity_recall(lamp.query_text_similarity(feats["queries"], feats["lamp_text"])),
        "LaMP (mean of queries)": metrics.retrieval_recall(feats["lamp_text"], mean_query),
        "evaluator": metrics.retrieval_recall(feats["text"], feats["motion"]),
    }
    return {name: {k: (v, 0.0) for k, v in r.items()} for name, r in recalls.items()}


def stage_lamp(run: Run) -> dict:
    """LaMP (Sec. 3.1): the motion VQ-VAE (3.1.1), then LaMP over its frozen encoder with the
    four objectives (3.1.3); the Tab. 3 analogue on the test split beside the `evaluator`."""
    train, val, test = (open_split(run, split) for split in ("train", "val", "test"))
    tokenizer = clip_text_encoder(run).tokenizer   # the project's tokenizer (offline BPE or CLIP's)
    cfg, feat_dim, seed = run.cfg.lamp, train.mean.shape[0], run.cfg.run.seed
    if run.cfg.data.max_len > 4 * cfg.n_queries:
        raise ValueError(f"lamp.n_queries={cfg.n_queries} covers clips of {4 * cfg.n_queries} frames, but "
                         f"data.max_len={run.cfg.data.max_len}: query i predicts motion token i (Eq. 1)")
    # 1. the motion tokenizer
    torch.manual_seed(seed)
    vq = lamp.MotionVQVAE(cfg, feat_dim).to(run.device)

    def vq_loss_fn(batch):
        x, lengths = batch["motion"].to(run.device), batch["lengths"].to(run.device)
        x_hat, commit, _ = vq(x, lengths)
        return lamp.vq_loss(x_hat, x, lengths, commit, cfg)

    sched = run.cfg.lamp_vq_train
    vq_losses = fit(run, "lamp_vq", vq, cfg, vq_loss_fn, batches(train, sched.batch_size, seed), sched,
                    {"feat_dim": feat_dim})
    vq.requires_grad_(False).eval()
    val_codes = []
    for start in range(0, len(val), 64):
        batch = data.collate([val[i] for i in range(start, min(start + 64, len(val)))])
        _, codes, valid = vq.tokenize(batch["motion"].to(run.device), batch["lengths"].to(run.device))
        val_codes.append(codes[valid])
    usage = lamp.codebook_usage(torch.cat(val_codes), cfg.vq_codes)
    print(f"[lamp_vq] codebook usage on val: {100 * usage['used']:.1f}% of {cfg.vq_codes} codes, "
          f"perplexity {usage['perplexity']:.1f}")
    # 2. LaMP over the frozen motion encoder
    torch.manual_seed(seed)
    meta = {"vocab_size": len(tokenizer), "eot_id": tokenizer.eot_id}
    model = lamp.LaMP.from_bert(run.args.bert, cfg, **meta) if run.args.bert else lamp.LaMP(cfg, **meta)
    if not run.args.bert:
        print("[lamp] random initialisation (the paper starts from BERT-base: --bert DIR)")
    model = model.to(run.device)

    def loss_fn(batch):
        with torch.no_grad():
            z, codes, valid = vq.tokenize(batch["motion"].to(run.device), batch["lengths"].to(run.device))
        return model.loss(z, valid, tokenizer(batch["caption"]).to(run.device), codes)

    sched = run.cfg.lamp_train
    losses = fit(run, "lamp", model, model.cfg, loss_fn, batches(train, sched.batch_size, seed + 1), sched, meta)
    # 3. Tab. 3: retrieval on the test split, LaMP beside the plain evaluator
    rows = retrieval_rows(lamp.LaMPEvaluator(vq, model), load_embedder(run, "evaluator"), test, tokenizer,
                          run.device)
    note = (f"{len(test)} test clips of {dataset_name(run)}, one caption each, ranked against the whole "
            f"split (the paper: TMR's test protocol); recall as a fraction (the paper: %). LaMP ranks by "
            f"cosine (best query: max over its queries), the evaluator by Euclidean distance. Codebook: "
            f"{100 * usage['used']:.1f}% of {cfg.vq_codes} codes used on val, perplexity {usage['perplexity']:.1f}.")
    metrics.write_results(run.out, "lamp_retrieval", rows, "Text-motion retrieval (LaMP Tab. 3 analogue)", note)
    print((run.out / "results.md").read_text())
    return {"vq_final_losses": vq_losses, "codebook_usage_val": usage, "final_losses": losses,
            "retrieval": {name: {k: v[0] for k, v in r.items()} for name, r in rows.items()}}


class Pipeline:
    """The frozen models of a finished LEAD run, and text -> motion with or without realignment."""

    def __init__(self, run: Run, denoiser_name: str | None = None, mate: bool = False):
        self.run = run
        self.text = clip_text_encoder(run, mate=True) if mate else text_encoder(run)
        self.vae = load_vae(run)
        self.denoiser = load_denoiser(run, denoiser_name)
        self.schedule = diffusion.GaussianDiffusion(self.denoiser.cfg).to(run.device)
        self.c_uncond = self.text.encode_cached([""])[0]                          # (C,)

    def generate(self, captions: list[str], lengths: torch.Tensor,
                 realigner: projector.Projector | None) -> torch.Tensor:
        c = self.text.encode_cached(captions)                                     # (B, C)
        return projector.generate(self.vae, self.denoiser, self.schedule, c, self.c_uncond,
                                  lengths.to(self.run.device), realigner)


def seconds_per_prompt(pipe: Pipeline, dataset, realigner, prompts: int) -> tuple[float, float]:
    """Wall time of generating one motion for one prompt (batch of 1), mean and 95% CI."""
    times = []
    for i in range(prompts + 1):
        item = dataset[i % len(dataset)]
        start = time.perf_counter()
        pipe.generate([item["caption"]], torch.tensor([item["length"]]), realigner)
        if pipe.run.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return metrics.mean_ci(times[1:])  # the first call warms up caches and kernels


@torch.no_grad()
def latent_structure(pipe: Pipeline, realigner: projector.Projector, dataset) -> dict | None:
    """The quantitative stand-in for LEAD's t-SNE (Fig. 3 right): leave-one-out 1-NN accuracy
    of the action label for test latents, in the VAE space and in the projected space.
    Needs the synthetic dataset's labels; uses the motions made of a single action."""
    segments = synthetic.load_segments(dataset.root)
    if not segments:
        return None
    items = [dataset[i] for i in range(len(dataset))]
    items = [it for it in items if len(segments.get(it["name"], {}).get("actions", [])) == 1]
    labels = [segments[it["name"]]["actions"][0] for it in items]
    z_all, proj_all = [], []
    for start in range(0, len(items), 64):
        batch = data.collate(items[start:start + 64])
        z, _, _ = pipe.vae.encode(batch["motion"].to(pipe.run.device), batch["lengths"].to(pipe.run.device),
                                  sample=False)
        z_all.append(z.flatten(1))
        proj_all.append(realigner.project(z))
    z_all, proj_all = torch.cat(z_all), torch.cat(proj_all)
    return {"motions": len(items), "actions": len(set(labels)),
            "vae_space": metrics.nearest_neighbour_accuracy(z_all, labels),
            "projected_space": metrics.nearest_neighbour_accuracy(proj_all, labels)}


def atm_eval_rows(run: Run, realigner: projector.Projector, evaluate) -> dict:
    """The MLD+ATM and LEAD+ATM rows of the Tab. 1 analogue: the ATM-fine-tuned denoiser,
    sampled without and with the LEAD row's projector; {} (and a note) before `--stage atm`."""
    name = conditioned(run, "diffusion_atm")
    if not (run.out / f"{name}.pt").exists():
        print("[eval] no diffusion_atm.pt yet: run `--stage atm`, then `--stage eval` again, "
              "for the MLD+ATM and LEAD+ATM rows")
        return {}
    pipe, rows = Pipeline(run, name), {}
    for name, r in (("MLD+ATM", None), ("LEAD+ATM", realigner)):
        print(f"[eval] {name}")
        rows[name] = evaluate(lambda captions, lengths, r=r: pipe.generate(captions, lengths, r))
    return rows


def mate_eval_rows(run: Run, evaluate) -> dict:
    """The MLD+MATE and LEAD+MATE rows of the Tab. 1 analogue (MATE Tab. 1 "+MATE"): the
    denoiser and projector retrained on the MATE text encoder; {} (and a note) before --stage mate."""
    if run.args.text_encoder != "clip":  # MATE retrains CLIP's table: its rows belong to the CLIP table
        return {}
    if not (run.out / "diffusion_mate.pt").exists():
        print("[eval] no diffusion_mate.pt yet: run `--stage mate`, then `--stage eval` again, "
              "for the MLD+MATE and LEAD+MATE rows")
        return {}
    pipe, rows = Pipeline(run, "diffusion_mate", mate=True), {}
    for name, r in (("MLD+MATE", None), ("LEAD+MATE", load_projector(run, "projector_mate"))):
        print(f"[eval] {name}")
        rows[name] = evaluate(lambda captions, lengths, r=r: pipe.generate(captions, lengths, r))
    return rows


def stage_eval(run: Run) -> dict:
    """The Tab. 1 analogue on the test split: Real, MLD (no realignment) and LEAD, from the same
    checkpoints; per-prompt inference time; latent structure; `--ablations`: Tab. 6 rows."""
    test = open_split(run, "test")
    pipe = Pipeline(run)
    evaluator, tokenizer = eval_embedder(run), pipe.text.tokenizer
    cfg = run.cfg.eval
    methods = {"MLD": None, "LEAD": load_projector(run)}
    if run.args.ablations:
        labels = {"projector_no_align": "LEAD w/o L_align", "projector_no_rec": "LEAD w/o L_rec",
                  "projector_no_var": "LEAD w/o L_var", "projector_mlp": "LEAD (mlp)"}
        methods.update({label: load_projector(run, conditioned(run, name)) for name, label in labels.items()})
    evaluate = lambda generate_fn: metrics.evaluate(  # noqa: E731
        generate_fn, test, evaluator, tokenizer, replications=cfg.replications,
        mm_num_texts=cfg.mm_num_texts, mm_num_gens=cfg.mm_num_gens,
        diversity_times=cfg.diversity_times, seed=run.cfg.run.seed)
    print(f"[eval] Real ({cfg.replications} replications)")
    rows = {"Real": evaluate(None)}
    for name, realigner in methods.items():
        print(f"[eval] {name}")
        rows[name] = evaluate(lambda captions, lengths, r=realigner: pipe.generate(captions, lengths, r))
    rows.update(atm_eval_rows(run, methods["LEAD"], evaluate))
    rows.update(mate_eval_rows(run, evaluate))
    note = (f"{len(test)} test motions of {dataset_name(run)}, mean ± 1.96 std / sqrt(R) over "
            f"R = {cfg.replications} replications; MModality over {cfg.mm_num_texts} texts x "
            f"{cfg.mm_num_gens} generations. " + eval_note_space(run) + ", so they compare methods within this run only.")
    metrics.write_results(run.out, eval_section(run), rows, eval_title(run), note)
    timing = {name: {"s / prompt": seconds_per_prompt(pipe, test, methods[name], cfg.timing_prompts)}
              for name in ("MLD", "LEAD")}
    metrics.write_results(run.out, conditioned(run, "timing"), timing, "Inference time per prompt",
                          f"{cfg.timing_prompts} prompts, batch of 1, on {run.device.type}; "
                          "the paper: MLD 0.236 s, LEAD 0.245 s on an RTX 3090")
    structure = latent_structure(pipe, methods["LEAD"], test)
    if structure:
        metrics.write_results(run.out, conditioned(run, "latent_structure"), {
            "VAE latent z_vae": {"1-NN action accuracy": (structure["vae_space"], 0.0)},
            "projected E_proj(z_vae)": {"1-NN action accuracy": (structure["projected_space"], 0.0)}},
            "Latent structure (stand-in for LEAD Fig. 3, t-SNE)",
            f"leave-one-out nearest neighbour (Euclidean) over {structure['motions']} single-action "
            f"test motions, {structure['actions']} action labels")
    print((run.out / "results.md").read_text())
    return {"rows": {n: {k: list(v) for k, v in r.items()} for n, r in rows.items()},
            "timing": {n: list(v["s / prompt"]) for n, v in timing.items()}, "latent_structure": structure}


def dataset_name(run: Run) -> str:
    return "the embedded synthetic dataset" if run.synthetic else str(run.data_root)


DEFAULT_PROMPTS = ["a person walks forward", "a person jumps then waves with the right hand",
                   "someone walks in a circle clockwise"]


def save_motion(stem: Path, motion: torch.Tensor, dataset, title: str, gif: bool) -> list[str]:
    """A normalized motion (T, D) -> STEM_features.npy (de-normalized), STEM_joints.npy (T, J, 3),
    and STEM.gif when asked (matplotlib optional: a missing one is reported, not fatal)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    features = dataset.denormalize(motion.numpy())                               # (T, D)
    joints = data.features_to_joints(torch.from_numpy(features), dataset.skeleton.n_joints).numpy()
    np.save(f"{stem}_features.npy", features)
    np.save(f"{stem}_joints.npy", joints)
    written = [f"{stem}_joints.npy"]
    if gif:
        try:
            import render
            written.append(str(render.render_gif(joints, f"{stem}.gif", title=title, skeleton=dataset.skeleton)))
        except ImportError as err:
            print(f"no animation: {err}")
    return written


def stage_sample(run: Run) -> dict:
    """Text -> motion files: features (T, D) and joints (T, J, 3) as .npy, and a GIF."""
    args = run.args
    texts = args.text or DEFAULT_PROMPTS
    stats = open_split(run, "train")
    if not run.cfg.data.min_len <= args.length <= run.cfg.data.max_len:
        raise ValueError(f"--length {args.length}: the models were trained on "
                         f"{run.cfg.data.min_len}..{run.cfg.data.max_len} frames")
    pipe = Pipeline(run)
    learned = inversion.load_tokens(pipe.text, run.out / "tokens", texts)  # words of --stage inversion
    if learned:
        print(f"[sample] learned words from {run.out / 'tokens'}: {', '.join(learned)}")
    realigner = None if args.no_realign else load_projector(run)
    gif = importlib.util.find_spec("matplotlib") is not None
    if not gif:
        print("[sample] matplotlib is not installed: writing .npy files only "
              "(`pip install matplotlib` for stick-figure GIFs)")
    folder = run.out / conditioned(run, "samples")
    lengths = torch.full((args.num,), args.length, dtype=torch.long)
    written = []
    for i, text in enumerate(texts):
        torch.manual_seed(run.cfg.run.seed + i)
        motion = pipe.generate([text] * args.num, lengths, realigner).cpu()      # (N, T, D)
        slug = "_".join(text.lower().split())[:60].replace("/", "-").replace("<", "").replace(">", "")
        for k in range(args.num):
            written += save_motion(folder / f"{i:02d}_{slug}_{k}", motion[k], stats, text, gif)
    for path in written:
        print(f"[sample] wrote {path}")
    return {"texts": texts, "realigned": realigner is not None, "files": written}


# ----------------------------------------------------------------------------
# Motion textual inversion (LEAD Sec. 4.2, Sec. 5.5, Tab. 3; inversion.py)


def inversion_models(run: Run) -> inversion.FrozenModels:
    """The frozen models of a finished LEAD run, with a text encoder of the stage's own, so the
    words learned here never reach the shared one (run.cache["text"]) that later stages use."""
    if run.args.text_encoder != "clip":
        raise ValueError("--stage inversion learns a CLIP word embedding: run it without --text-encoder lamp")
    text_encoder(run)  # the prerequisite check and its message
    text = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)
    motion_vae, denoiser = load_vae(run), load_denoiser(run)
    schedule = diffusion.GaussianDiffusion(denoiser.cfg).to(run.device)
    return inversion.FrozenModels(text, motion_vae, denoiser, schedule, load_projector(run))


def tagged_caption(root: Path, name: str, caption: str) -> str:
    """The "word/POS ..." field of `caption` in texts/NAME.txt (HumanML3D layout), or ""."""
    path = root / "texts" / f"{name}.txt"
    if not path.exists():  # a sub-span item is named NAME_start_end
        path = root / "texts" / f"{name.rsplit('_', 2)[0]}.txt"
    if not path.exists():
        return ""
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split("#")
        if len(parts) == 4 and parts[0].strip() == caption:
            return parts[1]
    return ""


@torch.no_grad()
def generate_and_embed(models: inversion.FrozenModels, evaluator, prompts: list[str],
                       lengths: torch.Tensor, seed: int, chunk: int = 64) -> dict:
    """Generate one motion per prompt, decoded without and with realignment from the same latents
    -> {False: (embeddings (N, E), [motion (T_i, D)]), True: (...)}, motions normalized, on the CPU.
    The same seed gives every call the same noise, so methods are compared on paired samples."""
    generator = torch.Generator(device=models.device).manual_seed(seed)
    out = {False: ([], []), True: ([], [])}
    for start in range(0, len(prompts), chunk):
        span = lengths[start:start + chunk].to(models.device)                     # (b,)
        motions = inversion.generate(models, prompts[start:start + chunk], span, realign=(False, True),
                                     generator=generator)
        for project, motion in zip((False, True), motions):                       # (b, T, D) each
            out[project][0].append(evaluator.encode_motion(motion, span))
            out[project][1].extend(motion[b, :span[b]].cpu() for b in range(len(span)))
    return {p: (torch.cat(emb).double().cpu().numpy(), motions) for p, (emb, motions) in out.items()}


@torch.no_grad()
def embed_examples(evaluator, examples: list[torch.Tensor], lengths: list[int], device) -> np.ndarray:
    """Evaluator embeddings (N, E) of normalized example motions, each cut to its length."""
    batch = data.collate([{"motion": x[:n], "length": n, "caption": "", "name": ""}
                          for x, n in zip(examples, lengths)])
    return evaluator.encode_motion(batch["motion"].to(device), batch["lengths"].to(device)).double().cpu().numpy()


def mti_row(emb: np.ndarray, owner: np.ndarray, text_emb: np.ndarray, real_emb: np.ndarray | None,
            diversity_times: int, seed: int) -> dict:
    """Tab. 3 columns for motions emb (N, E) whose captions are rows `owner` of text_emb."""
    hits = inversion.caption_r_precision(emb, owner, text_emb, seed=seed)     # (N, 3)
    row = {"R-precision top-3": metrics.mean_ci(hits[:, 2]),
           # Eq. (12) as computed: the distance of each motion to its own caption
           "MMdist": metrics.mean_ci(np.linalg.norm(emb - text_emb[owner], axis=1)),
           "Diversity": (metrics.diversity(emb, min(diversity_times, len(emb)), seed=seed), 0.0)}
    if real_emb is not None:
        row["FID"] = (metrics.fid(real_emb, emb), 0.0)
    return row


MTI_LABELS = {"feat": "MTI_feat", "mld": "MTI_mld", "lead": "MTI_lead"}


def inversion_table(run: Run, models: inversion.FrozenModels) -> dict:
    """The Tab. 3 analogue: one word per test motion (a fixed random subset) and objective, then
    generations from "a person <word>" with and without realignment, against the examples."""
    cfg, seed, unit = run.cfg.inversion, run.cfg.run.seed, run.cfg.data.unit
    test, tokenizer = open_split(run, "test"), text_encoder(run).tokenizer
    evaluator = load_embedder(run, "evaluator")
    picks = np.sort(np.random.default_rng(seed).choice(len(test), min(cfg.test_motions, len(test)), replace=False))
    is_one_token = lambda word: len(tokenizer.encode(word)) == 1  # noqa: E731
    examples, lengths, inits = [], [], []
    for i in picks:
        name, raw, captions = test.items[i]
        examples.append(torch.from_numpy(test.normalize(raw)))                  # (T, D)
        lengths.append(min(len(raw), models.vae.cfg.max_len) // unit * unit)
        inits.append(inversion.coarse_descriptor(captions[0], tagged_caption(test.root, name, captions[0]),
                                                 is_one_token, cfg.init_word))
    # 1. one word per motion and objective (Sec. 5.2: 20 Adam steps on 4 segments of the motion)
    start, words = time.time(), {objective: [] for objective in inversion.OBJECTIVES}
    for objective in inversion.OBJECTIVES:
        for k, (example, init) in enumerate(zip(examples, inits)):
            word = f"<mti_{objective}_{k}>"
            inversion.invert(models, [example], word, init, cfg, objective, seed=seed + k)
            words[objective].append(word)
        print(f"[inversion] {len(picks)} words with MTI_{objective} ({time.time() - start:.0f} s)")
    # 2. the ground truth: each test motion's first caption; the examples themselves (Real)
    all_captions = [captions[0] for _, _, captions in test.items]
    with torch.no_grad():
        text_emb = torch.cat([evaluator.encode_text(tokenizer(all_captions[s:s + 256]).to(run.device))
                              for s in range(0, len(all_captions), 256)]).double().cpu().numpy()  # (M, E)
    real_emb = embed_examples(evaluator, examples, lengths, run.device)    # (N, E)
    times = run.cfg.eval.diversity_times
    rows = {"Real": mti_row(real_emb, picks, text_emb, None, times, seed)}
    # 3. G generations per word, the same noise for every objective
    G = cfg.generations
    owner, gen_lengths = np.repeat(picks, G), torch.tensor(lengths).repeat_interleave(G)
    for objective in inversion.OBJECTIVES:
        prompts = [cfg.prompt.replace(inversion.PLACEHOLDER, w) for w in words[objective] for _ in range(G)]
        sets = generate_and_embed(models, evaluator, prompts, gen_lengths, seed)
        for project in (False, True):
            label = MTI_LABELS[objective] + (" w/ project" if project else "")
            rows[label] = mti_row(sets[project][0], owner, text_emb, real_emb, times, seed)
    note = (f"{len(picks)} test motions of {dataset_name(run)} (a fixed random subset; the paper: 100), one "
            f"word per motion and objective ({cfg.steps} Adam steps, batch {cfg.batch_size} segments, lr "
            f"{cfg.lr}, initialised from the first single-token verb of the motion's first caption, else "
            f"'{cfg.init_word}'), {G} generations per word from \"{cfg.prompt}\" at the motion's length; "
            "'w/ project' decodes the same diffused latents after D_proj(E_proj(.)). Real: the example "
            "motions. R-precision top-3: for each motion, is its example's first caption among the 3 "
            "closest of 32 (itself + 31 captions of other test motions); MMdist: mean distance to that "
            "caption; FID: generated vs example motions; Diversity: mean distance over min(300, N) random "
            "pairs. CIs: 1.96 std / sqrt(N) over motions for R-precision and MMdist; FID and Diversity are "
            "set-level (no CI, shown as ± 0). Metrics in this run's `evaluator` space.")
    metrics.write_results(run.out, "mti", rows, "Motion textual inversion (LEAD Tab. 3 analogue)", note)
    return {"test_motions": [test.items[i][0] for i in picks], "inits": inits,
            "rows": {n: {k: list(v) for k, v in r.items()} for n, r in rows.items()}}


def inversion_styles(run: Run, models: inversion.FrozenModels) -> dict | None:
    """The out-of-distribution case (the paper's 100STYLE experiment, Fig. 7): one word per
    held-out synthetic style and objective, learned from the style's first example motion;
    generated motions are scored by their evaluator-space distance to the style's examples."""
    cfg, seed, unit = run.cfg.inversion, run.cfg.run.seed, run.cfg.data.unit
    root = dataset_root(run)
    if not (root / "styles.txt").exists() or not (root / "segments.json").exists():
        print(f"[inversion] {root} has no styles.txt / segments.json (only the embedded synthetic "
              f"dataset holds held-out styles): the out-of-distribution part is skipped")
        return None
    methods = ["init", "init+proj"] + [f"{o}{p}" for o in inversion.OBJECTIVES for p in ("", "+proj")]
    unknown = set(cfg.render) - set(methods) - {"example"}
    if unknown:
        raise ValueError(f"inversion.render: unknown {sorted(unknown)}; choose from example, {', '.join(methods)}")
    split, segments = open_split(run, "styles"), synthetic.load_segments(root)
    evaluator = load_embedder(run, "evaluator")
    by_style = {}  # style -> indices into split.items
    for i, (name, _, _) in enumerate(split.items):
        style = segments.get(name, {}).get("style")
        if style:
            by_style.setdefault(style, []).append(i)
    styles = [s for s in synthetic.STYLES if s in by_style][:cfg.styles]
    examples = {s: [torch.from_numpy(split.normalize(split.items[i][1])) for i in by_style[s]] for s in styles}
    lengths = {s: [min(len(x), models.vae.cfg.max_len) // unit * unit for x in examples[s]] for s in styles}
    example_emb = {s: embed_examples(evaluator, examples[s], lengths[s], run.device) for s in styles}
    centroids = np.stack([example_emb[s].mean(0) for s in styles])              # (S, E)
    folder, G, start = run.out / "inversion", cfg.generations, time.time()
    results, files = {m: {} for m in methods}, []
    for si, style in enumerate(styles):
        slug = style.replace(" ", "_")
        prompts = {"init": [cfg.prompt.replace(inversion.PLACEHOLDER, cfg.init_word)] * G}
        for objective in inversion.OBJECTIVES:
            word = f"<{slug}_{objective}>"
            v = inversion.invert(models, examples[style][:1], word, cfg.init_word, cfg, objective, seed=seed)
            inversion.save_token(run.out / "tokens" / f"{slug}_{objective}.pt", word, cfg.init_word, v, objective)
            prompts[objective] = [cfg.prompt.replace(inversion.PLACEHOLDER, word)] * G
        gen_lengths = torch.full((G,), lengths[style][0], dtype=torch.long)
        files += save_motion(folder / slug / "example", examples[style][0][:lengths[style][0]], split,
                             f"{style}: example", "example" in cfg.render)
        for key, texts in prompts.items():
            sets = generate_and_embed(models, evaluator, texts, gen_lengths, seed)
            for project in (False, True):
                method = key + ("+proj" if project else "")
                emb, motions = sets[project]
                dist = np.linalg.norm(emb[:, None] - example_emb[style][None], axis=-1).mean(1)  # (G,)
                nearest = np.linalg.norm(emb[:, None] - centroids[None], axis=-1).argmin(1)    # (G,)
                results[method][style] = (dist, nearest == si)
                for k, motion in enumerate(motions):
                    files += save_motion(folder / slug / f"{method}_{k}", motion, split, f"{style}: {texts[0]}"
                                         + (" (realigned)" if project else ""), k == 0 and method in cfg.render)
        print(f"[inversion] style {style}: {len(examples[style])} examples, words saved to "
              f"{run.out / 'tokens'} ({time.time() - start:.0f} s)")
    labels = {"init": f"'{cfg.init_word}' (no inversion)", **MTI_LABELS}
    rows = {}
    spread = {}
    for s in styles:
        if len(example_emb[s]) >= 2:
            d = np.linalg.norm(example_emb[s][:, None] - example_emb[s][None], axis=-1)
            spread[s] = d[~np.eye(len(d), dtype=bool)]
    rows["Real"] = {f"dist. {s}": metrics.mean_ci(spread[s]) for s in spread}
    for method, per_style in results.items():
        key, _, project = method.partition("+")
        label = labels[key] + (" w/ project" if project else "")
        rows[label] = {f"dist. {s}": metrics.mean_ci(d) for s, (d, _) in per_style.items()}
        rows[label]["dist. mean"] = metrics.mean_ci(np.concatenate([d for d, _ in per_style.values()]))
        rows[label]["nearest style"] = metrics.mean_ci(np.concatenate([hit for _, hit in per_style.values()]))
    note = (f"One word per held-out style of {dataset_name(run)} (styles.txt; never in a training caption) and "
            f"objective, learned from the style's first example motion, initialised from '{cfg.init_word}'. "
            f"'dist. STYLE': mean evaluator-space distance between each of {G} motions generated from "
            f"\"{cfg.prompt}\" and every example of the style (↓; Real: distinct examples of the style among "
            "themselves); 'nearest style': share of generated motions whose nearest style centroid of example "
            f"embeddings is their own (↑, chance 1/{len(styles)}). ± 1.96 std / sqrt(n) over generated motions "
            f"(Real: example pairs). Motions and GIFs in {folder}.")
    metrics.write_results(run.out, "mti_styles", rows, "Motion textual inversion, held-out styles "
                          "(stand-in for LEAD's 100STYLE, Fig. 7)", note)
    return {"styles": {s: len(examples[s]) for s in styles}, "files": len(files),
            "rows": {n: {k: list(v) for k, v in r.items()} for n, r in rows.items()}}


def learn_user_word(run: Run) -> dict:
    """`--motion FILE.npy [--motion ...] --word NAME --init WORD`: learn <NAME> from the user's
    example motions and save it to run.out/tokens/NAME.pt for `--stage sample`."""
    args, cfg = run.args, run.cfg.inversion
    if not args.word or not args.init:
        raise ValueError("--motion needs --word NAME (prompts then say <NAME>) and --init WORD "
                         "(a coarse one-word descriptor to start from, e.g. walk)")
    word = inversion.token_word(args.word)
    stats = open_split(run, "train")
    examples = [inversion.load_example_motion(path, stats.mean, stats.std, stats.skeleton, run.cfg.data.min_len)
                for path in args.motion]
    models = inversion_models(run)
    embedding = inversion.invert(models, examples, word, args.init, cfg, seed=run.cfg.run.seed, log=print)
    path = inversion.save_token(run.out / "tokens" / f"{word[1:-1]}.pt", word, args.init, embedding, cfg.objective)
    print(f"[inversion] learned {word} (MTI_{cfg.objective}) from {len(examples)} motion(s) -> {path}\n"
          f"  use it: python train.py --stage sample --out {run.out} --text \"a person {word}\"")
    return {"word": word, "init": args.init, "objective": cfg.objective,
            "motions": [str(p) for p in args.motion], "token": str(path)}


def stage_inversion(run: Run) -> dict:
    """Motion textual inversion (LEAD Sec. 4.2). With --motion: learn one word from the user's
    examples. Otherwise: the Tab. 3 analogue on test motions and the held-out styles."""
    if run.args.motion:
        return learn_user_word(run)
    if run.args.word or run.args.init:
        raise ValueError("--word and --init name a word learned from --motion FILE.npy: give the motion(s) too")
    models = inversion_models(run)
    figures = {"tab3": inversion_table(run, models), "styles": inversion_styles(run, models)}
    print((run.out / "results.md").read_text())
    return figures


STAGE_FUNCTIONS = {
    "data": stage_data,
    "evaluator": stage_evaluator,
    "vae": stage_vae,
    "diffusion": stage_diffusion,
    "projector": stage_projector,
    "eval": stage_eval,
    "sample": stage_sample,
    "atm": stage_atm,
    "inversion": stage_inversion,
    "lamp": stage_lamp,
    "mate": stage_mate,
}
# eval comes after every stage that adds a row to its table
ALL_ORDER = ["data", "evaluator", "lamp", "vae", "diffusion", "projector", "atm", "mate", "eval", "sample",
             "inversion"]


def run_stage(run: Run, stage: str) -> dict:
    # the splits opened by earlier stages of this process restart their crop/caption generator:
    # a stage sees the same data whether it runs alone, within --stage all, or after --resume
    for key, dataset in run.cache.items():
        if key.startswith("split:"):
            dataset.reseed(run.cfg.run.seed)
    start = time.time()
    figures = STAGE_FUNCTIONS[stage](run) or {}
    figures["wall_time_s"] = round(time.time() - start, 2)
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(run.out / f"{record_name(run, stage)}.json", figures)
    print(f"[{stage}] done in {figures['wall_time_s']:.1f} s -> {run.out / (record_name(run, stage) + '.json')}")
    return figures


# ----------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES + ["all"])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="tiny: CPU-sized models (default); paper: the papers' sizes, one GPU")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="run folder")
    p.add_argument("--data", type=Path, default=None,
                   help="a HumanML3D- or KIT-ML-layout folder; default: the embedded synthetic dataset")
    p.add_argument("--synthetic-dir", type=Path, default=Path("data/synthetic"),
                   help="where the embedded synthetic dataset is generated (when --data is not given)")
    p.add_argument("--clip", default=None,
                   help="real CLIP weights: a local folder or an already-downloaded name "
                        "(e.g. openai/clip-vit-large-patch14); default: a small offline text encoder")
    p.add_argument("--bert", default=None,
                   help="lamp: initialise LaMP from a local BERT folder (the paper: BERT-base); default: random")
    p.add_argument("--text-encoder", default="clip", choices=["clip", "lamp"],
                   help="diffusion/projector/eval/sample: condition on CLIP or on LaMP text features "
                        "(LaMP Sec. 3.2); LaMP models are saved as diffusion_lamp.pt, projector_lamp.pt")
    p.add_argument("--evaluator", default="evaluator", choices=["evaluator", "lamp"],
                   help="eval: the embedder the metrics are computed in; lamp gives LaMP-R-precision "
                        "and LaMP-MMdist (LaMP Tab. 2)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted stage from its last checkpoint; with --stage all, "
                        "skip the stages already finished")
    p.add_argument("--ablations", action="store_true",
                   help="projector/eval: also the LEAD Tab. 6 ablations (w/o L_align, L_rec, L_var; MLP)")
    p.add_argument("--text", action="append", default=[],
                   help="sample: a prompt (repeatable; default: a few built-in prompts)")
    p.add_argument("--length", type=int, default=120, help="sample: motion length in frames")
    p.add_argument("--num", type=int, default=1, help="sample: motions per prompt")
    p.add_argument("--no-realign", action="store_true",
                   help="sample: skip the projector, i.e. the MLD baseline from the same checkpoints")
    p.add_argument("--motion", type=Path, action="append", default=[],
                   help="inversion: an example motion to learn a new word from (repeatable): "
                        "(T, 263) features as --stage sample writes them, or (T, 22, 3) joints")
    p.add_argument("--word", default=None,
                   help="inversion: NAME of the learned word; prompts then say <NAME>")
    p.add_argument("--init", default=None,
                   help="inversion: a coarse one-word descriptor to start from (e.g. walk)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args.preset, args.sets)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    run = Run(cfg=cfg, out=args.out, data_root=args.data or args.synthetic_dir,
              synthetic=args.data is None, device=pick_device(args.device), clip=args.clip,
              resume=args.resume, args=args)
    stages = ALL_ORDER if args.stage == "all" else [args.stage]
    for stage in stages:
        if args.stage == "all" and args.resume and (run.out / f"{record_name(run, stage)}.json").exists():
            print(f"[{stage}] already finished in {run.out}, skipped (--resume)")
            continue
        try:
            run_stage(run, stage)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except NonFiniteLoss as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
