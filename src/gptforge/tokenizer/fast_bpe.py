"""Encoding our byte-level BPE through tiktoken, when that provably gives the ids `tokenizers` gives.

tiktoken merges, at each step, the adjacent pair whose concatenated bytes form the token of lowest
id; `tokenizers` merges the adjacent pair that comes first in its list of merges. The two agree on
every input (tiktoken being ~10x faster) when all of these hold, checked here for the whole file:
  - the same pipeline: no normalizer, the split by PATTERN (tiktoken's cl100k pattern, with every
    character matched by some alternative, so tiktoken drops nothing between matches), then bytes
    as ByteLevel characters with no prefix space and no regex of its own; a plain BPE model
    (no dropout, no affixes, no byte fallback, merges not skipped) and no post-processor;
  - the 256 bytes are tokens, and every other non-special token is made by exactly one merge, the
    merges' results having increasing ids (so merge order = id order, and a merge's parts come
    before its result);
  - for every merge (a, b) -> t, tiktoken's own procedure on the bytes of t, allowed only the ids
    below t's, ends in exactly [a, b].
Why that suffices, by induction on r: allowed only ids below r, both procedures reach the same
parts. Allowing id r = (a, b) too, `tokenizers` then merges the (a, b) pairs left to right. In
tiktoken's state, any adjacent x, y spelling t evolved as tiktoken on t's bytes alone would (no
merge crossed their outer edges), and that ends in [a, b] by the last check; so tiktoken merges the
same pairs in the same order. Nor can a merge at r enable a lower id s: s's bytes would sit in
parts that tiktoken below r leaves unmerged, but by the checks tiktoken below r turns them into s.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import tiktoken


def pipeline_is_plain(doc: dict[str, Any], pattern: str) -> bool:
    """Whether tokenizer.json's pipeline is the one tiktoken reproduces (see the module docstring)."""
    model = doc.get("model") or {}
    split, byte_level = {}, {}
    pre = doc.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 2:
        split, byte_level = pre["pretokenizers"]
    return (doc.get("normalizer") is None and doc.get("post_processor") is None
            and split == {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
            and {k: v for k, v in byte_level.items() if k != "trim_offsets"}  # offsets only: ids unaffected
            == {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
            and model.get("type") == "BPE" and model.get("dropout") is None
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback") and not model.get("ignore_merges"))


def lowest_id_merge(piece: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's procedure on one piece, allowed only the ids below `below`: merge the adjacent
    pair spelling the lowest id (the leftmost of equals) until none is allowed; the parts."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        found = [(ranks.get(parts[i] + parts[i + 1], below), i) for i in range(len(parts) - 1)]
        rank, i = min(found)
        if rank >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tiktoken_twin(doc: dict[str, Any], table: list[bytes], specials: dict[str, int],
                  pattern: str) -> tiktoken.Encoding | None:
    """A tiktoken Encoding giving exactly the ids of the `tokenizers` BPE in `doc` (tokenizer.json,
    parsed; `table`: the bytes of every id; `pattern`: the split it must use) on every text,
    special tokens' text staying text, if the module docstring's checks prove it; None otherwise."""
    if not pipeline_is_plain(doc, pattern):
        return None
    special_ids = set(specials.values())
    ranks = {token: i for i, token in enumerate(table) if i not in special_ids}
    vocab = doc["model"].get("vocab") or {}
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in doc["model"].get("merges") or []]
    made = [vocab.get(a + b) for a, b in merges]
    if (len(ranks) != len(table) - len(special_ids) or any(bytes([b]) not in ranks for b in range(256))
            or len(made) != len(ranks) - 256 or None in made
            or any(a not in vocab or b not in vocab for a, b in merges) or any(x >= y for x, y in pairwise(made))):
        return None
    for (a, b), t in zip(merges, made):
        if lowest_id_merge(table[t], ranks, t) != [table[vocab[a]], table[vocab[b]]]:
            return None
    return tiktoken.Encoding("gptforge-bpe", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens=dict(specials))
