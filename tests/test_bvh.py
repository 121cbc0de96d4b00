"""Tests for bvh.py. Writing: the written file, read back by an independent BVH reader written
here (a text parser and forward kinematics composing one scipy matrix per channel, in the order
the file lists them), gives back the joint positions; a rest pose gives zero rotations.
Reading: bvh.read_bvh gives back what the writer wrote, also relabelled with Mixamo names, at 60
fps, in metres or centimetres, Z up; a hand-written file gives hand-worked positions; each kind of
malformed file is refused naming its line. Retargeting: against HumanML3D's own clip 012314 (when
../shared is present) and an independent restatement of its uniform_skeleton."""
import json
import re
from pathlib import Path

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
    G_j = G_parent M_j, p_j = p_parent + G_parent (offset_j + position channels). -> (T, J, 3)
    in file units."""
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
            pos[:, j] = pos[:, p] + (world[:, p] @ (offsets[j] + translation)[..., None])[..., 0]
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
    must give back every joint of every frame (measured: ~1e-6 m; bound 1 mm), read by the
    independent reader and by bvh.read_bvh; bvh.parse_bvh + bvh_positions agree with the
    independent reader on every joint."""
    joints = motion(actions)
    pos, (names, parents, offsets, channels, frame_time, values) = exported(joints, tmp_path)
    assert sorted(names) == sorted(SMPL_NAMES)
    assert np.abs(pos - joints).max() < 1e-3
    assert np.abs(bvh.read_bvh(tmp_path / "motion.bvh") - joints).max() < 1e-3
    parsed = bvh.parse_bvh(tmp_path / "motion.bvh")
    names, parents, offsets, channels, frame_time, values = read_bvh(tmp_path / "motion.bvh")  # file order
    assert (parsed.names, parsed.parents, parsed.channels) == (names, parents, [tuple(c) for c in channels])
    assert np.array_equal(parsed.offsets, offsets) and np.array_equal(parsed.frames, values)
    theirs = forward_kinematics(parents, offsets, channels, values)  # (T, 22, 3) centimetres
    assert np.allclose(bvh.bvh_positions(parsed), theirs, atol=1e-9)
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
    assert np.abs(bvh.read_bvh(tmp_path / "motion.bvh") - pos).max() < 1e-3  # the writer's positions


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


# ----------------------------------------------------------------------------
# Reading


HAND_WRITTEN = """HIERARCHY
ROOT Hips
{
  OFFSET 1 2 3
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Xrotation Zrotation Yrotation
    JOINT Arm
    {
      OFFSET 5 0 0
      CHANNELS 6 Zrotation Xposition Yposition Zposition Yrotation Xrotation
      JOINT Hand
      {
        OFFSET 2 0 0
        CHANNELS 3 Zrotation Yrotation Xrotation
        End Site
        {
          OFFSET 0 3 0
        }
      }
    }
  }
  JOINT Leg
  {
    OFFSET 0 -4 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0 -9 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.1
0 0 0 0 0 0  0 0 0  0 0 0 0 0 0  0 0 0  0 0 0
10 0 0 90 0 0  90 0 90  90 0 1 0 0 0  0 0 0  0 0 0
"""


