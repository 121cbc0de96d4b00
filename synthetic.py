"""The embedded synthetic dataset: procedural motions of the 22-joint t2m skeleton with
paraphrased captions, written in exactly the HumanML3D folder layout (DESIGN.md, "The
embedded synthetic dataset").

Real HumanML3D cannot be downloaded here (AMASS licence, no network), so the project ships a
generator. What it is: motions built from 1-3 actions (walk, jog, run, jump, wave, kick,
squat, turn, side-step, walk in a circle, punch, clap, raise arms, stand) with modifiers
(direction, side, speed), joined by "then" at known frame boundaries (segments.json), each
with 3-5 paraphrased captions and their part-of-speech tags, plus a held-out set of stylised
motions (styles.txt: limping, skipping, marching, tiptoeing, zombie walk) whose words never
reach a training caption, for motion textual inversion. Features are computed by
data.joints_to_features, the code that would process real joints, so every downstream stage
runs for real.

What it is not: motion capture. The motions are joint-angle programs through forward
kinematics on a rest skeleton with HumanML3D's bone lengths; they have none of mocap's
variety, noise or subtlety, the captions come from templates over a small vocabulary, and
figures on it say how methods compare on this benchmark, never how they would on HumanML3D.

Layout of this file: the rest skeleton and forward kinematics; pose building blocks and the
actions; programs of actions placed in the world (`synthesize_motion`); writing the dataset
(`generate_synthetic`, `load_segments`). The captions and their POS tagger are in
synthetic_captions.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data import FPS, T2M, FeatureStats, joints_to_features, save_features, write_splits
from synthetic_captions import STYLE_WORDS, caption_for

# ----------------------------------------------------------------------------
# Motions
#
# A motion is a program of 1-3 actions. Each action is a function of time that returns
# local joint angles (T, J, 3), a heading rate, a flight height and which foot carries the
# body; actions are cross-faded at their boundaries, turned into joints by forward
# kinematics on a rest skeleton, and placed in the world by planting the carrying foot (a
# foot never slides while it carries the body; changing feet is how the body travels) and
# standing the lowest foot joint on the floor.


@dataclass
class SyntheticConfig:
    """How the embedded synthetic dataset is drawn."""
    min_frames: int = 40          # HumanML3D length rules: 40..196 feature rows at 20 fps
    max_frames: int = 196
    transition: int = 10          # frames blended on each side of an action boundary (0.5 s)
    action_counts: tuple[float, float, float] = (0.4, 0.35, 0.25)  # P(1, 2, 3 actions) per motion
    style_fraction: float = 0.04  # held-out stylised motions (styles.txt), at least one per style
    split: tuple[float, float, float] = (0.80, 0.05, 0.15)  # HumanML3D's train/val/test shares
    captions: tuple[int, int] = (3, 5)  # paraphrases per motion (HumanML3D has about 3 per motion)


GRAVITY = 9.81  # m/s^2, the flight of jumps, runs and skips

# t2m joint indices; pairs are (left, right).
PELVIS, SPINE1, SPINE2, SPINE3, NECK = 0, 3, 6, 9, 12
HIP, KNEE, ANKLE, TOE = (1, 2), (4, 5), (7, 8), (10, 11)
SHOULDER, ELBOW = (16, 17), (18, 19)
LEFT, RIGHT = 1, -1

# The rest skeleton, standing relaxed and facing +Z: child -> (direction from its parent, bone
# length in metres). Lengths are those of HumanML3D's target skeleton (clip 000021, onto which
# every HumanML3D clip is retargeted), averaged over left and right; right = left mirrored in x.
_REST_LEFT = {
    1: ((0.6, -0.8, 0.0), 0.106), 4: ((0.03, -1.0, 0.01), 0.392), 7: ((-0.02, -1.0, -0.05), 0.429),
    10: ((0.05, -0.45, 0.9), 0.146), 3: ((0.0, 1.0, -0.1), 0.132), 6: ((0.0, 1.0, 0.05), 0.143),
    9: ((0.0, 1.0, 0.1), 0.057), 12: ((0.0, 1.0, -0.15), 0.219), 15: ((0.0, 0.87, 0.48), 0.103),
    13: ((0.6, 0.8, -0.07), 0.140), 16: ((0.93, 0.35, -0.08), 0.127),
    18: ((0.12, -0.99, 0.0), 0.260), 20: ((0.05, -0.99, 0.08), 0.268),
}
_MIRROR = {2: 1, 5: 4, 8: 7, 11: 10, 14: 13, 17: 16, 19: 18, 21: 20}


def _rest_offsets() -> np.ndarray:
    offsets = np.zeros((T2M.n_joints, 3))  # (J, 3)
    for child, (direction, length) in _REST_LEFT.items():
        offsets[child] = length * np.asarray(direction) / np.linalg.norm(direction)
    for right, left in _MIRROR.items():
        offsets[right] = offsets[left] * np.array([-1.0, 1.0, 1.0])
    return offsets


REST_OFFSETS = _rest_offsets()


def _rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Angles (..., 3) = (x, y, z) -> R = Ry(y) Rz(z) Rx(x) (..., 3, 3).

    Conventions (body facing +Z, left = +X): x > 0 swings a hanging bone backward (so
    hip/shoulder flexion is x < 0, knee flexion x > 0, toes down x > 0); z > 0 swings a
    hanging bone toward +X (abduction of the left limbs); y > 0 turns toward +X."""
    cx, cy, cz = np.moveaxis(np.cos(angles), -1, 0)
    sx, sy, sz = np.moveaxis(np.sin(angles), -1, 0)
    one, zero = np.ones_like(cx), np.zeros_like(cx)
    shape = cx.shape + (3, 3)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(shape)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(shape)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(shape)
    return ry @ rz @ rx


