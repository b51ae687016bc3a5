import random
import sysconfig
from pathlib import Path

import pytest
import tiktoken
import torch

from gptforge.tokenizer import (
    EOT_ID,
    encode_prompt,
    get_tokenizer,
    ids_to_text,
    text_to_ids,
)


@pytest.fixture(scope="module")
def reference_encoding(tmp_path_factory):
    """tiktoken's own gpt2 constructor, fed the same files through its download cache, so the
    reference goes through tiktoken's loader, URLs and hash checks rather than ours."""
    import hashlib
    import os

    from tiktoken_ext import openai_public

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    assets = Path(__import__("gptforge").__file__).parent / "assets"
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        key = hashlib.sha1((base + name).encode()).hexdigest()
        (cache / key).write_bytes((assets / name).read_bytes())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.Encoding(**openai_public.gpt2())
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x0, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF),
              (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x300, 0x36F), (0xE000, 0xF8FF),
              (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.15:
            out.append(rng.choice([" ", "  ", "\n", "\t", "\r\n", "'s", "'ll", " 123", "..."]))
    return "".join(out)


def varied_text(megabytes: float) -> str:
    """Python's own source files (code, prose in docstrings, many languages in test data) plus
    random unicode, up to the given size."""
    rng = random.Random(0)
    parts, size = [], 0
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        parts.append(random_unicode(rng, 200))
        size += len(text)
        if size > megabytes * 1e6:
            break
    return "".join(parts)


def test_same_ids_as_tiktoken_gpt2(reference_encoding):
    enc = get_tokenizer()
    assert enc.n_vocab == reference_encoding.n_vocab == 50257
    assert enc.eot_token == EOT_ID
    assert enc._pat_str == reference_encoding._pat_str
    text = varied_text(3)
    assert len(text) > 3_000_000
    assert enc.encode_ordinary(text) == reference_encoding.encode_ordinary(text)
    special = "a<|endoftext|>b"
    assert enc.encode(special, allowed_special="all") == reference_encoding.encode(special, allowed_special="all")


def test_known_ids():
    # GPT-2 ids users know from the reference material
    assert get_tokenizer().encode("Hello, I am") == [15496, 11, 314, 716]
    assert text_to_ids("Every effort moves you").tolist() == [[6109, 3626, 6100, 345]]


def test_round_trips_arbitrary_unicode():
    rng = random.Random(1)
    enc = get_tokenizer()
    for _ in range(200):
        text = random_unicode(rng, rng.randint(0, 300))
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_every_byte_has_a_token_and_bytes_round_trip():
    enc = get_tokenizer()
    for b in range(256):
        assert enc.decode_single_token_bytes(enc.encode_single_token(bytes([b]))) == bytes([b])
    rng = random.Random(2)
    for _ in range(100):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
        text = data.decode("utf-8", errors="replace")
        ids = enc.encode_ordinary(text)
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        # any id sequence decodes (invalid UTF-8 becomes U+FFFD) without raising
        assert isinstance(ids_to_text(ids[::-1]), str)


def test_a_special_token_s_text_is_always_plain_text():
    ordinary = text_to_ids("a<|endoftext|>b")
    assert EOT_ID not in ordinary[0].tolist()
    assert ids_to_text(ordinary) == "a<|endoftext|>b"
    assert encode_prompt("<|endoftext|>") == get_tokenizer().encode_ordinary("<|endoftext|>")
    assert encode_prompt("") == [EOT_ID]  # an empty prompt starts a document, as in training


def test_text_to_ids_shape_and_dtype():
    ids = text_to_ids("some text")
    assert ids.dtype == torch.long and ids.dim() == 2 and ids.size(0) == 1
    assert ids_to_text(ids) == "some text"
    with pytest.raises(ValueError):
        ids_to_text(torch.zeros(2, 3, dtype=torch.long))


def test_corrupt_asset_is_detected(tmp_path):
    import gptforge.tokenizer as tok

    bad = tmp_path / "vocab.bpe"
    bad.write_bytes(b"#version: 0.2\nnot the real file\n")
    with pytest.raises(RuntimeError, match="corrupt"):
        tok._check_sha256(str(bad), tok.VOCAB_BPE_SHA256)
