"""Text generation: one sampling loop for greedy, temperature, top-k and top-p decoding, and
prompt-to-text functions on top of it (streamed as it is produced)."""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable, Iterable, Iterator

import torch

from .config import GPTConfig
from .device import pick_device
from .errors import UserError
from .model import GPT, prepare_for_decoding
from .sampling import Sampling, check_seed, check_temperature, check_top_p  # noqa: F401 (re-exported)
from .tokenizer import gpt2, tokenizer_of
from .weights import load_any


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by index), set the rest to -inf."""
    if k >= logits.size(-1):
        return logits
    _, keep = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly more likely tokens
    drop_sorted = mass_before >= p  # the most likely token always has mass_before 0, so it stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from (B, V) logits; temperature 0 is argmax. Returns (B,) int64."""
    if temperature == 0.0:
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad:
            # numpy's argmax: the same index (the first of equal maxima, a NaN's if any), 5x sooner
            # than torch's over a 50K vocabulary on the machine measured (8 vs 46 us a row)
            return torch.from_numpy(logits.numpy().argmax(axis=-1))
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    finite = torch.isfinite(probs).all(dim=-1)  # (B,); NaN/inf logits (a broken model) end here
    if not bool(finite.all()):  # multinomial would fail every row at once (on a GPU, the whole process)
        raise FloatingPointError(f"row {int((~finite).nonzero()[0])} has non-finite probabilities")
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream(model: GPT, idx: torch.Tensor, sampling: Sampling, use_cache: bool = True,
           generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens, alive) once per step: tokens (B,) is this step's token of each row and alive
    (B,) says which rows were still generating when it was drawn. A row stops once it has produced
    one of sampling.stop_ids (that token included; a stopped row repeats it); the loop ends when
    every row has stopped or after sampling.max_new_tokens. `generator` defaults to one seeded by
    sampling.seed.

    The model only ever sees the last context_length tokens. With the KV cache, the prompt is
    prefilled in one pass and each step feeds one token; once the window is full every step
    recomputes the cropped window, exactly as the recompute path does, so both give the same tokens.
    """
    s = sampling
    generator = generator if generator is not None else _generator(s.seed, idx.device)
    stops = torch.tensor(sorted(s.stop_ids), dtype=torch.long, device=idx.device) if s.stop_ids else None
    ctx = model.config.context_length
    was_training = model.training
    model.eval()
    try:
        seq = idx
        # a short generation allocates only the positions it can fill
        cache = model.new_cache(idx.size(0), idx.size(1) + s.max_new_tokens) if use_cache else None
        alive = torch.ones(idx.size(0), dtype=torch.bool, device=idx.device)
        next_input = seq[:, -ctx:]
        last = None  # the tokens of the step before: a stopped row keeps its stop token
        for _ in range(s.max_new_tokens):
            if cache is not None and cache.pos + next_input.size(1) > cache.capacity:
                cache.reset()
                next_input = seq[:, -ctx:]
            logits = model(next_input, cache, last=True)[:, -1, :]  # (B, V)
            tokens = sample_next(logits, s.temperature, s.top_k, s.top_p, generator)
            if last is not None:
                tokens = torch.where(alive, tokens, last)
            yield tokens, alive.clone()
            if stops is not None:
                alive &= ~torch.isin(tokens, stops)
                if not alive.any():
                    break
                last = tokens
            seq = torch.cat([seq, tokens[:, None]], dim=1)
            next_input = tokens[:, None] if cache is not None else seq[:, -ctx:]
    finally:
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue each row of idx (B, T); returns (B, T + steps). Rows that stopped at eos_id before
    the others are padded with eos_id."""
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p,
                        stop_ids=frozenset() if eos_id is None else frozenset({eos_id}))
    new = [tokens for tokens, _ in stream(model, idx, sampling, use_cache, generator)]
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()


def complete_ids(model: GPT, ids: list[int], sampling: Sampling, use_cache: bool = True) -> list[int]:
    """The new ids of one continuation of `ids`, up to and without a token of sampling.stop_ids."""
    idx = prompt_ids(model, ids)
    out = []
    for tokens, _ in stream(model, idx, sampling, use_cache):
        if int(tokens[0]) in sampling.stop_ids:
            break
        out.append(int(tokens[0]))
    return out


def prompt_ids(model: GPT, prompt: str | list[int], rows: int = 1) -> torch.Tensor:
    """(rows, n) ids of a prompt for `model` (text is encoded by its own tokenizer, see
    Tokenizer.encode_prompt; ids are taken as they are), on its device. A prompt longer than the
    context is kept whole (generation crops it), with a notice on stderr."""
    tokenizer = tokenizer_of(model)
    ids = tokenizer.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
    if max(ids) >= model.config.vocab_size:  # e.g. a tiny test model from another tool
        raise UserError(f"the prompt has token ids the model does not know: its vocabulary has "
                        f"{model.config.vocab_size} ids, its tokenizer {tokenizer.name}'s has {tokenizer.vocab_size}")
    ctx = model.config.context_length
    if len(ids) > ctx:
        print(f"note: the prompt has {len(ids)} tokens, more than the model's context of {ctx}; "
              f"the model sees only the last {ctx}", file=sys.stderr)
    device = next(model.parameters()).device
    return torch.tensor([ids] * rows, dtype=torch.long, device=device)


def _generator(seed: int | None, device) -> torch.Generator | None:
    # A private generator: sampling never moves the global RNG (a training run's samples must not
    # change its dropout masks, or resuming would not be exact).
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def text_sampling(model: GPT, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int | None = None, stop_at_eos: bool = False) -> Sampling:
    """The Sampling of the plain-text functions' keywords: stop_at_eos stops at the model's
    <|endoftext|>."""
    eos = frozenset({tokenizer_of(model).eot_id}) if stop_at_eos else frozenset()
    return Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop_ids=eos)