def forward_kinematics(angles: np.ndarray, offsets: np.ndarray = REST_OFFSETS) -> np.ndarray:
    """Body-frame joints (T, J, 3) from local joint angles (T, J, 3): the rotation at joint j
    turns the bones to j's children; the root sits at the origin, unrotated about Y."""
    R = _rotation_matrices(angles)  # (T, J, 3, 3)
    parents = T2M.parents()
    glob = np.empty_like(R)
    pos = np.zeros(angles.shape)
    glob[:, 0] = R[:, 0]
    for j in range(1, len(parents)):  # t2m parents precede their children
        p = parents[j]
        pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
        glob[:, j] = glob[:, p] @ R[:, j]
    return pos


# ---- pose building blocks: every action maps local time t (n,) in seconds (which may run
# past either end of the action by the blending margin) to a _Pose.


class _Pose(NamedTuple):
    angles: np.ndarray   # (n, J, 3) local joint angles
    turn: np.ndarray     # (n,) heading rate, rad/s (+ = counterclockwise seen from above)
    flight: np.ndarray   # (n,) height of the feet above the floor, m
    support: np.ndarray  # (n,) which foot carries the body: +1 left, -1 right, 0 the lower one


def _still(a: np.ndarray, turn=None, flight=None, support=None) -> _Pose:
    zero = np.zeros(len(a))
    return _Pose(a, zero if turn is None else turn, zero if flight is None else flight,
                 zero if support is None else support)


def _limb(a: np.ndarray, pair: tuple[int, int], side: int, x=0.0, y=0.0, z=0.0) -> None:
    """Add angles to the left (side=+1) or right (side=-1) joint of a pair, mirrored: the
    right side gets -y and -z so one description serves both sides."""
    j = pair[0] if side == LEFT else pair[1]
    a[:, j, 0] += x
    a[:, j, 1] += side * y
    a[:, j, 2] += side * z


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _keys(t: np.ndarray, times, values) -> np.ndarray:
    """Keyframes joined by cosine easing (zero slope at each key), held outside."""
    times, values = np.asarray(times, float), np.asarray(values, float)
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    s = np.clip((t - times[i]) / (times[i + 1] - times[i]), 0.0, 1.0)
    return values[i] + (values[i + 1] - values[i]) * 0.5 * (1.0 - np.cos(np.pi * s))


def _envelope(t: np.ndarray, duration: float, rise: float = 0.5) -> np.ndarray:
    """0 -> 1 over `rise` seconds, held, 1 -> 0 over the last `rise` seconds."""
    rise = min(rise, duration / 2)
    return _keys(t, [0.0, rise, duration - rise, duration], [0.0, 1.0, 1.0, 0.0])


def _base_pose(t: np.ndarray, p: dict) -> np.ndarray:
    """Relaxed standing with a little life: weight shifts, breathing, head movement."""
    a = np.zeros((len(t), T2M.n_joints, 3))
    a[:, list(ELBOW), 0] = -0.15
    a[:, list(KNEE), 0] = 0.05
    a[:, SHOULDER[0], 2], a[:, SHOULDER[1], 2] = 0.12, -0.12  # hands clear of the thighs
    # note: turning both hips by the same small angle moves both feet alike, so the body
    # sways over planted feet; the spine turns back to keep the torso upright.
    sway = p["idle"] * np.sin(2 * np.pi * 0.3 * t + p["phase"])
    a[:, list(HIP), 2] += sway[:, None]
    a[:, SPINE1, 2] -= sway
    a[:, SPINE3, 0] += 0.3 * p["idle"] * np.sin(2 * np.pi * 0.25 * t)
    a[:, NECK, 1] += 2 * p["idle"] * np.sin(2 * np.pi * 0.15 * t + 2 * p["phase"])
    return a


