"""The command line: every stage of the LEAD recipe and its companion papers.

    python train.py --stage STAGE [--preset tiny|paper] [--out runs/default] [--set key=value ...]

Stages, in the order `--stage all` runs them (LEAD Sec. 4.1.2 trains VAE, then diffusion, then
the projector):

    data       generate, convert (--from-joints) or validate the dataset; the offline text encoder
    evaluator  the two text-motion embedders: `evaluator` (metrics) and `alignment` (ATM, MATE)
    lamp       LaMP pretraining (then --text-encoder lamp, --evaluator lamp)
    vae        the MLD motion VAE
    diffusion  the latent diffusion model, VAE and text encoder frozen
    projector  the LEAD projector, everything else frozen
    atm        ATM fine-tuning of the denoiser
    mate       MATE word table, then the denoiser and projector retrained on it
    lcm        MotionLCM: a consistency model distilled from the denoiser, 1-4 step sampling
    eval       the Tab. 1 analogue: Real, MLD, LEAD (+ATM, +MATE, ablations), on test and training clips
    sample     text -> motion files (.npy, GIF/MP4 animations, --bvh)
    inversion  motion textual inversion

and, outside `all`: `import` (MLD's released checkpoint -> vae.pt, diffusion.pt). Under torchrun
the training stages run data-parallel (see DISTRIBUTED_STAGES).

Each stage reads what the stages before it wrote into `--out` and writes its own checkpoint
there; a missing prerequisite is an error naming the stage to run. Configuration is one
dataclass per section (`data`, `text`, ...; the model sections live in their modules), the
paper's values by default; `--preset tiny` is a set of overrides for a CPU, and `--set
section.field=value` overrides single fields, type-checked, unknown keys rejected.

This file stays importable: nothing runs at import time, so tests call `main([...])`.
"""
import argparse
import contextlib
import dataclasses
import hashlib
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
import torch.distributed as dist

import atm_losses
import clip
import data
import diffusion
import ingest
import inversion
import lamp
import lcm
import mate
import metrics
import projector
import render
import safe_pickle
import synthetic
import vae
from atm_losses import ATMConfig
from clip import ClipConfig, TextEncoder
from diffusion import DiffusionConfig
from inversion import InversionConfig
from lcm import LCMConfig
from lamp import LaMPConfig
from mate import MATEConfig
from metrics import EvalConfig, T2MEvaluatorConfig
from t2m_evaluator import DatasetEvaluator, T2MEvaluator
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
class RunOptions:
    seed: int = 0     # seeds the offline text encoder and every training stage
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core)
    precision: str = "fp32"  # fp32, bf16 or fp16 (CUDA): one autocast context in fit and sampling
    compile: bool = False    # torch.compile the denoiser for sampling (eval, sample)


@dataclass
class RunConfig:
    run: RunOptions = field(default_factory=RunOptions)
    data: DataConfig = field(default_factory=DataConfig)
    text: ClipConfig = field(default_factory=ClipConfig)
    evaluator: T2MEvaluatorConfig = field(default_factory=lambda: T2MEvaluatorConfig(mask_padding=True))
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
    lcm: LCMConfig = field(default_factory=LCMConfig)
    # MotionLCM V1 (configs_v1/motionlcm_t2m.yaml): batch 256, lr 2e-4, 1000 epochs (~90k steps)
    lcm_train: Schedule = field(default_factory=lambda: Schedule(90_000, 256, 2e-4))


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
        "evaluator.dim_word": 64, "evaluator.dim_text_hidden": 128, "evaluator.dim_movement_enc_hidden": 128,
        "evaluator.dim_movement_latent": 128, "evaluator.dim_motion_hidden": 128, "evaluator.dim_coemb_hidden": 64,
        "evaluator_train.steps": 400, "evaluator_train.batch_size": 64, "evaluator_train.lr": 1e-3,
        # note: dropout off on CPU: attention dropout forces PyTorch's slow attention path
        # VAE: not MLD's 1 x 256 post-norm recipe, which needs far more steps than a CPU has
        # in minutes (vae.py, "Differences from the paper"; bench/bench_vae.py)
        "vae.latent_dim": 128, "vae.n_layers": 3, "vae.ff_dim": 256, "vae.dropout": 0.0,
        "vae.n_tokens": 4, "vae.norm_first": True, "vae.position_init": "sinusoidal",
        "vae.joint_loss": "root_relative",
        # the posterior noise grown over the first half of the steps (vae.py, noise_ramp): the
        # decoder then learns the limbs' swing that MLD's full noise from step 1 hides (issue 16)
        "vae.noise_ramp": 475, "vae_train.steps": 950, "vae_train.batch_size": 16, "vae_train.lr": 5e-4,
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
        # MotionLCM: V2's 10-step teacher grid reaches t = 999 in fewer updates; ~95 ms a step here
        "lcm.num_ddim_timesteps": 10, "lcm_train.steps": 2000, "lcm_train.batch_size": 64,
        "lcm_train.log_every": 200,
    },
}

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


# Allowed ranges of the numeric fields, by field name (any section); every other int must be >= 1
# (sizes, counts, steps), every other float > 0 (rates, scales, temperatures).
AT_LEAST_ZERO = {"seed", "threads", "synthetic_seed", "steps_offset", "mm_num_texts", "styles",
                 "pretrain_steps", "pretrain_warmup", "lambda_kl", "lambda_align", "lambda_rec", "lambda_var",
                 "lambda_inter", "lambda_intra", "prior_lambda", "lambda_word", "lambda_sent", "lambda_self",
                 "lambda_cross", "lambda_mtc", "lambda_mtm", "lambda_mgt", "lambda_tgm", "vq_commit", "vq_velocity",
                 "vq_reset_below", "huber_c", "w_min", "w_max", "guidance_scale"}
