import pickle
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch

from gptforge.tokenizer import CHAT_TOKENS, gpt2, ids_to_text, text_to_ids, tokenizer_from_record
from gptforge.tokenizer import gpt2_bpe as module

from helpers import random_unicode

EOT_ID = 50256


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
    tokenizer = gpt2()
    enc = tokenizer.encoding
    assert enc.n_vocab == reference_encoding.n_vocab == tokenizer.vocab_size == 50257
    assert enc.eot_token == tokenizer.eot_id == EOT_ID and tokenizer.special_tokens == {"<|endoftext|>": EOT_ID}
    assert enc._pat_str == reference_encoding._pat_str
    text = varied_text(3)
    assert len(text) > 3_000_000
    expected = reference_encoding.encode_ordinary(text)
    assert tokenizer.encode(text) == expected
    array = tokenizer.encode_array(text)
    assert array.dtype == np.dtype("<u2") and array.tolist() == expected
    special = "a<|endoftext|>b"
    assert enc.encode(special, allowed_special="all") == reference_encoding.encode(special, allowed_special="all")


def test_known_ids():
    # GPT-2 ids users know from the reference material
    assert gpt2().encode("Hello, I am") == [15496, 11, 314, 716]
    assert text_to_ids("Every effort moves you").tolist() == [[6109, 3626, 6100, 345]]


def test_round_trips_arbitrary_unicode():
    rng = random.Random(1)
    tokenizer = gpt2()
    for _ in range(200):
        text = random_unicode(rng, rng.randint(0, 300))
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_every_byte_has_a_token_and_bytes_round_trip():
    enc = gpt2().encoding
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
    assert gpt2().encode_prompt("<|endoftext|>") == gpt2().encoding.encode_ordinary("<|endoftext|>")
    assert gpt2().encode_prompt("") == [EOT_ID]  # an empty prompt starts a document, as in training


def test_text_to_ids_shape_and_dtype():
    ids = text_to_ids("some text")
    assert ids.dtype == torch.long and ids.dim() == 2 and ids.size(0) == 1
    assert ids_to_text(ids) == "some text"
    with pytest.raises(ValueError):
        ids_to_text(torch.zeros(2, 3, dtype=torch.long))


def test_corrupt_asset_is_detected(tmp_path):
    bad = tmp_path / "vocab.bpe"
    bad.write_bytes(b"#version: 0.2\nnot the real file\n")
    with pytest.raises(RuntimeError, match="corrupt"):
        module._check_sha256(str(bad), module.VOCAB_BPE_SHA256)


def test_with_special_tokens_adds_ids_after_gpt2s_and_text_stays_plain(reference_encoding):
    base = gpt2()
    chat = base.with_special_tokens(CHAT_TOKENS)
    assert base.vocab_size == 50257 and chat.vocab_size == 50259
    assert chat.special_tokens == {"<|endoftext|>": 50256, "<|im_start|>": 50257, "<|im_end|>": 50258}
    assert chat.with_special_tokens(CHAT_TOKENS) is chat and base.with_special_tokens(["<|endoftext|>"]) is base
    # tiktoken given the same special tokens maps their text to the same ids (when asked to)...
    reference = tiktoken.Encoding(name="chat", pat_str=reference_encoding._pat_str,
                                  mergeable_ranks=reference_encoding._mergeable_ranks,
                                  special_tokens=chat.special_tokens)
    text = "<|im_start|>user\nhi there<|im_end|>\n"
    assert reference.encode(text, allowed_special="all")[0] == 50257
    # ...but gptforge never does: user text is plain text, the same ids as GPT-2's own.
    assert chat.encode(text) == base.encode(text) == reference.encode_ordinary(text)
    assert chat.decode([50257, 50258]) == "<|im_start|><|im_end|>" and chat.token_bytes(50257) == b""
    assert chat.extends(base) and not base.extends(chat) and not chat.same_as(base)


def test_the_description_rebuilds_it_and_it_pickles():
    chat = gpt2().with_special_tokens(CHAT_TOKENS)
    assert gpt2().describe() == {"name": "gpt2", "type": "gpt2", "vocab_size": 50257, "eot_id": 50256,
                                 "special_tokens": {"<|endoftext|>": 50256}, "sha256": module.VOCAB_BPE_SHA256}
    assert tokenizer_from_record(chat.describe(), Path("nowhere"), "a test").describe() == chat.describe()
    assert tokenizer_from_record(None, Path("nowhere"), "an old checkpoint") is gpt2()
    assert pickle.loads(pickle.dumps(chat)).describe() == chat.describe()


def test_token_byte_lengths_are_the_utf8_lengths_and_zero_for_special_tokens(reference_encoding):
    lengths = gpt2().with_special_tokens(CHAT_TOKENS).token_byte_lengths()
    assert lengths.shape == (50259,) and lengths[50256] == lengths[50257] == lengths[50258] == 0
    rng = random.Random(3)
    for i in rng.sample(range(50256), 500):
        assert lengths[i] == len(reference_encoding.decode_single_token_bytes(i))