@dataclass(frozen=True)
class _Gait:
    """A periodic gait; the legs run half a cycle apart, each arm against its leg."""
    freq: float                # strides (two steps) per second
    hip: float                 # hip swing amplitude, rad
    knee: float                # extra knee flexion in swing, rad
    lift: float = 0.0          # extra hip flexion in swing (high knees), rad
    arm: float = 0.3           # shoulder swing amplitude, rad
    elbow: float = 0.25        # elbow flexion, rad
    lean: float = 0.03         # forward lean of the torso, rad
    bounce: float = 0.0        # flight height per step, m
    knee_bend: float = 0.05    # knee flexion throughout, rad
    ankle: float = 0.0         # plantar flexion throughout (tiptoe), rad
    stiff: int = 0             # LEFT/RIGHT: that knee stays straight and swings out (limp)
    arms_forward: float = 0.0  # shoulders raised forward (zombie), rad
    sway: float = 0.0          # side-to-side torso sway, rad


def _gait_pose(t: np.ndarray, p: dict, g: _Gait, direction: float = 1.0) -> _Pose:
    """direction -1 walks backward: the hips run in reverse while the knees and heels keep
    their order in time. A leg swings while cos(its phase) > 0 and carries otherwise."""
    a = _base_pose(t, p)
    theta = 2 * np.pi * g.freq * t + p["phase"]  # (n,) gait phase, increasing in time
    if g.stiff:  # uneven timing: less time on the painful leg
        theta = theta + 0.35 * np.sin(theta)
    for side, shift in ((LEFT, 0.0), (RIGHT, np.pi)):
        th = theta + shift
        swinging = np.cos(th) > 0
        u = np.where(swinging, np.mod(th + np.pi / 2, 2 * np.pi) / np.pi, 0.0)  # 0 -> 1 in swing
        # the knee bends early in the swing (peak at u = 0.4) and straightens before landing
        bend = np.where(u < 0.4, np.sin(1.25 * np.pi * u), np.cos(np.pi * (u - 0.4) / 1.2)) ** 2
        bend = np.where(swinging, bend, 0.0)
        heel_off = np.where(swinging, 0.0, np.maximum(0.0, -np.sin(th))) ** 2  # late stance
        stiff = side == g.stiff
        # hip flexion (+ = thigh forward); the swing carries the leg forward (backward if
        # direction < 0). 0.9 (sin th - sin 3th / 9) is a rounded triangle wave: the foot on
        # the ground moves back at a steadier speed than with a sine, so the body travels evenly.
        swing = 0.9 * (np.sin(th) - np.sin(3 * th) / 9)
        flex = direction * g.hip * swing + g.lift * np.sin(np.pi * u) ** 2
        knee = g.knee_bend + (0.15 if stiff else 1.0) * g.knee * bend
        _limb(a, HIP, side, x=-flex, z=(0.3 * np.sin(np.pi * u) if stiff else 0.0))
        _limb(a, KNEE, side, x=knee)
        # the foot stays near flat (the ankle undoes most of the hip and knee angles) until
        # the heel lifts at the end of the stance
        _limb(a, ANKLE, side, x=g.ankle + 0.7 * (flex - knee) + 0.4 * heel_off)
        arm = direction * g.arm * np.sin(th)  # each arm swings against its leg
        _limb(a, SHOULDER, side, x=arm - g.arms_forward, y=-0.15 * g.arms_forward)
        _limb(a, ELBOW, side, x=-g.elbow)
    a[:, SPINE1, 0] += g.lean
    a[:, PELVIS, 1] -= 0.2 * direction * g.hip * np.sin(theta)  # pelvis turns with the forward leg
    a[:, SPINE3, 1] += 0.3 * direction * g.hip * np.sin(theta)  # shoulders turn against it
    a[:, SPINE2, 2] += g.sway * np.sin(theta)
    # flight between steps, highest when the legs are furthest apart (twice per stride)
    flight = g.bounce * np.maximum(0.0, -np.cos(2 * theta)) ** 1.5
    support = np.where(np.cos(theta) > 0, RIGHT, LEFT).astype(float)  # left swings: right carries
    return _still(a, flight=flight, support=support)


SPEED = {"slowly": 0.65, None: 1.0, "quickly": 1.4}  # tempo factor of the speed modifiers


def _walk(t, p):
    slow_back = 0.8 if p["direction"] < 0 else 1.0
    g = _Gait(freq=0.9 * p["tempo"], hip=0.38 * p["amp"] * slow_back * p["tempo"] ** 0.5, knee=1.0,
              lift=0.12)
    return _gait_pose(t, p, g, p["direction"])


def _jog(t, p):
    back = p["direction"] < 0
    g = _Gait(freq=1.3 * p["tempo"], hip=(0.35 if back else 0.5) * p["amp"], knee=1.3, lift=0.2,
              arm=0.5, elbow=1.3, lean=-0.03 if back else 0.1, bounce=0.03)
    return _gait_pose(t, p, g, p["direction"])