def test_hand_written_file_gives_hand_worked_positions(tmp_path):
    """Frame 0 (all channels zero) is the rest pose: OFFSETs summed, Hips at its OFFSET (1, 2, 3).
    Frame 1, with Rx(90) (x, y, z) -> (x, -z, y), Ry(90) -> (z, y, -x), Rz(90) -> (-y, x, z),
    products applied to a vector right to left:
      Hips  = (1, 2, 3) + (10, 0, 0)                                   = (11, 2, 3), G = Rz(90)
      Chest = Hips + Rz(90) (0, 10, 0) = (11, 2, 3) + (-10, 0, 0)      = (1, 2, 3)
              M_Chest = Rx(90) Rz(0) Ry(90) (listed X Z Y)
      Arm   = Chest + Rz(90) Rx(90) Ry(90) ((5, 0, 0) + position (0, 1, 0))
              Ry(90) (5, 1, 0) = (0, 1, -5); Rx(90) -> (0, 5, 1); Rz(90) -> (-5, 0, 1)  = (-4, 2, 4)
      Hand  = Arm + Rz(90) Rx(90) Ry(90) Rz(90) (2, 0, 0)  (Arm's M = Rz(90), its position
              channels between its rotation channels): Rz(90) -> (0, 2, 0); Ry(90) -> (0, 2, 0);
              Rx(90) -> (0, 0, 2); Rz(90) -> (0, 0, 2)                  = (-4, 2, 6)
      Leg   = Hips + Rz(90) (0, -4, 0) = (11, 2, 3) + (4, 0, 0)       = (15, 2, 3)
    End Sites are not joints; Frame Time 0.1 is 10 fps."""
    path = tmp_path / "hand.bvh"
    path.write_text(HAND_WRITTEN)
    parsed = bvh.parse_bvh(path)
    assert parsed.names == ["Hips", "Chest", "Arm", "Hand", "Leg"] and parsed.parents == [-1, 0, 1, 2, 0]
    assert parsed.channels[1] == ("Xrotation", "Zrotation", "Yrotation") and parsed.fps == 10.0
    expected = np.array([[[1, 2, 3], [1, 12, 3], [6, 12, 3], [8, 12, 3], [1, -2, 3]],
                         [[11, 2, 3], [1, 2, 3], [-4, 2, 4], [-4, 2, 6], [15, 2, 3]]], dtype=float)
    assert np.allclose(bvh.bvh_positions(parsed), expected, atol=1e-12)
    # the independent reader of this file agrees
    names, parents, offsets, channels, frame_time, values = read_bvh(path)
    assert np.allclose(forward_kinematics(parents, offsets, channels, values), expected, atol=1e-12)


def replace_line(text: str, number: int, new: str | None) -> str:
    """The text with line `number` (1-based) replaced by `new`, or removed (None)."""
    lines = text.splitlines()
    lines[number - 1:number] = [] if new is None else [new]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("edit, line, message", [
    (lambda t: replace_line(t, 33, None), 34, "unbalanced braces: joint 'Hips' (line 2) is not closed"),
    (lambda t: replace_line(t, 34, "}\n}"), 35, "unbalanced braces: '}' closes nothing"),
    (lambda t: replace_line(t, 19, "        }"), 19,
     "unbalanced braces: expected '{' for the End Site of 'Hand'"),
    (lambda t: replace_line(t, 39, "10 0 0 90 0 0  90 0 90  90 0 1 0 0 0  0 0 0  0 0"), 39,
     "20 values on a frame line, the HIERARCHY declares 21 channels"),
    (lambda t: replace_line(t, 38, "0 0 0 0 0 0  0 abc 0  0 0 0 0 0 0  0 0 0  0 0 0"), 38,
     "'abc' is not a number"),
    (lambda t: replace_line(t, 4, "  OFFSET 1 two 3"), 4, "'two' is not a number"),
    (lambda t: replace_line(t, 39, "10 0 0 90 0 0  90 0 nan  90 0 1 0 0 0  0 0 0  0 0 0"), 39, "NaN or inf"),
    (lambda t: replace_line(t, 38, "inf 0 0 0 0 0  0 0 0  0 0 0 0 0 0  0 0 0  0 0 0"), 38, "NaN or inf"),
    (lambda t: t.split("Frames:")[0] + "Frames: 0\nFrame Time: 0.1\n", 36,
     "Frames: 0, a motion needs at least one frame"),
    (lambda t: replace_line(t, 36, "Frames: 3"), 36, "Frames: 3, but 2 frame lines follow"),
    (lambda t: replace_line(t, 39, None), 36, "Frames: 2, but 1 frame lines follow"),
    (lambda t: replace_line(t, 37, "Frame Time: 0"), 37, "expected 'Frame Time: seconds' above zero"),
    (lambda t: replace_line(t, 9, "    CHANNELS 3 Xrotation Zrotation"), 9,
     "CHANNELS of 'Chest': a count then that many names"),
    (lambda t: replace_line(t, 9, "    CHANNELS 3 Xrotation Wrotation Yrotation"), 9,
     "CHANNELS of 'Chest': each at most once among"),
    (lambda t: replace_line(t, 1, "HIERARCHIE"), 1, "expected HIERARCHY"),
])
def test_malformed_files_are_refused_naming_the_line(tmp_path, edit, line, message):
    path = tmp_path / "bad.bvh"
    path.write_text(edit(HAND_WRITTEN))
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: {message}")):
        bvh.parse_bvh(path)


def test_files_without_motion_or_text_are_refused(tmp_path):
    path = tmp_path / "bad.bvh"
    path.write_text(HAND_WRITTEN.split("MOTION")[0])
    with pytest.raises(ValueError, match=re.escape(f"{path}: no MOTION line")):
        bvh.parse_bvh(path)
    with pytest.raises(ValueError, match="BVH file is missing"):
        bvh.parse_bvh(tmp_path / "absent.bvh")


