"""BVH out and in for 22-joint HumanML3D motions: generated motions open in Blender, MotionBuilder
or any other animation tool, and motion capture in BVH becomes t2m joints on HumanML3D's skeleton.

None of the papers in ../shared/seeds/ reads or writes BVH; this file follows the format (Biovision
Hierarchy, as described by Meredith & Maddock, "Motion Capture File Formats Explained", 2001):

    HIERARCHY   a tree of joints; each has an OFFSET from its parent in the rest pose and a list
                of CHANNELS; a leaf ends in an `End Site` with an OFFSET only.
    MOTION      `Frames: T`, `Frame Time: 1/fps`, then one line per frame holding every channel's
                value, joint by joint in the order the joints appear in HIERARCHY.

Forward kinematics composes a joint's rotation channels left to right as matrices (`Zrotation
Yrotation Xrotation` -> M = Rz Ry Rx, on column vectors) and adds its position channels, if any,
to its OFFSET (the root's parent: no rotation, at the origin):

    G_j = G_parent M_j,    p_j = p_parent + G_parent (OFFSET_j + position_j).

Out. Our motions are joint positions only, so the rotations come from inverse kinematics:
1. `rest_offsets`: the rest skeleton facing +Z (+X the body's left, +Y up, the dataset's axes),
   each bone its mean length over the clip, hanging, standing or pointing along an axis; the
   children of the two three-child joints (Pelvis, Spine3) keep the clip's mean shape instead.
2. `write_bvh`: from the root outwards, a one-child joint takes the shortest-arc rotation from
   its rest offset to the observed bone (data.qbetween); a three-child joint the rotation from
   its rest frame to its observed frame. Written in centimetres and degrees.
What is lost (the BVH reproduces the positions exactly only where none of these apply):
- Bone lengths are fixed to the offsets: each bone keeps its direction, its child goes at the
  offset's length.
- Twist about a bone's own axis is not observable from positions: each limb joint takes the
  least rotation from its parent's frame; the five leaves get zero rotations.
- Where a motion deforms the Pelvis or Spine3 triangle, their three children go where the clip's
  mean shape puts them.
Conventions (BVH has no comments, so they are stated here): centimetres (most importers' default),
degrees, SMPL's joint names; the root `Xposition Yposition Zposition Yrotation Xrotation Zrotation`
(heading first: one smooth channel), the others `Zrotation Yrotation Xrotation` (Y, the singular
middle angle, is the twist axis of hanging and standing bones), each unwrapped in time; the root's
OFFSET zero (its position channels are world positions); the leaves keep three zero rotation
channels and an End Site END_SITE_CM further along their bone (some importers drop a zero bone).

In. `read_bvh`: `parse_bvh` (any depth and channel order; a malformed file is a ValueError naming
its line), `bvh_positions` (the forward kinematics above), the 22 t2m joints picked by name
(NAME_TABLE: SMPL, Mixamo / MoMask / LaFAN1, Xsens MVN as in 100STYLE; or a `joint_map`), then
Y up, metres (centimetres if taller than METRES_MAX_HEIGHT) and `fps` frames per second.
`retarget` puts joints on HumanML3D's skeleton as its `uniform_skeleton` (motion_process.py) does:
rotations by the inverse kinematics above, forward kinematics with REFERENCE_BONE_LENGTHS, the
root's path scaled by the reference's right thigh + shin over the clip's; then as its
`process_file`: feet on the floor, the root's first xz at the origin, frame 0 facing +Z.
Differences from HumanML3D's processing:
- Its inverse kinematics turns every bone from an axis, ours gives a three-child joint one
  rotation: where a clip deforms the Pelvis or Spine3 triangle the two differ (rigid: equal).
- The reference bones are measured on its published clip 012314, not on the raw AMASS clip 000021.
note: the BVH loaders of MoMask and LaFAN1 (visualization/BVH_mod.py, lafan1/extract.py) put
position channels in place of the OFFSET, not on top of it; a root with a non-zero OFFSET (as
MoMask's template) then stands elsewhere here, and retarget moves it back to the origin and floor.

Shapes: T frames, J joints (22 for t2m); positions in metres until they are written.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import make_interp_spline
from scipy.spatial.transform import Rotation

import data

CM_PER_M = 100.0
END_SITE_CM = 5.0  # drawn only; no joint beyond the leaves is observed

# t2m joint index -> name (SMPL's body joints in SMPL's order, which t2m's indices follow)
JOINT_NAMES = ("Pelvis", "L_Hip", "R_Hip", "Spine1", "L_Knee", "R_Knee", "Spine2", "L_Ankle",
               "R_Ankle", "Spine3", "L_Foot", "R_Foot", "Neck", "L_Collar", "R_Collar", "Head",
               "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist")

# Joints with three children: joint -> (left child, right child, middle child). Their frame has
# x from the right child to the left one and y towards the middle child (Gram-Schmidt).
BRANCHES = {0: (1, 2, 3), 9: (13, 14, 12)}

# Rest direction of every other bone, by its child joint (the rest pose: standing, arms hanging).
DOWN, UP, LEFT, RIGHT, FORWARD = (0, -1, 0), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1)
REST_DIRECTIONS = {4: DOWN, 5: DOWN, 7: DOWN, 8: DOWN, 10: FORWARD, 11: FORWARD, 6: UP, 9: UP,
                   15: UP, 16: LEFT, 17: RIGHT, 18: DOWN, 19: DOWN, 20: DOWN, 21: DOWN}

ROOT_CHANNELS = ("Xposition", "Yposition", "Zposition", "Yrotation", "Xrotation", "Zrotation")
JOINT_CHANNELS = ("Zrotation", "Yrotation", "Xrotation")
# scipy's upper-case axis strings are intrinsic rotations: "YXZ" -> Ry Rx Rz, BVH's meaning
ROOT_ORDER, JOINT_ORDER = "YXZ", "ZYX"

# HumanML3D's skeleton, bone by bone (child joint 1..21, the bone from its parent), in metres:
# measured on HumanML3D's sample clip new_joints/012314.npy (the README's check file; its lengths
# are constant to 1e-6 m, being clip 000021's skeleton, onto which HumanML3D retargets every clip).
REFERENCE_BONE_LENGTHS = np.array([
    0.103074, 0.109883, 0.131568,  # L_Hip, R_Hip, Spine1 (from Pelvis)
    0.393623, 0.390188, 0.143190,  # L_Knee, R_Knee, Spine2
    0.432433, 0.425643, 0.057365,  # L_Ankle, R_Ankle, Spine3
    0.143382, 0.149419, 0.219360,  # L_Foot, R_Foot, Neck
    0.137487, 0.143383, 0.103039,  # L_Collar, R_Collar, Head
    0.131614, 0.122984, 0.256840,  # L_Shoulder, R_Shoulder, L_Elbow
    0.263092, 0.266012, 0.269876,  # R_Elbow, L_Wrist, R_Wrist
])

# Joint names of other skeletons, for the left side and the spine; the right side is the left one
# with left -> right (L_ -> R_, l_ -> r_). Matched in lower case after any "namespace:" prefix
# (mixamorig:Hips, mixamorig1:Hips); for each t2m joint the first candidate the file has wins.
# Sources: SMPL as write_bvh names them, and smplx's lower-case names; MoMask's BVH template
# (visualization/data/template.bvh) and LaFAN1 (as GMR's loader reads it) say LeftToe, Mixamo
# LeftToeBase; Xsens MVN's export (Chest..Chest4, LeftCollar..LeftWrist) is 100STYLE's skeleton.
#  t2m joint     SMPL                           Mixamo, MoMask, LaFAN1       Xsens MVN, 100STYLE
NAME_TABLE = (
    ("Pelvis",     ("pelvis",),                   ("hips",),                   ("hips",)),
    ("L_Hip",      ("l_hip", "left_hip"),         ("leftupleg",),              ("lefthip",)),
    ("L_Knee",     ("l_knee", "left_knee"),       ("leftleg",),                ("leftknee",)),
    ("L_Ankle",    ("l_ankle", "left_ankle"),     ("leftfoot",),               ("leftankle",)),
    ("L_Foot",     ("l_foot", "left_foot"),       ("lefttoebase", "lefttoe"),  ("lefttoe",)),
    ("Spine1",     ("spine1",),                   ("spine",),                  ("chest",)),
    ("Spine2",     ("spine2",),                   ("spine1",),                 ("chest2",)),
    ("Spine3",     ("spine3",),                   ("spine2",),                 ("chest4", "chest3")),
    ("Neck",       ("neck",),                     ("neck",),                   ("neck",)),
    ("Head",       ("head",),                     ("head",),                   ("head",)),
    ("L_Collar",   ("l_collar", "left_collar"),   ("leftshoulder",),           ("leftcollar",)),
    ("L_Shoulder", ("l_shoulder", "left_shoulder"), ("leftarm",),              ("leftshoulder",)),
    ("L_Elbow",    ("l_elbow", "left_elbow"),     ("leftforearm",),            ("leftelbow",)),
    ("L_Wrist",    ("l_wrist", "left_wrist"),     ("lefthand",),               ("leftwrist",)),
)
SKELETONS = ("smpl", "mixamo", "xsens")  # NAME_TABLE's columns

CHANNEL_NAMES = ("Xposition", "Yposition", "Zposition", "Xrotation", "Yrotation", "Zrotation")
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # -90 deg about X
METRES_MAX_HEIGHT = 3.0  # a body's head-to-ankle chain: ~1.6 in metres, ~160 in centimetres
STANDING_CHAIN = (15, 12, 9, 6, 3, 0, 1, 4, 7)  # Head down the spine to the Pelvis, left leg to the ankle


def _children(parents: list[int]) -> list[list[int]]:
    children = [[] for _ in parents]
    for j, p in enumerate(parents[1:], start=1):
        children[p].append(j)
    return children


def _frame(across: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Orthonormal frame (..., 3, 3), columns x = across, y = up made perpendicular to x, z = x cross y."""
    x = across / np.linalg.norm(across, axis=-1, keepdims=True)
    y = up - (up * x).sum(-1, keepdims=True) * x
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def _branch_frame(points: np.ndarray, joint: int) -> np.ndarray:
    """The frame of a three-child joint from positions (..., J, 3) -> (..., 3, 3)."""
    left, right, middle = BRANCHES[joint]
    return _frame(points[..., left, :] - points[..., right, :],
                  points[..., middle, :] - points[..., joint, :])