def _run(t, p):
    # running faster takes longer strides more than quicker ones
    g = _Gait(freq=1.45 * p["tempo"] ** 0.4, hip=0.6 * p["amp"] * p["tempo"] ** 0.6, knee=1.7,
              lift=0.35, arm=0.7, elbow=1.5, lean=0.2, bounce=0.06)
    return _gait_pose(t, p, g)


def _walk_circle(t, p):
    pose = _walk(t, {**p, "direction": 1.0})
    rate = p["rot"] * 2 * np.pi * p["circles"] / p["duration"]  # rot = +1 counterclockwise
    return pose._replace(turn=np.full(len(t), rate))


def _jump(t, p):
    """Crouch, take off, fly a ballistic arc, land in a crouch; `count` jumps."""
    period = p["duration"] / p["count"]
    u = np.clip(t, 0.0, p["duration"] - 1e-9) % period
    up, fly = 0.42 * period, 0.28 * period  # take-off time and time in the air
    down = up + fly
    crouch = _keys(u, [0, 0.28 * period, up, up + 0.5 * fly, down, down + 0.12 * period, period],
                   [0, 1.0, 0, 0.25, 0, 0.7, 0]) * p["amp"]
    arms = _keys(u, [0, 0.28 * period, up + 0.5 * fly, down + 0.15 * period, period],
                 [0, -0.3, 1, 0.3, 0])
    a = _base_pose(t, p)
    a[:, list(HIP), 0] -= 1.0 * crouch[:, None]
    a[:, list(KNEE), 0] += 1.5 * crouch[:, None]
    a[:, list(ANKLE), 0] -= 0.5 * crouch[:, None]  # keeps the feet flat: -(hip + knee)
    a[:, SPINE1, 0] += 0.4 * crouch
    a[:, list(SHOULDER), 0] -= 1.8 * arms[:, None]
    tau = np.clip(u - up, 0.0, fly)
    # a ballistic arc: h = v0 tau - g tau^2 / 2 with v0 = g fly / 2
    flight = np.where((t >= 0) & (t < p["duration"]), GRAVITY * tau * (fly - tau) / 2, 0.0)
    return _still(a, flight=flight)


def _kick(t, p):
    period = p["duration"] / p["count"]
    u = np.clip(t, 0.0, p["duration"] - 1e-9) % period
    s = p["side"]
    times = np.array([0, 0.25, 0.5, 0.75, 1.0]) * period
    flex = _keys(u, times, [0, 0.5, 1.3 * p["amp"], 0.4, 0])
    knee = _keys(u, times, [0.05, 1.5, 0.1, 0.9, 0.05])
    a = _base_pose(t, p)
    _limb(a, HIP, s, x=-flex)
    _limb(a, KNEE, s, x=knee)
    _limb(a, KNEE, -s, x=0.1 + 0.1 * flex)
    a[:, SPINE1, 0] -= 0.2 * flex
    for side in (LEFT, RIGHT):
        _limb(a, SHOULDER, side, z=0.4 * flex)  # arms out for balance
    inside = (t >= 0) & (t < p["duration"])
    return _still(a, support=np.where(inside, -s, 0).astype(float))


def _squat(t, p):
    period = p["duration"] / p["count"]
    inside = (t >= 0) & (t < p["duration"])
    depth = np.where(inside, 0.5 * (1 - np.cos(2 * np.pi * t / period)), 0.0) * p["amp"]
    a = _base_pose(t, p)
    a[:, list(HIP), 0] -= 1.5 * depth[:, None]
    a[:, list(KNEE), 0] += 1.9 * depth[:, None]
    a[:, list(ANKLE), 0] -= 0.4 * depth[:, None]  # keeps the feet flat: -(hip + knee)
    a[:, SPINE1, 0] += 0.45 * depth
    a[:, list(SHOULDER), 0] -= 1.3 * depth[:, None]  # arms forward for balance
    return _still(a)


def _turn(t, p):
    """Turn on the spot by `angle` degrees, stepping; rot = +1 counterclockwise from above."""
    u = t / p["duration"]
    inside = (u >= 0) & (u < 1)
    total = p["rot"] * np.radians(p["angle"]) * p["amp"]
    rate = np.where(inside, total * 6 * u * (1 - u) / p["duration"], 0.0)  # d/dt smoothstep
    steps = np.where(inside, np.sin(np.pi * np.clip(u, 0, 1)), 0.0)
    stepping = _gait_pose(t, p, _Gait(freq=1.1 * p["tempo"], hip=0.05, knee=0.8, lift=0.25, arm=0.05))
    base = _base_pose(t, p)
    a = base + steps[:, None, None] * (stepping.angles - base)
    a[:, NECK, 1] += 0.3 * np.sign(total) * steps  # the head leads the turn
    return _still(a, turn=rate, support=np.where(steps > 0.2, stepping.support, 0.0))


