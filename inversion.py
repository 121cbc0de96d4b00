"""Motion textual inversion (MTI): one new word learned from a few example motions.

Paper: LEAD: Latent Realignment for Human Motion Diffusion (Andreou et al., arXiv 2410.14508;
../shared/seeds/000_c8069c11a3356e2a.txt), Sec. 4.2, the MTI details of Sec. 5.2 and the three
objectives compared in Sec. 5.5 / Tab. 3. Following Gal et al. 2022 ("An image is worth one word"),
a placeholder word C_* (here "<*>") is added to the frozen text encoder tau_theta with one new
embedding row v_*, and only v_* is optimised so that prompts y' such as "a person <*>" make the
frozen latent diffusion model reproduce the example motion. For a batch of segments of the
example, with z_0 = E_vae(segment), t ~ U{1..T}, eps ~ N(0, I),
z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps and eps_theta = eps_theta(z_t, t, tau_theta(y')):

    F(e) = (z_t - sqrt(1 - abar_t) e) / sqrt(abar_t)                      Eq. (10)
    MTI_mld  = || eps - eps_theta ||^2                                     Sec. 5.5 (image TI, Gal et al.)
    MTI_feat = || D_vae(F(eps)) - D_vae(F(eps_theta)) ||^2                 Sec. 5.5
    MTI_lead = || E_proj(F(eps)) - E_proj(F(eps_theta)) ||^2               Eq. (9)

F(eps) with the true noise is z_0 itself (up to rounding); it is computed through F as the
paper writes it. Generation with a learned word is ordinary LEAD inference (Sec. 4.1.3), with or
without the projector's realignment D_proj(E_proj(.)) of the diffused latent (Tab. 3's "Project").

Reading order: templates and config, the three losses (plain functions), example motions and
their segments, the optimisation loop, saving / loading a learned word, generation, two helpers
of the evaluation (the coarse one-word descriptor, R-precision against captions), and the
experiment protocol: the Tab. 3 analogue (`mti_table`) and the held-out styles (`style_table`).

Glossary: B batch (segments), T frames, D feature width, n latent tokens, d latent width,
W text width (token embeddings), C text embedding width (c), E evaluator embedding width.

Differences from the paper:
- The three squared norms are taken as element means (MSE), as diffusion.py and projector.py do
  for Eqs. (2) and (5); MTI_feat averages over the valid (unpadded) frames of each segment.
- MTI_feat compares D_vae(F(eps)) with D_vae(F(eps_theta)) as Sec. 5.5 writes it, so its target
  is the VAE's reconstruction of the segment, not the segment's own features.
- z_0 is the VAE posterior mean of each segment (deterministic given the segment; the segments'
  random crops and the noise eps already vary the target), not a posterior sample.
- Segments are random crops of the example motion, 40 frames (HumanML3D's shortest clip) up to the
  whole motion, in multiples of 4 frames; the paper says only "motion segments derived from one
  motion sequence". Each segment gets its own random template.
- The learning rate (5e-3, Gal et al.'s base rate) is not given by LEAD.
- Prompts are cut after their end token before the text encoder: attention is causal, so c is the
  same as with CLIP's 77 positions, for a fraction of the work.
"""
import os
import re
import time
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

import bvh
import data
import metrics
from clip import TextEncoder
from diffusion import Denoiser, GaussianDiffusion
import projector
from projector import Projector
from vae import MotionVAE

PLACEHOLDER = "<*>"
OBJECTIVES = ("feat", "mld", "lead")  # Sec. 5.5: MTI_feat, MTI_mld, MTI_lead (Eq. 9)
# Sec. 4.2 "Template texts" ("the man/woman", "he/she" written out), plus "a person <*>" (the
# subject of most HumanML3D captions)
TEMPLATES = ("the sim <*>", "a person <*>", "the man <*>", "the woman <*>", "figure <*>",
             "someone <*>", "he <*>", "she <*>", "a robot <*>")