def _rest_pose(offsets: np.ndarray) -> np.ndarray:
    """Joint positions (J, 3) of the rest pose: offsets summed along the chains, root at 0."""
    pose = np.zeros_like(offsets)
    for j, p in enumerate(data.T2M.parents()[1:], start=1):  # parents come before children
        pose[j] = pose[p] + offsets[j]
    return pose


def _check(joints: np.ndarray, skeleton: data.Skeleton) -> np.ndarray:
    """Bad input is refused, never fixed: the t2m skeleton, shape (T, 22, 3), finite, no zero bone."""
    if skeleton.name != data.T2M.name:
        raise ValueError(f"bvh: BVH export knows the t2m (HumanML3D) skeleton only, "
                         f"got {skeleton.name!r}")
    joints = np.asarray(joints, dtype=np.float64)
    J = data.T2M.n_joints
    if joints.ndim != 3 or joints.shape[1:] != (J, 3) or len(joints) == 0:
        raise ValueError(f"bvh: joints must be (T, {J}, 3) with T >= 1, got {joints.shape}")
    if not np.isfinite(joints).all():
        raise ValueError("bvh: joints contain NaN or inf")
    parents = data.T2M.parents()
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, parents[1:]], axis=-1)  # (T, J-1)
    if lengths.min() < 1e-6:
        t, j = np.unravel_index(lengths.argmin(), lengths.shape)
        raise ValueError(f"bvh: bone {JOINT_NAMES[parents[j + 1]]}->{JOINT_NAMES[j + 1]} "
                         f"has zero length at frame {t}")
    _check_branches(joints, "joints")
    return joints