def _side_step(t, p):
    """Steps to one side: both legs open while the trailing foot carries the body, then
    close while the leading foot carries it."""
    s = p["side"]
    phi = 2 * np.pi * 0.8 * p["tempo"] * np.clip(t, 0, p["duration"])
    opening = 0.12 * p["amp"] * 0.5 * (1 - np.cos(phi))  # (n,) abduction of each hip
    lead_up, trail_up = np.maximum(0, np.sin(phi)), np.maximum(0, -np.sin(phi))
    a = _base_pose(t, p)
    for side, up in ((s, lead_up), (-s, trail_up)):
        _limb(a, HIP, side, z=opening, x=-0.35 * up)
        _limb(a, KNEE, side, x=0.7 * up)
        _limb(a, ANKLE, side, x=-0.35 * up)
    inside = (t >= 0) & (t < p["duration"])
    return _still(a, support=np.where(inside, np.where(np.sin(phi) > 0, -s, s), 0).astype(float))


def _wave(t, p):
    s, env = p["side"], _envelope(t, p["duration"])
    swing = 0.4 * np.sin(2 * np.pi * 1.6 * p["tempo"] * t)
    a = _base_pose(t, p)
    _limb(a, SHOULDER, s, z=1.45 * env * p["amp"])  # upper arm out to the side
    _limb(a, ELBOW, s, z=(1.0 + swing) * env, x=-0.2 * env)  # forearm up, swinging
    return _still(a)


def _punch(t, p):
    s, env = p["side"], _envelope(t, p["duration"], rise=0.4)
    rate = p["count"] / p["duration"]
    hit = np.where((t >= 0) & (t < p["duration"]), np.sin(np.pi * rate * t) ** 4, 0.0) * env
    a = _base_pose(t, p)
    for side in (LEFT, RIGHT):  # fists up in a guard
        _limb(a, SHOULDER, side, x=-0.5 * env)
        _limb(a, ELBOW, side, x=-1.85 * env)
        _limb(a, HIP, side, z=0.08 * env)
    _limb(a, SHOULDER, s, x=-1.0 * hit * p["amp"], y=-0.3 * hit)
    _limb(a, ELBOW, s, x=1.9 * hit)
    a[:, SPINE3, 1] -= s * 0.3 * hit  # the torso turns into the punch
    return _still(a)


def _clap(t, p):
    env = _envelope(t, p["duration"])
    apart = 0.5 * (1 - np.cos(2 * np.pi * 1.5 * p["tempo"] * t))  # 0 = hands together
    a = _base_pose(t, p)
    for side in (LEFT, RIGHT):
        _limb(a, SHOULDER, side, x=-1.2 * env, y=(-0.45 + 0.35 * apart) * env, z=-0.12 * env)
        _limb(a, ELBOW, side, x=-0.5 * env)
    return _still(a)


def _raise_arms(t, p):
    env = _envelope(t, p["duration"], rise=0.6)
    a = _base_pose(t, p)
    sides = {"both": (LEFT, RIGHT), "left": (LEFT,), "right": (RIGHT,)}[p["hand"]]
    for side in sides:
        _limb(a, SHOULDER, side, z=2.55 * env * p["amp"], x=-0.2 * env)
    return _still(a)


def _stand(t, p):
    return _still(_base_pose(t, {**p, "idle": 2 * p["idle"]}))


def _styled(gait: _Gait, tweak=None):
    """A stylised forward walk (the held-out styles); `tweak` edits the pose."""
    def pose(t, p):
        g = _Gait(**{**gait.__dict__, "freq": gait.freq * p["tempo"], "hip": gait.hip * p["amp"],
                     "stiff": p["side"] if gait.stiff else 0})
        result = _gait_pose(t, p, g)
        if tweak is not None:
            tweak(result.angles)
        return result
    return pose


def _tiptoe_arms(a):
    a[:, SHOULDER[0], 2] += 0.3
    a[:, SHOULDER[1], 2] -= 0.3


def _zombie_head(a):
    a[:, NECK, 2] += 0.3


@dataclass(frozen=True)
class _Action:
    pose: object                       # (t, params) -> _Pose
    frames: tuple[int, int]            # duration range in frames at 20 fps
    modifiers: dict = field(default_factory=dict)  # modifier name -> its values
    count: float = 0.0                 # seconds per repetition (jumps, kicks, squats, punches)


