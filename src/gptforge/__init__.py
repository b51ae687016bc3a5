"""gptforge: pretrain and fine-tune GPT-2-family language models from scratch, on a CPU or many GPUs."""

from importlib.metadata import PackageNotFoundError, version

from .chat import chat_text
from .config import PRESETS, GPTConfig
from .data import prepare_corpus
from .errors import UserError
from .generate import generate, generate_text, generate_texts
from .model import GPT, prepare_for_decoding
from .tokenizer import Tokenizer, ids_to_text, load_tokenizer, text_to_ids, tokenizer_of
from .training import finetune, train
from .training.config import FinetuneConfig, TrainConfig
from .weights import load_any

try:
    __version__ = version("gptforge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["FinetuneConfig", "GPT", "GPTConfig", "PRESETS", "Tokenizer", "TrainConfig", "UserError", "chat_text",
           "finetune", "generate", "generate_text", "generate_texts", "ids_to_text", "load_any",
           "load_tokenizer", "prepare_corpus",
           "prepare_for_decoding", "text_to_ids", "tokenizer_of", "train", "__version__"]
