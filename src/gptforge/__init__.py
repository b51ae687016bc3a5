"""gptforge: pretrain GPT-2-family language models from scratch, on a CPU or many GPUs."""

from importlib.metadata import PackageNotFoundError, version

from .config import PRESETS, GPTConfig
from .errors import UserError
from .generate import generate
from .model import GPT
from .tokenizer import get_tokenizer, ids_to_text, text_to_ids

try:
    __version__ = version("gptforge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["GPT", "GPTConfig", "PRESETS", "UserError", "generate", "get_tokenizer", "ids_to_text",
           "text_to_ids", "__version__"]
