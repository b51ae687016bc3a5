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
