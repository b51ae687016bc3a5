"""Fixtures of the server tests: a tiny model and a server running it."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.model import GPT, prepare_for_decoding
from gptforge.tokenizer import gpt2

from server_helpers import serving


@pytest.fixture(scope="session")
def base_model():
    """A random gpt2-tiny with GPT-2's vocabulary (context 64), ready to decode."""
    torch.manual_seed(0)
    return prepare_for_decoding(GPT(GPTConfig.from_preset("gpt2-tiny"), gpt2()))


@pytest.fixture(scope="module")
def base_server(base_model):
    with serving(base_model) as running:
        yield running


@pytest.fixture(scope="module")
def chat_server(chat_model):
    with serving(prepare_for_decoding(chat_model), "chat") as running:
        yield running