def _check_branches(points: np.ndarray, what: str) -> None:
    """A three-child joint has no frame where its left-right line is parallel to its middle bone."""
    for joint, (left, right, middle) in BRANCHES.items():
        across = points[:, left] - points[:, right]  # (T, 3)
        up = points[:, middle] - points[:, joint]
        # |across x up| = sin(angle) |across| |up|: neither the sine nor a length may vanish
        cross = np.linalg.norm(np.cross(across, up), axis=-1)  # (T,)
        bad = cross <= 1e-6 * np.linalg.norm(across, axis=-1) * np.linalg.norm(up, axis=-1)
        if bad.any():
            t = int(np.argmax(bad))
            raise ValueError(f"bvh: {what} frame {t}: {JOINT_NAMES[left]}-{JOINT_NAMES[right]} "
                             f"is parallel to {JOINT_NAMES[joint]}->{JOINT_NAMES[middle]}, so "
                             f"{JOINT_NAMES[joint]} has no orientation")


def rest_offsets(joints: np.ndarray) -> np.ndarray:
    """The rest skeleton of a clip (T, 22, 3) -> offsets (22, 3) in metres, row 0 zero: each bone
    at its mean length along its rest direction (see the module docstring)."""
    joints = _check(joints, data.T2M)
    parents = data.T2M.parents()
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, parents[1:]], axis=-1).mean(0)  # (J-1,)
    directions = np.zeros((data.T2M.n_joints, 3))  # (J, 3)
    for child, direction in REST_DIRECTIONS.items():
        directions[child] = direction
    for joint, kids in BRANCHES.items():
        frame = _branch_frame(joints, joint)  # (T, 3, 3)
        for child in kids:  # the bone in the joint's own frame: frame^T bone, averaged over frames
            local = np.einsum("tij,ti->tj", frame, joints[:, child] - joints[:, joint])  # (T, 3)
            directions[child] = local.mean(0)
    directions[1:] /= np.linalg.norm(directions[1:], axis=-1, keepdims=True)
    return np.concatenate([np.zeros((1, 3)), directions[1:] * lengths[:, None]])


def _shortest_arc(rest: np.ndarray, bone: np.ndarray) -> Rotation:
    """The least rotation (T,) turning direction rest (3,) onto bones (T, 3)."""
    q = data.qbetween(np.broadcast_to(rest, bone.shape), bone)  # (T, 4) as (w, x, y, z)
    return Rotation.from_quat(q[:, [1, 2, 3, 0]])  # note: scipy's quaternions are (x, y, z, w)


