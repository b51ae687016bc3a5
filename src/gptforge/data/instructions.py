"""Fine-tuning data: instruction records and chat conversations, read, checked and split.

Two record shapes, one per line of a .jsonl file or the elements of a .json list:
- an instruction record `{"instruction": ..., "input": ... (optional), "output": ...}` (the
  Alpaca / "LLMs from scratch" chapter 7 shape), read as a user turn and the assistant's answer;
- a chat record `{"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}`
  (the OpenAI / Hugging Face shape), any number of turns, the last one the assistant's; with an
  optional "tools" list, assistant "tool_calls" and "tool" messages (data/tool_records.py).
Either may carry "context": retrieved passages, a list of {"source", "text"} (most relevant first),
which the chat template renders in the system turn; the loss stays on the answer.

DATA is one such file (split into train and val by --val-fraction, seeded), a folder holding
train.json(l) and val.json(l), `builtin:NAME` (a set shipped with gptforge), or `hf:NAME[:CONFIG]`
(a Hugging Face dataset with either shape, streamed). A bad record stops everything with one line
naming the file and the record's number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import parse_json
from ..text.sources import BUILTIN_PREFIX, HF_PREFIX, HFDataset, SourceOptions
from .tool_records import check_tool_answer, check_tool_calls, check_tools, declared_names

ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".jsonl", ".json")
# in gptforge/corpora/; a folder holds train, val (and test) files
BUILTIN_SETS = {"tasks": "tasks.json", "tasks-chat": "tasks-chat.jsonl", "tools": "tools", "documents": "documents",
                "tasks-preferences": "tasks-preferences.jsonl"}  # the last for --method dpo


@dataclass
class Example:
    """One training conversation."""

    messages: list[dict]  # {"role", "content"} dicts; the last one is the assistant's
    where: str  # "FILE record N", for messages about it
    instruction: dict | None = None  # the instruction record it was read from (the Alpaca template needs it)
    tools: list[dict] | None = None  # the functions it may call (OpenAI's tool objects)
    context: list[dict] | None = None  # retrieved passages ({"source", "text"}) the template renders

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in self.messages)


def instruction_messages(record: dict) -> list[dict]:
    """An instruction record as a conversation: the instruction (and its input after a blank
    line) as the user's turn, the output as the assistant's."""
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def check_messages(messages, where: str, final_assistant: bool = True, tools: list[dict] | None = None
                   ) -> list[dict]:
    """The messages of a chat record as {"role", "content"} dicts (an assistant's with its checked
    "tool_calls", a tool's with its "tool_call_id"), or one UserError line. `tools`: the record's
    checked tools, the only ones its calls may name."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: \"messages\" must be a non-empty list of {{role, content}} objects")
    out, pending = [], {}  # pending: the calls of the last assistant turn not answered yet
    for i, message in enumerate(messages, 1):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(message, dict) or "role" not in message or ("content" not in message and not calls):
            raise UserError(f"{where}: message {i} needs a \"role\" and a \"content\"")
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if content is None and calls:
            content = ""  # OpenAI's null content beside calls
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i}'s content is {type(content).__name__}, not text")
        if role == "system" and i > 1:
            raise UserError(f"{where}: message {i} is a system message; only the first may be one")
        turn = {"role": role, "content": content}
        if role == "tool":
            check_tool_answer(message, pending, f"{where}: message {i}")
            turn["tool_call_id"] = message["tool_call_id"]
        else:
            pending = {}
        if calls is not None:
            if role != "assistant":
                raise UserError(f"{where}: message {i} is the {role}'s; only the assistant makes tool calls")
            turn["tool_calls"] = check_tool_calls(calls, declared_names(tools), f"{where}: message {i}")
            pending = {call["id"]: call["function"]["name"] for call in turn["tool_calls"]}
        out.append(turn)
    if final_assistant and out[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message is the {out[-1]['role']}'s; a training conversation "
                        "ends with the assistant's answer")
    return out


def check_context(context, where: str) -> list[dict] | None:
    """A record's "context" (retrieved passages, most relevant first) as {"source", "text"} dicts,
    or one UserError line; None or [] is none."""
    if context is None:
        return None
    if not isinstance(context, list):
        raise UserError(f"{where}: \"context\" must be a list of {{source, text}} objects")
    for i, item in enumerate(context, 1):
        if not (isinstance(item, dict) and isinstance(item.get("source"), str) and isinstance(item.get("text"), str)):
            raise UserError(f"{where}: context passage {i} must be an object with a \"source\" and a \"text\" "
                            "(both text)")
    return [{"source": item["source"], "text": item["text"]} for item in context] or None


