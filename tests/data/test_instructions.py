"""Fine-tuning data: the record shapes, the ways to give train and val, and bad records named."""

import json

import pytest

from gptforge.data.instructions import load_examples, read_examples, split_examples
from gptforge.errors import UserError

INSTRUCTIONS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Reverse the word.", "input": "stop", "output": "pots"},
    {"instruction": "Name a colour.", "output": "Blue."},
]
CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"}]},
]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_instruction_records_from_a_json_list_and_jsonl_read_alike(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(INSTRUCTIONS))
    a, _ = read_examples(str(tmp_path / "a.json"))
    b, _ = read_examples(str(jsonl(tmp_path / "b.jsonl", INSTRUCTIONS)))
    assert [e.messages for e in a] == [e.messages for e in b]
    assert a[1].messages == [{"role": "user", "content": "Reverse the word.\n\nstop"},
                             {"role": "assistant", "content": "pots"}]
    assert a[0].messages[0]["content"] == "Add 2 and 3."  # an empty input adds nothing
    assert a[2].instruction == {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert a[1].where == f"{tmp_path / 'a.json'} record 2"


def test_chat_records_keep_every_turn(tmp_path):
    examples, val = read_examples(str(jsonl(tmp_path / "chat.jsonl", CHATS)))
    assert val is None
    assert examples[0].messages == CHATS[0]["messages"] and examples[0].instruction is None


def test_a_folder_gives_train_and_val_and_a_file_is_split_by_the_seed(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    jsonl(folder / "train.jsonl", INSTRUCTIONS)
    (folder / "val.json").write_text(json.dumps(CHATS))
    train, val = load_examples(str(folder), None, 0.5, seed=0)
    assert len(train) == 3 and len(val) == 2
    records = [{"instruction": f"say {i}", "output": str(i)} for i in range(40)]
    path = jsonl(tmp_path / "many.jsonl", records)
    t1, v1 = load_examples(str(path), None, 0.1, seed=7)
    t2, v2 = load_examples(str(path), None, 0.1, seed=7)
    _, v3 = load_examples(str(path), None, 0.1, seed=8)
    assert len(v1) == 4 and [e.where for e in v1] == [e.where for e in v2] != [e.where for e in v3]
    assert sorted(e.where for e in t1 + v1) == sorted(e.where for e in t2 + v2)
    assert len({e.where for e in t1} & {e.where for e in v1}) == 0
    # --val-data replaces the split, --max-examples caps every file
    train, val = load_examples(str(path), str(jsonl(tmp_path / "v.jsonl", CHATS)), 0.1, seed=0, max_examples=10)
    assert len(train) == 10 and len(val) == 2


def test_split_needs_enough_examples():
    with pytest.raises(UserError, match="cannot give --val-fraction"):
        split_examples([object()], 0.1, 0)


def test_hf_datasets_are_read_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    jsonl(folder / "train.jsonl", [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(9)])
    train, val = read_examples(f"hf:{folder}", max_examples=5)
    assert val is None and [e.messages[1]["content"] for e in train] == ["0", "1", "2", "3", "4"]
    assert train[2].where == f"hf:{folder} (train) record 3"


@pytest.mark.parametrize("records,message", [
    ([INSTRUCTIONS[0], {"instruction": "x", "input": "y"}], 'record 2 has no "output"'),
    ([CHATS[1], {"messages": [{"role": "user", "content": "hi"}]}],
     "record 2: the last message is the user's; a training conversation ends with the assistant's"),
    ([{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}],
     "record 1: message 1 has role 'bot'; roles are system, user, assistant, tool"),
    ([INSTRUCTIONS[0], INSTRUCTIONS[1], {"text": "plain"}], 'record 3 has neither "messages"'),
    ([{"instruction": "x", "output": 5}], '"output" is int, not text'),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                    {"role": "assistant", "content": "c"}]}], "only the first may be one"),
    ([{"messages": []}], "non-empty list"),
    ([], "holds no records"),
])
def test_bad_records_are_named_by_file_and_number(tmp_path, records, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(UserError) as e:
        read_examples(str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_data_is_one_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(UserError, match=r"x.jsonl record 2 \(line 2\) is not valid JSON"):
        read_examples(str(tmp_path / "x.jsonl"))
    (tmp_path / "d.json").write_text('{"instruction": "a"}')
    with pytest.raises(UserError, match="holds a JSON dict; expected a list"):
        read_examples(str(tmp_path / "d.json"))
    (tmp_path / "empty.json").write_text("\n")
    with pytest.raises(UserError, match="empty.json holds no records"):
        read_examples(str(tmp_path / "empty.json"))
    with pytest.raises(UserError, match="no such instruction or chat data"):
        read_examples(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"a \.json list or \.jsonl file"):
        read_examples(str(tmp_path / "notes.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="has no train.jsonl or train.json"):
        read_examples(str(tmp_path / "folder"))
    with pytest.raises(UserError, match="unknown builtin instruction set"):
        read_examples("builtin:nope")


@pytest.mark.parametrize("name, text, where", [
    ("deep.jsonl", '{"instruction": "a", "output": "b"}\n' + "[" * 100_000 + "\n", "deep.jsonl record 2 (line 2)"),
    ("deep.json", "[" * 100_000, "deep.json"),
    ("deep2.json", "[" + '{"instruction": "a", "output": "b"}, ' + '{"x": ' * 100_000, "deep2.json"),
])
def test_deeply_nested_json_is_one_line_naming_file_and_record(tmp_path, name, text, where):
    """100k nested '[' used to escape as a RecursionError (an internal error) from json.loads."""
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as e:
        read_examples(str(tmp_path / name))
    assert where in str(e.value) and "nested too deeply" in str(e.value) and "\n" not in str(e.value)
