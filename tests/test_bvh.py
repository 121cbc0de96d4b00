"""Tests for bvh.py: the written file, read back by an independent BVH reader written here (a
text parser and forward kinematics composing one scipy matrix per channel, in the order the
file lists them), gives back the joint positions; a rest pose gives zero rotations."""
import re

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import bvh
import data
import synthetic

SMPL_NAMES = ["Pelvis", "L_Hip", "R_Hip", "Spine1", "L_Knee", "R_Knee", "Spine2", "L_Ankle",
              "R_Ankle", "Spine3", "L_Foot", "R_Foot", "Neck", "L_Collar", "R_Collar", "Head",
              "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist"]


def read_bvh(path):
    """-> names, parents (indices into names), offsets (J, 3), channels [[str]], frame_time,
    values (T, C), in the file's joint order. End Sites are skipped."""
    lines = path.read_text().splitlines()
    names, parents, offsets, channels, stack = [], [], [], [], []
    i, in_end_site = 0, False
    while lines[i].strip() != "MOTION":
        words = lines[i].split()
        if words[0] in ("ROOT", "JOINT"):
            names.append(words[1])
            parents.append(stack[-1] if stack else -1)
        elif words[0] == "End":
            in_end_site = True
        elif words[0] == "{" and not in_end_site:
            stack.append(len(names) - 1)
        elif words[0] == "}":
            if in_end_site:
                in_end_site = False
            else:
                stack.pop()
        elif words[0] == "OFFSET" and not in_end_site:
            offsets.append([float(w) for w in words[1:]])
        elif words[0] == "CHANNELS":
            assert int(words[1]) == len(words) - 2
            channels.append(words[2:])
        i += 1
    frames = int(re.fullmatch(r"Frames: (\d+)", lines[i + 1]).group(1))
    frame_time = float(re.fullmatch(r"Frame Time: ([0-9.]+)", lines[i + 2]).group(1))
    values = np.array([[float(w) for w in line.split()] for line in lines[i + 3:]])
    assert values.shape == (frames, sum(len(c) for c in channels))
    return names, parents, np.array(offsets), channels, frame_time, values


def forward_kinematics(parents, offsets, channels, values):
    """BVH forward kinematics: M_j = product of the channel rotations in file order,
    G_j = G_parent M_j, p_j = p_parent + G_parent offset_j. -> (T, J, 3) in file units."""
    T, J = len(values), len(parents)
    pos, world = np.zeros((T, J, 3)), np.zeros((T, J, 3, 3))
    column = 0
    for j in range(J):  # a BVH lists parents before children
        M = np.broadcast_to(np.eye(3), (T, 3, 3))
        translation = np.zeros((T, 3))
        for name in channels[j]:
            v = values[:, column]
            column += 1
            axis = name[0].lower()
            if name.endswith("position"):
                translation[:, "xyz".index(axis)] = v
            else:
                M = M @ Rotation.from_euler(axis, v[:, None], degrees=True).as_matrix()
        if parents[j] < 0:
            pos[:, j] = offsets[j] + translation
            world[:, j] = M
        else:
            p = parents[j]
            pos[:, j] = pos[:, p] + world[:, p] @ offsets[j]
            world[:, j] = world[:, p] @ M
    return pos


def exported(joints, tmp_path, **kwargs):
    """Write, read back -> (positions (T, 22, 3) in metres in t2m order, the parsed file)."""
    path = bvh.write_bvh(joints, tmp_path / "motion.bvh", **kwargs)
    names, parents, offsets, channels, frame_time, values = read_bvh(path)
    pos = forward_kinematics(parents, offsets, channels, values) / 100.0  # centimetres -> metres
    order = [names.index(n) for n in SMPL_NAMES]
    return pos[:, order], (names, parents, offsets[order] / 100.0, channels, frame_time, values)


def motion(actions, seed=0):
    joints, names, params, bounds = synthetic.synthesize_motion(np.random.default_rng(seed), actions=actions)
    return joints


@pytest.mark.parametrize("actions", [
    [("walk", {})],
    [("walk_circle", {"rot": "counterclockwise"})],  # heading through +-180 degrees
    [("raise_arms", {"hand": "both"}), ("kick", {"side": "left"})],  # arms overhead: far from rest
])
def test_round_trip_recovers_positions(tmp_path, actions):
    """A synthetic motion's bones are constant, so the BVH (bone lengths fixed to the clip's mean)
    must give back every joint of every frame (measured: ~1e-6 m; bound 1 mm)."""
    joints = motion(actions)
    pos, (names, parents, offsets, channels, frame_time, values) = exported(joints, tmp_path)
    assert sorted(names) == sorted(SMPL_NAMES)
    assert np.abs(pos - joints).max() < 1e-3
    assert len(values) == len(joints) and frame_time == pytest.approx(0.05)
    # the root's heading is one smooth channel: no frame-to-frame jump (unwrapped)
    root_yaw = values[:, channels[0].index("Yrotation")]
    assert np.abs(np.diff(root_yaw)).max() < 30