# Mixamo's names (MoMask's template.bvh and LaFAN1 say LeftToe for LeftToeBase)
MIXAMO = {"Pelvis": "Hips", "L_Hip": "LeftUpLeg", "R_Hip": "RightUpLeg", "Spine1": "Spine",
          "L_Knee": "LeftLeg", "R_Knee": "RightLeg", "Spine2": "Spine1", "L_Ankle": "LeftFoot",
          "R_Ankle": "RightFoot", "Spine3": "Spine2", "L_Foot": "LeftToeBase", "R_Foot": "RightToeBase",
          "Neck": "Neck", "L_Collar": "LeftShoulder", "R_Collar": "RightShoulder", "Head": "Head",
          "L_Shoulder": "LeftArm", "R_Shoulder": "RightArm", "L_Elbow": "LeftForeArm",
          "R_Elbow": "RightForeArm", "L_Wrist": "LeftHand", "R_Wrist": "RightHand"}

# Y up -> Z up, C = (x, y, z) -> (x, -z, y): a channel about/along axis a becomes one about/along C a,
# C x = x, C y = z, C z = -y (so M' = C M C^T, OFFSET' = C OFFSET and the positions p' = C p).
Z_UP_CHANNEL = {"X": ("X", 1.0), "Y": ("Z", 1.0), "Z": ("Y", -1.0)}


