import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.data import read_documents
from gptforge.model import GPT


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig.from_preset("gpt2-tiny", vocab_size=101, context_length=32, emb_dim=32,
                                 n_heads=4, n_layers=2)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture(scope="session")
def text(tmp_path_factory):
    """60,000 characters of Hamlet as a text file: small, real training data (~15k tokens)."""
    docs = dict(read_documents("builtin:shakespeare"))
    path = tmp_path_factory.mktemp("text") / "plays.txt"
    path.write_text(docs["builtin:shakespeare/hamlet"][:60000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of a randomly initialised gpt2-tiny with GPT-2's vocabulary."""
    from gptforge.weights.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", GPT(GPTConfig.from_preset("gpt2-tiny")))


@pytest.fixture(scope="session")
def tiny_bpe_dir(text, tmp_path_factory):
    """A folder from `gptforge tokenizer train`: a byte-level BPE of 400 ids trained on `text`."""
    from gptforge.tokenizer.train import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_tokenizer([str(text)], folder, vocab_size=400, progress=False)
    return folder


@pytest.fixture(scope="session")
def tiny_bpe(tiny_bpe_dir):
    from gptforge.tokenizer import load_tokenizer

    return load_tokenizer(tiny_bpe_dir)
