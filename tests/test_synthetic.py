"""Tests for synthetic.py: the embedded dataset's motions are plausible and follow their
captions, generation is deterministic and atomic, and the folder is in the HumanML3D layout."""
import re
from pathlib import Path

import numpy as np
import pytest

import data
import synthetic

GROUPS = data.feature_slices(22)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_synthetic(root, n_motions=40, seed=3, log=lambda *a: None)
    return root


def motion(actions, seed=0):
    joints, names, params, bounds = synthetic.synthesize_motion(np.random.default_rng(seed), actions=actions)
    return joints

# ----------------------------------------------------------------------------
# The synthetic motions


def test_synthetic_motions_are_plausible(synthetic_root):
    """Constant bone lengths, no joint faster than 15 m/s (0.75 m per frame) nor a root
    faster than 6 m/s, feet on the floor and foot contacts while walking or standing."""
    segments = synthetic.load_segments(synthetic_root)
    parents = data.T2M.parents()
    walks = 0
    for name, seg in segments.items():
        joints = np.load(synthetic_root / "new_joints" / f"{name}.npy")
        features = np.load(synthetic_root / "new_joint_vecs" / f"{name}.npy")
        bones = np.linalg.norm(joints[:, 1:] - joints[:, parents[1:]], axis=-1)  # (T, 21)
        assert (bones.std(0) < 1e-4).all(), name
        step = np.linalg.norm(joints[1:] - joints[:-1], axis=-1)
        assert step.max() < 0.75 and step[:, 0].max() < 0.3, name
        for action, (start, end) in zip(seg["actions"], seg["bounds"]):
            if action.split()[0] in ("walk", "stand"):
                contacts = features[start:end, GROUPS["foot_contact"]]
                feet = joints[start:end][:, [7, 10, 8, 11], 1].min(1)
                assert contacts.max() == 1.0 and feet.max() < 0.05, (name, action)
                if action.startswith("walk"):
                    walks += 1
                    assert contacts.min() == 0.0, "a walking foot must also leave the ground"
    assert walks > 0


def test_modifiers_change_the_motion():
    """Forward vs backward: sign of the root's forward velocity (dim 2). Left vs right hand:
    which wrist rises. Clockwise vs counterclockwise: sign of the summed root rotation
    (dim 0 is the rate of the *inverse* heading in HumanML3D, so a clockwise turn is
    positive). Slowly vs quickly: more than twice the distance walked per second."""
    def feats(actions, seed=0):
        return data.joints_to_features(motion(actions, seed))
    assert feats([("walk", {"direction": "forward"})])[:, 2].mean() > 0.02
    assert feats([("walk", {"direction": "backward"})])[:, 2].mean() < -0.02
    left, right = motion([("wave", {"side": "left"})]), motion([("wave", {"side": "right"})])
    assert left[:, 20, 1].max() > left[:, 21, 1].max() + 0.4
    assert right[:, 21, 1].max() > right[:, 20, 1].max() + 0.4
    assert feats([("turn", {"rot": "clockwise"})])[:, 0].sum() > 0.5
    assert feats([("turn", {"rot": "counterclockwise"})])[:, 0].sum() < -0.5
    assert feats([("walk_circle", {"rot": "clockwise"})])[:, 0].sum() > 1.0
    def speed(modifier):
        walk = feats([("walk", {"direction": "forward", "speed": modifier})])
        return np.linalg.norm(walk[:, 1:3], axis=1).mean()
    assert speed("quickly") > 2 * speed("slowly")


def test_actions_are_told_apart_by_nearest_neighbour():
    """Leave-one-out 1-nearest-neighbour on (mean, std) of the features over time separates
    six actions from three random instances each (chance: 1/6)."""
    names = ["walk", "jump", "wave", "squat", "punch", "side_step"]
    X, y = [], []
    for label, name in enumerate(names):
        for seed in range(3):
            f = data.joints_to_features(motion([(name, {})], seed=10 + seed))
            X.append(np.concatenate([f.mean(0), f.std(0)]))
            y.append(label)
    X, y = np.array(X), np.array(y)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    dist = np.linalg.norm(X[:, None] - X[None], axis=-1) + np.eye(len(X)) * 1e9
    assert (y[dist.argmin(1)] == y).mean() >= 0.8


