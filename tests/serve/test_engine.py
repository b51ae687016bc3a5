import threading
import time

import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.generate import generate
from gptforge.model import GPT, prepare_for_decoding
from gptforge.serve.engine import Engine, QueueFull, Sampling, Sequence


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2-tiny", vocab_size=257, context_length=64)
    return prepare_for_decoding(GPT(config))


class Collect:
    """A sequence's emitted tokens and its finish reason."""

    def __init__(self):
        self.tokens, self.reason = [], None

    def __call__(self, token, reason):
        if token is not None:
            assert self.reason is None, "a token after the end"
            self.tokens.append(token)
        else:
            assert self.reason is None, "finished twice"
            self.reason = reason


def sequence(prompt, max_tokens, **sampling):
    out = Collect()
    return Sequence(prompt, Sampling(max_tokens, **{"temperature": 0.0, **sampling}), out), out


def prompts(n, seed=0, lengths=(1, 5, 17, 33, 9, 40, 2, 25)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 257, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


def alone(model, prompt, max_tokens, **kw):
    out = generate(model, torch.tensor([prompt]), max_tokens, temperature=0.0, **kw)
    return out[0, len(prompt):].tolist()


def run_until_done(engine, outs, arrivals=()):
    """Step the engine by hand; `arrivals` (step, [sequences]) are submitted at that step."""
    arrivals = sorted(arrivals, key=lambda a: a[0])
    step = 0
    while any(o.reason is None for o in outs):
        while arrivals and arrivals[0][0] <= step:
            engine.submit(arrivals.pop(0)[1])
        engine.step()
        step += 1
        assert step < 10_000
    return step


def test_greedy_tokens_are_the_same_alone_and_beside_others(model):
    """Eight requests of different lengths through four rows, arriving at different steps, the
    prompts longer than a prefill chunk prefilled in pieces: each gets exactly the tokens the
    single-stream generate() gives it alone."""
    engine = Engine(model, max_batch=4, max_queue=16, prefill_chunk=16)
    budgets = [20, 3, 11, 24, 7, 20, 30, 1]
    seqs, outs = zip(*(sequence(p, max_tokens=m) for p, m in zip(prompts(8), budgets)))
    run_until_done(engine, outs, arrivals=[(0, list(seqs[:3])), (2, list(seqs[3:6])), (9, list(seqs[6:]))])
    for p, m, out in zip(prompts(8), budgets, outs):
        assert out.reason == "length"
        assert out.tokens == alone(model, p, m)
    assert engine.load() == {"running": 0, "waiting": 0, "max_batch": 4}


def test_seeded_sampling_does_not_depend_on_the_neighbours(model):
    settings = dict(max_tokens=15, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    target = prompts(1, seed=3)[0]
    seq, by_itself = sequence(target, **settings)
    run_until_done(Engine(model, max_batch=4), [by_itself], arrivals=[(0, [seq])])

    engine = Engine(model, max_batch=4)
    others = [sequence(p, max_tokens=12, temperature=1.0, seed=i) for i, p in enumerate(prompts(3, seed=4))]
    seq, beside = sequence(target, **settings)
    run_until_done(engine, [beside] + [o for _, o in others],
                   arrivals=[(0, [s for s, _ in others[:2]]), (1, [seq]), (3, [others[2][0]])])
    assert beside.tokens == by_itself.tokens
    # the same draws as the single-stream sampler with a generator seeded alike
    reference = generate(model, torch.tensor([target]), 15, temperature=1.0, top_k=50, top_p=0.9,
                         generator=torch.Generator().manual_seed(7))
    assert beside.tokens == reference[0, len(target):].tolist()
    other_seed = sequence(target, **{**settings, "seed": 8})
    run_until_done(Engine(model), [other_seed[1]], arrivals=[(0, [other_seed[0]])])
    assert other_seed[1].tokens != by_itself.tokens


def test_a_short_request_does_not_wait_for_a_long_one(model):
    engine = Engine(model, max_batch=2)
    long_seq, long_out = sequence(prompts(1)[0], max_tokens=50)
    engine.submit([long_seq])
    for _ in range(5):
        engine.step()
    short_seq, short_out = sequence(prompts(1, seed=1)[0], max_tokens=3)
    engine.submit([short_seq])
    steps = 0
    while short_out.reason is None:
        engine.step()
        steps += 1
    assert steps <= 3 and short_out.reason == "length" and len(short_out.tokens) == 3
    assert long_out.reason is None and engine.load()["running"] == 1  # its row is already free


def test_a_stop_token_ends_the_sequence_and_frees_its_row(model):
    prompt = prompts(1, seed=5)[0]
    expected = alone(model, prompt, 12)
    stop = expected[4]
    first = expected.index(stop)
    seq, out = sequence(prompt, max_tokens=12, stop_ids=frozenset({stop}))
    engine = Engine(model, max_batch=2)
    engine.submit([seq])
    while out.reason is None:
        engine.step()
    assert out.reason == "stop" and out.tokens == expected[:first]  # the stop token is not emitted
    assert engine.load()["running"] == 0


def test_cancel_frees_the_row_before_the_next_step(model):
    engine = Engine(model, max_batch=2)
    (a, out_a), (b, out_b) = sequence(prompts(1)[0], max_tokens=40), sequence(prompts(1, seed=2)[0], max_tokens=40)
    engine.submit([a, b])
    engine.step()
    assert engine.load()["running"] == 2
    engine.cancel([a])
    engine.step()
    assert out_a.reason == "cancelled" and engine.load()["running"] == 1
    n = len(out_a.tokens)
    engine.step()
    assert len(out_a.tokens) == n  # nothing after the cancellation
    # b, moved into a's row, goes on with the tokens it gets alone
    while out_b.reason is None:
        engine.step()
    assert out_b.tokens == alone(model, prompts(1, seed=2)[0], 40)


def test_cancelled_while_waiting_never_runs(model):
    engine = Engine(model, max_batch=1)
    (a, out_a), (b, out_b) = sequence(prompts(1)[0], max_tokens=5), sequence(prompts(1)[0], max_tokens=5)
    engine.submit([a, b])
    engine.cancel([b])
    run_until_done(engine, [out_a, out_b])
    assert out_b.reason == "cancelled" and out_b.tokens == [] and out_a.reason == "length"


def test_limits(model):
    engine = Engine(model, max_batch=1, max_queue=2)
    with pytest.raises(UserError, match="exceeds the model's context of 64"):
        engine.submit([sequence([1] * 60, max_tokens=5)[0]])
    engine.submit([sequence([1], max_tokens=5)[0], sequence([2], max_tokens=5)[0]])
    with pytest.raises(QueueFull):
        engine.submit([sequence([3], max_tokens=5)[0]])
    assert engine.load()["waiting"] == 2
    with pytest.raises(UserError):
        sequence([], max_tokens=5)
    with pytest.raises(UserError):
        sequence([1], max_tokens=0)


def test_the_thread_serves_many_submitters_and_stops_cleanly(model):
    engine = Engine(model, max_batch=3).start()
    results = {}

    def client(i):
        p = prompts(1, seed=10 + i)[0]
        done = threading.Event()
        out = Collect()
        engine.submit([Sequence(p, Sampling(8 + i, temperature=0.0),
                                lambda t, r: (out(t, r), r and done.set()))])
        assert done.wait(60)
        results[i] = (p, out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (p, out) in results.items():
        assert out.reason == "length" and out.tokens == alone(model, p, 8 + i)
    waiting = sequence(prompts(1)[0], max_tokens=60 - len(prompts(1)[0]))
    engine.submit([waiting[0]])
    engine.stop()
    assert waiting[1].reason in ("cancelled", "length") and not engine.loop_thread.is_alive()


@pytest.mark.parametrize("broken", [dict(seed=2**64), dict(temperature=1e-300, seed=1), dict(top_p=1e-300, seed=1)])
def test_a_row_whose_sampling_fails_fails_alone(model, broken):
    """Defence in depth: sampling values that slipped past validation (here set after it) fail
    their own row with "error"; the rows beside it decode on as if it had never been there."""
    engine = Engine(model, max_batch=4).start()
    try:
        ps = prompts(3, seed=3)
        seqs = [sequence(p, max_tokens=12) for p in ps]
        bad, bad_out = seqs[1]
        bad.sampling = Sampling(12, temperature=1.0)
        for name, value in broken.items():  # past Sampling's own checks
            object.__setattr__(bad.sampling, name, value)
        engine.submit([s for s, _ in seqs])
        wait = lambda: all(o.reason for _, o in seqs)
        deadline = time.monotonic() + 60
        while not wait() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bad_out.reason == "error"
        for i in (0, 2):
            assert seqs[i][1].reason == "length" and seqs[i][1].tokens == alone(model, ps[i], 12)
        again, out = sequence(ps[0], max_tokens=5)  # and the engine keeps serving
        engine.submit([again])
        while out.reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert out.tokens == alone(model, ps[0], 5)
    finally:
        engine.stop()


class EvenTokens:
    """A constraint (the duck type of tools/structured.py's Constraint) that allows even tokens
    only, and records the tokens it is told were drawn."""

    def __init__(self):
        self.accepted = []

    def mask(self, logits):  # (1, V)
        odd = torch.arange(logits.shape[-1]) % 2 == 1
        return logits.masked_fill(odd, float("-inf"))

    def accept(self, token):
        self.accepted.append(token)


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 50, "seed": 7}])
def test_a_constrained_row_beside_free_rows(model, settings):
    """The constraint masks its own row: its tokens keep to it, and it follows each one drawn;
    the free rows batched with it decode exactly as they do alone."""
    free_prompts = prompts(2, seed=5)
    reference = []
    for p in free_prompts:
        engine = Engine(model, max_batch=4)
        seq, out = sequence(p, max_tokens=12, **settings)
        run_until_done(engine, [out], arrivals=[(0, [seq])])
        reference.append(out.tokens)
    assert any(t % 2 for tokens in reference for t in tokens)  # unconstrained, this model writes odd tokens

    engine = Engine(model, max_batch=4)
    constraint = EvenTokens()
    constrained_out = Collect()
    constrained = Sequence(prompts(1, seed=6)[0], Sampling(max_new_tokens=12, **settings), constrained_out, constraint)
    free = [sequence(p, max_tokens=12, **settings) for p in free_prompts]
    run_until_done(engine, [constrained_out] + [o for _, o in free],
                   arrivals=[(0, [free[0][0]]), (1, [constrained]), (2, [free[1][0]])])
    assert constrained_out.tokens and all(t % 2 == 0 for t in constrained_out.tokens)
    assert constraint.accepted == constrained_out.tokens
    assert [o.tokens for _, o in free] == reference


def test_int8_greedy_tokens_are_the_same_alone_and_beside_others():
    """The int8 model (model.quantize) under continuous batching: each request's greedy tokens are
    the ones the int8 model gives it alone. (That a row's logits do not depend on its neighbours
    at all is tests/model/test_quantize.py's; greedy tokens of this tiny model would survive a
    batch-wide scale too: this one checks that the engine runs the int8 model, chunked prefill and
    rows at different lengths included.)"""

    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2-tiny", vocab_size=257, context_length=64)
    int8 = prepare_for_decoding(GPT(config), quantize="int8")
    engine = Engine(int8, max_batch=4, max_queue=16, prefill_chunk=16)
    budgets = [20, 3, 11, 24, 7, 20, 30, 1]
    seqs, outs = zip(*(sequence(p, max_tokens=m) for p, m in zip(prompts(8), budgets)))
    run_until_done(engine, outs, arrivals=[(0, list(seqs[:3])), (2, list(seqs[3:6])), (9, list(seqs[6:]))])
    for p, m, out in zip(prompts(8), budgets, outs):
        assert out.reason == "length" and out.tokens == alone(int8, p, m)
