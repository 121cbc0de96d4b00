"""Tests for data.py: the HumanML3D feature representation and the dataset reader (the
round trips run on motions of the synthetic generator, tested in test_synthetic.py)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import data
import synthetic

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "humanml3d_sample"
GROUPS = data.feature_slices(22)


def canonical(joints: np.ndarray, face=(2, 1, 17, 16)) -> np.ndarray:
    """HumanML3D's global alignment written independently: floor at the lowest joint, the
    root's first xz at the origin, the first frame's facing (up x (hips + shoulders, right
    minus left)) turned onto +Z with scipy."""
    j = joints - np.array([0.0, joints[..., 1].min(), 0.0])
    j = j - j[0, 0] * np.array([1.0, 0.0, 1.0])
    r_hip, l_hip, r_sdr, l_sdr = face
    across = j[0, r_hip] - j[0, l_hip] + j[0, r_sdr] - j[0, l_sdr]
    forward = np.cross([0.0, 1.0, 0.0], across)
    yaw = np.arctan2(forward[0], forward[2])  # heading angle from +Z toward +X
    return Rotation.from_euler("y", -yaw).apply(j.reshape(-1, 3)).reshape(j.shape)


def motion(actions, seed=0):
    joints, names, params, bounds = synthetic.synthesize_motion(np.random.default_rng(seed), actions=actions)
    return joints


# ----------------------------------------------------------------------------
# The reference clip (a real HumanML3D clip; skipped where the folder is absent)


def load_reference():
    if not (REFERENCE / "new_joint_vecs" / "012314.npy").exists():
        pytest.skip("reference HumanML3D clip not available")
    return (np.load(REFERENCE / "new_joint_vecs" / "012314.npy"),
            np.load(REFERENCE / "new_joints" / "012314.npy"))


def test_reference_features_to_joints():
    """recover_from_ric on the published features gives the published joints."""
    features, joints = load_reference()
    recovered = data.features_to_joints(torch.from_numpy(features)).numpy()
    assert recovered.shape == joints.shape == (170, 22, 3)
    assert np.abs(recovered - joints).max() < 1e-4


def test_reference_joints_to_features():
    """The published new_joints/ (170 frames) are the positions HumanML3D recovered from its
    170 feature rows, which it computed from 171 joint frames. Recomputing features from the
    170 frames gives 169 rows that must match the published ones, except where the facing
    smoothing sees the clip differently: the Gaussian (sigma 20, truncated at 4 sigma = 80
    frames, 'nearest' padding) of row t reaches frame t + 80, so rows t >= 170 - 80 = 90 see
    the missing 171st frame replaced by a copy of the 170th. Rows 0..89 match in every group
    (measured: <= 3e-7 for positions and velocities, <= 8e-6 for the 6D rotations, foot
    contacts exact); the last rows differ by up to ~1e-2 (6D rotations)."""
    features, joints = load_reference()
    ours = data.joints_to_features(joints)
    assert ours.shape == (169, 263)
    for name, group in GROUPS.items():
        err = np.abs(ours[:90, group] - features[:90, group]).max()
        assert err < 1e-4, f"{name}: max error {err:.2e} on rows 0..89"
    tail = np.abs(ours[90:] - features[90:169]).max()
    assert tail > 1e-4, "the smoothing's reach into the clip end should show"


# ----------------------------------------------------------------------------
# Round trips on synthetic motions


@pytest.mark.parametrize("actions", [
    [("walk", {"direction": "forward"}), ("turn", {"rot": "clockwise"})],
    [("jump", {}), ("wave", {"side": "right"})],
    [("side_step", {"side": "left"}), ("squat", {})],
])
def test_joints_features_joints_round_trip(actions):
    """features_to_joints(joints_to_features(J)) = J after HumanML3D's alignment (floor,
    origin, facing +Z), for every frame but the last (T joints give T-1 feature rows)."""
    joints = motion(actions, seed=1)
    recovered = data.features_to_joints(torch.from_numpy(data.joints_to_features(joints)).double())
    assert np.abs(recovered.numpy() - canonical(joints)[:-1]).max() < 1e-5


def test_heading_wrap_flips_one_frame_of_angular_velocity():
    """A known quirk of the published features (HumanML3D issue #156), reproduced on
    purpose: the root rotation is stored as quaternions with w >= 0, so when the smoothed
    facing passes 180 degrees from the first frame's, r_{t+1} r_t^-1 has w < 0 and the
    arcsin of its y component has the wrong sign for that one row. A counterclockwise
    circle (negative rate) shows exactly one positive row; recovery is exact up to it."""
    joints = motion([("walk_circle", {"rot": "counterclockwise"})], seed=1)
    features = data.joints_to_features(joints)
    flipped = np.nonzero(features[1:, 0] > 0)[0] + 1  # row 0 carries the identity quirk
    assert len(flipped) == 1
    recovered = data.features_to_joints(torch.from_numpy(features).double()).numpy()
    wrap = flipped[0]
    assert np.abs(recovered[:wrap + 1] - canonical(joints)[:wrap + 1]).max() < 1e-5
    assert np.abs(recovered[-1] - canonical(joints)[-2]).max() > 0.05


def test_features_joints_features_round_trip():
    """joints_to_features(features_to_joints(F)) = F on the rows that do not reach the end
    through the facing smoothing (row t sees frame t + 80; the recovered clip is one frame
    shorter)."""
    joints = motion([("walk", {}), ("run", {}), ("stand", {})], seed=2)
    features = data.joints_to_features(joints)
    again = data.joints_to_features(data.features_to_joints(torch.from_numpy(features)).numpy())
    rows = len(features) - 81
    assert rows > 40
    assert np.abs(again[:rows] - features[:rows]).max() < 1e-4


def _rotation_from_6d(d6: np.ndarray) -> np.ndarray:
    """Gram-Schmidt on the two stored columns (Zhou et al.), numpy."""
    a, b = d6[..., :3], d6[..., 3:]
    x = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - (x * b).sum(-1, keepdims=True) * x
    y = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def test_rotation_features_rebuild_the_skeleton():
    """The 6D rotations are real joint rotations: forward kinematics with them (root
    rotation from integrating dim 0, chains starting from the root rotation as in HumanML3D)
    turns each raw offset onto the bone direction of the aligned joints."""
    joints = motion([("kick", {"side": "left"}), ("clap", {})], seed=4)
    features = data.joints_to_features(joints).astype(np.float64)
    aligned = canonical(joints)[:-1]
    half = np.concatenate([[0.0], np.cumsum(features[:-1, 0])])  # root half-angle
    root = Rotation.from_euler("y", 2 * half[:, None]).as_matrix()  # (T, 3, 3)
    local = _rotation_from_6d(features[:, GROUPS["rot"]].reshape(-1, 21, 6))  # (T, 21, 3, 3)
    offsets = np.array(data.T2M.raw_offsets, dtype=float)
    for chain in data.T2M.kinematic_chain:
        R = root
        for parent, child in zip(chain[:-1], chain[1:]):
            R = R @ local[:, child - 1]
            bone = aligned[:, child] - aligned[:, parent]
            bone /= np.linalg.norm(bone, axis=-1, keepdims=True)
            assert np.abs(R @ offsets[child] - bone).max() < 1e-4, (parent, child)


def test_features_to_joints_batched_and_differentiable():
    joints = [motion([("jog", {})], seed=s)[:41] for s in (5, 6)]
    feats = torch.stack([torch.from_numpy(data.joints_to_features(j)) for j in joints])  # (2, 40, 263)
    batched = data.features_to_joints(feats)
    assert batched.shape == (2, 40, 22, 3)
    for b in range(2):
        assert torch.allclose(batched[b], data.features_to_joints(feats[b]), atol=1e-6)
    small = (0.1 * torch.randn(2, 4, 263, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(data.features_to_joints, (small,), fast_mode=True)


def test_kit_variant_shapes_and_round_trip():
    """KIT-ML: 21 joints -> 251-d features; a hand-made KIT body (rest pose along the raw
    offsets, shoulders wider than hips) walking a curve recovers its aligned joints. Its
    rest pose faces -Z, exactly opposite the target +Z: the alignment is a half turn."""
    kit = data.KIT
    lengths = np.full(kit.n_joints, 0.2)
    lengths[[5, 8]] = 0.3  # shoulders wider than hips
    rest = np.zeros((kit.n_joints, 3))
    for j, p in enumerate(kit.parents()[1:], start=1):
        rest[j] = rest[p] + lengths[j] * np.array(kit.raw_offsets[j])
    T = 30
    yaw = np.linspace(0.0, 1.0, T)
    swing = 0.3 * np.sin(np.linspace(0, 6, T))
    frames = []
    for t in range(T):
        pose = rest.copy()
        pose[7] = pose[6] + Rotation.from_euler("x", swing[t]).apply(rest[7] - rest[6])
        frames.append(Rotation.from_euler("y", yaw[t]).apply(pose) + [0.05 * t, 1.0, 0.02 * t])
    joints = np.stack(frames)
    features = data.joints_to_features(joints, data.KIT)
    assert features.shape == (T - 1, 251)
    recovered = data.features_to_joints(torch.from_numpy(features).double(), n_joints=21).numpy()
    assert recovered.shape == (T - 1, 21, 3)
    assert np.abs(recovered - canonical(joints, kit.face_joints)[:-1]).max() < 1e-5


# ----------------------------------------------------------------------------
# The reader on a hand-written fixture


def write_fixture(root: Path, motions: dict, texts: dict, split=("train",)) -> None:
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    for name, m in motions.items():
        np.save(root / "new_joint_vecs" / f"{name}.npy", m)
    for name, lines in texts.items():
        (root / "texts" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    np.save(root / "Mean.npy", np.full(263, 0.5, np.float32))
    np.save(root / "Std.npy", np.full(263, 2.0, np.float32))
    for s in split:
        (root / f"{s}.txt").write_text("\n".join(motions) + "\n")


def ramp(T: int) -> np.ndarray:
    """Row t holds the value t everywhere, so a crop shows where it started."""
    return np.repeat(np.arange(T, dtype=np.float32)[:, None], 263, axis=1)


@pytest.fixture
def fixture_root(tmp_path) -> Path:
    motions = {"A": ramp(60), "B": ramp(30), "C": ramp(100), "D": ramp(199), "E": ramp(200)}
    write_fixture(tmp_path, motions, {
        "A": ["a man walks.#a/DET man/NOUN walk/VERB#0.0#0.0",
              "someone walks.#someone/PRON walk/VERB#0.0#0.0"],
        "B": ["too short#too/ADV short/ADJ#0.0#0.0"],
        "C": ["a person jumps then waves#a/DET#0.0#0.0",
              "the person waves#the/DET person/NOUN wave/VERB#1.0#3.0",  # rows 20..60: 40 frames
              "a wave#a/DET wave/NOUN#1.0#3.0",
              "a jump#a/DET jump/NOUN#0.0#1.5"],  # 30 frames: skipped
        "D": ["long#long/ADJ#0.0#0.0"],  # 199 frames: kept, cropped to 196 (HumanML3D keeps < 200)
        "E": ["longer#longer/ADJ#0.0#0.0"],  # 200 frames: skipped
    })
    return tmp_path


def test_reader_length_rules_and_sub_spans(fixture_root, capsys):
    ds = data.MotionTextDataset(fixture_root, "train", seed=0)
    assert "skipped 3" in capsys.readouterr().out  # B, the 1.5-second span of C, E
    assert sorted(name for name, _, _ in ds.items) == ["A", "C", "C_1_3", "D"]
    items = {item["name"]: item for item in (ds[i] for i in range(len(ds)))}
    sub = items["C_1_3"]
    assert sub["length"] == 40 and sub["caption"] in ("the person waves", "a wave")
    raw = sub["motion"].numpy() * 2.0 + 0.5  # denormalize by hand: Std 2, Mean 0.5
    assert np.allclose(raw[:, 0], np.arange(20, 60))
    assert items["D"]["length"] == 196
    start = items["D"]["motion"][0, 0].item() * 2.0 + 0.5
    assert start in (0, 1, 2, 3)  # a random crop offset
    assert items["A"]["length"] == 60 and items["C"]["length"] == 100
    assert set(ds.captions()) >= {"a man walks.", "someone walks.", "the person waves", "a wave", "long"}
    assert np.allclose(ds.denormalize(ds.normalize(np.ones(263))), 1.0)
    assert torch.allclose(ds.normalize(torch.full((263,), 2.5)), torch.ones(263))


def test_reader_random_choices_follow_the_seed(fixture_root):
    def draws(seed):
        ds = data.MotionTextDataset(fixture_root, "train", seed=seed)
        return [(ds[i]["caption"], float(ds[i]["motion"][0, 0]))
                for i in range(len(ds)) for _ in range(4)]
    assert draws(1) == draws(1)
    fixed = data.MotionTextDataset(fixture_root, "train", random_caption=False)
    assert {fixed[0]["caption"] for _ in range(5)} == {"a man walks."}


def test_reseed_restarts_the_random_choices(fixture_root):
    """After reseed(s), a dataset that has already been read draws what a fresh one opened with
    seed s draws (train.run_stage relies on it: a stage sees the same crops alone or in --stage all)."""
    def draws(ds):
        return [(ds[i]["caption"], float(ds[i]["motion"][0, 0])) for i in range(len(ds)) for _ in range(4)]
    used = data.MotionTextDataset(fixture_root, "train", seed=3)
    first = draws(used)
    assert draws(used) != first, "the fixture must offer more than one crop or caption"
    used.reseed(3)
    assert draws(used) == first == draws(data.MotionTextDataset(fixture_root, "train", seed=3))


def test_fork_draws_what_the_original_draws_next(fixture_root):
    """fork() (train.py's --ablations: LaMP's variants see the batches the full model saw): the
    fork repeats the original's next draws and does not move the original's generator."""
    def draws(ds):
        return [(ds[i]["caption"], float(ds[i]["motion"][0, 0])) for i in range(len(ds)) for _ in range(4)]
    ds = data.MotionTextDataset(fixture_root, "train", seed=3)
    draws(ds)
    fork = ds.fork()
    assert fork.items is ds.items
    assert draws(fork) == draws(ds)


def test_subset_keeps_the_chosen_items_and_draws_on_its_own(fixture_root):
    """subset(indices, seed) holds those items in that order, shares the statistics, and its
    generator is its own: reading it leaves the split's draws where they were."""
    ds = data.MotionTextDataset(fixture_root, "train", seed=3)
    part = ds.subset([len(ds) - 1, 0], seed=5)
    assert [name for name, _, _ in part.items] == [ds.items[-1][0], ds.items[0][0]]
    assert part.mean is ds.mean and part.tags is ds.tags and len(ds) > len(part) == 2
    fresh = data.MotionTextDataset(fixture_root, "train", seed=3)
    [part[i] for i in range(2) for _ in range(4)]
    assert [ds[0]["caption"] for _ in range(6)] == [fresh[0]["caption"] for _ in range(6)]


def test_collate_pads_and_returns_lengths(fixture_root):
    ds = data.MotionTextDataset(fixture_root, "train")
    batch = data.collate([ds[0], ds[1]])
    assert batch["motion"].shape == (2, max(ds[0]["length"], ds[1]["length"]), 263)
    assert batch["lengths"].tolist() == [ds[0]["length"], ds[1]["length"]]
    short = int(batch["lengths"].argmin())
    assert (batch["motion"][short, batch["lengths"][short]:] == 0).all()
    assert batch["name"] == [ds.items[0][0], ds.items[1][0]]


def test_summary_of_fixture(fixture_root):
    s = data.dataset_summary(fixture_root)
    assert s["motions"] == 5 and s["captions"] == 9 and s["splits"] == {"train": 5}
    assert s["length_histogram"] == {"20-39": 1, "60-79": 1, "100-119": 1, "180-199": 1, "200-219": 1}
    assert s["vocabulary"] == len({"a", "man", "walks", "someone", "too", "short", "person", "jumps",
                                   "then", "waves", "the", "wave", "jump", "long", "longer"})


@pytest.mark.parametrize("case, message", [
    ("nan", "A.npy: motion contains NaN"),
    ("inf", "A.npy: motion contains NaN or inf"),
    ("width", "A.npy: expected features of shape"),
    ("no_text", "A.txt: caption file is missing"),
    ("empty_caption", "A.txt:1: empty caption"),
])
def test_bad_input_names_the_file(tmp_path, case, message):
    m = ramp(50)
    if case == "nan":
        m[3, 7] = np.nan
    if case == "inf":
        m[3, 7] = np.inf
    if case == "width":
        m = m[:, :251]
    texts = {"A": ["#a/DET#0.0#0.0" if case == "empty_caption" else "fine#fine/ADJ#0.0#0.0"]}
    write_fixture(tmp_path, {"A": m}, {} if case == "no_text" else texts)
    with pytest.raises(ValueError, match=re.escape(message)):
        data.MotionTextDataset(tmp_path, "train")


def test_load_segments_missing_is_an_error(fixture_root):
    with pytest.raises(ValueError, match="segments.json"):
        synthetic.load_segments(fixture_root)
