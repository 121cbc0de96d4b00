"""bench/bench_gpu.py: its stage runs on the smoke preset (one stage, whole and halved batches),
the summary lines it parses, the micro-batch it picks, and the sampling part at its smallest."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "bench_gpu", Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)

CPU_LINE = ("[vae] vae_train: 3 steps of batch 128 (micro-batch 32, fp32), 41.250 s/step after the first, "
            "peak 5.61 GiB resident (process), 4512 GFLOP in the first step")
CUDA_LINE = ("[diffusion_mse] atm_train: 20 steps of batch 64 (micro-batch 64, bf16), 0.031 s/step after the "
             "first, peak 1.20 GiB allocated, 1.50 GiB reserved (CUDA)")


def test_the_summary_lines_of_loop_fit_are_read():
    cpu, cuda = bench_gpu.parse_summaries(f"noise\n{CPU_LINE}\n[vae] step 3/3 loss 1.0\n{CUDA_LINE}\n")
    assert (cpu["ckpt"], cpu["sched"], cpu["batch"], cpu["micro"], cpu["prec"]) == ("vae", "vae_train", "128", "32",
                                                                                    "fp32")
    assert (cpu["sps"], cpu["peak"], cpu["gflop"]) == ("41.250", 5.61, "4512")
    assert (cuda["ckpt"], cuda["sched"], cuda["prec"], cuda["gflop"]) == ("diffusion_mse", "atm_train", "bf16", None)
    assert cuda["peak"] == 1.50, "on CUDA the reserved bytes must fit"


def test_the_micro_batch_that_fits_is_the_largest_divisor_under_the_line():
    # 5.6 GiB at 32 rows, 20.0 at 128: 0.15 GiB a row
    points = {128: 20.0, 32: 5.6}
    assert bench_gpu.fitting_micro_batch(128, points, 22.0) == 128
    assert bench_gpu.fitting_micro_batch(128, points, 12.0) == 64     # 5.6 + 0.15 * 32 = 10.4; 96 rows: 15.2
    assert bench_gpu.fitting_micro_batch(128, points, 5.0) == 16      # 5.6 - 0.15 * 16 = 3.2; 32 rows: 5.6
    assert bench_gpu.fitting_micro_batch(128, {32: 18.7}, 22.0) == 32      # one point: itself, if it fits
    assert bench_gpu.fitting_micro_batch(128, {32: 18.7}, 16.0) is None


def test_a_stage_that_failed_says_why():
    assert bench_gpu.failure(0, "", 20) == ""
    assert bench_gpu.failure(1, "RuntimeError: DefaultCPUAllocator: can't allocate memory", 20.0) == \
        "out of memory (address space capped at 20.0 GiB)"
    assert "OOM killer" in bench_gpu.failure(-9, "", 0)
    assert bench_gpu.failure(2, "a\nerror: vae.pt not found", 0) == "exit 2: error: vae.pt not found"


def test_stages_print_each_run_and_the_hours(tmp_path, capsys):
    bench_gpu.main(["--device", "cpu", "--preset", "smoke", "--parts", "stages", "--stages", "vae", "--steps", "2",
                    "--micro-div", "1,2", "--motions", "120", "--out", str(tmp_path / "run"),
                    "--set", "vae_train.batch_size=8", "--set", "vae.n_layers=1"])
    out = capsys.readouterr().out
    assert "CPU figures" in out
    for micro in (8, 4):
        assert f"  vae        vae                    batch    8 micro {micro:4d} fp32: " in out
    assert out.count(" s/step  peak ") == 2 and "TFLOP/step" in out and "40 steps ->" in out  # smoke: 40 steps
    assert "  vae        fp32: " in out and "h estimated (3090); fits 22 GiB: vae " in out


def test_sampling_at_its_smallest_prints_every_figure(capsys, monkeypatch):
    monkeypatch.setattr(bench_gpu, "FRAMES", 48)  # shorter motions
    bench_gpu.main(["--device", "cpu", "--parts", "sampling", "--sample-repeats", "1", "--sample-batch", "2",
                    "--precisions", "fp32,bf16", "--set", "vae.n_layers=1", "--set", "diffusion.n_layers=1",
                    "--set", "projector.n_layers=1", "--set", "diffusion.sample_steps=2"])
    out = capsys.readouterr().out
    for sampler in ("MLD", "LEAD", "MotionLCM 1 step"):
        for precision in ("fp32", "bf16"):
            assert f"{precision} {sampler:17s} batch 1:" in out
    assert "LEAD / MLD" in out and "LEAD 0.245 s, MLD 0.236 s" in out


def test_fp16_needs_cuda_and_stages_are_training_stages():
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        bench_gpu.main(["--device", "cpu", "--precisions", "fp16"])
    with pytest.raises(ValueError, match="'eval' is not a training stage"):
        bench_gpu.main(["--device", "cpu", "--stages", "eval"])


def test_the_longest_copy_pads_every_clip_with_its_last_frame(tmp_path):
    import numpy as np
    src = tmp_path / "src"
    for folder in ("new_joint_vecs", "new_joints", "texts"):
        (src / folder).mkdir(parents=True)
    np.save(src / "new_joint_vecs" / "a.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    np.save(src / "new_joints" / "a.npy", np.ones((3, 22, 3), np.float32))
    (src / "texts" / "a.txt").write_text("a person walks#a/DET#0.0#0.0\n")
    (src / "train.txt").write_text("a\n")
    dst = bench_gpu.longest_copy(src, tmp_path / "dst", 5)
    assert np.load(dst / "new_joint_vecs" / "a.npy").tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert np.load(dst / "new_joints" / "a.npy").shape == (5, 22, 3)
    assert (dst / "texts" / "a.txt").read_text() == "a person walks#a/DET#0.0#0.0\n" and (dst / "train.txt").exists()