def _local_rotations(joints: np.ndarray, offsets: np.ndarray) -> list[Rotation]:
    """Inverse kinematics: per joint, its rotation relative to its parent, a Rotation of T frames,
    such that forward kinematics with `offsets` (22, 3) puts every bone along the observed one."""
    T = len(joints)
    parents = data.T2M.parents()
    children = _children(parents)
    rest_pose = _rest_pose(offsets)  # (J, 3)
    world, local = [], []  # G_j and M_j = G_parent^-1 G_j, in joint order (parents come first)
    for j in range(data.T2M.n_joints):
        parent = world[parents[j]] if j else Rotation.identity(T)
        if j in BRANCHES:  # the rotation between the rest frame and the observed frame
            observed, rest = _branch_frame(joints, j), _branch_frame(rest_pose, j)  # (T, 3, 3), (3, 3)
            world.append(Rotation.from_matrix(observed @ rest.T))
        elif children[j]:  # one child: shortest arc in the parent's frame, so no twist of its own
            child = children[j][0]
            bone = parent.inv().apply(joints[:, child] - joints[:, j])  # (T, 3) in the parent's frame
            world.append(parent * _shortest_arc(offsets[child], bone))
        else:  # a leaf: nothing to orient
            world.append(parent)
        local.append(parent.inv() * world[j])
    return local


def forward_kinematics(parents: list[int], local: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Joint positions (T, J, 3) from local rotations M_j (T, J, 3, 3) and offsets (T, J, 3), the
    root's row being its position: G_j = G_parent M_j, p_j = p_parent + G_parent offset_j."""
    assert all(p < j for j, p in enumerate(parents)), "forward kinematics needs parents before children"
    world = np.empty_like(local)  # (T, J, 3, 3) G_j
    positions = np.empty(offsets.shape)  # (T, J, 3)
    for j, parent in enumerate(parents):
        if parent < 0:
            world[:, j], positions[:, j] = local[:, j], offsets[:, j]
        else:
            world[:, j] = world[:, parent] @ local[:, j]
            positions[:, j] = positions[:, parent] + np.einsum("tik,tk->ti", world[:, parent], offsets[:, j])
    return positions


def _euler_degrees(rotation: Rotation, order: str) -> np.ndarray:
    """(T,) rotations -> (T, 3) angles in degrees in `order`, each channel unwrapped over time."""
    return np.degrees(np.unwrap(rotation.as_euler(order), axis=0))


def _hierarchy(offsets_cm: np.ndarray, children: list[list[int]]) -> tuple[list[str], list[int]]:
    """HIERARCHY lines and the joint order of the MOTION columns (depth first, as written)."""
    lines, order = ["HIERARCHY"], []

    def numbers(v) -> str:
        return " ".join(f"{x:.6f}" for x in v)

    def write(j: int, pad: str) -> None:
        order.append(j)
        channels = ROOT_CHANNELS if j == 0 else JOINT_CHANNELS
        lines.extend([f"{pad}{'ROOT' if j == 0 else 'JOINT'} {JOINT_NAMES[j]}", pad + "{",
                      f"{pad}  OFFSET {numbers(offsets_cm[j])}",
                      f"{pad}  CHANNELS {len(channels)} {' '.join(channels)}"])
        for child in children[j]:
            write(child, pad + "  ")
        if not children[j]:  # continue the leaf's bone by END_SITE_CM
            tip = END_SITE_CM * offsets_cm[j] / np.linalg.norm(offsets_cm[j])
            lines.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {numbers(tip)}", pad + "  }"])
        lines.append(pad + "}")

    write(0, "")
    return lines, order


def write_bvh(joints: np.ndarray, path, fps: float = data.FPS, skeleton: data.Skeleton = data.T2M,
              offsets: np.ndarray | None = None) -> Path:
    """Write joint positions (T, 22, 3) in metres (y up, the dataset's axes) as a BVH file in
    centimetres and degrees, at `fps` frames per second; returns the path.

    `offsets` (22, 3) in metres is the rest skeleton (row 0 ignored); by default
    `rest_offsets(joints)`, the clip's own. Pass one skeleton to several calls to export motions
    on the same bones. Only the t2m skeleton is known (ValueError for another)."""
    joints = _check(joints, skeleton)
    if not fps > 0:
        raise ValueError(f"write_bvh: fps must be positive, got {fps}")
    if offsets is None:
        offsets = rest_offsets(joints)
    offsets = np.asarray(offsets, dtype=np.float64)
    J = data.T2M.n_joints
    if offsets.shape != (J, 3) or not np.isfinite(offsets).all() \
            or np.linalg.norm(offsets[1:], axis=-1).min() < 1e-6:
        raise ValueError(f"write_bvh: offsets must be ({J}, 3), finite, every bone (rows 1..{J - 1}) "
                         f"longer than zero, got shape {offsets.shape}")
    offsets = np.concatenate([np.zeros((1, 3)), offsets[1:]])  # the root's OFFSET is zero
    _check_branches(_rest_pose(offsets)[None], "offsets")

    # 1. Rotations by inverse kinematics, then the MOTION columns in HIERARCHY order.
    rotations = _local_rotations(joints, offsets)
    lines, order = _hierarchy(CM_PER_M * offsets, _children(data.T2M.parents()))
    columns = [CM_PER_M * joints[:, 0]]  # (T, 3) root position
    for j in order:
        columns.append(_euler_degrees(rotations[j], ROOT_ORDER if j == 0 else JOINT_ORDER))
    values = np.round(np.concatenate(columns, axis=1), 4) + 0.0  # (T, 6 + 3 (J-1)); + 0.0: no "-0"

    # 2. The text.
    lines += ["MOTION", f"Frames: {len(joints)}", f"Frame Time: {1.0 / fps:.6f}"]
    lines += [" ".join(f"{v:.4f}" for v in row) for row in values]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------
