"""The text-to-motion evaluation protocol: evaluate, the Tab. 1 rows, the results tables.

    evaluate(generate_fn, test, evaluator, tokenizer, replications=20)  -> {metric: (mean, ci)}
    t2m_rows({"Real": None, "MLD, LEAD": shared_latents(pipe, {"MLD": None, "LEAD": lead})}, ...)

The protocol of Guo et al. 2022 that MLD, LEAD (seeds/000, Sec. 5.1.2), ATM, MATE and LaMP all
report, over the formulas of metrics.py: each replication r embeds the whole test split with
fresh random crops and captions (the dataset reseeded with seed + r, so every row of a table
sees the same draws), generates a motion for each caption and length, and computes FID, R-
precision, MMdist, Diversity, MModality and Swing; a table cell is mean +- 1.96 std / sqrt(R).

Rows that differ only in how a diffused latent is decoded (MLD and LEAD, LEAD's ablations) are
generated together: one z_0 per batch, decoded once per row (`shared_latents`), so the rows
differ by the projector alone and the diffusion is sampled once.

Also here: the tables built on this protocol (the fit table on training clips, LEAD Tab. 5's
few-step rows, the latent-structure stand-in for LEAD Fig. 3), the VAE's reconstruction
figures, and results.md / results.json in the run folder.

Differences from the paper:
- The Real row compares a second pass over the test clips (fresh crops) with the first, as Guo
  et al.'s code does, so its FID is near but not exactly 0.
- Swing is ours (metrics.swing): the evaluator's features barely tell a motion from its held
  mean pose; Swing does.
- Beside them, on the joints of 22-joint HumanML3D features: Foot skating, GMD's ratio with its
  thresholds (metrics.SKATING_*), and ours, Foot lift and Root speed as ratios to the real clips'.

Glossary: B batch, T frames, D feature width, E embed dim, N samples, R replications.
"""
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

import projector
from data import FPS, T2M, collate, features_to_joints
from metrics import (_as_numpy, body_frame_spread, diversity, fid, foot_lift, foot_skating_ratio, matching_score,
                     mean_ci, multimodality, nearest_neighbour_accuracy, r_precision, root_speed, wrist_speed)
from t2m_evaluator import DatasetEvaluator, _valid

MM_PAIRS = 10  # MModality: pairs of generations compared per text (Guo et al.'s d = 10)
QUALITY = ("Foot skating", "Foot lift", "Root speed")  # on joints: GMD's ratio; ours, as ratios to the real clips'
METRICS = ("FID", "R-precision top-1", "R-precision top-2", "R-precision top-3", "MMdist", "Diversity", "MModality",
           "Swing", *QUALITY)


@dataclass
class EvalConfig:
    replications: int = 20      # the papers: mean +- 1.96 std / sqrt(20)
    mm_num_texts: int = 100     # MModality: 100 texts (MLD, LEAD Sec. 5.1.2)
    mm_num_gens: int = 30       # ... 30 generations each, 10 pairs (Guo et al.)
    diversity_times: int = 300  # Diversity over 300 random pairs (Guo et al., LEAD Eq. 13)
    timing_prompts: int = 10    # prompts timed one at a time for the per-prompt inference time
    AT_LEAST_ZERO: ClassVar = ("mm_num_texts",)  # ranges: config.check_ranges


# ---------------------------------------------------------------------------------------
# Helpers


def _device_of(model) -> torch.device:
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    return params[0].device if params else torch.device("cpu")