def emit(path, names, parents, offsets, channels, values, frame_time):
    """A BVH file from its parts (file order, leaves without End Sites)."""
    lines = ["HIERARCHY"]

    def joint(j, pad):
        lines.extend([f"{pad}{'ROOT' if parents[j] < 0 else 'JOINT'} {names[j]}", pad + "{",
                      f"{pad}  OFFSET " + " ".join(f"{v:.6f}" for v in offsets[j]),
                      f"{pad}  CHANNELS {len(channels[j])} {' '.join(channels[j])}"])
        for child in [k for k, p in enumerate(parents) if p == j]:
            joint(child, pad + "  ")
        lines.append(pad + "}")

    joint(0, "")
    lines += ["MOTION", f"Frames: {len(values)}", f"Frame Time: {frame_time:.6f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in values]
    Path(path).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("units", ["cm", "m"])
def test_mixamo_names_60_fps_z_up_come_back_as_t2m_joints(tmp_path, units):
    """Our writer's output at 60 fps (on the 20 fps clip's own bones), relabelled with Mixamo's
    names under a `mixamorig:` prefix, turned to Z up (channels re-labelled and re-signed, the
    order of each joint's channels kept) and in centimetres (as written) or metres: read_bvh with
    up="z" gives the 20 fps clip in metres, Y up, within 1 mm."""
    joints = motion([("walk", {}), ("wave", {})], seed=4)  # (T, 22, 3) at 20 fps
    fine = bvh.resample(joints, 20, 60)  # (3T - 2, 22, 3); every third frame is a source frame
    bvh.write_bvh(fine, tmp_path / "y_up.bvh", fps=60, offsets=bvh.rest_offsets(joints))
    names, parents, offsets, channels, frame_time, values = read_bvh(tmp_path / "y_up.bvh")
    scale = 0.01 if units == "m" else 1.0
    new_channels, signs = [], []
    for joint_channels in channels:
        new_channels.append([])
        for name in joint_channels:
            axis, sign = Z_UP_CHANNEL[name[0]]
            new_channels[-1].append(axis + name[1:])
            signs.append(sign * (scale if name.endswith("position") else 1.0))
    C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    emit(tmp_path / "mixamo.bvh", ["mixamorig:" + MIXAMO[n] for n in names], parents,
         scale * offsets @ C.T, new_channels, values * np.array(signs), frame_time)
    read = bvh.read_bvh(tmp_path / "mixamo.bvh", up="z")
    assert read.shape == joints.shape
    assert np.abs(read - joints).max() < 1e-3


def writer_output(tmp_path, rename=None, name="motion.bvh"):
    """Our writer's BVH of a walk, its joints renamed by `rename` {SMPL name: new} -> (path, joints)."""
    joints = motion([("walk", {})])
    path = bvh.write_bvh(joints, tmp_path / name)
    if rename:
        text = path.read_text()
        for old, new in rename.items():
            text = re.sub(rf"(ROOT|JOINT) {old}\n", rf"\1 {new}\n", text)
        path.write_text(text)
    return path, joints


def test_joint_maps_given_or_from_a_json_file(tmp_path):
    """Another skeleton's names map by a joint_map dict or JSON file (keys case-insensitive, values
    prefix- and case-insensitive); one left out is named."""
    rename = {n: f"bone_{k:02d}" for k, n in enumerate(SMPL_NAMES)}
    path, joints = writer_output(tmp_path, rename)
    with pytest.raises(ValueError, match=r"no built-in name map fits; the closest \(smpl\) leaves the "
                                         r"t2m joints Pelvis, L_Hip, .*, R_Wrist unmatched\. The file's "
                                         r"joints: bone_00, bone_01, bone_04"):
        bvh.read_bvh(path)
    joint_map = {n.lower(): f"rig:BONE_{k:02d}" for k, n in enumerate(SMPL_NAMES)}
    assert np.abs(bvh.read_bvh(path, joint_map=joint_map) - joints).max() < 1e-3
    (tmp_path / "map.json").write_text(json.dumps(joint_map))
    assert np.abs(bvh.read_bvh(path, joint_map=tmp_path / "map.json") - joints).max() < 1e-3
    del joint_map["r_wrist"]
    with pytest.raises(ValueError, match="joint_map leaves the t2m joints R_Wrist unmatched; the t2m joints: P"):
        bvh.read_bvh(path, joint_map=joint_map)


def both_sides(left_and_centre: dict) -> dict:
    """{t2m joint: name} for the left side and the spine -> all 22 (L_ -> R_, left -> right)."""
    right = {"R_" + k[2:]: v.replace("Left", "Right").replace("left", "right")
             for k, v in left_and_centre.items() if k.startswith("L_")}
    return left_and_centre | right


# Xsens MVN's export, 100STYLE's skeleton (Chest3 left out: Spine3 is the collars' parent, Chest4)
XSENS = both_sides({"Pelvis": "Hips", "L_Hip": "LeftHip", "L_Knee": "LeftKnee", "L_Ankle": "LeftAnkle",
                    "L_Foot": "LeftToe", "Spine1": "Chest", "Spine2": "Chest2", "Spine3": "Chest4",
                    "Neck": "Neck", "Head": "Head", "L_Collar": "LeftCollar", "L_Shoulder": "LeftShoulder",
                    "L_Elbow": "LeftElbow", "L_Wrist": "LeftWrist"})
# smplx's lower-case names
SMPLX = both_sides({"Pelvis": "pelvis", "L_Hip": "left_hip", "L_Knee": "left_knee", "L_Ankle": "left_ankle",
                    "L_Foot": "left_foot", "Spine1": "spine1", "Spine2": "spine2", "Spine3": "spine3",
                    "Neck": "neck", "Head": "head", "L_Collar": "left_collar",
                    "L_Shoulder": "left_shoulder", "L_Elbow": "left_elbow", "L_Wrist": "left_wrist"})


@pytest.mark.parametrize("names", [
    {n: n for n in SMPL_NAMES},                                    # write_bvh's own
    {n: "mixamorig1:" + MIXAMO[n] for n in SMPL_NAMES},            # Mixamo, a numbered namespace
    {n: MIXAMO[n].replace("ToeBase", "Toe") for n in SMPL_NAMES},  # MoMask's template, LaFAN1
    XSENS,
    SMPLX,
])
def test_built_in_name_maps(tmp_path, names):
    path, joints = writer_output(tmp_path, names)
    assert np.abs(bvh.read_bvh(path) - joints).max() < 1e-3


def test_a_map_that_puts_two_joints_in_one_place_is_refused(tmp_path):
    """A bone of zero length (as CMU's BVH, whose shoulders sit on Spine1) is refused, naming it."""
    path, _ = writer_output(tmp_path)
    joint_map = {n: n for n in SMPL_NAMES} | {"L_Collar": "Spine3"}
    with pytest.raises(ValueError, match=re.escape(f"{path}: the t2m bone Spine3->L_Collar (the file's "
                                                   f"Spine3->Spine3) has zero length at frame 0")):
        bvh.read_bvh(path, joint_map=joint_map)
    with pytest.raises(ValueError, match="up: 'y' or 'z'"):
        bvh.read_bvh(path, up="x")


# ----------------------------------------------------------------------------
# Retargeting

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/humanml3d_sample/new_joints/012314.npy"
needs_reference = pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference is absent")


def bone_lengths(joints):
    parents = data.T2M.parents()
    return np.linalg.norm(joints[:, 1:] - joints[:, parents[1:]], axis=-1)  # (T, 21)


@needs_reference
def test_reference_bone_lengths_are_humanml3d_clip_012314s():
    lengths = bone_lengths(np.load(REFERENCE).astype(np.float64))  # (T, 21)
    assert np.abs(lengths - bvh.REFERENCE_BONE_LENGTHS).max() < 2e-6


@needs_reference
def test_humanml3d_output_is_a_fixed_point_of_retarget():
    """HumanML3D's published joints are already retargeted, on the floor, starting at the origin
    facing +Z: retarget gives them back (measured: 2.5e-6 m; float32 file)."""
    reference = np.load(REFERENCE).astype(np.float64)
    assert np.abs(bvh.retarget(reference) - reference).max() < 1e-5


def uniform_skeleton(joints):
    """HumanML3D's uniform_skeleton restated: its inverse kinematics turns each raw offset onto the
    bone and its forward kinematics turns it back, so every bone keeps its direction and takes the
    reference length; the root's path is scaled by the ratio of the right thigh + shin."""
    parents, lengths = data.T2M.parents(), bone_lengths(joints).mean(0)
    reference = bvh.REFERENCE_BONE_LENGTHS
    out = np.zeros_like(joints)
    out[:, 0] = joints[:, 0] * (reference[4] + reference[7]) / (lengths[4] + lengths[7])
    for child in range(1, 22):
        bone = joints[:, child] - joints[:, parents[child]]
        direction = bone / np.linalg.norm(bone, axis=-1, keepdims=True)
        out[:, child] = out[:, parents[child]] + reference[child - 1] * direction
    return out


def test_retarget_matches_uniform_skeleton_and_places_the_clip():
    """On a rigid skeleton (every synthetic clip) retarget is HumanML3D's uniform_skeleton; then
    the floor at the lowest joint, the root's first xz at the origin, frame 0 facing +Z."""
    joints = motion([("walk_circle", {"rot": "clockwise"}), ("jump", {})], seed=7)
    out = bvh.retarget(joints)
    theirs = uniform_skeleton(joints)
    assert np.allclose(bone_lengths(out), bvh.REFERENCE_BONE_LENGTHS, atol=1e-9)
    assert np.isclose(out[..., 1].min(), 0.0) and np.allclose(out[0, 0, [0, 2]], 0.0)
    r_hip, l_hip, r_shoulder, l_shoulder = data.T2M.face_joints
    across = out[0, r_hip] - out[0, l_hip] + out[0, r_shoulder] - out[0, l_shoulder]
    forward = np.cross([0.0, 1.0, 0.0], across)
    assert np.allclose(forward / np.linalg.norm(forward), [0.0, 0.0, 1.0])
    # the same motion up to the placement: equal distances between every pair of joints
    distances = lambda x: np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)  # (T, 22, 22)
    assert np.abs(distances(out) - distances(theirs)).max() < 1e-9
    assert np.allclose(np.diff(out[:, 0, 1]), np.diff(theirs[:, 0, 1]))


