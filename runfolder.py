"""The run folder: what earlier stages wrote into `--out`, and the models loaded from it by name.

    run = open_run("runs/default")                  # a finished `--stage all`
    pipe = pipeline(run)                             # projector.Pipeline: text encoder, VAE, denoiser
    lead = load_projector(run)                       # LEAD's projector

Every stage writes one checkpoint dict per model (loop.fit) and a STAGE.json of its figures into
the run folder; a later stage loads them back here by name (`load_model(run, "vae")`), rebuilt
from their saved configs. A missing or interrupted checkpoint is an error naming the stage to
run. Each checkpoint records the fingerprints of the files it was trained on (`trained_on`):
loading one trained on another version of a file (a retrained vae.pt, say) prints a warning
naming the stage to rerun. Also here: the dataset splits (the embedded dataset generated on
first use), the training latents shared by the stages that train on them, and the text encoders
(the offline stand-in or real CLIP, MATE's word tables, LaMP's text features).
"""
import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:
    import fcntl  # POSIX file locks; elsewhere the run folder is not locked
except ImportError:
    fcntl = None

import caption_metrics
import captioner
import data
import diffusion
import lamp
import lcm
import loop
import masked_generator
import projector
import synthetic
import vae
from captioner import CaptionerConfig
from clip import TextEncoder
from evaluation import strict_json
from config import RunConfig, build_config
from diffusion import DiffusionConfig
from lamp import LaMPConfig
from lcm import LCMConfig
from masked_generator import MaskedGeneratorConfig
from projector import ProjectorConfig
from t2m_evaluator import DatasetEvaluator, T2MEvaluator, T2MEvaluatorConfig
from vae import VAEConfig
from vqvae import MotionVQVAE


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
    """`obj` as indented, strict JSON at `path` (its folder created), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")
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



# checkpoint name -> how its model is rebuilt from the saved (config dict, meta); the name's
# longest prefix picks the builder (diffusion_atm -> diffusion, lamp_t2m_clip -> lamp_t2m)
BUILDERS = {
    "vae": lambda c, m: vae.MotionVAE(VAEConfig(**c), m["feat_dim"]),
    "diffusion": lambda c, m: diffusion.Denoiser(DiffusionConfig(**c), tuple(m["latent_shape"]), m["text_dim"]),
    "projector": lambda c, m: projector.Projector(ProjectorConfig(**c), tuple(m["latent_shape"]), m["text_dim"]),
    "evaluator": lambda c, m: T2MEvaluator.rebuild(T2MEvaluatorConfig(**c), m),
    "lamp_vq": lambda c, m: MotionVQVAE(LaMPConfig(**c), m["feat_dim"]),
    "lamp": lambda c, m: lamp.LaMP(LaMPConfig(**c), m["vocab_size"], m["eot_id"]),
    "lamp_t2m": lambda c, m: masked_generator.MaskedTransformer(MaskedGeneratorConfig(**c), m["n_codes"],
                                                                m["cond_dim"], m["max_tokens"]),
}
BUILDERS["alignment"] = BUILDERS["evaluator"]
BUILDERS["lcm"] = lambda c, m: lcm.ConsistencyDenoiser(BUILDERS["diffusion"](m["denoiser"], m), LCMConfig(**c))
# checkpoint name (its start) -> the stage writing it; else the name's first word
WRITTEN_BY = {"alignment": "evaluator", "lamp_vq": "lamp", "lamp_t2m": "lamp_t2m", "lamp_m2t": "lamp_m2t",
              "diffusion_atm": "atm",
              "diffusion_mse": "atm",
              "diffusion_mate": "mate", "projector_mate": "mate"}


def stage_of(name: str) -> str:
    return next((s for prefix, s in WRITTEN_BY.items() if name.startswith(prefix)), name.split("_")[0])


def finished(run: Run, name: str) -> dict:
    """run.out/NAME.pt of a finished stage; a missing or interrupted one names the stage to run.
    A checkpoint trained on another version of a file it depends on (a retrained vae.pt, say)
    is used with a warning naming the stage to rerun."""
    stage = stage_of(name)
    path = run.out / f"{name}.pt"
    state = loop.load_checkpoint(path, stage)
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
    model = BUILDERS[max((k for k in BUILDERS if name == k or name.startswith(f"{k}_")), key=len)]
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
    user's inputs writes its own (samples/RUN_ID/sample.json, inversion_WORD.json, captions-K.json), so none
    overwrites the full run's records."""
    if stage == "sample" and (run.args.text or run.args.prompts):
        return user_folder(run) / "sample.json"
    if (stage == "inversion" and run.args.motion) or stage == "caption":  # claimed when the stage starts
        stem = f"inversion_{run.args.word}" if stage == "inversion" else "captions"
        if "record" not in run.cache:
            run.out.mkdir(parents=True, exist_ok=True)
            run.cache["record"] = claim(lambda k: run.out / f"{stem}{f'-{k}' if k > 1 else ''}.json")
        return run.cache["record"]
    name = conditioned(run, stage) if stage in ("diffusion", "projector", "atm", "eval", "sample") else stage
    return run.out / f"{name}{evaluator_suffix(run) if stage == 'eval' else ''}.json"


