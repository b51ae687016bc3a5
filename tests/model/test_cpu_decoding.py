"""The CPU decoding fast path: the split matrix-vector product and prepare_for_decoding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gptforge import load_any
from gptforge.generate import generate
from gptforge.model import prepare_for_decoding
from gptforge.model.native import LINEAR_ROWS
from gptforge.weights.checkpoint import save_checkpoint

from helpers import random_gpt


def without_float_kernels(monkeypatch):
    """Decode as on a machine without a C compiler: torch's split product and SDPA."""
    from gptforge.model import cpu_decoding

    monkeypatch.setattr(cpu_decoding, "float_kernels", lambda: None)


def test_decoding_layout_changes_strides_only(tmp_path, monkeypatch):
    # emb_dim 256: the MLP weights (1024 x 256) are big enough for the threads-split product
    without_float_kernels(monkeypatch)
    model = random_gpt(4, vocab_size=300, emb_dim=256).train()
    prompt = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # as on the 2-core CI machine
    split_products = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: split_products.append(b.shape) or real_bmm(a, b))
    with torch.no_grad():
        logits = model.eval()(prompt)
    tokens = generate(model, prompt, 20, temperature=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert prepare_for_decoding(model.train()) is model and not model.training
    fc = model.blocks[0].mlp.fc.weight
    assert fc.shape == state["blocks.0.mlp.fc.weight"].shape and fc.stride() == (1, fc.shape[0])
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), logits, atol=1e-5, rtol=0)
    assert not split_products  # the model as trained never takes the split path
    assert torch.equal(generate(model, prompt, 20, temperature=0), tokens)
    assert (2, 128, 1024) in split_products  # ... the prepared one does, for one-token steps

    save_checkpoint(tmp_path / "ckpt", model)  # non-contiguous weights still save
    assert all(torch.equal(v, state[k]) for k, v in load_any(tmp_path / "ckpt").state_dict().items())


def test_with_the_float_kernels_decoding_steps_take_them_on_the_weights_as_trained(monkeypatch):
    from gptforge.model import cpu_decoding

    lib = cpu_decoding.float_kernels()
    if lib is None:
        pytest.skip("no C compiler here to build the kernels")
    calls = []

    class Spy:  # the kernels, counting their calls
        def float_linear(self, *args):
            calls.append(("linear", args[1], args[2], args[5]))  # M, K, N
            return lib.float_linear(*args)

        def decode_block(self, weights, *args):
            calls.append(("block", args[1], tuple((w.kind, w.w) for w in (weights.qkv, weights.out, weights.fc, weights.down))))
            return lib.decode_block(weights, *args)

    model = random_gpt(4, vocab_size=300, emb_dim=256)
    prompt = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(0))
    reference = generate(model, prompt, 8, temperature=0)  # 6 + 8 tokens: within the 16-token context
    strides = {name: p.stride() for name, p in model.named_parameters()}
    prepare_for_decoding(model)
    assert {name: p.stride() for name, p in model.named_parameters()} == strides  # row-major, as trained
    monkeypatch.setattr(cpu_decoding, "float_kernels", lambda: Spy())
    tokens = generate(model, prompt, 8, temperature=0)
    assert torch.equal(tokens, reference)
    # The 6-token prompt: each block's qkv and MLP matmuls (the weights of 2^17 elements or more)
    # on the kernel, attention in SDPA (causal over 6 queries); then the 7 one-token steps, each
    # block in one decode_block call reading all four weights where they are, row-major
    layers = model.config.n_layers
    for shape in ((256, 768), (256, 1024), (1024, 256)):  # K, N
        assert calls.count(("linear", 6, *shape)) == layers
    as_trained = [tuple((LINEAR_ROWS, m.weight.data_ptr()) for m in (b.attn.qkv, b.attn.out_proj, b.mlp.fc, b.mlp.out_proj))
                  for b in model.blocks]
    blocks = [call for call in calls if call[0] == "block"]
    assert blocks == [("block", 1, weights) for _ in range(7) for weights in as_trained]
    assert len(calls) == 10 * layers  # nothing else (the LM head's 300 x 256 is below 2^17: F.linear)


