"""Examples as token ids, through a template, with the mask of the tokens that are trained on.

- chatml: the chat template (tokenizer/chat.py): turns between the special tokens <|im_start|>
  and <|im_end|>; the loss covers each assistant turn's content, its tool calls and its
  <|im_end|>, never a tool's result.
- alpaca: the text template of Stanford Alpaca and "LLMs from scratch" chapter 7, for single-turn
  examples, with <|endoftext|> after the answer; the loss covers the answer and <|endoftext|>:

      Below is an instruction that describes a task. Write a response that appropriately
      completes the request.

      ### Instruction:
      {instruction}

      ### Input:                (only when there is an input)
      {input}

      ### Response:
      {output}<|endoftext|>
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..tokenizer import CHAT_TOKENS, TOOL_TOKENS, Tokenizer
from ..tokenizer.chat import encode_marked, end_of_turn, has_chat_template, has_tool_tokens, render
from .example_batches import fit_to_context
from .instructions import Example

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.")
TEMPLATES = ("chatml", "alpaca")


def alpaca_prompt(record: dict) -> str:
    """The Alpaca text up to where the answer starts."""
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
    if record.get("input"):
        text += f"\n\n### Input:\n{record['input']}"
    return text + "\n\n### Response:\n"


def template_tokens(examples: list[Example], template: str) -> tuple[str, ...]:
    """The special tokens the examples need in the tokenizer (fine-tuning grows a vocabulary that
    lacks them): the chat tokens for chatml, and the tool markers when an example uses tools."""
    if template != "chatml":
        return ()
    return CHAT_TOKENS + (TOOL_TOKENS if any(e.uses_tools for e in examples) else ())


def _alpaca_record(example: Example) -> dict:
    """The instruction record of an example (a single-turn chat reads as one)."""
    if example.context:
        raise UserError(f"{example.where}: --template alpaca has no place for \"context\" passages; "
                        "use --template chatml")
    if example.instruction is not None:
        return example.instruction
    if example.uses_tools:
        raise UserError(f"{example.where}: --template alpaca has no tool calls; use --template chatml")
    turns = [m for m in example.messages if m["role"] != "system"]
    if len(turns) != 2 or len(turns) != len(example.messages):
        raise UserError(f"{example.where}: --template alpaca takes single-turn examples (one user message, "
                        "one answer, no system message); use --template chatml for conversations")
    return {"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"]}


def stop_id(tokenizer: Tokenizer, template: str) -> int:
    """The token that ends an answer: <|im_end|> (chatml) or <|endoftext|> (alpaca)."""
    return end_of_turn(tokenizer) if template == "chatml" else tokenizer.eot_id


def encode_example(example: Example, tokenizer: Tokenizer, template: str) -> tuple[list[int], list[bool]]:
    """(ids, loss mask) of a whole example."""
    if template == "chatml":
        return render(example.messages, tokenizer, tools=example.tools, context=example.context)
    record = _alpaca_record(example)
    prompt = alpaca_prompt(record)
    ids, answer = encode_marked(tokenizer, prompt + record["output"], len(prompt.encode()))
    return ids + [tokenizer.eot_id], answer + [True]


def prompt_ids(example: Example, tokenizer: Tokenizer, template: str) -> list[int]:
    """The ids a model answers the example's last turn from."""
    if template == "chatml":
        return render(example.messages[:-1], tokenizer, add_generation_prompt=True, tools=example.tools,
                      context=example.context)[0]
    return tokenizer.encode(alpaca_prompt(_alpaca_record(example)))


def encode_examples(examples: list[Example], tokenizer: Tokenizer, template: str, context_length: int,
                    train_on_prompt: bool = False) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, int]:
    """(the examples as (ids, loss) arrays, how many were cut to the context, how many were left
    out because the cut left no answer to train on)."""
    if template == "chatml" and not has_chat_template(tokenizer):
        raise ValueError("the chatml template needs a tokenizer with the chat tokens")
    if template == "chatml" and not has_tool_tokens(tokenizer) and any(e.uses_tools for e in examples):
        raise ValueError("examples with tools need a tokenizer with the tool tokens (template_tokens)")
    out, truncated, dropped = [], 0, 0
    for example in examples:
        ids, loss = encode_example(example, tokenizer, template)
        ids, loss = np.asarray(ids, dtype=np.int64), np.asarray(loss, dtype=bool)
        if train_on_prompt:
            loss[:] = True
        truncated += len(ids) > context_length + 1
        fitted = fit_to_context(ids, loss, context_length)
        if fitted is None:
            dropped += 1
        else:
            out.append(fitted)
    return out, truncated, dropped
