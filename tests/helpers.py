"""Helpers the tests share: running the CLI as a user does, and reading corpora back."""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gptforge.data import load_corpus
from gptforge.text import read_documents
from gptforge.tokenizer import gpt2

EOT_ID = gpt2().eot_id  # GPT-2's <|endoftext|>, which the corpora in these tests separate documents with


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptforge", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def run_cli_here(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """run_cli's result from the CLI's `main` in this process: no new Python and torch to start
    (seconds a call), for tests of what a command says and does rather than of the process."""
    from gptforge.cli import main

    out, err = io.StringIO(), io.StringIO()
    stdin = sys.stdin
    sys.stdin = io.StringIO(input or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args)) or 0
            except SystemExit as e:  # argparse's errors, --help and --version
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.stdin = stdin
    return subprocess.CompletedProcess(["gptforge", *args], code, out.getvalue(), err.getvalue())


def wait_for(predicate, timeout: float = 120) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def assert_user_error(result: subprocess.CompletedProcess, fragment: str, code: int = 2) -> None:
    """One clear line on stderr, the user-error exit code, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


def random_gpt(seed: int = 0, **overrides):
    """A randomly initialised gpt2-tiny with a 257-id vocabulary and a 16-token context, carrying
    GPT-2's tokenizer (what its checkpoints record; the tests that need text give it ids < 257)."""
    import torch

    from gptforge.config import GPTConfig
    from gptforge.model import GPT

    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("gpt2-tiny", **{"vocab_size": 257, "context_length": 16, **overrides}), gpt2())


def position_tokens(n: int) -> np.ndarray:
    """Tokens equal to their own position, so a row's first token tells where the window starts."""
    assert n < 65536
    return np.arange(n, dtype=np.uint16)


def encode(text: str) -> list[int]:
    return gpt2().encoding.encode_ordinary(text)  # tiktoken itself


def read_split(out: Path, split: str) -> list[int]:
    """A prepared split's tokens, all its shards joined, read straight from the files meta.json lists."""
    meta = json.loads((out / "meta.json").read_text())
    return [t for s in meta["shards"][split] for t in np.fromfile(out / s["file"], dtype="<u2").tolist()]


def split_on_eot(tokens: list[int]) -> list[list[int]]:
    docs, current = [], []
    for t in tokens:
        if t == EOT_ID:
            docs.append(current)
            current = []
        else:
            current.append(t)
    return docs + [current]



def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path



def corpus_tokens(out: Path) -> tuple[np.ndarray, np.ndarray]:
    corpus = load_corpus(out)
    return np.asarray(corpus.train), np.asarray(corpus.val)


def write_docs(folder: Path, n: int = 14) -> list[str]:
    """n documents of varied real text (slices of the bundled plays), one file each."""
    plays = [text for _, text in read_documents("builtin:shakespeare")]
    texts = [plays[i][1000 * i:1000 * i + 3000 + 700 * i] for i in range(n)]
    for i, text in enumerate(texts):
        write(folder / f"doc{i:02d}.txt", text)
    return texts


def joined(texts: list[str]) -> list[int]:
    out: list[int] = []
    for i, text in enumerate(texts):
        out += ([EOT_ID] if i else []) + encode(text)
    return out


def shard_files(tmp_path: Path, tokens: np.ndarray, sizes: list[int]):
    """`tokens` written as shard files of the given sizes, opened as one stream."""
    from gptforge.data.shards import open_tokens

    paths, start = [], 0
    for i, n in enumerate(sizes):
        paths.append(tmp_path / f"s{i}.bin")
        tokens[start:start + n].tofile(paths[-1])
        start += n
    assert start == len(tokens)
    return open_tokens(paths, sizes)


def random_unicode(rng: random.Random, n: int) -> str:
    """n random characters from many scripts (emoji, combining marks, private use, astral planes),
    with spaces, tabs, newlines, contractions and digits mixed in."""
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


def greedy_tokens(model, messages: list[dict], max_tokens: int) -> list[int]:
    """A chat model's greedy answer recomputed plainly: the template's prompt (issue 13's render), a
    full forward pass per token (no cache), argmax, up to <|im_end|> or <|endoftext|> (left out)."""
    from gptforge.tokenizer import tokenizer_of
    from gptforge.tokenizer.chat import render

    ids, _ = render(messages, tokenizer_of(model), add_generation_prompt=True)
    return greedy_after(model, list(ids), max_tokens)


def greedy_after(model, ids: list[int], max_tokens: int) -> list[int]:
    """A chat model's greedy continuation of the prompt `ids`, recomputed plainly (see greedy_tokens)."""
    import torch

    from gptforge.tokenizer import tokenizer_of
    from gptforge.tokenizer.chat import end_of_turn

    tokenizer = tokenizer_of(model)
    new: list[int] = []
    with torch.no_grad():
        while len(new) < max_tokens and len(ids) + len(new) < model.config.context_length:
            token = int(model(torch.tensor([ids + new]))[0, -1].argmax())
            if token in (end_of_turn(tokenizer), tokenizer.eot_id):
                break
            new.append(token)
    return new


