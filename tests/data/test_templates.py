"""Examples through the templates: tool examples train on the calls and never on the results, they
need the tool tokens (which a vocabulary without them gains, as with the chat tokens), and the
Alpaca template refuses them."""

import json

import pytest

from gptforge.data.instructions import read_examples
from gptforge.data.templates import encode_example, encode_examples, prompt_ids, template_tokens
from gptforge.errors import UserError
from gptforge.model.vocab import grow_vocabulary
from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS, gpt2

from helpers import random_gpt

ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
TOOL_RECORD = {"tools": [ADD], "messages": [
    {"role": "user", "content": "17+25?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 17, \"b\": 25}"}}]},
    {"role": "tool", "tool_call_id": "a", "content": "42"},
    {"role": "assistant", "content": "It is 42."}]}
PLAIN_RECORD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture
def examples(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(TOOL_RECORD) + "\n" + json.dumps(PLAIN_RECORD) + "\n")
    return read_examples(str(path))[0]


def test_template_tokens_add_the_tool_markers_only_when_an_example_uses_tools(examples):
    assert template_tokens(examples, "chatml") == CHAT_TOKENS + TOOL_TOKENS
    assert template_tokens(examples[1:], "chatml") == CHAT_TOKENS
    assert template_tokens(examples, "alpaca") == ()


def test_a_tool_example_trains_on_its_call_and_answer_not_the_result(examples):
    base = random_gpt(0, vocab_size=50257, context_length=128)
    tokenizer = gpt2().with_special_tokens(template_tokens(examples, "chatml"))
    model = grow_vocabulary(base, tokenizer.vocab_size)  # what fine-tuning does with a base model
    assert model.config.vocab_size == 50257 + 6
    ids, mask = encode_example(examples[0], tokenizer, "chatml")
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == ('<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 25}}\n</tool_call><|im_end|>'
                       "It is 42.<|im_end|>")
    prompt = prompt_ids(examples[0], tokenizer, "chatml")
    assert tokenizer.decode(prompt).endswith("<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert ids[:len(prompt)] == prompt
    response = tokenizer.special_tokens["<tool_response>"]
    assert not any(m for i, m in zip(ids, mask) if i == response)


def test_tool_examples_need_the_tool_tokens_and_chatml(examples):
    chat_only = gpt2().with_special_tokens(CHAT_TOKENS)
    with pytest.raises(ValueError, match="need a tokenizer with the tool tokens"):
        encode_examples(examples, chat_only, "chatml", 128)
    encode_examples(examples[1:], chat_only, "chatml", 128)  # a tool-less set is as before
    with pytest.raises(UserError, match=r"record 1 \(line 1\): --template alpaca has no tool calls"):
        encode_example(examples[0], gpt2(), "alpaca")
