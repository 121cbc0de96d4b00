"""masked_generator.py: masking (LaMP Sec. 3.2.1), Eq. (2), the causal switch, guidance, decoding."""
import dataclasses
import math

import pytest
import torch

import masked_generator as mg
from lamp import LaMPConfig
from vqvae import MotionVQVAE

CFG = mg.MaskedGeneratorConfig(width=32, n_layers=2, n_heads=2, ff_dim=64, dropout=0.0, iterations=5)
S = 16  # codes


def small_model(cfg=CFG, cond_dim=8, max_tokens=12, seed=0):
    torch.manual_seed(seed)
    return mg.MaskedTransformer(cfg, S, cond_dim, max_tokens).eval()


def test_the_mask_count_follows_the_cosine_schedule_on_each_clips_own_tokens():
    B, n = 400, 10
    lengths = torch.randint(1, n + 1, (B,))
    valid = torch.arange(n)[None, :] < lengths[:, None]
    codes = torch.randint(0, S, (B, n))
    inputs, labels, masked = mg.mask_tokens(codes, valid, CFG, S, torch.Generator().manual_seed(3))
    r = torch.rand(B, generator=torch.Generator().manual_seed(3))  # the first draw: r ~ U(0, 1)
    expected = (lengths * torch.cos(math.pi * r / 2)).round().clamp(min=1)
    assert torch.equal(masked.sum(1), expected.long())
    assert not (masked & ~valid).any(), "padding is never masked"
    assert torch.equal(labels[masked], codes[masked]) and (labels[~masked] == mg.IGNORE).all()
    assert (inputs[~valid] == S + 1).all() and torch.equal(inputs[valid & ~masked], codes[valid & ~masked])


def test_masked_tokens_become_mask_random_or_stay_in_berts_shares():
    B, n = 2000, 10
    codes = torch.randint(0, S, (B, n))
    valid = torch.ones(B, n, dtype=torch.bool)
    inputs, _, masked = mg.mask_tokens(codes, valid, CFG, S, torch.Generator().manual_seed(0))
    total = int(masked.sum())
    as_mask = float((inputs[masked] == S).sum()) / total
    unchanged = float((inputs[masked] == codes[masked]).sum()) / total
    # [M]: 0.9 x 0.88 = 0.792; unchanged: 0.9 x 0.12 + 0.1 / S (a random code that equals the old one)
    assert as_mask == pytest.approx(0.792, abs=0.015)
    assert unchanged == pytest.approx(0.108 + 0.1 / S, abs=0.015)


def test_the_loss_is_the_cross_entropy_of_the_masked_tokens_only():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[0, mg.IGNORE], [1, mg.IGNORE]])
    # by hand: -log(e^2 / (e^2 + 2)) and -log(1 / (2 + e^3)), averaged
    hand = (-math.log(math.e ** 2 / (math.e ** 2 + 2)) - math.log(1 / (2 + math.e ** 3))) / 2
    assert mg.masked_token_loss(logits, labels).item() == pytest.approx(hand, rel=1e-6)


def test_causal_attention_hides_later_tokens_and_bidirectional_does_not():
    model = small_model()
    ids = torch.randint(0, S, (2, 8))
    cond, valid = torch.randn(2, 8), torch.ones(2, 8, dtype=torch.bool)
    later = ids.clone()
    later[:, 5:] = (later[:, 5:] + 1) % S
    causal = model(ids, cond, valid, causal=True), model(later, cond, valid, causal=True)
    assert torch.allclose(causal[0][:, :5], causal[1][:, :5], atol=1e-6)
    assert not torch.allclose(causal[0][:, 5:], causal[1][:, 5:], atol=1e-4)
    both = model(ids, cond, valid), model(later, cond, valid)
    assert not torch.allclose(both[0][:, :5], both[1][:, :5], atol=1e-4)


def test_padding_does_not_change_the_valid_tokens_logits():
    model = small_model()
    ids = torch.randint(0, S, (1, 6))
    cond = torch.randn(1, 8)
    short = model(ids[:, :4], cond, torch.ones(1, 4, dtype=torch.bool))
    padded = torch.cat([ids[:, :4], torch.full((1, 2), S + 1)], 1)
    long = model(padded, cond, torch.arange(6)[None] < 4)
    assert torch.allclose(short, long[:, :4], atol=1e-5)


