"""A byte-level BPE of your own: round trips, the same ids as `tokenizers` itself, its folder checked."""

from __future__ import annotations

import inspect
import json
import pickle
import random
import shutil

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers

from gptforge.errors import UserError
from gptforge.tokenizer import CHAT_TOKENS, BPETokenizer, load_tokenizer
from gptforge.tokenizer.bpe import PATTERN, byte_alphabet

from helpers import handmade_bpe, random_unicode

WHITESPACE = ["", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2028", " \t\n\r\x0b\x0c"]


def reference(folder, split_special: bool = True) -> HFTokenizer:
    """`tokenizers` itself reading the folder's tokenizer.json; split_special: special tokens' text
    is plain text (the library's switch for what gptforge always does)."""
    hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    hf.encode_special_tokens = split_special
    return hf


def test_round_trips_any_text(tiny_bpe):
    rng = random.Random(0)
    texts = [random_unicode(rng, rng.randint(0, 300)) for _ in range(300)]
    # Whitespace runs of every kind and length, alone and between words.
    texts += [a + b for a in WHITESPACE for b in WHITESPACE] + [f"x{a}y{b}z" for a in WHITESPACE for b in WHITESPACE]
    # Random bytes decoded with replacement, as sources.py reads invalid UTF-8.
    texts += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))).decode("utf-8", "replace")
              for _ in range(100)]
    # The special tokens' literal text, which stays text.
    texts += ["<|endoftext|>", "a<|endoftext|>b<|im_start|>user\n<|im_end|>", "<|endoftext", "<<|im_end|>|>"]
    for text in texts:
        ids = tiny_bpe.encode(text)
        assert tiny_bpe.decode(ids) == text, text
        assert not set(ids) & set(tiny_bpe.special_tokens.values()), text
        assert tiny_bpe.decode_bytes(ids) == text.encode("utf-8")


def test_encodes_exactly_like_tokenizers_itself(tiny_bpe, tiny_bpe_dir, text):
    plain = reference(tiny_bpe_dir, split_special=False)  # the library's default: specials matched
    rng = random.Random(1)
    samples = [text.read_text()] + [random_unicode(rng, 500) for _ in range(50)]
    for sample in samples:
        assert tiny_bpe.encode(sample) == plain.encode(sample, add_special_tokens=False).ids
    literal = "x<|endoftext|>y<|im_start|>"
    assert tiny_bpe.encode(literal) == reference(tiny_bpe_dir).encode(literal, add_special_tokens=False).ids
    assert plain.encode(literal, add_special_tokens=False).ids != tiny_bpe.encode(literal)  # would be special
    array = tiny_bpe.encode_array(samples[0])
    assert array.dtype == "<u2" and array.tolist() == tiny_bpe.encode(samples[0])


def test_decodes_every_token_like_tokenizers_itself(tiny_bpe, tiny_bpe_dir):
    assert set(byte_alphabet()) == set(pre_tokenizers.ByteLevel.alphabet())
    hf = reference(tiny_bpe_dir)
    for i in range(tiny_bpe.vocab_size):
        if i in tiny_bpe.special_tokens.values():
            assert tiny_bpe.token_bytes(i) == b"" and tiny_bpe.decode([i]) == hf.id_to_token(i)
        else:
            assert tiny_bpe.decode([i]) == hf.decode([i]), i  # both replace invalid UTF-8 by U+FFFD
    assert len({tiny_bpe.token_bytes(i) for i in range(3, tiny_bpe.vocab_size)}) == tiny_bpe.vocab_size - 3
    assert sorted(tiny_bpe.token_bytes(i) for i in range(3, 259)) == [bytes([b]) for b in range(256)]


def test_its_folder_and_description(tiny_bpe, tiny_bpe_dir, text):
    meta = json.loads((tiny_bpe_dir / "meta.json").read_text())
    import hashlib

    sha = hashlib.sha256((tiny_bpe_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["sha256"] == tiny_bpe.sha256 == sha and tiny_bpe.name == f"bpe-{sha[:12]}"
    assert meta["vocab_size"] == tiny_bpe.vocab_size == 400
    assert meta["special_tokens"] == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tiny_bpe.eot_id == 0 and set(CHAT_TOKENS) <= set(tiny_bpe.special_tokens)
    source = meta["sources"][0]
    assert source["path"] == str(text) and source["sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()
    assert tiny_bpe.describe() == {k: meta[k] for k in ("name", "type", "vocab_size", "eot_id", "special_tokens",
                                                         "sha256")}
    assert pickle.loads(pickle.dumps(tiny_bpe)).describe() == tiny_bpe.describe()


def test_a_tampered_or_incomplete_folder_is_refused(tiny_bpe_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_bpe_dir, folder)
    data = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(data.replace('"e"', '"E"', 1))
    with pytest.raises(UserError, match="does not match the sha256"):
        load_tokenizer(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="is not a tokenizer folder"):
        load_tokenizer(folder)
    with pytest.raises(UserError, match="no such tokenizer folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):
        BPETokenizer(b"{not json")


def test_with_special_tokens_adds_new_ids_at_the_end(tiny_bpe):
    assert tiny_bpe.with_special_tokens(CHAT_TOKENS) is tiny_bpe  # reserved from the start
    more = tiny_bpe.with_special_tokens(["<|im_end|>", "<|tool|>"])
    assert more.vocab_size == 401 and more.special_tokens["<|tool|>"] == 400
    assert more.encode("a <|tool|> b") == tiny_bpe.encode("a <|tool|> b")  # still plain text
    assert more.extends(tiny_bpe) is False  # another tokenizer.json: another vocabulary file
    assert more.name != tiny_bpe.name and more.decode([400]) == "<|tool|>"


def hard_texts(rng: random.Random) -> list[str]:
    """Text where two encoders could part: every code point (in runs and alone between letters,
    digits and spaces), random Unicode, whitespace runs, code, invalid UTF-8 read with replacement,
    special tokens' literal text, long runs of one character."""
    every = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = ["".join(every[i:i + 50_000]) for i in range(0, len(every), 50_000)]
    texts += ["".join(f"{c}a{c} 1{c}\n" for c in every[i:i + 50_000]) for i in range(0, len(every), 50_000)]
    texts += [random_unicode(rng, rng.randint(0, 2000)) for _ in range(200)]
    texts += [f"x{a}y{b}z{a}" for a in WHITESPACE for b in WHITESPACE]
    texts.append(inspect.getsource(json.decoder) + inspect.getsource(random))
    texts += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 500))).decode("utf-8", "replace")
              for _ in range(100)]
    texts += ["<|endoftext|>", "a<|endoftext|>b<|im_start|>user\n<|im_end|>", " <|endoftext|>\n<|im_end|>"]
    texts += [c * n + tail for c in [" ", "\n", "a", "1", "!", "\u00e9", "\U0001F600", " \n"] for n in (1000, 20_000)
              for tail in ("", "x", " y")]
    return texts