def parse_record(record, where: str) -> Example:
    """One record (instruction or chat shape) as an Example, or one UserError line."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is {type(record).__name__}, not an object")
    context = check_context(record.get("context"), where)
    if "messages" in record:
        tools = check_tools(record["tools"], where) if record.get("tools") is not None else None
        return Example(check_messages(record["messages"], where, tools=tools), where, tools=tools, context=context)
    if "instruction" not in record:
        raise UserError(f"{where} has neither \"messages\" (a chat record) nor \"instruction\" and "
                        f"\"output\" (an instruction record); it has: {', '.join(map(str, record)) or 'nothing'}")
    if "output" not in record:
        raise UserError(f"{where} has no \"output\" (an instruction record needs \"instruction\" and \"output\")")
    for key in ("instruction", "input", "output"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise UserError(f"{where}: \"{key}\" is {type(record[key]).__name__}, not text")
    fields = {"instruction": record["instruction"], "input": record.get("input") or "", "output": record["output"]}
    return Example(instruction_messages(fields), where, fields, context=context)


def _json_records(path: Path) -> list[tuple[str, object]]:
    """(where, record) of a .json list or a .jsonl file, in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        return []
    if path.suffix == ".json" or text.lstrip().startswith("["):
        records = parse_json(text, str(path))
        if not isinstance(records, list):
            raise UserError(f"{path} holds a JSON {type(records).__name__}; expected a list of records")
        return [(f"{path} record {i}", r) for i, r in enumerate(records, 1)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} record {len(out) + 1} (line {lineno})"
        out.append((where, parse_json(line, where)))
    return out


def read_file(path: Path, max_examples: int | None = None, parse: Callable = parse_record) -> list:
    """The examples of one .json / .jsonl file, every record checked by `parse` (record, where)."""
    examples = [parse(record, where) for where, record in islice(_json_records(path), max_examples)]
    if not examples:
        raise UserError(f"{path} holds no records")
    return examples


def read_hf(spec: str, split: str, max_examples: int | None, parse: Callable = parse_record) -> list:
    """The examples of a Hugging Face dataset's split, streamed (the first max_examples only)."""
    source = HFDataset(spec, SourceOptions(hf_split=split))
    examples = [parse(row, f"{spec} ({split}) record {i}")
                for i, row in enumerate(islice(source.rows(), max_examples), 1)]
    if not examples:
        raise UserError(f"{spec} ({split}) holds no records")
    return examples


def _builtin(spec: str) -> Path:
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_SETS:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_SETS)
        raise UserError(f"unknown builtin instruction set {spec!r}; available: {known}")
    with resources.as_file(resources.files("gptforge") / "corpora" / BUILTIN_SETS[name]) as path:
        return Path(path)


def _split_file(folder: Path, split: str) -> Path | None:
    found = [folder / f"{split}{suffix}" for suffix in SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        raise UserError(f"{folder} has both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def read_examples(spec: str, max_examples: int | None = None, parse: Callable = parse_record
                  ) -> tuple[list[Example], list[Example] | None]:
    """(train, val) examples of DATA, each record read by `parse` (parse_record, or
    data.preferences.parse_preference); val is None when DATA has no validation part of its own
    (a single file), for split_examples to cut."""
    if spec.startswith(HF_PREFIX):
        return read_hf(spec, "train", max_examples, parse), None
    path = _builtin(spec) if spec.startswith(BUILTIN_PREFIX) else Path(spec).expanduser()
    if path.is_dir():
        train, val = _split_file(path, "train"), _split_file(path, "val")
        if train is None:
            raise UserError(f"{path} has no train.jsonl or train.json (a data folder holds train.* and val.*)")
        return read_file(train, max_examples, parse), (read_file(val, max_examples, parse) if val else None)
    if not path.is_file():
        raise UserError(f"no such instruction or chat data: {spec} (a .json / .jsonl file, a folder with "
                        "train.* and val.*, builtin:NAME or hf:NAME)")
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: fine-tuning data is a .json list or .jsonl file of records")
    return read_file(path, max_examples, parse), None


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out round(val_fraction * n) examples (at least one when val_fraction > 0), chosen by
    `seed` alone; both parts keep the file's order."""
    n = len(examples)
    n_val = max(round(val_fraction * n), 1) if val_fraction > 0 else 0
    if n_val >= n:
        raise UserError(f"{n} example(s) cannot give --val-fraction {val_fraction} to validation and "
                        "keep some for training")
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return [e for e, v in zip(examples, is_val) if not v], [e for e, v in zip(examples, is_val) if v]


def load_examples(data: str, val_data: str | None, val_fraction: float, seed: int,
                  max_examples: int | None = None, parse: Callable = parse_record) -> tuple[list[Example], list[Example]]:
    """The (train, val) examples of a fine-tuning run: DATA's own val part, else --val-data's
    examples, else a seeded --val-fraction of DATA's."""
    train, val = read_examples(data, max_examples, parse)
    if val_data:
        val = read_examples(val_data, max_examples, parse)[0]
    elif val is None:
        train, val = split_examples(train, val_fraction, seed)
    return train, val
