"""Write gptforge's small classification sets, `builtin:sources` and `builtin:genres`.

    python scripts/make_classify_sets.py

Passages of 40 to 240 characters (sources) or 80 to 300 (genres), cut at word boundaries from
random places of the bundled corpora, drawn with a fixed seed: the output is a pure function of
this script and the bundled corpora. Both are {"text", "label"} lines in src/gptforge/corpora/:

- sources.jsonl: which bundled corpus a passage comes from: the Shakespeare corpus ("shakespeare")
  or the instruction set builtin:tasks rendered as text, one record per instruction, input and
  output ("tasks"); 300 of each, shuffled. Easy: the fixture a tiny model learns
  (tests/training/test_classify.py).
- genres.jsonl: which kind of play a passage of Shakespeare comes from, by the First Folio's
  grouping (comedy, history, tragedy; Pericles and the poems left out); 600 passages, each from a
  play drawn uniformly, so the classes are as unequal as the plays (14 comedies, 5 histories,
  12 tragedies here). The data of the classify-cpu recipe.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from gptforge.text import read_documents

OUT = Path(__file__).resolve().parent.parent / "src" / "gptforge" / "corpora"
SEED = 2027
GENRES = {
    "comedy": "tempest two_gentlemen_of_verona merry_wives_of_windsor measure_for_measure comedy_of_errors "
              "much_ado_about_nothing loves_labours_lost midsummer_nights_dream merchant_of_venice as_you_like_it "
              "taming_of_the_shrew alls_well_that_ends_well twelfth_night winters_tale",
    "history": "john richard_ii henry_v richard_iii henry_viii",
    "tragedy": "troilus_and_cressida coriolanus tragedy_of_titus_andronicus romeo_and_juliet timon_of_athens "
               "julius_caesar macbeth hamlet lear othello antony_and_cleopatra cymbeline",
}


def passage(text: str, rng: random.Random, shortest: int, longest: int) -> str:
    """A passage of shortest-longest characters starting and ending at word boundaries, spaces tidied."""
    length = rng.randint(shortest, longest)
    start = rng.randrange(0, len(text) - length)
    start = text.find(" ", start) + 1
    end = text.rfind(" ", start, start + length)
    return " ".join(text[start:end].split())


def write(name: str, rows: list[dict], rng: random.Random) -> None:
    rows = [r for r in rows if r["text"]]
    rng.shuffle(rows)
    (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {OUT / name}: {len(rows)} passages")


def main() -> None:
    plays = {name.rpartition("/")[2]: text for name, text in read_documents("builtin:shakespeare")}
    rng = random.Random(SEED)
    shakespeare = "\n".join(plays.values())
    tasks = "\n".join("\n".join(filter(None, (r["instruction"], r["input"], r["output"])))
                      for r in json.loads((OUT / "tasks.json").read_text()))
    write("sources.jsonl", [{"text": passage(text, rng, 40, 240), "label": label}
                            for label, text in (("shakespeare", shakespeare), ("tasks", tasks)) for _ in range(300)], rng)
    genre_of = {play: genre for genre, names in GENRES.items() for play in names.split()}
    missing = sorted(set(genre_of) - set(plays))
    assert not missing, f"not in builtin:shakespeare: {missing}"
    titles = sorted(genre_of)
    write("genres.jsonl", [{"text": passage(plays[play], rng, 80, 300), "label": genre_of[play]}
                           for play in (rng.choice(titles) for _ in range(600))], rng)


if __name__ == "__main__":
    main()
