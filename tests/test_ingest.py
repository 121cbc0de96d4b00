"""Tests for ingest.py: prompt files (lengths in frames or seconds, bad lines named) and their
output names; a folder of one's own joint clips or BVH files and captions, some of them bad,
becomes a dataset in the HumanML3D layout that data.MotionTextDataset reads, retargeted onto
HumanML3D's skeleton unless asked not to."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import bvh
import data
import ingest
import synthetic


def motion(actions, seed=0):
    joints, names, params, bounds = synthetic.synthesize_motion(np.random.default_rng(seed), actions=actions)
    return joints

# ----------------------------------------------------------------------------
# Prompt files


def test_read_prompts_lengths_in_frames_seconds_or_default(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment line\n"
                    "a person walks forward#60\n"
                    "\n"
                    "a person jumps#3.5s\n"           # round(3.5 * 20) = 70
                    "  someone waves # 2.26 s  \n"    # round(45.2) = 45
                    "a person claps\n"                # the default length
                    "a person kicks#.5s\n", encoding="utf-8")  # round(10.0) = 10
    assert ingest.read_prompts(path, fps=20, min_len=10, max_len=196, default_length=120) == [
        ("a person walks forward", 60), ("a person jumps", 70), ("someone waves", 45),
        ("a person claps", 120), ("a person kicks", 10)]


@pytest.mark.parametrize("line, message", [
    ("a person walks#30", "prompts.txt:2: 30 frames (1.5 s at 20 fps) is outside 40..196"),
    ("a person walks#10s", "prompts.txt:2: 200 frames"),
    ("#70", "prompts.txt:2: empty caption before the length '#70'"),  # not a comment
    ("  # 3.5 s", "prompts.txt:2: empty caption"),
    ("a person walks#3.5", "prompts.txt:2: expected a length after the last '#'"),
    ("a person walks#fast", "prompts.txt:2: expected a length"),
    ("a person walks#", "prompts.txt:2: expected a length"),
])
def test_read_prompts_refuses_bad_lines(tmp_path, line, message):
    path = tmp_path / "prompts.txt"
    path.write_text(f"a person jumps\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        ingest.read_prompts(path, 20, 40, 196, 60)


def test_read_prompts_refuses_bad_files(tmp_path):
    with pytest.raises(ValueError, match="prompt file is missing"):
        ingest.read_prompts(tmp_path / "absent.txt", 20, 40, 196, 60)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("une personne saute à droite\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text"):
        ingest.read_prompts(latin1, 20, 40, 196, 60)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="empty.txt: no prompts"):
        ingest.read_prompts(empty, 20, 40, 196, 60)


def test_prompt_slug():
    assert ingest.prompt_slug(3, "A person walks forward.") == "03_a_person_walks_forward"
    assert ingest.prompt_slug(12, "Café: the man's  kick!") == "12_cafe_the_man_s_kick"
    assert ingest.prompt_slug(0, "?!") == "00"
    long = ingest.prompt_slug(7, "a person " * 20)
    assert len(long) <= 60 and long.startswith("07_a_person_") and not long.endswith("_")
    same = [ingest.prompt_slug(i, "a person walks") for i in (1, 10, 100)]
    assert len(set(same)) == 3
    assert all(re.fullmatch(r"[a-z0-9_]+", s) for s in same + [long])


# ----------------------------------------------------------------------------
# build_from_joints: one's own clips into the layout


def write_source(src: Path) -> None:
    """Four good clips (20 fps, y up, metres) and one bad clip of each kind."""
    src.mkdir()
    good = {"walk": [("walk", {})], "jog": [("jog", {})], "jump": [("jump", {}), ("wave", {})],
            "squat": [("squat", {}), ("walk", {})]}
    for k, (name, actions) in enumerate(good.items()):
        np.save(src / f"{name}.npy", motion(actions, seed=10 + k))
    (src / "walk.txt").write_text("a person walks forward\nsomeone walks#0.5#2.5\n")
    (src / "jog.txt").write_text("a person jogs.\n\n")
    (src / "jump.txt").write_text("a person jumps then waves#0.0#0.0\n")
    (src / "squat.txt").write_text("a person squats then walks\n")
    clip = motion([("walk", {})], seed=20)
    nan = clip.copy()
    nan[5, 3, 1] = np.nan
    np.save(src / "nan.npy", nan)
    np.save(src / "joints21.npy", clip[:, :21])
    np.save(src / "short.npy", clip[:30])
    np.save(src / "uncaptioned.npy", clip)
    for name in ("bad_line", "bad_span"):
        np.save(src / f"{name}.npy", clip)
    for name in ("nan", "joints21", "short"):
        (src / f"{name}.txt").write_text("a person walks\n")
    (src / "bad_line.txt").write_text("a person walks\na person#1.0\n")
    (src / "bad_span.txt").write_text(f"a person walks#1.0#{len(clip) / 20 + 1}\n")
    (src / "orphan.txt").write_text("a caption without motion\n")


SKIPPED = {"nan": "nan.npy contains NaN", "joints21": "expected numbers of shape (T, 22, 3)",
           "short": "too short: 30 frames", "uncaptioned": "no caption file uncaptioned.txt",
           "bad_line": "bad_line.txt:2: expected 'caption' or 'caption#start#end'",
           "bad_span": "bad_span.txt:1: span 1..", "orphan": "no motion file orphan.npy"}


def test_build_from_joints_writes_a_readable_dataset(tmp_path):
    src, out = tmp_path / "mine", tmp_path / "dataset"
    write_source(src)
    logged = []
    summary = ingest.build_from_joints(src, out, seed=1, log=logged.append)
    assert summary["kept"] == 4 and set(summary["skipped"]) == set(SKIPPED)
    for name, why in SKIPPED.items():
        assert why in summary["skipped"][name], (name, summary["skipped"][name])
        assert any(line.startswith(f"[data] skipped {name}: ") for line in logged)
    assert "kept 4 of 11 clips" in logged[-1]
    assert not (tmp_path / "dataset.partial").exists()
    # the layout: features of the retargeted joints, recovered joints on HumanML3D's bones, tagged captions
    joints = np.load(src / "walk.npy")
    rows = np.load(out / "new_joint_vecs" / "walk.npy")
    assert np.array_equal(rows, data.joints_to_features(bvh.retarget(joints)))
    recovered = np.load(out / "new_joints" / "walk.npy")
    assert recovered.shape == (len(joints) - 1, 22, 3)
    parents = data.T2M.parents()
    lengths = np.linalg.norm(recovered[:, 1:] - recovered[:, parents[1:]], axis=-1)  # (T-1, 21)
    assert np.abs(lengths - bvh.REFERENCE_BONE_LENGTHS).max() < 1e-5  # (float32 features)
    assert (out / "texts" / "walk.txt").read_text().splitlines() == [
        "a person walks forward#a/X person/X walks/X forward/X#0.0#0.0",
        "someone walks#someone/X walks/X#0.5#2.5"]
    members = [(out / f"{s}.txt").read_text().split() for s in ("train", "val", "test")]
    assert sorted(sum(members, [])) == ["jog", "jump", "squat", "walk"]
    assert summary["splits"] == {"train": 3, "val": 1, "test": 0}
    # Mean/Std over every frame of the kept clips; the reader opens every split
    kept = ("jog", "jump", "squat", "walk")
    features = np.concatenate([np.load(out / "new_joint_vecs" / f"{n}.npy") for n in kept])
    assert np.allclose(np.load(out / "Mean.npy"), features.mean(0), atol=1e-5)
    # (each clip's rows are summed in float32 before the float64 running sum: ~1e-4 relative error
    # where a group's mean is large against its spread, as the root height's)
    assert np.allclose(np.load(out / "Std.npy"), data.group_std(features.astype(np.float64).std(0)), rtol=1e-3)
    splits = [data.MotionTextDataset(out, split) for split in ("train", "val", "test")]
    items = [name for ds in splits for name, _, _ in ds.items]
    assert sorted(items) == ["jog", "jump", "squat", "walk", "walk_0.5_2.5"]
    assert json.loads((out / "source.json").read_text()) == summary


def test_build_from_joints_is_seeded_and_refuses_foreign_folders(tmp_path):
    src = tmp_path / "mine"
    write_source(src)
    quiet = dict(log=lambda *a: None)
    first = ingest.build_from_joints(src, tmp_path / "a", seed=3, **quiet)
    again = ingest.build_from_joints(src, tmp_path / "a", seed=3, **quiet)  # an earlier build: replaced
    other = ingest.build_from_joints(src, tmp_path / "b", seed=3, **quiet)
    assert first == again == other
    assert (tmp_path / "a" / "train.txt").read_text() == (tmp_path / "b" / "train.txt").read_text()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="notes: not empty and not a dataset built from joints"):
        ingest.build_from_joints(src, foreign, **quiet)
    assert (foreign / "todo.txt").exists()
    with pytest.raises(ValueError, match="no usable clips"):
        ingest.build_from_joints(tmp_path / "a" / "texts", tmp_path / "c", **quiet)
    with pytest.raises(ValueError, match="split: three shares"):
        ingest.build_from_joints(src, tmp_path / "d", split=(0.8, 0.2), **quiet)


def test_build_from_joints_tagger_and_frame_rate(tmp_path):
    """A tagger's `lemma/POS` tokens are written as given; a 10 fps source is resampled to 20
    fps by linear interpolation (the source frames come back at every other frame), then
    retargeted, or not (retarget=False: the features of the resampled joints as they are)."""
    src = tmp_path / "mine"
    src.mkdir()
    joints = motion([("walk", {}), ("jog", {})], seed=5)
    slow = joints[::2]  # (T/2, 22, 3): the same motion at 10 fps
    np.save(src / "walk.npy", slow)
    (src / "walk.txt").write_text("A man walks\n")
    np.save(src / "jog.npy", motion([("jog", {}), ("walk", {})], seed=6)[::2])
    (src / "jog.txt").write_text("a man jogs\n")
    verbs = {"walks": "walk", "jogs": "jog"}
    summary = ingest.build_from_joints(src, tmp_path / "out", fps=10, log=lambda *a: None,
                                     tag=lambda words: [f"{verbs[w]}/VERB" if w in verbs else f"{w}/NOUN"
                                                        for w in words])
    assert summary["kept"] == 2
    assert ((tmp_path / "out" / "texts" / "walk.txt").read_text()
            == "A man walks#a/NOUN man/NOUN walk/VERB#0.0#0.0\n")
    resampled = bvh.resample(slow, 10, 20)
    assert len(resampled) == 2 * len(slow) - 1
    assert np.allclose(resampled[::2], slow) and np.allclose(resampled[1::2], (slow[:-1] + slow[1:]) / 2)
    rows = np.load(tmp_path / "out" / "new_joint_vecs" / "walk.npy")
    assert np.array_equal(rows, data.joints_to_features(bvh.retarget(resampled)))
    kept = ingest.build_from_joints(src, tmp_path / "kept", fps=10, retarget=False, log=lambda *a: None)
    assert kept["retarget"] is False and kept["format"] == "npy"
    rows = np.load(tmp_path / "kept" / "new_joint_vecs" / "walk.npy")
    assert np.array_equal(rows, data.joints_to_features(resampled))
    with pytest.raises(ValueError, match="tag: expected one 'lemma/POS' per word"):
        ingest.build_from_joints(src, tmp_path / "bad", log=lambda *a: None, fps=10, tag=lambda words: ["x"])


# ----------------------------------------------------------------------------
# build_from_bvh: the same from BVH files


def test_build_from_bvh_reads_retargets_and_skips_bad_files(tmp_path):
    """BVH files (our writer's: SMPL names, centimetres; one relabelled with Mixamo names and
    written at 60 fps) become the same dataset as their joints would; a malformed file, one
    with unknown joint names and one without captions are skipped with their reasons."""
    src = tmp_path / "mocap"
    src.mkdir()
    walk, jog = motion([("walk", {}), ("jump", {})], seed=1), motion([("jog", {})], seed=2)
    bvh.write_bvh(walk, src / "walk.bvh")
    mixamo = bvh.write_bvh(bvh.resample(jog, 20, 60), src / "jog.bvh", fps=60, offsets=bvh.rest_offsets(jog))
    text = mixamo.read_text()
    for smpl, names in bvh.NAME_MAPS["mixamo"].items():  # (prefixed: a joint is renamed once)
        text = re.sub(rf"(ROOT|JOINT) {smpl}\n", rf"\1 mixamorig:{names[0]}\n", text)
    mixamo.write_text(text)
    bvh.write_bvh(walk, src / "broken.bvh")
    broken = (src / "broken.bvh").read_text().splitlines()
    broken[-1] = broken[-1] + " 0.0"  # one value too many on the last frame line
    (src / "broken.bvh").write_text("\n".join(broken) + "\n")
    bvh.write_bvh(walk, src / "alien.bvh")
    (src / "alien.bvh").write_text((src / "alien.bvh").read_text().replace("JOINT L_Hip", "JOINT Thigh"))
    bvh.write_bvh(walk, src / "silent.bvh")
    for name in ("walk", "jog", "broken", "alien"):
        (src / f"{name}.txt").write_text(f"a person does the {name} motion\n")
    summary = ingest.build_from_bvh(src, tmp_path / "out", seed=0, log=lambda *a: None)
    assert summary["kept"] == 2 and summary["format"] == "bvh" and summary["up"] == "y"
    assert f"broken.bvh:{len(broken)}: " in summary["skipped"]["broken"]
    assert "closest (smpl) leaves the t2m joints L_Hip unmatched" in summary["skipped"]["alien"]
    assert summary["skipped"]["silent"] == "no caption file silent.txt"
    for name, joints in (("walk", walk), ("jog", jog)):
        rows = np.load(tmp_path / "out" / "new_joint_vecs" / f"{name}.npy")
        assert np.abs(rows - data.joints_to_features(bvh.retarget(joints))).max() < 1e-3
    splits = [data.MotionTextDataset(tmp_path / "out", split) for split in ("train", "val", "test")]
    assert sorted(name for ds in splits for name, _, _ in ds.items) == ["jog", "walk"]