ACTIONS = {
    "walk": _Action(_walk, (50, 110), {"direction": ("forward", "backward"),
                                      "speed": ("slowly", None, "quickly")}),
    "jog": _Action(_jog, (40, 90), {"direction": ("forward", "backward")}),
    "run": _Action(_run, (40, 80), {"speed": (None, "quickly")}),
    "jump": _Action(_jump, (30, 70), count=1.5),
    "wave": _Action(_wave, (40, 80), {"side": ("left", "right"), "speed": ("slowly", None, "quickly")}),
    "kick": _Action(_kick, (26, 60), {"side": ("left", "right")}, count=1.2),
    "squat": _Action(_squat, (36, 90), {"speed": ("slowly", None, "quickly")}, count=1.8),
    "turn": _Action(_turn, (30, 60), {"rot": ("clockwise", "counterclockwise")}),
    "side_step": _Action(_side_step, (50, 90), {"side": ("left", "right")}),
    "walk_circle": _Action(_walk_circle, (90, 150), {"rot": ("clockwise", "counterclockwise")}),
    "punch": _Action(_punch, (40, 70), {"side": ("left", "right")}, count=0.7),
    "clap": _Action(_clap, (40, 70), {"speed": ("slowly", None, "quickly")}),
    "raise_arms": _Action(_raise_arms, (40, 70), {"hand": ("both", "left", "right")}),
    "stand": _Action(_stand, (30, 60)),
}

STYLES = {  # held-out style -> (its action name, the action); its words never reach train/val/test
    "limping": ("limp", _Action(_styled(_Gait(freq=0.65, hip=0.32, knee=0.9, arm=0.2, stiff=LEFT,
                                               sway=0.12)), (60, 120), {"side": ("left", "right")})),
    "skipping": ("skip", _Action(_styled(_Gait(freq=1.1, hip=0.45, knee=1.2, lift=0.6, arm=0.8,
                                                elbow=0.9, bounce=0.12)), (50, 100))),
    "marching": ("march", _Action(_styled(_Gait(freq=0.85, hip=0.25, knee=1.4, lift=1.0, arm=0.8,
                                                 elbow=0.02, lean=-0.05)), (60, 120))),
    "tiptoeing": ("tiptoe", _Action(_styled(_Gait(freq=1.15, hip=0.16, knee=0.5, knee_bend=0.25,
                                                   ankle=0.75, arm=0.1, elbow=0.9, lean=0.12),
                                              _tiptoe_arms), (60, 120))),
    "zombie walk": ("zombie_walk", _Action(_styled(_Gait(freq=0.55, hip=0.2, knee=0.35, arm=0.0,
                                                         elbow=0.05, lean=0.25, arms_forward=1.45,
                                                         sway=0.12), _zombie_head), (60, 140))),
}


def _sample_params(action: _Action, frames: int, rng: np.random.Generator,
                   fixed: dict | None = None) -> dict:
    """Modifiers (drawn unless `fixed`) plus per-motion variation (tempo, amplitude, phase,
    idle motion)."""
    mods = {name: values[rng.integers(len(values))] for name, values in action.modifiers.items()}
    for name, value in (fixed or {}).items():
        assert value in action.modifiers.get(name, ()), \
            f"modifier {name}={value!r} is not one of {action.modifiers.get(name, ())}"
        mods[name] = value
    duration = frames / FPS
    p = {"mods": mods, "duration": duration,
         "tempo": SPEED[mods.get("speed")] * rng.uniform(0.88, 1.12),
         "amp": rng.uniform(0.85, 1.15), "phase": rng.uniform(0, 2 * np.pi),
         "idle": rng.uniform(0.01, 0.03),
         "direction": -1.0 if mods.get("direction") == "backward" else 1.0,
         "side": RIGHT if mods.get("side") == "right" else LEFT,
         "rot": -1.0 if mods.get("rot") == "clockwise" else 1.0,
         "hand": mods.get("hand", "both"),
         "angle": 180 if rng.random() < 0.5 else 90,
         "circles": rng.uniform(0.7, 1.0) * min(1.0, duration / 5)}  # at most 1.26 rad/s
    if action.count:
        p["count"] = max(1, int(round(duration * p["tempo"] / action.count)))
    return p


def _blend_program(program: list[tuple[_Action, dict, int]], transition: int):
    """Sum the actions' poses with weights that cross-fade over 2*transition frames at
    each boundary (a partition of unity). -> a _Pose over T frames, bounds in feature rows."""
    starts = np.cumsum([0] + [n for _, _, n in program])  # (K+1,) boundaries in feature rows
    T = int(starts[-1]) + 1  # joint frames: T-1 feature rows
    total = _Pose(np.zeros((T, T2M.n_joints, 3)), np.zeros(T), np.zeros(T), np.zeros(T))
    w = transition
    for k, (action, p, _) in enumerate(program):
        lo = 0 if k == 0 else starts[k] - w
        hi = T if k == len(program) - 1 else starts[k + 1] + w
        frames = np.arange(lo, hi)
        weight = np.ones(len(frames))
        if k > 0:
            weight *= _smoothstep((frames - (starts[k] - w)) / (2 * w))
        if k < len(program) - 1:
            weight *= 1 - _smoothstep((frames - (starts[k + 1] - w)) / (2 * w))
        pose = action.pose((frames - starts[k]) / FPS, p)
        for acc, part in zip(total, pose):
            acc[lo:hi] += weight.reshape((-1,) + (1,) * (part.ndim - 1)) * part
    bounds = [[int(starts[k]), int(starts[k + 1])] for k in range(len(program))]
    return total, bounds