def early_end(model, messages: list[dict], max_tokens: int) -> tuple[int, str]:
    """(token, answer): a token of the greedy answer after which turn_ends_after(model, token) makes
    the answer end early (after its third token where it can), and that shorter answer's text."""
    from gptforge.tokenizer import tokenizer_of
    from gptforge.tokenizer.chat import render

    last = render(messages, tokenizer_of(model), add_generation_prompt=True)[0][-1]
    tokens = greedy_tokens(model, messages, max_tokens)
    k = next((k for k in (*range(2, len(tokens)), 1, 0) if tokens[k] not in tokens[:k] and tokens[k] != last), None)
    if k is None:  # a random model's answer may be the prompt's last token over and over: end at once
        return last, ""
    return tokens[k], tokenizer_of(model).decode(tokens[:k + 1])


@contextlib.contextmanager
def turn_ends_after(model, token: int):
    """While inside: `model` ends its turn (<|im_end|> wins by far) right after it emits `token`."""
    from gptforge.tokenizer import tokenizer_of
    from gptforge.tokenizer.chat import end_of_turn

    with steered(model, {token: end_of_turn(tokenizer_of(model))}):
        yield


@contextlib.contextmanager
def steered(model, after: dict[int, int]):
    """While inside: wherever `model`'s input is a token of `after`, the token it maps to wins by far."""
    def boost(module, args, logits):  # logits (B, T, V), or (B, 1, V) for the last position alone
        logits = logits.clone()
        ids = args[0][:, -logits.size(1):]
        for seen, wanted in after.items():
            logits[..., wanted] += (ids == seen).to(logits.dtype) * 1e4
        return logits

    handle = model.register_forward_hook(boost)
    try:
        yield
    finally:
        handle.remove()


def handmade_bpe(merges: list[tuple[str, str]], fillers: tuple[str, ...] = ()):
    """A BPETokenizer from a hand-written merge list: the special tokens, then `fillers` (tokens no
    merge makes, to push the ids up), the 256 byte tokens, and one token per merge, in order."""
    from tokenizers import models

    from gptforge.tokenizer import BPETokenizer
    from gptforge.tokenizer.bpe import byte_alphabet
    from gptforge.tokenizer.train import SPECIAL_TOKENS, empty_tokenizer

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + fillers + tuple(sorted(byte_alphabet())))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    hf = empty_tokenizer()
    hf.model = models.BPE(vocab=vocab, merges=merges)
    hf.add_special_tokens(list(SPECIAL_TOKENS))
    return BPETokenizer(hf.to_str().encode())


class WriteFaults:
    """Counts every file write and fsync that goes through gptforge.files (all a checkpoint's
    writes do), and fails the `fail_at`-th one (1-based; 0 never) with OSError `error`, as a full
    disk (ENOSPC) or a failing one (EIO) would. `armed` off: nothing is counted."""

    def __init__(self, monkeypatch, fail_at: int = 0, error: int = 28, armed: bool = True):
        from gptforge import files

        self.count, self.fail_at, self.error, self.armed = 0, fail_at, error, armed
        real_write, real_fsync = files.raw_write, files.fsync

        def write(file, data):
            self._tick()
            return real_write(file, data)

        def fsync(path):
            self._tick()
            return real_fsync(path)

        monkeypatch.setattr(files, "raw_write", write)
        monkeypatch.setattr(files, "fsync", fsync)

    def _tick(self) -> None:
        import os

        if not self.armed:
            return
        self.count += 1
        if self.count == self.fail_at:
            raise OSError(self.error, os.strerror(self.error))


def schema_errors(value, schema: dict, where: str = "$") -> list[str]:
    """Where `value` breaks `schema`: a small JSON Schema checker of its own (type, enum, const,
    properties, required, additionalProperties, items, minItems/maxItems, minLength/maxLength,
    minimum/maximum), independent of the library that constrains decoding. [] when it validates."""
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind in ("integer", "number"):
        ok = (isinstance(value, int) or (kind == "number" and isinstance(value, float))) and not isinstance(value, bool)
    else:
        ok = kind is None or isinstance(value, kinds[kind])
    if not ok:
        return [f"{where}: {value!r} is not of type {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{where}: {key!r} is missing" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{where}.{key}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{where}: {key!r} is not allowed")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        errors.append(f"{where}: a string of {len(value)} characters")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        errors.append(f"{where}: {value} is out of range")
    return errors


def random_tool_model(context_length: int = 512):
    """A random gpt2-tiny whose tokenizer is GPT-2's plus the chat and tool tokens (a context long
    enough for the tools' block in the system turn), ready to decode."""
    from gptforge.model import prepare_for_decoding
    from gptforge.model.vocab import grow_vocabulary
    from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS

    model = grow_vocabulary(random_gpt(0, vocab_size=50257, context_length=context_length), 50263,
                            gpt2().with_special_tokens(CHAT_TOKENS + TOOL_TOKENS)).eval()
    return prepare_for_decoding(model)
