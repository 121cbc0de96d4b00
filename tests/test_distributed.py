"""Data parallelism (loop.fit under torch's DistributedDataParallel) and mixed precision, on the CPU:
two gloo processes stepping on halves of each batch end with the parameters of one process stepping
on the whole batch, and only rank 0 writes;
bf16 autocast gives a finite loss close to fp32's; torch.compile gives the same samples."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import loop
import train

STEPS = 4


def stream():
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.randn(8, 3, generator=g)  # a global batch of 8: 4 rows per rank
        yield {"x": x, "y": x.sum(1, keepdim=True) + 1.0, "caption": [str(i) for i in range(8)]}


class Config:
    pass


def fit_toy(out: Path, micro_batch: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def loss_fn(batch):
        return ((model(batch["x"]) - batch["y"]) ** 2).mean(), {}  # a per-row mean: shards average exactly

    sched = loop.Schedule(STEPS, 8, 1e-2, log_every=1, micro_batch=micro_batch)
    loop.fit(out / "toy.pt", model, loss_fn, stream(), sched, config=Config(), meta={}, stage="toy")
    return model


def _join(rank: int, world: int, port: int) -> None:
    """This spawned process as rank `rank` of a gloo group on the loopback (one thread, toy configs)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    loop.dataclasses.asdict = lambda cfg: {}
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _rank(rank: int, world: int, port: int, out: str):
    _join(rank, world, port)
    try:
        model = fit_toy(Path(out) / f"rank{rank}")
        torch.save(model.state_dict(), Path(out) / f"params{rank}.pt")
        model = fit_toy(Path(out) / f"micro{rank}", micro_batch=2)  # 4 rows per rank, 2 micro-batches of 2
        torch.save(model.state_dict(), Path(out) / f"micro{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_step_like_one_on_the_whole_batch(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    monkeypatch.setattr(loop.dataclasses, "asdict", lambda cfg: {})
    single = fit_toy(tmp_path / "single").state_dict()
    for r in range(2):
        for file in (f"params{r}.pt", f"micro{r}.pt"):  # data parallel, and with gradient accumulation too
            shared = torch.load(tmp_path / file, weights_only=True)
            for name, value in single.items():
                assert torch.allclose(shared[name], value, atol=1e-5), (file, name)
    assert (tmp_path / "rank0" / "toy.pt").exists(), "rank 0 writes the checkpoint"
    assert not (tmp_path / "rank1").exists() or not any((tmp_path / "rank1").iterdir()), "rank 1 writes nothing"


def fit_noisy(out: Path, resume: bool = False, interrupt_at: int | None = None) -> torch.nn.Module:
    """A model with dropout and a noisy target (both draw from each rank's RNG), fit for 8 steps
    with a checkpoint every 2; interrupt_at: the call that raises KeyboardInterrupt, as a kill."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt
        noise = 0.1 * torch.randn_like(batch["y"])
        return ((model(batch["x"]) - batch["y"] - noise) ** 2).mean(), {}

    loop.fit(out / "toy.pt", model, loss_fn, stream(), loop.Schedule(8, 8, 1e-2, log_every=100, ckpt_every=2),
             config=Config(), meta={}, stage="toy", resume=resume, seed=3)
    return model


def _rank_resume(rank: int, world: int, port: int, out: str):
    _join(rank, world, port)
    try:
        straight = fit_noisy(Path(out) / "straight")
        try:
            fit_noisy(Path(out) / "resumed", interrupt_at=6)
        except KeyboardInterrupt:
            resumed = fit_noisy(Path(out) / "resumed", resume=True)
        for name, value in straight.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[name]), (rank, name)
        torch.save(resumed.state_dict(), Path(out) / f"resumed{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_resume_under_torchrun_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path):
    """Two gloo processes interrupted after step 5 (last checkpoint: step 4) and resumed end with
    exactly the weights of two processes that ran through: the checkpoint holds every rank's RNG
    state (it used to reseed each rank from the step, so the noise after a resume differed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_resume, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    state = loop.load_checkpoint(tmp_path / "resumed" / "toy.pt", "toy")
    assert state["done"] and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0], state["rng_ranks"][1]), "each rank draws its own noise"


def test_shards_split_every_batched_field():
    batch = {"x": torch.arange(8)[:, None], "caption": list("abcdefgh"), "fps": 20}
    part = loop.shard(batch, 1, 2)
    assert part["x"].flatten().tolist() == [4, 5, 6, 7] and part["caption"] == list("efgh") and part["fps"] == 20
    with pytest.raises(ValueError, match="multiple of 3"):
        loop.shard(batch, 0, 3)


def test_shards_cut_pairwise_matrices_on_both_axes():
    """MATE's (B, B) pair masks: a shard's rows and columns are its own pairs."""
    pairs = torch.arange(16).reshape(4, 4)
    batch = {"caption": list("abcd"), "negative": pairs, "rows": pairs, "pairwise": ("negative",)}
    part = loop.shard(batch, 1, 2)
    assert part["negative"].tolist() == [[10, 11], [14, 15]]
    assert part["rows"].tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]  # not named pairwise: rows only
    assert [m["negative"].tolist() for m in loop.micro_batches(batch, 2)] == [[[0, 1], [4, 5]], [[10, 11], [14, 15]]]


def test_bf16_autocast_loss_is_finite_and_close_to_fp32(tmp_path):
    """One fixed batch through a small transformer denoiser's loss in fp32 and under bf16
    autocast: finite, within a few percent (bf16 keeps 8 bits of mantissa)."""
    import diffusion
    torch.manual_seed(0)
    cfg = diffusion.DiffusionConfig(n_layers=3, n_heads=2, ff_dim=32, cond_drop=0.0)
    model, schedule = diffusion.Denoiser(cfg, (1, 16), 8), diffusion.GaussianDiffusion(cfg)
    z, c = torch.randn(16, 1, 16), torch.randn(16, 8)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same t and noise
        with loop.autocast(precision, torch.device("cpu")):
            losses[precision] = schedule.loss(model, z, c, torch.zeros(8))[0].float()
    assert torch.isfinite(losses["bf16"])
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 0.05


def test_fp16_on_a_cpu_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, where fp16 is allowed")
    assert train.main(["--stage", "sample", "--set", "run.precision=fp16"]) == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err


def test_compiled_denoiser_samples_the_same():
    """torch.compile of the denoiser (run.compile) gives the same DDIM samples, where it works."""
    import diffusion
    torch.manual_seed(0)
    cfg = diffusion.DiffusionConfig(n_layers=1, n_heads=2, ff_dim=16, sample_steps=3)
    model, schedule = diffusion.Denoiser(cfg, (1, 8), 4).eval(), diffusion.GaussianDiffusion(cfg)
    c, c_uncond = torch.randn(2, 4), torch.zeros(4)
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            fast = schedule.ddim_sample(compiled, c, c_uncond, (2, 1, 8), generator=torch.Generator().manual_seed(3))
    except Exception as err:  # no C compiler, an unsupported platform or Python version
        pytest.skip(f"torch.compile is not supported here: {type(err).__name__}: {str(err)[:100]}")
    with torch.no_grad():
        plain = schedule.ddim_sample(model, c, c_uncond, (2, 1, 8), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(fast, plain, atol=1e-5)