# Reading: the file -> every joint's positions


@dataclass
class BVH:
    """A parsed BVH file: joints in file order (a parent before its children), End Sites left out."""
    names: list[str]
    parents: list[int]               # index of each joint's parent, -1 for the root
    offsets: np.ndarray              # (J, 3) OFFSETs, in the file's units
    channels: list[tuple[str, ...]]  # each joint's channels as listed (CHANNEL_NAMES spellings)
    frames: np.ndarray               # (T, C) channel values, C = sum of the joints' channel counts
    frame_time: float                # seconds

    @property
    def fps(self) -> float:
        """1 / Frame Time, a whole number where within 0.1% of one (files write 1/30 s as 0.033333)."""
        fps = 1.0 / self.frame_time
        return float(round(fps)) if abs(fps - round(fps)) < 1e-3 * fps else fps


class _Words:
    """HIERARCHY's words with their line numbers, taken a line at a time; errors name file:line."""

    def __init__(self, path: Path, lines: list[str]):
        self.path, self.end = path, len(lines) + 1  # end: the MOTION line, just past HIERARCHY
        self.items = [(word, number) for number, line in enumerate(lines, start=1) for word in line.split()]
        self.i = 0

    def error(self, message: str, line: int | None = None) -> ValueError:
        if line is None:
            line = self.items[self.i][1] if self.i < len(self.items) else self.end
        return ValueError(f"{self.path}:{line}: {message}")

    def peek(self) -> str | None:
        return self.items[self.i][0] if self.i < len(self.items) else None

    def line(self, what: str) -> tuple[int, list[str]]:
        """The next line's number and words (up to a '{', which stays), checked to start with `what`."""
        if self.peek() != what.split()[0]:
            raise self.error(f"expected {what}, got {self.peek() or 'MOTION'!r}")
        number, words = self.items[self.i][1], []
        while self.i < len(self.items) and self.items[self.i][1] == number and self.items[self.i][0] != "{":
            words.append(self.items[self.i][0])
            self.i += 1
        return number, words

    def brace(self, brace: str, joint: str) -> None:
        if self.peek() != brace:
            raise self.error(f"unbalanced braces: expected {brace!r} for {joint}, "
                             f"got {self.peek() or 'MOTION'!r}")
        self.i += 1

    def offset(self) -> np.ndarray:
        number, words = self.line("OFFSET")
        if len(words) != 4:
            raise self.error(f"OFFSET takes 3 numbers, got {len(words) - 1}", number)
        return _floats(words[1:], self.path, number)


def _floats(words: list[str], path: Path, line: int) -> np.ndarray:
    """Words -> finite float64 numbers, or a ValueError naming path:line and the bad word."""
    values = np.empty(len(words))
    for k, word in enumerate(words):
        try:
            values[k] = float(word)
        except ValueError:
            raise ValueError(f"{path}:{line}: {word!r} is not a number") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{path}:{line}: NaN or inf among the values")
    return values


def _channels(words: _Words, joint: str) -> tuple[str, ...]:
    """`CHANNELS n name ...` -> the n names, spelled as CHANNEL_NAMES (files vary in case)."""
    number, line = words.line("CHANNELS")
    spelled = {name.lower(): name for name in CHANNEL_NAMES}
    if len(line) < 2 or not line[1].isdigit() or int(line[1]) != len(line) - 2:
        raise words.error(f"CHANNELS of {joint}: a count then that many names, got {' '.join(line)!r}",
                          number)
    names = [spelled.get(name.lower()) for name in line[2:]]
    if None in names or len(set(names)) != len(names):
        raise words.error(f"CHANNELS of {joint}: each at most once among {', '.join(CHANNEL_NAMES)}, "
                          f"got {' '.join(line[2:])!r}", number)
    return tuple(names)


