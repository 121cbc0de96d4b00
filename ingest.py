"""Your own inputs: prompt files for generation (`read_prompts`, with the output names
`prompt_slug`), and your own motion data, a folder of joint-position clips (`build_from_joints`)
or of BVH files (`build_from_bvh`, read by bvh.read_bvh) with captions, written in the HumanML3D
layout that the rest of the project reads.

The conversion is HumanML3D's processing from its joints on (`motion_representation.ipynb`,
`cal_mean_variance`): each clip retargeted onto HumanML3D's skeleton (bvh.retarget, its
`uniform_skeleton`), features by data.joints_to_features, the joints recovered from them, Mean
and group-averaged Std over every frame, and a seeded train/val/test split; data.py holds those
pieces and synthetic.py writes through the same ones. `python train.py --stage data --from-joints
DIR --data OUT` calls `build_from_joints`.

Differences from HumanML3D's processing:
- No mirrored copies (HumanML3D's M-prefixed clips) are added; `retarget=False` keeps each clip's
  own bone lengths (HumanML3D always retargets).
- Clips at another frame rate are resampled linearly to 20 fps.
- The part-of-speech field of each caption line is `word/X` unless a tagger is passed (the reader
  ignores it; only the synthetic dataset's held-out styles read their verbs).
"""
import json
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np

import bvh
from data import (T2M, FeatureStats, fits_length, joints_to_features, load_array, read_lines, save_features,
                  write_splits)


# ----------------------------------------------------------------------------
# Prompt files for generation

# after the last '#': whole frames ("70") or seconds ("3.5s", "3.5 s")
_LENGTH = re.compile(r"(?P<frames>\d+)|(?P<seconds>\d+(?:\.\d*)?|\.\d+)\s*s")


def read_prompts(path, fps: float, min_len: int, max_len: int,
                 default_length: int) -> list[tuple[str, int]]:
    """A prompt file -> [(caption, frames)]. One prompt a line: `caption#FRAMES`, `caption#SECONDSs`
    (frames = round(seconds * fps)) or a bare caption (`default_length` frames); blank lines and
    lines starting with '#' are skipped. An empty caption (a '#' line that is only a length, as
    `#70`, since that is a forgotten caption rather than a comment), an unreadable length or one
    outside min_len..max_len frames raises ValueError naming `path:line`."""
    path = Path(path)
    prompts = []
    for number, line in enumerate(read_lines(path, "prompt file"), start=1):
        line, where = line.strip(), f"{path}:{number}"
        if line.startswith("#") and _LENGTH.fullmatch(line[1:].strip()):
            raise ValueError(f"{where}: empty caption before the length {line!r}")
        if not line or line.startswith("#"):
            continue
        caption, frames = line, default_length
        if "#" in line:
            caption, _, length = line.rpartition("#")
            match = _LENGTH.fullmatch(length.strip())
            if match is None:
                raise ValueError(f"{where}: expected a length after the last '#', whole frames "
                                 f"(70) or seconds (3.5s), got {length!r}")
            frames = (int(match["frames"]) if match["frames"] is not None
                      else round(float(match["seconds"]) * fps))
        caption = caption.strip()  # not empty: the line does not start with '#'
        if not min_len <= frames <= max_len:
            raise ValueError(f"{where}: {frames} frames ({frames / fps:g} s at {fps:g} fps) is "
                             f"outside {min_len}..{max_len} frames")
        prompts.append((caption, frames))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompt_slug(index: int, caption: str, limit: int = 60) -> str:
    """A file name for the index-th output: `03_a_person_walks_forward`, only [a-z0-9_], at most
    `limit` characters, unique because the index (then '_' or the end) starts it."""
    plain = unicodedata.normalize("NFKD", caption).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", "_", plain).strip("_")  # "café, left!" -> "cafe_left"
    return f"{index:02d}_{words}"[:limit].rstrip("_") if words else f"{index:02d}"


# ----------------------------------------------------------------------------
# Your own joint clips or BVH files into the HumanML3D layout


def _plain_tags(words: list[str]) -> list[str]:
    """The default tagger: every word is its own lemma with UPOS tag X ("other"). The reader
    ignores the tags; only the synthetic dataset's held-out styles use them (inversion.py)."""
    return [f"{word}/X" for word in words]


