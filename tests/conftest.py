import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.model import GPT
from gptforge.text import read_documents


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig.from_preset("gpt2-tiny", vocab_size=101, context_length=32, emb_dim=32,
                                 n_heads=4, n_layers=2)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    from gptforge.tokenizer import gpt2

    torch.manual_seed(0)
    return GPT(tiny_config, gpt2()).eval()  # GPT-2's tokenizer, what its checkpoints record


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
    from gptforge.tokenizer import gpt2
    from gptforge.weights.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint",
                           GPT(GPTConfig.from_preset("gpt2-tiny"), gpt2()))


@pytest.fixture(scope="session")
def finetune_data(tmp_path_factory):
    """60 instruction records (tasks.json) and 40 conversations (chat.jsonl) of the shipped sets."""
    import json

    from gptforge.data.instructions import read_examples

    folder = tmp_path_factory.mktemp("ft-data")
    tasks, _ = read_examples("builtin:tasks")
    (folder / "tasks.json").write_text(json.dumps([e.instruction for e in tasks[:60]]))
    chats, _ = read_examples("builtin:tasks-chat")
    (folder / "chat.jsonl").write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in chats[:40]))
    return folder


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


@pytest.fixture(scope="session")
def wide_bpe_dir(tmp_path_factory):
    """A tokenizer folder whose ids do not fit in 16 bits: the 256 bytes at 70,000 and
    up (after 69,997 unreachable filler tokens), 70,260 in all: every id it produces is above 65,535."""
    from gptforge.tokenizer.train import SPECIAL_TOKENS

    from helpers import handmade_bpe

    fillers = tuple(f"\u0100\u0100{i}" for i in range(70_000 - len(SPECIAL_TOKENS)))
    folder = tmp_path_factory.mktemp("wide") / "tokenizer"
    handmade_bpe([("t", "h"), ("th", "e"), ("Ġ", "the"), ("a", "n")], fillers).save(folder)
    return folder


@pytest.fixture(scope="session")
def chat_model():
    """A chat model: a random gpt2-tiny (context 64) whose tokenizer is GPT-2's plus the chat tokens,
    so it has the chat template; its vocabulary holds every id of that tokenizer."""
    from gptforge.tokenizer import CHAT_TOKENS, gpt2

    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS)
    torch.manual_seed(1)
    return GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=tokenizer.vocab_size), tokenizer).eval()


@pytest.fixture(scope="session")
def chat_checkpoint(chat_model, tmp_path_factory):
    """chat_model saved as a checkpoint (its tokenizer recorded in config.json)."""
    from gptforge.weights.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("chat") / "checkpoint", chat_model)