def _place_in_world(body: np.ndarray, pose: _Pose, heading: np.ndarray,
                    start_xz: np.ndarray) -> np.ndarray:
    """World joints from body-frame joints (T, J, 3): turn by the heading, then move the root
    so that the carrying foot's lowest joint keeps its world xz from the previous frame (a
    planted foot does not slide; changing feet is how the body travels), and stand the
    lowest foot joint on the floor (plus the flight height)."""
    c, s = np.cos(heading)[:, None], np.sin(heading)[:, None]
    x, y, z = body[..., 0], body[..., 1], body[..., 2]
    turned = np.stack([x * c + z * s, y, z * c - x * s], axis=-1)  # (T, J, 3) R_y(heading)
    feet = np.array([ANKLE[0], TOE[0], ANKLE[1], TOE[1]])
    height = body[:, feet, 1]  # (T, 4)
    # the support signal picks a foot; where it is undecided (|support| < 0.5) the lower one
    left = pose.support >= 0.5
    right = pose.support <= -0.5
    height = height + 10.0 * np.stack([right, right, left, left], axis=-1)  # 10 m: not chosen
    anchor = feet[height.argmin(axis=1)]  # (T,)
    frames = np.arange(1, len(body))
    step = turned[frames - 1, anchor[1:]] - turned[frames, anchor[1:]]  # (T-1, 3)
    root_xz = start_xz + np.concatenate([np.zeros((1, 3)), np.cumsum(step, axis=0)])  # (T, 3)
    root_y = -body[:, feet, 1].min(axis=1) + pose.flight  # (T,)
    root = np.stack([root_xz[:, 0], root_y, root_xz[:, 2]], axis=-1)
    return turned + root[:, None, :]


def _sample_program(rng: np.random.Generator, cfg: SyntheticConfig, style: str | None,
                    chosen: list[tuple[str, dict]] | None):
    """Draw 1-3 actions (a style motion: one styled walk; or the `chosen` ones) and their
    frame counts, fitted into the length rules."""
    fixed = [{}] * len(cfg.action_counts)
    if style is not None:
        word, action = STYLES[style]
        names, actions = [word], [action]
    elif chosen is not None:
        names, fixed = [name for name, _ in chosen], [mods for _, mods in chosen]
        actions = [ACTIONS[n] for n in names]
    else:
        k = 1 + rng.choice(len(cfg.action_counts), p=cfg.action_counts)
        names = []
        while len(names) < k:  # no action twice in a row
            name = list(ACTIONS)[rng.integers(len(ACTIONS))]
            if not names or name != names[-1]:
                names.append(name)
        actions = [ACTIONS[n] for n in names]
    frames = np.array([rng.integers(a.frames[0], a.frames[1] + 1) for a in actions])
    shortest = 2 * cfg.transition + 4  # an action outlasts its two blends
    if frames.sum() > cfg.max_frames:  # shrink the part of each action above `shortest` alike
        spare = (cfg.max_frames - shortest * len(frames)) / (frames.sum() - shortest * len(frames))
        frames = shortest + np.floor((frames - shortest) * spare).astype(int)
    frames[-1] += max(0, cfg.min_frames - frames.sum())
    program = [(a, _sample_params(a, int(n), rng, f), int(n)) for a, n, f in zip(actions, frames, fixed)]
    return names, program


def synthesize_motion(rng: np.random.Generator, cfg: SyntheticConfig | None = None,
                      style: str | None = None, actions: list[tuple[str, dict]] | None = None):
    """One procedural motion: joints (T, 22, 3) in metres at 20 fps, its action names,
    params (with modifiers under "mods") and bounds in feature rows. Actions are drawn,
    or given as [(name, {modifier: value})], e.g. [("walk", {"direction": "backward"})]
    (unspecified modifiers are drawn); `style` makes one held-out stylised walk."""
    cfg = cfg or SyntheticConfig()
    assert actions is None or 1 <= len(actions) <= len(cfg.action_counts), \
        f"give 1 to {len(cfg.action_counts)} actions"
    names, program = _sample_program(rng, cfg, style, actions)
    pose, bounds = _blend_program(program, cfg.transition)
    # Body proportions: overall height and each bone (left and right alike) jitter a little.
    bone_scale = rng.uniform(0.97, 1.03, T2M.n_joints)
    bone_scale[list(_MIRROR)] = bone_scale[list(_MIRROR.values())]
    offsets = REST_OFFSETS * rng.uniform(0.9, 1.1) * bone_scale[:, None]
    heading = rng.uniform(0, 2 * np.pi) + np.concatenate([[0.0], np.cumsum(pose.turn[:-1]) / FPS])
    joints = _place_in_world(forward_kinematics(pose.angles, offsets), pose, heading,
                             np.array([rng.uniform(-1, 1), 0.0, rng.uniform(-1, 1)]))
    return joints, names, [p for _, p, _ in program], bounds


