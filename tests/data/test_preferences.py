"""Preference records: the shapes read, what is refused (one line naming the record), and the
encoding: each answer after the same prompt, its mask on the last answer only."""

import json

import pytest

from gptforge.data.instructions import load_examples
from gptforge.data.preferences import encode_preferences, parse_preference
from gptforge.errors import UserError
from gptforge.tokenizer import CHAT_TOKENS, gpt2

USER = [{"role": "user", "content": "Say apple"}]


@pytest.mark.parametrize("record", [
    {"prompt": "Say apple", "chosen": "RED", "rejected": "red"},
    {"prompt": USER, "chosen": "RED", "rejected": "red"},
    {"messages": USER, "chosen": {"role": "assistant", "content": "RED"}, "rejected": {"content": "red"}},
    {"prompt": USER, "chosen": [{"role": "assistant", "content": "RED"}], "rejected": [{"role": "assistant", "content": "red"}]},
])
def test_the_shapes_read_the_same(record):
    p = parse_preference(record, "f record 1")
    assert (p.prompt, p.chosen, p.rejected) == (USER, "RED", "red")
    assert p.example("rejected").messages == USER + [{"role": "assistant", "content": "red"}]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "x", "rejected": "a"}, 'f record 3 has no "chosen"'),
    ({"prompt": "x", "chosen": "a"}, 'f record 3 has no "rejected"'),
    ({"prompt": "x", "chosen": "a", "rejected": "a"}, "f record 3: \"chosen\" and \"rejected\" are the same"),
    ({"prompt": "x", "chosen": " ", "rejected": "a"}, "f record 3: \"chosen\" is empty"),
    ({"prompt": "x", "chosen": 3, "rejected": "a"}, "f record 3: \"chosen\" is int"),
    ({"prompt": "x", "chosen": {"role": "user", "content": "a"}, "rejected": "b"}, "the assistant's message"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "non-empty list"),
    (["x"], "f record 3 is list"),
])
def test_bad_records_are_one_line_naming_the_record(record, message):
    with pytest.raises(UserError) as e:
        parse_preference(record, "f record 3")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_file_is_read_and_split_like_instruction_data(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {i}", "chosen": "A", "rejected": "a"}) + "\n" for i in range(10)))
    train, val = load_examples(str(path), None, 0.2, seed=1, parse=parse_preference)
    assert len(train) == 8 and len(val) == 2 and val[0].where.startswith(f"{path} record ")


def test_each_answer_follows_the_same_prompt_and_only_the_last_answer_is_masked():
    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS)
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] + USER
    [(chosen, rejected)], cut = encode_preferences([parse_preference(
        {"messages": convo, "chosen": "RED", "rejected": "a red one"}, "r")], tokenizer, "chatml", 64)
    (c_ids, c_mask), (r_ids, r_mask) = chosen, rejected
    start = int(c_mask.argmax())  # the first scored token
    assert list(c_ids[:start]) == list(r_ids[:start])  # the same prompt, "hello" included
    assert tokenizer.decode(c_ids[c_mask].tolist()) == "RED<|im_end|>"
    assert tokenizer.decode(r_ids[r_mask].tolist()) == "a red one<|im_end|>"
    assert cut == 0
    [((ids, mask), _)], cut = encode_preferences([parse_preference(
        {"prompt": "Say apple", "chosen": "RED " * 40, "rejected": "red"}, "r")], tokenizer, "chatml", 16)
    assert len(ids) == 17 and mask[-1] and cut == 1  # cut to the context, the answer kept in part