def user_folder(run: Run) -> Path:
    """samples/RUN_ID/ for the motions of one `--stage sample` call with the user's prompts
    (RUN_ID: the time it started, with -2, -3, ... for calls within the same second)."""
    if "run_id" not in run.cache:
        base, stamp = run.out / conditioned(run, "samples"), time.strftime("%Y%m%d-%H%M%S")
        base.mkdir(parents=True, exist_ok=True)
        run.cache["run_id"] = claim(lambda k: base / (stamp + (f"-{k}" if k > 1 else "")), folder=True)
    return run.cache["run_id"]


def claim(name_for, folder: bool = False) -> Path:
    """The first free name_for(1), name_for(2), ..., created exclusively (a folder, or an empty
    file): two processes asking at once never get the same one."""
    for k in range(1, 10_000):
        path = name_for(k)
        try:
            path.mkdir() if folder else os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{name_for(1)} and 9,998 names after it exist")



def as_lists(rows: dict) -> dict:
    """A results table {row: {column: (mean, ci)}} as JSON-friendly lists."""
    return {name: {k: list(v) for k, v in row.items()} for name, row in rows.items()}


def dataset_name(run: Run) -> str:
    return "the embedded synthetic dataset" if run.synthetic else str(run.data_root)


def pipeline(run: Run, denoiser_name: str | None = None, mate: bool | str = False) -> projector.Pipeline:
    """The frozen models of a finished run, text -> motion (projector.generate); mate: a MATE
    text encoder (see clip_text_encoder)."""
    text = clip_text_encoder(run, mate=mate) if mate else text_encoder(run)
    pipe = projector.Pipeline(text, load_model(run, "vae"), load_denoiser(run, denoiser_name))
    # how to sample (guidance, DDIM steps, eta) is the run's config now, not what the denoiser was trained under
    pipe.schedule.cfg = dataclasses.replace(pipe.schedule.cfg, **{k: getattr(run.cfg.diffusion, k)
                                                                  for k in DiffusionConfig.SAMPLING})
    if run.cfg.run.compile:  # run.compile: the denoiser's 50 x 2 calls per sample compiled once
        pipe.denoiser = torch.compile(pipe.denoiser)
    return pipe



def load_lcm(run: Run) -> "lcm.ConsistencyDenoiser":
    """The distilled student of lcm.pt (MotionLCM samples with the student, not the EMA)."""
    state = finished(run, "lcm")
    model = BUILDERS["lcm"](state["config"], state["meta"])
    model.load_state_dict({k[len("student."):]: v for k, v in state["model"].items() if k.startswith("student.")})
    return model.to(run.device).eval().requires_grad_(False)


