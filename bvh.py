"""BVH export of 22-joint HumanML3D motions, so generated motions open in Blender, MotionBuilder
or any other animation tool.

None of the papers in ../shared/seeds/ writes BVH; this file only follows the format (Biovision
Hierarchy, as described by Meredith & Maddock, "Motion Capture File Formats Explained", 2001):

    HIERARCHY   a tree of joints; each has an OFFSET from its parent in the rest pose and a list
                of CHANNELS; a leaf ends in an `End Site` with an OFFSET only.
    MOTION      `Frames: T`, `Frame Time: 1/fps`, then one line per frame holding every channel's
                value, joint by joint in the order the joints appear in HIERARCHY.

A reader composes a joint's rotation channels left to right as matrices (`Zrotation Yrotation
Xrotation` -> M = Rz Ry Rx, on column vectors), and

    G_j = G_parent M_j,    p_j = p_parent + G_parent OFFSET_j,    p_root = OFFSET_root + position.

Our motions are joint positions only, so the rotations come from inverse kinematics:
1. `rest_offsets`: the rest skeleton facing +Z (+X the body's left, +Y up, the dataset's axes),
   each bone its mean length over the clip, hanging, standing or pointing along an axis; the
   children of the two three-child joints (Pelvis, Spine3) keep the clip's mean shape instead.
2. `write_bvh`: from the root outwards, a one-child joint takes the shortest-arc rotation from
   its rest offset to the observed bone (data.qbetween); a three-child joint the rotation from
   its rest frame to its observed frame. Written in centimetres and degrees.

What is lost (the BVH reproduces the positions exactly only where none of these apply):
- Bone lengths are fixed to the offsets: the BVH keeps each generated bone's direction and
  puts its child at the offset's length.
- Twist about a bone's own axis is not observable from positions: each limb joint takes the
  least rotation from its parent's frame; the five leaves get zero rotations.
- Where a generated motion deforms the Pelvis or Spine3 triangle, their three children go
  where the clip's mean shape puts them.

Conventions chosen here (BVH itself has no comments, so they are stated only in this docstring):
- Units: centimetres for OFFSET and position channels (most importers' default), degrees for
  rotations. Joint names: SMPL's (t2m joint indices follow SMPL's order).
- Channels: the root `Xposition Yposition Zposition Yrotation Xrotation Zrotation` (heading
  first: turning is one smooth channel), the others `Zrotation Yrotation Xrotation` (Y, the
  singular middle angle, is the twist axis of hanging and standing bones); each unwrapped in time.
- The root's OFFSET is zero, so its position channels are world positions. Leaves keep three
  zero rotation channels (all 22 joints named) and an End Site END_SITE_CM further along their
  bone, since some importers drop or refuse a zero-length bone.

Shapes: T frames, J = 22 joints; positions in metres until they are written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
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