def test_guidance_combines_the_logits_as_written():
    model = small_model()
    ids, cond = torch.randint(0, S + 1, (3, 7)), torch.randn(3, 8)
    valid = torch.ones(3, 7, dtype=torch.bool)
    conditional, unconditional = model(ids, cond, valid), model(ids, torch.zeros_like(cond), valid)
    guided = mg.guided_logits(model, ids, cond, valid, 4.0)
    assert torch.allclose(guided, unconditional + 4.0 * (conditional - unconditional), atol=1e-5)
    assert torch.allclose(mg.guided_logits(model, ids, cond, valid, 1.0), conditional, atol=1e-6)


def test_top_k_keeps_the_top_tenth_and_gumbel_draws_from_the_softmax():
    logits = torch.arange(20.0)[None]
    kept = mg.top_k_filter(logits, 0.9)  # ceil(0.1 x 20) = 2 kept
    assert torch.isfinite(kept).sum() == 2 and torch.isfinite(kept[0, -2:]).all()
    probs = torch.tensor([0.5, 0.3, 0.2])
    draws = mg.gumbel_sample(probs.log().expand(20000, 3), 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.bincount(draws, minlength=3) / 20000.0, probs, atol=0.015)


def test_decoding_fills_every_token_in_k_iterations_remasking_as_the_schedule_says():
    model = small_model(dataclasses.replace(CFG, iterations=6))
    n_tokens = torch.tensor([9, 4, 1])
    trace = []
    ids = mg.generate(model, torch.randn(3, 8), n_tokens, torch.Generator().manual_seed(0), trace)
    valid = torch.arange(9)[None] < n_tokens[:, None]
    assert ids.shape == (3, 9) and (ids[valid] < S).all() and (ids[~valid] == S + 1).all()
    assert len(trace) == 6
    for k, remask in enumerate(trace):
        expected = (n_tokens * math.cos(math.pi * k / 5 / 2)).round().clamp(min=1)
        assert torch.equal(remask.sum(1), expected.long()), k
        assert not (remask & ~valid).any()
        if k:  # a token kept at k - 1 is final: only tokens just predicted are re-masked
            assert not (remask & ~trace[k - 1]).any()


def test_generate_motion_decodes_codes_to_frames_zero_past_each_length():
    vq_cfg = LaMPConfig(vq_codes=S, vq_code_dim=8, vq_width=16, vq_depth=1)
    torch.manual_seed(0)
    vq = MotionVQVAE(vq_cfg, 7).eval()
    vq.quantizer.codebook.normal_()

    class Text:
        def encode_cached(self, captions):
            return torch.randn(len(captions), 8)

    motion = mg.generate_motion(small_model(), vq, Text(), ["a", "b"], torch.tensor([40, 22]))
    assert motion.shape == (2, 40, 7)
    assert motion[1, 20:].abs().sum() == 0 and motion[1, :20].abs().sum() > 0  # 22 frames: 5 tokens, 20 frames


def test_a_few_steps_fit_one_batch():
    model = small_model().train()
    vq_cfg = LaMPConfig(vq_codes=S, vq_code_dim=8, vq_width=16, vq_depth=1)
    vq = MotionVQVAE(vq_cfg, 7).eval()
    vq.quantizer.codebook.normal_()

    class Text:
        def encode_cached(self, captions):
            return torch.ones(len(captions), 8)

    batch = {"motion": torch.randn(4, 24, 7), "lengths": torch.tensor([24, 24, 20, 16]), "caption": list("abcd")}
    compute = mg.loss_fn(model, vq, Text(), torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first = compute(batch)[0].item()
    for _ in range(60):
        loss, _ = compute(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert compute(batch)[0].item() < 0.5 * first


def test_config_refuses_an_unknown_condition_and_one_iteration():
    with pytest.raises(ValueError, match="lamp_t2m.condition"):
        mg.MaskedGeneratorConfig(condition="bert")
    with pytest.raises(ValueError, match="lamp_t2m.iterations"):
        mg.MaskedGeneratorConfig(iterations=1)