def t2m_text(run: Run, condition: str):
    """The frozen condition of a masked generator: CLIP's text feature or LaMP's (Tab. 6)."""
    if condition == "clip":
        return clip_text_encoder(run)
    key = f"t2m_text:{condition}"  # one per condition: lamp.pt read once, each caption encoded once
    if key not in run.cache:
        run.cache[key] = lamp.LaMPTextEncoder(load_model(run, "lamp"), clip_text_encoder(run).tokenizer,
                                              queries=condition == "lamp_queries").to(run.device)
    return run.cache[key]


def t2m_generate(run: Run, name: str, row: str | None = None):
    """generate_fn(captions, lengths) of the masked generator NAME.pt: normalised motions (B, T, D),
    or {row: motions} (evaluation.t2m_rows)."""
    model, vq = load_model(run, name), load_model(run, "lamp_vq")
    text = t2m_text(run, model.cfg.condition)

    def generate_fn(captions: list[str], lengths: torch.Tensor):
        motion = masked_generator.generate_motion(model, vq, text, captions, lengths)
        return motion if row is None else {row: motion}
    return generate_fn


def captioning_lm(run: Run, cfg: CaptionerConfig) -> tuple:
    """LaMP-M2T's language model -> (lm, its CaptionText): --llm DIR (a real OPT, frozen), else the
    offline small OPT, pretrained here as a language model on the training captions (lamp_m2t_lm.pt)."""
    if run.args.llm:
        return captioner.load_lm(run.args.llm)
    captioner.check_offline_lm_fits(cfg, run.device)
    tokenizer = clip_text_encoder(run).tokenizer
    torch.manual_seed(run.cfg.run.seed)  # before the LM's random initialisation
    lm, text = captioner.offline_lm(tokenizer, cfg)
    lm = lm.to(run.device)
    sched = run.cfg.lamp_m2t_lm_train
    fit(run, "lamp_m2t_lm", lm, cfg, captioner.lm_loss_fn(lm, text, cfg.max_tokens, run.device),
        loop.batches(open_split(run, "train"), sched.batch_size, run.cfg.run.seed + 4), sched, {})
    return lm.requires_grad_(False), text


def load_captioner(run: Run) -> "captioner.Captioner":
    """The captioner of lamp_m2t.pt (its LM's weights inside; an --llm checkpoint reloads its folder)."""
    state = finished(run, "lamp_m2t")
    cfg, llm = CaptionerConfig(**state["config"]), state["meta"].get("llm")
    lm, text = captioner.load_lm(llm) if llm else captioner.offline_lm(clip_text_encoder(run).tokenizer, cfg)
    model = captioner.Captioner(load_model(run, "lamp"), load_model(run, "lamp_vq"), lm, text, cfg)
    model.load_state_dict(state["model"])
    return model.to(run.device).eval().requires_grad_(False)


def lamp_bertscore(run: Run):
    """LaMP-BertScore's halves (LaMP Sec. 3.4) when the run has lamp_m2t.pt, else None: describe(
    motions, lengths) -> LaMP-M2T's captions; score(captions, references) -> mean BERTScore F1 in
    the run's LaMP text transformer (caption_metrics.bert_score; not the paper's roberta-large)."""
    if not (run.out / "lamp_m2t.pt").exists():
        return None
    model = load_captioner(run)
    bert = captioner.lamp_bert_scorer(load_model(run, "lamp"), clip_text_encoder(run).tokenizer)
    return (lambda motions, lengths: captioner.caption(model, motions, lengths),
            lambda captions, references: caption_metrics.bert_score(captions, references, *bert))