@dataclass
class InversionConfig:
    """MTI (Sec. 5.2) and its evaluation (Sec. 5.5); `render` names what the stage animates."""
    objective: str = "lead"       # Eq. (9): MTI_lead (the paper's MTI_proj); "feat", "mld": Sec. 5.5
    steps: int = 20               # Sec. 5.2: "We optimise for 20 steps using ADAM optimizer"
    batch_size: int = 4           # Sec. 5.2: "batch of size 4, consisting of motion segments ..."
    lr: float = 5e-3              # not in LEAD; Gal et al. 2022's base learning rate
    segment_min: int = 40         # ours: shortest segment, HumanML3D's shortest clip (frames)
    prompt: str = "a person <*>"  # generation prompt, a Sec. 4.2 template
    init_word: str = "walk"       # ours: descriptor of the styles (stylised walks), and the fallback
    test_motions: int = 100       # Sec. 5.1.1: "a randomly chosen subset of 100 motions"
    generations: int = 4          # ours: motions generated per learned word for the metrics
    styles: int = 5               # ours: held-out synthetic styles, the 100STYLE stand-in (Fig. 7)
    # Fig. 7: the examples, MTI_mld and MTI_proj w/ project (keys: example, init, feat, mld, lead, +proj)
    render: tuple[str, ...] = ("example", "mld", "lead+proj")
    AT_LEAST_ZERO: ClassVar = ("styles",)  # ranges: config.check_ranges


@dataclass
class FrozenModels:
    """Everything MTI reads and nothing it trains (Sec. 4.2: tau_theta, E_vae / D_vae, eps_theta, P)."""
    text: TextEncoder
    vae: MotionVAE
    denoiser: Denoiser
    schedule: GaussianDiffusion
    projector: Projector | None = None  # needed by MTI_lead and by generation with realignment

    @property
    def device(self) -> torch.device:
        return self.text.device

    def pipeline(self) -> "projector.Pipeline":
        """These models as the project's text -> motion path (projector.generate)."""
        return projector.Pipeline(self.text, self.vae, self.denoiser)


# ----------------------------------------------------------------------------
# The three objectives (plain functions)


def mti_mld_loss(eps: torch.Tensor, eps_pred: torch.Tensor):
    """MTI_mld (Sec. 5.5), the image-TI loss in the VAE latent space -> (loss, parts)."""
    assert eps.shape == eps_pred.shape, f"{tuple(eps.shape)} vs {tuple(eps_pred.shape)}"
    # MTI_mld = || eps - eps_theta(z_t, t, tau_theta(y')) ||^2, element mean
    loss = (eps - eps_pred).pow(2).mean()
    return loss, {"mti_mld": loss.detach()}


def mti_feat_loss(motion_true: torch.Tensor, motion_hat: torch.Tensor, lengths: torch.Tensor):
    """MTI_feat (Sec. 5.5) on decoded motions (B, T, D), valid frames only -> (loss, parts)."""
    B, T, D = motion_true.shape
    assert motion_hat.shape == (B, T, D), f"{tuple(motion_hat.shape)} vs {(B, T, D)}"
    valid = torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
    # MTI_feat = || D_vae(F(eps)) - D_vae(F(eps_theta)) ||^2, mean over valid frames and features
    loss = (motion_true - motion_hat).pow(2)[valid].mean()
    return loss, {"mti_feat": loss.detach()}


def mti_lead_loss(proj_true: torch.Tensor, proj_hat: torch.Tensor):
    """MTI_lead, Eq. (9), in the projected space (B, C) -> (loss, parts)."""
    assert proj_true.shape == proj_hat.shape, f"{tuple(proj_true.shape)} vs {tuple(proj_hat.shape)}"
    # Eq. (9): || E_proj(F(eps)) - E_proj(F(eps_theta)) ||^2, element mean
    loss = (proj_true - proj_hat).pow(2).mean()
    return loss, {"mti_lead": loss.detach()}


# ----------------------------------------------------------------------------
# Example motions and their segments


