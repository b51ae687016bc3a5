"""Benchmark files read as multiple-choice items.

The format is HellaSwag's public validation JSONL (`hellaswag_val.jsonl`): one object per line with
`ctx` (or `ctx_a` + `ctx_b`), `endings` (the choices), `label` (the index of the right one, an int
or a numeric string), and optionally `activity_label`. Two tasks read it:

- `hellaswag`: the context and endings cleaned exactly as lm-evaluation-harness's hellaswag task
  does (activity label + ": " + ctx_a + " " + ctx_b capitalised; WikiHow's "[title]" becomes ". ",
  other [bracketed] markers go, double spaces become one), so the scores can match published ones;
- `mc`: any file of that shape, taken as it is (`ctx` and `endings`).

Each choice is scored as the continuation " " + ending of the context (the harness's default
delimiter). A URL is downloaded once into the cache; nothing else touches the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..text.download import default_cache_dir, fetch, url_cache_name

Task = Literal["hellaswag", "mc"]
TASKS: tuple[str, ...] = ("hellaswag", "mc")
DELIMITER = " "  # between a context and each of its choices


@dataclass
class ChoiceItem:
    """One question: which of `choices` continues `context` (after DELIMITER); `label` is the right one."""

    context: str
    choices: list[str]
    label: int


def clean_hellaswag(text: str) -> str:
    """HellaSwag text as lm-evaluation-harness prepares it (the rules above)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _item(row: dict, task: str) -> ChoiceItem:
    endings, label = row["endings"], row["label"]
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise ValueError("'endings' must be a list of at least 2 strings")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise ValueError(f"'label' must be an index into the {len(endings)} endings, got {label!r}")
    if task == "mc":
        return ChoiceItem(str(row["ctx"]), endings, label)
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize() if "ctx_a" in row and "ctx_b" in row else row["ctx"]
    prefix = f"{row['activity_label']}: " if "activity_label" in row else ""
    return ChoiceItem(clean_hellaswag(prefix + ctx), [clean_hellaswag(e) for e in endings], label)


def read_items(data: str | Path, task: Task = "hellaswag", limit: int | None = None) -> list[ChoiceItem]:
    """The first `limit` (default: all) items of a JSONL file or http(s) URL, for `task`."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose from: {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive integer, got {limit}")
    source = str(data)
    if source.startswith(("http://", "https://")):
        path = fetch(source, default_cache_dir() / "benchmarks" / url_cache_name(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"no such benchmark file: {path}")
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(items) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not a JSON object")
                    items.append(_item(row, task))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    what = f"missing field {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
                    raise UserError(f"{source}:{lineno}: not a {task} item: {what}") from None
    except UnicodeDecodeError:
        raise UserError(f"{source} is not UTF-8 text; expected a JSONL file") from None
    except OSError as e:
        raise UserError(f"cannot read {source}: {e.strerror or e}") from None
    if not items:
        raise UserError(f"{source} holds no items")
    return items
