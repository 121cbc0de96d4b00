"""Tests for vae.py: the KL against a hand computation, the skip structure, padding, shapes, the
posterior-noise ramp."""
import math

import pytest
import torch

from vae import (MotionVAE, SkipTransformer, VAEConfig, kl_to_standard_normal, noise_ramped, slot_interpolation,
                 lengths_to_mask, slot_pooling, vae_loss, vae_loss_fn)

D = 263  # HumanML3D features


def tiny_cfg(**overrides) -> VAEConfig:
    cfg = dict(n_tokens=1, latent_dim=32, n_layers=3, n_heads=2, ff_dim=64, max_len=40)
    cfg.update(overrides)
    return VAEConfig(**cfg)


def test_kl_equals_closed_form_on_a_hand_case():
    """mu = (1, 0), logvar = (0, log 4), i.e. sigma^2 = (1, 4).
    Per element 1/2 (mu^2 + sigma^2 - 1 - log sigma^2):
        element 1: 1/2 (1 + 1 - 1 - 0)           = 0.5
        element 2: 1/2 (0 + 4 - 1 - log 4)       = 1.5 - log 2 = 0.8068528...
    MLD's KLLoss takes the mean over elements: (0.5 + 0.8068528) / 2 = 0.6534264."""
    mu = torch.tensor([[[1.0, 0.0]]])
    logvar = torch.tensor([[[0.0, math.log(4.0)]]])
    expected = (0.5 + 1.5 - math.log(2.0)) / 2
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(expected, abs=1e-6)
    # and what MLD computes: torch.distributions' KL, mean-reduced
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(
        torch.distributions.kl_divergence(q, p).mean().item(), abs=1e-6)


def test_skip_transformer_has_the_stated_blocks():
    """9 layers = 4 input blocks, 1 middle, 4 output, with 4 Linear(2d -> d) fusions."""
    stack = SkipTransformer(9, 32, 2, 64, 0.1)
    assert len(stack.input_blocks) == 4 and len(stack.output_blocks) == 4
    assert isinstance(stack.middle_block, torch.nn.TransformerEncoderLayer)
    assert [(l.in_features, l.out_features) for l in stack.linear_blocks] == [(64, 32)] * 4
    assert not stack.middle_block.norm_first, "MLD layers are post-norm"
    vae = MotionVAE(VAEConfig(latent_dim=32, n_heads=2, ff_dim=64), D)
    assert len(vae.encoder.input_blocks) == len(vae.decoder.output_blocks) == 4
    assert isinstance(vae.decoder.middle_block, torch.nn.TransformerDecoderLayer)
    with pytest.raises(ValueError, match="odd number"):
        SkipTransformer(4, 32, 2, 64, 0.1)


def test_skip_transformer_joins_blocks_in_unet_order():
    """5 layers: x1 = in0(x), x2 = in1(x1), m = mid(x2), y = out0(lin0[m, x2]),
    y = out1(lin1[y, x1]), then the final LayerNorm."""
    torch.manual_seed(0)
    stack = SkipTransformer(5, 16, 2, 32, 0.0).eval()
    x = torch.randn(2, 7, 16)
    x1 = stack.input_blocks[0](x)
    x2 = stack.input_blocks[1](x1)
    y = stack.middle_block(x2)
    y = stack.output_blocks[0](stack.linear_blocks[0](torch.cat([y, x2], -1)))
    y = stack.output_blocks[1](stack.linear_blocks[1](torch.cat([y, x1], -1)))
    torch.testing.assert_close(stack(x), stack.norm(y))


