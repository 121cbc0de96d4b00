"""Smoke test for bench/bench_gpu.py: its smallest configuration on the CPU (one step, one repeat,
batch 2, the paper preset shrunk with --set) runs every model and sampler and prints each figure."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "bench_gpu", Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)

SMALL = ["--device", "cpu", "--steps", "1", "--sample-repeats", "1", "--batch-div", "1024",
         "--sample-batch", "2", "--set", "vae.n_layers=1", "--set", "diffusion.n_layers=1",
         "--set", "projector.n_layers=1", "--set", "diffusion.sample_steps=2"]


def test_smallest_configuration_prints_every_figure(capsys, monkeypatch):
    monkeypatch.setattr(bench_gpu, "FRAMES", 48)  # shorter motions: the VAE step is the slow one
    bench_gpu.main(SMALL + ["--precisions", "fp32,bf16"])
    out = capsys.readouterr().out
    assert "CPU figures" in out
    for model in ("vae", "denoiser", "projector"):
        for precision in ("fp32", "bf16"):
            assert f"{model:9s} batch    2 {precision}:" in out
    for sampler in ("MLD", "LEAD", "MotionLCM 1 step"):
        assert f"fp32 {sampler:17s} batch 1:" in out
    assert "LEAD / MLD" in out and "LEAD 0.245 s, MLD 0.236 s" in out
    assert "process max RSS" in out


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        bench_gpu.main(["--device", "cpu", "--precisions", "fp16"])
