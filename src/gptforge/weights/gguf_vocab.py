"""A tokenizer as GGUF metadata: what llama.cpp's byte-level BPE (tokenizer model "gpt2") reads.

Every id's token as text in the byte-level alphabet (tokenizer/bpe.byte_alphabet, the one GPT-2's
encoder.json and our tokenizer.json use), a special token as its literal text; the merges as
"left right" in rank order; and the name of the pre-tokenizer, which llama.cpp does not read from
the file but picks from its own list by name (src/llama-vocab.cpp):
  - GPT-2's split pattern is its "gpt-2";
  - ours (GPT-4's cl100k pattern, tokenizer/bpe.PATTERN) is its "llama-bpe" (LLAMA_VOCAB_PRE_TYPE_LLAMA3:
    the same alternatives, written without possessive quantifiers and with `\\s*[\\r\\n]+` for
    `\\s*[\\r\\n]`, which match the same text). That type also takes a pre-token that is a whole
    token as it is before merging ("ignore_merges"), as tiktoken does; where fast_bpe proved our
    merges give tiktoken's ids, that gives our ids too.
Ids the model has beyond the tokenizer's (vocabulary padding) are "[PAD<id>]", of type UNUSED, as
llama.cpp's converter writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import UserError
from ..tokenizer import Tokenizer
from ..tokenizer.bpe import PATTERN, byte_alphabet
from ..tokenizer.chat import CHAT_TEMPLATE_JINJA, end_of_turn, has_chat_template
from ..tokenizer.fast_bpe import pipeline_is_plain
from ..tokenizer.gpt2_bpe import asset_path

PRE_TOKENIZER = {"gpt2": "gpt-2", "bpe": "llama-bpe"}
# gguf.TokenType's values (llama.cpp's llama_token_type)
NORMAL, CONTROL, UNUSED = 1, 3, 5


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer keys of a GGUF file (tokenizer.ggml.* and tokenizer.chat_template)."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    eot_id: int | None  # the end of a chat turn (<|im_end|>), for a chat model
    chat_template: str | None


def _merges(tokenizer: Tokenizer) -> list[str]:
    """The merges in rank order, as "left right"."""
    if tokenizer.kind == "gpt2":
        with open(asset_path("vocab.bpe"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        return [line for line in lines[1:] if line]  # the first line is "#version: 0.2"
    merges = json.loads(tokenizer.json_bytes)["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]  # newer tokenizers write pairs


def _check_pre_tokenizer(tokenizer: Tokenizer) -> None:
    if tokenizer.kind == "bpe" and not pipeline_is_plain(json.loads(tokenizer.json_bytes), PATTERN):
        raise UserError(f"tokenizer {tokenizer.name} does not split text with gptforge's pattern (or adds a "
                        "normalizer or post-processor), so no pre-tokenizer llama.cpp knows is known to match it")


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> GGUFVocab:
    """`tokenizer` as GGUF keys for a model of `vocab_size` ids (at least the tokenizer's)."""
    if vocab_size < tokenizer.vocab_size:
        raise UserError(f"the model has {vocab_size} ids, fewer than its tokenizer's {tokenizer.vocab_size}; "
                        "a GGUF file needs the whole tokenizer")
    _check_pre_tokenizer(tokenizer)
    char_of = {b: c for c, b in byte_alphabet().items()}
    special = {i: name for name, i in tokenizer.special_tokens.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in special:
            tokens.append(special[i])
            types.append(CONTROL)
        elif i < tokenizer.vocab_size:
            tokens.append("".join(char_of[b] for b in tokenizer.token_bytes(i)))
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    chat = has_chat_template(tokenizer)
    # A chat model's answer ends at <|im_end|>, which llama-cpp-python's chat completion stops at
    # as the eos token; llama.cpp ends generation at <|endoftext|> too (it knows both by name).
    end = end_of_turn(tokenizer) if chat else tokenizer.eot_id
    return GGUFVocab(pre=PRE_TOKENIZER[tokenizer.kind], tokens=tokens, token_types=types,
                     merges=_merges(tokenizer), bos_id=tokenizer.eot_id, eos_id=end,
                     eot_id=end if chat else None, chat_template=CHAT_TEMPLATE_JINJA if chat else None)


def add_vocab(writer, vocab: GGUFVocab) -> None:
    """Write `vocab`'s keys with a gguf.GGUFWriter."""
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for a byte-level BPE
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    if vocab.eot_id is not None:
        writer.add_eot_token_id(vocab.eot_id)
    # Our prompts start with their text, not <|endoftext|> ("llama-bpe" would add one by default).
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