def _joint(words: _Words, parent: int, joints: list) -> None:
    """One ROOT or JOINT block, its children depth first: appends (name, parent, offset, channels)."""
    number, line = words.line("ROOT" if parent < 0 else "JOINT")
    if len(line) < 2:
        raise words.error(f"{line[0]} without a name", number)
    name, j = " ".join(line[1:]), len(joints)
    words.brace("{", f"joint {name!r}")
    joints.append((name, parent, words.offset(), _channels(words, repr(name))))
    while words.peek() != "}":
        if words.peek() == "JOINT":
            _joint(words, j, joints)
        elif words.peek() == "End":
            number, line = words.line("End Site")
            if line != ["End", "Site"]:
                raise words.error(f"expected 'End Site', got {' '.join(line)!r}", number)
            words.brace("{", f"the End Site of {name!r}")
            words.offset()
            words.brace("}", f"the End Site of {name!r}")
        elif words.peek() is None:
            raise words.error(f"unbalanced braces: joint {name!r} (line {number}) is not closed "
                              f"before MOTION")
        else:
            raise words.error(f"expected JOINT, End Site or '}}' in joint {name!r}, got {words.peek()!r}")
    words.brace("}", f"joint {name!r}")


def _motion(path: Path, lines: list[str], first: int, n_channels: int) -> tuple[np.ndarray, float]:
    """MOTION's lines (numbered from `first`) -> frames (T, C) and the frame time in seconds."""
    rows = [(number, line.strip()) for number, line in enumerate(lines, start=first) if line.strip()]
    if len(rows) < 2:
        raise ValueError(f"{path}:{first - 1}: expected 'Frames: T' and 'Frame Time: seconds' after MOTION")
    (at, frames_line), (time_at, time_line), body = rows[0], rows[1], rows[2:]
    count = re.fullmatch(r"Frames:\s*(\d+)", frames_line)
    if count is None:
        raise ValueError(f"{path}:{at}: expected 'Frames: T', got {frames_line!r}")
    if int(count[1]) == 0:
        raise ValueError(f"{path}:{at}: Frames: 0, a motion needs at least one frame")
    time = re.fullmatch(r"Frame Time:\s*(\S+)", time_line)
    if time is None or not _floats([time[1]], path, time_at)[0] > 0:
        raise ValueError(f"{path}:{time_at}: expected 'Frame Time: seconds' above zero, got {time_line!r}")
    frames = []
    for number, line in body:
        values = line.split()
        if len(values) != n_channels:
            raise ValueError(f"{path}:{number}: {len(values)} values on a frame line, the HIERARCHY "
                             f"declares {n_channels} channels")
        frames.append(_floats(values, path, number))
    if len(frames) != int(count[1]):
        raise ValueError(f"{path}:{at}: Frames: {count[1]}, but {len(frames)} frame lines follow")
    return np.array(frames).reshape(len(frames), n_channels), float(time[1])


def parse_bvh(path) -> BVH:
    """A BVH file -> BVH. Any depth, End Sites, any channels in any order on any joint. A malformed
    file (unbalanced braces, a frame line whose value count is not the channels', a word that is
    not a number, NaN or inf, no frames, `Frames:` not the number of frame lines) is a ValueError
    naming path:line."""
    path = Path(path)
    lines = data.read_lines(path, "BVH file")
    starts = [line.split()[:1] for line in lines]
    if ["MOTION"] not in starts:
        raise ValueError(f"{path}: no MOTION line, so no frames")
    motion_at = starts.index(["MOTION"])  # 0-based: lines[motion_at] is MOTION
    words = _Words(path, [line.lstrip("\ufeff") for line in lines[:motion_at]])
    words.line("HIERARCHY")
    joints = []  # (name, parent, offset, channels), parents first
    _joint(words, -1, joints)
    if words.peek() is not None:
        raise words.error("unbalanced braces: '}' closes nothing" if words.peek() == "}" else
                          f"expected MOTION after the ROOT joint's block (one skeleton a file), "
                          f"got {words.peek()!r}")
    names, parents, offsets, channels = (list(column) for column in zip(*joints))
    frames, frame_time = _motion(path, lines[motion_at + 1:], motion_at + 2, sum(len(c) for c in channels))
    return BVH(names, parents, np.array(offsets), channels, frames, frame_time)


def bvh_positions(motion: BVH) -> np.ndarray:
    """Every joint's world position (T, J, 3) in the file's units, by the module docstring's
    forward kinematics."""
    T, J = len(motion.frames), len(motion.names)
    local = np.tile(np.eye(3), (T, J, 1, 1))  # (T, J, 3, 3) M_j
    offsets = np.tile(motion.offsets, (T, 1, 1))  # (T, J, 3) OFFSET_j + position channels
    column = 0
    for j, channels in enumerate(motion.channels):
        for name in channels:
            value = motion.frames[:, column]  # (T,)
            column += 1
            if name.endswith("position"):
                offsets[:, j, "XYZ".index(name[0])] += value
            else:  # M_j = R_1 R_2 R_3 in the order listed
                turn = Rotation.from_euler(name[0].lower(), value[:, None], degrees=True)
                local[:, j] = local[:, j] @ turn.as_matrix()
    return forward_kinematics(motion.parents, local, offsets)