def import_mld(run: Run) -> dict:
    """`--stage import`: MLD's released checkpoint (--mld FILE, diffusion.mld_checkpoints) written
    as vae.pt and diffusion.pt of this run folder, marked done, with the file's fingerprint."""
    if run.args.mld is None:
        raise ValueError("--stage import needs --mld FILE: MLD's released checkpoint (e.g. a .ckpt of MLD-1)")
    source = {"imported_from": str(run.args.mld), "sha256_16": fingerprint(run, run.args.mld)}
    states = diffusion.mld_checkpoints(run.args.mld)
    text_dim = states["diffusion"]["meta"]["text_dim"]
    for name, state in states.items():
        loop.save_checkpoint(run.out / f"{name}.pt", {**state, "meta": {**state["meta"], **source}})
    if run.clip and text_dim != clip_text_encoder(run).dim:
        raise ValueError(f"MLD's denoiser reads a {text_dim}-d text condition, --clip {run.clip} gives "
                         f"{clip_text_encoder(run).dim}: pass MLD's, openai/clip-vit-large-patch14")
    print(f"[import] {run.args.mld} -> {run.out}/vae.pt, diffusion.pt; next: --stage projector, eval (--clip, --data)")
    return {**source, "latent_shape": states["diffusion"]["meta"]["latent_shape"], "text_dim": text_dim}


def open_run(out, data_root="data/synthetic", clip: str | None = None, device: str = "auto", preset: str = "tiny",
             sets: list[str] = ()) -> Run:
    """A Run over the finished folder `out`, to load its models from Python (README: use the modules
    directly). data_root: the dataset it was trained on, read as it is (never regenerated); clip:
    the --clip it was trained with. The models rebuild from their checkpoints' own configs."""
    args = argparse.Namespace(text_encoder="clip", evaluator="evaluator", ablations=False, text=[], prompts=None,
                              motion=[], word=None, llm=None)
    return Run(cfg=build_config(preset, list(sets)), out=Path(out), data_root=Path(data_root), synthetic=False,
               device=pick_device(device), clip=clip, resume=False, args=args)


def fit(run: Run, name: str, model: torch.nn.Module, config, loss_fn, stream, sched: loop.Schedule, meta: dict,
        after_step=None) -> dict:
    """loop.fit into run.out/NAME.pt, recording the fingerprints of what this stage loaded."""
    lr_key = next((f"{f.name}.lr" for f in dataclasses.fields(run.cfg) if getattr(run.cfg, f.name) is sched),
                  f"{stage_of(name)}_train.lr")
    return loop.fit(run.out / f"{name}.pt", model, loss_fn, stream, sched, config=config,
                    meta={**meta, "trained_on": dict(run.loaded)}, stage=stage_of(name), resume=run.resume,
                    precision=run.cfg.run.precision, device=run.device, seed=run.cfg.run.seed, lr_key=lr_key,
                    after_step=after_step, count_flops=run.cfg.run.flops)


def run_stage(run: Run, stage: str, fn) -> dict:
    """One stage, fn(run) (train.STAGES): its figures, with its wall time, in its STAGE.json."""
    # splits opened earlier restart their draws: a stage sees the same data alone, in `all` or resumed
    for key, dataset in run.cache.items():
        if key.startswith("split:"):
            dataset.reseed(run.cfg.run.seed)
    start, run.loaded = time.time(), {}
    with loop.autocast(run.cfg.run.precision if stage in ("eval", "sample") else "fp32", run.device):
        figures = fn(run) or {}  # (loop.fit has its own autocast)
    figures["wall_time_s"] = round(time.time() - start, 2)
    path = record_path(run, stage)
    if loop.rank_and_world()[0] == 0:
        write_json(path, figures)
    print(f"[{stage}] done in {figures['wall_time_s']:.1f} s -> {path}")
    return figures


READERS = ("sample", "eval", "caption")  # stages that read finished checkpoints and need no lock


@contextlib.contextmanager
def writing(run: Run, stages: list[str]):
    """The run folder made ready for `stages`: writable (checked with a file, before any work),
    and locked while a stage that writes checkpoints runs (an OS lock on run.out/.lock, released
    when the process ends, however it ends): a second writer is refused at once, naming the first."""
    out = run.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".writable.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err}); give a writable folder") from None
    if fcntl is None or loop.rank_and_world()[0] != 0 or all(stage in READERS for stage in stages):
        yield
        return
    with open(out / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(f"--out {out} is in use: {holder} is writing there; wait for it to finish "
                             f"or give another --out (nothing was done)") from None
        handle.truncate(0)
        handle.write(f"`python train.py --stage {' '.join(stages)}` (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
