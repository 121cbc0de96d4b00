"""The HumanML3D / KIT-ML motion representation and the dataset reader.

Every paper in ../shared/seeds/ (LEAD 000_c8069c11a3356e2a.txt, arXiv 2410.14508; ATM
002_f70d1cb769d79b2a.txt; LaMP 003_d88d83113f8fa35c.txt; MATE 004_fcd44ad5e4e1e096.txt)
trains and evaluates on HumanML3D (Guo et al., CVPR 2022) and KIT-ML in the feature
representation of Guo et al.; none defines it. The specification is the public HumanML3D
processing code (`motion_representation.ipynb`, `common/skeleton.py`, `cal_mean_variance`),
restated here in our own code. The embedded synthetic dataset, written in this layout, is
synthetic.py (this file imports nothing from it).

1. `joints_to_features`: (T, J, 3) joint positions -> (T-1, D) features, D = 12 J - 1
   (263 for the 22-joint t2m skeleton, 251 for the 21-joint KIT skeleton):
       [0]              root angular velocity about Y (half-angle per frame)
       [1:3]            root linear velocity (x, z) in the root frame
       [3]              root height
       [4 : 4+3(J-1)]   root-relative joint positions in the root frame ("ric")
       [.. : +6(J-1)]   continuous 6D joint rotations from inverse kinematics
       [.. : +3J]       joint velocities in the root frame
       [-4:]            foot contacts (left ankle, left toe, right ankle, right toe)
2. `features_to_joints`: the inverse for positions (HumanML3D's `recover_from_ric`), in
   torch, batched and differentiable (the VAE's joint loss and ATM use it).
3. `MotionTextDataset` + `collate`: the HumanML3D folder layout, captions with
   `#start#end` sub-spans, the 40..196-frame length rules, crops to a multiple of 4.
4. `feature_slices`, `group_std`: the feature groups and Std.npy's group-averaged form.
5. Writing the layout: `save_features`, `FeatureStats` (Mean.npy, Std.npy), `write_splits`,
   shared by synthetic.py's generator and ingest.py (one's own joint clips into a dataset).

Kept on purpose, because the published features contain them:
  (a) the root rotation comes from the Gaussian-smoothed facing (sigma 20 frames), so a
      clip's last 80 frames change when its length changes;
  (b) the facing is shoulders minus hips with the hip vector sign-flipped (the public code
      unpacks the face joints as `l_hip, r_hip` where they are `r_hip, l_hip`);
  (c) frame 0's root rotation is forced to identity, so feature row 0 carries the jump to
      the smoothed facing of frame 1;
  (d) the root angular velocity is arcsin of the y of r_{t+1} r_t^-1 with no quaternion sign
      fix: where the facing passes 180 degrees from frame 0's, one row has the wrong sign
      (HumanML3D issue #156), and recovered trajectories carry that one-frame error.

Differences from the public HumanML3D code:
- No skeleton retargeting to clip 000021's bone lengths (`uniform_skeleton` needs the raw
  AMASS joints; the published `new_joints/` are past it); the synthetic skeleton has them.
- Bad input raises `ValueError` naming the file (HumanML3D skips such files silently);
  clips outside the length rules are skipped with a printed count, as HumanML3D does.
- The loader's extra augmentation (with probability 1/3 HumanML3D drops one more unit of 4
  frames) is left out; crops take a random offset from a seeded generator.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

FPS = 20  # HumanML3D frame rate (KIT-ML: 12.5)

# ----------------------------------------------------------------------------
# Skeletons


@dataclass(frozen=True)
class Skeleton:
    """A joint hierarchy and the joint indices the feature pipeline needs."""
    name: str
    n_joints: int                                  # J
    feat_dim: int                                  # D = 4 + 3(J-1) + 6(J-1) + 3J + 4 = 12J - 1
    fps: float
    kinematic_chain: tuple[tuple[int, ...], ...]   # chains of joint indices, parent first
    raw_offsets: tuple[tuple[int, int, int], ...]  # (J, 3) unit bone directions of the rest pose
    face_joints: tuple[int, int, int, int]         # r_hip, l_hip, r_shoulder, l_shoulder
    foot_left: tuple[int, int]                     # ankle, toe
    foot_right: tuple[int, int]
    foot_threshold: float                          # a foot is in contact below this squared step

    def parents(self) -> list[int]:
        parents = [-1] * self.n_joints
        for chain in self.kinematic_chain:
            for parent, child in zip(chain[:-1], chain[1:]):
                parents[child] = parent
        return parents


# t2m = the SMPL body joints of HumanML3D: 0 pelvis, 1/2 hips (L/R), 3/6/9 spine, 4/5 knees,
# 7/8 ankles, 10/11 toes, 12 neck, 13/14 collars, 15 head, 16/17 shoulders, 18/19 elbows,
# 20/21 wrists. +x is the body's left, +y up, +z the facing direction.
T2M = Skeleton(
    name="t2m", n_joints=22, feat_dim=263, fps=20.0,
    kinematic_chain=((0, 2, 5, 8, 11), (0, 1, 4, 7, 10), (0, 3, 6, 9, 12, 15),
                     (9, 14, 17, 19, 21), (9, 13, 16, 18, 20)),
    raw_offsets=((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0),
                 (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1),
                 (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, -1, 0), (0, -1, 0),
                 (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0)),
    face_joints=(2, 1, 17, 16), foot_left=(7, 10), foot_right=(8, 11),
    foot_threshold=0.002,  # HumanML3D process_file(..., feet_thre=0.002), metres^2
)

KIT = Skeleton(
    name="kit", n_joints=21, feat_dim=251, fps=12.5,
    kinematic_chain=((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4),
                     (3, 5, 6, 7), (3, 8, 9, 10)),
    raw_offsets=((0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, -1, 0),
                 (0, -1, 0), (-1, 0, 0), (0, -1, 0), (0, -1, 0), (1, 0, 0), (0, -1, 0),
                 (0, -1, 0), (0, 0, 1), (0, 0, 1), (-1, 0, 0), (0, -1, 0), (0, -1, 0),
                 (0, 0, 1), (0, 0, 1)),
    face_joints=(11, 16, 5, 8), foot_left=(19, 20), foot_right=(14, 15),
    foot_threshold=0.05,  # process_file(..., 0.05) in the public KIT-ML processing
)


def _check_layout(skeleton: Skeleton) -> None:
    J = skeleton.n_joints
    assert skeleton.feat_dim == 12 * J - 1, f"{skeleton.name}: D must be 12J-1 = {12 * J - 1}"
    assert len(skeleton.raw_offsets) == J, f"{skeleton.name}: one raw offset per joint"


_check_layout(T2M)
_check_layout(KIT)


# ----------------------------------------------------------------------------
# Quaternions (numpy, float64, (w, x, y, z), Hamilton product; rotation by unit quaternions)


def _qmul(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product q r, broadcasting over leading dims."""
    w1, x1, y1, z1 = np.moveaxis(q, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(r, -1, 0)
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                     w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=-1)


