"""Tests for evaluation.py: the protocol driver on a tiny fake dataset (rows, replications, Swing,
the joint columns, rows sharing latents), the results tables, the VAE's joint errors, Swing and
joint columns by hand.

Nothing here needs clip.py or a dataset folder: the dataset is a list of dicts, the captions'
word/POS tags a ten-word table (tiny_evaluator.py).
"""
import json
import math

import numpy as np
import pytest
import torch

import data
import diffusion
import evaluation
import metrics
import projector
import t2m_evaluator
import vae
from evaluation import evaluate, results_table, write_results
from tiny_evaluator import WORDS, tiny_embedder


# --------------------------------------------------------------------------------------
# The evaluation driver and the tables

def _collate(items):
    """Pads items like data.collate: motions zero-padded to the longest."""
    T = max(item["length"] for item in items)
    motion = torch.zeros(len(items), T, items[0]["motion"].shape[1])
    for b, item in enumerate(items):
        motion[b, :item["length"]] = item["motion"]
    return {"motion": motion, "lengths": torch.tensor([item["length"] for item in items]),
            "caption": [item["caption"] for item in items], "name": [item["name"] for item in items]}


def _fake_dataset(n=40, feat_dim=12):
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        length = 8 + 4 * (i % 5)
        caption = f"a person {WORDS[2 + i % 4]} {WORDS[6 + i % 3]}"
        items.append({"motion": torch.randn(length, feat_dim, generator=gen), "length": length,
                      "caption": caption, "name": f"m{i:03d}"})
    return items


def test_evaluate_real_and_generated_rows():
    dataset, model = _fake_dataset(), tiny_embedder()
    logs = []
    real = evaluate(None, dataset, model, model.tokenizer, replications=2, batch_size=16, diversity_times=20,
                    collate_fn=_collate, log=logs.append)
    # a list of items has no mean / std to de-normalise with: no Swing, no joints
    assert set(real) == set(evaluation.METRICS) - {"MModality", "Swing", *evaluation.QUALITY}
    assert abs(real["FID"][0]) < 1e-6  # ground truth against itself
    assert len(logs) == 2 and "replication 2/2" in logs[1]

    def noise(captions, lengths):  # not the data's distribution (that is standard normal)
        return 2.0 + 3.0 * torch.randn(len(captions), int(lengths.max()) + 3, 12)

    gen = evaluate(noise, dataset, model, model.tokenizer, replications=3, batch_size=16, mm_num_texts=4,
                   mm_num_gens=12, diversity_times=20, collate_fn=_collate, log=lambda s: None)
    assert set(gen) == set(evaluation.METRICS) - {"Swing", *evaluation.QUALITY}
    for name, (mean, ci) in gen.items():
        assert math.isfinite(mean) and math.isfinite(ci) and ci >= 0, name
    assert gen["FID"][0] > 0.01
    assert gen["MModality"][0] > 0
    assert not model.training


def test_lamp_bertscore_captions_each_rows_motions_once_against_their_prompts():
    """LaMP Sec. 3.4: a captioner describes every motion of each row (Real: the clips), on the first
    replication only; the column is 100 x score(captions, [[prompt]...]), and draws no random numbers."""
    dataset, model = _fake_dataset(), tiny_embedder()
    calls, scored = [], []

    def describe(motions, lengths):
        calls.append(len(lengths))
        return ["bright" if float(motions.mean()) > 1 else "dark"] * len(lengths)

    def score(captions, references):
        scored.append((captions, references))
        return sum(c == "bright" for c in captions) / len(captions)

    def shifted(captions, lengths):
        return {"shifted": 5.0 + torch.randn(len(captions), int(lengths.max()), 12)}

    kwargs = dict(replications=2, batch_size=16, diversity_times=20, mm_num_texts=0, collate_fn=_collate,
                  log=lambda s: None)
    plain = evaluation.evaluate_rows(shifted, dataset, model, model.tokenizer, **kwargs)
    rows = evaluation.evaluate_rows(shifted, dataset, model, model.tokenizer, lamp_bertscore=(describe, score),
                                    **kwargs)
    assert rows["shifted"]["LaMP-BertScore"] == (100.0, 0.0)
    assert sum(calls) == 2 * len(dataset), "the real clips and the row, once (first replication)"
    assert scored[0][1] == [[item["caption"]] for item in dataset]  # one random caption each: here the only one
    assert {k: v for k, v in rows["shifted"].items() if k != "LaMP-BertScore"} == plain["shifted"]
    real = evaluation.evaluate_rows(None, dataset, model, model.tokenizer, lamp_bertscore=(describe, score), **kwargs)
    assert real["Real"]["LaMP-BertScore"] == (0.0, 0.0)  # the clips themselves (standard normal) are "dark"