@pytest.mark.parametrize("slots", [0, 8], ids=["tokens", "time-slots"])
def test_padded_frames_change_neither_latent_nor_decoded_frames(slots):
    torch.manual_seed(0)
    vae = MotionVAE(tiny_cfg(n_tokens=2, time_slots=slots), D).eval()
    lengths = torch.tensor([20, 12, 7])
    motion = torch.randn(3, 20, D)
    for i, n in enumerate(lengths.tolist()):
        motion[i, n:] = 0.0
    junk = motion.clone()
    for i, n in enumerate(lengths.tolist()):
        junk[i, n:] = 100 * torch.randn(20 - n, D)
    longer = torch.cat([junk, 50 * torch.randn(3, 10, D)], dim=1)             # more padding
    with torch.no_grad():
        _, mu, logvar = vae.encode(motion, lengths, sample=False)
        for other in (junk, longer):
            _, mu2, logvar2 = vae.encode(other, lengths, sample=False)
            torch.testing.assert_close(mu2, mu, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logvar2, logvar, atol=1e-5, rtol=1e-5)
        # each sample decodes the same alone as inside a padded batch, and padding is zero
        out = vae.decode(mu, lengths)
        assert out.shape == (3, 20, D)
        for i, n in enumerate(lengths.tolist()):
            assert torch.all(out[i, n:] == 0)
            alone = vae.decode(mu[i:i + 1], lengths[i:i + 1])
            torch.testing.assert_close(alone[0], out[i, :n], atol=1e-5, rtol=1e-5)


def test_padded_frames_do_not_change_the_loss():
    data = pytest.importorskip("data")
    torch.manual_seed(0)
    lengths = torch.tensor([9, 5])
    pred, target = torch.randn(2, 9, D), torch.randn(2, 9, D)
    mu, logvar = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    mean, std = torch.randn(D) * 0.1, torch.rand(D) + 0.5
    total, parts = vae_loss(pred, target, lengths, mu, logvar, mean, std, lambda_kl=1e-4)
    pred2, target2 = pred.clone(), target.clone()
    pred2[1, 5:], target2[1, 5:] = 7.0, -3.0
    total2, parts2 = vae_loss(pred2, target2, lengths, mu, logvar, mean, std, lambda_kl=1e-4)
    assert set(parts) == {"feat", "joint", "kl"}
    for key in parts:
        torch.testing.assert_close(parts2[key], parts[key])
    torch.testing.assert_close(total, parts["feat"] + parts["joint"] + 1e-4 * parts["kl"])
    # the feature term is SmoothL1 over exactly the 9 + 5 valid frames
    valid = torch.cat([(pred[0] - target[0]), (pred[1, :5] - target[1, :5])])
    a = valid.abs()
    expected = torch.where(a < 1, 0.5 * a ** 2, a - 0.5).mean()
    torch.testing.assert_close(parts["feat"], expected)
    # the joint term compares the joints of the de-normalised features
    jp = data.features_to_joints(pred * std + mean)
    jt = data.features_to_joints(target * std + mean)
    diff = torch.cat([jp[0] - jt[0], jp[1, :5] - jt[1, :5]]).abs()
    torch.testing.assert_close(parts["joint"], torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).mean())


def test_root_relative_joint_loss_ignores_the_root_trajectory():
    """Adding a constant to the root's x/z velocity (features 1:3) moves the whole recovered
    trajectory: the global joint term changes, the root-relative one does not (root height,
    feature 3, still counts), and the feature term sees the change either way."""
    pytest.importorskip("data")
    torch.manual_seed(0)
    lengths = torch.tensor([9, 9])
    target = torch.randn(2, 9, D)
    mu, logvar = torch.zeros(2, 1, 8), torch.zeros(2, 1, 8)
    mean, std = torch.zeros(D), torch.ones(D)
    shifted = target.clone()
    shifted[..., 1:3] += 0.3
    _, glob = vae_loss(shifted, target, lengths, mu, logvar, mean, std, joint_loss="global")
    _, rel = vae_loss(shifted, target, lengths, mu, logvar, mean, std, joint_loss="root_relative")
    assert glob["joint"] > 1e-3
    assert rel["joint"] < 1e-10
    torch.testing.assert_close(glob["feat"], rel["feat"])
    lifted = target.clone()
    lifted[..., 3] += 0.3  # root height: only the root joint's y moves
    _, rel = vae_loss(lifted, target, lengths, mu, logvar, mean, std, joint_loss="root_relative")
    # SmoothL1 of one coordinate of 22 x 3 off by 0.3: 0.5 * 0.09 / 66 = 6.8e-4
    torch.testing.assert_close(rel["joint"], torch.tensor(0.5 * 0.09 / 66), rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="joint_loss"):
        vae_loss(shifted, target, lengths, mu, logvar, mean, std, joint_loss="relative")