@pytest.mark.slow  # ~10 s: every code point, in two contexts, through both encoders
def test_tiktoken_encodes_our_bpe_exactly_like_tokenizers(tiny_bpe, tiny_bpe_dir):
    assert tiny_bpe.encoder == "tiktoken"  # its merges pass fast_bpe's checks
    hf, rng = reference(tiny_bpe_dir), random.Random(2)
    texts = hard_texts(rng)
    for text, expected in zip(texts, hf.encode_batch_fast(texts, add_special_tokens=False)):
        ids = tiny_bpe.encode(text)
        assert ids == expected.ids, text[:80]
        assert tiny_bpe.decode(ids) == text
    assert tiny_bpe.encode("a\ud800b") == hf.encode("a\ufffdb", add_special_tokens=False).ids  # lone surrogate


def ambiguous_bpe() -> BPETokenizer:
    """A BPE whose token "abc" is recorded as ab + c, though "bc" is merged before "ab": `tokenizers`
    leaves "abc" as a + bc, while tiktoken, merging whatever spells a token, would make it abc."""
    return handmade_bpe([("b", "c"), ("a", "b"), ("ab", "c"), ("Ġ", "x")])


def test_a_bpe_tiktoken_would_encode_differently_stays_on_tokenizers(tiny_bpe):
    import tiktoken

    bpe = ambiguous_bpe()
    assert bpe.encoder == "tokenizers" and bpe.fast is None
    ranks = {bpe.token_bytes(i): i for i in range(len(bpe.special_tokens), bpe.vocab_size)}
    naive = tiktoken.Encoding("naive", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={})
    ids = {t: bpe.hf.token_to_id(t) for t in ["a", "bc", "abc"]}
    assert naive.encode_ordinary("abc") == [ids["abc"]]  # what a tiktoken twin would say
    assert bpe.encode("abc") == [ids["a"], ids["bc"]] == bpe.hf.encode("abc", add_special_tokens=False).ids
    for text in hard_texts(random.Random(3))[-60:]:
        assert bpe.encode(text) == bpe.hf.encode(text, add_special_tokens=False).ids
    # Another pipeline (a prefix space before each text) is not tiktoken's either.
    doc = json.loads(tiny_bpe.json_bytes)
    doc["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    other = BPETokenizer(json.dumps(doc).encode())
    assert other.encoder == "tokenizers" and other.encode("hi") == other.hf.encode("hi", add_special_tokens=False).ids


def _rehash(folder):
    """meta.json's sha256 updated to the edited tokenizer.json, as a careful attacker would."""
    from gptforge.files import sha256_file

    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"] = sha256_file(folder / "tokenizer.json")
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit", ["pre_tokenizer", "normalizer"])
def test_a_regex_other_than_ours_is_refused_even_with_a_matching_hash(tiny_bpe_dir, tmp_path, edit):
    """A catastrophic pre-tokenizer regex ((a+)+$ backtracks exponentially on "aaa...b") would hang
    every encode: a tokenizer folder holds only the pattern gptforge trains with."""
    from helpers import assert_user_error, run_cli

    folder = tmp_path / "tok"
    shutil.copytree(tiny_bpe_dir, folder)
    doc = json.loads((folder / "tokenizer.json").read_text())
    evil = {"Regex": "(a+)+$"}
    if edit == "pre_tokenizer":
        doc["pre_tokenizer"]["pretokenizers"][0]["pattern"] = evil
    else:
        doc["normalizer"] = {"type": "Replace", "pattern": evil, "content": "x"}
    (folder / "tokenizer.json").write_text(json.dumps(doc))
    _rehash(folder)
    with pytest.raises(UserError, match="regex") as e:
        load_tokenizer(folder)
    assert "(a+)+$" in str(e.value) and "\n" not in str(e.value)
    assert_user_error(run_cli("tokenizer", "encode", "--tokenizer", str(folder), "a" * 40 + "b", timeout=60),
                      "is not the pattern gptforge trains with")