# ---- writing the dataset


def load_segments(root) -> dict[str, dict]:
    """segments.json of the synthetic dataset: name -> {"actions", "bounds" (feature rows,
    end exclusive), "style", "label"}. Real HumanML3D has no such file."""
    path = Path(root) / "segments.json"
    if not path.exists():
        raise ValueError(f"{path}: missing (action segments exist only for the synthetic dataset)")
    return json.loads(path.read_text())


def _describe(action: str, p: dict) -> str:
    """'walk backward quickly', 'wave left', 'jump': the action and its modifiers."""
    return " ".join([action] + [str(v) for v in p["mods"].values() if v is not None])


def _check_replaceable(root: Path) -> None:
    """An earlier synthetic dataset (it has segments.json) or an empty folder may be replaced."""
    if root.exists() and any(root.iterdir()) and not (root / "segments.json").exists():
        raise ValueError(f"{root}: not empty and not a synthetic dataset (no segments.json); "
                         f"choose an empty folder")


def _write_motion(folder: Path, name: str, rng: np.random.Generator, cfg: SyntheticConfig,
                  style: str | None) -> tuple[np.ndarray, dict]:
    """Synthesize one motion; write its features, joints and captions. -> features, segment."""
    joints, actions, params, bounds = synthesize_motion(rng, cfg, style)
    features = joints_to_features(joints)  # (T-1, 263)
    save_features(folder, name, features)
    lines, wanted = {}, int(rng.integers(cfg.captions[0], cfg.captions[1] + 1))
    for _ in range(20 * wanted):  # distinct paraphrases
        caption, tokens = caption_for(actions, params, rng)
        lines.setdefault(caption, f"{caption}#{tokens}#0.0#0.0")
        if len(lines) == wanted:
            break
    assert len(lines) >= cfg.captions[0], f"{name}: too few distinct captions"
    assert style is not None or not STYLE_WORDS & set(" ".join(lines).replace(".", "").split()), \
        f"{name}: a held-out style word leaked into a plain motion's captions"
    (folder / "texts" / f"{name}.txt").write_text("\n".join(lines.values()) + "\n")
    segment = {"actions": [_describe(a, p) for a, p in zip(actions, params)], "bounds": bounds,
               "style": style, "label": actions[0]}
    return features, segment


def generate_synthetic(root, n_motions: int = 3000, seed: int = 0, log=print,
                       cfg: SyntheticConfig | None = None) -> None:
    """Write the embedded synthetic dataset in the HumanML3D layout (deterministic for a seed):
    new_joint_vecs/ (features by `joints_to_features`), new_joints/ (joints recovered from the
    features, as HumanML3D stores them), texts/, Mean.npy, Std.npy (over all motions, as
    HumanML3D), train/val/test.txt, styles.txt (held-out styles) and segments.json. It is
    written to ROOT.partial and renamed at the end, so an interrupted run leaves no half
    dataset behind."""
    cfg = cfg or SyntheticConfig()
    root = Path(root)
    n_style = max(len(STYLES), round(cfg.style_fraction * n_motions))
    assert n_motions >= n_style + 3, f"need at least {n_style + 3} motions (one per style and split)"
    _check_replaceable(root)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for sub in ("new_joint_vecs", "new_joints", "texts"):
        (partial / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    style_of = {int(i): list(STYLES)[k % len(STYLES)]
                for k, i in enumerate(rng.choice(n_motions, n_style, replace=False))}
    names = [f"{i:06d}" for i in range(n_motions)]

    # 1. The motions, each from its own random stream; running sums for Mean/Std.
    segments, stats = {}, FeatureStats()
    for i, name in enumerate(names):
        features, segments[name] = _write_motion(partial, name, np.random.default_rng([seed, i]),
                                                 cfg, style_of.get(i))
        stats.add(features)
    # 2. Mean and group-averaged Std over every frame of every motion (as HumanML3D).
    stats.save(partial)
    # 3. Splits: the stylised motions are held out; the rest shuffled into train/val/test.
    plain = [n for i, n in enumerate(names) if i not in style_of]
    splits = write_splits(partial, plain, cfg.split, rng)
    splits["styles"] = [names[i] for i in sorted(style_of)]
    (partial / "styles.txt").write_text("\n".join(splits["styles"]) + "\n")
    # 4. Segments, then the finished folder takes the place of the old one.
    (partial / "segments.json").write_text(json.dumps(segments, indent=0))
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    log(f"[data] synthetic dataset in {root}: {n_motions} motions, {stats.rows} frames, "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