# ----------------------------------------------------------------------------
# Reading: a file's joints -> the 22 t2m joints


def _mirror(name: str) -> str:
    """The right-side twin of a left-side name (L_Hip -> R_Hip, leftupleg -> rightupleg, l_hip -> r_hip)."""
    for left, right in (("L_", "R_"), ("left", "right"), ("l_", "r_")):
        if name.startswith(left):
            return right + name[len(left):]
    return name


def _name_maps() -> dict[str, dict[str, tuple[str, ...]]]:
    """NAME_TABLE as {skeleton: {t2m joint: candidate names}}, both sides."""
    maps = {skeleton: {} for skeleton in SKELETONS}
    for joint, *columns in NAME_TABLE:
        for skeleton, candidates in zip(SKELETONS, columns):
            maps[skeleton][joint] = candidates
            maps[skeleton][_mirror(joint)] = tuple(_mirror(name) for name in candidates)
    assert all(sorted(m) == sorted(JOINT_NAMES) for m in maps.values()), "NAME_TABLE must cover the 22 joints"
    return maps


NAME_MAPS = _name_maps()


def _plain(name: str) -> str:
    """A joint name as matched: lower case, without a "namespace:" prefix (mixamorig:Hips -> hips)."""
    return name.rsplit(":", 1)[-1].lower()


def _user_map(index: dict[str, int], names: list[str], joint_map, where: str) -> list[int]:
    """joint_map ({t2m joint: file joint}, or a JSON file of one) -> t2m order indices into names."""
    if isinstance(joint_map, (str, Path)):
        source = Path(joint_map)
        try:
            joint_map = json.loads("\n".join(data.read_lines(source, "joint map")))
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not JSON ({err})") from None
    if not isinstance(joint_map, dict) or not all(isinstance(v, str) for v in joint_map.values()):
        raise ValueError(f"joint_map: a dict {{t2m joint: file joint}} of names, got {joint_map!r}")
    given = {str(key).lower(): value for key, value in joint_map.items()}
    unknown = sorted(set(given) - {n.lower() for n in JOINT_NAMES})
    missing = [n for n in JOINT_NAMES if n.lower() not in given or _plain(given[n.lower()]) not in index]
    if unknown or missing:
        raise ValueError(f"{where}: joint_map leaves the t2m joints {', '.join(missing) or '-'} unmatched"
                         f"{f' and names unknown ones {unknown}' if unknown else ''}; the t2m joints: "
                         f"{', '.join(JOINT_NAMES)}; the file's joints: {', '.join(names)}")
    return [index[_plain(given[n.lower()])] for n in JOINT_NAMES]


def map_joints(names: list[str], joint_map=None, where: str = "bvh") -> list[int]:
    """The index in `names` (a file's joints) of each t2m joint, in t2m order (JOINT_NAMES).

    By `joint_map` ({t2m joint: file joint} for all 22, or the path of a JSON file holding one)
    if given, else by the first of NAME_MAPS that finds all 22. Unmatched joints are a ValueError
    listing them and the file's joint names (`where` names the file)."""
    index = {}  # plain name -> first joint of that name
    for i, name in enumerate(names):
        index.setdefault(_plain(name), i)
    if joint_map is not None:
        return _user_map(index, names, joint_map, where)
    unmatched = {}  # skeleton -> t2m joints it leaves unmatched
    for skeleton, table in NAME_MAPS.items():
        found = {joint: next((index[name] for name in candidates if name in index), None)
                 for joint, candidates in table.items()}
        unmatched[skeleton] = [joint for joint in JOINT_NAMES if found[joint] is None]
        if not unmatched[skeleton]:
            return [found[joint] for joint in JOINT_NAMES]
    closest = min(unmatched, key=lambda skeleton: len(unmatched[skeleton]))
    raise ValueError(f"{where}: no built-in name map fits; the closest ({closest}) leaves the t2m joints "
                     f"{', '.join(unmatched[closest])} unmatched. The file's joints: {', '.join(names)}. "
                     f"Pass joint_map={{t2m joint: file joint}} naming all of {', '.join(JOINT_NAMES)}")


def resample(joints: np.ndarray, fps: float, target: float) -> np.ndarray:
    """Linear interpolation in time from fps to target frames per second: (T, J, 3) -> (T', J, 3),
    frames at 0, 1/target, ... up to the last source frame's time."""
    if fps == target or len(joints) == 1:
        return joints
    times = np.arange(0.0, (len(joints) - 1) / fps + 1e-9, 1.0 / target)  # (T',) seconds
    return make_interp_spline(np.arange(len(joints)) / fps, joints, k=1, axis=0)(times)


