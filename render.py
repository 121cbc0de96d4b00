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
import subprocess
import textwrap
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


def title_lines(title: str, width: int = 56, lines: int = 2) -> str:
    """`title` wrapped at word boundaries to at most `lines` lines of `width` characters, the
    rest elided with "...", so a long prompt never covers the figure."""
    wrapped = textwrap.wrap(title, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 3].rstrip() + "..."
    return "\n".join(wrapped)


def _save_animations(joints: np.ndarray, paths: dict[str, Path], title: str, fps: float, skeleton: data.Skeleton,
                     radius: float) -> list[Path]:
    """Draw `joints` (T, J, 3) in metres frame by frame, each frame rasterised once, and write it
    to every file of `paths` {"gif" | "mp4": path}: GIF through Pillow, MP4 through ffmpeg."""
    matplotlib, plt, _ = _require_matplotlib()
    from PIL import Image  # matplotlib's own dependency
    joints = np.asarray(joints, dtype=np.float32)
    T, J, _ = joints.shape
    assert J == skeleton.n_joints, f"{skeleton.name} has {skeleton.n_joints} joints, got {J}"
    root = joints[:, 0]                                               # (T, 3)
    fig = plt.figure(figsize=(4, 4), dpi=100)  # 400 x 400 pixels: even sizes, as H.264 needs
    ax = fig.add_subplot(111, projection="3d")
    fig.suptitle(title_lines(title), fontsize=8)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]

    def draw(t: int) -> np.ndarray:
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
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8

    paths = {kind: Path(path) for kind, path in paths.items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    encoder = None
    try:
        frames = [draw(t) for t in range(T)]
        if "gif" in paths:
            images = [Image.fromarray(f) for f in frames]
            images[0].save(paths["gif"], save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
        if "mp4" in paths:
            H, W, _ = frames[0].shape
            encoder = subprocess.Popen([_ffmpeg(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                                        "-s", f"{W}x{H}", "-r", str(fps), "-i", "-", "-vcodec", "libx264",
                                        "-pix_fmt", "yuv420p", str(paths["mp4"])],
                                       stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            _, err = encoder.communicate(b"".join(f.tobytes() for f in frames))
            if encoder.returncode != 0:
                raise RuntimeError(f"ffmpeg could not write {paths['mp4']}: {err.decode(errors='replace')[-300:]}")
    finally:
        plt.close(fig)
        if encoder is not None and encoder.poll() is None:
            encoder.kill()
    return list(paths.values())


def render_gif(joints: np.ndarray, path, title: str = "", fps: float = data.FPS,
               skeleton: data.Skeleton = data.T2M, radius: float = 1.2) -> Path:
    """Write an animated GIF of `joints` (T, J, 3) in metres; returns the path."""
    return _save_animations(joints, {"gif": path}, title, fps, skeleton, radius)[0]


def render_mp4(joints: np.ndarray, path, title: str = "", fps: float = data.FPS,
               skeleton: data.Skeleton = data.T2M, radius: float = 1.2) -> Path:
    """Write an H.264 MP4 of `joints` (T, J, 3) in metres; returns the path. Needs an ffmpeg:
    the optional `imageio-ffmpeg` package's, else one on PATH (check with `mp4_available`)."""
    if _ffmpeg() is None:
        raise RuntimeError("writing MP4 needs ffmpeg: `pip install imageio-ffmpeg`, or put ffmpeg "
                           "on PATH (render_gif needs only matplotlib)")
    return _save_animations(joints, {"mp4": path}, title, fps, skeleton, radius)[0]


def render_strip(rows: dict[str, np.ndarray], path, frames: int = 8, skeleton: data.Skeleton = data.T2M) -> Path:
    """A still PNG a page can show: for each {title: joints (T, J, 3), metres} one row of `frames`
    evenly spaced poses seen from the side (the horizontal axis the root travels most along, then
    y up), each centred on its root, the floor y = 0 drawn, so a lifted foot or a jump shows."""
    _, plt, _ = _require_matplotlib()
    fig, axes = plt.subplots(len(rows), frames, figsize=(1.2 * frames, 2.0 * len(rows)), dpi=80, squeeze=False)
    for axs, (title, joints) in zip(axes, rows.items()):
        joints = np.asarray(joints, dtype=np.float32)
        travel = np.abs(joints[-1, 0] - joints[0, 0])                         # (3,)
        side = 0 if travel[0] >= travel[2] else 2                             # x or z
        for ax, t in zip(axs, np.linspace(0, len(joints) - 1, frames).round().astype(int)):
            pose = joints[t]
            for chain, color in zip(skeleton.kinematic_chain, ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]):
                ax.plot(pose[chain, side] - pose[0, side], pose[chain, 1], color=color, lw=1.5)
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_xlim(-0.9, 0.9)
            ax.set_ylim(-0.2, 2.0)
            ax.set_aspect("equal")
            ax.set_axis_off()
            ax.text(0.0, -0.02, f"{t / skeleton.fps:.1f} s", fontsize=7, ha="center", va="top")
        axs[0].text(-0.9, 2.05, title_lines(title, width=80, lines=1), fontsize=8, ha="left", va="bottom")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


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
    written = [f"{stem}_features.npy", f"{stem}_joints.npy"]
    if bvh_file:
        written.append(str(bvh.write_bvh(joints, f"{stem}.bvh", fps=skeleton.fps, skeleton=skeleton)))
    if animations:  # each frame drawn once for all the kinds
        written += [str(p) for p in _save_animations(joints, {kind: f"{stem}.{kind}" for kind in animations}, title,
                                                     skeleton.fps, skeleton, radius=1.2)]
    return written
