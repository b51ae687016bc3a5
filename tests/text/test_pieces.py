"""Text cut into pieces where cutting leaves the tokens unchanged (GPT-2's cut points)."""

from __future__ import annotations

import numpy as np

from gptforge.text import cut_pieces
from gptforge.tokenizer import gpt2

SAFE = gpt2().safe_cut


def encode_text(text: str) -> np.ndarray:
    return np.concatenate([gpt2().encode_array(piece) for piece in cut_pieces([text], size=1000, safe_cut=SAFE)])


def test_chunked_tokenization_equals_whole_text():
    enc = gpt2().encoding
    pieces = ["Hello world.\n", "  indented line \n", "\n\n\n", "word\n", "x\ty\n", "café naïve 😀\n",
              "it's 12,345 don't\n", "end.\r\n", " \n", "A\nB\n"]
    rng = np.random.default_rng(0)
    text = "".join(pieces[i] for i in rng.integers(0, len(pieces), size=3000))
    chunks = list(cut_pieces([text], size=500, safe_cut=SAFE))
    assert len(chunks) > 20 and "".join(chunks) == text
    assert encode_text(text).tolist() == enc.encode_ordinary(text)
    assert np.concatenate([encode_text(c) for c in chunks]).tolist() == enc.encode_ordinary(text)


def test_pieces_cut_anywhere_safe_tokenize_like_the_whole_text():
    # Tiny pieces put cuts next to every kind of character: digits, punctuation, contractions,
    # runs of spaces, tabs, CRLF, non-breaking and ideographic spaces, accents, emoji.
    enc = gpt2().encoding
    alphabet = list("ab Z9 ,.'\n\t") + [" ", "  ", "\r\n", "\u00a0", "\u3000", "'s", "'ll", "\u00e9", "\U0001F600",
                                         "12", "--", "\u0394\u03b5", "\n\n"]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        text = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=4000))
        pieces = list(cut_pieces([text], size=7, safe_cut=SAFE))
        assert len(pieces) > 100 and "".join(pieces) == text
        assert [t for p in pieces for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)
        # The cuts depend on the text only, not on how it arrives in blocks.
        blocks = [text[a:b] for a, b in zip([0, 1, 50, 51, 900, 2000], [1, 50, 51, 900, 2000, len(text)])]
        assert list(cut_pieces(blocks, size=7, safe_cut=SAFE)) == pieces


def test_chunked_tokenization_without_newlines():
    text = "word " * 50_000  # one 250,000-character line still splits (at spaces)
    pieces = list(cut_pieces([text], size=10_000, safe_cut=SAFE))
    assert len(pieces) >= 20 and "".join(pieces) == text
    assert encode_text(text).tolist() == gpt2().encoding.encode_ordinary(text)
