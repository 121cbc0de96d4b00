"""The run's configuration: one dataclass per section, the presets, `--set` overrides.

    build_config("tiny", ["vae_train.steps=100"]) -> RunConfig

Each section is the dataclass of the module it configures (`vae` is vae.VAEConfig, ...), with the
papers' values as defaults and each field's source in a comment. A preset is nothing but a set of
overrides on those defaults: `paper` (one GPU, the papers' sizes), `tiny` (a 2-core CPU, the
whole recipe in about 45 minutes) and `smoke` (tiny models and a few steps: every stage in about
3 minutes, to see the recipe run; its motions are not meant to be good).

Validation lives with each dataclass: numbers are finite, ints >= 1 and floats > 0 unless the
dataclass names the field in its `AT_LEAST_ZERO` (>= 0) or `FRACTIONS` ([0, 1]); fields that
constrain each other are checked in the dataclass's `__post_init__`. Overrides are applied with
`dataclasses.replace`, so both run for every value the command line sets.
"""
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from atm_losses import ATMConfig
from captioner import CaptionerConfig
from clip import ClipConfig
from diffusion import DiffusionConfig
from evaluation import MM_PAIRS, EvalConfig
from inversion import InversionConfig
from lamp import LaMPConfig
from lcm import LCMConfig
from masked_generator import MaskedGeneratorConfig
from loop import PRECISIONS, Schedule
from mate import MATEConfig
from projector import ProjectorConfig
from t2m_evaluator import T2MEvaluatorConfig
from vae import VAEConfig


@dataclass
class DataConfig:
    synthetic_motions: int = 3000  # size of the embedded synthetic dataset (>= 3,000 for the tiny recipe)
    synthetic_seed: int = 0        # the generator is deterministic for a seed
    min_len: int = 40              # HumanML3D: clips of 40..196 frames at 20 fps
    max_len: int = 196
    unit: int = 4                  # HumanML3D crops lengths to a multiple of 4
    AT_LEAST_ZERO: ClassVar = ("synthetic_seed",)

    def __post_init__(self):
        if self.min_len > self.max_len:
            raise ValueError(f"data.max_len={self.max_len}: must be >= data.min_len ({self.min_len})")


@dataclass
class RunOptions:
    seed: int = 0     # seeds the offline text encoder and every training stage
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core)
    precision: str = "fp32"  # fp32, bf16 or fp16 (CUDA): one autocast context in fit and sampling
    compile: bool = False    # torch.compile the denoiser for sampling (eval, sample)
    flops: bool = False      # count each stage's first training step's FLOPs for its summary (bench_gpu; slows it)
    AT_LEAST_ZERO: ClassVar = ("seed", "threads")

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"run.precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")


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
    lamp_t2m: MaskedGeneratorConfig = field(default_factory=MaskedGeneratorConfig)
    # LaMP code (options/train_option.py): batch 64, lr 2e-4, max_iters 150,000 (commented out
    # beside max_epoch 2,000); constant rate here, without its warm-up and decay
    lamp_t2m_train: Schedule = field(default_factory=lambda: Schedule(150_000, 64, 2e-4))
    lamp_m2t: CaptionerConfig = field(default_factory=CaptionerConfig)
    # ours (LaMP gives no schedule for its captioner): the offline LM's pretraining on the
    # captions (skipped with --llm), then the captioner; BLIP-2's captioning lr
    lamp_m2t_lm_train: Schedule = field(default_factory=lambda: Schedule(20_000, 64, 1e-4))
    lamp_m2t_train: Schedule = field(default_factory=lambda: Schedule(20_000, 64, 1e-4))
    # ATM Sec. 4.1: MDM+ATM trains from scratch, 400k steps of batch 64, lr 1e-4 (MDM's);
    # we fine-tune diffusion.pt (ours: a tenth of those steps)
    atm_train: Schedule = field(default_factory=lambda: Schedule(40_000, 64, 1e-4))
    # ours: MATE gives no schedule; lr as TMR. The table, Proj, the heads and prototypes share it.
    mate_train: Schedule = field(default_factory=lambda: Schedule(20_000, 64, 1e-4))
    lcm: LCMConfig = field(default_factory=LCMConfig)
    # MotionLCM V1 (configs_v1/motionlcm_t2m.yaml): batch 256, lr 2e-4, 1000 epochs (~90k steps)
    lcm_train: Schedule = field(default_factory=lambda: Schedule(90_000, 256, 2e-4))

    def __post_init__(self):
        # LaMP's query i predicts motion token i (LaMP Eq. 1): the queries must cover the longest clip
        if self.data.max_len > 4 * self.lamp.n_queries:
            raise ValueError(f"lamp.n_queries={self.lamp.n_queries} covers clips of {4 * self.lamp.n_queries} frames, "
                             f"but data.max_len={self.data.max_len}")
        # MModality draws its pairs of generations without replacement
        if self.eval.mm_num_texts > 0 and self.eval.mm_num_gens < MM_PAIRS:
            raise ValueError(f"eval.mm_num_gens={self.eval.mm_num_gens}: must be >= MModality's pairs "
                             f"({MM_PAIRS}), or set eval.mm_num_texts=0")