def test_retarget_fixes_bone_lengths_and_keeps_rotations():
    """A clip scaled by 1.3, and one with the left arm (collar to wrist) 10% longer, come out with
    the reference bones (1e-4 m) and as the unmodified clip does, so with the same joint rotations
    (bvh's inverse kinematics on each, relative to the parent, equal within 1e-6 rad)."""
    joints = motion([("wave", {"side": "left"}), ("kick", {})], seed=2)
    longer = joints.copy()
    for parent, child in ((13, 16), (16, 18), (18, 20)):  # the bones moved before their children
        longer[:, child] = longer[:, parent] + 1.1 * (joints[:, child] - joints[:, parent])
    assert np.allclose(bone_lengths(longer)[:, 17] / bone_lengths(joints)[:, 17], 1.1)
    expected = bvh.retarget(joints)
    offsets = bvh.rest_offsets(expected)
    rotations = bvh._local_rotations(expected, offsets)
    for variant in (1.3 * joints, longer):
        out = bvh.retarget(variant)
        assert np.abs(bone_lengths(out) - bvh.REFERENCE_BONE_LENGTHS).max() < 1e-4
        assert np.abs(out - expected).max() < 1e-6
        for theirs, ours in zip(rotations, bvh._local_rotations(out, offsets)):
            assert (theirs.inv() * ours).magnitude().max() < 1e-6
