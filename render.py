"""Stick-figure animations of joint positions (T, J, 3), so generated motions can be looked at.

matplotlib is optional: the rest of the project never imports this file's dependency at import
time, and `render_gif` raises a clear error saying how to install it. The figure follows the
HumanML3D plotting convention (y up, the floor at y = 0, the root trajectory drawn on the floor),
viewed in 3D with a camera that follows the root.
"""
from pathlib import Path

import numpy as np

import data


def _require_matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")  # no screen needed
        import matplotlib.pyplot as plt
        from matplotlib.animation import FuncAnimation, PillowWriter
    except ImportError as err:
        raise ImportError("rendering animations needs matplotlib: `pip install matplotlib` "
                          "(the .npy joints are written without it)") from err
    return plt, FuncAnimation, PillowWriter


def render_gif(joints: np.ndarray, path, title: str = "", fps: float = data.FPS,
               skeleton: data.Skeleton = data.T2M, radius: float = 1.2) -> Path:
    """Write an animated GIF of `joints` (T, J, 3) in metres; returns the path."""
    plt, FuncAnimation, PillowWriter = _require_matplotlib()
    joints = np.asarray(joints, dtype=np.float32)
    T, J, _ = joints.shape
    assert J == skeleton.n_joints, f"{skeleton.name} has {skeleton.n_joints} joints, got {J}"
    root = joints[:, 0]                                               # (T, 3)
    fig = plt.figure(figsize=(4, 4))
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

    animation = FuncAnimation(fig, draw, frames=T, interval=1000 / fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    animation.save(path, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path
