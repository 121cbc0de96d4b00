"""inversion.py: only the new word's row learns, the three MTI losses by hand, the loss wiring
against an independent recomputation, save -> load of a learned word, example-motion checks,
generation with and without realignment, and the evaluation helpers."""
import dataclasses

import numpy as np
import pytest
import torch

import data
import inversion as I
import synthetic
import projector as P
from clip import ClipConfig, TextEncoder
from diffusion import Denoiser, DiffusionConfig, GaussianDiffusion
from projector import Projector, ProjectorConfig
from vae import MotionVAE, VAEConfig

CAPTIONS = ["a person walks forward", "someone jumps then waves", "the man runs in a circle",
            "a robot kicks with the left leg", "she squats down slowly", "he walks backward"] * 3
D = data.T2M.feat_dim


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread avoids thread hand-offs that dominate (and, on a busy
    machine, stall) such small operations. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    config = ClipConfig(vocab_size=600, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        projection_dim=24)
    TextEncoder.offline(CAPTIONS, folder, seed=0, config=config, log=lambda *_: None)
    return folder


def build_models(clip_dir) -> I.FrozenModels:
    """Tiny frozen models in eval mode, seeded."""
    torch.manual_seed(0)
    text = TextEncoder.from_pretrained(clip_dir)
    vae = MotionVAE(VAEConfig(latent_dim=16, n_layers=3, n_heads=2, ff_dim=32, max_len=64), D)
    dcfg = DiffusionConfig(n_layers=3, n_heads=2, ff_dim=32, sample_steps=3)
    denoiser = Denoiser(dcfg, vae.latent_shape, text.dim)
    proj = Projector(ProjectorConfig(n_layers=1, n_heads=2, ff_dim=32), vae.latent_shape, text.dim)
    for model in (vae, denoiser, proj):
        model.eval().requires_grad_(False)
    return I.FrozenModels(text, vae, denoiser, GaussianDiffusion(dcfg), proj)


