"""Write gptforge's small preference set `builtin:tasks-preferences`, for `finetune --method dpo`.

    python scripts/make_preferences.py

The tasks of scripts/make_tasks.py (short, with answers a program can check), each with its right
answer as "chosen" and a near miss as "rejected" (the task done on another word, a number one off,
the numbers unsorted, ...), drawn with a fixed seed of its own: the output is a pure function of
this script and make_tasks.py. A chat model fine-tuned on builtin:tasks (the tasks-full recipe)
often gives such near misses; DPO on these pairs teaches it to prefer the right ones.

- src/gptforge/corpora/tasks-preferences.jsonl: 300 records {"prompt", "chosen", "rejected"}.
"""

from __future__ import annotations

import json
import random

from make_tasks import NUMBER_WORDS, OUT_DIR, WORDS, as_user_message, task

SEED = 2027
COUNT = 300


def near_miss(instruction: str, input_text: str, output: str, rng: random.Random) -> str:
    """A wrong answer in the right form, the kind a small chat model gives: the task done on another
    word than the one asked about (such a model often answers "WINDOW" to "pillow in capitals"),
    or a number one off, the smaller one, the numbers unsorted."""
    word = input_text or (instruction.split()[3] if instruction.startswith("Repeat the word") else "")
    other = rng.choice([w for w in WORDS if w != word and w[0] != word[:1]]) if word else ""
    if instruction == "Spell the word backwards.":
        return other[::-1]
    if instruction == "Write the word in capital letters.":
        return other.upper()
    if instruction.startswith("Repeat the word"):
        return " ".join([other] * 3)
    if instruction == "What is the first letter of the word?":
        return other[0]
    if instruction.startswith("Sort these numbers"):
        numbers = input_text.split(", ")
        return ", ".join(reversed(numbers) if ", ".join(numbers) == output else numbers)
    if instruction.startswith("Write the number"):
        n = NUMBER_WORDS.index(output)
        return NUMBER_WORDS[n + 1 if n < len(NUMBER_WORDS) - 1 else n - 1]
    if instruction == "Which number is larger?":
        return str(min(int(x) for x in input_text.split(" or ")))
    return str(int(output) + rng.choice([-1, 1]))  # sums, counts, the next number: one off


def main() -> None:
    rng = random.Random(SEED)
    records = []
    while len(records) < COUNT:
        instruction, input_text, output = task(rng)
        rejected = near_miss(instruction, input_text, output, rng)
        if rejected != output:
            records.append({"prompt": as_user_message(instruction, input_text), "chosen": output,
                            "rejected": rejected})
    path = OUT_DIR / "tasks-preferences.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {len(records)} preference records to {path}")


if __name__ == "__main__":
    main()
