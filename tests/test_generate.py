import math
import random
import threading

import pytest
import torch
import torch.nn as nn

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.generate import Sampling, generate, sample_next, stream, top_k_filter, top_p_filter

from helpers import assert_user_error, random_gpt, run_cli

NEG_INF = float("-inf")


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 7.0, 7.0, 7.0]])
    out = top_k_filter(logits, 2)
    assert out[0].tolist() == [NEG_INF, 5.0, NEG_INF, 4.0, NEG_INF]
    assert torch.isfinite(out[1]).sum().item() == 2  # a three-way tie still keeps exactly k
    assert top_k_filter(logits, 5).tolist() == logits.tolist()
    assert top_k_filter(logits, 50).tolist() == logits.tolist()


@pytest.mark.parametrize("p, kept", [(0.4, [0]), (0.75, [0, 1]), (0.85, [0, 1, 2]), (0.99, [0, 1, 2, 3]),
                                     (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_nucleus(p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    order = torch.tensor([2, 0, 3, 1])  # shuffle so the filter cannot rely on sorted input
    logits = probs.log()[order].unsqueeze(0)
    out = top_p_filter(logits, p)[0]
    kept_original = sorted(order[torch.isfinite(out)].tolist())
    assert kept_original == kept
    torch.testing.assert_close(out[torch.isfinite(out)], logits[0][torch.isfinite(out)])


def test_temperature_zero_is_argmax_and_top_k_1_is_argmax():
    torch.manual_seed(0)
    logits = torch.randn(16, 50)
    assert sample_next(logits, temperature=0.0).tolist() == logits.argmax(-1).tolist()
    assert sample_next(logits, temperature=1.5, top_k=1).tolist() == logits.argmax(-1).tolist()
    # the edge cases torch's argmax settles (greedy CPU rows take numpy's): the first of tied
    # maxima, a NaN's index, a row of -inf, a strided view, and the result's dtype
    logits[1, 7] = logits[1, 9] = 100.0
    logits[2, 30], logits[2, 4] = float("nan"), float("nan")
    logits[3] = float("-inf")
    for view in (logits, logits[:, ::3], logits.double()):
        greedy = sample_next(view, temperature=0.0)
        assert greedy.dtype == torch.int64 and greedy.tolist() == view.argmax(-1).tolist()
    assert sample_next(logits, temperature=0.0)[1:3].tolist() == [7, 4]


def test_sampling_follows_the_distribution_and_the_seed():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-9]])).repeat(20000, 1)
    draws = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[0] == pytest.approx(0.7, abs=0.02) and freq[1] == pytest.approx(0.2, abs=0.02)
    again = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    other = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again) and not torch.equal(draws, other)
    hot = sample_next(logits, temperature=100.0, generator=torch.Generator().manual_seed(0))
    assert (torch.bincount(hot, minlength=4).float() / len(hot))[3] > 0.15  # flattened


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(temperature=math.nan), dict(top_p=0.0),
                                    dict(top_p=1.01), dict(top_k=0), dict(max_new_tokens=-1),
                                    dict(temperature=1e-300), dict(top_p=1e-300)])
def test_bad_sampling_arguments(tiny_model, kwargs):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(UserError):
        generate(tiny_model, torch.zeros(1, 2, dtype=torch.long), **args)


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1])
def test_a_seed_torch_cannot_take_is_a_user_error(seed):
    from gptforge.generate import check_seed

    with pytest.raises(UserError, match="seed"):
        check_seed(seed)
    check_seed(2**64 - 1)  # the ends of the range torch takes are fine
    check_seed(-2**63)


@pytest.mark.parametrize("flag, value", [("--temperature", "1e-300"), ("--top-p", "1e-300"),
                                         ("--seed", str(2**64)), ("--seed", str(-2**63 - 1))])
def test_generate_refuses_sampling_values_it_cannot_use_in_one_line(flag, value):
    result = run_cli("generate", "--preset", "gpt2-tiny", "--random-init", "--prompt", "Hi",
                     "--max-new-tokens", "2", f"{flag}={value}")
    assert_user_error(result, flag.lstrip("-"))


def test_one_row_with_nan_logits_fails_alone_in_the_sampler():
    logits = torch.zeros(2, 5)
    logits[1, 2] = math.nan
    with pytest.raises(FloatingPointError, match="row 1"):
        sample_next(logits, temperature=1.0)


class Scripted(nn.Module):
    """A stand-in model whose next token after position t of row b is script[b][t]."""

    def __init__(self, script: list[list[int]], vocab: int = 10):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.config = GPTConfig(vocab_size=vocab, context_length=64, emb_dim=4, n_heads=1, n_layers=1)

    def forward(self, idx, cache=None, last=False):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            logits[b, -1, self.script[b][T - 1]] = 10.0
        return logits[:, -1:] if last else logits