def test_rest_pose_gives_zero_rotations(tmp_path):
    """A hand-built body in the rest pose of the module docstring (standing, arms hanging,
    facing +Z, feet forward; Spine1 and Neck upright, hips and collars in a shape of their own),
    two frames 10 cm apart: every rotation channel is 0, the root channels are the pelvis in
    centimetres, offsets are the hand-built bones."""
    bones = {1: (0.1, -0.05, 0.01), 2: (-0.1, -0.05, 0.01), 3: (0.0, 0.12, 0.0),
             4: (0.0, -0.4, 0.0), 5: (0.0, -0.4, 0.0), 6: (0.0, 0.14, 0.0),
             7: (0.0, -0.42, 0.0), 8: (0.0, -0.42, 0.0), 9: (0.0, 0.06, 0.0),
             10: (0.0, 0.0, 0.14), 11: (0.0, 0.0, 0.14), 12: (0.0, 0.2, 0.0),
             13: (0.08, 0.1, -0.02), 14: (-0.08, 0.1, -0.02), 15: (0.0, 0.1, 0.0),
             16: (0.12, 0.0, 0.0), 17: (-0.12, 0.0, 0.0), 18: (0.0, -0.26, 0.0),
             19: (0.0, -0.26, 0.0), 20: (0.0, -0.27, 0.0), 21: (0.0, -0.27, 0.0)}
    pose = np.zeros((22, 3))
    for j, p in enumerate(data.T2M.parents()[1:], start=1):
        pose[j] = pose[p] + bones[j]
    joints = np.stack([pose + [0.0, 0.9, 0.0], pose + [0.0, 0.9, 0.1]])  # (2, 22, 3)
    pos, (names, parents, offsets, channels, frame_time, values) = exported(joints, tmp_path, fps=12.5)
    columns = [name for joint in channels for name in joint]  # the MOTION columns, in order
    rotation_columns = [k for k, name in enumerate(columns) if name.endswith("rotation")]
    assert len(rotation_columns) == 66
    assert np.abs(values[:, rotation_columns]).max() < 1e-4
    assert np.allclose(values[:, :3], [[0.0, 90.0, 0.0], [0.0, 90.0, 10.0]])
    assert np.allclose(offsets[1:], np.array([bones[j] for j in range(1, 22)]))
    assert np.abs(pos - joints).max() < 1e-6
    text = (tmp_path / "motion.bvh").read_text()
    assert "\nFrames: 2\nFrame Time: 0.080000\n" in text


def test_given_offsets_fix_lengths_and_keep_directions(tmp_path):
    """With offsets 10% longer than the clip's bones, every bone of the BVH points along the
    observed bone and has the offset's length (the loss the module docstring states)."""
    joints = motion([("jog", {})], seed=3)
    offsets = 1.1 * bvh.rest_offsets(joints)
    pos, _ = exported(joints, tmp_path, offsets=offsets)
    parents = data.T2M.parents()
    ours = pos[:, 1:] - pos[:, parents[1:]]  # (T, 21, 3)
    theirs = joints[:, 1:] - joints[:, parents[1:]]
    assert np.allclose(np.linalg.norm(ours, axis=-1), np.linalg.norm(offsets[1:], axis=-1), atol=1e-5)
    cosine = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cosine.min() > 1 - 1e-8
    assert np.abs(pos[:, 0] - joints[:, 0]).max() < 1e-6


@pytest.mark.parametrize("case, message", [
    ("shape", r"joints must be \(T, 22, 3\)"),
    ("nan", "NaN"),
    ("zero_bone", "bone L_Elbow->L_Wrist has zero length at frame 1"),
    ("kit", "t2m"),
    ("fps", "fps must be positive"),
    ("offsets", r"offsets must be \(22, 3\)"),
    ("degenerate", "joints frame 1: L_Hip-R_Hip is parallel to Pelvis->Spine1"),
])
def test_bad_input_is_refused(tmp_path, case, message):
    joints = motion([("walk", {})])[:5]
    kwargs = {}
    if case == "shape":
        joints = joints[:, :21]
    if case == "nan":
        joints[2, 4, 1] = np.nan
    if case == "zero_bone":
        joints[1, 20] = joints[1, 18]
    if case == "kit":
        kwargs["skeleton"] = data.KIT
    if case == "fps":
        kwargs["fps"] = 0
    if case == "offsets":
        kwargs["offsets"] = np.zeros((22, 3))
    if case == "degenerate":  # both hips at one point: the pelvis has no left-right axis
        joints[1, 1] = joints[1, 2]
    with pytest.raises(ValueError, match=message):
        bvh.write_bvh(joints, tmp_path / "bad.bvh", **kwargs)
