import pytest

from gptforge.config import PRESET_ALIASES, PRESETS, GPTConfig
from gptforge.errors import UserError


def test_presets_have_the_published_shapes():
    shapes = {name: (c.n_layers, c.emb_dim, c.n_heads, c.context_length)
              for name in ("gpt2-124m", "gpt2-medium", "gpt2-large", "gpt2-xl")
              for c in [GPTConfig.from_preset(name)]}
    assert shapes == {
        "gpt2-124m": (12, 768, 12, 1024),
        "gpt2-medium": (24, 1024, 16, 1024),
        "gpt2-large": (36, 1280, 20, 1024),
        "gpt2-xl": (48, 1600, 25, 1024),
    }


def test_overrides_and_aliases():
    c = GPTConfig.from_preset("gpt2-345m", context_length=512, dropout=0.1, qkv_bias=False)
    assert (c.n_layers, c.emb_dim, c.context_length, c.dropout, c.qkv_bias) == (24, 1024, 512, 0.1, False)
    assert set(PRESET_ALIASES.values()) <= set(PRESETS)


@pytest.mark.parametrize("overrides, message", [
    (dict(emb_dim=100, n_heads=3), "must divide"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(context_length=-5), "context_length"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_values_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        GPTConfig.from_preset("gpt2-tiny", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(UserError, match="unknown preset 'gpt5'"):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(UserError, match="unknown model config field"):
        GPTConfig.from_dict({"emb_dim": 64, "n_head": 4})


def test_dict_round_trip():
    c = GPTConfig.from_preset("gpt2-mini", dropout=0.1)
    assert GPTConfig.from_dict(c.to_dict()) == c


def test_finetune_config_has_the_fine_tuning_defaults_and_hides_pretraining_flags():
    from gptforge.cli import finetune
    from gptforge.cli.common import Parser
    from gptforge.config import FinetuneConfig, TrainConfig

    cfg = FinetuneConfig()
    assert (cfg.lr, cfg.epochs, cfg.dropout, cfg.template, cfg.lora_rank) == (5e-5, 2, 0.0, "chatml", None)
    assert cfg.command == "finetune" and TrainConfig.command == "train"
    assert FinetuneConfig(lora_targets="mlp_out, qkv").lora_targets == "qkv,mlp_out"
    with pytest.raises(UserError, match="unknown LoRA target"):
        FinetuneConfig(lora_targets="qkv,c_fc")
    with pytest.raises(UserError, match="preset is a pretraining setting"):
        FinetuneConfig(preset="gpt2-124m")
    with pytest.raises(UserError, match="lora-rank must be"):
        FinetuneConfig(lora_rank=0)
    parser = Parser(prog="gptforge finetune")
    finetune.add_arguments(parser)
    help_text = parser.format_help()
    assert "--lora-rank" in help_text and "--train-on-prompt" in help_text and "--template" in help_text
    assert "--preset" not in help_text and "--stride" not in help_text and "--sample-prompt" not in help_text
    assert FinetuneConfig.from_dict(FinetuneConfig(lora_rank=4).to_dict()).lora_rank == 4