def test_noise_ramp_scales_the_posterior_noise():
    """noise_ramp = 4: the scales 1/4, 2/4, 3/4, 1, 1, ...; 1 (MLD) gives 1 from the first batch.
    At scale 1 the loss is MLD's, the same draw as model(x, lengths); at scale 0 the decoder reads
    mu, so two calls agree whatever the generator; padding and lengths as in every batch."""
    pytest.importorskip("data")
    batches = iter([{"step": i} for i in range(6)])
    assert [b["noise"] for b in noise_ramped(batches, 4)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [b["noise"] for b in noise_ramped(iter([{}, {}]), 1)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="noise_ramp"):
        next(noise_ramped(iter([{}]), 0))
    torch.manual_seed(0)
    model = MotionVAE(tiny_cfg(n_tokens=2), D).eval()
    batch = {"motion": torch.randn(2, 9, D), "lengths": torch.tensor([9, 6])}
    batch["motion"][1, 6:] = 0.0
    mean, std = torch.zeros(D), torch.ones(D)
    loss_fn = vae_loss_fn(model, mean, std, torch.device("cpu"))
    torch.manual_seed(1)
    x_hat, mu, logvar = model(batch["motion"], batch["lengths"])
    expected, _ = vae_loss(x_hat, batch["motion"], batch["lengths"], mu, logvar, mean, std)
    torch.manual_seed(1)
    torch.testing.assert_close(loss_fn(batch)[0], expected)
    torch.manual_seed(2)
    first = loss_fn({**batch, "noise": 0.0})[0]
    torch.manual_seed(3)
    torch.testing.assert_close(loss_fn({**batch, "noise": 0.0})[0], first)
    assert not torch.allclose(first, expected)


@pytest.mark.parametrize("cfg", [VAEConfig(), tiny_cfg(n_tokens=2, n_layers=5)],
                         ids=["paper-1x256", "tiny-2x32"])
def test_shapes(cfg):
    torch.manual_seed(0)
    vae = MotionVAE(cfg, D)
    n, d = cfg.n_tokens, cfg.latent_dim
    motion, lengths = torch.randn(2, 24, D), torch.tensor([24, 16])
    z, mu, logvar = vae.encode(motion, lengths)
    assert z.shape == mu.shape == logvar.shape == (2, n, d)
    assert vae.latent_shape == (n, d)
    assert not torch.allclose(z, mu), "sample=True draws from the posterior"
    assert vae.dist_tokens.shape == (2 * n, d), "n mu tokens then n logvar tokens"
    out = vae.decode(z, lengths)
    assert out.shape == (2, 24, D)
    assert vae.decode(z, torch.tensor([10, 16])).shape == (2, 16, D)
    recon, _, _ = vae(motion, lengths, sample=False)
    assert recon.shape == (2, 24, D)


def test_slot_pooling_and_interpolation_by_hand():
    """Length 6, S = 3 slots: frames 0-1, 2-3, 4-5 (weights 1/2); length 2, S = 3: frame 0 -> slot
    floor(0) = 0, frame 1 -> floor(1.5) = 1, slot 2 empty (weight 0), padding frames 2-5 in none.
    Interpolation, length 6, S = 3: u = 3 (t + 1/2) / 6 - 1/2 = (t - 1/2) / 2, so frame 0 sits at
    u = -1/4 (clamped to slot 0), frame 2 at 3/4 (1/4 of slot 0, 3/4 of slot 1), frame 5 at 9/4
    (clamped to slot 2)."""
    pool = slot_pooling(torch.tensor([6, 2]), 6, 3)
    torch.testing.assert_close(pool[0], torch.tensor([[.5, .5, 0, 0, 0, 0], [0, 0, .5, .5, 0, 0],
                                                      [0, 0, 0, 0, .5, .5]]))
    torch.testing.assert_close(pool[1], torch.tensor([[1., 0, 0, 0, 0, 0], [0, 1., 0, 0, 0, 0], [0.] * 6]))
    mix = slot_interpolation(torch.tensor([6]), 6, 3)[0]
    torch.testing.assert_close(mix[[0, 2, 5]], torch.tensor([[1., 0, 0], [.25, .75, 0], [0, 0, 1.]]))
    torch.testing.assert_close(mix.sum(-1), torch.ones(6))


def test_time_slots_tie_the_latent_to_spans_of_the_clip():
    """With S = 4 slots packed in 2 tokens of 32 (c = 16 numbers a slot): the latent keeps its
    (n, d) shape; changing the clip's last quarter changes only the last slot's numbers (token 1,
    second half); a slot count that does not divide n d is refused."""
    torch.manual_seed(0)
    vae = MotionVAE(tiny_cfg(n_tokens=2, time_slots=4), D).eval()
    motion, lengths = torch.randn(1, 16, D), torch.tensor([16])
    later = motion.clone()
    later[0, 12:] += torch.randn(4, D)
    with torch.no_grad():
        mu, mu2 = (vae.encode(m, lengths, sample=False)[1] for m in (motion, later))
    assert mu.shape == (1, 2, 32) and not hasattr(vae, "dist_tokens")
    changed = (mu2 - mu).abs().view(4, 16).amax(-1)                               # per slot
    assert changed[3] > 1e-3
    # self-attention lets every frame see the whole clip, so the earlier slots move a little too:
    # what is tied to time is where each slot's numbers are read from, not an exact locality
    assert torch.all(changed[3] > changed[:3])
    with pytest.raises(ValueError, match="time_slots"):
        MotionVAE(tiny_cfg(n_tokens=2, time_slots=3), D)


def test_lengths_beyond_the_positional_table_are_rejected():
    vae = MotionVAE(tiny_cfg(max_len=16), D)
    with pytest.raises(ValueError, match="max_len"):
        vae.decode(torch.zeros(1, 1, 32), torch.tensor([17]))


def test_sinusoidal_table_matches_the_formula_at_hand_picked_entries():
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    from vae import sinusoidal_positions
    table = sinusoidal_positions(50, 8)
    assert table.shape == (50, 8)
    assert table[0].tolist() == pytest.approx([0, 1, 0, 1, 0, 1, 0, 1], abs=1e-7)
    assert table[3, 0].item() == pytest.approx(math.sin(3.0), abs=1e-6)
    assert table[3, 3].item() == pytest.approx(math.cos(3.0 / 10000 ** (2 / 8)), abs=1e-6)
    assert table[49, 6].item() == pytest.approx(math.sin(49.0 / 10000 ** (6 / 8)), abs=1e-6)


def test_position_init_and_norm_first_options():
    """MLD's defaults (post-norm, positions uniform in [0, 1)) and the tiny preset's options."""
    from vae import sinusoidal_positions
    mld = MotionVAE(tiny_cfg(), D)
    assert 0.0 <= mld.dec_pos.min() and mld.dec_pos.max() < 1.0
    assert not any(l.norm_first for l in mld.encoder.input_blocks)
    ours = MotionVAE(tiny_cfg(position_init="sinusoidal", norm_first=True), D)
    assert torch.equal(ours.dec_pos.detach(), sinusoidal_positions(40, 32))
    assert torch.equal(ours.enc_pos.detach(), sinusoidal_positions(42, 32))
    assert ours.enc_pos.requires_grad, "the table is learned, only its start is the sinusoid"
    blocks = [ours.encoder.middle_block, ours.decoder.middle_block, *ours.decoder.output_blocks]
    assert all(b.norm_first for b in blocks)
    # pre-norm still ends in a LayerNorm and keeps padded frames at zero
    out = ours.decode(torch.randn(2, 1, 32), torch.tensor([10, 16]))
    assert out.shape == (2, 16, D) and out[0, 10:].abs().max() == 0
    with pytest.raises(ValueError, match="position_init"):
        MotionVAE(tiny_cfg(position_init="fourier"), D)


# ----------------------------------------------------------------------------
# MLD's released weights


def mld_layer_shapes(d: int, ff: int, cross: bool) -> dict[str, tuple]:
    """Parameter shapes of one MLD TransformerEncoderLayer / TransformerDecoderLayer
    (mld/models/operator/cross_attention.py): nn.MultiheadAttention self_attn (and
    multihead_attn), linear1, linear2, norm1, norm2 (and norm3)."""
    attn = {"in_proj_weight": (3 * d, d), "in_proj_bias": (3 * d,), "out_proj.weight": (d, d), "out_proj.bias": (d,)}
    shapes = {f"self_attn.{k}": v for k, v in attn.items()}
    if cross:
        shapes.update({f"multihead_attn.{k}": v for k, v in attn.items()})
    shapes.update({"linear1.weight": (ff, d), "linear1.bias": (ff,), "linear2.weight": (d, ff), "linear2.bias": (d,)})
    for norm in ("norm1", "norm2", "norm3") if cross else ("norm1", "norm2"):
        shapes.update({f"{norm}.weight": (d,), f"{norm}.bias": (d,)})
    return shapes


def mld_skip_stack_shapes(prefix: str, n_layers: int, d: int, ff: int, cross: bool) -> dict[str, tuple]:
    """MLD's SkipTransformerEncoder / SkipTransformerDecoder: input_blocks.i, middle_block,
    output_blocks.i, linear_blocks.i = Linear(2d -> d), norm = LayerNorm(d)."""
    layer = mld_layer_shapes(d, ff, cross)
    blocks = ([f"input_blocks.{i}" for i in range((n_layers - 1) // 2)] + ["middle_block"]
              + [f"output_blocks.{i}" for i in range((n_layers - 1) // 2)])
    shapes = {f"{prefix}.{b}.{k}": v for b in blocks for k, v in layer.items()}
    for i in range((n_layers - 1) // 2):
        shapes.update({f"{prefix}.linear_blocks.{i}.weight": (d, 2 * d), f"{prefix}.linear_blocks.{i}.bias": (d,)})
    shapes.update({f"{prefix}.norm.weight": (d,), f"{prefix}.norm.bias": (d,)})
    return shapes


def mld_vae_state_dict(nfeats=263, n=1, d=256, ff=1024, n_layers=9, pe_rows=500) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes of MLD-1's MldVae (mld_vae.py, arch
    encoder_decoder, PE type mld with position_embedding learned: PositionEmbeddingLearned1D's
    `pe` is (500, 1, d)), written from MLD's module structure, not from ours."""
    shapes = {"query_pos_encoder.pe": (pe_rows, 1, d), "query_pos_decoder.pe": (pe_rows, 1, d),
              **mld_skip_stack_shapes("encoder", n_layers, d, ff, cross=False),
              **mld_skip_stack_shapes("decoder", n_layers, d, ff, cross=True),
              "global_motion_token": (2 * n, d),
              "skel_embedding.weight": (d, nfeats), "skel_embedding.bias": (d,),
              "final_layer.weight": (nfeats, d), "final_layer.bias": (nfeats,)}
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items()}


def test_mld_vae_weights_load_strictly_and_land_in_place():
    from vae import from_mld_state_dict
    sd = mld_vae_state_dict()
    cfg, feat_dim, ours = from_mld_state_dict(sd)
    assert feat_dim == 263
    assert (cfg.n_tokens, cfg.latent_dim, cfg.n_layers, cfg.n_heads, cfg.ff_dim, cfg.max_len) == (1, 256, 9, 4, 1024, 196)
    vae = MotionVAE(cfg, feat_dim)
    vae.load_state_dict(ours, strict=True)
    assert torch.equal(vae.dist_tokens, sd["global_motion_token"])
    assert torch.equal(vae.enc_pos, sd["query_pos_encoder.pe"][:198, 0]), "max_len + 2 tokens of positions"
    assert torch.equal(vae.dec_pos, sd["query_pos_decoder.pe"][:196, 0])
    assert torch.equal(vae.decoder.output_blocks[3].multihead_attn.in_proj_weight,
                       sd["decoder.output_blocks.3.multihead_attn.in_proj_weight"])
    assert torch.equal(vae.encoder.linear_blocks[0].weight, sd["encoder.linear_blocks.0.weight"])


def test_mld_vae_inputs_are_mlds_by_hand():
    """MLD's encode: xseq = cat(global_motion_token, skel_embedding(x)) + pe[:2n+T] (sequence
    first); its decode: queries = zeros + pe_dec[:T]. Both are checked at the first block's input
    against that computation from the MLD tensors."""
    from vae import from_mld_state_dict
    sd = mld_vae_state_dict(n=2, d=32, ff=64, n_layers=3, pe_rows=60)
    cfg, feat_dim, ours = from_mld_state_dict(sd, max_len=40, n_heads=2)
    vae = MotionVAE(cfg, feat_dim).eval()
    vae.load_state_dict(ours, strict=True)
    seen = {}
    vae.encoder.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(enc=args[0]))
    vae.decoder.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(dec=args[0]))
    T = 7
    motion = torch.randn(2, T, 263)
    with torch.no_grad():
        z, _, _ = vae.encode(motion, torch.tensor([7, 5]), sample=False)
        vae.decode(z, torch.tensor([7, 5]))
    frames = motion @ sd["skel_embedding.weight"].T + sd["skel_embedding.bias"]         # (2, T, 32)
    tokens = torch.cat([sd["global_motion_token"].expand(2, 4, 32), frames], dim=1)      # (2, 4+T, 32)
    torch.testing.assert_close(seen["enc"], tokens + sd["query_pos_encoder.pe"][: 4 + T, 0])
    torch.testing.assert_close(seen["dec"], sd["query_pos_decoder.pe"][:T, 0].expand(2, T, 32))


def test_mld_vae_ablations_and_short_tables_are_refused():
    from vae import from_mld_state_dict
    small = dict(d=32, ff=64, n_layers=3, pe_rows=60)
    sd = mld_vae_state_dict(**small)
    with pytest.raises(ValueError, match="MLP_DIST"):
        from_mld_state_dict({**sd, "dist_layer.weight": torch.zeros(64, 32)}, max_len=40)
    no_cross = {k: v for k, v in sd.items() if "multihead_attn" not in k and "norm3" not in k}
    with pytest.raises(ValueError, match="all_encoder"):
        from_mld_state_dict(no_cross, max_len=40)
    with pytest.raises(ValueError, match="query_pos_encoder.pe"):
        from_mld_state_dict(sd, max_len=59)  # 59 frames + 2 tokens > 60 rows


def test_loss_fn_takes_a_micro_batch_padded_to_its_whole_batch():
    """A micro-batch or torchrun shard keeps the whole batch's padding (its clips may all be
    shorter): vae_loss_fn trims it to its own longest clip, and the loss is the trimmed batch's."""
    torch.manual_seed(0)
    vae = MotionVAE(tiny_cfg(n_tokens=2), D)
    lengths = torch.tensor([12, 7])
    motion = torch.randn(2, 12, D) * lengths_to_mask(lengths, 12)[..., None]
    loss_fn = vae_loss_fn(vae, torch.zeros(D), torch.ones(D), "cpu")
    torch.manual_seed(1)
    trimmed, _ = loss_fn({"motion": motion, "lengths": lengths})
    torch.manual_seed(1)
    padded, _ = loss_fn({"motion": torch.cat([motion, torch.zeros(2, 20, D)], 1), "lengths": lengths})
    torch.testing.assert_close(padded, trimmed)
