"""Valid output by construction: a grammar of what a reply may be, and a per-sequence Constraint
that masks each step's logits to the tokens the grammar allows (llguidance computes the masks).

With tools, a reply is the chat template's calls (tokenizer/chat.py): `<tool_call>\\n{"name": N,
"arguments": A}\\n</tool_call>`, N one of the declared tools' names and A a JSON value that
validates against N's parameter schema; `tool_choice` decides what else it may be:

    "none"      content only: no call
    "auto"      content, then calls if any (the template's one newline between them)
    "required"  calls only, at least one
    {name}      one call to that function

With a response_format, the content is JSON ({"type": "json_object"}: any object; or the given
schema), with or without tools. JSON is written as the template writes it (Python's json.dumps:
", " and ": ", no other whitespace), so a model fine-tuned on our records is asked for the form
it learned, and a random one cannot pad forever with blanks.

llguidance is optional (the `structured` extra): without it, asking for a grammar raises a
UserError saying how to install it, and everything unconstrained works as before.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import UserError
from ..tokenizer import Tokenizer
from ..tokenizer.base import TOOL_TOKENS

INSTALL_HINT = "pip install 'gptforge[structured]' (llguidance)"
# How the template writes JSON (tool_json: json.dumps's separators), and nothing else between tokens.
_JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
_CALL_END = "}\n"  # closes a call's JSON, before </tool_call>
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}

Choice = Literal["none", "auto", "required"]


def require():
    """The llguidance module, or a UserError saying how to install it."""
    try:
        import llguidance
    except ImportError:
        raise UserError(f"tools and response_format need llguidance for constrained decoding: {INSTALL_HINT}") from None
    return llguidance


@functools.lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer: Tokenizer):
    """llguidance's view of `tokenizer`: every id's bytes, the special tokens marked as such (so
    no text rule can produce one). Built once per tokenizer (about a second for GPT-2's)."""
    llg = require()

    class View:  # the duck type llguidance.TokenizerWrapper reads
        def __init__(self):
            self.eos_token_id, self.bos_token_id = tokenizer.eot_id, None
            self.tokens = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
            self.special_token_ids = sorted(tokenizer.special_tokens.values())

        def __call__(self, text):
            return tokenizer.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)

    return llg.LLTokenizer(llg.TokenizerWrapper(View()))


def _literal(text: str) -> str:
    return json.dumps(text)  # a Lark string literal


def _json_rule(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_STYLE})


def _call_rule(tokenizer: Tokenizer, tool: dict) -> str:
    """One call to `tool` as the template writes it, its arguments per its parameter schema."""
    function = tool["function"]
    opening, closing = (f"<[{tokenizer.special_tokens[t]}]>" for t in TOOL_TOKENS[:2])
    head = '\n{"name": ' + json.dumps(function["name"], ensure_ascii=False) + ', "arguments": '
    parameters = function.get("parameters") or _NO_ARGUMENTS
    return f"{opening} {_literal(head)} {_json_rule(parameters)} {_literal(_CALL_END)} {closing}"


def grammar_text(tokenizer: Tokenizer, tools: list[dict] | None = None, choice: Choice = "auto",
                 name: str | None = None, parallel: bool = True, json_schema: dict | None = None,
                 json_content: bool = False) -> str:
    """The Lark grammar (llguidance's dialect) of a reply: `tools` (OpenAI function tools) called
    as `choice` says (`name`: one call to that function, whatever `choice`); the content JSON when
    `json_content` (per `json_schema`, or any object), else free text."""
    content = ("content: " + _json_rule(json_schema or {"type": "object"})) if json_content else "content: TEXT"
    rules = [content, "TEXT: /(.|\\n)*/"]
    named = [t for t in tools or [] if name is None or t["function"]["name"] == name]
    if tools and choice != "none" and not named:
        raise ValueError(f"no declared tool is named {name!r}")
    if not tools or (choice == "none" and name is None):
        return "\n".join(["%llguidance {}", "start: content", *rules])
    rules += [f"call_{i}: {_call_rule(tokenizer, tool)}" for i, tool in enumerate(named)]
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(named))))
    rules.append('calls: call ("\\n" call)*' if parallel and name is None else "calls: call")
    if name is not None or choice == "required":
        start = "start: calls"
    elif json_content:
        start = "start: content | calls"
    else:
        start = "start: TEXT calls?"  # the content's text, then its calls (the newline between is text)
    return "\n".join(["%llguidance {}", start, *rules])


@dataclass
class Grammar:
    """A grammar compiled for one tokenizer; constraint() gives each sequence its own state."""

    matcher: object  # llguidance.LLMatcher at the start of the reply
    vocab_size: int  # the model's rows (at least the tokenizer's ids)

    def constraint(self, stop_ids: frozenset[int]) -> Constraint:
        return Constraint(self.matcher.deep_copy(), self.vocab_size, stop_ids)


def compile_grammar(tokenizer: Tokenizer, text: str, vocab_size: int | None = None) -> Grammar:
    """`text` (grammar_text's) compiled for `tokenizer`. Raises ValueError with llguidance's
    reason when a schema in it is not one it can enforce."""
    llg = require()
    lark = llg.LLMatcher.grammar_from_lark(text)
    failed, messages = llg.LLMatcher.validate_grammar_with_warnings(lark, _ll_tokenizer(tokenizer))
    if failed:
        raise ValueError(_reason(messages[0]))
    matcher = llg.LLMatcher(_ll_tokenizer(tokenizer), lark, log_level=0)
    if matcher.is_error():
        raise ValueError(_reason(matcher.get_error()))
    return Grammar(matcher, max(vocab_size or 0, tokenizer.vocab_size))


def _reason(message: str) -> str:
    """llguidance's error as one line: its first, without the grammar's line and column (the
    grammar is ours; the schema is the caller's)."""
    first = message.strip().splitlines()[0] if message.strip() else "the grammar does not compile"
    return re.sub(r"^at \d+\(\d+\): ", "", first)


class Constraint:
    """One sequence's place in its grammar: mask() keeps the logits of the tokens allowed next
    (the stop tokens once the reply may end there), accept() moves on by the token drawn."""

    def __init__(self, matcher, vocab_size: int, stop_ids: frozenset[int]):
        self.matcher, self.vocab_size, self.stop_ids = matcher, vocab_size, stop_ids
        self.stops = torch.tensor(sorted(stop_ids), dtype=torch.long)

    def allowed(self) -> torch.Tensor:
        """(vocab_size,) bool: the tokens the grammar allows next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
        ids = np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool)
        allowed[:len(ids)] = torch.from_numpy(ids)
        # llguidance's own end token is the tokenizer's <|endoftext|>; the sequence's stop tokens
        # (<|im_end|> in a chat) end the reply instead, and only where the grammar may end
        allowed[self.stops] = self.matcher.is_accepting()
        return allowed

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, V) logits with every token the grammar forbids at -inf."""
        return torch.where(self.allowed().to(logits.device), logits, float("-inf"))

    def accept(self, token: int) -> None:
        if token in self.stop_ids:
            return
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