def read_bvh(path, joint_map=None, up: str = "y", fps: float = data.FPS) -> np.ndarray:
    """A BVH file -> t2m joint positions (T, 22, 3) in metres, Y up, at `fps` frames per second, as
    the file's forward kinematics places them (its own bone lengths: see `retarget`).

    Joints by name (`map_joints`; `joint_map` for other skeletons). `up="z"` turns Z-up data to Y up
    (-90 degrees about X: (x, y, z) -> (x, z, -y)). Units: the head-to-ankle chain of frame 0 (the
    standing height, whatever the pose) above METRES_MAX_HEIGHT means centimetres; any other unit
    (CMU's BVH conversion: ~5.6 cm) comes out scaled, which `retarget` undoes. A malformed file, an
    unmatched joint, or a t2m bone of zero length (CMU's BVH puts LowerBack, Neck and the
    shoulders on their parents) is a ValueError naming the file."""
    if up not in ("y", "z"):
        raise ValueError(f"up: 'y' or 'z', got {up!r}")
    if not fps > 0:
        raise ValueError(f"fps: must be positive, got {fps}")
    motion = parse_bvh(path)
    index = map_joints(motion.names, joint_map, str(path))
    joints = bvh_positions(motion)[:, index]  # (T, 22, 3) in the file's units
    if up == "z":
        joints = joints @ Z_UP_TO_Y_UP.T
    if np.linalg.norm(np.diff(joints[0, STANDING_CHAIN], axis=0), axis=-1).sum() > METRES_MAX_HEIGHT:
        joints = joints / CM_PER_M
    parents = data.T2M.parents()
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, parents[1:]], axis=-1)  # (T, 21)
    if lengths.min() < 1e-6:
        t, bone = np.unravel_index(lengths.argmin(), lengths.shape)
        child, parent = bone + 1, parents[bone + 1]
        raise ValueError(f"{path}: the t2m bone {JOINT_NAMES[parent]}->{JOINT_NAMES[child]} (the file's "
                         f"{motion.names[index[parent]]}->{motion.names[index[child]]}) has zero length at "
                         f"frame {t}: the file has no joint of its own at one end; pass a joint_map")
    return resample(joints, motion.fps, fps)


# ----------------------------------------------------------------------------
# Retargeting onto HumanML3D's skeleton


def _on_floor_facing_z(joints: np.ndarray) -> np.ndarray:
    """HumanML3D's process_file placement: lowest joint at y = 0, the root's first xz at the origin,
    frame 0's facing (y cross (right hip - left hip + right shoulder - left shoulder)) along +Z."""
    joints = joints - [0.0, joints[..., 1].min(), 0.0]
    joints = joints - joints[0, 0] * np.array([1.0, 0.0, 1.0])
    r_hip, l_hip, r_shoulder, l_shoulder = data.T2M.face_joints
    across = joints[0, r_hip] - joints[0, l_hip] + joints[0, r_shoulder] - joints[0, l_shoulder]
    forward = np.cross([0.0, 1.0, 0.0], across)  # (3,) horizontal
    heading = np.arctan2(forward[0], forward[2])  # the angle from +Z about +Y
    return Rotation.from_euler("y", -heading).apply(joints.reshape(-1, 3)).reshape(joints.shape)


def retarget(joints: np.ndarray) -> np.ndarray:
    """Joint positions (T, 22, 3) in metres, Y up -> the same motion on HumanML3D's skeleton: every
    bone REFERENCE_BONE_LENGTHS long, on the floor, starting at the origin facing +Z (see the module
    docstring). A clip scaled as a whole comes out the same as the unscaled one."""
    joints = _check(joints, data.T2M)
    offsets = rest_offsets(joints)  # (22, 3) the clip's own skeleton
    lengths = np.linalg.norm(offsets[1:], axis=-1)  # (21,)

    # 1. Inverse kinematics on the clip's own skeleton.
    local = np.stack([r.as_matrix() for r in _local_rotations(joints, offsets)], axis=1)  # (T, 22, 3, 3)
    # 2. Forward kinematics on the reference bones, along the same rest directions; the root's path
    # scaled as HumanML3D scales it, by the ratio of the right thigh + shin (bones to joints 5, 8).
    scale = (REFERENCE_BONE_LENGTHS[4] + REFERENCE_BONE_LENGTHS[7]) / (lengths[4] + lengths[7])
    ratio = np.concatenate([[0.0], REFERENCE_BONE_LENGTHS / lengths])  # (22,), the root has no bone
    target = np.broadcast_to(ratio[:, None] * offsets, joints.shape).copy()  # (T, 22, 3)
    target[:, 0] = scale * joints[:, 0]  # the root's row: its position
    positions = forward_kinematics(data.T2M.parents(), local, target)  # (T, 22, 3)
    # 3. Placement.
    return _on_floor_facing_z(positions)