def test_generation_is_deterministic(tmp_path, synthetic_root):
    again, other = tmp_path / "again", tmp_path / "other"
    synthetic.generate_synthetic(again, n_motions=40, seed=3, log=lambda *a: None)
    synthetic.generate_synthetic(other, n_motions=40, seed=4, log=lambda *a: None)
    for rel in ["new_joint_vecs/000007.npy", "texts/000007.txt", "Std.npy", "train.txt",
                "segments.json"]:
        assert (synthetic_root / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (synthetic_root / "texts/000007.txt").read_bytes() != (other / "texts/000007.txt").read_bytes()


def test_generation_replaces_only_a_synthetic_folder(tmp_path):
    """An earlier synthetic dataset is replaced whole; any other non-empty folder is refused."""
    quiet = dict(n_motions=8, log=lambda *a: None)
    synthetic.generate_synthetic(tmp_path / "syn", seed=0, **quiet)
    (tmp_path / "syn" / "new_joints" / "stray.npy").write_bytes(b"")
    synthetic.generate_synthetic(tmp_path / "syn", seed=1, **quiet)
    assert len(list((tmp_path / "syn" / "new_joints").iterdir())) == 8
    assert not (tmp_path / "syn.partial").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        synthetic.generate_synthetic(tmp_path / "mine", **quiet)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_synthetic_layout_captions_and_styles(synthetic_root):
    segments = synthetic.load_segments(synthetic_root)
    splits = {s: (synthetic_root / f"{s}.txt").read_text().split()
              for s in ("train", "val", "test", "styles")}
    assert sorted(sum(splits.values(), [])) == sorted(segments)  # every motion in exactly one split
    assert {segments[n]["style"] for n in splits["styles"]} == set(synthetic.STYLES)
    style_word = re.compile(r"\b(limp\w*|skip\w*|march\w*|tiptoe\w*|zombies?)\b")
    for name, seg in segments.items():
        lines = (synthetic_root / "texts" / f"{name}.txt").read_text().splitlines()
        assert len(lines) >= 3 and len(set(lines)) == len(lines)
        for line in lines:
            caption, tokens, start, end = line.split("#")
            assert (start, end) == ("0.0", "0.0")
            assert all(re.fullmatch(r"[a-z]+/[A-Z]+", tok) for tok in tokens.split())
            assert len(tokens.split()) == len(re.findall(r"[a-z]+", caption))
            if seg["style"] is None:
                assert not style_word.search(caption), caption
                assert ("then" in caption) == (len(seg["actions"]) > 1)
            else:
                assert style_word.search(caption), caption
        T = len(np.load(synthetic_root / "new_joint_vecs" / f"{name}.npy"))
        assert 40 <= T <= 196
        bounds = seg["bounds"]
        assert bounds[0][0] == 0 and bounds[-1][1] == T and len(bounds) == len(seg["actions"])
        assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:]))
        assert seg["label"] == seg["actions"][0].split()[0]


def test_mean_std_follow_humanml3d(synthetic_root):
    """Mean over every frame of every motion; Std: per-dimension std averaged within each of
    the seven groups (checked against a direct numpy computation)."""
    files = sorted((synthetic_root / "new_joint_vecs").glob("*.npy"))
    frames = np.concatenate([np.load(f) for f in files]).astype(np.float64)
    mean, std = np.load(synthetic_root / "Mean.npy"), np.load(synthetic_root / "Std.npy")
    assert np.allclose(mean, frames.mean(0), atol=1e-6)
    per_dim = frames.std(0)
    for name, group in GROUPS.items():
        assert np.allclose(std[group], per_dim[group].mean(), rtol=1e-4), name


def test_summary_of_synthetic(synthetic_root):
    summary = data.dataset_summary(synthetic_root)
    assert summary["motions"] == 40
    assert summary["splits"]["styles"] == 5 and sum(summary["splits"].values()) == 40
    assert summary["captions"] >= 120 and summary["vocabulary"] > 50
    assert sum(summary["length_histogram"].values()) == 40
