"""Tests for bench/bench_guidance.py's rule: the lowest mean FID of the rows among the scales whose
mean top-1 is at least 90% of the sweep's best, on hand-made sweeps."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_guidance", Path(__file__).resolve().parents[1] / "bench" / "bench_guidance.py")
bench_guidance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_guidance)


def _sweep(rows: dict) -> dict:
    """{scale: [(FID, top-1) per row]} -> the bench's {scale: {row: {metric: mean}}}."""
    return {s: {f"row{i}": {"FID": fid, "R-precision top-1": top1} for i, (fid, top1) in enumerate(r)}
            for s, r in rows.items()}


def test_the_rule_takes_the_lowest_fid_above_the_top1_floor():
    # best mean top-1 0.30 (scale 7.5): the floor is 0.27. Scale 1 has the lowest FID but mean
    # top-1 0.20: out. Scale 2.5: mean top-1 (0.26 + 0.29) / 2 = 0.275, in; mean FID 1.5 < 2.0.
    sweep = _sweep({1.0: [(1.0, 0.2), (1.0, 0.2)], 2.5: [(1.4, 0.26), (1.6, 0.29)],
                    7.5: [(2.0, 0.3), (2.0, 0.3)]})
    assert bench_guidance.pick(sweep) == 2.5
    # scale 2.5's top-1 a little lower (mean 0.265 < 0.27): 7.5 it is
    sweep[2.5]["row0"]["R-precision top-1"] = 0.24
    assert bench_guidance.pick(sweep) == 7.5


def test_one_scale_is_its_own_pick():
    assert bench_guidance.pick(_sweep({4.0: [(3.0, 0.1)]})) == 4.0