def _qinv(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def _qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4): v + 2 w (u x v) + 2 u x (u x v)."""
    u = q[..., 1:]
    uv = np.cross(u, v)
    return v + 2.0 * (q[..., :1] * uv + np.cross(u, uv))


def qbetween(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """The shortest-arc rotation taking direction v0 to direction v1 (..., 3) -> (..., 4).

    q = normalize(|v0||v1| + v0.v1, v0 x v1): the half-angle construction. For exactly
    opposite vectors (where the public code returns NaN) it is a half turn about an axis
    perpendicular to v0: about Y for horizontal v0, as for a clip that starts facing -Z.
    Public because bvh.py's inverse kinematics uses it too."""
    w = np.sqrt((v0 ** 2).sum(-1) * (v1 ** 2).sum(-1)) + (v0 * v1).sum(-1)
    q = np.concatenate([w[..., None], np.cross(v0, v1)], axis=-1)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    opposite = norm[..., 0] < 1e-9 * np.sqrt((v0 ** 2).sum(-1) * (v1 ** 2).sum(-1))
    if opposite.any():
        u = v0[opposite]
        axis = np.cross(u, [1.0, 0.0, 0.0])
        parallel_to_x = np.linalg.norm(axis, axis=-1, keepdims=True) < 1e-6
        axis = np.where(parallel_to_x, np.cross(u, [0.0, 1.0, 0.0]), axis)
        q[opposite] = np.concatenate([np.zeros((len(u), 1)), axis], axis=-1)
        norm[opposite] = np.linalg.norm(q[opposite], axis=-1, keepdims=True)
    return q / norm


