"""Tests for render.py: a 5-frame GIF and MP4 get written from the shared drawing code; without
an ffmpeg, render_mp4 refuses with a message saying what to install."""
import numpy as np
import pytest

import render
import synthetic

pytest.importorskip("matplotlib")


def joints(T=5):
    motion, names, params, bounds = synthetic.synthesize_motion(np.random.default_rng(0), actions=[("walk", {})])
    return motion[:T]


def test_gif_has_one_image_per_frame(tmp_path):
    from PIL import Image  # matplotlib depends on Pillow
    path = render.render_gif(joints(), tmp_path / "sub" / "walk.gif", title="a person walks")
    with Image.open(path) as gif:
        assert gif.n_frames == 5


def test_mp4_written_or_refused(tmp_path):
    """Where an ffmpeg exists (imageio-ffmpeg from requirements-dev.txt, or on PATH) the file
    is an MP4 (an ISO media file: its first box is `ftyp`); where none does, a clear error."""
    path = tmp_path / "walk.mp4"
    if render.mp4_available():
        render.render_mp4(joints(), path, title="a person walks", fps=20)
        head = path.read_bytes()[:8]
        assert head[4:8] == b"ftyp"
    else:
        with pytest.raises(RuntimeError, match="imageio-ffmpeg"):
            render.render_mp4(joints(), path)


def test_mp4_without_ffmpeg_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "_ffmpeg", lambda: None)
    assert not render.mp4_available()
    with pytest.raises(RuntimeError, match="writing MP4 needs ffmpeg"):
        render.render_mp4(joints(), tmp_path / "walk.mp4")
    assert not (tmp_path / "walk.mp4").exists()


def test_titles_wrap_to_two_lines_at_most():
    assert render.title_lines("a person walks") == "a person walks"
    lines = render.title_lines("a person walks forward then turns around and waves with both hands " * 5).split("\n")
    assert len(lines) == 2 and all(len(line) <= 56 for line in lines) and lines[1].endswith("...")


def test_strip_draws_one_row_per_motion(tmp_path):
    """Two motions, 4 poses each: a PNG of 2 rows x 4 panels (80 dpi: 4 x 1.2 in by 2 x 2.0 in)."""
    from PIL import Image
    path = render.render_strip({"walk": joints(20), "walk again": joints(12)}, tmp_path / "strip.png", frames=4)
    with Image.open(path) as png:
        assert png.size == (round(80 * 4 * 1.2), round(80 * 2 * 2.0))