def examples(n=1, frames=(56,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(frames[i % len(frames)], D, generator=g) for i in range(n)]


def snapshot(models: I.FrozenModels) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the frozen models, copied."""
    out = {}
    for name in ("text", "vae", "denoiser", "projector"):
        for key, value in getattr(models, name).state_dict().items():
            out[f"{name}.{key}"] = value.detach().clone()
    return out


# ----------------------------------------------------------------------------
# Only the new row learns


@pytest.mark.parametrize("objective", I.OBJECTIVES)
def test_only_the_new_row_changes(clip_dir, objective):
    models = build_models(clip_dir)
    cfg = I.InversionConfig(steps=3, segment_min=16, lr=1e-2)
    I.invert(models, examples(), "<earlier>", "walks", cfg, objective="mld", seed=1)  # an earlier word
    earlier = models.text.added_embeddings[0].detach().clone()
    before = snapshot(models)
    init_row = models.text.word_embeddings.weight[models.text.tokenizer.encode("jumps")[0]].clone()
    v = I.invert(models, examples(), "<*>", "jumps", cfg, objective=objective, seed=2)
    after = snapshot(models)
    frozen = [k for k in before if "added" not in k]
    assert any(k.startswith("text.") and "table" in k for k in frozen), "the word table must be compared"
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} changed: only v_* may learn"
    added = models.text.added_embeddings
    assert added.shape[0] == 2
    assert torch.equal(added[0], earlier), "an earlier learned word must not move"
    assert torch.equal(added[1], v) and not torch.equal(v, init_row), "v_* must move from its init"
    for name in ("vae", "denoiser", "projector"):
        assert all(p.grad is None for p in getattr(models, name).parameters()), f"{name} got a gradient"
    assert all(p.grad is None for n, p in models.text.named_parameters() if "added" not in n)


def test_unknown_objective_and_no_examples_are_errors(clip_dir):
    models = build_models(clip_dir)
    with pytest.raises(ValueError, match="objective"):
        I.invert(models, examples(), "<a>", "walks", I.InversionConfig(steps=1), objective="pixels")
    with pytest.raises(ValueError, match="at least one example"):
        I.invert(models, [], "<b>", "walks", I.InversionConfig(steps=1))


# ----------------------------------------------------------------------------
# The losses by hand


def test_mti_mld_loss_hand_case():
    """eps = (1, 2), eps_theta = (0, 0): squares 1, 4 -> mean 2.5."""
    loss, parts = I.mti_mld_loss(torch.tensor([[[1.0, 2.0]]]), torch.zeros(1, 1, 2))
    assert loss.item() == pytest.approx(2.5) and parts["mti_mld"].item() == pytest.approx(2.5)


def test_mti_feat_loss_counts_valid_frames_only():
    """Motion 0 (3 valid frames) differs by 1, 2, 0; motion 1 (1 valid frame) by 3, and by 100 on
    its padded frames, which must not count: (1 + 4 + 0 + 9) / 4 = 3.5."""
    true = torch.zeros(2, 3, 1)
    hat = torch.tensor([[[1.0], [2.0], [0.0]], [[3.0], [100.0], [100.0]]])
    loss, _ = I.mti_feat_loss(true, hat, torch.tensor([3, 1]))
    assert loss.item() == pytest.approx(3.5)


def test_mti_lead_loss_hand_case():
    """E_proj differences (1, -1) and (2, 0): (1 + 1 + 4 + 0) / 4 = 1.5."""
    loss, _ = I.mti_lead_loss(torch.tensor([[1.0, 0.0], [2.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert loss.item() == pytest.approx(1.5)


@pytest.mark.parametrize("objective", I.OBJECTIVES)
def test_mti_loss_matches_an_independent_recomputation(clip_dir, objective):
    """Redraw t and eps from the same seed and recompute each objective from the formulas (float64
    schedule): z_t = sqrt(abar) z0 + sqrt(1 - abar) eps, F(eps) = z0,
    F(eps_theta) = (z_t - sqrt(1 - abar) eps_theta) / sqrt(abar)."""
    models = build_models(clip_dir)
    motion, lengths = I.sample_segments(examples(2, (40, 60)), 4, 16, 64, np.random.default_rng(0))
    prompts = ["a person walks", "someone jumps", "he runs", "a robot walks"]
    loss, _ = I.mti_loss(objective, models, motion, lengths, prompts, torch.Generator().manual_seed(3))
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        z0 = models.vae.encode(motion, lengths, sample=False)[1]
        t = torch.randint(0, 1000, (4,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        abar = models.schedule.alphas_cumprod.double()[t].view(-1, 1, 1)
        z_t = (abar.sqrt() * z0 + (1 - abar).sqrt() * eps).float()
        c, _ = models.text.encode(prompts)
        eps_pred = models.denoiser(z_t, t, c)
        x0_hat = ((z_t - (1 - abar).sqrt() * eps_pred) / abar.sqrt()).float()
        if objective == "mld":
            expected = ((eps - eps_pred) ** 2).mean()
        elif objective == "feat":
            diff = models.vae.decode(z0, lengths) - models.vae.decode(x0_hat, lengths)
            valid = torch.arange(diff.shape[1])[None] < lengths[:, None]
            expected = (diff[valid] ** 2).sum() / (valid.sum() * D)
        else:
            expected = ((models.projector.project(z0) - models.projector.project(x0_hat)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3, abs=1e-6)


# ----------------------------------------------------------------------------
# Save and load a learned word


def test_learned_word_survives_save_and_load(clip_dir, tmp_path):
    models = build_models(clip_dir)
    v = I.invert(models, examples(), "<limp>", "walks", I.InversionConfig(steps=2, segment_min=16), seed=0)
    path = I.save_token(tmp_path / "tokens" / "limp.pt", "<limp>", "walks", v, "lead")
    state = torch.load(path, weights_only=True)
    assert set(state) == {"word", "init", "embedding", "objective"} and state["objective"] == "lead"
    fresh = TextEncoder.from_pretrained(clip_dir)
    assert I.load_tokens(fresh, tmp_path / "tokens", ["a person <LIMP> quickly"]) == ["<limp>"]
    prompt = ["a person <limp>"]
    assert torch.allclose(fresh.encode_cached(prompt), models.text.encode_cached(prompt), atol=1e-6)
    assert not torch.allclose(fresh.encode_cached(prompt), fresh.encode_cached(["a person walks"]))
    # loading again overwrites the row instead of adding a second word
    I.load_token(fresh, path)
    assert fresh.added_embeddings.shape[0] == 1


def test_missing_or_foreign_words_are_clear_errors(clip_dir, tmp_path):
    fresh = TextEncoder.from_pretrained(clip_dir)
    with pytest.raises(ValueError, match="<nope> has no learned embedding"):
        I.load_tokens(fresh, tmp_path, ["a person <nope>"])
    path = I.save_token(tmp_path / "wide.pt", "<wide>", "walks", torch.zeros(fresh.width + 1), "lead")
    with pytest.raises(ValueError, match="another encoder"):
        I.load_token(fresh, path)
    assert I.token_word("Zombie_1") == "<zombie_1>"
    with pytest.raises(ValueError, match="--word"):
        I.token_word("two words")


# ----------------------------------------------------------------------------
# Example motions


def test_example_motion_files(tmp_path):
    mean, std = np.full(D, 0.5, np.float32), np.full(D, 2.0, np.float32)
    features = np.random.default_rng(0).standard_normal((50, D)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    x = I.load_example_motion(tmp_path / "f.npy", mean, std)
    assert torch.allclose(x, torch.from_numpy((features - 0.5) / 2.0))
    joints = synthetic.forward_kinematics(np.zeros((61, 22, 3)))  # the rest pose, 61 frames
    np.save(tmp_path / "j.npy", joints)
    assert I.load_example_motion(tmp_path / "j.npy", mean, std).shape == (60, D)
    bad = {"shape.npy": np.zeros((50, 10)), "nan.npy": np.full((50, D), np.nan), "short.npy": np.zeros((20, D))}
    for name, array in bad.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError, match=name):
            I.load_example_motion(tmp_path / name, mean, std)


def test_segments_are_crops_in_multiples_of_four():
    x = torch.arange(70.0)[:, None].expand(70, D)
    motion, lengths = I.sample_segments([x], 8, 40, 64, np.random.default_rng(0))
    assert motion.shape[0] == 8 and all(l % 4 == 0 and 40 <= l <= 64 for l in lengths.tolist())
    for b, l in enumerate(lengths.tolist()):
        row = motion[b, :l, 0]
        assert torch.equal(row, row[0] + torch.arange(float(l))), "a segment is a contiguous crop"
        assert (motion[b, l:] == 0).all()


# ----------------------------------------------------------------------------
# Generation and evaluation helpers


def test_generate_and_embed_decodes_one_sample_with_and_without_realignment(clip_dir):
    """The plain and the realigned motion of a prompt come from the same z_0, through the project's
    one inference path (projector.generate), and the same seed gives the same noise."""
    models = build_models(clip_dir)
    lengths = torch.tensor([40, 48])
    prompts = ["a person walks", "someone jumps"]

    class MeanEmbedder:
        def encode_motion(self, motion, lengths):
            return motion.mean(1)                                               # (B, D)

    out = I.generate_and_embed(models, MeanEmbedder(), prompts, lengths, seed=0)
    pipe = models.pipeline()
    z = pipe.latents(prompts, torch.Generator().manual_seed(0))
    for project, realigner in ((False, None), (True, models.projector)):
        expected = P.generate(pipe, prompts, lengths, realigner, z=z)
        for b, motion in enumerate(out[project][1]):
            torch.testing.assert_close(motion, expected[b, :lengths[b]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[False][1][0], out[True][1][0])
    again = I.generate_and_embed(models, MeanEmbedder(), prompts, lengths, seed=0)
    np.testing.assert_array_equal(again[True][0], out[True][0])


def test_coarse_descriptor_picks_the_first_one_token_verb():
    one = {"walk", "walks", "jumps"}.__contains__
    assert I.coarse_descriptor("a man walks forward", "a/DET man/NOUN walk/VERB forward/ADV", one, "x") == "walk"
    # lemma "jump" is not one token, the caption's "jumps" is
    assert I.coarse_descriptor("he jumps", "he/PRON jump/VERB", one, "x") == "jumps"
    assert I.coarse_descriptor("a person sneaks", "a/DET person/NOUN sneak/VERB", one, "walk") == "walk"


def test_caption_r_precision_hand_case():
    """Captions at 0, 1, ..., 31 on a line (E = 1), all 32 in every pool. A motion at 0.1 owned by
    caption 0 is nearest its own: hits (1, 1, 1). A motion at 1.2 owned by caption 0 (distance 1.2)
    has captions 1 (0.2) and 2 (0.8) closer: rank 2 -> hits (0, 0, 1)."""
    text = np.arange(32.0)[:, None]
    hits = I.caption_r_precision(np.array([[0.1], [1.2]]), np.array([0, 0]), text)
    assert hits.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least 32"):
        I.caption_r_precision(np.zeros((1, 1)), np.array([0]), text[:10])


def test_config_defaults_are_the_papers():
    cfg = I.InversionConfig()
    assert (cfg.steps, cfg.batch_size, cfg.test_motions, cfg.objective) == (20, 4, 100, "lead")
    assert all(I.PLACEHOLDER in t for t in I.TEMPLATES) and "the sim <*>" in I.TEMPLATES
    assert dataclasses.replace(cfg, steps=5).steps == 5
