"""Fine-tuning records that carry retrieved passages ("context"): the template renders them in the
system turn, the loss stays on the answer, and a bad "context" is one line naming the record."""

import json
import re

import pytest

from gptforge.data.instructions import read_examples
from gptforge.data.templates import encode_example, encode_examples, prompt_ids
from gptforge.errors import UserError
from gptforge.tokenizer import CHAT_TOKENS, gpt2
from gptforge.tokenizer.chat import CONTEXT_INTRO

CONTEXT = [{"source": "town.md:4-6", "text": "The mayor of Eldham is Ada Brook."},
           {"source": "river.md:1", "text": "The Eld river floods in March."}]
CHAT = {"context": CONTEXT, "messages": [{"role": "user", "content": "Who is the mayor of Eldham?"},
                                         {"role": "assistant", "content": "Ada Brook [1]."}]}
INSTRUCTION = {"context": CONTEXT[:1], "instruction": "Who is the mayor of Eldham?", "output": "Ada Brook."}


def examples_of(tmp_path, *records):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return read_examples(str(path))[0]


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2().with_special_tokens(CHAT_TOKENS)


def test_the_passages_are_in_the_prompt_and_the_loss_is_on_the_answer(tmp_path, tokenizer):
    chat, instruction = examples_of(tmp_path, CHAT, INSTRUCTION)
    start, end = (tokenizer.special_tokens[t] for t in CHAT_TOKENS)
    system = (f"{CONTEXT_INTRO}\n\n[1] town.md:4-6\nThe mayor of Eldham is Ada Brook.\n\n"
              "[2] river.md:1\nThe Eld river floods in March.")
    prompt = [start, *tokenizer.encode(f"system\n{system}"), end, *tokenizer.encode("\n"),
              start, *tokenizer.encode("user\nWho is the mayor of Eldham?"), end, *tokenizer.encode("\n"),
              start, *tokenizer.encode("assistant\n")]
    ids, mask = encode_example(chat, tokenizer, "chatml")
    assert prompt_ids(chat, tokenizer, "chatml") == prompt
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "Ada Brook [1].<|im_end|>"
    ids, mask = encode_example(instruction, tokenizer, "chatml")
    assert "[1] town.md:4-6\nThe mayor of Eldham is Ada Brook." in tokenizer.decode(ids)
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "Ada Brook.<|im_end|>"


def test_records_without_context_encode_as_before(tmp_path, tokenizer):
    (plain,) = examples_of(tmp_path, {"messages": CHAT["messages"]})
    (empty,) = examples_of(tmp_path, {**CHAT, "context": []})
    assert plain.context is None and empty.context is None
    assert encode_example(plain, tokenizer, "chatml") == encode_example(empty, tokenizer, "chatml")
    assert tokenizer.special_tokens["<|im_start|>"] == encode_example(plain, tokenizer, "chatml")[0][0]
    assert "system" not in tokenizer.decode(encode_example(plain, tokenizer, "chatml")[0])


def test_a_long_context_that_crowds_out_the_answer_drops_the_example(tmp_path, tokenizer):
    long = {**CHAT, "context": [{"source": "a.md:1", "text": "word " * 200}]}
    encoded, _, dropped = encode_examples(examples_of(tmp_path, long, CHAT), tokenizer, "chatml", 128)
    assert len(encoded) == 1 and dropped == 1  # the long one: its answer is cut off


@pytest.mark.parametrize("context, message", [
    ("passages", "record 1 (line 1): \"context\" must be a list of {source, text} objects"),
    ([{"source": "a.md"}], "record 1 (line 1): context passage 1 must be an object with a \"source\" and a \"text\""),
    ([{"source": 3, "text": "x"}], "context passage 1 must be an object"),
])
def test_a_bad_context_is_one_line_naming_the_record(tmp_path, context, message):
    with pytest.raises(UserError, match=re.escape(message)):
        examples_of(tmp_path, {**CHAT, "context": context})


def test_alpaca_refuses_passages(tmp_path):
    (instruction,) = examples_of(tmp_path, INSTRUCTION)
    with pytest.raises(UserError, match="--template alpaca has no place for \"context\" passages"):
        encode_example(instruction, gpt2(), "alpaca")