def test_eos_stops_each_row_on_its_own():
    eos = 9
    model = Scripted([[1, 2, eos, 3, 3, 3], [4, 5, 6, 7, eos, 3]])
    idx = torch.zeros(2, 1, dtype=torch.long)
    steps = list(stream(model, idx, Sampling(6, temperature=0, stop_ids={eos}), use_cache=False))
    assert len(steps) == 5  # stops once the last row has produced eos
    alive = torch.stack([a for _, a in steps]).T.tolist()
    assert alive == [[True, True, True, False, False], [True, True, True, True, True]]
    out = generate(model, idx, max_new_tokens=6, temperature=0, eos_id=eos, use_cache=False)
    assert out.tolist() == [[0, 1, 2, eos, eos, eos], [0, 4, 5, 6, 7, eos]]
    full = generate(model, idx, max_new_tokens=6, temperature=0, use_cache=False)
    assert full.tolist()[0] == [0, 1, 2, eos, 3, 3, 3]  # without eos_id nothing stops


def test_any_stop_id_stops_a_row_and_a_stopped_row_repeats_its_own():
    model = Scripted([[1, 8, 3, 3], [4, 5, 9, 3]])
    steps = list(stream(model, torch.zeros(2, 1, dtype=torch.long), Sampling(4, temperature=0, stop_ids={8, 9}),
                        use_cache=False))
    assert torch.stack([t for t, _ in steps]).T.tolist() == [[1, 8, 8], [4, 5, 9]]


def test_sampling_is_checked_when_made_and_stop_strings_end_the_text():
    from gptforge.generate import stream_text
    from gptforge.tokenizer import gpt2

    for bad in (dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(seed=2**64), dict(max_new_tokens=-1)):
        with pytest.raises(UserError):
            Sampling(**{"max_new_tokens": 4, **bad})
    ids = gpt2().encode("Hello there. STOP and more")
    model = Scripted([ids], vocab=50257)
    model.tokenizer, model.anchor = gpt2(), nn.Parameter(torch.zeros(1))  # its decoder, and a device
    text = "".join(stream_text(model, [0], Sampling(len(ids), temperature=0, stop=("STOP",)), use_cache=False))
    assert text == "Hello there. "
    whole = "".join(stream_text(model, [0], Sampling(len(ids), temperature=0), use_cache=False))
    assert whole == "Hello there. STOP and more"



def test_greedy_with_and_without_cache_is_identical():
    model = random_gpt()
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, 257, (3, 5), generator=g)
        # 30 new tokens run far past the 16-token window: the cropped path is covered too
        cached = generate(model, prompt, max_new_tokens=30, temperature=0, use_cache=True)
        plain = generate(model, prompt, max_new_tokens=30, temperature=0, use_cache=False)
        assert cached.shape == (3, 35)
        assert torch.equal(cached, plain)


def test_seeded_sampling_with_and_without_cache_is_identical():
    model = random_gpt(1)
    prompt = torch.randint(0, 257, (2, 4), generator=torch.Generator().manual_seed(0))
    runs = [generate(model, prompt, 12, temperature=1.0, top_k=50, top_p=0.9, use_cache=c,
                     generator=torch.Generator().manual_seed(7)) for c in (True, False, True)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_prompt_longer_than_context_is_cropped_not_refused():
    model = random_gpt(2)
    prompt = torch.randint(0, 257, (1, 40), generator=torch.Generator().manual_seed(0))
    out = generate(model, prompt, max_new_tokens=3, temperature=0)
    assert out.shape == (1, 43) and torch.equal(out[:, :40], prompt)
    cropped = generate(model, prompt[:, -16:], max_new_tokens=3, temperature=0)
    assert torch.equal(out[:, 40:], cropped[:, 16:])


def test_generate_restores_training_mode():
    model = random_gpt(3, dropout=0.2).train()
    generate(model, torch.zeros(1, 1, dtype=torch.long), 2)
    assert model.training


def pieces_of(chunks, stops):
    """(released text, stopped) when `chunks` arrive one token each through TextPieces."""
    from gptforge.generate import TextPieces

    vocab = {i: c.encode() for i, c in enumerate(chunks)}
    text = TextPieces(vocab.__getitem__, stops)
    out = "".join(text.push(i) for i in range(len(chunks))) + text.finish()
    return out, text.stopped


def first_stop(text, stops):
    """Brute force: the text before the stop string that is completed first (the longest if two
    end at the same character), or the whole text."""
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if s and text[:end].endswith(s)]
        if ending:
            return text[:end - max(map(len, ending))], True
    return text, False


def test_stop_strings_cut_where_the_first_one_completes_however_the_text_is_split():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 14)))
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, max(0, len(text) - 1)))) if text else []
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)]) if j > i]
        assert pieces_of(chunks, stops) == first_stop(text, stops), (chunks, stops)


def test_a_long_stop_string_costs_time_linear_in_the_new_text():
    """A 200 000-character stop string over 40 tokens: a per-token scan of its prefixes is quadratic
    in its length (hours here); the automaton takes milliseconds. 60 s is a bound no load reaches."""
    done = []
    worker = threading.Thread(target=lambda: done.append(pieces_of(["a"] * 40 + ["b"], ["a" * 200_000])),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert done == [("a" * 40 + "b", False)]
    assert pieces_of(["a" * 5, "a" * 5], ["a" * 10]) == ("", True)
