"""The recipe: LEAD's three training stages, its evaluation and use, then the companion papers.

    python train.py --stage STAGE [--preset tiny|smoke|paper] [--out runs/default] [--set key=value ...]

LEAD (Sec. 4.1.2) trains a motion VAE, a latent diffusion model, then the projector that realigns
a diffused latent before the VAE decodes it (Sec. 4.1.3). `--stage all` runs, in order:

    data       generate, convert (--from-joints) or validate the dataset; the offline text encoder
    evaluator  the two text-motion embedders: `evaluator` (metrics) and `alignment` (ATM, MATE)
    lamp       LaMP pretraining (then --text-encoder lamp, --evaluator lamp)
    lamp_t2m   LaMP-T2M, the masked token generator, beside MoMask's CLIP-conditioned baseline
    lamp_m2t   LaMP-M2T, the captioner: a language model behind LaMP's queries (Tab. 4 analogue)
    vae        stage 1: the MLD motion VAE
    diffusion  stage 2: the latent diffusion model
    projector  stage 3: the LEAD projector
    atm        ATM fine-tuning of the denoiser
    mate       MATE word table, then the denoiser and projector retrained on it
    lcm        MotionLCM: a consistency model distilled from the denoiser, 1-4 step sampling
    eval       the Tab. 1 analogue: Real, MLD, LEAD (+ATM, +MATE, MotionLCM, LaMP-T2M, ablations)
    sample     text -> motion files (.npy, GIF/MP4 animations, --bvh)
    inversion  motion textual inversion

and, outside `all`: `import` (MLD's released checkpoint -> vae.pt, diffusion.pt) and `caption`
(LaMP-M2T's captions of --motion files). Each stage
loads what the stages before it wrote into `--out` (runfolder.py), calls its module's protocol,
and writes its checkpoint (loop.py) and STAGE.json. Configuration: config.py.
"""
import sys

import cli

if __name__ == "__main__":  # the command line checked before torch loads: --help answers at once
    cli.parse_args(sys.argv[1:], __doc__.split("\n\n")[0])

import dataclasses
import os
import time
from pathlib import Path

import torch

import atm_losses
import captioner
import clip
import data
import diffusion
import evaluation
import ingest
import inversion
import lamp
import lcm
import loop
import masked_generator
import mate
import metrics
import projector
import render
import synthetic
import vae
import vqvae
from clip import TextEncoder
from config import DataConfig, build_config
from loop import batches, latent_batches
from runfolder import (Run, as_lists, captioning_lm, clip_text_encoder, conditioned, dataset_name, dataset_root,
                       eval_embedder, eval_labels, fit, import_mld, lamp_bertscore, load_captioner, load_denoiser,
                       load_lcm, load_model, load_projector, open_split, pick_device, pipeline, record_path,
                       run_stage, t2m_generate, t2m_text, text_encoder, training_latents, user_folder, writing)
from t2m_evaluator import T2MEvaluator

# ----------------------------------------------------------------------------
# LEAD's three training stages (Sec. 4.1.2)