def _quat_to_cont6d(q: np.ndarray) -> np.ndarray:
    """(..., 4) -> (..., 6): the first two columns of the rotation matrix (Zhou et al. 2019)."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    col0 = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], axis=-1)
    col1 = np.stack([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)], axis=-1)
    return np.concatenate([col0, col1], axis=-1)


# ----------------------------------------------------------------------------
# joints -> features (HumanML3D process_file)


def _facing(joints: np.ndarray, face_joints: tuple[int, int, int, int],
            hip_sign: float = 1.0) -> np.ndarray:
    """Unit horizontal facing direction (T, J, 3) -> (T, 3).

    across = hip_sign (r_hip - l_hip) + (r_shoulder - l_shoulder) points to the body's right;
    facing = up x across. hip_sign = -1 reproduces HumanML3D's inverse kinematics."""
    r_hip, l_hip, r_sdr, l_sdr = face_joints
    across = hip_sign * (joints[:, r_hip] - joints[:, l_hip]) + joints[:, r_sdr] - joints[:, l_sdr]
    across = across / np.linalg.norm(across, axis=-1, keepdims=True)
    return np.cross(np.array([0.0, 1.0, 0.0]), across)


def _root_rotation(joints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """The per-frame root rotation of HumanML3D's inverse kinematics (T, J, 3) -> (T, 4).

    It rotates the smoothed facing onto +Z (so it is the inverse of the body's heading).
    note: three public-code facts kept so features match the published data: the hip
    vector enters with the wrong sign, the facing is Gaussian-smoothed over the whole clip
    (sigma 20 frames, radius 80, 'nearest' padding), and frame 0 is forced to identity."""
    forward = _facing(joints, skeleton.face_joints, hip_sign=-1.0)  # (T, 3)
    forward = gaussian_filter1d(forward, sigma=20, axis=0, mode="nearest")
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    root_quat = qbetween(forward, np.broadcast_to([0.0, 0.0, 1.0], forward.shape))
    root_quat[0] = [1.0, 0.0, 0.0, 0.0]
    return root_quat


def _inverse_kinematics(joints: np.ndarray, root_quat: np.ndarray,
                        skeleton: Skeleton) -> np.ndarray:
    """Local joint rotations (T, J, 4) that turn each raw offset onto its bone.

    HumanML3D walks each chain: the bone's global rotation is G = qbetween(raw offset, bone
    direction), the local rotation is inverse(previous G) * G, and "previous" for the first
    bone of a chain is the root rotation, also for the arm chains that start at the spine
    (as the public code does). Since R * (R^-1 G) = G, all bones are done at once here."""
    offsets = np.asarray(skeleton.raw_offsets, dtype=np.float64)
    parents = skeleton.parents()
    previous = [0] * skeleton.n_joints  # whose global rotation each joint's local one is relative to
    for chain in skeleton.kinematic_chain:
        for parent, child in zip(chain[1:-1], chain[2:]):
            previous[child] = parent
    bones = joints[:, 1:] - joints[:, parents[1:]]  # (T, J-1, 3)
    bones = bones / np.linalg.norm(bones, axis=-1, keepdims=True)
    globals_ = np.concatenate([root_quat[:, None],
                               qbetween(np.broadcast_to(offsets[1:], bones.shape), bones)], axis=1)
    local = _qmul(_qinv(globals_[:, previous[1:]]), globals_[:, 1:])  # (T, J-1, 4)
    return np.concatenate([root_quat[:, None], local], axis=1)  # (T, J, 4)


def joints_to_features(joints: np.ndarray, skeleton: Skeleton = T2M) -> np.ndarray:
    """HumanML3D features from joint positions: (T, J, 3) -> (T-1, D) float32.

    Steps of the public `process_file` (without its retargeting, see the module docstring):
    put on the floor, move the root's first xz to the origin, turn the first frame to face
    +Z, detect foot contacts, then root / ric / 6D rotation / velocity features."""
    J, T = skeleton.n_joints, len(joints)
    assert joints.ndim == 3 and joints.shape[1:] == (J, 3), \
        f"{skeleton.name} joints are (T, {J}, 3), got {joints.shape}"
    assert T >= 2, "features are frame differences: need at least 2 frames"
    if not np.isfinite(joints).all():
        raise ValueError("joints_to_features: joint positions contain NaN or inf")
    pos = np.array(joints, dtype=np.float64)  # (T, J, 3), a copy

    # 1. Floor at the lowest joint of the clip; root's first xz at the origin.
    pos[..., 1] -= pos[..., 1].min()
    pos -= pos[0, 0] * np.array([1.0, 0.0, 1.0])
    # 2. All clips initially face +Z: rotate by the first frame's (unsmoothed) facing.
    forward_init = _facing(pos[:1], skeleton.face_joints)  # (1, 3)
    forward_init /= np.linalg.norm(forward_init, axis=-1, keepdims=True)
    pos = _qrot(qbetween(forward_init, np.array([[0.0, 0.0, 1.0]]))[:, None], pos)  # (T, J, 3)

    # 3. Foot contacts: squared displacement per frame below the threshold.
    feet = list(skeleton.foot_left) + list(skeleton.foot_right)
    step = ((pos[1:, feet] - pos[:-1, feet]) ** 2).sum(-1)  # (T-1, 4)
    contacts = (step < skeleton.foot_threshold).astype(np.float64)

    # 4. Root rotation r (inverse heading, smoothed) and the 6D joint rotations.
    r_rot = _root_rotation(pos, skeleton)  # (T, 4)
    cont6d = _quat_to_cont6d(_inverse_kinematics(pos, r_rot, skeleton))  # (T, J, 6)

    # 5. Root: angular velocity = arcsin of the y-component of r_{t+1} r_t^-1 (the half
    # angle; note: no sign fix, quirk (d)); linear velocity rotated into the frame of t+1.
    r_vel = _qmul(r_rot[1:], _qinv(r_rot[:-1]))  # (T-1, 4)
    root_ang = np.arcsin(r_vel[:, 2:3])  # (T-1, 1)
    root_lin = _qrot(r_rot[1:], pos[1:, 0] - pos[:-1, 0])[:, [0, 2]]  # (T-1, 2)
    root_y = pos[:-1, 0, 1:2]  # (T-1, 1)

    # 6. ric: positions relative to the root's xz, rotated into the root frame.
    local = pos - pos[:, :1] * np.array([1.0, 0.0, 1.0])
    ric = _qrot(r_rot[:, None], local)[:, 1:].reshape(T, -1)  # (T, 3(J-1))
    # 7. Joint velocities rotated by the root rotation of the earlier frame.
    vel = _qrot(r_rot[:-1, None], pos[1:] - pos[:-1]).reshape(T - 1, -1)  # (T-1, 3J)

    features = np.concatenate([root_ang, root_lin, root_y, ric[:-1],
                               cont6d[:-1, 1:].reshape(T - 1, -1), vel, contacts], axis=-1)
    assert features.shape == (T - 1, skeleton.feat_dim)
    return features.astype(np.float32)


# ----------------------------------------------------------------------------
# features -> joints (HumanML3D recover_from_ric), torch


def _rotate_y(c: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate v (..., 3) about +Y by the angle with cosine c and sine s (...):
    x' = x c + z s, z' = z c - x s."""
    x, y, z = v.unbind(-1)
    return torch.stack([x * c + z * s, y, z * c - x * s], dim=-1)


def features_to_joints(features: torch.Tensor, n_joints: int = 22) -> torch.Tensor:
    """Joint positions from features: (..., T, D) -> (..., T, J, 3), differentiable.

    theta_t = sum_{s<t} f[s, 0] is the root's half-angle, so the root frame is turned by
    phi_t = 2 theta_t about Y relative to frame 0; root xz = sum_{s<t} R_y(-phi_{s+1}) f[s, 1:3];
    root y = f[t, 3]; joint j = R_y(-phi_t) ric_j + root xz."""
    assert torch.is_tensor(features), "features_to_joints takes a torch tensor (use torch.from_numpy)"
    J = n_joints
    assert features.shape[-1] == 12 * J - 1, \
        f"{J} joints need {12 * J - 1}-d features, got {features.shape[-1]}"
    T = features.shape[-2]
    zero = torch.zeros_like(features[..., :1, 0])  # (..., 1)
    # theta_t = sum_{s<t} f[s, 0] (exclusive cumulative sum); phi = 2 theta.
    phi = 2.0 * torch.cat([zero, torch.cumsum(features[..., :-1, 0], dim=-1)], dim=-1)  # (..., T)
    c, s = torch.cos(phi), -torch.sin(phi)  # R_y(-phi)
    # Root xz: the velocity stored in row t belongs to the step t -> t+1, in the frame of t+1.
    vel = features[..., :-1, 1:3]  # (..., T-1, 2)
    vel3 = torch.stack([vel[..., 0], torch.zeros_like(vel[..., 0]), vel[..., 1]], dim=-1)
    step = _rotate_y(c[..., 1:], s[..., 1:], vel3)  # (..., T-1, 3)
    root_xz = torch.cumsum(torch.cat([torch.zeros_like(step[..., :1, :]), step], dim=-2), dim=-2)
    root = torch.stack([root_xz[..., 0], features[..., 3], root_xz[..., 2]], dim=-1)  # (..., T, 3)
    # Root-relative joints back to the world frame, then shifted by the root's xz.
    ric = features[..., 4:4 + 3 * (J - 1)].reshape(features.shape[:-1] + (J - 1, 3))
    joints = _rotate_y(c[..., None], s[..., None], ric)  # (..., T, J-1, 3)
    joints = joints + (root * root.new_tensor([1.0, 0.0, 1.0]))[..., None, :]
    assert joints.shape[-3] == T
    return torch.cat([root[..., None, :], joints], dim=-2)  # (..., T, J, 3)


# ----------------------------------------------------------------------------
# Dataset reader (HumanML3D layout)


def load_array(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    """A numeric .npy file, read without pickle (mmap: memory-mapped, for its shape): any failure
    (missing, empty, truncated, not an .npy, pickled objects, not numbers) is a ValueError naming
    the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} is missing")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # the .npy magic string
            raise ValueError(f"{path}: not an .npy file ({what}; empty or foreign bytes)")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # numpy's words for truncated / foreign bytes
        raise ValueError(f"{path}: not a readable .npy {what} ({type(err).__name__}: {err})") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{path}: {what} must hold numbers, got dtype {array.dtype}")
    return array


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file; missing or not UTF-8 is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} is missing")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def _load_motion(path: Path, feat_dim: int) -> np.ndarray:
    """One feature file (T, D), checked: the right width and finite values."""
    motion = load_array(path, "motion file")
    if motion.ndim != 2 or motion.shape[1] != feat_dim:
        raise ValueError(f"{path}: expected features of shape (T, {feat_dim}), got {motion.shape}")
    if not np.isfinite(motion).all():
        raise ValueError(f"{path}: motion contains NaN or inf")
    return motion.astype(np.float32)


