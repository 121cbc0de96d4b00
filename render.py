"""Generated motions as files a person can look at: stick-figure animations of joint positions
(T, J, 3) as GIF or MP4, and `save_motion`, which writes a motion as .npy features and joints,
a BVH (bvh.py) and its animations.

matplotlib is optional: the rest of the project never imports this file's dependency at import
time, and `render_gif` raises a clear error saying how to install it. `render_mp4` also needs
an ffmpeg executable, from the optional `imageio-ffmpeg` package or on PATH; `mp4_available`
says whether there is one, so a caller can fall back to GIF. The figure follows the
HumanML3D plotting convention (y up, the floor at y = 0, the root trajectory drawn on the floor),
viewed in 3D with a camera that follows the root.
"""
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import torch

import bvh
import data


def _require_matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")  # no screen needed
        import matplotlib.animation as animation
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("rendering animations needs matplotlib: `pip install matplotlib` "
                          "(the .npy joints are written without it)") from err
    return matplotlib, plt, animation


def _ffmpeg() -> str | None:
    """The ffmpeg executable: the optional imageio-ffmpeg package's own, else one on PATH."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed / its binary missing
        return shutil.which("ffmpeg")


def mp4_available() -> bool:
    """Whether `render_mp4` can work here: matplotlib and an ffmpeg (imageio-ffmpeg or on PATH)."""
    return importlib.util.find_spec("matplotlib") is not None and _ffmpeg() is not None


def _save_animation(joints: np.ndarray, path, title: str, fps: float, skeleton: data.Skeleton,
                    radius: float, kind: str) -> Path:
    """Draw `joints` (T, J, 3) in metres frame by frame and save as `kind`, "gif" or "mp4"."""
    matplotlib, plt, animation = _require_matplotlib()
    joints = np.asarray(joints, dtype=np.float32)
    T, J, _ = joints.shape
    assert J == skeleton.n_joints, f"{skeleton.name} has {skeleton.n_joints} joints, got {J}"
    root = joints[:, 0]                                               # (T, 3)
    fig = plt.figure(figsize=(4, 4))  # 400 x 400 pixels: even sizes, as H.264 needs
    ax = fig.add_subplot(111, projection="3d")
    fig.suptitle("\n".join(title[i:i + 48] for i in range(0, len(title), 48)), fontsize=8)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]

    def draw(t: int):
        ax.cla()
        cx, cz = root[t, 0], root[t, 2]
        ax.set_xlim(cx - radius, cx + radius)
        ax.set_ylim(cz - radius, cz + radius)
        ax.set_zlim(0, 2 * radius)
        ax.view_init(elev=15, azim=-60)
        ax.set_axis_off()
        # floor grid around the root and the root path so far, both on y = 0
        xs = np.linspace(cx - radius, cx + radius, 5)
        zs = np.linspace(cz - radius, cz + radius, 5)
        for x in xs:
            ax.plot([x, x], [zs[0], zs[-1]], [0, 0], color="0.85", lw=0.5)
        for z in zs:
            ax.plot([xs[0], xs[-1]], [z, z], [0, 0], color="0.85", lw=0.5)
        ax.plot(root[: t + 1, 0], root[: t + 1, 2], np.zeros(t + 1), color="0.5", lw=1)
        # matplotlib's z axis is up, so a joint (x, y, z) is drawn at (x, z, y)
        for chain, color in zip(skeleton.kinematic_chain, colors):
            p = joints[t, chain]                                      # (len(chain), 3)
            ax.plot(p[:, 0], p[:, 2], p[:, 1], color=color, lw=2)
        return []

    frames = animation.FuncAnimation(fig, draw, frames=T, interval=1000 / fps)
    writer = {"gif": animation.PillowWriter, "mp4": animation.FFMpegWriter}[kind](fps=fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        frames.save(path, writer=writer)
    finally:
        plt.close(fig)
    return path


def render_gif(joints: np.ndarray, path, title: str = "", fps: float = data.FPS,
               skeleton: data.Skeleton = data.T2M, radius: float = 1.2) -> Path:
    """Write an animated GIF of `joints` (T, J, 3) in metres; returns the path."""
    return _save_animation(joints, path, title, fps, skeleton, radius, "gif")


def render_mp4(joints: np.ndarray, path, title: str = "", fps: float = data.FPS,
               skeleton: data.Skeleton = data.T2M, radius: float = 1.2) -> Path:
    """Write an H.264 MP4 of `joints` (T, J, 3) in metres; returns the path. Needs an ffmpeg:
    the optional `imageio-ffmpeg` package's, else one on PATH (check with `mp4_available`)."""
    ffmpeg = _ffmpeg()
    if ffmpeg is None:
        raise RuntimeError("writing MP4 needs ffmpeg: `pip install imageio-ffmpeg`, or put ffmpeg "
                           "on PATH (render_gif needs only matplotlib)")
    matplotlib = _require_matplotlib()[0]
    # note: a scoped setting, so the caller's matplotlib configuration is left as it was
    with matplotlib.rc_context({"animation.ffmpeg_path": ffmpeg}):
        return _save_animation(joints, path, title, fps, skeleton, radius, "mp4")


# ----------------------------------------------------------------------------
# Generated motions as files


def animation_kinds(log=print) -> tuple[str, ...]:
    """The animations this machine can write: ("gif", "mp4") with matplotlib and an ffmpeg,
    ("gif",) with matplotlib alone, () without it; what is missing is said in one line."""
    if importlib.util.find_spec("matplotlib") is None:
        log("[render] matplotlib is not installed: writing .npy files only "
            "(`pip install matplotlib` for stick-figure GIFs)")
        return ()
    if not mp4_available():
        log("[render] no ffmpeg: GIFs only (`pip install imageio-ffmpeg` for MP4s)")
        return ("gif",)
    return ("gif", "mp4")


def save_motion(stem, features: np.ndarray, skeleton: data.Skeleton = data.T2M, title: str = "",
                animations: tuple[str, ...] = (), bvh_file: bool = False) -> list[str]:
    """De-normalised features (T, D) -> STEM_features.npy, STEM_joints.npy (T, J, 3) in metres,
    and on request STEM.bvh (bvh.write_bvh) and the animations STEM.gif / STEM.mp4."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    joints = data.features_to_joints(torch.from_numpy(features), skeleton.n_joints).numpy()  # (T, J, 3)
    np.save(f"{stem}_features.npy", features)
    np.save(f"{stem}_joints.npy", joints)
    written = [f"{stem}_joints.npy"]
    if bvh_file:
        written.append(str(bvh.write_bvh(joints, f"{stem}.bvh", fps=skeleton.fps, skeleton=skeleton)))
    render = {"gif": render_gif, "mp4": render_mp4}
    written += [str(render[kind](joints, f"{stem}.{kind}", title=title, fps=skeleton.fps, skeleton=skeleton))
                for kind in animations]
    return written