def token_bytes_of(model: GPT) -> Callable[[int], bytes]:
    """The bytes of one token of `model`'s tokenizer (a special token as its text)."""
    tokenizer = tokenizer_of(model)
    return lambda token: tokenizer.decode_bytes([token])


class TextPieces:
    """Tokens in, text out as soon as it is final. A character split across tokens is held back
    until complete (invalid UTF-8 becomes U+FFFD). With stop strings, text that could be the start
    of one is held back until it is known not to be, and a stop string ends the text (it is not
    part of it): `stopped` turns True and every later push returns "". The first stop string to
    be completed wins, however the text was split into tokens.

    Each stop string is matched by a Knuth-Morris-Pratt automaton: every new character costs O(1)
    amortised per stop string, so a push is linear in its new text, whatever the stop strings'
    lengths (a suffix scan per token is quadratic in them, which froze the server at 1 MB).
    """

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Iterable[str] = ()):
        self.token_bytes = token_bytes
        self.stop = [s for s in stop if s]
        self.fallback = [_kmp_fallback(s) for s in self.stop]
        self.matched = [0] * len(self.stop)  # stop string i's longest prefix ending the text so far
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # decoded, not yet released: it may begin a stop string
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        return self._release(self.decoder.decode(self.token_bytes(token)), final=False)

    def finish(self) -> str:
        """The text still held back, once no token follows."""
        if self.stopped:
            return ""
        return self._release(self.decoder.decode(b"", final=True), final=True)

    def _release(self, new: str, final: bool) -> str:
        text = self.held + new
        for pos, char in enumerate(new, start=len(self.held)):
            ended = [i for i in range(len(self.stop)) if self._advance(i, char)]
            if ended:  # the longest of those ending here starts first
                self.stopped, self.held = True, ""
                return text[:pos + 1 - max(len(self.stop[i]) for i in ended)]
        keep = 0 if final else max(self.matched, default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def _advance(self, i: int, char: str) -> bool:
        """Feed one character to stop string i's automaton; True when it has just matched whole."""
        s, k, fallback = self.stop[i], self.matched[i], self.fallback[i]
        while k and s[k] != char:
            k = fallback[k - 1]
        k += s[k] == char
        self.matched[i] = k
        return k == len(s)


def _kmp_fallback(s: str) -> list[int]:
    """fallback[k] is the length of the longest proper prefix of s[:k + 1] that is also its suffix."""
    fallback, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fallback[k - 1]
        k += s[i] == s[k]
        fallback[i] = k
    return fallback


def stream_text(model: GPT, ids: list[int], sampling: Sampling, use_cache: bool = True) -> Iterator[str]:
    """Continue the token ids `ids`, yielding the new text as it becomes final (see TextPieces);
    a token of sampling.stop_ids or a string of sampling.stop ends it and is not part of it."""
    text = TextPieces(token_bytes_of(model), sampling.stop)
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    for tokens, _ in stream(model, idx, sampling, use_cache):
        token = int(tokens[0])
        if token in sampling.stop_ids:
            break
        if piece := text.push(token):
            yield piece
        if text.stopped:
            break
    if tail := text.finish():
        yield tail


def generate_text(model: GPT, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  stop_at_eos: bool = False, use_cache: bool = True, include_prompt: bool = False
                  ) -> Iterator[str]:
    """Continue `prompt`, yielding the new text as it is produced (see TextPieces). stop_at_eos
    ends at <|endoftext|>, which is not yielded. The model's own tokenizer decodes (tokenizer_of)."""
    ids = prompt_ids(model, prompt)[0].tolist()
    if include_prompt:
        yield prompt
    sampling = text_sampling(model, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
    yield from stream_text(model, ids, sampling, use_cache)


def generate_texts(model: GPT, prompt: str, num_samples: int, max_new_tokens: int, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   stop_at_eos: bool = False, use_cache: bool = True) -> list[str]:
    """`num_samples` independent continuations of `prompt` (new text only), drawn as one batch."""
    tokenizer = tokenizer_of(model)
    sampling = text_sampling(model, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    for tokens, alive in stream(model, prompt_ids(model, prompt, num_samples), sampling, use_cache):
        for i, token in enumerate(tokens.tolist()):
            if alive[i] and token not in sampling.stop_ids:
                rows[i].append(token)
    return [tokenizer.decode(row) for row in rows]


def model_for_generation(source: str | None = None, preset: str | None = None, seed: int | None = None,
                         device: str = "auto", dtype: str = "float32", allow_nonfinite: bool = False,
                         quantize: str | None = None) -> GPT:
    """A model ready to decode (see prepare_for_decoding): from `source` (anything load_any
    takes; weights with NaN or inf refused unless `allow_nonfinite`), or a `preset` with random
    weights drawn from `seed`; quantized if `quantize` says how (see model.quantize)."""
    dev = pick_device(device)
    if dtype == "float16" and dev.type == "cpu":
        raise UserError("--dtype float16 is for GPUs (a CPU emulates it, very slowly); "
                        "use bfloat16 or float32")
    if source is not None:
        model = load_any(source, dev, nonfinite="warn" if allow_nonfinite else "refuse")
        if not hasattr(model, "lm_head"):  # a Classifier (model.classifier) has a head of classes, not tokens
            raise UserError(f"{source} is a classifier, which labels texts and cannot generate; use "
                            f"`gptforge classify --checkpoint {source} TEXT`")
    else:
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(dev):
            model = GPT(GPTConfig.from_preset(preset), gpt2())  # a preset's vocabulary is GPT-2's
    return prepare_for_decoding(model, getattr(torch, dtype), quantize)
