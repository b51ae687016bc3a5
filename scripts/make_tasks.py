"""Write gptforge's small instruction sets `builtin:tasks` and `builtin:tasks-chat`.

    python scripts/make_tasks.py

Short tasks whose answers a program can check (arithmetic, comparing, counting, spelling words
backwards or in capitals, ...), written from templates and a word list in this file, drawn with a
fixed seed: the output is a pure function of this script. They are for tests and the README's
worked example, small enough to fine-tune a CPU-sized model on in minutes:

- src/gptforge/corpora/tasks.json: 400 instruction records {"instruction", "input", "output"}
  (the Alpaca / "LLMs from scratch" chapter 7 shape), a JSON list;
- src/gptforge/corpora/tasks-chat.jsonl: 200 conversations {"messages": [...]} of two or three
  exchanges each (some with a system message), one per line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "gptforge" / "corpora"
SEED = 2026

WORDS = """apple river stone garden window yellow summer bread candle forest little market silver
orange pencil rabbit winter castle tiger paper honey bottle planet ocean mirror purple butter dragon
flower kitchen rocket thunder village wallet basket cookie jacket ladder monkey pillow saddle tomato
violin whistle anchor button camera dinner engine feather guitar helmet island lemon magnet needle
parrot pocket puzzle shadow spider sunset teapot turtle wagon zebra bridge cloud music friend
""".split()
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def task(rng: random.Random) -> tuple[str, str, str]:
    """One (instruction, input, output) with a checkable answer."""
    kind = rng.randrange(10)
    w = rng.choice(WORDS)
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if kind == 0:
        return f"What is {a} plus {b}?", "", str(a + b)
    if kind == 1:
        return "Spell the word backwards.", w, w[::-1]
    if kind == 2:
        return "Write the word in capital letters.", w, w.upper()
    if kind == 3:
        return f"What number comes after {a}?", "", str(a + 1)
    if kind == 4:
        while b == a:
            b = rng.randint(0, 20)
        return "Which number is larger?", f"{a} or {b}", str(max(a, b))
    if kind == 5:
        words = rng.sample(WORDS, rng.randint(2, 6))
        return "How many words are in this list?", " ".join(words), str(len(words))
    if kind == 6:
        return f"Repeat the word {w} three times.", "", " ".join([w] * 3)
    if kind == 7:
        return "What is the first letter of the word?", w, w[0]
    if kind == 8:
        numbers = rng.sample(range(1, 50), rng.randint(3, 5))
        return "Sort these numbers from smallest to largest.", ", ".join(map(str, numbers)), \
            ", ".join(map(str, sorted(numbers)))
    n = rng.randint(0, 12)
    return f"Write the number {n} in words.", "", NUMBER_WORDS[n]


def as_user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def main() -> None:
    rng = random.Random(SEED)
    records = []
    for _ in range(400):
        instruction, input_text, output = task(rng)
        records.append({"instruction": instruction, "input": input_text, "output": output})
    (OUT_DIR / "tasks.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")

    chats = []
    for i in range(200):
        messages = [{"role": "system", "content": "Answer in as few words as possible."}] if i % 3 == 0 else []
        for _ in range(rng.randint(2, 3)):
            instruction, input_text, output = task(rng)
            messages += [{"role": "user", "content": as_user_message(instruction, input_text)},
                         {"role": "assistant", "content": output}]
        chats.append({"messages": messages})
    (OUT_DIR / "tasks-chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    print(f"wrote {len(records)} instruction records and {len(chats)} conversations to {OUT_DIR}")


if __name__ == "__main__":
    main()