def load_example_motion(path, mean: np.ndarray, std: np.ndarray, skeleton: data.Skeleton = data.T2M,
                        min_frames: int = 40, joint_map=None, up: str = "y") -> torch.Tensor:
    """A user's example motion -> normalized features (T, D).

    Accepts motion capture as .bvh (bvh.read_bvh, joints by name or `joint_map`, then retargeted
    to HumanML3D's skeleton as its processing does, LEAD Sec. 5.5's 100STYLE protocol),
    de-normalized features (T, D) as `--stage sample` writes them (`*_features.npy`) or joint
    positions (T, J, 3) (`*_joints.npy`), which become T-1 feature rows through
    `data.joints_to_features`. Anything else raises ValueError naming the file."""
    path = Path(path)
    if path.suffix.lower() == ".bvh":
        if skeleton is not data.T2M:
            raise ValueError(f"{path}: BVH is read onto the 22-joint HumanML3D skeleton, not {skeleton.name}'s")
        array = bvh.retarget(bvh.read_bvh(path, joint_map, up, fps=skeleton.fps))    # (T, 22, 3)
    else:
        array = data.load_array(path, "example motion")
    D, J = skeleton.feat_dim, skeleton.n_joints
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: the motion contains NaN or inf")
    if array.ndim == 3 and array.shape[1:] == (J, 3):
        array = data.joints_to_features(array, skeleton)                       # (T-1, D)
    elif not (array.ndim == 2 and array.shape[1] == D):
        raise ValueError(f"{path}: expected {skeleton.name} features (T, {D}) or joints (T, {J}, 3), "
                         f"got shape {array.shape}")
    if len(array) < min_frames:
        raise ValueError(f"{path}: {len(array)} feature rows, fewer than the {min_frames} frames "
                         f"of the shortest motion the models were trained on")
    return torch.from_numpy((array.astype(np.float32) - mean) / std)          # (T, D)


