"""Write gptforge's synthetic knowledge base and its questions, `builtin:documents`.

    python scripts/make_documents.py [--out DIR]

Quillmere, a made-up town: its shops, its people and the products of its one factory, one short
Markdown document each, every fact drawn with a fixed seed (names are built from syllables, so no
pretraining corpus holds them). Each entity has four facts and one question per fact, answered by
a few words copied from its document.

The entities are split before any question is written: the questions of the `train` and `val`
entities are fine-tuning records; the `test` entities' documents are in the knowledge base like
all the others, but no question about them appears in training (held-out facts). Each fine-tuning
record carries as `context` the passages that gptforge's own index (BM25) retrieves for its
question, so training sees real retrieval, misses included: a record whose document was not
retrieved is answered "The documents do not say."

DIR (default src/gptforge/corpora/documents):
  docs/{shops,people,products}/*.md   the knowledge base (index it: gptforge index add DIR/docs)
  train.jsonl, val.jsonl              fine-tuning records with context (builtin:documents)
  test-qa.jsonl                       {"question", "answer"} on held-out facts (eval --task qa)
  test-qrels.jsonl                    {"query", "relevant": [the document]} (eval --task retrieval)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from gptforge.retrieval import add_paths, search

OUT_DIR = ROOT / "src" / "gptforge" / "corpora" / "documents"
SEED = 2025
COUNTS = {"shops": 660, "people": 660, "products": 600}
SPLIT = {"val": 8, "test": 21}  # entities of each kind held out; the rest train
K = 1  # passages per training record: see the recipe (documents-cpu.toml) for why one
MISSING = "The documents do not say."

ONSETS = ["b", "br", "c", "cl", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "pr", "r", "s", "st",
          "t", "tr", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
CODAS = ["n", "l", "r", "m", "s", "th", "nd", "rk", "ll", "st", "ck"]
SHOP_KINDS = ["Bakery", "Bookshop", "Forge", "Pharmacy", "Tailor", "Cafe", "Grocer", "Toyshop", "Florist",
              "Cobbler", "Ironmonger", "Dairy"]
GOODS = ["rye bread", "oak chairs", "blue candles", "honey cakes", "copper kettles", "wool scarves", "pear cider",
         "brass lamps", "walnut boxes", "mint tea", "clay pots", "silk ribbons", "fig jam", "tin whistles",
         "leather boots", "lemon soap", "plum pies", "glass beads", "cherry wine", "paper kites"]
JOBS = ["baker", "ferryman", "clockmaker", "librarian", "beekeeper", "glassblower", "miller", "surveyor",
        "weaver", "potter", "shepherd", "bookbinder", "nurse", "carpenter", "mason", "teacher", "fisher",
        "brewer", "painter", "locksmith"]
ANIMALS = ["cat", "dog", "parrot", "goat", "tortoise", "rabbit", "donkey", "owl"]
COLOURS = ["red", "green", "yellow", "white", "black", "grey", "orange", "purple", "silver", "brown"]
PRODUCT_KINDS = ["lantern", "kettle", "bicycle", "radio", "clock", "stove", "pump", "loom", "scale", "drill"]
STREET_KINDS = ["Lane", "Street", "Row", "Road", "Walk", "Hill"]


class Names:
    """Made-up words from syllables; `unique` ones (names of things, surnames) never twice."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int, unique: bool = True) -> str:
        while True:
            w = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(syllables))
            w = (w + self.rng.choice(CODAS)).capitalize()
            if not unique or w not in self.used:
                self.used.add(w)
                return w

    def person(self) -> str:
        return f"{self.word(1, unique=False)} {self.word(2)}"


def shop(rng: random.Random, names: Names, streets: list[str]) -> tuple[str, list[str], list[tuple[str, str]]]:
    name = f"{names.word(2)} {rng.choice(SHOP_KINDS)}"
    owner, street, year, goods = names.person(), rng.choice(streets), str(rng.randint(1820, 1995)), rng.choice(GOODS)
    facts = [f"The {name} is owned by {owner}.", f"It stands on {street}.", f"It opened in {year}.",
             f"It is best known for its {goods}."]
    questions = [(f"Who owns the {name}?", owner), (f"On which street is the {name}?", street),
                 (f"In what year did the {name} open?", year), (f"What is the {name} best known for?", goods)]
    return name, facts, questions