class _WithStats(list):
    """A list of items with the dataset statistics `mean` and `std` (D,), as MotionTextDataset."""

    def __init__(self, items, seed=0):
        super().__init__(items)
        g = torch.Generator().manual_seed(seed)
        D = items[0]["motion"].shape[1]
        self.mean, self.std = torch.randn(D, generator=g).numpy(), (0.5 + torch.rand(D, generator=g)).numpy()


def _by_caption(dataset, transform):
    """generate_fn returning transform(item's own motion) for each caption (captions unique)."""
    motions = {item["caption"]: item["motion"] for item in dataset}

    def generate(captions, lengths):
        out = torch.zeros(len(captions), int(lengths.max()), dataset[0]["motion"].shape[1])
        for b, (caption, n) in enumerate(zip(captions, lengths.tolist())):
            out[b, :n] = transform(motions[caption][:n])
        return out
    return generate


def test_evaluate_swing_column_and_unchanged_metrics():
    """With a dataset's mean / std, every row has Swing: the Real row's second pass of the same
    (here uncropped) clips gives exactly 1; generated motions that are each clip itself: 1; each
    clip's mean frame held still: 0; twice each clip's deviations from its mean frame: 2 (the
    de-normalisation x * std + mean is affine per dimension, so deviations double in metres too).
    Swing draws no random numbers: the other metrics equal those of the same items without stats."""
    words = [(a, b, c) for a in WORDS[2:6] for b in WORDS[6:8] for c in WORDS[8:]]  # 16 unique captions
    items = []
    for i, item in enumerate(_fake_dataset(n=40, feat_dim=263)):
        a, b, c = words[i % len(words)]
        items.append(dict(item, caption=f"a person {a} {b} {c}" + " then" * (i // len(words))))
    dataset, model = _WithStats(items), tiny_embedder(feat_dim=263)
    kwargs = dict(replications=2, batch_size=16, mm_num_texts=0, diversity_times=20, collate_fn=_collate,
                  log=lambda s: None)
    real = evaluate(None, dataset, model, model.tokenizer, **kwargs)
    assert real["Swing"] == pytest.approx((1.0, 0.0))

    def doubled(x):
        centre = x.mean(0, keepdim=True)
        return centre + 2.0 * (x - centre)

    for transform, expected in ((lambda x: x, 1.0), (lambda x: x.mean(0, keepdim=True).expand_as(x), 0.0),
                                (doubled, 2.0)):
        row = evaluate(_by_caption(dataset, transform), dataset, model, model.tokenizer, **kwargs)
        assert row["Swing"][0] == pytest.approx(expected, abs=1e-5)
    plain = evaluate(_by_caption(dataset, doubled), list(dataset), model, model.tokenizer, **kwargs)
    assert plain == {k: v for k, v in row.items() if k not in ("Swing", *evaluation.QUALITY)}


def _scaled(dims, factor, dataset):
    """transform of normalised features that multiplies the de-normalised features `dims` by
    `factor`: x' = (factor (x std + mean) - mean) / std."""
    mean, std = (torch.as_tensor(a)[dims] for a in (dataset.mean, dataset.std))

    def transform(x):
        out = x.clone()
        out[..., dims] = (factor * (x[..., dims] * std + mean) - mean) / std
        return out
    return transform


def test_evaluate_quality_columns_by_hand():
    """The joint columns on 263-d features (random ones: the joints they give are arbitrary but
    fixed). The Real row's second pass of the same uncropped clips: Foot lift and Root speed exactly
    1, Foot skating that of the clips. A generator returning each clip itself: the same. Doubling the
    root's linear velocity (features 1:3, metres a frame in the root frame) doubles every root step,
    so Root speed 2 and Foot lift 1 (the feet's heights, features 4 + 3 * 9 + 1 and 4 + 3 * 10 + 1, are
    stored absolute); doubling those two heights doubles each foot's range: Foot lift 2, Root speed 1.
    Directly: Foot skating is the mean of metrics.foot_skating_ratio over the clips' joints."""
    items = [dict(item, caption=f"{item['caption']} {i}") for i, item in enumerate(_fake_dataset(n=32, feat_dim=263))]
    dataset, model = _WithStats(items), tiny_embedder(feat_dim=263)
    kwargs = dict(replications=1, batch_size=16, mm_num_texts=0, diversity_times=10, collate_fn=_collate,
                  log=lambda s: None)
    mean, std = torch.as_tensor(dataset.mean), torch.as_tensor(dataset.std)
    skating = np.mean([metrics.foot_skating_ratio(data.features_to_joints((it["motion"] * std + mean)[None].double()),
                                                  [it["length"]])[0] for it in items])
    real = evaluate(None, dataset, model, model.tokenizer, **kwargs)
    same = evaluate(_by_caption(dataset, lambda x: x), dataset, model, model.tokenizer, **kwargs)
    for row in (real, same):
        assert row["Foot skating"][0] == pytest.approx(skating, abs=1e-12)
        assert row["Foot lift"] == pytest.approx((1.0, 0.0)) and row["Root speed"] == pytest.approx((1.0, 0.0))
    feet = [4 + 3 * 9 + 1, 4 + 3 * 10 + 1]  # the y of joints 10 and 11 (ric starts at joint 1)
    for dims, lift, speed in (([1, 2], 1.0, 2.0), (feet, 2.0, 1.0)):
        row = evaluate(_by_caption(dataset, _scaled(dims, 2.0, dataset)), dataset, model, model.tokenizer, **kwargs)
        assert row["Foot lift"][0] == pytest.approx(lift, rel=1e-5)
        assert row["Root speed"][0] == pytest.approx(speed, rel=1e-5)


class _Drawing(list):
    """Items drawn like MotionTextDataset's: a random crop (4 frames fewer, at a random offset) and
    one of two captions, from a generator that `reseed` restarts."""

    def __init__(self, items, seed=0):
        super().__init__(items)
        self.reseed(seed)

    def reseed(self, seed):
        self._rng = np.random.default_rng(seed)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        offset, length = int(self._rng.integers(0, 5)), item["length"] - 4
        caption = item["caption"] + (" then" if self._rng.integers(2) else "")
        return dict(item, motion=item["motion"][offset:offset + length], length=length, caption=caption)


def test_rows_with_the_same_generator_score_the_same():
    """t2m_rows reseeds the dataset per replication, so two rows with one generator score exactly
    alike although every pass over the dataset draws new crops and captions."""
    dataset, model = _Drawing(_fake_dataset()), tiny_embedder()
    assert [dataset[0]["caption"] for _ in range(8)] != [dataset[0]["caption"]] * 8, "draws must vary"

    def noise(captions, lengths):
        return torch.randn(len(captions), int(lengths.max()), 12)

    cfg = evaluation.EvalConfig(replications=2, mm_num_texts=2, mm_num_gens=10, diversity_times=20)
    methods = {"Real": None, "A": lambda c, n: {"A": noise(c, n)}, "B": lambda c, n: {"B": noise(c, n)}}
    rows = evaluation.t2m_rows(methods, dataset, model, model.tokenizer, cfg, seed=3, log=lambda s: None)
    assert list(rows) == ["Real", "A", "B"] and rows["A"] == rows["B"]


def test_rows_generated_together_score_as_generated_alone():
    """evaluate_rows with one generate_fn for two rows (one noise draw per batch, decoded twice)
    gives each row exactly what evaluating it alone from the same seed gives."""
    dataset, model = _Drawing(_fake_dataset()), tiny_embedder()

    def noise(captions, lengths):
        return torch.randn(len(captions), int(lengths.max()), 12)

    kwargs = dict(replications=2, mm_num_texts=3, mm_num_gens=10, diversity_times=20, seed=5, log=lambda s: None)
    both = evaluation.evaluate_rows(lambda c, n: (lambda x: {"plain": x, "doubled": 2 * x})(noise(c, n)),
                                    dataset, model, model.tokenizer, **kwargs)
    assert both["plain"] == evaluate(noise, dataset, model, model.tokenizer, **kwargs)
    assert both["doubled"] == evaluate(lambda c, n: 2 * noise(c, n), dataset, model, model.tokenizer, **kwargs)
    assert both["plain"] != both["doubled"]


def test_results_table_and_write_results(tmp_path):
    real = {"FID": (0.0, 0.0), "R-precision top-1": (0.5, 0.01), "R-precision top-2": (0.7, 0.01),
            "R-precision top-3": (0.8, 0.01), "MMdist": (3.0, 0.02), "Diversity": (9.5, 0.1)}
    a = dict(real, FID=(0.5, 0.02), Diversity=(9.0, 0.1), MModality=(2.5, 0.1))
    b = dict(real, FID=(0.3, 0.02), Diversity=(8.0, 0.1), MModality=(2.0, 0.1))
    table = results_table({"MLD": a, "Real": real, "LEAD": b}, "HumanML3D", note="20 replications")
    lines = table.splitlines()
    assert lines[0] == "### HumanML3D"
    header = lines[2]
    for column in ["FID ↓", "R-precision top-1 ↑", "R-precision top-2 ↑", "R-precision top-3 ↑",
                   "MMdist ↓", "Diversity →", "MModality ↑"]:
        assert column in header
    assert lines[4].startswith("| Real |") and lines[5].startswith("| MLD |") and lines[6].startswith("| LEAD |")
    assert "**0.300 ± 0.020**" in lines[6]  # lower FID wins
    assert "**9.000 ± 0.100**" in lines[5]  # Diversity closest to Real's 9.5 wins
    assert lines[4].rstrip().endswith("| - |")  # Real has no MModality
    assert "20 replications" in table

    # the joint columns: skating lower is better, the ratios closest to 1 (not to Real's value)
    quality = {"Real": dict(real, **{"Foot skating": (0.05, 0.0), "Foot lift": (0.5, 0.0), "Root speed": (1.02, 0.0)}),
               "MLD": dict(a, **{"Foot skating": (0.10, 0.0), "Foot lift": (0.7, 0.0), "Root speed": (0.95, 0.0)}),
               "LEAD": dict(b, **{"Foot skating": (0.08, 0.0), "Foot lift": (1.2, 0.0), "Root speed": (1.06, 0.0)})}
    lines = results_table(quality, "HumanML3D").splitlines()
    assert lines[2].endswith("| Foot skating ↓ | Foot lift → 1 | Root speed → 1 |")
    assert lines[5].endswith("| 0.100 ± 0.000 | 0.700 ± 0.000 | **0.950 ± 0.000** |")  # MLD
    assert lines[6].endswith("| **0.080 ± 0.000** | **1.200 ± 0.000** | 1.060 ± 0.000 |")  # LEAD

    write_results(tmp_path, "t2m", {"Real": real, "LEAD": b}, title="Text-to-motion")
    write_results(tmp_path, "retrieval", {"evaluator": {"T2M R@1": (0.4, 0.0), "M2T R@1": (0.3, 0.0)}})
    write_results(tmp_path, "t2m", {"Real": real, "MLD": a}, title="Text-to-motion")  # replaces its section
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert list(saved) == ["t2m", "retrieval"]
    assert set(saved["t2m"]["rows"]) == {"Real", "MLD"}
    assert "### Text-to-motion" in md and "| MLD |" in md and "| LEAD |" not in md
    assert "T2M R@1 ↑" in md and "M2T R@1 ↑" in md


# ---------------------------------------------------------------------------------------
# The VAE's reconstruction errors (joint positions recovered from the features)


class _Clips:
    """A stand-in dataset: random normalised features for two clips, with mean and std."""

    def __init__(self, lengths=(6, 9), feat_dim=263, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(feat_dim, generator=g).numpy()
        self.std = (0.5 + torch.rand(feat_dim, generator=g)).numpy()
        self.items = [torch.randn(n, feat_dim, generator=g) * 0.1 for n in lengths]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"motion": self.items[i], "length": len(self.items[i]), "caption": "", "name": str(i)}


def test_joint_errors_by_hand():
    """Hand cases (J = 22 joints, every valid frame of both clips):
    - raise the root's height (feature 3) by d metres: only the root joint moves (the other
      joints' heights are stored absolute), so global = d / J, root-aligned = (J - 1) d / J (the
      root moves against all the others), body frame = 0 (feature 3 is not a body-frame position);
    - move joint 5's body-frame x (feature 4 + 3 * 4) by d: the heading turns it about Y but keeps
      its length, so every error is d / J."""
    clips, d, J = _Clips(), 0.3, 22
    std = torch.as_tensor(clips.std)

    def shifted(feature):
        def reconstruct(x, lengths):
            out = x.clone()
            out[..., feature] += d / std[feature]                     # d metres once de-normalised
            return out * t2m_evaluator._valid(lengths, x.shape[1])[..., None]
        return reconstruct

    errors = evaluation.joint_errors(shifted(3), clips, torch.device("cpu"), batch_size=1)
    assert errors["global"] == pytest.approx(d / J, rel=1e-4)
    assert errors["root-aligned"] == pytest.approx((J - 1) * d / J, rel=1e-4)
    assert errors["body frame"] == pytest.approx(0.0, abs=1e-6)
    errors = evaluation.joint_errors(shifted(4 + 3 * 4), clips, torch.device("cpu"))
    for name in ("global", "root-aligned", "body frame"):
        assert errors[name] == pytest.approx(d / J, rel=1e-4), name
    perfect = evaluation.joint_errors(lambda x, lengths: x, clips, torch.device("cpu"))
    assert all(v == pytest.approx(0.0, abs=1e-7) for v in perfect.values())


def test_reconstruction_swing_hand_cases():
    """The identity reconstructs with Swing 1, each clip's mean frame with 0, twice each clip's
    deviations from it with 2 (normalised or not: x * std + mean is affine per dimension)."""
    clips = _Clips(lengths=(6, 9, 12))

    def about_clip_mean(scale):
        def reconstruct(x, lengths):
            valid = t2m_evaluator._valid(lengths, x.shape[1])[..., None]               # (B, T, 1)
            centre = (x * valid).sum(1, keepdim=True) / lengths[:, None, None]   # (B, 1, D)
            return (centre + scale * (x - centre)) * valid
        return reconstruct

    cpu = torch.device("cpu")
    assert evaluation.reconstruction_swing(lambda x, lengths: x, clips, cpu) == pytest.approx(1.0)
    assert evaluation.reconstruction_swing(about_clip_mean(0.0), clips, cpu) == pytest.approx(0.0, abs=1e-12)
    assert evaluation.reconstruction_swing(about_clip_mean(2.0), clips, cpu, batch_size=2) == pytest.approx(2.0)


def test_reconstruction_quality_by_hand():
    """The identity reconstructs with Foot lift and Root speed 1 and the motions' own skating; the
    root's linear velocity doubled: Root speed 2; a dataset with `fork` keeps its generator where it was."""
    clips, cpu = _Clips(lengths=(6, 9, 12)), torch.device("cpu")
    same = evaluation.reconstruction_quality(lambda x, lengths: x, clips, cpu)
    assert same["Foot skating"] == same["real Foot skating"]
    assert same["Foot lift"] == pytest.approx(1.0) and same["Root speed"] == pytest.approx(1.0)
    faster = evaluation.reconstruction_quality(lambda x, lengths: _scaled([1, 2], 2.0, clips)(x), clips, cpu)
    assert faster["Root speed"] == pytest.approx(2.0, rel=1e-5) and faster["Foot lift"] == pytest.approx(1.0)

    class Forking(_Clips):
        def __init__(self):
            super().__init__(lengths=(6, 9))
            self.draws = 0

        def __getitem__(self, i):
            self.draws += 1
            return super().__getitem__(i)

        def fork(self):
            twin = Forking.__new__(Forking)
            twin.__dict__.update(self.__dict__)
            return twin

    forking = Forking()
    evaluation.reconstruction_quality(lambda x, lengths: x, forking, cpu)
    assert forking.draws == 0
    figures = evaluation.vae_report(lambda x, lengths: x, forking, cpu)
    assert figures["val_foot_lift_ratio"] == figures["val_root_speed_ratio"] == 1.0


# --------------------------------------------------------------------------------------
# The one inference path: projector.generate, and rows that share their latents


class _Text:
    """A text encoder stand-in: c is a fixed function of the caption's length."""
    dim = 8

    def encode_cached(self, captions):
        return torch.stack([torch.full((self.dim,), float(len(c)) / 10) for c in captions])


class _Realigner:
    """Records the latents it is given; realigns by doubling."""
    def __init__(self):
        self.seen = []

    def realign(self, z):
        self.seen.append(z.clone())
        return 2 * z


def _tiny_pipeline() -> projector.Pipeline:
    torch.manual_seed(0)
    motion_vae = vae.MotionVAE(vae.VAEConfig(latent_dim=8, n_layers=1, n_heads=2, ff_dim=16, max_len=40), 263).eval()
    denoiser = diffusion.Denoiser(diffusion.DiffusionConfig(n_layers=1, n_heads=2, ff_dim=16, sample_steps=3),
                                  motion_vae.latent_shape, _Text.dim).eval()
    return projector.Pipeline(_Text(), motion_vae, denoiser)


@torch.no_grad()
def test_generate_is_ddim_then_realign_then_decode():
    """projector.generate: z_0 by guided DDIM from the captions' c and the empty caption's, then
    D_vae(z_0) (MLD) or D_vae(realign(z_0)) (LEAD); given z, it samples nothing."""
    pipe, realigner = _tiny_pipeline(), _Realigner()
    captions, lengths = ["a person walks", "jumps"], torch.tensor([16, 24])
    torch.manual_seed(3)
    z = pipe.schedule.ddim_sample(pipe.denoiser, _Text().encode_cached(captions), _Text().encode_cached([""])[0],
                                  (2, *pipe.vae.latent_shape))
    torch.manual_seed(3)
    torch.testing.assert_close(projector.generate(pipe, captions, lengths), pipe.vae.decode(z, lengths), rtol=0, atol=0)
    torch.manual_seed(3)
    lead = projector.generate(pipe, captions, lengths, realigner)
    torch.testing.assert_close(realigner.seen[0], z, rtol=0, atol=0)
    torch.testing.assert_close(lead, pipe.vae.decode(2 * z, lengths), rtol=0, atol=0)
    state = torch.random.get_rng_state()
    torch.testing.assert_close(projector.generate(pipe, captions, lengths, z=z), pipe.vae.decode(z, lengths))
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing sampled


@torch.no_grad()
def test_shared_latents_sample_once_and_decode_per_row(monkeypatch):
    """MLD and LEAD rows from shared_latents decode one z_0 per call: the LEAD row realigns exactly
    the latents the MLD row decoded, and the diffusion is sampled once."""
    pipe, realigner, calls = _tiny_pipeline(), _Realigner(), []
    sample = pipe.schedule.ddim_sample
    monkeypatch.setattr(pipe.schedule, "ddim_sample", lambda *a, **k: calls.append(1) or sample(*a, **k))
    captions, lengths = ["a person walks", "jumps"], torch.tensor([16, 24])
    torch.manual_seed(3)
    rows = evaluation.shared_latents(pipe, {"MLD": None, "LEAD": realigner})(captions, lengths)
    assert list(rows) == ["MLD", "LEAD"] and len(calls) == 1
    torch.manual_seed(3)
    torch.testing.assert_close(rows["MLD"], projector.generate(pipe, captions, lengths), rtol=0, atol=0)
    z = realigner.seen[0]
    torch.testing.assert_close(rows["MLD"], pipe.vae.decode(z, lengths), rtol=0, atol=0)
    torch.testing.assert_close(rows["LEAD"], pipe.vae.decode(2 * z, lengths), rtol=0, atol=0)