_TINY = {
    # note: on an idle 2-core machine 2 threads run the smoke recipe in 192 s against 251 s with 1
    # (RESULTS.md); while another job holds a core, 2 threads spin-wait (set run.threads=1 there)
    "run.threads": 2,
    # c is 512-d (as CLIP ViT-B): at least as wide as the 4 x 128 VAE latent, so that E_proj
    # maps the latent into a wider space as LEAD's does (1 x 256 -> 768), not a narrower one
    "text.hidden_size": 128, "text.num_layers": 2, "text.intermediate_size": 512, "text.projection_dim": 512,
    "evaluator.dim_word": 64, "evaluator.dim_text_hidden": 128, "evaluator.dim_movement_enc_hidden": 128,
    "evaluator.dim_movement_latent": 128, "evaluator.dim_motion_hidden": 128, "evaluator.dim_coemb_hidden": 64,
    "evaluator_train.steps": 400, "evaluator_train.batch_size": 64, "evaluator_train.lr": 1e-3,
    # note: dropout off on CPU: attention dropout forces PyTorch's slow attention path
    # VAE: not MLD's 1 x 256 post-norm recipe, which needs far more steps than a CPU has
    # in minutes (vae.py, "Differences from the paper"; bench/bench_vae.py)
    "vae.latent_dim": 128, "vae.n_layers": 3, "vae.ff_dim": 256, "vae.dropout": 0.0,
    "vae.n_tokens": 4, "vae.norm_first": True, "vae.position_init": "sinusoidal",
    "vae.joint_loss": "root_relative",
    # the latent as 32 slots of 16 numbers tied to spans of time (still 4 x 128): reconstructions
    # keep 56% of the feet's lift against 10% with 4 distribution tokens (bench/bench_vae.py)
    "vae.time_slots": 32,
    # the posterior noise grown over the first half of the steps (vae.py, noise_ramp): the
    # decoder then learns the limbs' swing that MLD's full noise from step 1 hides
    "vae.noise_ramp": 475, "vae_train.steps": 950, "vae_train.batch_size": 16, "vae_train.lr": 5e-4,
    "vae_train.cosine": True,
    "diffusion.n_layers": 5, "diffusion.ff_dim": 256, "diffusion.dropout": 0.0,
    "diffusion_train.steps": 3000, "diffusion_train.batch_size": 64, "diffusion_train.lr": 5e-4,
    # guidance chosen on the validation split by bench/bench_guidance.py's stated rule (MLD's 7.5 was
    # chosen for MLD's model on HumanML3D; the paper preset keeps it)
    "diffusion.guidance_scale": 5.5,
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
    "lamp_t2m.width": 128, "lamp_t2m.n_layers": 3, "lamp_t2m.n_heads": 4, "lamp_t2m.ff_dim": 256,
    "lamp_t2m.dropout": 0.0, "lamp_t2m_train.steps": 1500, "lamp_t2m_train.batch_size": 32,
    "lamp_t2m_train.lr": 5e-4, "lamp_t2m_train.log_every": 200,
    "lamp_m2t.lm_width": 128, "lamp_m2t.lm_layers": 2, "lamp_m2t.lm_heads": 4, "lamp_m2t.lm_ff": 512,
    "lamp_m2t.lm_positions": 128, "lamp_m2t.lm_dropout": 0.0, "lamp_m2t.lora_dropout": 0.0,
    "lamp_m2t_lm_train.steps": 1000, "lamp_m2t_lm_train.lr": 1e-3, "lamp_m2t_lm_train.log_every": 200,
    "lamp_m2t_train.steps": 1200, "lamp_m2t_train.batch_size": 32, "lamp_m2t_train.lr": 1e-3,
    "lamp_m2t_train.log_every": 200,
    "mate.latent_dim": 64, "mate.n_layers": 2, "mate.ff_dim": 128, "mate.dropout": 0.0, "mate.segment_grid": 8,
    "mate.probe_captions": 32, "mate_train.steps": 200, "mate_train.batch_size": 32,
    "mate_train.lr": 3e-4, "mate_train.log_every": 50,
    # MotionLCM: V2's 10-step teacher grid reaches t = 999 in fewer updates; ~95 ms a step here
    "lcm.num_ddim_timesteps": 10, "lcm_train.steps": 2000, "lcm_train.batch_size": 64,
    "lcm_train.log_every": 200,
}

