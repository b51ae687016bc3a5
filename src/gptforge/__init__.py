"""gptforge: pretrain GPT-2-family language models from scratch, on a CPU or many GPUs."""

from importlib.metadata import PackageNotFoundError, version

from .checkpoint import load_model
from .config import PRESETS, GPTConfig, TrainConfig
from .data import prepare_corpus
from .errors import UserError
from .generate import generate, prepare_for_decoding
from .model import GPT
from .tokenizer import get_tokenizer, ids_to_text, text_to_ids
from .train import train  # noqa: E402  (the function shadows the submodule name on purpose)

try:
    __version__ = version("gptforge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["GPT", "GPTConfig", "PRESETS", "TrainConfig", "UserError", "generate", "get_tokenizer",
           "ids_to_text", "load_model", "prepare_corpus", "prepare_for_decoding", "text_to_ids", "train",
           "__version__"]
