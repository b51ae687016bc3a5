import pytest
import torch

from gptforge import GPT, GPTConfig


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig.from_preset("gpt2-tiny", vocab_size=101, context_length=32, emb_dim=32,
                                 n_heads=4, n_layers=2)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