FRACTIONS = {"dropout", "cond_drop", "eta", "vq_ema", "ema_decay", "eps", "gamma", "label_smoothing"}  # [0, 1]


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def validate(cfg: RunConfig) -> RunConfig:
    """Every numeric field in its range and the fields that constrain each other, before any work:
    a ValueError names `section.field` and the allowed range."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            value, key = getattr(values, f.name), f"{section.name}.{f.name}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if f.name in FRACTIONS and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key}={value}: must lie in [0, 1]")
            if f.name in AT_LEAST_ZERO and not value >= 0:
                raise ValueError(f"{key}={value}: must be >= 0")
            if f.name not in FRACTIONS | AT_LEAST_ZERO and not (value >= 1 if isinstance(value, int) else value > 0):
                raise ValueError(f"{key}={value}: must be {'>= 1' if isinstance(value, int) else '> 0'}")
    if cfg.run.precision not in PRECISIONS:
        raise ValueError(f"run.precision={cfg.run.precision!r}: choose one of {', '.join(PRECISIONS)}")
    pairs = [("data.min_len", cfg.data.min_len, "data.max_len", cfg.data.max_len),
             ("diffusion.beta_start", cfg.diffusion.beta_start, "diffusion.beta_end", cfg.diffusion.beta_end),
             ("lcm.w_min", cfg.lcm.w_min, "lcm.w_max", cfg.lcm.w_max),
             ("lcm.sample_steps", cfg.lcm.sample_steps, "lcm.num_ddim_timesteps", cfg.lcm.num_ddim_timesteps)]
    if cfg.eval.mm_num_texts > 0:  # MModality draws its pairs without replacement
        pairs.append(("MModality's pairs", metrics.MM_PAIRS, "eval.mm_num_gens", cfg.eval.mm_num_gens))
    for low_key, low, high_key, high in pairs:
        if low > high:
            raise ValueError(f"{high_key}={high}: must be >= {low_key} ({low})")
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
    return validate(apply_overrides(cfg, overrides))


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
    """Load a checkpoint written by `--stage stage` (weights only: nothing in it can run code). A
    missing file names the stage to run; an unreadable one says what is wrong and which stage
    rewrites it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python train.py --stage {stage}` first "
                                f"(with the same --out)")
    rewrite = f"`python train.py --stage {stage}` (without --resume) rewrites it"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's zip reader, unpickler, EOF and allow-list refusals
        reason = ("it holds Python objects a checkpoint of this project never holds (refused: loading "
                  "them could run code)" if "Weights only load failed" in str(err)
                  else f"{type(err).__name__}: {(str(err).strip().splitlines() or ['empty file'])[0].split('. ')[0]}")
        raise ValueError(f"{path}: not a readable checkpoint ({reason}); {rewrite}") from None
    if not isinstance(state, dict) or not {"model", "step", "done"} <= set(state):
        raise ValueError(f"{path}: not a checkpoint of this project (no model, step, done); {rewrite}")
    return state


def fingerprint(run: "Run", path: Path) -> str:
    """sha256 of a checkpoint file or a folder's files (first 16 hex digits), cached per process
    by size and modification time: what a later checkpoint records it was trained on."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    known = run.cache.setdefault("fingerprints", {})  # (path, sizes and times) -> digest
    key = (str(path), tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in known:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.read_bytes())
        known[key] = digest.hexdigest()[:16]
    return known[key]


def write_json(path: Path, obj: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a device this machine lacks is an error naming those it has."""
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    if name == "auto":
        return torch.device("cuda" if "cuda" in available else "mps" if "mps" in available else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device name; this machine has {', '.join(available)}") from None
    if device.type not in available or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: not available here; this machine has {', '.join(available)}"
                         + (" (this torch is a CPU build)" if torch.version.cuda is None else ""))
    return device


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
    loaded: dict = field(default_factory=dict)  # file -> fingerprint of what this stage loaded
    rank: int = 0   # this process under torchrun (0 alone)
    world: int = 1  # processes under torchrun (1 without)


def autocast(run: Run):
    """The run's mixed precision (run.precision) as one autocast context; fp32: none."""
    dtype = PRECISIONS[run.cfg.run.precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(run.device.type, dtype=dtype)


def shard(batch: dict, rank: int, world: int) -> dict:
    """This rank's rows of a global batch (rows rank*B/W .. (rank+1)*B/W of every tensor and list
    of B entries): the configured batch size is the global one, split evenly across the ranks."""
    B = len(batch["caption"]) if "caption" in batch else len(next(v for v in batch.values() if torch.is_tensor(v)))
    if B % world:
        raise ValueError(f"a batch of {B} does not split evenly over {world} processes: make the "
                         f"batch size (*_train.batch_size) a multiple of {world}")
    rows = slice(rank * B // world, (rank + 1) * B // world)
    return {k: v[rows] if (torch.is_tensor(v) or isinstance(v, list)) and len(v) == B else v
            for k, v in batch.items()}


def dataset_root(run: Run) -> Path:
    """The dataset folder; the synthetic one is generated on first use."""
    root = run.data_root
    if run.synthetic:
        settings = {"motions": run.cfg.data.synthetic_motions, "seed": run.cfg.data.synthetic_seed}
        marker = root / "settings.json"
        if not marker.exists() or marker.read_text() != json.dumps(settings, indent=2) + "\n":  # as write_json
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
        feat_dim = data.load_array(root / "Mean.npy", "per-dimension mean").shape[-1] if (root / "Mean.npy").exists() \
            else data.T2M.feat_dim
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


def training_latents(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """vae.encode_dataset of the train split through the run's VAE, computed once per process and
    shared by the stages that train on it (diffusion, projector, mate) while vae.pt stays the
    same file (`--stage all` would otherwise encode the same motions three times)."""
    path = run.out / "vae.pt"
    key = (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None
    if key is not None:
        run.loaded["vae.pt"] = fingerprint(run, path)
    if key is None or run.cache.get("latents", (None,))[0] != key:
        # the data first, then the VAE: each missing prerequisite is named by its own error
        train, motion_vae = open_split(run, "train"), load_model(run, "vae")
        print(f"[latents] encoding the {len(train)} training motions once with {path}")
        train.reseed(run.cfg.run.seed)  # the same crops whichever stage asks first
        run.cache["latents"] = (key, vae.encode_dataset(motion_vae, train, run.device))
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


def averaged(run: Run, values: list) -> torch.Tensor:
    """Scalars (tensors or numbers) as one float64 tensor, averaged over the ranks under torchrun."""
    flat = torch.tensor([float(v.detach()) if torch.is_tensor(v) else float(v) for v in values], dtype=torch.float64)
    if run.world > 1:
        dist.all_reduce(flat)
        flat /= run.world
    return flat


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Data parallelism by hand: every rank's gradients replaced by their mean over the ranks, in
    one all_reduce. note: DistributedDataParallel's wrapper would sync only the calls that go
    through its forward(), and the stages' losses call their models' methods (encode_motion,
    tokenize, loss); the arithmetic is DDP's, without its overlap of communication and backward."""
    grads = []
    for p in params:
        if p.grad is None:  # unused on this rank's shard: a zero gradient, so all ranks match
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def fit(run: Run, name: str, model: torch.nn.Module, config, loss_fn, stream, sched: Schedule,
        meta: dict, after_step=None) -> dict:
    """Minimise `loss_fn(batch) -> (loss, parts)` over `sched.steps` batches of `stream`.

    Writes run.out/NAME.pt = {model, optimizer, config, meta, step, done, running, rng} (config:
    the model's dataclass; meta: what else its constructor needs, and `trained_on`, the
    fingerprints of the checkpoints this stage loaded) at least four times and at the end.
    `--resume` continues from it to the same weights as an uninterrupted run: the stream is
    replayed to its position (the streams are seeded) and the RNG that drives noise and dropout
    restored. Without --resume an existing NAME.pt is kept as NAME.prev.pt until the new one is
    done. A non-finite loss stops the stage and keeps the last good checkpoint. `after_step()`
    runs after each update (MotionLCM's EMA). Returns the final running averages of the loss parts.
    """
    path, previous = run.out / f"{name}.pt", run.out / f"{name}.prev.pt"
    params = _trainable(model)
    optimizer = torch.optim.AdamW(params, lr=sched.lr)
    scaler = torch.amp.GradScaler("cuda") if run.cfg.run.precision == "fp16" else None
    step, running = 0, {}
    if run.resume and path.exists():
        state = load_checkpoint(path, stage_of(name))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, running = state["step"], state.get("running", {})
        print(f"[{name}] resuming from {path} at step {step}/{sched.steps}")
        for _ in range(step if step < sched.steps else 0):  # the stream back where it was
            next(stream)
        if "rng" in state:  # (checkpoints of older versions resume, but not bit for bit)
            torch.set_rng_state(state["rng"])
    elif path.exists() and run.rank == 0:
        os.replace(path, previous)
        print(f"[{name}] retraining from scratch; the existing checkpoint is kept as {previous} until "
              f"the new one is done (pass --resume to continue an interrupted run instead)")
    if run.world > 1:  # the same weights everywhere; noise and dropout differ by rank
        dist.barrier()
        torch.manual_seed(1000 * run.cfg.run.seed + 7919 * step + run.rank)
    meta = {**meta, "trained_on": dict(run.loaded)}
    every = max(1, min(sched.ckpt_every, sched.steps // 4))

    def checkpoint(done: bool):
        if run.rank == 0:
            save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "config": dataclasses.asdict(config), "meta": meta, "step": step,
                                   "done": done, "running": running, "rng": torch.get_rng_state()})

    model.train()
    start, start_step = time.time(), step
    while step < sched.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(sched, step)
        batch = next(stream)
        with autocast(run):
            loss, parts = loss_fn(shard(batch, run.rank, run.world) if run.world > 1 else batch)
        logged = {key: float(v) for key, v in zip(["loss", *parts], averaged(run, [loss, *parts.values()]))}
        if not math.isfinite(logged["loss"]):
            raise NonFiniteLoss(f"[{name}] the loss became {logged['loss']} at step {step + 1}; "
                                f"the last good checkpoint ({path}) is kept. Lower the learning "
                                f"rate ({name}_train.lr) and rerun with --resume.")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if run.world > 1:
            average_gradients(params, run.world)
        scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        if after_step is not None:
            after_step()
        step += 1
        for key, value in logged.items():
            running[key] = 0.98 * running.get(key, value) + 0.02 * value
        if step % sched.log_every == 0 or step == sched.steps:
            rate = (step - start_step) / (time.time() - start)
            eta = (sched.steps - step) / max(rate, 1e-9)
            print(f"[{name}] step {step}/{sched.steps} "
                  + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                  + f" | {rate:.1f} it/s, {eta:.0f} s left", flush=True)
        if step % every == 0 and step < sched.steps:
            checkpoint(done=False)
    checkpoint(done=True)
    previous.unlink(missing_ok=True)
    model.eval()
    return {k: round(v, 5) for k, v in running.items()}


# ----------------------------------------------------------------------------
# Loading what earlier stages wrote


# checkpoint name -> how its model is rebuilt from the saved (config dict, meta); the name's
# first word picks the builder (diffusion_atm -> diffusion), `lamp_vq` and `alignment` their own
BUILDERS = {
    "vae": lambda c, m: vae.MotionVAE(VAEConfig(**c), m["feat_dim"]),
    "diffusion": lambda c, m: diffusion.Denoiser(DiffusionConfig(**c), tuple(m["latent_shape"]), m["text_dim"]),
    "projector": lambda c, m: projector.Projector(ProjectorConfig(**c), tuple(m["latent_shape"]), m["text_dim"]),
    "evaluator": lambda c, m: T2MEvaluator.rebuild(T2MEvaluatorConfig(**c), m),
    "lamp_vq": lambda c, m: lamp.MotionVQVAE(LaMPConfig(**c), m["feat_dim"]),
    "lamp": lambda c, m: lamp.LaMP(LaMPConfig(**c), m["vocab_size"], m["eot_id"]),
}
BUILDERS["alignment"] = BUILDERS["evaluator"]
BUILDERS["lcm"] = lambda c, m: lcm.ConsistencyDenoiser(BUILDERS["diffusion"](m["denoiser"], m), LCMConfig(**c))
# checkpoint name (its start) -> the stage writing it; else the name's first word
WRITTEN_BY = {"alignment": "evaluator", "lamp_vq": "lamp", "diffusion_atm": "atm", "diffusion_mse": "atm",
              "diffusion_mate": "mate", "projector_mate": "mate"}


def stage_of(name: str) -> str:
    return next((s for prefix, s in WRITTEN_BY.items() if name.startswith(prefix)), name.split("_")[0])


def finished(run: Run, name: str) -> dict:
    """run.out/NAME.pt of a finished stage; a missing or interrupted one names the stage to run.
    A checkpoint trained on another version of a file it depends on (a retrained vae.pt, say)
    is used with a warning naming the stage to rerun."""
    stage = stage_of(name)
    path = run.out / f"{name}.pt"
    state = load_checkpoint(path, stage)
    if not state.get("done"):
        raise FileNotFoundError(f"{path} is an interrupted run (step {state['step']}): finish it "
                                f"with `python train.py --stage {stage} --resume`")
    for file, recorded in state["meta"].get("trained_on", {}).items():
        if (run.out / file).exists() and fingerprint(run, run.out / file) != recorded:
            print(f"[provenance] warning: {path} was trained on another {run.out / file} than the one "
                  f"there now; rerun `python train.py --stage {stage}` to train it on this one")
    run.loaded[f"{name}.pt"] = fingerprint(run, path)
    return state


def load_model(run: Run, name: str) -> torch.nn.Module:
    """Rebuild the model of run.out/NAME.pt from its saved config, frozen, on run.device."""
    state = finished(run, name)
    model = BUILDERS.get(name) or BUILDERS[name.split("_")[0]]
    model = model(state["config"], state["meta"])
    model.load_state_dict(state["model"])
    return model.to(run.device).eval().requires_grad_(False)


def clip_text_encoder(run: Run, mate: bool | str = False) -> TextEncoder:
    """The frozen text encoder: real CLIP with --clip, else the offline one of --stage data.
    mate=True: a second one with MATE's word table swapped in (MATE Sec. 4.1: the
    MATE-enhanced encoder replaces the original; everything but the table is unchanged);
    mate=NAME: the table of NAME.pt (an --ablations variant, mate_no_self say)."""
    table = "mate" if mate is True else mate
    key, source = (f"text_{table}" if table else "text"), run.clip or run.out / "text_encoder"
    if key not in run.cache:
        if not run.clip and not (source / "config.json").exists():
            raise FileNotFoundError(f"{source} not found: run `python train.py --stage data` "
                                    f"first (it builds the offline text encoder)")
        encoder = TextEncoder.from_pretrained(source)
        if table:
            encoder.set_word_embeddings(finished(run, table)["model"]["word_table"])
        elif not run.clip:
            print(f"[clip] offline text encoder from {source} (not real CLIP; --clip NAME_OR_DIR "
                  f"loads real weights)")
        run.cache[key] = encoder.to(run.device)
    if not run.clip:
        run.loaded["text_encoder"] = fingerprint(run, source)
    return run.cache[key]


def text_encoder(run: Run):
    """The frozen text condition of the diffusion pipeline: CLIP (clip.TextEncoder), or with
    --text-encoder lamp LaMP's text features (lamp.LaMPTextEncoder, the same interface)."""
    if run.args.text_encoder == "clip":
        return clip_text_encoder(run)
    if run.cache.get("lamp_text") is None:
        run.cache["lamp_text"] = lamp.LaMPTextEncoder(load_model(run, "lamp"), clip_text_encoder(run).tokenizer).to(run.device)
    return run.cache["lamp_text"]


def conditioned(run: Run, name: str) -> str:
    """Checkpoint / results name for the run's text condition: `diffusion` with CLIP,
    `diffusion_lamp` with --text-encoder lamp, so both live side by side in one --out."""
    return name if run.args.text_encoder == "clip" else f"{name}_{run.args.text_encoder}"


def load_denoiser(run: Run, name: str | None = None) -> diffusion.Denoiser:
    return load_model(run, name or conditioned(run, "diffusion"))


def load_projector(run: Run, name: str | None = None) -> projector.Projector:
    return load_model(run, name or conditioned(run, "projector"))


def eval_embedder(run: Run):
    """The embedder the eval metrics are computed in: this run's `evaluator`, LaMP (LaMP Tab. 2),
    or Guo et al.'s released evaluator (--evaluator t2m: the space every paper reports in)."""
    if run.args.evaluator == "lamp":
        return lamp.LaMPEvaluator(load_model(run, "lamp_vq"), load_model(run, "lamp"), clip_text_encoder(run).tokenizer)
    if run.args.evaluator == "t2m":
        if not run.args.t2m_dir or not run.args.glove_dir:
            raise ValueError("--evaluator t2m needs --t2m-dir DIR (t2m/ or kit/ with text_mot_match/, "
                             "Comp_v6_KLD01/) and --glove-dir DIR (our_vab_*), as MLD's deps/ lay them out")
        test = open_split(run, "test")
        official = T2MEvaluator.from_official(run.args.t2m_dir, run.args.glove_dir,
                                              "kit" if test.skeleton is data.KIT else "t2m")
        return DatasetEvaluator(official, test.mean, test.std, test.tags).to(run.device)
    return load_model(run, "evaluator")


def eval_labels(run: Run) -> tuple[str, str, str]:
    """The t2m table's results section, title and metric-space note: `t2m`, `t2m_lamp` (LaMP-
    conditioned models), `_lamp_evaluator` / `_t2m_evaluator` appended when the metrics are
    LaMP's (its Tab. 2) or Guo et al.'s released evaluator's."""
    space = {"lamp": "Metrics in the space of this run's LaMP (L2-normalised features, so MMdist lies in [0, 2]; "
                     "not the paper's checkpoint)",
             "t2m": "Metrics in the space of Guo et al.'s released T2M evaluator (as the papers report)",
             "evaluator": "Metrics in the space of this run's `evaluator` embedder (not Guo et al.'s)"}
    title = ("Text-to-motion, LaMP evaluator (LaMP Tab. 2 analogue: LaMP-R-precision, LaMP-MMdist)"
             if run.args.evaluator == "lamp" else "Text-to-motion (LEAD Tab. 1 analogue)")
    return (conditioned(run, "t2m") + evaluator_suffix(run),
            title + ("; LaMP text condition (LaMP Sec. 3.2)" if run.args.text_encoder == "lamp" else ""),
            space[run.args.evaluator])


def evaluator_suffix(run: Run) -> str:
    return "" if run.args.evaluator == "evaluator" else f"_{run.args.evaluator}_evaluator"


def record_path(run: Run, stage: str) -> Path:
    """A stage's STAGE.json: `diffusion_lamp.json` with --text-encoder lamp (the stages whose models
    read the condition), `eval_lamp_evaluator.json` with --evaluator lamp (t2m: `_t2m_evaluator`); a single call with the
    user's inputs writes its own (samples/RUN_ID/sample.json, inversion_WORD.json), so none
    overwrites the full run's records."""
    if stage == "sample" and (run.args.text or run.args.prompts):
        return user_folder(run) / "sample.json"
    if stage == "inversion" and run.args.motion:
        return run.out / f"inversion_{run.args.word}.json"
    name = conditioned(run, stage) if stage in ("diffusion", "projector", "atm", "eval", "sample") else stage
    return run.out / f"{name}{evaluator_suffix(run) if stage == 'eval' else ''}.json"


def user_folder(run: Run) -> Path:
    """samples/RUN_ID/ for the motions of one `--stage sample` call with the user's prompts
    (RUN_ID: the time it started, with -2, -3, ... for calls within the same second)."""
    if "run_id" not in run.cache:
        base, stamp, k = run.out / conditioned(run, "samples"), time.strftime("%Y%m%d-%H%M%S"), 1
        while (base / (stamp + (f"-{k}" if k > 1 else ""))).exists():
            k += 1
        run.cache["run_id"] = base / (stamp + (f"-{k}" if k > 1 else ""))
    return run.cache["run_id"]


# ----------------------------------------------------------------------------
# Stages: each loads what it needs, calls its module's protocol, writes its outputs


def _as_lists(rows: dict) -> dict:
    """A results table {row: {column: (mean, ci)}} as JSON-friendly lists."""
    return {name: {k: list(v) for k, v in row.items()} for name, row in rows.items()}


def dataset_name(run: Run) -> str:
    return "the embedded synthetic dataset" if run.synthetic else str(run.data_root)


def pipeline(run: Run, denoiser_name: str | None = None, mate: bool | str = False) -> metrics.Pipeline:
    """The frozen models of a finished run (mate: a MATE text encoder, see clip_text_encoder), text -> motion."""
    text = clip_text_encoder(run, mate=mate) if mate else text_encoder(run)
    pipe = metrics.Pipeline(text, load_model(run, "vae"), load_denoiser(run, denoiser_name))
    if run.cfg.run.compile:  # run.compile: the denoiser's 50 x 2 calls per sample compiled once
        pipe.denoiser = torch.compile(pipe.denoiser)
    return pipe


def stage_data(run: Run) -> dict:
    """Generate, convert (--from-joints) or validate the dataset, print its summary, build the
    offline text encoder."""
    if run.args.from_joints:
        if run.synthetic:
            raise ValueError("--from-joints DIR needs --data OUT: the folder to write the dataset to")
        c = run.cfg.data
        ingest.build_from_joints(run.args.from_joints, run.data_root, seed=run.cfg.run.seed,
                                 min_len=c.min_len, max_len=c.max_len)
    root = dataset_root(run)
    summary = data.dataset_summary(root)
    print(f"[data] {root}\n" + data.format_summary(summary))
    usable = {split: len(open_split(run, split)) for split in ("train", "val", "test")}
    print(f"  usable after the length rules: {usable}")
    figures = {"summary": summary, "usable": usable}
    if not run.clip:  # the offline stand-in, pretrained on the training captions alone (clip.py)
        groups = [captions for _, _, captions in open_split(run, "train").items]  # paraphrases per motion
        encoder = TextEncoder.offline(groups, run.out / "text_encoder", seed=run.cfg.run.seed, config=run.cfg.text)
        figures["bpe_vocab_size"] = len(encoder.tokenizer)
        print(f"  offline text encoder in {run.out / 'text_encoder'}: {len(encoder.tokenizer)} BPE tokens")
        test_groups = [captions for _, _, captions in open_split(run, "test").items]
        if test_groups:
            figures["text_paraphrase"] = r = clip.offline_report(encoder, test_groups, run.cfg.run.seed, run.cfg.text)
            print(f"  test paraphrase retrieval top-1: {r['before']['top1']:.3f} (random) -> {r['after']['top1']:.3f}")
    return figures


def stage_evaluator(run: Run) -> dict:
    """Two independently seeded Guo et al. evaluators trained here (t2m_evaluator.T2MEvaluator):
    `evaluator` scores every method; `alignment` is the training signal of ATM and MATE, so no
    method is scored by it."""
    train, test = open_split(run, "train"), open_split(run, "test")
    sched, figures = run.cfg.evaluator_train, {}
    for offset, name in enumerate(("evaluator", "alignment")):
        seed = run.cfg.run.seed + 1000 * (offset + 1)
        torch.manual_seed(seed)
        model = T2MEvaluator.trained(run.cfg.evaluator, train.mean.shape[0], train.tags).to(run.device)
        loss_fn = metrics.embedder_loss_fn(model, run.cfg.evaluator.temperature, run.device)
        losses = fit(run, name, model, run.cfg.evaluator, loss_fn, batches(train, sched.batch_size, seed), sched,
                     model.meta())
        real = metrics.evaluate(None, test, model, model.tokenizer, replications=1, seed=seed,
                                diversity_times=run.cfg.eval.diversity_times)
        figures[name] = {"final_losses": losses, "test_real": {k: round(v[0], 4) for k, v in real.items()}}
        print(f"[{name}] real test motions: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in real.items()))
    figures["vocabulary"] = len(model.vectorizer.words)
    figures["test_tag_agreement"] = round(model.lexicon.agreement(test.tags), 4)
    print(f"[evaluator] {len(model.vectorizer.words)} learned word vectors; the lexicon reads "
          f"{100 * figures['test_tag_agreement']:.1f}% of the test captions' word/POS tags alike")
    return figures


def stage_vae(run: Run) -> dict:
    """Stage 1 of LEAD Sec. 4.1.2: the motion VAE, on motions alone."""
    train, val = open_split(run, "train"), open_split(run, "val")
    cfg, sched = run.cfg.vae, run.cfg.vae_train
    torch.manual_seed(run.cfg.run.seed)
    model = vae.MotionVAE(cfg, train.mean.shape[0]).to(run.device)
    stream = vae.noise_ramped(batches(train, sched.batch_size, run.cfg.run.seed), cfg.noise_ramp)
    losses = fit(run, "vae", model, cfg, vae.vae_loss_fn(model, train.mean, train.std, run.device),
                 stream, sched, {"feat_dim": train.mean.shape[0]})
    errors = metrics.joint_errors(model.reconstruct, val, run.device)
    swing = metrics.reconstruction_swing(model.reconstruct, val, run.device)
    print(f"[vae] validation mean per-joint position error: {100 * errors['global']:.2f} cm "
          f"(root-aligned: {100 * errors['root-aligned']:.2f} cm, body frame: {100 * errors['body frame']:.2f} "
          f"cm); swing {swing:.3f} (1: the reconstructions move as much as the motions)")
    figures = {"final_losses": losses, "val_swing": round(swing, 4), "val_joint_error_m": round(errors["global"], 5),
               "val_root_relative_error_m": round(errors["root-aligned"], 5),
               "val_body_frame_error_m": round(errors["body frame"], 5)}
    if not (run.out / "evaluator.pt").exists():
        print("[vae] no evaluator.pt in the run folder: run --stage evaluator to have the "
              "reconstructions scored by it")
        return figures
    test, evaluator = open_split(run, "test"), load_model(run, "evaluator")
    figures["test_reconstruction"] = recon = metrics.reconstruction_metrics(
        model.reconstruct, test, evaluator, evaluator.tokenizer, seed=run.cfg.run.seed)
    for name, row in recon.items():
        print(f"[vae] evaluator on test {name}s: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return figures


def train_denoiser(run: Run, name: str, text: TextEncoder, latents: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The latent denoiser conditioned on `text`'s c, VAE and text encoder frozen (LEAD Sec.
    4.1.2), on latents = (mu, logvar) of the training motions' VAE posteriors (vae.encode_dataset),
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
    meta = {"latent_shape": list(mu.shape[1:]), "text_dim": text.dim}
    stream = latent_batches(train, mu, logvar, sched.batch_size, run.cfg.run.seed)
    return {"final_losses": fit(run, name, model, cfg, projector.projector_loss_fn(model, text), stream, sched, meta)}


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


ATM_VARIANTS = {  # checkpoint -> ATM config overrides: the method, its equal-budget control, Tab. 3
    "diffusion_atm": {}, "diffusion_mse": {"lambda_inter": 0.0, "lambda_intra": 0.0}}
ATM_ABLATIONS = {"diffusion_atm_inter": {"lambda_intra": 0.0}, "diffusion_atm_intra": {"lambda_inter": 0.0}}


def stage_atm(run: Run) -> dict:
    """ATM: fine-tune the trained denoiser with L_mse + lambda (L_inter + L_intra) (ATM Eq. 8) on
    z0^ = F(eps) (LEAD Eq. 10) decoded by the frozen VAE and embedded by the frozen `alignment`
    embedder (never the evaluator) -> diffusion_atm.pt; beside it the equal-budget control, the
    same fine-tuning with L_mse alone (diffusion_mse.pt), and with --ablations ATM Tab. 3's
    L_inter only and L_intra only. Every variant starts from diffusion.pt on the same batches."""
    train = open_split(run, "train")
    text, motion_vae = text_encoder(run), load_model(run, "vae")
    embedder = load_model(run, "alignment")
    sched, seed = run.cfg.atm_train, run.cfg.run.seed
    # texts are embedded (and kept) as batches draw them; the motions all at once, here
    print(f"[atm] caching the posterior, motion and clip embeddings of {len(train)} training motions once")
    targets = atm_losses.encode_atm_targets(motion_vae, embedder, train, run.cfg.atm, run.device)
    figures = {}
    for name, overrides in {**ATM_VARIANTS, **(ATM_ABLATIONS if run.args.ablations else {})}.items():
        cfg = dataclasses.replace(run.cfg.atm, **overrides)
        denoiser = load_denoiser(run).requires_grad_(True)  # fine-tuning starts from diffusion.pt
        schedule = diffusion.GaussianDiffusion(denoiser.cfg).to(run.device)
        torch.manual_seed(seed)
        loss_fn = atm_losses.atm_loss_fn(schedule, denoiser, motion_vae, embedder, text, targets, cfg,
                                         fps=train.skeleton.fps)
        stream = latent_batches(train, targets["mu"], targets["logvar"], sched.batch_size, seed)
        meta = {"latent_shape": list(motion_vae.latent_shape), "text_dim": text.dim}
        figures[name] = fit(run, conditioned(run, name), denoiser, denoiser.cfg, loss_fn, stream, sched, meta)
    return {"final_losses": figures}


def stage_mate(run: Run) -> dict:
    """MATE (seed 004): segment every training motion against its caption's sub-texts (Eq. 1,
    frozen `alignment` embedder); train the text encoder's word table with L_all (Eq. 8); retrain
    the diffusion model and the LEAD projector from scratch on the MATE text encoder, as the paper
    retrains its T2M models (Sec. 4.1); finally the word-pair probe."""
    train, cfg, seed = open_split(run, "train"), run.cfg.mate, run.cfg.run.seed
    if run.args.text_encoder != "clip":
        raise ValueError("--stage mate retrains CLIP's word embeddings: run it without --text-encoder lamp")
    alignment = load_model(run, "alignment")
    clip_text_encoder(run)  # the prerequisite check and its message
    # a text encoder of the stage's own: its table is bound to MATE's and trained
    text = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)
    # 1. Eq. (1) once for every (motion, caption): the alignment embedder is frozen
    start, figures = time.time(), {}
    records = mate.prepare_records(train, alignment, cfg, run.device)
    figures["segmentation_s"] = round(time.time() - start, 2)
    if run.synthetic:  # the synthetic dataset knows its action boundaries
        figures["segmentation"] = report = mate.segmentation_report(records, synthetic.load_segments(run.data_root))
        rows, note = mate.segmentation_rows(report)
        metrics.write_results(run.out, "mate_segmentation", rows, "MATE text-motion joint segmentation "
                              "(Tab. 7 analogue)", note)
    # 2. the word table (bound into `text`) and MATE's heads, L_all (Eq. 8)
    model, loss_fn, stream, meta = mate.word_table_training(records, text, train.mean.shape[0], cfg,
                                                            run.cfg.mate_train.batch_size, seed, run.device)
    figures["final_losses"] = fit(run, "mate", model, cfg, loss_fn, stream, run.cfg.mate_train, meta)
    # 3. the diffusion model and the projector, retrained from scratch on the MATE encoder
    #    (the same configs and schedules as diffusion.pt and projector.pt: a fair comparison)
    text_mate = clip_text_encoder(run, mate=True)
    latents = training_latents(run)
    figures["diffusion_mate"] = train_denoiser(run, "diffusion_mate", text_mate, latents)
    figures["projector_mate"] = train_projector(run, "projector_mate", text_mate, latents)
    # 4. the word-level probe, before and after MATE
    figures["probe"] = mate_probe(run)
    # 5. --ablations: Tab. 3, each loss removed in turn
    if run.args.ablations:
        figures["ablations"] = mate_ablations(run, records, latents)
    return figures


def probe_length(run: Run, test) -> int:
    """One motion length for every probe: the test split's median, a multiple of the unit."""
    return int(np.median([len(m) for _, m, _ in test.items])) // run.cfg.data.unit * run.cfg.data.unit


def mate_probe(run: Run) -> dict:
    """MATE's word-level probe (mate.word_probe) on the test captions, MLD vs MLD+MATE."""
    test = open_split(run, "test")
    evaluator = load_model(run, "evaluator")
    plain, with_mate = pipeline(run), pipeline(run, "diffusion_mate", mate=True)
    length = probe_length(run, test)
    rows = mate.word_probe(plain, with_mate, evaluator, test, run.cfg.mate, length, run.cfg.run.seed)
    metrics.write_results(run.out, "mate_probe", rows, "MATE word-level probe (Sec. 4.4 analogue)",
                          mate.probe_note(length))
    return _as_lists(rows)


MATE_ABLATIONS = {  # MATE Tab. 3 ("Loss Removed"): word-table checkpoint -> (row, MATE config overrides)
    "mate_no_self": ("L_self removed", {"lambda_self": 0.0}),
    "mate_no_cross": ("L_cross removed", {"lambda_cross": 0.0}),
    "mate_no_align": ("L_align removed", {"lambda_align": 0.0}),
    "mate_no_sent": ("L_sent removed", {"lambda_sent": 0.0}),
    "mate_no_rec": ("L_rec removed", {"lambda_rec": 0.0})}


def mate_ablations(run: Run, records: list, latents: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """MATE Tab. 3 (--ablations): for each loss removed, the word table trained without it on the
    same records, batches and steps (NAME.pt) and the denoiser retrained on it (diffusion_NAME.pt);
    then the word probe pooled over the word pairs, each variant beside the full model."""
    cfg, sched, seed = run.cfg.mate, run.cfg.mate_train, run.cfg.run.seed
    feat_dim, figures, pipes = open_split(run, "train").mean.shape[0], {}, {}
    for name, (row, overrides) in MATE_ABLATIONS.items():
        variant = dataclasses.replace(cfg, **overrides)
        bound = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)  # its table trains
        model, loss_fn, stream, meta = mate.word_table_training(records, bound, feat_dim, variant, sched.batch_size,
                                                                seed, run.device)
        figures[name] = fit(run, name, model, variant, loss_fn, stream, sched, meta)
        text = clip_text_encoder(run, mate=name)  # a fresh encoder holding the trained table
        figures[f"diffusion_{name}"] = train_denoiser(run, f"diffusion_{name}", text, latents)
        pipes[row] = pipeline(run, f"diffusion_{name}", mate=name)
    pipes["Full Model"] = pipeline(run, "diffusion_mate", mate=True)
    test = open_split(run, "test")
    rows, note = mate.ablation_probe(pipes, load_model(run, "evaluator"), test, cfg, probe_length(run, test), seed)
    metrics.write_results(run.out, "mate_ablation", rows, "MATE loss ablation (Tab. 3 analogue, word-level probe)",
                          note)
    return {**figures, "probe": _as_lists(rows)}


def stage_lcm(run: Run) -> dict:
    """MotionLCM (lcm.py): distil a latent consistency model from the finished diffusion.pt, the
    teacher, VAE and text encoder frozen; the student starts as the teacher, its EMA is the
    target. Writes lcm.pt (the student, as MotionLCM samples with it, and the target)."""
    if run.args.text_encoder != "clip":
        raise ValueError("--stage lcm distils the CLIP-conditioned diffusion.pt: run it without --text-encoder lamp")
    train, text, teacher = open_split(run, "train"), text_encoder(run), load_denoiser(run)
    cfg, sched, seed = run.cfg.lcm, run.cfg.lcm_train, run.cfg.run.seed
    mu, logvar = training_latents(run)
    schedule = diffusion.GaussianDiffusion(teacher.cfg).to(run.device)
    text.encode_cached(train.captions())
    torch.manual_seed(seed)
    student = lcm.ConsistencyDenoiser.from_teacher(teacher, cfg).to(run.device)
    target = lcm.ema_copy(student)
    pair = torch.nn.ModuleDict({"student": student, "target": target})  # both in lcm.pt, for --resume
    loss_fn = lcm.distillation_loss_fn(student, target, teacher, schedule, text, cfg)
    meta = {"latent_shape": list(teacher.latent_shape), "text_dim": text.dim,
            "denoiser": dataclasses.asdict(teacher.cfg)}
    stream = latent_batches(train, mu, logvar, sched.batch_size, seed)
    losses = fit(run, "lcm", pair, cfg, loss_fn, stream, sched, meta,
                 after_step=lambda: lcm.ema_update(target, student, cfg.ema_decay))
    return {"final_losses": losses}


def load_lcm(run: Run) -> "lcm.ConsistencyDenoiser":
    """The distilled student of lcm.pt (MotionLCM samples with the student, not the EMA)."""
    state = finished(run, "lcm")
    model = BUILDERS["lcm"](state["config"], state["meta"])
    model.load_state_dict({k[len("student."):]: v for k, v in state["model"].items() if k.startswith("student.")})
    return model.to(run.device).eval().requires_grad_(False)


def stage_import(run: Run) -> dict:
    """MLD's released checkpoint (--mld FILE, read without running its pickled code) -> vae.pt and
    diffusion.pt of the paper preset, marked done, so --stage projector, eval, sample and
    inversion run on MLD's weights: LEAD on top of MLD, as the paper trains it."""
    if run.args.mld is None:
        raise ValueError("--stage import needs --mld FILE: MLD's released checkpoint (e.g. a .ckpt of MLD-1)")
    state = safe_pickle.load_torch_checkpoint(run.args.mld)
    sd = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith("denoiser.") for k in sd):
        raise ValueError(f"{run.args.mld}: no `state_dict` with `vae.` and `denoiser.` keys (MLD's Lightning checkpoint)")
    part = lambda prefix: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}  # noqa: E731
    vae_cfg, feat_dim, vae_sd = vae.from_mld_state_dict(part("vae."))
    den_cfg, latent_shape, text_dim, den_sd = diffusion.from_mld_state_dict(part("denoiser."), n_tokens=vae_cfg.n_tokens)
    vae.MotionVAE(vae_cfg, feat_dim).load_state_dict(vae_sd, strict=True)  # refuse what does not fit, before writing
    diffusion.Denoiser(den_cfg, latent_shape, text_dim).load_state_dict(den_sd, strict=True)
    source = {"imported_from": str(run.args.mld), "sha256_16": fingerprint(run, run.args.mld)}
    for name, cfg, sd_, meta in (("vae", vae_cfg, vae_sd, {"feat_dim": feat_dim}),
                                 ("diffusion", den_cfg, den_sd, {"latent_shape": list(latent_shape), "text_dim": text_dim})):
        save_checkpoint(run.out / f"{name}.pt", {"model": sd_, "config": dataclasses.asdict(cfg), "step": 0, "done": True,
                                                 "meta": {**meta, **source}, "running": {}})
    if run.clip and text_dim != clip_text_encoder(run).dim:
        raise ValueError(f"MLD's denoiser reads a {text_dim}-d text condition, --clip {run.clip} gives "
                         f"{clip_text_encoder(run).dim}: pass MLD's, openai/clip-vit-large-patch14")
    print(f"[import] {run.args.mld} -> {run.out / 'vae.pt'} (latent {vae_cfg.n_tokens} x {vae_cfg.latent_dim}) and "
          f"{run.out / 'diffusion.pt'}; next: --stage projector, then eval, each with --clip (MLD's CLIP, "
          f"openai/clip-vit-large-patch14) and --data (HumanML3D)")
    return {**source, "latent_shape": list(latent_shape), "text_dim": text_dim}


LAMP_ABLATIONS = {  # LaMP Tab. 5 (one objective added per row): checkpoint -> (row, LaMP config overrides)
    "lamp_mtc": ("LaMP with contrastive learning", {"lambda_mtm": 0.0, "lambda_mgt": 0.0, "lambda_tgm": 0.0}),
    "lamp_mtc_mtm": ("+ motion-text matching", {"lambda_mgt": 0.0, "lambda_tgm": 0.0}),
    "lamp_mtc_mtm_mgt": ("+ motion-grounded text generation", {"lambda_tgm": 0.0})}


def stage_lamp(run: Run) -> dict:
    """LaMP (Sec. 3.1): the motion VQ-VAE (3.1.1), then LaMP over its frozen encoder with the
    four objectives (3.1.3); the Tab. 3 analogue on the test split beside the `evaluator`."""
    train, val, test = (open_split(run, split) for split in ("train", "val", "test"))
    tokenizer = clip_text_encoder(run).tokenizer   # the project's tokenizer (offline BPE or CLIP's)
    cfg, feat_dim, seed, device = run.cfg.lamp, train.mean.shape[0], run.cfg.run.seed, run.device
    if run.cfg.data.max_len > 4 * cfg.n_queries:
        raise ValueError(f"lamp.n_queries={cfg.n_queries} covers clips of {4 * cfg.n_queries} frames, but "
                         f"data.max_len={run.cfg.data.max_len}: query i predicts motion token i (Eq. 1)")
    # 1. the motion tokenizer
    torch.manual_seed(seed)
    vq = lamp.MotionVQVAE(cfg, feat_dim).to(device)
    sched = run.cfg.lamp_vq_train
    vq_losses = fit(run, "lamp_vq", vq, cfg, lamp.vq_loss_fn(vq, cfg, device), batches(train, sched.batch_size, seed),
                    sched, {"feat_dim": feat_dim})
    usage = lamp.codebook_usage_on(vq.requires_grad_(False).eval(), val, device)
    print(f"[lamp_vq] codebook usage on val: {100 * usage['used']:.1f}% of {cfg.vq_codes} codes, "
          f"perplexity {usage['perplexity']:.1f}")
    # 2. LaMP over the frozen motion encoder; --ablations: Tab. 5's variants, on the same batches
    meta = {"vocab_size": len(tokenizer), "eot_id": tokenizer.eot_id}
    if not run.args.bert:
        print("[lamp] random initialisation (the paper starts from BERT-base: --bert DIR)")
    sched, draws, models, losses = run.cfg.lamp_train, train.fork(), {}, {}  # draws: the same crops for each
    variants = {"lamp": {}, **({n: o for n, (_, o) in LAMP_ABLATIONS.items()} if run.args.ablations else {})}
    for name, overrides in variants.items():
        variant = dataclasses.replace(cfg, **overrides)
        torch.manual_seed(seed)
        model = lamp.LaMP.from_bert(run.args.bert, variant, **meta) if run.args.bert else lamp.LaMP(variant, **meta)
        model = models[name] = model.to(device)
        losses[name] = fit(run, name, model, model.cfg, lamp.lamp_loss_fn(model, vq, tokenizer, device),
                           batches(draws.fork(), sched.batch_size, seed + 1), sched, meta)
    # 3. Tab. 3: retrieval on the test split, LaMP beside the plain evaluator (and Tab. 5's variants)
    evaluator = load_model(run, "evaluator")
    rows = lamp.retrieval_rows(lamp.LaMPEvaluator(vq, models["lamp"]), evaluator, test, tokenizer, device)
    if run.args.ablations:
        rows = lamp.ablation_rows(rows, {row: lamp.retrieval_rows(lamp.LaMPEvaluator(vq, models[name]), evaluator,
                                                                  test, tokenizer, device)
                                         for name, (row, _) in LAMP_ABLATIONS.items()})
    note = lamp.retrieval_note(len(test), dataset_name(run), usage, cfg.vq_codes)
    metrics.write_results(run.out, "lamp_retrieval", rows, "Text-motion retrieval (LaMP Tab. 3 analogue)",
                          note + (f" {lamp.ABLATION_NOTE}" if run.args.ablations else ""))
    print((run.out / "results.md").read_text())
    return {"vq_final_losses": vq_losses, "codebook_usage_val": usage, "final_losses": losses.pop("lamp"),
            **({"ablation_final_losses": losses} if losses else {}),
            "retrieval": {name: {k: v[0] for k, v in r.items()} for name, r in rows.items()}}


ABLATION_LABELS = {"projector_no_align": "LEAD w/o L_align", "projector_no_rec": "LEAD w/o L_rec",
                   "projector_no_var": "LEAD w/o L_var", "projector_mlp": "LEAD (mlp)"}


def eval_methods(run: Run, pipe: metrics.Pipeline, lead: projector.Projector) -> dict:
    """{row: generate_fn} of the Tab. 1 analogue in table order (Real: None): MLD and LEAD from the
    same checkpoints, `--ablations` the Tab. 6 projectors, then the rows of the ATM, MATE and
    MotionLCM stages when they have run (a note names the stage otherwise)."""
    def rows(pipe, **realigners):
        return {name: lambda c, n, r=r: pipe.generate(c, n, r) for name, r in realigners.items()}

    methods = {"Real": None, **rows(pipe, MLD=None, LEAD=lead)}
    if run.args.ablations:
        methods.update(rows(pipe, **{label: load_projector(run, conditioned(run, name))
                                     for name, label in ABLATION_LABELS.items()}))
    atm, steps = conditioned(run, "diffusion_atm"), run.cfg.atm_train.steps
    if (run.out / f"{atm}.pt").exists():
        methods.update(rows(pipeline(run, atm), **{"MLD+ATM": None, "LEAD+ATM": lead}))
        control = f"+{steps} steps, L_mse only"  # ATM's equal-budget control (same steps, lambda = 0)
        if (run.out / f"{conditioned(run, 'diffusion_mse')}.pt").exists():
            methods.update(rows(pipeline(run, conditioned(run, "diffusion_mse")),
                                **{f"MLD ({control})": None, f"LEAD ({control})": lead}))
        for name, label in (("diffusion_atm_inter", "L_inter only"), ("diffusion_atm_intra", "L_intra only")):
            if run.args.ablations and (run.out / f"{conditioned(run, name)}.pt").exists():  # ATM Tab. 3
                methods.update(rows(pipeline(run, conditioned(run, name)), **{f"MLD+ATM ({label})": None}))
    else:
        print("[eval] no diffusion_atm.pt yet: run `--stage atm`, then `--stage eval` again, for the "
              "MLD+ATM and LEAD+ATM rows")
    if run.args.text_encoder != "clip":  # MATE and MotionLCM rows belong to the CLIP table
        return methods
    if (run.out / "diffusion_mate.pt").exists():
        methods.update(rows(pipeline(run, "diffusion_mate", mate=True), **{
            "MLD+MATE": None, "LEAD+MATE": load_projector(run, "projector_mate")}))
    else:
        print("[eval] no diffusion_mate.pt yet: run `--stage mate`, then `--stage eval` again, for the "
              "MLD+MATE and LEAD+MATE rows")
    if (run.out / "lcm.pt").exists():  # LEAD Tab. 1 "LEAD (MotionLCM)": the projector, not retrained
        methods.update(rows(lcm.LCMPipeline(pipe, load_lcm(run)), **{"MotionLCM": None, "LEAD (MotionLCM)": lead}))
    return methods


def stage_eval(run: Run) -> dict:
    """The Tab. 1 analogue on the test split (metrics.t2m_rows): Real, MLD (no realignment) and
    LEAD from the same checkpoints, the ATM, MATE and MotionLCM rows, `--ablations` the Tab. 6 rows;
    then the same rows on training clips (fit_table), the per-prompt inference time, the latent
    structure and the few-step table."""
    test, cfg = open_split(run, "test"), run.cfg.eval
    pipe = pipeline(run)
    evaluator, lead = eval_embedder(run), load_projector(run)
    tokenizer = evaluator.tokenizer  # the evaluator's own reading of the captions (word/POS tokens; LaMP: CLIP ids)
    methods = eval_methods(run, pipe, lead)
    rows = metrics.t2m_rows(methods, test, evaluator, tokenizer, cfg, run.cfg.run.seed)
    section, title, space = eval_labels(run)
    note = (f"{len(test)} test motions of {dataset_name(run)}, mean ± 1.96 std / sqrt(R) over "
            f"R = {cfg.replications} replications; MModality over {cfg.mm_num_texts} texts x "
            f"{cfg.mm_num_gens} generations. {space}, so they compare methods within this run only. "
            f"Equal budgets: +ATM and its control fine-tune diffusion.pt for the same {run.cfg.atm_train.steps} "
            f"steps on the same batches; +MATE's denoiser and projector are retrained from scratch with MLD's and "
            f"LEAD's configs and steps; MLD and LEAD rows of one denoiser share their diffusion samples.")
    metrics.write_results(run.out, section, rows, title, note)
    start = time.time()
    fit_rows = fit_table(run, methods, evaluator, tokenizer, len(test))
    fit_s = round(time.time() - start, 2)
    timing = {name: {"s / prompt": metrics.seconds_per_prompt(pipe, test, r, cfg.timing_prompts)}
              for name, r in (("MLD", None), ("LEAD", lead))}
    metrics.write_results(run.out, conditioned(run, "timing"), timing, "Inference time per prompt",
                          f"{cfg.timing_prompts} prompts, batch of 1, on {run.device.type}; "
                          "the paper (LEAD Sec. 5.3, GPU not named; Sec. 5.2 trains on a 3090): MLD 0.236 s, LEAD 0.245 s")
    structure = latent_structure_table(run, pipe, lead, test)
    steps = lcm_steps_table(run, pipe, lead, test, evaluator, tokenizer) if "MotionLCM" in rows else None
    print((run.out / "results.md").read_text())
    return {"rows": _as_lists(rows), "fit_rows": _as_lists(fit_rows), "fit_s": fit_s,
            "timing": {n: list(v["s / prompt"]) for n, v in timing.items()},
            "latent_structure": structure, "lcm_steps": steps and _as_lists(steps)}


FIT_SUBSET_SEED = 0  # the training clips of the fit table: the same whatever run.seed


def fit_table(run: Run, methods: dict, evaluator, tokenizer, clips: int) -> dict:
    """Fit beside generalisation: the Tab. 1 rows `methods` scored on a fixed random subset of
    `clips` *training* clips with their own captions (one replication, no MModality), written
    beside the test table as its section + `_fit`. A row that scores well here but not on test
    is limited by generalisation; one that scores badly here too, by fit. As many clips as the
    test split, so that FID's small-sample bias (it grows as the sample shrinks) matches."""
    train = open_split(run, "train")
    picks = np.sort(np.random.default_rng(FIT_SUBSET_SEED).permutation(len(train))[:clips])
    subset = train.subset(picks, seed=run.cfg.run.seed)
    if isinstance(evaluator, DatasetEvaluator):  # Guo et al.'s reads the word/POS tags of these captions
        evaluator = DatasetEvaluator(evaluator.evaluator, subset.mean, subset.std, subset.tags).to(run.device)
        tokenizer = evaluator.tokenizer
    cfg = dataclasses.replace(run.cfg.eval, replications=1, mm_num_texts=0)
    rows = metrics.t2m_rows(methods, subset, evaluator, tokenizer, cfg, run.cfg.run.seed)
    section, title, space = eval_labels(run)
    metrics.write_results(run.out, f"{section}_fit", rows, f"{title}: fit, scored on training clips",
                          f"The rows above, scored on {len(subset)} training clips of {dataset_name(run)} (a fixed "
                          f"random subset, as many as the test split) with their own captions, one replication "
                          f"(± 0), no MModality. Well here but not on test: generalisation limits the method; "
                          f"badly here too: fit does. {space}.")
    return rows


def latent_structure_table(run: Run, pipe: metrics.Pipeline, lead, test) -> dict | None:
    """The stand-in for LEAD's t-SNE (Fig. 3), where the dataset has action labels (synthetic)."""
    has_labels = (test.root / "segments.json").exists()
    structure = metrics.latent_structure(pipe.vae, lead, test, synthetic.load_segments(test.root) if has_labels else {})
    if structure:
        metrics.write_results(run.out, conditioned(run, "latent_structure"), {
            "VAE latent z_vae": {"1-NN action accuracy": (structure["vae_space"], 0.0)},
            "projected E_proj(z_vae)": {"1-NN action accuracy": (structure["projected_space"], 0.0)}},
            "Latent structure (stand-in for LEAD Fig. 3, t-SNE)",
            f"leave-one-out nearest neighbour (Euclidean) over {structure['motions']} single-action "
            f"test motions, {structure['actions']} action labels")
    return structure


def lcm_steps_table(run: Run, pipe: metrics.Pipeline, lead, test, evaluator, tokenizer) -> dict:
    """LEAD Tab. 5: few-step sampling (lcm.steps_rows), realigned by LEAD's own projector."""
    cfg = run.cfg.eval
    steps = lcm.steps_rows(pipe, load_lcm(run), lead, test, evaluator, tokenizer, cfg, run.cfg.run.seed)
    metrics.write_results(run.out, "lcm_steps", steps, "Few-step sampling (LEAD Tab. 5 analogue)",
                          f"{len(test)} test motions, R = {cfg.replications} replications; the projector is "
                          f"LEAD's, trained on the teacher's latents and not retrained (LEAD Sec. 5.4); s / "
                          f"prompt: batch of 1 on {run.device.type} (MotionLCM: ~0.03 s at one step).")
    return steps


DEFAULT_PROMPTS = ["a person walks forward", "a person jumps then waves with the right hand",
                   "someone walks in a circle clockwise"]


def stage_sample(run: Run) -> dict:
    """Text -> motion files (render.save_motion): features (T, D) and joints (T, J, 3) as .npy,
    GIF and MP4 animations where matplotlib and ffmpeg are installed, BVH with --bvh. Prompts:
    --text (at --length), --prompts FILE (a length each), else a few built-in ones."""
    args, stats = run.args, open_split(run, "train")
    lo, hi = run.cfg.data.min_len, run.cfg.data.max_len
    if not lo <= args.length <= hi:
        raise ValueError(f"--length {args.length}: the models were trained on {lo}..{hi} frames")
    if args.steps is not None and args.sampler != "lcm":
        raise ValueError("--steps sets MotionLCM's sampling steps: give it with --sampler lcm")
    prompts = [(text, args.length) for text in args.text]
    if args.prompts:
        prompts += ingest.read_prompts(args.prompts, stats.skeleton.fps, lo, hi, args.length)
    prompts = prompts or [(text, args.length) for text in DEFAULT_PROMPTS]
    pipe = pipeline(run)
    learned = inversion.load_tokens(pipe.text, run.out / "tokens", [text for text, _ in prompts])
    if learned:  # words of --stage inversion
        print(f"[sample] learned words from {run.out / 'tokens'}: {', '.join(learned)}")
    if args.sampler == "lcm":
        pipe = lcm.LCMPipeline(pipe, load_lcm(run), args.steps)
    realigner = None if args.no_realign else load_projector(run)
    folder = user_folder(run) if args.text or args.prompts else run.out / conditioned(run, "samples")
    animations, written = render.animation_kinds(), []
    for i, (text, frames) in enumerate(prompts):
        torch.manual_seed(run.cfg.run.seed + i)
        motion = pipe.generate([text] * args.num, torch.full((args.num,), frames), realigner).cpu()  # (N, T, D)
        for k in range(args.num):
            written += render.save_motion(folder / f"{ingest.prompt_slug(i, text)}_{k}",
                                          stats.denormalize(motion[k].numpy()), stats.skeleton, text,
                                          animations, args.bvh)
    for path in written:
        print(f"[sample] wrote {path}")
    return {"prompts": prompts, "sampler": args.sampler, "realigned": realigner is not None, "files": written}


def inversion_models(run: Run) -> inversion.FrozenModels:
    """The frozen models of a finished LEAD run, with a text encoder of the stage's own, so the
    words learned here never reach the shared one (run.cache["text"]) that later stages use."""
    if run.args.text_encoder != "clip":
        raise ValueError("--stage inversion learns a CLIP word embedding: run it without --text-encoder lamp")
    text_encoder(run)  # the prerequisite check and its message
    text = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)
    motion_vae, denoiser = load_model(run, "vae"), load_denoiser(run)
    schedule = diffusion.GaussianDiffusion(denoiser.cfg).to(run.device)
    return inversion.FrozenModels(text, motion_vae, denoiser, schedule, load_projector(run))


def inversion_table(run: Run, models: inversion.FrozenModels) -> dict:
    """LEAD Tab. 3 on test motions (inversion.mti_table) -> the `mti` table."""
    cfg, test = run.cfg.inversion, open_split(run, "test")
    tokenizer, evaluator = text_encoder(run).tokenizer, load_model(run, "evaluator")
    table = inversion.mti_table(models, test, evaluator, tokenizer, cfg, run.cfg.data.unit,
                                run.cfg.eval.diversity_times, run.cfg.run.seed)
    metrics.write_results(run.out, "mti", table["rows"], "Motion textual inversion (LEAD Tab. 3 analogue)",
                          inversion.mti_note(len(table["test_motions"]), cfg, dataset_name(run)))
    return {**table, "rows": _as_lists(table["rows"])}


def inversion_styles(run: Run, models: inversion.FrozenModels) -> dict | None:
    """The held-out styles (inversion.style_table, LEAD's 100STYLE experiment): the `mti_styles`
    table, the learned words in tokens/, the motions (and GIFs) in inversion/."""
    root, cfg, folder = dataset_root(run), run.cfg.inversion, run.out / "inversion"
    if not (root / "styles.txt").exists() or not (root / "segments.json").exists():
        print(f"[inversion] {root} has no styles.txt / segments.json (only the embedded synthetic "
              f"dataset holds held-out styles): the out-of-distribution part is skipped")
        return None
    split, segments = open_split(run, "styles"), synthetic.load_segments(root)
    table = inversion.style_table(models, split, segments, synthetic.STYLES, load_model(run, "evaluator"),
                                  cfg, run.cfg.data.unit, run.cfg.run.seed)
    for stem, word, vector, objective in table["tokens"]:
        inversion.save_token(run.out / "tokens" / f"{stem}.pt", word, cfg.init_word, vector, objective)
    animations = render.animation_kinds()
    files = [f for stem, motion, title, show in table["motions"]
             for f in render.save_motion(folder / stem, split.denormalize(motion.numpy()), split.skeleton, title,
                                         animations if show else (), run.args.bvh)]
    print(f"[inversion] style words saved to {run.out / 'tokens'}, motions to {folder}")
    metrics.write_results(run.out, "mti_styles", table["rows"], "Motion textual inversion, held-out styles "
                          "(stand-in for LEAD's 100STYLE, Fig. 7)",
                          inversion.style_note(len(table["styles"]), cfg, dataset_name(run), folder))
    return {"styles": table["styles"], "files": len(files), "rows": _as_lists(table["rows"])}


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
    "lcm": stage_lcm,
    "import": stage_import,
}
# eval comes after every stage that adds a row to its table
ALL_ORDER = ["data", "evaluator", "lamp", "vae", "diffusion", "projector", "atm", "mate", "lcm", "eval", "sample",
             "inversion"]


def run_stage(run: Run, stage: str) -> dict:
    # the splits opened by earlier stages of this process restart their crop/caption generator:
    # a stage sees the same data whether it runs alone, within --stage all, or after --resume
    for key, dataset in run.cache.items():
        if key.startswith("split:"):
            dataset.reseed(run.cfg.run.seed)
    start, run.loaded = time.time(), {}
    with autocast(run) if stage in ("eval", "sample") else contextlib.nullcontext():  # fit has its own
        figures = STAGE_FUNCTIONS[stage](run) or {}
    figures["wall_time_s"] = round(time.time() - start, 2)
    path = record_path(run, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    if run.rank == 0:
        write_json(path, figures)
    print(f"[{stage}] done in {figures['wall_time_s']:.1f} s -> {path}")
    return figures


# ----------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=[*STAGE_FUNCTIONS, "all"])
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
    p.add_argument("--evaluator", default="evaluator", choices=["evaluator", "lamp", "t2m"],
                   help="eval: the embedder the metrics are computed in; lamp gives LaMP-R-precision "
                        "and LaMP-MMdist (LaMP Tab. 2); t2m: Guo et al.'s released evaluator (--t2m-dir, --glove-dir)")
    p.add_argument("--t2m-dir", type=Path, default=None,
                   help="eval --evaluator t2m: MLD's deps/t2m (t2m/text_mot_match/model/finest.tar, t2m/Comp_v6_KLD01/meta)")
    p.add_argument("--glove-dir", type=Path, default=None,
                   help="eval --evaluator t2m: MLD's deps/glove (our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl)")
    p.add_argument("--mld", type=Path, default=None,
                   help="import: MLD's released checkpoint (a Lightning .ckpt) -> vae.pt and diffusion.pt in --out")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted stage from its last checkpoint; with --stage all, "
                        "skip the stages already finished")
    p.add_argument("--ablations", action="store_true",
                   help="projector/eval: also the LEAD Tab. 6 ablations (w/o L_align, L_rec, L_var; MLP); atm: ATM "
                        "Tab. 3; mate: MATE Tab. 3 (each loss removed); lamp: LaMP Tab. 5 (objectives added in turn)")
    p.add_argument("--text", action="append", default=[],
                   help="sample: a prompt (repeatable; default: a few built-in prompts)")
    p.add_argument("--length", type=int, default=120, help="sample: motion length in frames")
    p.add_argument("--num", type=int, default=1, help="sample: motions per prompt")
    p.add_argument("--prompts", type=Path, default=None,
                   help="sample: a file of prompts, one a line: 'caption', 'caption#FRAMES' or 'caption#SECONDSs'")
    p.add_argument("--no-realign", action="store_true",
                   help="sample: skip the projector, i.e. the MLD baseline from the same checkpoints")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "lcm"],
                   help="sample: 50-step guided DDIM (MLD, LEAD) or MotionLCM's 1-4 steps (--stage lcm first)")
    p.add_argument("--steps", type=int, default=None, help="sample: MotionLCM's steps (default: lcm.sample_steps)")
    p.add_argument("--bvh", action="store_true",
                   help="sample/inversion: also write each motion as NAME.bvh (22-joint skeleton, cm, degrees)")
    p.add_argument("--from-joints", type=Path, default=None, metavar="DIR",
                   help="data: turn DIR of NAME.npy joints (T, 22, 3), metres, y up, 20 fps) and NAME.txt "
                        "captions into the HumanML3D layout at --data")
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
        cfg, device = build_config(args.preset, args.sets), pick_device(args.device)
        if cfg.run.precision == "fp16" and device.type != "cuda":
            raise ValueError(f"run.precision=fp16 needs CUDA (its GradScaler); on {device.type} use bf16")
        if args.num < 1:
            raise ValueError(f"--num {args.num}: motions per prompt must be >= 1")
        if any(not text.strip() for text in args.text):
            raise ValueError("--text '': an empty prompt would sample unconditionally (MLD's null "
                             "condition is the empty string); give a caption")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    run = Run(cfg=cfg, out=args.out, data_root=args.data or args.synthetic_dir,
              synthetic=args.data is None, device=device, clip=args.clip, resume=args.resume, args=args)
    stages = ALL_ORDER if args.stage == "all" else [args.stage]
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        try:
            start_distributed(run, stages)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    for stage in stages:
        if args.stage == "all" and args.resume and record_path(run, stage).exists():
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
    if run.world > 1:
        dist.destroy_process_group()
    return 0


DISTRIBUTED_STAGES = ("evaluator", "vae", "diffusion", "projector", "atm", "lcm")  # the others: one process


def start_distributed(run: Run, stages: list[str]) -> None:
    """Under torchrun: one process per GPU (NCCL) or CPU process (gloo), the process group from the
    environment torchrun sets; rank 0 alone prints and writes files."""
    others = [s for s in stages if s not in DISTRIBUTED_STAGES]
    if others and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError(f"--stage {' '.join(others)} runs on one process (python train.py ...); under "
                         f"torchrun run the training stages one at a time: {', '.join(DISTRIBUTED_STAGES)}")
    run.rank, run.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if run.device.type == "cuda":
        run.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(run.device)
    dist.init_process_group("nccl" if run.device.type == "cuda" else "gloo")
    if run.rank != 0:
        sys.stdout = open(os.devnull, "w")


if __name__ == "__main__":
    sys.exit(main())