# smoke: the tiny preset's models with a smaller dataset, a few percent of its steps and 10 DDIM
# steps; every stage runs and writes what it writes in the full recipe, in a few minutes on 2 cores
# (measured in RESULTS.md). Its motions are not meant to be good.
_SMOKE = {**_TINY,
          "data.synthetic_motions": 600, "text.pretrain_steps": 30, "diffusion.sample_steps": 10,
          "evaluator_train.steps": 30, "vae.noise_ramp": 20, "vae_train.steps": 40, "diffusion_train.steps": 100,
          "projector_train.steps": 60, "projector_train.batch_size": 64, "atm_train.steps": 10,
          "eval.replications": 1, "eval.mm_num_texts": 5, "eval.timing_prompts": 2, "eval.diversity_times": 60,
          "inversion.test_motions": 2, "inversion.steps": 10, "inversion.styles": 2,
          "lamp_vq_train.steps": 30, "lamp_train.steps": 30, "lamp_t2m_train.steps": 40, "mate_train.steps": 20,
          "lamp_m2t_lm_train.steps": 40, "lamp_m2t_train.steps": 40,
          "mate.probe_captions": 8,
          "lcm_train.steps": 60, "lcm_train.batch_size": 32}
for key in [k for k in _SMOKE if k.endswith(".log_every")]:
    _SMOKE[key] = 10

PRESETS: dict[str, dict[str, object]] = {"paper": {}, "tiny": _TINY, "smoke": _SMOKE}


# ----------------------------------------------------------------------------
# Overrides and their checks


def _parse_value(text: str, kind, key: str):
    """Parse `text` as the dataclass field type `kind`; a mismatch is an error naming `key`."""
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in (int, float, str):
            return kind(text)
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            return tuple(item(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--set {key}={text}: expected {getattr(kind, '__name__', kind)}") from None
    raise ValueError(f"--set {key}: fields of type {kind} cannot be set from the command line")


def _typed(key: str, value, kind):
    """`value` as the field type `kind` (strings parsed), or an error naming `key`."""
    if isinstance(value, str) and kind is not str:
        value = _parse_value(value, kind, key)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif typing.get_origin(kind) is tuple and isinstance(value, list):
        value = tuple(value)
    expected = typing.get_origin(kind) or kind
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{key}={value!r}: expected {getattr(kind, '__name__', kind)}")
    return value


def check_ranges(section: str, values) -> None:
    """Every number of one section finite and in its range: ints >= 1 and floats > 0, except the
    fields its dataclass names in AT_LEAST_ZERO (>= 0) and FRACTIONS ([0, 1])."""
    at_least_zero = getattr(values, "AT_LEAST_ZERO", ())
    fractions = getattr(values, "FRACTIONS", ())
    for f in dataclasses.fields(values):
        value, key = getattr(values, f.name), f"{section}.{f.name}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ValueError(f"{key}={value}: must be a finite number")
        if f.name in fractions and not 0.0 <= value <= 1.0:
            raise ValueError(f"{key}={value}: must lie in [0, 1]")
        if f.name in at_least_zero and not value >= 0:
            raise ValueError(f"{key}={value}: must be >= 0")
        if f.name not in (*fractions, *at_least_zero) and not (value >= 1 if isinstance(value, int) else value > 0):
            raise ValueError(f"{key}={value}: must be {'>= 1' if isinstance(value, int) else '> 0'}")


def apply_overrides(cfg: RunConfig, overrides: dict[str, object]) -> RunConfig:
    """A new RunConfig with `section.field` values set (strings parsed, other values type-checked),
    each changed section rebuilt by dataclasses.replace (its __post_init__ runs), every section
    range-checked."""
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    changes: dict[str, dict] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in sections:
            raise ValueError(f"unknown config section {section!r} in {key!r}; sections: {sorted(sections)}")
        kinds = typing.get_type_hints(type(sections[section]))
        if name not in kinds or name.isupper():
            known = [f.name for f in dataclasses.fields(sections[section])]
            raise ValueError(f"unknown config key {key!r}; {section} has: {', '.join(sorted(known))}")
        changes.setdefault(section, {})[name] = _typed(key, value, kinds[name])
    for section, values in changes.items():
        sections[section] = dataclasses.replace(sections[section], **values)
    for section, values in sections.items():
        check_ranges(section, values)
    return RunConfig(**sections)


def build_config(preset: str, sets: list[str]) -> RunConfig:
    """The preset's overrides, then `--set section.field=value` items, on the papers' defaults."""
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
