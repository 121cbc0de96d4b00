"""config.py: overrides type-checked and range-checked by their dataclasses, the presets."""
import pytest

import config


def test_overrides_are_type_checked():
    cfg = config.build_config("paper", ["vae.n_layers=3", "projector.lambda_var=0", "vae_train.lr=3e-4",
                                       "diffusion.set_alpha_to_one=true", "projector.kind=mlp"])
    assert cfg.vae.n_layers == 3 and isinstance(cfg.vae.n_layers, int)
    assert cfg.projector.lambda_var == 0.0 and isinstance(cfg.projector.lambda_var, float)
    assert cfg.vae_train.lr == 3e-4
    assert cfg.diffusion.set_alpha_to_one is True
    assert cfg.projector.kind == "mlp"
    assert config.RunConfig().vae.n_layers == 9, "overrides must not leak into the defaults"


@pytest.mark.parametrize("item, message", [
    ("vae.n_layers=three", "expected int"),
    ("vae.depth=3", "unknown config key 'vae.depth'"),
    ("nope.x=1", "unknown config section 'nope'"),
    ("vae.n_layers", "expected section.field=value"),
    ("diffusion.set_alpha_to_one=maybe", "expected bool"),
    ("vae_train.lr=inf", "vae_train.lr=inf: must be a finite number"),
    ("vae_train.lr=nan", "must be a finite number"),
    ("vae.dropout=1.5", r"vae.dropout=1.5: must lie in \[0, 1\]"),
    ("vae.lambda_kl=-1", "vae.lambda_kl=-1.0: must be >= 0"),
    ("vae.n_layers=0", "vae.n_layers=0: must be >= 1"),
    ("data.max_len=20", r"data.max_len=20: must be >= data.min_len \(40\)"),
    ("diffusion.beta_start=0.5", "diffusion.beta_end=0.012: must be >= diffusion.beta_start"),
    ("lcm.sample_steps=100", "lcm.num_ddim_timesteps=50: must be >= lcm.sample_steps"),
    ("eval.mm_num_gens=5", "eval.mm_num_gens=5: must be >= MModality's pairs"),
    ("run.precision=fp8", "run.precision='fp8': choose one of fp32, bf16, fp16"),
    ("vae.AT_LEAST_ZERO=x", "unknown config key 'vae.AT_LEAST_ZERO'"),
])
def test_bad_overrides_are_rejected(item, message):
    with pytest.raises(ValueError, match=message):
        config.build_config("paper", [item])


def test_presets_only_name_existing_fields():
    for name, overrides in config.PRESETS.items():
        config.apply_overrides(config.RunConfig(), overrides)  # raises on an unknown key or bad type


def test_ranges_live_with_their_dataclass():
    """A field a dataclass names in AT_LEAST_ZERO takes 0; one it does not, must be >= 1 / > 0."""
    assert config.build_config("paper", ["vae.lambda_kl=0"]).vae.lambda_kl == 0.0
    with pytest.raises(ValueError, match="must be > 0"):
        config.build_config("paper", ["vae_train.lr=0"])


def test_smoke_preset_is_tiny_with_fewer_steps():
    tiny, smoke = config.build_config("tiny", []), config.build_config("smoke", [])
    assert smoke.diffusion.n_layers == tiny.diffusion.n_layers and smoke.projector == tiny.projector
    assert smoke.text.hidden_size == tiny.text.hidden_size
    assert smoke.vae.latent_dim == tiny.vae.latent_dim and smoke.vae.noise_ramp <= smoke.vae_train.steps
    assert smoke.vae_train.steps < tiny.vae_train.steps and smoke.data.synthetic_motions < tiny.data.synthetic_motions