def person(rng: random.Random, names: Names, streets: list[str]) -> tuple[str, list[str], list[tuple[str, str]]]:
    name = names.person()
    job, street, year = rng.choice(JOBS), rng.choice(streets), str(rng.randint(1930, 2005))
    animal, pet = rng.choice(ANIMALS), names.word(1, unique=False)
    facts = [f"{name} works as a {job}.", f"{name} lives on {street}.", f"{name} was born in {year}.",
             f"{name} keeps a {animal} called {pet}."]
    questions = [(f"What does {name} do for a living?", job), (f"On which street does {name} live?", street),
                 (f"In what year was {name} born?", year), (f"What is the name of {name}'s {animal}?", pet)]
    return name, facts, questions


def product(rng: random.Random, names: Names, streets: list[str]) -> tuple[str, list[str], list[tuple[str, str]]]:
    name = f"{names.word(2)} {rng.choice(PRODUCT_KINDS)}"
    designer, colour = names.person(), rng.choice(COLOURS)
    price, weight = f"{rng.randint(3, 400)} crowns", f"{rng.randint(2, 90)} kilograms"
    facts = [f"The {name} was designed by {designer}.", f"It is painted {colour}.", f"It sells for {price}.",
             f"It weighs {weight}."]
    questions = [(f"Who designed the {name}?", designer), (f"What colour is the {name}?", colour),
                 (f"How much does the {name} cost?", price), (f"How much does the {name} weigh?", weight)]
    return name, facts, questions


MAKERS = {"shops": shop, "people": person, "products": product}
INTRO = {"shops": "a shop in Quillmere", "people": "a resident of Quillmere",
         "products": "a product of the Vantrell Works in Quillmere"}


def slug(name: str) -> str:
    return "-".join(name.lower().replace("'", "").split())


def write_docs(out: Path, rng: random.Random) -> list[dict]:
    """The knowledge base's documents under out/docs; one entry per entity: its kind, its
    document's path (relative to out/docs), its questions, and its split."""
    names = Names(rng)
    streets = [f"{names.word(2)} {rng.choice(STREET_KINDS)}" for _ in range(40)]
    entities = []
    for kind, count in COUNTS.items():
        (out / "docs" / kind).mkdir(parents=True, exist_ok=True)
        made = [MAKERS[kind](rng, names, streets) for _ in range(count)]
        n_val, n_test = SPLIT["val"], SPLIT["test"]
        splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (count - n_test - n_val)
        rng.shuffle(splits)
        for (name, facts, questions), split in zip(made, splits):
            rng.shuffle(facts)  # the facts' order varies: the answer must be found, not counted to
            rel = f"{kind}/{slug(name)}.md"
            (out / "docs" / rel).write_text(f"# {name}\n\n{name}: {INTRO[kind]}. {' '.join(facts)}\n",
                                            encoding="utf-8")
            entities.append({"kind": kind, "path": rel, "questions": questions, "split": split})
    return entities


def retrieved(index: Path, docs: Path, question: str) -> list[dict]:
    """The question's K best passages in the index, sources as docs/RELATIVE:lines."""
    return [{"source": f"docs/{Path(h.path).relative_to(docs).as_posix()}:{h.where.rsplit(':', 1)[1]}",
             "text": h.text.strip()} for h in search(index, question, K)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder to write (replaced)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="entities of each kind times this (experiments; the held-out ones stay 21 a kind)")
    args = parser.parse_args(argv)
    out = args.out
    for kind in COUNTS:
        COUNTS[kind] = round(COUNTS[kind] * args.scale)
    rng = random.Random(SEED)
    shutil.rmtree(out / "docs", ignore_errors=True)
    entities = write_docs(out, rng)
    docs = (out / "docs").resolve()
    rows: dict[str, list[dict]] = {"train": [], "val": [], "qa": [], "qrels": []}
    misses = 0
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        add_paths(index, [docs], progress=False)
        for entity in entities:
            for question, answer in entity["questions"]:
                if entity["split"] == "test":
                    rows["qa"].append({"question": question, "answer": answer})
                    rows["qrels"].append({"query": question, "relevant": [entity["path"]]})
                    continue
                context = retrieved(index, docs, question)
                cited = [n for n, p in enumerate(context, 1) if p["source"].startswith(f"docs/{entity['path']}:")]
                misses += not cited
                rows[entity["split"]].append({"context": context, "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"{answer} [{cited[0]}]" if cited else MISSING}]})
    for split in ("train", "val"):
        rng.shuffle(rows[split])
    for name, file in (("train", "train.jsonl"), ("val", "val.jsonl"), ("qa", "test-qa.jsonl"),
                       ("qrels", "test-qrels.jsonl")):
        write_jsonl(out / file, rows[name])
        print(f"wrote {out / file} ({len(rows[name])} records)")
    print(f"{len(entities)} documents; {misses} training question(s) whose document was not among the {K} "
          f"passages retrieved (answered {MISSING!r})")


if __name__ == "__main__":
    main()