def stage_vae(run: Run) -> dict:
    """Stage 1: the motion VAE, on motions alone."""
    train, val = open_split(run, "train"), open_split(run, "val")
    cfg, sched = run.cfg.vae, run.cfg.vae_train
    torch.manual_seed(run.cfg.run.seed)
    model = vae.MotionVAE(cfg, train.mean.shape[0]).to(run.device)
    stream = vae.noise_ramped(batches(train, sched.batch_size, run.cfg.run.seed), cfg.noise_ramp)
    losses = fit(run, "vae", model, cfg, vae.vae_loss_fn(model, train.mean, train.std, run.device),
                 stream, sched, {"feat_dim": train.mean.shape[0]})
    figures = {"final_losses": losses, **evaluation.vae_report(model.reconstruct, val, run.device)}
    if not (run.out / "evaluator.pt").exists():
        print("[vae] no evaluator.pt in the run folder: run --stage evaluator to have the "
              "reconstructions scored by it")
        return figures
    test, evaluator = open_split(run, "test"), load_model(run, "evaluator")
    figures["test_reconstruction"] = recon = evaluation.reconstruction_metrics(
        model.reconstruct, test, evaluator, evaluator.tokenizer, seed=run.cfg.run.seed)
    for name, row in recon.items():
        print(f"[vae] evaluator on test {name}s: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return figures


def train_denoiser(run: Run, name: str, text: TextEncoder, latents: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The latent denoiser conditioned on `text`'s c, on latents = (mu, logvar) of the training
    motions' VAE posteriors -> NAME.pt. MATE retrains it from scratch on its own text encoder."""
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

    def loss_fn(batch):  # Eq. (2), the condition dropped to "" 10% of the time (Sec. 4.1.2)
        return schedule.loss(model, batch["z"], text.encode_cached(batch["caption"]), c_uncond)

    stream = latent_batches(train, mu, logvar, sched.batch_size, run.cfg.run.seed)
    losses = fit(run, name, model, cfg, loss_fn, stream, sched,
                 {"latent_shape": list(mu.shape[1:]), "text_dim": text.dim})
    return {"final_losses": losses}


def stage_diffusion(run: Run) -> dict:
    """Stage 2: the latent denoiser, VAE and text encoder frozen."""
    latents = training_latents(run)  # first: a missing vae.pt is named before the text encoder
    return train_denoiser(run, conditioned(run, "diffusion"), text_encoder(run), latents)


PROJECTOR_ABLATIONS = {  # LEAD Tab. 6: checkpoint -> (row, overrides of the projector config)
    "projector_no_align": ("LEAD w/o L_align", {"lambda_align": 0.0}),
    "projector_no_rec": ("LEAD w/o L_rec", {"lambda_rec": 0.0}),
    "projector_no_var": ("LEAD w/o L_var", {"lambda_var": 0.0}),
    "projector_mlp": ("LEAD (mlp)", {"kind": "mlp"})}


def train_projector(run: Run, name: str, text: TextEncoder, latents: tuple[torch.Tensor, torch.Tensor],
                    overrides: dict | None = None) -> dict:
    """One projector aligned to `text`'s c (Eq. 7) on the training motions' VAE posteriors -> NAME.pt."""
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
    """Stage 3: the projector, VAE, denoiser and text encoder frozen; --ablations: Tab. 6's variants."""
    train, text = open_split(run, "train"), text_encoder(run)
    load_denoiser(run)  # the recipe's order: a projector is trained for a finished diffusion stage
    text.encode_cached(train.captions())
    latents = training_latents(run)
    variants = {conditioned(run, "projector"): {},
                **({conditioned(run, n): o for n, (_, o) in PROJECTOR_ABLATIONS.items()} if run.args.ablations else {})}
    return {name: train_projector(run, name, text, latents, overrides) for name, overrides in variants.items()}


# ----------------------------------------------------------------------------
# LEAD's evaluation (Sec. 5.1, Tab. 1) and use: sampling, motion textual inversion (Sec. 4.2)


def eval_methods(run: Run, pipe: projector.Pipeline, lead: projector.Projector) -> dict:
    """{label: generate_fn} of the Tab. 1 analogue (Real: None): rows of one denoiser decode the same
    latents (evaluation.shared_latents); the ATM, MATE and MotionLCM rows once their stages ran."""
    def group(pipe, realigners: dict) -> dict:
        return {", ".join(realigners): evaluation.shared_latents(pipe, realigners)}

    lead_rows = {"MLD": None, "LEAD": lead}
    if run.args.ablations:
        lead_rows.update({row: load_projector(run, conditioned(run, name))
                          for name, (row, _) in PROJECTOR_ABLATIONS.items()})
    methods = {"Real": None, **group(pipe, lead_rows)}
    control = f"+{run.cfg.atm_train.steps} steps, L_mse only"  # ATM's equal-budget control (lambda = 0)
    atm = {"diffusion_atm": {"MLD+ATM": None, "LEAD+ATM": lead},
           "diffusion_mse": {f"MLD ({control})": None, f"LEAD ({control})": lead},
           **({"diffusion_atm_inter": {"MLD+ATM (L_inter only)": None},             # ATM Tab. 3
               "diffusion_atm_intra": {"MLD+ATM (L_intra only)": None}} if run.args.ablations else {})}
    for name, realigners in atm.items():
        if (run.out / f"{conditioned(run, name)}.pt").exists():
            methods.update(group(pipeline(run, conditioned(run, name)), realigners))
    if run.args.text_encoder != "clip":  # MATE and MotionLCM rows belong to the CLIP table
        return methods
    if (run.out / "diffusion_mate.pt").exists():
        methods.update(group(pipeline(run, "diffusion_mate", mate=True),
                             {"MLD+MATE": None, "LEAD+MATE": load_projector(run, "projector_mate")}))
    missing = [stage for stage, name in (("atm", conditioned(run, "diffusion_atm")), ("mate", "diffusion_mate"))
               if not (run.out / f"{name}.pt").exists()]
    if missing:
        print(f"[eval] no rows of --stage {', '.join(missing)} yet: run it, then `--stage eval` again")
    if (run.out / "lcm.pt").exists():  # LEAD Tab. 1 "LEAD (MotionLCM)": the projector, not retrained
        fast = dataclasses.replace(pipe, consistency=load_lcm(run))
        methods.update(group(fast, {"MotionLCM": None, "LEAD (MotionLCM)": lead}))
    t2m = {**T2M_ROWS, **(T2M_ABLATIONS if run.args.ablations else {})}  # LaMP Tab. 1 and 6
    return methods | {row: t2m_generate(run, name, row) for name, (row, _) in t2m.items()
                      if (run.out / f"{name}.pt").exists()}


def stage_eval(run: Run) -> dict:
    """The Tab. 1 analogue on the test split, the same rows on training clips (fit, --ablations), the time per
    prompt, the latent structure (Fig. 3's stand-in) and the few-step table (Tab. 5)."""
    test, cfg, seed = open_split(run, "test"), run.cfg.eval, run.cfg.run.seed
    pipe = pipeline(run)
    evaluator, lead = eval_embedder(run), load_projector(run)
    tokenizer = evaluator.tokenizer  # the evaluator's own reading of the captions (word/POS tokens; LaMP: CLIP ids)
    methods = eval_methods(run, pipe, lead)
    rows = evaluation.t2m_rows(methods, test, evaluator, tokenizer, cfg, seed, lamp_bertscore=lamp_bertscore(run))
    section, title, space = eval_labels(run)
    note = evaluation.t2m_note(len(test), dataset_name(run), cfg, space, run.cfg.atm_train.steps, pipe.schedule.cfg)
    evaluation.write_results(run.out, section, rows, title, note)
    # --ablations: fit or generalisation, the same rows on as many training clips (a fixed subset) as the test split
    fit_rows, fit_s = evaluation.fit_table(methods, open_split(run, "train"), len(test), evaluator, tokenizer, cfg,
                                           seed, run.out, section, title, dataset_name(run), space) \
        if run.args.ablations else ({}, None)
    timed = {"MLD": lambda c, lengths: projector.generate(pipe, c, lengths), "LEAD": lambda c, lengths:
             projector.generate(pipe, c, lengths, lead), **{r: methods[r] for r in ("LaMP-T2M",) if r in methods}}
    timing = {name: {"s / prompt": evaluation.seconds_per_prompt(fn, test, cfg.timing_prompts)}
              for name, fn in timed.items()}
    evaluation.write_results(run.out, conditioned(run, "timing"), timing, "Inference time per prompt",
                             evaluation.timing_note(cfg.timing_prompts, run.device))
    segments = synthetic.load_segments(test.root) if (test.root / "segments.json").exists() else {}
    structure = evaluation.latent_structure(pipe.vae, lead, test, segments)  # Fig. 3's t-SNE, as a number
    if structure:
        evaluation.write_results(run.out, conditioned(run, "latent_structure"),
                                 *evaluation.latent_structure_table(structure))
    steps = None
    if "MotionLCM" in rows:  # LEAD Tab. 5: the projector is LEAD's, not retrained (Sec. 5.4)
        steps = evaluation.few_step_rows(pipe, load_lcm(run), lead, test, evaluator, tokenizer, cfg, seed,
                                         scored=rows)
        evaluation.write_results(run.out, "lcm_steps", steps, "Few-step sampling (LEAD Tab. 5 analogue)",
                                 evaluation.few_step_note(len(test), cfg.replications, run.device))
    print((run.out / "results.md").read_text())
    return {"rows": as_lists(rows), "fit_rows": as_lists(fit_rows), "fit_s": fit_s,
            "timing": {n: list(v["s / prompt"]) for n, v in timing.items()},
            "latent_structure": structure, "lcm_steps": steps and as_lists(steps)}


DEFAULT_PROMPTS = ["a person walks forward", "a person jumps then waves with the right hand",
                   "someone walks in a circle clockwise"]


def stage_sample(run: Run) -> dict:
    """Text -> motion files (render.save_motion: .npy features and joints, GIF/MP4, --bvh) for --text
    (at --length), --prompts FILE (a length each), else a few built-in prompts."""
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
    if args.generator == "lamp_t2m":  # LaMP-T2M: 4 frames a token
        if args.sampler != "ddim" or args.no_realign:
            raise ValueError("--sampler and --no-realign choose how the diffusion samples, not --generator lamp_t2m")
        generate, realigner = t2m_generate(run, "lamp_t2m"), None
        prompts = [(text, frames - frames % 4) for text, frames in prompts]
    else:
        pipe = pipeline(run)
        if learned := inversion.load_tokens(pipe.text, run.out / "tokens", [text for text, _ in prompts]):
            print(f"[sample] learned words (--stage inversion) from {run.out / 'tokens'}: {', '.join(learned)}")
        if args.sampler == "lcm":
            pipe = dataclasses.replace(pipe, consistency=load_lcm(run), steps=args.steps)
        realigner = None if args.no_realign else load_projector(run)
        generate = lambda captions, lengths: projector.generate(pipe, captions, lengths, realigner)  # noqa: E731
    clip_text_encoder(run).tokenizer.check_fits([text for text, _ in prompts], "--text / --prompts")
    default = conditioned(run, "samples") + ("_lamp_t2m" if args.generator == "lamp_t2m" else "")
    folder = user_folder(run) if args.text or args.prompts else run.out / default
    animations, written = render.animation_kinds(), []
    for i, (text, frames) in enumerate(prompts):
        torch.manual_seed(run.cfg.run.seed + i)
        motion = generate([text] * args.num, torch.full((args.num,), frames)).cpu()
        for k in range(args.num):                                                     # motion (N, T, D)
            written += render.save_motion(folder / f"{ingest.prompt_slug(i, text)}_{k}",
                                          stats.denormalize(motion[k].numpy()), stats.skeleton, text,
                                          animations, args.bvh)
    print("\n".join(f"[sample] wrote {path}" for path in written))
    return {"prompts": prompts, "generator": args.generator, "sampler": args.sampler,
            "realigned": realigner is not None, "files": written}


def inversion_models(run: Run) -> inversion.FrozenModels:
    """A finished run's frozen models, with a text encoder of the stage's own for the new words."""
    if run.args.text_encoder != "clip":
        raise ValueError("--stage inversion learns a CLIP word embedding: run it without --text-encoder lamp")
    pipe = pipeline(run)  # the prerequisite checks and their messages
    text = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)
    return inversion.FrozenModels(text, pipe.vae, pipe.denoiser, pipe.schedule, load_projector(run))


def stage_inversion(run: Run) -> dict:
    """Motion textual inversion (Sec. 4.2). With --motion: learn one word from the user's examples.
    Otherwise: the Tab. 3 analogue on test motions, and the held-out styles (LEAD's 100STYLE)."""
    if run.args.motion:
        return learn_user_word(run)
    if run.args.word or run.args.init:
        raise ValueError("--word and --init name a word learned from --motion FILE.npy: give the motion(s) too")
    models, cfg, test = inversion_models(run), run.cfg.inversion, open_split(run, "test")
    table = inversion.mti_table(models, test, load_model(run, "evaluator"), text_encoder(run).tokenizer, cfg,
                                run.cfg.data.unit, run.cfg.eval.diversity_times, run.cfg.run.seed)
    evaluation.write_results(run.out, "mti", table["rows"], "Motion textual inversion (LEAD Tab. 3 analogue)",
                             inversion.mti_note(len(table["test_motions"]), cfg, dataset_name(run)))
    figures = {"tab3": {**table, "rows": as_lists(table["rows"])}, "styles": inversion_styles(run, models)}
    print((run.out / "results.md").read_text())
    return figures


def inversion_styles(run: Run, models: inversion.FrozenModels) -> dict | None:
    """The held-out styles (inversion.style_table): the `mti_styles` table, words in tokens/, motions in inversion/."""
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
    evaluation.write_results(run.out, "mti_styles", table["rows"], "Motion textual inversion, held-out styles "
                             "(stand-in for LEAD's 100STYLE, Fig. 7)",
                             inversion.style_note(len(table["styles"]), cfg, dataset_name(run), folder))
    return {"styles": table["styles"], "files": len(files), "rows": as_lists(table["rows"])}


def learn_user_word(run: Run) -> dict:
    """--motion FILE.npy [...] --word NAME --init WORD: learn <NAME> from examples -> tokens/NAME.pt."""
    args, cfg = run.args, run.cfg.inversion
    if not args.word or not args.init:
        raise ValueError("--motion needs --word NAME (prompts then say <NAME>) and --init WORD "
                         "(a coarse one-word descriptor to start from, e.g. walk)")
    word, stats = inversion.token_word(args.word), open_split(run, "train")
    examples = [inversion.load_example_motion(path, stats.mean, stats.std, stats.skeleton, run.cfg.data.min_len,
                                              joint_map=args.joint_map, up=args.up) for path in args.motion]
    models = inversion_models(run)
    embedding = inversion.invert(models, examples, word, args.init, cfg, seed=run.cfg.run.seed, log=print)
    path = inversion.save_token(run.out / "tokens" / f"{word[1:-1]}.pt", word, args.init, embedding, cfg.objective)
    print(f"[inversion] learned {word} (MTI_{cfg.objective}) from {len(examples)} motion(s) -> {path}\n"
          f"  use it: python train.py --stage sample --out {run.out} --text \"a person {word}\"")
    return {"word": word, "init": args.init, "objective": cfg.objective,
            "motions": [str(p) for p in args.motion], "token": str(path)}


# ----------------------------------------------------------------------------
# Before the recipe: the data, the offline text encoder, the evaluator


def stage_data(run: Run) -> dict:
    """Generate, convert (--from-bvh, --from-joints: retargeted to HumanML3D's skeleton) or validate
    the dataset, print its summary, build the offline text encoder (clip.py) from the captions alone."""
    a, c = run.args, run.cfg.data
    if a.from_bvh or a.from_joints:
        if run.synthetic:
            raise ValueError("--from-bvh / --from-joints DIR needs --data OUT: the folder to write the dataset to")
        common = dict(seed=run.cfg.run.seed, min_len=c.min_len, max_len=c.max_len, retarget=not a.keep_lengths)
        if a.from_bvh:  # joints by name (SMPL, Mixamo, Xsens/100STYLE, --joint-map); units and fps from the file
            ingest.build_from_bvh(a.from_bvh, run.data_root, joint_map=a.joint_map, up=a.up, **common)
        else:
            ingest.build_from_joints(a.from_joints, run.data_root, **common)
    root = dataset_root(run)
    print(f"[data] {root}\n" + data.format_summary(summary := data.dataset_summary(root)))
    usable = {split: len(open_split(run, split)) for split in ("train", "val", "test")}
    print(f"  usable after the length rules: {usable}")
    figures = {"summary": summary, "usable": usable}
    if not run.clip:  # paraphrase groups: the captions of one motion
        groups = {split: [captions for _, _, captions in open_split(run, split).items] for split in ("train", "test")}
        encoder = TextEncoder.offline(groups["train"], run.out / "text_encoder", seed=run.cfg.run.seed,
                                      config=run.cfg.text)
        figures["bpe_vocab_size"] = len(encoder.tokenizer)
        print(f"  offline text encoder in {run.out / 'text_encoder'}: {len(encoder.tokenizer)} BPE tokens")
        if groups["test"]:  # (a dataset of your own may have no test clips)
            figures["text_paraphrase"] = r = clip.offline_report(encoder, groups["test"], run.cfg.run.seed,
                                                                 run.cfg.text)
            print(f"  test paraphrase retrieval top-1: {r['before']['top1']:.3f} (random) -> {r['after']['top1']:.3f}")
    return figures


def stage_evaluator(run: Run) -> dict:
    """Two Guo et al. evaluators trained here, seeded apart: `evaluator` scores every method;
    `alignment` trains ATM and MATE, so no method is scored by what it was trained against."""
    train, test = open_split(run, "train"), open_split(run, "test")
    sched, figures = run.cfg.evaluator_train, {}
    for offset, name in enumerate(("evaluator", "alignment")):
        seed = run.cfg.run.seed + 1000 * (offset + 1)
        torch.manual_seed(seed)
        model = T2MEvaluator.trained(run.cfg.evaluator, train.mean.shape[0], train.tags).to(run.device)
        loss_fn = metrics.embedder_loss_fn(model, run.cfg.evaluator.temperature, run.device)
        losses = fit(run, name, model, run.cfg.evaluator, loss_fn, batches(train, sched.batch_size, seed), sched,
                     model.meta())
        real = evaluation.evaluate(None, test, model, model.tokenizer, replications=1, seed=seed,
                                   diversity_times=run.cfg.eval.diversity_times)
        figures[name] = {"final_losses": losses, "test_real": {k: round(v[0], 4) for k, v in real.items()}}
        print(f"[{name}] real test motions: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in real.items()))
    figures.update(vocabulary=len(model.vectorizer.words),
                   test_tag_agreement=round(model.lexicon.agreement(test.tags), 4))
    print(f"[evaluator] {len(model.vectorizer.words)} learned word vectors; the lexicon reads "
          f"{100 * figures['test_tag_agreement']:.1f}% of the test captions' word/POS tags alike")
    return figures


# ----------------------------------------------------------------------------
# The companion papers: ATM, MATE, LaMP, MotionLCM; and MLD's released weights


ATM_VARIANTS = {  # checkpoint -> ATM config overrides: the method, its equal-budget control, Tab. 3
    "diffusion_atm": {}, "diffusion_mse": {"lambda_inter": 0.0, "lambda_intra": 0.0}}
ATM_ABLATIONS = {"diffusion_atm_inter": {"lambda_intra": 0.0}, "diffusion_atm_intra": {"lambda_inter": 0.0}}


def stage_atm(run: Run) -> dict:
    """ATM: fine-tune diffusion.pt with L_mse + lambda (L_inter + L_intra) (ATM Eq. 8), the motions
    embedded by the frozen `alignment` embedder (never the evaluator) -> diffusion_atm.pt; beside it
    the equal-budget control (L_mse alone, diffusion_mse.pt) and --ablations' ATM Tab. 3 rows."""
    train = open_split(run, "train")
    text, motion_vae = text_encoder(run), load_model(run, "vae")
    embedder = load_model(run, "alignment")
    sched, seed = run.cfg.atm_train, run.cfg.run.seed
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


MATE_ABLATIONS = {  # MATE Tab. 3 ("Loss Removed"): word-table checkpoint -> (row, MATE config overrides)
    "mate_no_self": ("L_self removed", {"lambda_self": 0.0}),
    "mate_no_cross": ("L_cross removed", {"lambda_cross": 0.0}),
    "mate_no_align": ("L_align removed", {"lambda_align": 0.0}),
    "mate_no_sent": ("L_sent removed", {"lambda_sent": 0.0}),
    "mate_no_rec": ("L_rec removed", {"lambda_rec": 0.0})}


def stage_mate(run: Run) -> dict:
    """MATE: segment the training motions against their captions' sub-texts (Eq. 1); train the word
    table with L_all (Eq. 8); retrain the denoiser and projector on it (Sec. 4.1); the word probe."""
    train, cfg, seed = open_split(run, "train"), run.cfg.mate, run.cfg.run.seed
    if run.args.text_encoder != "clip":
        raise ValueError("--stage mate retrains CLIP's word embeddings: run it without --text-encoder lamp")
    alignment = load_model(run, "alignment")
    clip_text_encoder(run)  # the prerequisite check and its message
    # 1. Eq. (1) once for every (motion, caption): the alignment embedder is frozen
    start, figures = time.time(), {}
    records = mate.prepare_records(train, alignment, cfg, run.device)
    figures["segmentation_s"] = round(time.time() - start, 2)
    if run.synthetic:  # the synthetic dataset knows its action boundaries
        figures["segmentation"] = report = mate.segmentation_report(records, synthetic.load_segments(run.data_root))
        rows, note = mate.segmentation_rows(report)
        evaluation.write_results(run.out, "mate_segmentation", rows, "MATE text-motion joint segmentation "
                                 "(Tab. 7 analogue)", note)
    # 2. the word table and MATE's heads, L_all (Eq. 8), on a text encoder of the stage's own
    figures["final_losses"] = train_word_table(run, "mate", records, cfg)
    # 3. the diffusion model and the projector, retrained from scratch on the MATE encoder
    #    (the same configs and schedules as diffusion.pt and projector.pt: a fair comparison)
    text_mate = clip_text_encoder(run, mate=True)
    latents = training_latents(run)
    figures["diffusion_mate"] = train_denoiser(run, "diffusion_mate", text_mate, latents)
    figures["projector_mate"] = train_projector(run, "projector_mate", text_mate, latents)
    # 4. the word-level probe, before and after MATE
    test, evaluator = open_split(run, "test"), load_model(run, "evaluator")
    length = mate.probe_length(test, run.cfg.data.unit)
    rows = mate.word_probe(pipeline(run), pipeline(run, "diffusion_mate", mate=True), evaluator, test, cfg, length,
                           seed)
    evaluation.write_results(run.out, "mate_probe", rows, "MATE word-level probe (Sec. 4.4 analogue)",
                             mate.probe_note(length))
    figures["probe"] = as_lists(rows)
    # 5. Tab. 3: each loss removed in turn, the word table and the denoiser retrained without it
    if run.args.ablations:
        pipes, ablations = {}, figures.setdefault("ablations", {})
        for name, (row, overrides) in MATE_ABLATIONS.items():
            ablations[name] = train_word_table(run, name, records, dataclasses.replace(cfg, **overrides))
            ablations[f"diffusion_{name}"] = train_denoiser(run, f"diffusion_{name}", clip_text_encoder(run, mate=name),
                                                            latents)
            pipes[row] = pipeline(run, f"diffusion_{name}", mate=name)
        pipes["Full Model"] = pipeline(run, "diffusion_mate", mate=True)
        rows, note = mate.ablation_probe(pipes, evaluator, test, cfg, length, seed)
        evaluation.write_results(run.out, "mate_ablation", rows, "MATE loss ablation (Tab. 3 analogue, word-level "
                                 "probe)", note)
        ablations["probe"] = as_lists(rows)
    return figures


def train_word_table(run: Run, name: str, records: list, cfg: mate.MATEConfig) -> dict:
    """MATE's word table (bound into a text encoder of its own) and heads, trained with L_all -> NAME.pt."""
    bound = TextEncoder.from_pretrained(run.clip or run.out / "text_encoder").to(run.device)
    sched = run.cfg.mate_train
    model, loss_fn, stream, meta = mate.word_table_training(records, bound, open_split(run, "train").mean.shape[0],
                                                            cfg, sched.batch_size, run.cfg.run.seed, run.device)
    return fit(run, name, model, cfg, loss_fn, stream, sched, meta)


LAMP_ABLATIONS = {  # LaMP Tab. 5 (one objective added per row): checkpoint -> (row, LaMP config overrides)
    "lamp_mtc": ("LaMP with contrastive learning", {"lambda_mtm": 0.0, "lambda_mgt": 0.0, "lambda_tgm": 0.0}),
    "lamp_mtc_mtm": ("+ motion-text matching", {"lambda_mgt": 0.0, "lambda_tgm": 0.0}),
    "lamp_mtc_mtm_mgt": ("+ motion-grounded text generation", {"lambda_tgm": 0.0})}


def stage_lamp(run: Run) -> dict:
    """LaMP (Sec. 3.1): the motion VQ-VAE (3.1.1, vqvae.py), then LaMP over its frozen encoder with
    the four objectives (3.1.3); the Tab. 3 analogue on the test split beside the `evaluator`."""
    train, val, test = (open_split(run, split) for split in ("train", "val", "test"))
    tokenizer = clip_text_encoder(run).tokenizer   # the project's tokenizer (offline BPE or CLIP's)
    cfg, feat_dim, seed, device = run.cfg.lamp, train.mean.shape[0], run.cfg.run.seed, run.device
    # 1. the motion tokenizer
    torch.manual_seed(seed)
    vq = vqvae.MotionVQVAE(cfg, feat_dim).to(device)
    sched = run.cfg.lamp_vq_train
    vq_losses = fit(run, "lamp_vq", vq, cfg, vqvae.vq_loss_fn(vq, cfg, device), batches(train, sched.batch_size, seed),
                    sched, {"feat_dim": feat_dim})
    usage = vqvae.codebook_usage_on(vq.requires_grad_(False).eval(), val, device)
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
    tables = {name: lamp.retrieval_rows(lamp.LaMPEvaluator(vq, model), evaluator, test, tokenizer, device)
              for name, model in models.items()}
    rows = tables.pop("lamp")
    if run.args.ablations:
        rows = lamp.ablation_rows(rows, {row: tables[name] for name, (row, _) in LAMP_ABLATIONS.items()})
    note = lamp.retrieval_note(len(test), dataset_name(run), usage, cfg.vq_codes)
    evaluation.write_results(run.out, "lamp_retrieval", rows, "Text-motion retrieval (LaMP Tab. 3 analogue)",
                             note + (f" {lamp.ABLATION_NOTE}" if run.args.ablations else ""))
    print((run.out / "results.md").read_text())
    return {"vq_final_losses": vq_losses, "codebook_usage_val": usage, "final_losses": losses.pop("lamp"),
            **({"ablation_final_losses": losses} if losses else {}),
            "retrieval": {name: {k: v[0] for k, v in r.items()} for name, r in rows.items()}}


# checkpoint -> (row, config overrides) of LaMP Tab. 6; the section `lamp_t2m` is LaMP-T2M itself
T2M_ROWS = {"lamp_t2m_clip": ("MoMask-style (CLIP)", {"condition": "clip", "causal": False}),
            "lamp_t2m": ("LaMP-T2M", {})}
T2M_ABLATIONS = {"lamp_t2m_text": ("+ LaMP text (bidirectional)", {"condition": "lamp_text", "causal": False}),
                 "lamp_t2m_queries": ("+ query tokens (bidirectional)", {"causal": False})}


def stage_lamp_t2m(run: Run) -> dict:
    """LaMP-T2M (Sec. 3.2, masked_generator.py): a masked transformer over lamp_vq.pt's codes with
    LaMP's text condition, beside MoMask's CLIP-conditioned baseline on the same batches and
    budget; --ablations: Tab. 6's middle rows."""
    train, vq, seed = open_split(run, "train"), load_model(run, "lamp_vq"), run.cfg.run.seed
    sched, draws, losses = run.cfg.lamp_t2m_train, train.fork(), {}
    for name, (_, overrides) in {**T2M_ROWS, **(T2M_ABLATIONS if run.args.ablations else {})}.items():
        cfg = dataclasses.replace(run.cfg.lamp_t2m, **overrides)
        text = t2m_text(run, cfg.condition)
        meta = {"n_codes": vq.cfg.vq_codes, "cond_dim": text.dim, "max_tokens": run.cfg.data.max_len // vq.down}
        torch.manual_seed(seed)
        model = masked_generator.MaskedTransformer(cfg, **meta).to(run.device)
        losses[name] = fit(run, name, model, cfg, masked_generator.loss_fn(model, vq, text, run.device),
                           batches(draws.fork(), sched.batch_size, seed + 2), sched, meta)
    return {"final_losses": losses}


def stage_lamp_m2t(run: Run) -> dict:
    """LaMP-M2T (Sec. 3.4, captioner.py): the language model (--llm DIR, else a small OPT trained
    here on the captions), then the captioner over LaMP's queries; the Tab. 4 analogue."""
    train, test, cfg, seed = open_split(run, "train"), open_split(run, "test"), run.cfg.lamp_m2t, run.cfg.run.seed
    lm, text = captioning_lm(run, cfg)
    lamp_model, vq, sched = load_model(run, "lamp"), load_model(run, "lamp_vq"), run.cfg.lamp_m2t_train
    torch.manual_seed(seed)
    model = captioner.Captioner(lamp_model, vq, lm, text, cfg).to(run.device)
    losses = fit(run, "lamp_m2t", model, cfg, captioner.loss_fn(model, run.device),
                 batches(train, sched.batch_size, seed + 3), sched, {"llm": run.args.llm and str(run.args.llm)})
    bert = captioner.lamp_bert_scorer(lamp_model, clip_text_encoder(run).tokenizer)
    rows, examples = captioner.tab4(model.eval(), lamp.LaMPEvaluator(vq, lamp_model), bert,
                                    load_model(run, "evaluator"), train, test, seed, run.device)
    evaluation.write_results(run.out, "lamp_m2t", rows, "Motion captioning (LaMP Tab. 4 analogue)",
                             captioner.tab4_note(test, dataset_name(run), run.args.llm))
    print("\n".join(f"[lamp_m2t] {name}: {caption!r}, references {refs}" for name, caption, refs in examples))
    return {"final_losses": losses, "rows": as_lists(rows), "examples": examples}


def stage_caption(run: Run) -> dict:
    """--motion FILE [...]: LaMP-M2T's caption of each motion (.bvh; .npy features or joints as
    `sample` writes them; a sample folder: its *_features.npy) -> captions.json."""
    if not run.args.motion:
        raise ValueError("--stage caption needs --motion FILE: a .bvh, .npy features or joints, or a sample folder")
    stats, model, lo, hi = open_split(run, "train"), load_captioner(run), run.cfg.data.min_len, run.cfg.data.max_len
    files = [f for path in run.args.motion for f in (sorted(path.glob("*_features.npy")) if path.is_dir() else [path])]
    captions = {}
    for f in files:  # at most data.max_len frames: LaMP's queries cover that many
        motion = inversion.load_example_motion(f, stats.mean, stats.std, stats.skeleton, lo, run.args.joint_map,
                                               run.args.up)[:hi].to(run.device)
        captions[str(f)] = captioner.caption(model, motion[None], torch.tensor([len(motion)], device=run.device))[0]
        print(f"[caption] {f}: {captions[str(f)]}")
    return {"captions": captions}


def stage_lcm(run: Run) -> dict:
    """MotionLCM (lcm.py): distil a latent consistency model from diffusion.pt (the teacher, frozen);
    the student starts as the teacher, its EMA is the target; lcm.pt holds both."""
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


def stage_import(run: Run) -> dict:
    """MLD's released checkpoint (--mld FILE) -> vae.pt and diffusion.pt: LEAD on MLD's weights."""
    return import_mld(run)


# ----------------------------------------------------------------------------
# The command line


STAGES = {"data": stage_data, "evaluator": stage_evaluator, "vae": stage_vae, "diffusion": stage_diffusion,
          "projector": stage_projector, "eval": stage_eval, "sample": stage_sample, "inversion": stage_inversion,
          "atm": stage_atm, "mate": stage_mate, "lamp": stage_lamp, "lamp_t2m": stage_lamp_t2m,
          "lamp_m2t": stage_lamp_m2t, "caption": stage_caption, "lcm": stage_lcm, "import": stage_import}
# `--stage all`: eval comes after every stage that adds a row to its table
ALL_ORDER = ["data", "evaluator", "lamp", "lamp_t2m", "lamp_m2t", "vae", "diffusion", "projector", "atm", "mate",
             "lcm", "eval", "sample", "inversion"]
DISTRIBUTED_STAGES = ("evaluator", "vae", "diffusion", "projector", "atm", "lcm")  # the others: one process


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv, __doc__.split("\n\n")[0])
    stages = ALL_ORDER if args.stage == "all" else [args.stage]
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # torchrun
    try:
        cfg, device = build_config(args.preset, args.sets), pick_device(args.device)
        if cfg.run.precision == "fp16" and device.type != "cuda":
            raise ValueError(f"run.precision=fp16 needs CUDA (its GradScaler); on {device.type} use bf16")
        cli.check(args)
        if "lamp_m2t" in stages and not args.llm:  # before any work: the offline LM must fit
            captioner.check_offline_lm_fits(cfg.lamp_m2t, device)
        if distributed:
            loop.check_distributed(stages, DISTRIBUTED_STAGES)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    if distributed:
        device = loop.start_distributed(device)
    n = cfg.data.synthetic_motions  # the tiny and paper presets share data/synthetic; smoke has its own
    synthetic_dir = args.synthetic_dir or Path(f"data/synthetic{'' if n == DataConfig.synthetic_motions else f'_{n}'}")
    run = Run(cfg=cfg, out=args.out, data_root=args.data or synthetic_dir, synthetic=args.data is None, device=device,
              clip=args.clip, resume=args.resume, args=args)
    try:
        with writing(run, stages):  # writable, and locked against a second writer
            for stage in stages:
                if args.stage == "all" and args.resume and record_path(run, stage).exists():
                    print(f"[{stage}] already finished in {run.out}, skipped (--resume)")
                    continue
                run_stage(run, stage, STAGES[stage])
    except (ValueError, OSError, loop.NonFiniteLoss) as err:  # FileNotFoundError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, loop.NonFiniteLoss) else 2
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