def _source_captions(path: Path, duration: float) -> list[tuple[str, float, float]]:
    """A source NAME.txt: `caption` or `caption#start#end` (seconds) a line -> [(caption, start, end)]."""
    if not path.exists():
        raise ValueError(f"no caption file {path.name}")
    captions = []
    for number, line in enumerate(read_lines(path, "caption file"), start=1):
        if not line.strip():
            continue
        parts, where = [part.strip() for part in line.split("#")], f"{path.name}:{number}"
        if len(parts) not in (1, 3) or not parts[0]:
            raise ValueError(f"{where}: expected 'caption' or 'caption#start#end', got {line!r}")
        start, end = 0.0, 0.0
        if len(parts) == 3:
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError:
                raise ValueError(f"{where}: start and end are seconds, got {line!r}") from None
            if (start, end) != (0.0, 0.0) and not 0.0 <= start < end <= duration + 1e-6:
                raise ValueError(f"{where}: span {start:g}..{end:g} s is not within the clip's "
                                 f"0..{duration:.2f} s")
        captions.append((parts[0], start, end))
    if not captions:
        raise ValueError(f"{path.name}: no captions")
    return captions


def _npy_joints(src: Path, name: str, fps: float) -> np.ndarray:
    """NAME.npy, checked -> joints (T, 22, 3) at 20 fps; ValueError(why)."""
    if not (src / f"{name}.npy").exists():
        raise ValueError(f"no motion file {name}.npy")
    joints = load_array(src / f"{name}.npy", "joint positions")  # unreadable, foreign, not numbers
    if joints.ndim != 3 or joints.shape[1:] != (T2M.n_joints, 3):
        raise ValueError(f"{name}.npy: expected numbers of shape (T, 22, 3), "
                         f"got {joints.dtype} {joints.shape}")
    if not np.isfinite(joints).all():
        raise ValueError(f"{name}.npy contains NaN or inf")
    return bvh.resample(joints.astype(np.float64), fps, T2M.fps)


def _bvh_joints(src: Path, name: str, joint_map, up: str) -> np.ndarray:
    """NAME.bvh -> joints (T, 22, 3) at 20 fps (bvh.read_bvh); ValueError(why)."""
    if not (src / f"{name}.bvh").exists():
        raise ValueError(f"no motion file {name}.bvh")
    return bvh.read_bvh(src / f"{name}.bvh", joint_map=joint_map, up=up, fps=T2M.fps)


def _source_clip(src: Path, name: str, joints: np.ndarray, retarget: bool, min_len: int, max_len: int):
    """One clip's joints at 20 fps and its captions, checked -> (features (T-1, 263), captions)."""
    if len(joints) - 1 < min_len:
        raise ValueError(f"too short: {len(joints)} frames at {T2M.fps:g} fps give "
                         f"{len(joints) - 1} feature rows, fewer than {min_len}")
    if retarget:
        joints = bvh.retarget(joints)  # (T, 22, 3) on HumanML3D's skeleton
    features = joints_to_features(joints)
    if not np.isfinite(features).all():
        raise ValueError("a degenerate pose: hips and shoulders give no facing direction")
    captions = _source_captions(src / f"{name}.txt", len(features) / T2M.fps)
    rows = [len(features[int(s * T2M.fps):int(e * T2M.fps)]) if e else len(features)
            for _, s, e in captions]  # feature rows of each item, as the reader slices them
    if not any(fits_length(n, min_len, max_len) for n in rows):
        raise ValueError(f"no caption covers {min_len}..{max_len} feature rows (after cropping "
                         f"to a multiple of 4), so the reader would skip them all")
    return features, captions


def build_from_joints(src_dir, out_dir, tag=None, seed: int = 0, fps: float = 20, min_len: int = 40,
                      max_len: int = 196, split: tuple[float, float, float] = (0.8, 0.05, 0.15),
                      retarget: bool = True, log=print) -> dict:
    """Turn a folder of one's own clips into the HumanML3D layout MotionTextDataset reads.

    Source: NAME.npy, joints (T, 22, 3) of the t2m skeleton in metres, y up, at `fps` frames per
    second (resampled to 20); NAME.txt, one caption a line, optionally `caption#start#end` in
    seconds. Each clip is retargeted onto HumanML3D's skeleton (bvh.retarget) unless `retarget`
    is False (its bone lengths kept). Written: new_joint_vecs/, new_joints/, texts/
    (`caption#word/POS ...#start#end`, the tags from `tag(words) -> ["lemma/POS", ...]`, default
    every word `word/X`), Mean.npy, Std.npy, train/val/test.txt (shuffled by `seed` into `split`
    shares) and source.json (this summary). A bad clip (unreadable, wrong shape, NaN, too short,
    caption file missing or with a bad line, no caption within the length rules) is reported by
    name and skipped, never fixed. Written to OUT.partial, renamed at the end; OUT must be empty,
    absent or an earlier build (it has source.json). -> {"source", "format": "npy", "fps",
    "retarget", "kept", "skipped": {name: why}, "feature_rows", "splits": {split: count}}.
    Unlike HumanML3D's processing, no mirrored copies (its M-prefixed clips) are added."""
    if not fps > 0:
        raise ValueError(f"fps: must be positive, got {fps}")
    return _build(src_dir, out_dir, ".npy", lambda src, name: _npy_joints(src, name, fps),
                  {"format": "npy", "fps": fps, "retarget": retarget},
                  tag, seed, min_len, max_len, split, log)


