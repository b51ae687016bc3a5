"""Write gptforge's small classification set `builtin:sources`: which bundled corpus a passage
comes from.

    python scripts/make_sources.py

Passages of 40 to 240 characters, cut at word boundaries from random places of the bundled
Shakespeare (label "shakespeare") and of the bundled instruction set builtin:tasks rendered as
text, one record per instruction, input and output (label "tasks"), drawn with a fixed seed: the
output is a pure function of this script and the two corpora. 300 passages of each, shuffled, in
src/gptforge/corpora/sources.jsonl as {"text", "label"} lines. It is the fixture a tiny model
learns (tests/training/test_classify.py) and the data of the classify-cpu recipe.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from gptforge.text import read_documents

OUT = Path(__file__).resolve().parent.parent / "src" / "gptforge" / "corpora" / "sources.jsonl"
SEED = 2027
PER_CLASS = 300


def passage(text: str, rng: random.Random) -> str:
    """A passage of 40-240 characters starting and ending at word boundaries, spaces tidied."""
    length = rng.randint(40, 240)
    start = rng.randrange(0, len(text) - length)
    start = text.find(" ", start) + 1
    end = text.rfind(" ", start, start + length)
    return " ".join(text[start:end].split())


def main() -> None:
    rng = random.Random(SEED)
    shakespeare = "\n".join(text for _, text in read_documents("builtin:shakespeare"))
    tasks_path = OUT.parent / "tasks.json"
    tasks = "\n".join("\n".join(filter(None, (r["instruction"], r["input"], r["output"])))
                      for r in json.loads(tasks_path.read_text()))
    rows = [{"text": passage(text, rng), "label": label}
            for label, text in (("shakespeare", shakespeare), ("tasks", tasks)) for _ in range(PER_CLASS)]
    rows = [r for r in rows if r["text"]]
    rng.shuffle(rows)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {OUT}: {len(rows)} passages")


if __name__ == "__main__":
    main()