def test_bfloat16_decoding_stays_close_to_float32():
    model = random_gpt(5)
    prompt = torch.randint(0, 257, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = torch.log_softmax(model.eval()(prompt), -1)
        prepare_for_decoding(model, torch.bfloat16)
        assert model.new_cache(1).keys[0].dtype == torch.bfloat16
        low = torch.log_softmax(model(prompt).float(), -1)
    assert (low - reference).abs().max() < 0.05
    assert generate(model, prompt, 8, temperature=0.7, top_k=20).shape == (1, 13)


@pytest.mark.parametrize("rows", [1, 3, 4, 5])
@pytest.mark.parametrize("with_bias", [True, False])
def test_decoding_linear_splits_k_and_matches_f_linear(rows, with_bias, monkeypatch):
    from gptforge.model.cpu_decoding import linear

    without_float_kernels(monkeypatch)
    torch.manual_seed(0)
    weight = torch.randn(2048, 64).t().contiguous().t()  # (out, in), stored column-major
    bias = torch.randn(2048) if with_bias else None
    x = torch.randn(rows, 1, 64)
    expected = torch.nn.functional.linear(x, weight, bias)
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(a[1].shape) or real_bmm(*a))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    with torch.no_grad():
        out = linear(x, weight, bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.shape == (rows, 1, 2048)
    # the split path for up to 4 rows: K = 64 in 4 slices of 16; more rows are a plain matmul
    assert calls == ([(4, 16, 2048)] if rows <= 4 else [])
    with torch.no_grad():  # a row-major weight (as trained), or one that fits the caches: F.linear
        torch.testing.assert_close(linear(x, weight.contiguous(), bias), expected, atol=1e-5, rtol=1e-5)
        small = weight[:1024]
        torch.testing.assert_close(linear(x, small), torch.nn.functional.linear(x, small), atol=1e-5, rtol=1e-5)
    assert len(calls) <= 1


def test_packed_panels_serve_every_row_count_with_each_rows_own_numbers(monkeypatch):
    """pack_for_batches where the kernels built: each large weight (the LM head's real rows
    included) gets a copy as panels in huge pages, which every row count decoded or prefilled then
    takes, with the plain model's logits."""
    from gptforge.model import cpu_decoding, pack_for_batches

    lib = cpu_decoding.float_kernels()
    if lib is None:
        pytest.skip("no C compiler here to build the kernels")
    model = prepare_for_decoding(random_gpt(6, vocab_size=2000, emb_dim=256))
    idx = torch.randint(0, 2000, (5, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(idx)
    pack_for_batches(model)
    head, fc = model.lm_head.packed, model.blocks[0].mlp.fc.packed
    assert not head.is_mkldnn and head.shape == (125, 256, 16) and fc.shape == (1024 // 16, 256, 16)
    assert torch.equal(head[3, :, 5], model.lm_head.weight[3 * 16 + 5])  # row 53, column by column
    assert model.blocks[0].attn.out_proj.packed is None  # 256 x 256: below 2^17 elements, left alone
    calls = []

    class Spy:
        def __getattr__(self, name):
            function = getattr(lib, name)
            return (lambda *a: calls.append(a[1]) or function(*a)) if name == "float_panel_linear" else function

    monkeypatch.setattr(cpu_decoding, "float_kernels", lambda: Spy())
    with torch.no_grad():
        batch = model(idx)
        assert calls and set(calls) == {5 * 7}  # the whole batch's rows, in every large linear
        torch.testing.assert_close(batch, plain, atol=1e-4, rtol=1e-4)
        model(idx[2:3, :1])
        assert calls[-1] == 1  # one row too (its numbers its own: tests/model/test_native.py)
    n = len(calls)
    with torch.enable_grad():  # training never takes it
        model(idx, targets=idx).backward()
    assert len(calls) == n
    if Path("/proc/self/smaps").exists():
        assert "hg" in _mapping_flags(head.data_ptr())


def test_packed_weights_serve_batches_with_the_same_logits(monkeypatch):
    """pack_for_batches where no kernel built: two rows or more go through oneDNN's blocked copy of
    each large weight (the LM head included) with the logits of the plain model; one row keeps the
    split product."""
    from gptforge.model import pack_for_batches

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    without_float_kernels(monkeypatch)
    model = prepare_for_decoding(random_gpt(6, vocab_size=2048, emb_dim=256))
    idx = torch.randint(0, 2048, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, one_row = model(idx), model(idx[:1, :1])
    pack_for_batches(model)
    assert model.blocks[0].mlp.fc.packed is not None and model.lm_head.packed is not None
    assert model.blocks[0].attn.out_proj.packed is None  # 256 x 256: below 2^17 elements, left alone
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    with torch.no_grad():
        torch.ops.mkldnn._linear_pointwise = lambda *a: calls.append(a[0].shape) or real(*a)
        try:
            packed = model(idx)
            n = len(calls)
            single = model(idx[:1, :1])
        finally:
            torch.ops.mkldnn._linear_pointwise = real
    torch.testing.assert_close(packed, plain, atol=1e-4, rtol=1e-4)
    assert n == 2 * 3 + 1  # per block: qkv, fc, mlp out; and the head (the attention out is too small)
    assert len(calls) == n and torch.equal(single, one_row)  # one row: never the packed path
    with torch.enable_grad():  # training never takes it
        model(idx, targets=idx).backward()
    assert len(calls) == n


def _batch_tokens(model, idx):
    return generate(model, idx, 12, temperature=0)


@pytest.mark.parametrize("kernels", [True, False], ids=["panels", "onednn"])
def test_packed_and_plain_paths_give_the_same_greedy_tokens(kernels, monkeypatch):
    from gptforge.model import pack_for_batches
    from gptforge.model.cpu_decoding import float_kernels, onednn_linear_works

    if kernels and float_kernels() is None:
        pytest.skip("no C compiler here to build the kernels")
    if not kernels:
        without_float_kernels(monkeypatch)
        if not onednn_linear_works():
            pytest.skip("this torch build has no working oneDNN linear ops")
    model = prepare_for_decoding(random_gpt(7, vocab_size=2048, emb_dim=256))
    idx = torch.randint(0, 2048, (3, 5), generator=torch.Generator().manual_seed(1))
    plain = _batch_tokens(model, idx)
    pack_for_batches(model)
    assert model.lm_head.packed is not None
    assert torch.equal(_batch_tokens(model, idx), plain)


class _Broken:
    """A torch.ops.mkldnn whose ops exist but fail, as a release that changed their signature."""

    def _reorder_linear_weight(self, *args):
        raise RuntimeError("unknown overload")

    _linear_pointwise = _reorder_linear_weight


@pytest.mark.parametrize("ops", [type("Gone", (), {})(), _Broken()], ids=["ops-gone", "ops-fail"])
def test_without_the_private_onednn_ops_decoding_falls_back_to_the_same_tokens(ops, monkeypatch):
    """pack_for_batches must degrade speed, not correctness, when a torch release renames the ops."""
    from gptforge.model import cpu_decoding, pack_for_batches

    without_float_kernels(monkeypatch)  # (with them, pack_for_batches needs no oneDNN)
    model = prepare_for_decoding(random_gpt(7, vocab_size=2048, emb_dim=256))
    idx = torch.randint(0, 2048, (3, 5), generator=torch.Generator().manual_seed(1))
    expected = _batch_tokens(model, idx)
    monkeypatch.setattr(torch.ops, "mkldnn", ops)
    _forget_the_probe(cpu_decoding)
    assert pack_for_batches(model) is model
    assert getattr(model.lm_head, "packed", None) is None and model.blocks[0].mlp.fc.packed is None
    assert torch.equal(_batch_tokens(model, idx), expected)
    monkeypatch.undo()
    _forget_the_probe(cpu_decoding)


def _forget_the_probe(cpu_decoding):
    """Make the next pack_for_batches probe the ops again (the probe's answer is cached)."""
    getattr(getattr(cpu_decoding, "onednn_linear_works", None), "cache_clear", lambda: None)()


def _mapping(address: int) -> dict[str, list[str]]:
    """The fields of this process's memory mapping holding `address` (Linux's /proc/self/smaps):
    {"Rss:": ["2048", "kB"], "VmFlags:": ["rd", "wr", ...], ...}."""
    fields, inside = {}, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            if inside:
                break
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside:
            fields[head] = line.split()[1:]
    return fields


def _mapping_flags(address: int) -> list[str] | None:
    return _mapping(address).get("VmFlags:")


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_prepared_weights_live_in_memory_advised_for_huge_pages(quantize):
    """hold_in_huge_pages: same values, strides, ties and tokens; the weights' new memory is
    marked for transparent huge pages ('hg'), which torch's own allocations are not."""
    from pathlib import Path

    if not Path("/proc/self/smaps").exists():
        pytest.skip("no /proc/self/smaps: not Linux")
    model = random_gpt(6, vocab_size=2048, emb_dim=256).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 2048, (2, 5), generator=torch.Generator().manual_seed(0))
    # (torch's own memory may already be marked: numpy advises huge pages for its large arrays,
    # and malloc hands that memory out again, so what is checked is that the weights moved there)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    prepare_for_decoding(model, quantize=quantize)
    fc = model.blocks[0].mlp.fc
    weights = [model.tok_emb.weight, (fc.weight if not quantize else fc.qweight if fc.panels is None else fc.panels)]
    if quantize is None:
        assert model.lm_head.weight is model.tok_emb.weight  # still tied
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.tok_emb.weight.data_ptr() != before["tok_emb.weight"]
    for weight in weights:
        assert "hg" in _mapping_flags(weight.data_ptr()), weight.shape
    assert model.blocks[0].ln1.weight.data_ptr() == before["blocks.0.ln1.weight"]  # 1 KB: not worth a move
    fresh = random_gpt(6, vocab_size=2048, emb_dim=256).eval()
    fresh.load_state_dict(state)
    from gptforge.model.quantize import quantize_model

    expected = generate(quantize_model(fresh, quantize), idx, 8, temperature=0)
    assert torch.equal(generate(model, idx, 8, temperature=0), expected)


def test_a_cpu_kv_cache_is_zeroed_memory_in_huge_pages():
    from pathlib import Path

    model = random_gpt(3, vocab_size=300, emb_dim=256)
    config = model.config
    cache = model.new_cache(4)
    shape = (4, config.n_heads, config.context_length, config.head_dim)
    assert len(cache.keys) == len(cache.values) == config.n_layers
    assert all(t.shape == shape and t.dtype == torch.float32 and not t.any() for t in cache.keys + cache.values)
    starts = sorted(t.data_ptr() for t in cache.keys + cache.values)
    assert all(b - a >= math.prod(shape) * 4 for a, b in zip(starts, starts[1:]))  # no two buffers overlap
    if Path("/proc/self/smaps").exists():
        mapping = _mapping(cache.keys[1].data_ptr())
        assert "hg" in mapping["VmFlags:"]
        # every page mapped at allocation (a decoding step never waits for one): resident already
        assert int(mapping["Rss:"][0]) * 1024 >= 2 * config.n_layers * math.prod(shape) * 4
