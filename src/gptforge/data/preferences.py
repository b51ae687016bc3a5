"""Preference data for DPO (`gptforge finetune --method dpo`): a prompt and two answers to it, the
one preferred ("chosen") and the other ("rejected"), read, checked and encoded.

A record (one line of a .jsonl file, or an element of a .json list) is
`{"prompt": ..., "chosen": ..., "rejected": ...}` where the prompt is the user's text or a list of
chat messages, or `{"messages": [...], "chosen": ..., "rejected": ...}` with the conversation the
answers continue (its last turn the user's). An answer is text, an assistant message
`{"role": "assistant", "content": ...}`, or a list holding one (TRL's conversational shape). Files,
folders, builtin:NAME and hf:NAME are read as for instruction records (data/instructions.py),
and a bad record stops everything with one line naming the file and the record.

Each answer is the prompt's conversation plus that answer, rendered by the template; the loss
(and the log-probability DPO compares) covers the last answer's tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..tokenizer import Tokenizer
from .instructions import Example, check_messages
from .templates import encode_example, prompt_ids

SIDES = ("chosen", "rejected")


@dataclass
class Preference:
    """One preference record: a conversation and two answers to its last turn."""

    prompt: list[dict]  # {"role", "content"} messages, the last one the user's
    chosen: str
    rejected: str
    where: str  # "FILE record N", for messages about it
    uses_tools = False  # (as Example's) no tool records here: template_tokens adds the chat tokens only

    def example(self, side: str) -> Example:
        """The conversation ended by the chosen or the rejected answer."""
        return Example(self.prompt + [{"role": "assistant", "content": getattr(self, side)}], self.where)


def _answer(value, where: str, side: str) -> str:
    """An answer's text: a string, an assistant message, or a list of one (TRL's shape)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant" or not isinstance(value.get("content"), str):
            raise UserError(f"{where}: \"{side}\" must be the assistant's message {{\"role\": \"assistant\", "
                            "\"content\": TEXT}")
        value = value["content"]
    if not isinstance(value, str):
        raise UserError(f"{where}: \"{side}\" is {type(value).__name__}; an answer is text or an assistant message")
    if not value.strip():
        raise UserError(f"{where}: \"{side}\" is empty")
    return value


def _prompt(record: dict, where: str) -> list[dict]:
    prompt = record.get("prompt", record.get("messages"))
    if prompt is None:
        raise UserError(f"{where} has no \"prompt\" (or chat \"messages\"); a preference record needs "
                        "\"prompt\", \"chosen\" and \"rejected\"")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: \"prompt\" is empty")
        return [{"role": "user", "content": prompt}]
    messages = check_messages(prompt, where, final_assistant=False)
    if messages[-1]["role"] != "user":
        raise UserError(f"{where}: the prompt's last message is the {messages[-1]['role']}'s; the answers "
                        "continue a user's turn")
    return messages


def parse_preference(record, where: str) -> Preference:
    """One record as a Preference, or one UserError line (see the module's doc for the shapes)."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is {type(record).__name__}, not an object")
    for side in SIDES:
        if side not in record:
            raise UserError(f"{where} has no \"{side}\"; a preference record needs \"prompt\", \"chosen\" "
                            f"and \"rejected\"; it has: {', '.join(map(str, record)) or 'nothing'}")
    prompt = _prompt(record, where)
    chosen, rejected = (_answer(record[side], where, side) for side in SIDES)
    if chosen == rejected:
        raise UserError(f"{where}: \"chosen\" and \"rejected\" are the same answer; a preference needs two "
                        "different ones")
    return Preference(prompt, chosen, rejected, where)


def encode_answer(example: Example, tokenizer: Tokenizer, template: str, context_length: int
                  ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ids, mask of the last answer's tokens, whether it was cut to the context) of one side."""
    ids, mask = (np.asarray(a) for a in encode_example(example, tokenizer, template))
    prompt = len(prompt_ids(example, tokenizer, template))
    if prompt >= context_length:
        raise UserError(f"{example.where}: the prompt is {prompt} tokens, longer than the model's context of "
                        f"{context_length} (no room for an answer); shorten it or drop the record")
    if template == "chatml":  # earlier assistant turns of the prompt are context, not the answer
        mask[:prompt] = False
    cut = len(ids) > context_length + 1
    return ids[:context_length + 1].astype(np.int64), mask[:context_length + 1].astype(bool), cut


def encode_preferences(preferences: list[Preference], tokenizer: Tokenizer, template: str, context_length: int
                       ) -> tuple[list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]], int]:
    """(each record as ((chosen ids, mask), (rejected ids, mask)), how many answers were cut to the context)."""
    out, truncated = [], 0
    for p in preferences:
        pair = []
        for side in SIDES:
            ids, mask, cut = encode_answer(p.example(side), tokenizer, template, context_length)
            pair.append((ids, mask))
            truncated += cut
        out.append(tuple(pair))
    return out, truncated