def sample_segments(examples: list[torch.Tensor], batch_size: int, min_frames: int, max_frames: int,
                    rng: np.random.Generator, unit: int = 4):
    """batch_size random crops of the examples (each (T_i, D), normalized) -> (motion (B, Tmax, D)
    zero-padded, lengths (B,)). Crop lengths are multiples of `unit` from min_frames (or the whole
    example, if shorter) up to min(T_i, max_frames); max_frames is the VAE's positional table."""
    crops = []
    for _ in range(batch_size):
        x = examples[rng.integers(len(examples))]
        longest = max(unit, min(len(x), max_frames) // unit * unit)
        shortest = min(max(unit, min_frames // unit * unit), longest)
        length = unit * int(rng.integers(shortest // unit, longest // unit + 1))
        start = int(rng.integers(0, len(x) - length + 1))
        crops.append({"motion": x[start:start + length], "length": length, "caption": "", "name": ""})
    batch = data.collate(crops)
    return batch["motion"], batch["lengths"]


# ----------------------------------------------------------------------------
# The optimisation of v_*


def template_prompts(word: str, count: int, rng: np.random.Generator) -> list[str]:
    """`count` random Sec. 4.2 templates with the placeholder replaced by `word`."""
    return [TEMPLATES[i].replace(PLACEHOLDER, word) for i in rng.integers(len(TEMPLATES), size=count)]


def encode_prompts(text: TextEncoder, prompts: list[str]) -> torch.Tensor:
    """c (B, C) with gradient (unlike encode_cached), the token ids cut after the last end token."""
    ids = text.tokenizer(prompts)                                              # (B, 77)
    n = int((ids == text.tokenizer.eot_id).int().argmax(dim=1).max()) + 1
    c, _ = text.encode_ids(ids[:, :n])                                         # (B, C)
    return c


def mti_loss(objective: str, models: FrozenModels, motion: torch.Tensor, lengths: torch.Tensor,
             prompts: list[str], generator: torch.Generator):
    """One MTI objective for a batch of segments (B, T, D) and their prompts -> (loss, parts)."""
    vae, schedule = models.vae, models.schedule
    B = motion.shape[0]
    with torch.no_grad():
        z0, _, _ = vae.encode(motion, lengths, sample=False)                   # (B, n, d) posterior mean
    # t ~ U{0..T-1} (the paper's 1..T), eps ~ N(0, I), z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
    t = torch.randint(0, schedule.cfg.train_steps, (B,), device=z0.device, generator=generator)
    eps = torch.randn(z0.shape, device=z0.device, generator=generator)
    z_t = schedule.q_sample(z0, t, eps)                                        # (B, n, d)
    # no guidance while learning: eps_theta(z_t, t, tau_theta(y'))
    eps_pred = models.denoiser(z_t, t, encode_prompts(models.text, prompts))   # (B, n, d)
    if objective == "mld":
        return mti_mld_loss(eps, eps_pred)
    # Eq. (10): F(eps) (= z_0 up to rounding) and F(eps_theta)
    x0_true = schedule.predict_x0(z_t, t, eps)                                 # (B, n, d)
    x0_hat = schedule.predict_x0(z_t, t, eps_pred)                             # (B, n, d)
    if objective == "feat":
        with torch.no_grad():
            target = vae.decode(x0_true, lengths)                              # (B, T, D)
        return mti_feat_loss(target, vae.decode(x0_hat, lengths), lengths)
    assert models.projector is not None, "MTI_lead (Eq. 9) works in the projected space: pass the projector"
    with torch.no_grad():
        target = models.projector.project(x0_true)                             # (B, C)
    return mti_lead_loss(target, models.projector.project(x0_hat))


def invert(models: FrozenModels, examples: list[torch.Tensor], word: str, init_word: str,
           cfg: InversionConfig, objective: str | None = None, seed: int = 0,
           log=None) -> torch.Tensor:
    """Add `word` to models.text (initialised from `init_word`) and learn its embedding v_* (W,)
    from `examples` (normalized (T, D) motions): cfg.steps steps of Adam on batches of
    cfg.batch_size segments. Only the new row changes; it stays in the encoder, ready to use."""
    objective = objective or cfg.objective
    if objective not in OBJECTIVES:
        raise ValueError(f"MTI objective must be one of {OBJECTIVES}, got {objective!r}")
    if not examples:
        raise ValueError("motion textual inversion needs at least one example motion")
    text, device = models.text, models.device
    for model in (models.vae, models.denoiser, models.projector):
        assert model is None or not model.training, "call .eval() on the frozen models (dropout off)"
    max_frames = models.vae.cfg.max_len  # the VAE's positional table bounds a segment
    # 1. the placeholder: one new row, the only parameter Adam sees
    token_id = text.add_token(word, init_word)
    added = text.added_embeddings                                              # (n_added, W)
    row = token_id - text.word_embeddings.num_embeddings
    keep = torch.zeros(len(added), 1, device=device)
    keep[row] = 1.0                                                            # (n_added, 1): this row only
    optimizer = torch.optim.Adam([added], lr=cfg.lr)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    # 2. the loop
    for step in range(1, cfg.steps + 1):
        motion, lengths = sample_segments(examples, cfg.batch_size, cfg.segment_min, max_frames, rng)
        prompts = template_prompts(word, cfg.batch_size, rng)
        loss, _ = mti_loss(objective, models, motion.to(device), lengths.to(device), prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        added.grad.mul_(keep)  # earlier learned words, if any, stay as they are
        optimizer.step()
        if log is not None and (step == 1 or step == cfg.steps):
            log(f"[inversion] {word} ({objective}) step {step}/{cfg.steps} loss {loss.item():.4f}")
    text.cache.clear()  # note: c of any prompt with `word` changed
    return added[row].detach().clone()                                         # (W,)


# ----------------------------------------------------------------------------
# Saving and loading a learned word


def token_word(name: str) -> str:
    """The placeholder for a user's NAME: "<name>" (the tokenizer matches lower-cased text)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name or ""):
        raise ValueError(f"--word {name!r}: use letters, digits, '_' or '-' (the prompt then says <{name}>)")
    return f"<{name.lower()}>"


def save_token(path, word: str, init_word: str, embedding: torch.Tensor, objective: str) -> Path:
    """Write {"word", "init", "embedding" (W,), "objective"} atomically (temp file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"word": word, "init": init_word, "embedding": embedding.detach().cpu().float(),
                "objective": objective}, tmp)
    os.replace(tmp, path)
    return path


def load_token(text: TextEncoder, path) -> str:
    """Put the word saved at `path` into `text` (added, or its row overwritten); returns the word."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"word", "init", "embedding"} <= set(state):
        raise ValueError(f"{path}: not a learned word (expected word, init, embedding, objective)")
    embedding = state["embedding"]
    if tuple(embedding.shape) != (text.width,):
        raise ValueError(f"{path}: the embedding of {state['word']} is {tuple(embedding.shape)}, but this "
                         f"text encoder's words are ({text.width},): was it learned with another encoder?")
    word = state["word"]
    if word not in text.tokenizer.added:
        text.add_token(word, state["init"])
    row = text.tokenizer.added[word] - text.word_embeddings.num_embeddings
    with torch.no_grad():
        text.added_embeddings[row] = embedding.to(text.added_embeddings)
    text.cache.clear()
    return word


def load_tokens(text: TextEncoder, folder, prompts: list[str]) -> list[str]:
    """Load every learned word that `prompts` use from folder/NAME.pt; a "<name>" in a prompt
    with no saved word is a ValueError (it would otherwise be spelled out letter by letter)."""
    wanted = sorted({w.lower() for p in prompts for w in re.findall(r"<[A-Za-z0-9_\-]+>", p)})
    loaded = []
    for word in wanted:
        path = Path(folder) / f"{word[1:-1]}.pt"
        if not path.exists():
            raise ValueError(f"{word} has no learned embedding ({path} is missing): learn it with "
                             f"`python train.py --stage inversion --motion FILE.npy --word {word[1:-1]} "
                             f"--init WORD` (same --out)")
        loaded.append(load_token(text, path))
    return loaded


# ----------------------------------------------------------------------------
# Evaluation helpers


def coarse_descriptor(caption: str, tagged: str, is_one_token, fallback: str) -> str:
    """The coarse one-word descriptor (Sec. 5.2) of a HumanML3D caption: its first verb.

    `tagged` is the caption's "word/POS word/POS ..." field; the verb's lemma is tried first, then
    the caption's word at the same position (when the two line up), then `fallback`; a candidate
    must be a single token (`is_one_token(word)`), as the placeholder starts from one row."""
    tags = [t.rsplit("/", 1) for t in tagged.split() if "/" in t]
    words = caption.lower().split()
    for i, (lemma, pos) in enumerate(tags):
        if pos == "VERB":
            candidates = [lemma.lower()] + ([words[i].strip(".,!?")] if len(words) == len(tags) else [])
            for word in candidates:
                if word and is_one_token(word):
                    return word
    return fallback


def caption_r_precision(motion_emb: np.ndarray, owner: np.ndarray, text_emb: np.ndarray,
                        top_k: int = 3, pool_size: int = 32, seed: int = 0) -> np.ndarray:
    """Per motion, is its own caption among the top_k closest of a pool of pool_size captions?

    motion_emb (N, E); owner (N,) the row of text_emb (M, E) holding each motion's caption; the
    pool adds pool_size - 1 captions drawn from the other rows (M >= pool_size). Returns (N, top_k)
    hits (0/1), so the mean over rows is R-precision top-1..top_k and its spread gives a CI.
    This ranks captions for each motion (the papers' prose), which needs no pool of 32 motions."""
    N, M = len(motion_emb), len(text_emb)
    if M < pool_size:
        raise ValueError(f"R-precision draws {pool_size - 1} other captions: need at least "
                         f"{pool_size}, got {M}")
    rng = np.random.default_rng(seed)
    hits = np.zeros((N, top_k))
    for i in range(N):
        others = rng.choice(np.delete(np.arange(M), owner[i]), pool_size - 1, replace=False)
        pool = text_emb[np.concatenate([[owner[i]], others])]                  # (pool, E)
        dist = np.linalg.norm(pool - motion_emb[i], axis=1)                    # (pool,)
        rank = int((dist < dist[0]).sum())                                     # captions closer than its own
        hits[i] = [rank < k for k in range(1, top_k + 1)]
    return hits


# ----------------------------------------------------------------------------
# Experiment protocol: the Tab. 3 analogue (Sec. 5.5) and the held-out styles (Fig. 7)

MTI_LABELS = {"feat": "MTI_feat", "mld": "MTI_mld", "lead": "MTI_lead"}


def tagged_caption(root: Path, name: str, caption: str) -> str:
    """The "word/POS ..." field of `caption` in texts/NAME.txt (HumanML3D layout), or ""."""
    path = root / "texts" / f"{name}.txt"
    if not path.exists():  # a sub-span item is named NAME_start_end
        path = root / "texts" / f"{name.rsplit('_', 2)[0]}.txt"
    if not path.exists():
        return ""
    for line in data.read_lines(path, "caption file"):
        parts = line.strip().split("#")
        if len(parts) == 4 and parts[0].strip() == caption:
            return parts[1]
    return ""


@torch.no_grad()
def generate_and_embed(models: FrozenModels, evaluator, prompts: list[str],
                       lengths: torch.Tensor, seed: int, chunk: int = 64) -> dict:
    """Generate one motion per prompt, decoded without and with realignment from the same latents
    -> {False: (embeddings (N, E), [motion (T_i, D)]), True: (...)}, motions normalized, on the CPU.
    The same seed gives every call the same noise, so methods are compared on paired samples."""
    generator = torch.Generator(device=models.device).manual_seed(seed)
    pipe, out = models.pipeline(), {False: ([], []), True: ([], [])}
    for start in range(0, len(prompts), chunk):
        span = lengths[start:start + chunk].to(models.device)                     # (b,)
        z = pipe.latents(prompts[start:start + chunk], generator)                  # (b, N, Dz)
        motions = [projector.generate(pipe, prompts[start:start + chunk], span, r, z=z)
                   for r in (None, models.projector)]                               # D_vae(z), D_vae(D(E(z)))
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
    hits = caption_r_precision(emb, owner, text_emb, seed=seed)                  # (N, 3)
    row = {"R-precision top-3": metrics.mean_ci(hits[:, 2]),
           # Eq. (12) as computed: the distance of each motion to its own caption
           "MMdist": metrics.mean_ci(np.linalg.norm(emb - text_emb[owner], axis=1)),
           "Diversity": (metrics.diversity(emb, min(diversity_times, len(emb)), seed=seed), 0.0)}
    if real_emb is not None:
        row["FID"] = (metrics.fid(real_emb, emb), 0.0)
    return row


def mti_table(models: FrozenModels, test, evaluator, tokenizer, cfg: InversionConfig, unit: int,
              diversity_times: int, seed: int, log=print) -> dict:
    """The Tab. 3 analogue: one word per test motion (a fixed random subset of `test`) and
    objective, then generations from "a person <word>" with and without realignment, scored
    against the examples -> {"rows", "test_motions", "inits"}. `tokenizer` is the run's own
    (without the words learned here) for the captions and the one-token test."""
    device = models.device
    picks = np.sort(np.random.default_rng(seed).choice(len(test), min(cfg.test_motions, len(test)), replace=False))
    is_one_token = lambda word: len(tokenizer.encode(word)) == 1  # noqa: E731
    examples, lengths, inits = [], [], []
    for i in picks:
        name, raw, captions = test.items[i]
        examples.append(torch.from_numpy(test.normalize(raw)))                  # (T, D)
        lengths.append(min(len(raw), models.vae.cfg.max_len) // unit * unit)
        inits.append(coarse_descriptor(captions[0], tagged_caption(test.root, name, captions[0]),
                                       is_one_token, cfg.init_word))
    # 1. one word per motion and objective (Sec. 5.2: 20 Adam steps on 4 segments of the motion)
    start, words = time.time(), {objective: [] for objective in OBJECTIVES}
    for objective in OBJECTIVES:
        for k, (example, init) in enumerate(zip(examples, inits)):
            word = f"<mti_{objective}_{k}>"
            invert(models, [example], word, init, cfg, objective, seed=seed + k)
            words[objective].append(word)
        log(f"[inversion] {len(picks)} words with MTI_{objective} ({time.time() - start:.0f} s)")
    # 2. the ground truth: each test motion's first caption; the examples themselves (Real)
    all_captions = [captions[0] for _, _, captions in test.items]
    with torch.no_grad():
        text_emb = torch.cat([evaluator.encode_text(evaluator.tokenizer(all_captions[s:s + 256]).to(device))
                              for s in range(0, len(all_captions), 256)]).double().cpu().numpy()  # (M, E)
    real_emb = embed_examples(evaluator, examples, lengths, device)              # (N, E)
    rows = {"Real": mti_row(real_emb, picks, text_emb, None, diversity_times, seed)}
    # 3. G generations per word, the same noise for every objective
    G = cfg.generations
    owner, gen_lengths = np.repeat(picks, G), torch.tensor(lengths).repeat_interleave(G)
    for objective in OBJECTIVES:
        prompts = [cfg.prompt.replace(PLACEHOLDER, w) for w in words[objective] for _ in range(G)]
        sets = generate_and_embed(models, evaluator, prompts, gen_lengths, seed)
        for project in (False, True):
            label = MTI_LABELS[objective] + (" w/ project" if project else "")
            rows[label] = mti_row(sets[project][0], owner, text_emb, real_emb, diversity_times, seed)
    return {"rows": rows, "test_motions": [test.items[i][0] for i in picks], "inits": inits}


def mti_note(n_motions: int, cfg: InversionConfig, source: str) -> str:
    return (f"{n_motions} test motions of {source} (a fixed random subset; the paper: 100), one "
            f"word per motion and objective ({cfg.steps} Adam steps, batch {cfg.batch_size} segments, lr "
            f"{cfg.lr}, initialised from the first single-token verb of the motion's first caption, else "
            f"'{cfg.init_word}'), {cfg.generations} generations per word from \"{cfg.prompt}\" at the motion's "
            "length; 'w/ project' decodes the same diffused latents after D_proj(E_proj(.)). Real: the example "
            "motions. R-precision top-3: for each motion, is its example's first caption among the 3 "
            "closest of 32 (itself + 31 captions of other test motions); MMdist: mean distance to that "
            "caption; FID: generated vs example motions; Diversity: mean distance over min(300, N) random "
            "pairs. CIs: 1.96 std / sqrt(N) over motions for R-precision and MMdist; FID and Diversity are "
            "set-level (no CI, shown as ± 0). Metrics in this run's `evaluator` space.")


def style_table(models: FrozenModels, split, segments: dict, style_names, evaluator, cfg: InversionConfig,
                unit: int, seed: int, log=print) -> dict:
    """The out-of-distribution case (the paper's 100STYLE experiment, Fig. 7): one word per held-out
    style (the first cfg.styles of `style_names` found in `split`, labelled by `segments`) and
    objective, learned from the style's first example motion; generated motions are scored by
    their evaluator-space distance to the style's examples. -> {"rows", "styles", "tokens":
    [(stem, word, vector, objective)], "motions": [(stem, motion (T, D) normalized, title, render)]}
    for the caller to save."""
    methods = ["init", "init+proj"] + [f"{o}{p}" for o in OBJECTIVES for p in ("", "+proj")]
    unknown = set(cfg.render) - set(methods) - {"example"}
    if unknown:
        raise ValueError(f"inversion.render: unknown {sorted(unknown)}; choose from example, {', '.join(methods)}")
    by_style = {}  # style -> indices into split.items
    for i, (name, _, _) in enumerate(split.items):
        style = segments.get(name, {}).get("style")
        if style:
            by_style.setdefault(style, []).append(i)
    styles = [s for s in style_names if s in by_style][:cfg.styles]
    examples = {s: [torch.from_numpy(split.normalize(split.items[i][1])) for i in by_style[s]] for s in styles}
    lengths = {s: [min(len(x), models.vae.cfg.max_len) // unit * unit for x in examples[s]] for s in styles}
    example_emb = {s: embed_examples(evaluator, examples[s], lengths[s], models.device) for s in styles}
    centroids = np.stack([example_emb[s].mean(0) for s in styles])              # (S, E)
    G, start = cfg.generations, time.time()
    results, tokens, outputs = {m: {} for m in methods}, [], []
    for si, style in enumerate(styles):
        slug = style.replace(" ", "_")
        prompts = {"init": [cfg.prompt.replace(PLACEHOLDER, cfg.init_word)] * G}
        for objective in OBJECTIVES:
            word = f"<{slug}_{objective}>"
            v = invert(models, examples[style][:1], word, cfg.init_word, cfg, objective, seed=seed)
            tokens.append((f"{slug}_{objective}", word, v, objective))
            prompts[objective] = [cfg.prompt.replace(PLACEHOLDER, word)] * G
        gen_lengths = torch.full((G,), lengths[style][0], dtype=torch.long)
        outputs.append((f"{slug}/example", examples[style][0][:lengths[style][0]], f"{style}: example",
                        "example" in cfg.render))
        for key, texts in prompts.items():
            sets = generate_and_embed(models, evaluator, texts, gen_lengths, seed)
            for project in (False, True):
                method = key + ("+proj" if project else "")
                emb, motions = sets[project]
                dist = np.linalg.norm(emb[:, None] - example_emb[style][None], axis=-1).mean(1)  # (G,)
                nearest = np.linalg.norm(emb[:, None] - centroids[None], axis=-1).argmin(1)    # (G,)
                results[method][style] = (dist, nearest == si)
                outputs += [(f"{slug}/{method}_{k}", motion, f"{style}: {texts[0]}" + (" (realigned)" if project else ""),
                             k == 0 and method in cfg.render) for k, motion in enumerate(motions)]
        log(f"[inversion] style {style}: {len(examples[style])} examples ({time.time() - start:.0f} s)")
    labels = {"init": f"'{cfg.init_word}' (no inversion)", **MTI_LABELS}
    spread = {}
    for s in styles:
        if len(example_emb[s]) >= 2:
            d = np.linalg.norm(example_emb[s][:, None] - example_emb[s][None], axis=-1)
            spread[s] = d[~np.eye(len(d), dtype=bool)]
    rows = {"Real": {f"dist. {s}": metrics.mean_ci(spread[s]) for s in spread}}
    for method, per_style in results.items():
        key, _, project = method.partition("+")
        label = labels[key] + (" w/ project" if project else "")
        rows[label] = {f"dist. {s}": metrics.mean_ci(d) for s, (d, _) in per_style.items()}
        rows[label]["dist. mean"] = metrics.mean_ci(np.concatenate([d for d, _ in per_style.values()]))
        rows[label]["nearest style"] = metrics.mean_ci(np.concatenate([hit for _, hit in per_style.values()]))
    return {"rows": rows, "styles": {s: len(examples[s]) for s in styles}, "tokens": tokens, "motions": outputs}


def style_note(n_styles: int, cfg: InversionConfig, source: str, folder) -> str:
    return (f"One word per held-out style of {source} (styles.txt; never in a training caption) and "
            f"objective, learned from the style's first example motion, initialised from '{cfg.init_word}'. "
            f"'dist. STYLE': mean evaluator-space distance between each of {cfg.generations} motions generated "
            f"from \"{cfg.prompt}\" and every example of the style (↓; Real: distinct examples of the style "
            "among themselves); 'nearest style': share of generated motions whose nearest style centroid of "
            f"example embeddings is their own (↑, chance 1/{n_styles}). ± 1.96 std / sqrt(n) over generated "
            f"motions (Real: example pairs). Motions and GIFs in {folder}.")