def build_from_bvh(src_dir, out_dir, joint_map=None, up: str = "y", retarget: bool = True, tag=None,
                   seed: int = 0, min_len: int = 40, max_len: int = 196,
                   split: tuple[float, float, float] = (0.8, 0.05, 0.15), log=print) -> dict:
    """As build_from_joints, from NAME.bvh + NAME.txt: each file read by bvh.read_bvh (joints by
    name or `joint_map`, `up` axis, units and frame rate from the file), then the same path. A file
    that bvh.read_bvh refuses (malformed, unmatched joints) is skipped with its reason.
    -> the summary, with "format": "bvh", "up", "joint_map" and "retarget"."""
    if up not in ("y", "z"):
        raise ValueError(f"up: 'y' or 'z', got {up!r}")
    recorded = str(joint_map) if isinstance(joint_map, (str, Path)) else joint_map
    return _build(src_dir, out_dir, ".bvh", lambda src, name: _bvh_joints(src, name, joint_map, up),
                  {"format": "bvh", "up": up, "joint_map": recorded, "retarget": retarget},
                  tag, seed, min_len, max_len, split, log)


def _build(src_dir, out_dir, suffix: str, load, settings: dict, tag, seed: int, min_len: int, max_len: int,
           split: tuple[float, float, float], log) -> dict:
    """The shared body of build_from_joints / build_from_bvh: `load(src, name)` -> joints (T, 22, 3)
    at 20 fps for every NAME.suffix or NAME.txt, then features, captions, statistics, splits."""
    src, out, tag = Path(src_dir), Path(out_dir), tag or _plain_tags
    if not src.is_dir():
        raise ValueError(f"{src}: source folder is missing")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split: three shares (train, val, test) summing to 1, got {split}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "source.json").exists())):
        raise ValueError(f"{out}: not empty and not a dataset built from joints (no source.json); "
                         f"choose an empty folder")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for sub in ("new_joint_vecs", "new_joints", "texts"):
        (partial / sub).mkdir(parents=True)

    # 1. Every clip named by a motion file or a .txt: checked, converted and written, or skipped.
    names = sorted({p.stem for p in src.glob(f"*{suffix}")} | {p.stem for p in src.glob("*.txt")})
    kept, skipped, stats = [], {}, FeatureStats()
    for name in names:
        try:
            joints = load(src, name)  # (T, 22, 3) at 20 fps
            features, captions = _source_clip(src, name, joints, settings["retarget"], min_len, max_len)
        except ValueError as err:
            skipped[name] = str(err)
            log(f"[data] skipped {name}: {err}")
            continue
        lines = []
        for caption, start, end in captions:
            words = re.findall(r"[\w']+", caption.lower())
            tags = tag(words)
            if len(tags) != len(words) or not all(re.fullmatch(r"[^\s#/]+/[^\s#/]+", t) for t in tags):
                raise ValueError(f"tag: expected one 'lemma/POS' per word of {words}, got {tags}")
            lines.append(f"{caption}#{' '.join(tags)}#{start}#{end}")
        (partial / "texts" / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        save_features(partial, name, features)
        stats.add(features)
        kept.append(name)
    if not kept:
        raise ValueError(f"{src}: no usable clips ({len(names)} names, every one skipped)")

    # 2. Statistics, splits and the summary; then the finished folder takes OUT's place.
    stats.save(partial)
    splits = write_splits(partial, kept, split, np.random.default_rng(seed))
    summary = {"source": str(src), **settings, "kept": len(kept), "skipped": skipped,
               "feature_rows": stats.rows, "splits": {k: len(v) for k, v in splits.items()}}
    (partial / "source.json").write_text(json.dumps(summary, indent=1))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log(f"[data] {out}: kept {len(kept)} of {len(names)} clips ({stats.rows} feature rows), "
        f"skipped {len(skipped)}; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return summary