def _statistics(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dataset's per-dimension (mean, std) as float32 CPU tensors, to de-normalise motions,
    or None for a dataset without them (the tests' lists of items): then there is no Swing."""
    if not (hasattr(dataset, "mean") and hasattr(dataset, "std")):
        return None
    return tuple(torch.as_tensor(a, dtype=torch.float32) for a in (dataset.mean, dataset.std))


def clip_quality(features: torch.Tensor, lengths) -> dict[str, np.ndarray]:
    """Per clip of de-normalised HumanML3D features (B, T, 263), lengths (B,), on the joints they
    give (data.features_to_joints, metres, y up): {"Foot skating": GMD's ratio, "Foot lift": metres,
    "Root speed": m/s, "Wrist speed": m/s about the root (not a table column)}, each (B,)
    (metrics.foot_skating_ratio, foot_lift, root_speed, wrist_speed at 20 fps).
    note: the floor is y = 0 as HumanML3D puts it, the lowest joint of the whole clip (before any
    crop; data.joints_to_features step 1); a generated motion's feet stand where its root height
    (feature 3) and body-frame heights put them, as in GMD's evaluation."""
    assert features.shape[-1] == T2M.feat_dim, (
        f"the feet and thresholds are HumanML3D's 22 joints (263-d features), got {features.shape[-1]}-d")
    joints = features_to_joints(features.detach().cpu().double(), n_joints=T2M.n_joints)  # (B, T, 22, 3)
    return {"Foot skating": foot_skating_ratio(joints, lengths, fps=FPS), "Foot lift": foot_lift(joints, lengths),
            "Root speed": root_speed(joints, lengths, fps=FPS), "Wrist speed": wrist_speed(joints, lengths, fps=FPS)}


def _has_joints(stats) -> bool:
    """Whether clip_quality applies: statistics to de-normalise with, of 22-joint HumanML3D features
    (KIT-ML's have other feet and units, GMD scales them by 0.001: no QUALITY columns there)."""
    return stats is not None and stats[0].shape[0] == T2M.feat_dim


@torch.no_grad()
def embed_dataset(dataset, evaluator, tokenizer, generate_fn=None, batch_size: int = 32,
                  collate_fn=None, describe=None) -> dict:
    """Embed every item of `dataset` once (one random caption each).

    Returns {"text": (N, E), "real": (N, E) ground-truth motions, "captions": [N]} and, with a
    generate_fn(captions, lengths) -> {row: (B, Tmax, D)}, "generated": {row: (N, E)} for the
    motions each row generated from the same captions and lengths. When the dataset has `mean`
    and `std`, also "real_spread" (N,) and "generated_spread" {row: (N,)}: each clip's
    `body_frame_spread` (metres, at its length), what Swing compares; for HumanML3D's 263-d features
    also "real_quality" and "generated_quality" {row: ...}, each {column: (N,)} of `clip_quality`.
    With describe(motions, lengths) -> captions (a captioner), "described" {row or "real": [N]}.
    Arrays are float64 numpy.
    """
    collate_fn = collate_fn or collate  # data.py pads items into {"motion", "lengths", "caption", "name"}
    device = _device_of(evaluator)
    stats = _statistics(dataset)
    text, real, captions = [], [], []
    generated, spread = {}, {"real": [], "generated": {}}  # row -> [(B, E)], [(B,)] per batch
    quality = {"real": [], "generated": {}}  # [{column: (B,)}] per batch, of the real clips and of each row
    described = {}  # row or "real" -> captions of its motions
    for start in range(0, len(dataset), batch_size):
        batch = collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        lengths = batch["lengths"].to(device)  # (B,)
        ids = tokenizer(batch["caption"]).to(device)  # (B, 77)
        text.append(evaluator.encode_text(ids))
        real.append(evaluator.encode_motion(batch["motion"].to(device), lengths))
        rows = generate_fn(batch["caption"], batch["lengths"]) if generate_fn is not None else {}
        for row, motion in rows.items():  # (B, Tmax, D) each
            assert motion.shape[0] == len(lengths) and motion.shape[1] >= int(lengths.max()), (
                f"generate_fn returned {tuple(motion.shape)} for lengths up to {int(lengths.max())}")
            generated.setdefault(row, []).append(evaluator.encode_motion(motion.to(device), lengths))
        if stats is not None:
            mean, std = stats
            spread["real"].append(body_frame_spread(batch["motion"].cpu().float() * std + mean, batch["lengths"]))
            for row, motion in rows.items():  # de-normalised, on the CPU
                spread["generated"].setdefault(row, []).append(
                    body_frame_spread(motion.detach().cpu().float() * std + mean, batch["lengths"]))
            if _has_joints(stats):  # the joints of the same de-normalised features
                quality["real"].append(clip_quality(batch["motion"].cpu().float() * std + mean, batch["lengths"]))
                for row, motion in rows.items():
                    quality["generated"].setdefault(row, []).append(
                        clip_quality(motion.detach().cpu().float() * std + mean, batch["lengths"]))
        if describe is not None:
            for row, motion in {"real": batch["motion"], **rows}.items():
                described.setdefault(row, []).extend(describe(motion.to(device), lengths))
        captions += list(batch["caption"])
    out = {"text": _as_numpy(torch.cat(text)), "real": _as_numpy(torch.cat(real)), "captions": captions,
           **({"described": described} if describe is not None else {})}
    if generate_fn is not None:
        out["generated"] = {row: _as_numpy(torch.cat(e)) for row, e in generated.items()}
    if stats is not None:
        out["real_spread"] = _as_numpy(torch.cat(spread["real"]))
        out["generated_spread"] = {row: _as_numpy(torch.cat(s)) for row, s in spread["generated"].items()}
    if _has_joints(stats):
        out["real_quality"] = _concatenate(quality["real"])
        out["generated_quality"] = {row: _concatenate(q) for row, q in quality["generated"].items()}
    return out


def _concatenate(batches: list[dict]) -> dict[str, np.ndarray]:
    """[{column: (B,)}] per batch -> {column: (N,)}."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@torch.no_grad()
def _multimodality_embeddings(generate_fn, dataset, evaluator, num_texts: int, num_gens: int,
                              seed: int) -> dict[str, np.ndarray]:
    """Generate num_gens motions for each of num_texts random items (their caption and
    ground-truth length) and embed them: {row: (num_texts, num_gens, E)}."""
    device = _device_of(evaluator)
    picks = np.random.default_rng(seed).choice(len(dataset), min(num_texts, len(dataset)), replace=False)
    out = {}
    for i in picks:
        item = dataset[int(i)]
        lengths = torch.full((num_gens,), int(item["length"]), dtype=torch.long)  # (G,)
        for row, motion in generate_fn([item["caption"]] * num_gens, lengths).items():  # (G, Tmax, D)
            out.setdefault(row, []).append(evaluator.encode_motion(motion.to(device), lengths.to(device)))  # (G, E)
    return {row: _as_numpy(torch.stack(e)) for row, e in out.items()}  # (m, G, E)


def _metrics(emb: dict, text: np.ndarray, motion: np.ndarray, spread, quality, diversity_times: int,
             seed: int) -> dict:
    """One replication's metrics of one row's motion embeddings against the real ones (and, given
    its clips' `spread` and `quality`, Swing and the QUALITY columns against the real clips')."""
    top = r_precision(text, motion, top_k=3, seed=seed)
    values = {"FID": fid(emb["real"], motion),
              "R-precision top-1": top[0], "R-precision top-2": top[1], "R-precision top-3": top[2],
              "MMdist": matching_score(text, motion),
              "Diversity": diversity(motion, diversity_times, seed=seed)}
    if spread is not None:
        # Swing = sum_b s_b(motions) / sum_b s_b(real), as metrics.swing (no random numbers drawn)
        values["Swing"] = float(spread.sum() / emb["real_spread"].sum())
    if quality is not None:
        real = emb["real_quality"]
        values["Foot skating"] = float(quality["Foot skating"].mean())  # GMD's figure: the mean over clips
        # ratios of the means over the same draws: sum_b lift_b(row) / sum_b lift_b(real), speed alike
        values["Foot lift"] = float(quality["Foot lift"].sum() / real["Foot lift"].sum())
        values["Root speed"] = float(quality["Root speed"].sum() / real["Root speed"].sum())
    return values


def evaluate_rows(generate_fn, dataset, evaluator, tokenizer, replications: int, batch_size: int = 32,
                  mm_num_texts: int = 100, mm_num_gens: int = 30, mm_times: int = MM_PAIRS,
                  diversity_times: int = 300, seed: int = 0, collate_fn=None, lamp_bertscore=None,
                  log=print) -> dict[str, dict[str, tuple[float, float]]]:
    """Every metric of every row over R replications: {row: {metric: (mean, 1.96 std / sqrt(R))}}.

    generate_fn(captions: list[str], lengths: LongTensor (B,)) -> {row: normalized (B, Tmax, D)}:
    the rows generated together from the same captions and lengths (`shared_latents`).
    Each replication embeds the whole split with fresh random crops and captions (drawn after
    `dataset.reseed(seed + r)` where the dataset has one, so that every row's replication r sees
    the same draws; generate_fn's noise after torch.manual_seed(seed + r)), then computes FID
    (generated vs ground-truth motion embeddings), R-precision top-1/2/3 and MMdist (generated
    motions vs the captions they were generated from), Diversity (300 pairs of generated motions)
    and, when mm_num_texts > 0, MModality (mm_num_gens generations for mm_num_texts captions,
    mm_times pairs each). When the dataset has `mean` and `std`, also Swing (metrics.swing: the
    generated motions' body-frame spread over that of the ground-truth clips beside them) and, for
    HumanML3D's 263-d features, the QUALITY columns on the joints: Foot skating (GMD's ratio, the
    mean over clips), Foot lift and Root speed (the generated clips' mean over the ground-truth
    clips' beside them). None draws random numbers.
    generate_fn=None gives the Real row ({"Real": ...}): a second pass over the ground-truth
    motions (fresh random crops) stands in for the generated ones, so FID is near but not
    exactly 0 (Guo et al.'s Real row reads 0.002 on HumanML3D for the same reason) and Swing,
    Foot lift and Root speed are near but not exactly 1; there is no MModality.
    lamp_bertscore = (describe, score) adds LaMP-BertScore (LaMP Sec. 3.4), on the first replication
    only: 100 x score(describe(motions, lengths), [[prompt], ...]), the captioner's captions of a
    row's motions (Real: of the ground-truth clips) against the captions they were generated from.
    """
    assert replications >= 1, "need at least one replication"
    was_training = evaluator.training if isinstance(evaluator, nn.Module) else None
    if was_training is not None:
        evaluator.eval()
    per_rep = {}  # row -> metric -> [value per replication]
    start = time.time()
    try:
        for r in range(replications):
            torch.manual_seed(seed + r)  # generate_fn's noise: each replication reproducible
            if hasattr(dataset, "reseed"):  # and its crops and captions: the same for every row
                dataset.reseed(seed + r)
            describe = lamp_bertscore[0] if lamp_bertscore and r == 0 else None  # captioning is costly: once
            emb = embed_dataset(dataset, evaluator, tokenizer, generate_fn, batch_size, collate_fn, describe)
            if generate_fn is not None:
                motions, spreads = emb["generated"], emb.get("generated_spread", {})
                qualities = emb.get("generated_quality", {})
            else:  # Real row: a second pass (fresh crops) of the ground truth, as Guo et al.
                second = embed_dataset(dataset, evaluator, tokenizer, None, batch_size, collate_fn)
                motions, spreads = {"Real": second["real"]}, {"Real": second.get("real_spread")}
                qualities = {"Real": second.get("real_quality")}
            values = {row: _metrics(emb, emb["text"], motion, spreads.get(row), qualities.get(row), diversity_times,
                                    seed + r)
                      for row, motion in motions.items()}
            if generate_fn is not None and mm_num_texts > 0:
                mm = _multimodality_embeddings(generate_fn, dataset, evaluator, mm_num_texts, mm_num_gens, seed + r)
                for row, e in mm.items():
                    values[row]["MModality"] = multimodality(e, mm_times, seed=seed + r)
            if describe is not None:
                prompts = [[caption] for caption in emb["captions"]]
                for row in values:
                    captions = emb["described"]["real" if generate_fn is None else row]
                    values[row]["LaMP-BertScore"] = 100.0 * lamp_bertscore[1](captions, prompts)
            for row, row_values in values.items():
                for name, value in row_values.items():
                    per_rep.setdefault(row, {}).setdefault(name, []).append(float(value))
                log(f"eval replication {r + 1}/{replications}{'' if len(values) == 1 else f' {row}'}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in row_values.items()) + f" ({time.time() - start:.1f} s)")
    finally:
        if was_training:
            evaluator.train()
    return {row: {name: mean_ci(v) for name, v in metrics.items()} for row, metrics in per_rep.items()}


def evaluate(generate_fn, dataset, evaluator, tokenizer, replications: int, **kwargs) -> dict[str, tuple[float, float]]:
    """evaluate_rows for one row: generate_fn(captions, lengths) -> (B, Tmax, D), or None (Real)."""
    one = None if generate_fn is None else (lambda captions, lengths: {"": generate_fn(captions, lengths)})
    rows = evaluate_rows(one, dataset, evaluator, tokenizer, replications, **kwargs)
    return next(iter(rows.values()))


# ---------------------------------------------------------------------------------------
# The text-to-motion table (LEAD Tab. 1, Sec. 5.1.2)


def shared_latents(pipe: projector.Pipeline, realigners: dict):
    """generate_fn of rows that decode the same diffused latents: {row: realigner or None}. One
    z_0 per batch (pipe.latents), decoded once per row (projector.generate with z=...): sample
    once, decode twice, so MLD and LEAD differ by the projector alone."""
    def generate_fn(captions: list[str], lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        z = pipe.latents(captions)                                                 # (B, N, Dz)
        return {row: projector.generate(pipe, captions, lengths, r, z=z) for row, r in realigners.items()}
    return generate_fn


def t2m_rows(methods: dict, dataset, evaluator, tokenizer, cfg: EvalConfig, seed: int, log=print,
             lamp_bertscore=None) -> dict:
    """The Tab. 1 protocol: {row: metrics} for methods {label: generate_fn or None} in the given
    order (None: the Real row; a generate_fn returns {row: motions}, see shared_latents).
    Replication r of every row scores the same random crops and captions, so rows differ by
    their generators alone."""
    rows = {}
    for label, generate_fn in methods.items():
        log(f"[eval] {label}" + (f" ({cfg.replications} replications)" if generate_fn is None else ""))
        rows.update(evaluate_rows(generate_fn, dataset, evaluator, tokenizer, replications=cfg.replications,
                                  mm_num_texts=cfg.mm_num_texts, mm_num_gens=cfg.mm_num_gens,
                                  diversity_times=cfg.diversity_times, seed=seed, log=log,
                                  lamp_bertscore=lamp_bertscore))
    return rows


def fit_rows(methods: dict, train, clips: int, evaluator, tokenizer, cfg: EvalConfig, seed: int,
             subset_seed: int = 0) -> tuple[dict, object]:
    """Fit beside generalisation: the Tab. 1 rows `methods` scored on a fixed random subset of
    `clips` *training* clips with their own captions (one replication, no MModality). A row that
    scores well here but not on test is limited by generalisation; one that scores badly here too,
    by fit. As many clips as the test split, so that FID's small-sample bias matches. Returns
    (rows, the subset)."""
    picks = np.sort(np.random.default_rng(subset_seed).permutation(len(train))[:clips])
    subset = train.subset(picks, seed=seed)
    if isinstance(evaluator, DatasetEvaluator):  # Guo et al.'s reads the word/POS tags of these captions
        evaluator = DatasetEvaluator(evaluator.evaluator, subset.mean, subset.std, subset.tags).to(_device_of(evaluator))
        tokenizer = evaluator.tokenizer
    cfg = dataclasses.replace(cfg, replications=1, mm_num_texts=0)
    return t2m_rows(methods, subset, evaluator, tokenizer, cfg, seed), subset


def fit_table(methods: dict, train, clips: int, evaluator, tokenizer, cfg: EvalConfig, seed: int, out, section: str,
              title: str, dataset: str, space: str) -> tuple[dict, float]:
    """`fit_rows`, written as the section SECTION_fit of out/results.*; -> (rows, seconds it took)."""
    start = time.time()
    rows, subset = fit_rows(methods, train, clips, evaluator, tokenizer, cfg, seed)
    seconds = round(time.time() - start, 2)
    write_results(out, f"{section}_fit", rows, f"{title}: fit, scored on training clips",
                  fit_note(len(subset), dataset, space))
    return rows, seconds


def seconds_per_prompt(generate_fn, dataset, prompts: int) -> tuple[float, float]:
    """Wall time of generate_fn(captions, lengths) for one prompt (batch of 1), mean and 95% CI."""
    times = []
    for i in range(prompts + 1):
        item = dataset[i % len(dataset)]
        start = time.perf_counter()
        generate_fn([item["caption"]], torch.tensor([item["length"]]))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return mean_ci(times[1:])  # the first call warms up caches and kernels


def few_step_rows(pipe: projector.Pipeline, consistency, realigner, dataset, evaluator, tokenizer,
                  cfg: EvalConfig, seed: int, steps=(1, 2, 4), scored: dict | None = None) -> dict:
    """LEAD Tab. 5: MotionLCM (lcm.py) and LEAD (MotionLCM), the LEAD projector `realigner` trained
    on the teacher's latents and not retrained (Sec. 5.4), at 1, 2 and 4 steps, each row with the
    metrics of t2m_rows and its per-prompt time. `scored`: the t2m rows "MotionLCM" and "LEAD
    (MotionLCM)", scored by the same protocol and seed at the model's own step count (reused)."""
    rows = {}
    for n in steps:
        fast = dataclasses.replace(pipe, consistency=consistency, steps=n)
        names = {f"{name}, {n} step{'s' if n > 1 else ''}": r
                 for name, r in (("MotionLCM", None), ("LEAD (MotionLCM)", realigner))}
        if scored and n == consistency.cfg.sample_steps:  # the same samples: not generated twice
            rows.update({label: dict(scored[name]) for label, name in zip(names, ("MotionLCM", "LEAD (MotionLCM)"))})
        else:
            rows.update(t2m_rows({", ".join(names): shared_latents(fast, names)}, dataset, evaluator, tokenizer, cfg,
                                 seed))
        for label, r in names.items():
            rows[label]["s / prompt"] = seconds_per_prompt(lambda c, lengths: projector.generate(fast, c, lengths, r),
                                                           dataset, cfg.timing_prompts)
    return rows


@torch.no_grad()
def latent_structure(motion_vae, realigner, dataset, segments: dict) -> dict | None:
    """The quantitative stand-in for LEAD's t-SNE (Fig. 3 right): leave-one-out 1-NN accuracy
    of the action label for test latents, in the VAE space and in the projected space.
    Needs action labels (`segments`, the synthetic dataset's); uses single-action motions."""
    if not segments:
        return None
    device = _device_of(motion_vae)
    items = [dataset[i] for i in range(len(dataset))]
    items = [it for it in items if len(segments.get(it["name"], {}).get("actions", [])) == 1]
    labels = [segments[it["name"]]["actions"][0] for it in items]
    z_all, proj_all = [], []
    for start in range(0, len(items), 64):
        batch = collate(items[start:start + 64])
        z, _, _ = motion_vae.encode(batch["motion"].to(device), batch["lengths"].to(device), sample=False)
        z_all.append(z.flatten(1))
        proj_all.append(realigner.project(z))
    z_all, proj_all = torch.cat(z_all), torch.cat(proj_all)
    return {"motions": len(items), "actions": len(set(labels)),
            "vae_space": nearest_neighbour_accuracy(z_all, labels),
            "projected_space": nearest_neighbour_accuracy(proj_all, labels)}


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
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        features = [f * std + mean for f in (reconstruct(x, lengths), x)]        # de-normalised
        J = (x.shape[-1] + 1) // 12
        j_hat, j = (features_to_joints(f, n_joints=J) for f in features)  # (B, T, J, 3)
        valid = _valid(lengths, x.shape[1])                          # (B, T)
        sums["global"] += float((j_hat - j).norm(dim=-1)[valid].sum())
        sums["root-aligned"] += float(((j_hat - j_hat[..., :1, :]) - (j - j[..., :1, :])).norm(dim=-1)[valid].sum())
        ric_hat, ric = (f[..., 4:4 + 3 * (J - 1)].unflatten(-1, (J - 1, 3)) for f in features)
        sums["body frame"] += float((ric_hat - ric).norm(dim=-1)[valid].sum())
        count += int(valid.sum()) * J
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def reconstruction_swing(reconstruct, dataset, device, batch_size: int = 64) -> float:
    """Swing of reconstruct(x, lengths) -> x_hat (normalised features, (B, T, D)) over `dataset`:
    sum over clips of x_hat's `body_frame_spread` over that of x (1.0 = the reconstructions move
    as much as the motions; a decoder that renders each clip's mean pose scores 0)."""
    mean, std = _statistics(dataset)
    sums = {"reconstruction": 0.0, "real": 0.0}
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        for name, f in (("reconstruction", reconstruct(x, lengths)), ("real", x)):
            sums[name] += float(body_frame_spread(f.cpu().float() * std + mean, batch["lengths"]).sum())
    return sums["reconstruction"] / sums["real"]


@torch.no_grad()
def reconstruction_quality(reconstruct, dataset, device, batch_size: int = 64) -> dict[str, float]:
    """The QUALITY columns of reconstruct(x, lengths) -> x_hat (normalised 263-d features) over
    `dataset`: "Foot skating" of the reconstructions and of the motions ("real Foot skating"), both
    means over clips, and "Foot lift", "Root speed" and "Wrist speed", the reconstructions' means
    over the motions'.
    Over a `fork` of the dataset where it has one, so the crops drawn are those the next pass over
    it will draw, and its generator is left where it was."""
    dataset = dataset.fork() if hasattr(dataset, "fork") else dataset
    mean, std = _statistics(dataset)
    parts = {"reconstruction": [], "real": []}  # [{column: (B,)}] per batch
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        for name, f in (("reconstruction", reconstruct(x, lengths)), ("real", x)):
            parts[name].append(clip_quality(f.cpu().float() * std + mean, batch["lengths"]))
    recon, real = _concatenate(parts["reconstruction"]), _concatenate(parts["real"])
    return {"Foot skating": float(recon["Foot skating"].mean()),
            "real Foot skating": float(real["Foot skating"].mean()),
            **{k: float(recon[k].sum() / real[k].sum()) for k in ("Foot lift", "Root speed", "Wrist speed")}}


def vae_report(reconstruct, dataset, device) -> dict:
    """The VAE's reconstructions of `dataset` (validation): joint errors (metres), Swing and, for
    HumanML3D's 263-d features, foot skating, foot lift and root speed (reconstruction_quality), printed."""
    quality = reconstruction_quality(reconstruct, dataset, device) if _has_joints(_statistics(dataset)) else None
    errors = joint_errors(reconstruct, dataset, device)
    swing = reconstruction_swing(reconstruct, dataset, device)
    print(f"[vae] validation mean per-joint position error: {100 * errors['global']:.2f} cm "
          f"(root-aligned: {100 * errors['root-aligned']:.2f} cm, body frame: {100 * errors['body frame']:.2f} "
          f"cm); swing {swing:.3f} (1: the reconstructions move as much as the motions)")
    figures = {"val_swing": round(swing, 4), "val_joint_error_m": round(errors["global"], 5),
               "val_root_relative_error_m": round(errors["root-aligned"], 5),
               "val_body_frame_error_m": round(errors["body frame"], 5)}
    if quality is not None:
        print(f"[vae] validation foot skating {quality['Foot skating']:.3f} (the motions: "
              f"{quality['real Foot skating']:.3f}), foot lift {quality['Foot lift']:.3f}, root speed "
              f"{quality['Root speed']:.3f} and wrist speed {quality['Wrist speed']:.3f} of the motions' "
              f"(1: as high, as fast)")
        figures.update({"val_foot_skating": round(quality["Foot skating"], 4),
                        "val_real_foot_skating": round(quality["real Foot skating"], 4),
                        "val_foot_lift_ratio": round(quality["Foot lift"], 4),
                        "val_root_speed_ratio": round(quality["Root speed"], 4),
                        "val_wrist_speed_ratio": round(quality["Wrist speed"], 4)})
    return figures


@torch.no_grad()
def reconstruction_metrics(reconstruct, dataset, evaluator, tokenizer, seed: int, batch_size: int = 64) -> dict:
    """How the evaluator sees reconstructions reconstruct(x, lengths) of `dataset` against the
    motions themselves: R-precision top-1..3 and MMdist with their captions for both, and the
    FID of the reconstructions against the motions, in one pass.
    A VAE whose reconstructions the evaluator cannot match to their captions bounds every
    generated row of the eval table."""
    device = _device_of(evaluator)
    text, real, recon = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        text.append(evaluator.encode_text(tokenizer(batch["caption"]).to(device)))   # (B, E)
        real.append(evaluator.encode_motion(x, lengths))
        recon.append(evaluator.encode_motion(reconstruct(x, lengths), lengths))
    text, real, recon = (torch.cat(e).double().cpu().numpy() for e in (text, real, recon))
    figures = {}
    for name, motion in (("real", real), ("reconstruction", recon)):
        top = r_precision(text, motion, top_k=3, seed=seed)
        figures[name] = {**{f"R-precision top-{k + 1}": round(float(top[k]), 4) for k in range(3)},
                         "MMdist": round(matching_score(text, motion), 4)}
    figures["reconstruction"]["FID"] = round(fid(real, recon), 4)  # against the real ones
    return figures


def latent_structure_table(structure: dict) -> tuple[dict, str, str]:
    """latent_structure's figures as (rows, title, note) for write_results."""
    rows = {"VAE latent z_vae": {"1-NN action accuracy": (structure["vae_space"], 0.0)},
            "projected E_proj(z_vae)": {"1-NN action accuracy": (structure["projected_space"], 0.0)}}
    return rows, "Latent structure (stand-in for LEAD Fig. 3, t-SNE)", (
        f"leave-one-out nearest neighbour (Euclidean) over {structure['motions']} single-action test motions, "
        f"{structure['actions']} action labels")


def t2m_note(clips: int, dataset: str, cfg: EvalConfig, space: str, atm_steps: int, sampling=None) -> str:
    """What the Tab. 1 analogue's numbers are, under the table; sampling: the DiffusionConfig sampled with."""
    how = (f" The diffusion rows sample with DDIM, {sampling.sample_steps} steps, guidance scale "
           f"{sampling.guidance_scale:g}." if sampling is not None else "")
    return (f"{clips} test motions of {dataset}, mean ± 1.96 std / sqrt(R) over R = {cfg.replications} "
            f"replications; MModality over {cfg.mm_num_texts} texts x {cfg.mm_num_gens} generations.{how} {space}, so "
            f"they compare methods within this run only. Equal budgets: +ATM and its control fine-tune diffusion.pt "
            f"for the same {atm_steps} steps on the same batches; +MATE's denoiser and projector are retrained from "
            f"scratch with MLD's and LEAD's configs and steps; MLD and LEAD rows of one denoiser share their "
            f"diffusion samples. LaMP-BertScore (with lamp_m2t.pt; first replication, ± 0): LaMP-M2T's captions "
            f"of the motions against their prompts, BERTScore F1 x 100 in this run's LaMP text transformer, not the "
            f"paper's roberta-large: it ranks rows of this table only.")


def timing_note(prompts: int, device) -> str:
    return (f"{prompts} prompts, batch of 1, on {torch.device(device).type}; the paper (LEAD Sec. 5.3, GPU not named; "
            "Sec. 5.2 trains on a 3090): MLD 0.236 s, LEAD 0.245 s")


def few_step_note(motions: int, replications: int, device) -> str:
    return (f"{motions} test motions, R = {replications} replications; the projector is LEAD's, trained on the "
            f"teacher's latents and not retrained (LEAD Sec. 5.4); s / prompt: batch of 1 on "
            f"{torch.device(device).type} (MotionLCM: ~0.03 s at one step).")


def fit_note(clips: int, dataset: str, space: str) -> str:
    """What the fit table's numbers are, under the table."""
    return (f"The rows above, scored on {clips} training clips of {dataset} (a fixed random subset, as many as "
            f"the test split) with their own captions, one replication (± 0), no MModality. Well here but not on "
            f"test: generalisation limits the method; badly here too: fit does. {space}.")


# ---------------------------------------------------------------------------------------
# Results tables (results.md / results.json in the run folder)

ARROWS = {"FID": "↓", "MMdist": "↓", "Diversity": "→", "MModality": "↑", "Swing": "→",  # →: closer to Real
          "Foot skating": "↓", **{m: "↑" for m in ("BLEU@1", "BLEU@4", "ROUGE-L", "CIDEr-D", "BERTScore",
                                                    "LaMP-BertScore")}}
TARGETS = {"Foot lift": 1.0, "Root speed": 1.0}  # ratios to the real clips': closer to the target is better


def _arrow(metric: str) -> str:
    if metric in TARGETS:
        return f"→ {TARGETS[metric]:g}"
    if metric in ARROWS:
        return ARROWS[metric]
    return "↑" if metric.startswith("R-precision") or "R@" in metric else ""


def _best_row(rows: dict, metric: str) -> str | None:
    """Name of the best method (Real and a Human ceiling excluded) in one column, as the papers bold it."""
    scored = {name: r[metric][0] for name, r in rows.items()
              if name != "Real" and not name.startswith("Human") and metric in r and r[metric][0] is not None
              and math.isfinite(r[metric][0])}
    arrow = _arrow(metric)
    if len(scored) < 2 or not arrow:
        return None
    if metric in TARGETS:
        return min(scored, key=lambda n: abs(scored[n] - TARGETS[metric]))
    if arrow == "→":
        if "Real" not in rows or metric not in rows["Real"]:
            return None
        target = rows["Real"][metric][0]
        return None if target is None else min(scored, key=lambda n: abs(scored[n] - target))
    return (min if arrow == "↓" else max)(scored, key=scored.get)


def results_table(rows: dict, title: str, note: str = "") -> str:
    """Markdown table laid out like the papers': one row per method (Real first), columns
    FID ↓, R-precision top-1/2/3 ↑, MMdist ↓, Diversity →, MModality ↑, Swing →, Foot skating ↓,
    Foot lift → 1, Root speed → 1 (then any other metric the rows carry, such as retrieval R@k),
    cells "mean ± CI", best method in bold, "-" where a row has no value (Real has no MModality).
    → : closest to Real's value; → 1: closest to 1."""
    names = sorted(rows, key=lambda n: n != "Real")  # Real first, the rest in insertion order
    seen = [m for r in rows.values() for m in r]
    columns = [m for m in METRICS if m in seen] + [m for m in dict.fromkeys(seen) if m not in METRICS]
    best = {m: _best_row(rows, m) for m in columns}
    lines = [f"### {title}", ""]
    lines.append("| Method | " + " | ".join(f"{m} {_arrow(m)}".rstrip() for m in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for name in names:
        cells = []
        for m in columns:
            if m not in rows[name]:
                cells.append("-")
                continue
            mean, ci = (float("nan") if v is None else v for v in rows[name][m])  # null in results.json: NaN
            cell = f"{mean:.3f} ± {ci:.3f}"
            cells.append(f"**{cell}**" if best[m] == name else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def strict_json(obj):
    """`obj` with every non-finite float as None, so that json.dumps writes strict JSON (no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(out_dir, section: str, rows: dict, title: str | None = None, note: str = "") -> Path:
    """Add or replace one section (one table) of out_dir/results.json and regenerate
    out_dir/results.md from all sections, so later stages add their tables without
    overwriting earlier ones. Returns the path of results.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    sections = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {}
    sections[section] = {"title": title or section, "note": note,
                         "rows": {name: {m: [float(v[0]), float(v[1])] for m, v in r.items()}
                                  for name, r in rows.items()}}
    _write_atomic(json_path, json.dumps(strict_json(sections), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    md = ["# Results", ""] + [results_table(s["rows"], s["title"], s["note"]) for s in sections.values()]
    md_path = out_dir / "results.md"
    _write_atomic(md_path, "\n".join(md))
    return md_path