def _read_captions(path: Path) -> list[tuple[str, float, float, str]]:
    """Lines `caption#word/POS ...#start#end` -> [(caption, start_s, end_s, "word/POS ...")];
    0#0 = the whole clip."""
    captions = []
    for number, line in enumerate(read_lines(path, "caption file"), start=1):
        if not line.strip():
            continue
        parts = line.strip().split("#")
        if len(parts) != 4:
            raise ValueError(f"{path}:{number}: expected 'caption#tokens#start#end', got {line!r}")
        caption = parts[0].strip()
        if not caption:
            raise ValueError(f"{path}:{number}: empty caption")
        try:
            start, end = float(parts[2] or 0.0), float(parts[3] or 0.0)
        except ValueError:
            raise ValueError(f"{path}:{number}: start and end must be seconds, got {parts[2]!r}, {parts[3]!r}") from None
        # HumanML3D writes nan for a missing time; it means the clip's edge.
        captions.append((caption, 0.0 if math.isnan(start) else start, 0.0 if math.isnan(end) else end,
                         parts[1].strip()))
    if not captions:
        raise ValueError(f"{path}: no captions")
    return captions


def fits_length(n: int, min_len: int, max_len: int, unit: int = 4) -> bool:
    """HumanML3D's length rule for an item of n feature rows: at least min_len, and at most
    max_len once cropped to a multiple of unit."""
    return n >= min_len and (n // unit) * unit <= max_len


def _read_names(root: Path, split: str) -> list[str]:
    path = root / f"{split}.txt"
    return [line.strip() for line in read_lines(path, f"split file (train/val/test.txt in {root})") if line.strip()]


class MotionTextDataset(torch.utils.data.Dataset):
    """One split of a HumanML3D-layout folder: normalized motions with one caption each.

    A caption with a `#start#end` span (seconds) describes that slice of its motion and
    becomes its own item (named `NAME_start_end`), as in HumanML3D's loader. Items shorter
    than `min_len` frames, or longer than `max_len` after cropping to a multiple of `unit`,
    are skipped with a printed count (for the defaults: kept iff 40 <= T < 200, HumanML3D's
    rule). Each `__getitem__` crops to a multiple of `unit` at a random offset and, with
    `random_caption`, draws one of the item's captions (both from a generator seeded by
    `seed`); without it, the first caption."""

    def __init__(self, root, split: str, min_len: int = 40, max_len: int = 196, unit: int = 4,
                 skeleton: Skeleton = T2M, random_caption: bool = True, seed: int = 0):
        root = Path(root)
        self.root, self.split, self.skeleton = root, split, skeleton
        self.unit, self.random_caption = unit, random_caption
        self.mean = self._load_stat(root / "Mean.npy")
        self.std = self._load_stat(root / "Std.npy")
        if (self.std <= 0).any():
            raise ValueError(f"{root / 'Std.npy'}: standard deviations must be positive")
        self._rng = np.random.default_rng(seed)
        self.items: list[tuple[str, np.ndarray, list[str]]] = []  # (name, (T, D) raw motion, captions)
        self.tags: dict[str, str] = {}  # caption -> its "word/POS ..." field (Guo et al.'s evaluator)
        total = 0
        for name in _read_names(root, split):
            motion = _load_motion(root / "new_joint_vecs" / f"{name}.npy", skeleton.feat_dim)
            spans: dict[tuple[float, float], list[str]] = {}
            for caption, start, end, tags in _read_captions(root / "texts" / f"{name}.txt"):
                spans.setdefault((start, end), []).append(caption)
                self.tags.setdefault(caption, tags)
            for (start, end), captions in spans.items():
                total += 1
                if (start, end) == (0.0, 0.0):
                    item_name, clip = name, motion
                else:  # a sub-span: times in seconds at the skeleton's frame rate
                    item_name = f"{name}_{start:g}_{end:g}"
                    clip = motion[int(start * skeleton.fps):int(end * skeleton.fps)]
                if fits_length(len(clip), min_len, max_len, unit):
                    self.items.append((item_name, clip, captions))
        print(f"[data] {split}: {len(self.items)} clips, skipped {total - len(self.items)} "
              f"outside the length rules ({min_len}..{max_len} frames)")

    def _load_stat(self, path: Path) -> np.ndarray:
        stat = load_array(path, "per-dimension statistic (Mean.npy / Std.npy)").astype(np.float32)
        if stat.shape != (self.skeleton.feat_dim,) or not np.isfinite(stat).all():
            raise ValueError(f"{path}: expected {self.skeleton.feat_dim} finite values, "
                             f"got shape {stat.shape}")
        return stat

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        """Restart the crop/caption generator, as if the dataset had just been opened with `seed`."""
        self._rng = np.random.default_rng(seed)

    def fork(self) -> "MotionTextDataset":
        """The same items (shared, not copied) with a copy of the crop/caption generator in its
        current state: the fork draws what the original will draw next, and leaves it where it is."""
        twin = copy.copy(self)
        twin._rng = copy.deepcopy(self._rng)
        return twin

    def subset(self, indices, seed: int = 0) -> "MotionTextDataset":
        """The items `indices` of this split (in that order) as a dataset of their own, with its
        own crop/caption generator seeded by `seed`; statistics and caption tags are shared."""
        part = copy.copy(self)
        part.items = [self.items[int(i)] for i in indices]
        part.reseed(seed)
        return part

    def captions(self) -> list[str]:
        """Every caption of the split, item by item (to cache text embeddings once)."""
        return [caption for _, _, captions in self.items for caption in captions]

    def normalize(self, x):
        """(x - Mean) / Std over the last dim, numpy or torch (..., D)."""
        if torch.is_tensor(x):
            return (x - x.new_tensor(self.mean)) / x.new_tensor(self.std)
        return (x - self.mean) / self.std

    def denormalize(self, x):
        if torch.is_tensor(x):
            return x * x.new_tensor(self.std) + x.new_tensor(self.mean)
        return x * self.std + self.mean

    def __getitem__(self, i: int) -> dict:
        name, motion, captions = self.items[i]
        length = (len(motion) // self.unit) * self.unit
        offset = int(self._rng.integers(0, len(motion) - length + 1))  # HumanML3D's random crop
        pick = int(self._rng.integers(len(captions))) if self.random_caption else 0
        caption = captions[pick]
        clip = self.normalize(motion[offset:offset + length])  # (T, D)
        return {"motion": torch.from_numpy(clip).float(), "length": length,
                "caption": caption, "name": name}


def collate(batch: list[dict]) -> dict:
    """Pad motions with zeros to the longest in the batch:
    {"motion": (B, Tmax, D), "lengths": (B,), "caption": [str], "name": [str]}."""
    lengths = torch.tensor([item["length"] for item in batch], dtype=torch.long)  # (B,)
    D = batch[0]["motion"].shape[-1]
    motion = torch.zeros(len(batch), int(lengths.max()), D)  # (B, Tmax, D)
    for b, item in enumerate(batch):
        motion[b, :item["length"]] = item["motion"]
    return {"motion": motion, "lengths": lengths,
            "caption": [item["caption"] for item in batch], "name": [item["name"] for item in batch]}


def dataset_summary(root) -> dict:
    """Counts for a HumanML3D-layout folder: motions, captions, vocabulary, lengths, splits."""
    root = Path(root)
    files = sorted((root / "new_joint_vecs").glob("*.npy"))
    if not files:
        raise ValueError(f"{root / 'new_joint_vecs'}: no motion files")
    lengths = [load_array(f, "motion file", mmap=True).shape[0] for f in files]
    captions = [c for f in files for c, *_ in _read_captions(root / "texts" / f"{f.stem}.txt")]
    vocabulary = {w for c in captions for w in re.findall(r"[a-z]+", c.lower())}
    histogram = Counter(20 * (n // 20) for n in lengths)  # 1-second buckets at 20 fps
    return {
        "motions": len(files),
        "captions": len(captions),
        "vocabulary": len(vocabulary),
        "frames_total": int(sum(lengths)),
        "length_histogram": {f"{lo}-{lo + 19}": histogram[lo] for lo in sorted(histogram)},
        "splits": {s: len(_read_names(root, s)) for s in ("train", "val", "test", "styles")
                   if (root / f"{s}.txt").exists()},
    }


def format_summary(summary: dict) -> str:
    """dataset_summary as indented lines, the length histogram drawn with #."""
    lines = [f"  {key}: {value}" for key, value in summary.items() if key != "length_histogram"]
    hist = summary["length_histogram"]
    top = max(hist.values()) if hist else 1
    lines += ["  length histogram (frames: motions):"]
    lines += [f"    {bucket:>9}: {count:6d} {'#' * max(1, round(40 * count / top))}" for bucket, count in hist.items()]
    return "\n".join(lines)


def feature_slices(n_joints: int = 22) -> dict[str, slice]:
    """The seven groups of the feature vector (HumanML3D's `cal_mean_variance` comments)."""
    J = n_joints
    edges = np.cumsum([0, 1, 2, 1, 3 * (J - 1), 6 * (J - 1), 3 * J, 4])
    names = ["root_rot_velocity", "root_linear_velocity", "root_y", "ric", "rot", "local_velocity",
             "foot_contact"]
    return {name: slice(int(lo), int(hi)) for name, lo, hi in zip(names, edges[:-1], edges[1:])}


def group_std(std: np.ndarray, n_joints: int = 22) -> np.ndarray:
    """Std.npy as HumanML3D writes it: every dimension of a group gets the mean of the
    group's per-dimension standard deviations (so normalization keeps the relative scale of
    the dimensions within a group). The published Std.npy has exactly this structure: one
    value per group, no extra weighting."""
    std = std.copy()
    for group in feature_slices(n_joints).values():
        std[group] = std[group].mean()
    return std


# ----------------------------------------------------------------------------
# Writing the layout (synthetic.py's generator and ingest.build_from_joints)


def save_features(root: Path, name: str, features: np.ndarray, skeleton: Skeleton = T2M) -> None:
    """One motion as HumanML3D stores it: new_joint_vecs/NAME.npy, the features (T-1, D), and
    new_joints/NAME.npy, the joints recovered from them (T-1, J, 3): aligned, one frame fewer."""
    np.save(root / "new_joint_vecs" / f"{name}.npy", features)
    np.save(root / "new_joints" / f"{name}.npy",
            features_to_joints(torch.from_numpy(features), skeleton.n_joints).numpy())


class FeatureStats:
    """Mean.npy and Std.npy as HumanML3D's `cal_mean_variance`: over every frame of every motion,
    Std group-averaged (`group_std`). Running sums, so motions need not stay in memory."""

    def __init__(self, skeleton: Skeleton = T2M):
        self.skeleton, self.rows = skeleton, 0
        self.sums, self.squares = np.zeros(skeleton.feat_dim), np.zeros(skeleton.feat_dim)

    def add(self, features: np.ndarray) -> None:
        # note: each motion's rows are summed in their own dtype (float32, as the synthetic dataset
        # has always been written) before the float64 running sum; Std keeps ~1e-4 relative error
        self.sums += features.sum(0)  # (D,)
        self.squares += (features.astype(np.float64) ** 2).sum(0)
        self.rows += len(features)

    def save(self, root: Path) -> None:
        mean = self.sums / self.rows
        std = group_std(np.sqrt(np.maximum(self.squares / self.rows - mean ** 2, 0.0)),
                        self.skeleton.n_joints)
        constant = [g for g, sl in feature_slices(self.skeleton.n_joints).items() if std[sl][0] <= 0]
        if constant:
            raise ValueError(f"{root}: feature group(s) {constant} never vary over the motions, so "
                             f"Std.npy would divide by 0; add more varied motions")
        np.save(root / "Mean.npy", mean.astype(np.float32))
        np.save(root / "Std.npy", std.astype(np.float32))


def write_splits(root: Path, names: list[str], shares: tuple[float, float, float],
                 rng: np.random.Generator) -> dict[str, list[str]]:
    """Shuffle names into train/val/test by shares (the test split takes the rest; val at
    least one) and write train.txt, val.txt and test.txt, each sorted."""
    order = [names[k] for k in rng.permutation(len(names))]
    n_train, n_val = int(shares[0] * len(order)), max(1, int(shares[1] * len(order)))
    splits = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
              "test": order[n_train + n_val:]}
    for split, members in splits.items():
        (root / f"{split}.txt").write_text("\n".join(sorted(members)) + "\n")
    return splits
