"""train.py's command line: every option, with what it does and the stages that read it.

It imports nothing heavy, so `python train.py --help` (or a mistyped option) answers before torch
loads; tests/test_train.py checks STAGES and PRESETS against train.STAGES and config.PRESETS.
"""
import argparse
from pathlib import Path

STAGES = ("data", "evaluator", "lamp", "lamp_t2m", "lamp_m2t", "vae", "diffusion", "projector", "atm", "mate",
          "lcm", "eval", "sample", "inversion", "import", "caption")
PRESETS = ("paper", "smoke", "tiny")


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--stage", required=True, choices=[*STAGES, "all"])
    add("--preset", default="tiny", choices=PRESETS, help="tiny: CPU-sized models (default); smoke: every "
        "stage in minutes, motions not meant to be good; paper: the papers' sizes, one GPU")
    add("--out", type=Path, default=Path("runs/default"), help="run folder")
    add("--data", type=Path, help="a HumanML3D- or KIT-ML-layout folder; default: the embedded synthetic dataset")
    add("--synthetic-dir", type=Path, help="where the embedded dataset is generated (default: data/synthetic, "
        "data/synthetic_N for another data.synthetic_motions=N)")
    add("--clip", help="real CLIP weights: a local folder or an already-downloaded name (e.g. "
        "openai/clip-vit-large-patch14); default: a small offline text encoder")
    add("--llm", type=Path, help="lamp_m2t: a local OPT folder (save_pretrained layout, e.g. opt-2.7b) for the "
        "captioner; default: a small OPT trained here on the captions")
    add("--bert", help="lamp: initialise LaMP from a local BERT folder (the paper: BERT-base); default: random")
    add("--text-encoder", default="clip", choices=["clip", "lamp"], help="diffusion/projector/eval/sample: condition "
        "on CLIP or on LaMP text features (LaMP Sec. 3.2), saved as diffusion_lamp.pt, projector_lamp.pt")
    add("--evaluator", default="evaluator", choices=["evaluator", "lamp", "t2m"], help="eval: the embedder of the "
        "metrics; lamp: LaMP Tab. 2; t2m: Guo et al.'s released evaluator (--t2m-dir, --glove-dir)")
    add("--t2m-dir", type=Path, help="eval --evaluator t2m: MLD's deps/t2m (t2m/text_mot_match, t2m/Comp_v6_KLD01)")
    add("--glove-dir", type=Path, help="eval --evaluator t2m: MLD's deps/glove (our_vab_data.npy, ...)")
    add("--mld", type=Path, help="import: MLD's released checkpoint (a Lightning .ckpt) -> vae.pt and diffusion.pt")
    add("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    add("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint; with "
        "--stage all, skip the stages already finished")
    add("--ablations", action="store_true", help="projector/eval: LEAD Tab. 6; atm, mate: Tab. 3; lamp: Tab. 5")
    add("--text", action="append", default=[], help="sample: a prompt (repeatable; default: a few built-in ones)")
    add("--length", type=int, default=120, help="sample: motion length in frames")
    add("--num", type=int, default=1, help="sample: motions per prompt")
    add("--prompts", type=Path, help="sample: a file of prompts, one a line: caption[#FRAMES or #SECONDSs]")
    add("--no-realign", action="store_true", help="sample: skip the projector (MLD from the same checkpoints)")
    add("--generator", default="diffusion", choices=["diffusion", "lamp_t2m"], help="sample: LEAD's pipeline (MLD "
        "with --no-realign), or LaMP-T2M (--stage lamp_t2m)")
    add("--sampler", default="ddim", choices=["ddim", "lcm"], help="sample: guided DDIM, or MotionLCM's 1-4 steps")
    add("--steps", type=int, help="sample: MotionLCM's steps (default: lcm.sample_steps)")
    add("--bvh", action="store_true", help="sample/inversion: also write each motion as NAME.bvh")
    add("--from-bvh", type=Path, metavar="DIR", help="data: turn DIR of NAME.bvh motion capture and NAME.txt "
        "captions into the HumanML3D layout at --data (joints by name: SMPL, Mixamo, Xsens/100STYLE; --joint-map)")
    add("--from-joints", type=Path, metavar="DIR", help="data: as --from-bvh, from NAME.npy joints (T, 22, 3) in m")
    add("--joint-map", type=Path, help="BVH: a JSON {t2m joint: the file's joint} where no built-in map fits")
    add("--up", default="y", choices=["y", "z"], help="BVH: the files' up axis")
    add("--keep-lengths", action="store_true", help="--from-bvh/-joints: keep the clips' bones (no retargeting)")
    add("--motion", type=Path, action="append", default=[], help="inversion: an example motion to learn a new "
        "word from; caption: a motion to describe (repeatable): a .bvh, or .npy (T, 263) features as `sample` "
        "writes them or (T, 22, 3) joints (caption: also a sample folder)")
    add("--word", help="inversion: NAME of the learned word (prompts say <NAME>)")
    add("--init", help="inversion: a coarse one-word descriptor to start from (e.g. walk)")
    add("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable)")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> None:
    """What argparse's types cannot say: a ValueError naming the option."""
    if args.num < 1:
        raise ValueError(f"--num {args.num}: motions per prompt must be >= 1")
    if any(not text.strip() for text in args.text):
        raise ValueError("--text '': an empty prompt would sample unconditionally (MLD's null "
                         "condition is the empty string); give a caption")
