"""The compiled decoding kernels (model/decode_kernels.c). int8: the same numbers as Int8Linear's
torch path, bit for bit, for every row count, width (tails included), bias and thread count, NaN
rows included. float32 linear and attention: torch's numbers to float rounding, and each row's
numbers its own (the same bits alone, among other rows, on any number of threads). Built once into
the cache; a machine without a compiler falls back to torch with one warning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptforge.model import native
from gptforge.model.cpu_decoding import FLOAT_ROWS, float_kernels, linear
from gptforge.model.quantize import Int8Linear, native_kernel

needs_kernel = pytest.mark.skipif(native_kernel() is None, reason="no C compiler here to build the kernels")


@needs_kernel
@pytest.mark.parametrize("K, N", [(768, 2304), (64, 64), (100, 37), (130, 257)])  # 100, 130: not multiples of 64
@pytest.mark.parametrize("bias, column_major", [(True, False), (False, True)])  # column-major: as decoding stores them
def test_the_kernel_computes_what_torch_computes(K, N, bias, column_major):
    g = torch.Generator().manual_seed(K + N)
    weight = torch.randn(K, N, generator=g).t() if column_major else torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    layer = Int8Linear(weight * 0.02, b).eval()
    plain = Int8Linear(weight * 0.02, b, panels=False).eval()  # as where no kernel built: (N, K) for _int_mm
    assert layer.panels is not None and layer.qweight is None and torch.equal(layer.int8_weight(), plain.qweight)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            for M in (1, 2, 5, 8, 9, 16, 37):
                x = torch.randn(M, K, generator=g) * 3
                x[0, :7] = 0.0  # exact zeros, and a row of them: the scale's floor
                if M > 1:
                    x[1] = 0.0
                if M > 2:
                    x[2, 5] = float("nan")  # a broken row: NaN everywhere in it, as in torch; the others untouched
                if M > 5:
                    x[5, K - 1] = float("inf")  # inf / inf in the last column's quantization: NaN, as in torch
                with torch.no_grad():
                    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0, equal_nan=True)
                    broken = [i in (2, 5) for i in range(M)]  # each broken row NaN throughout, the others none
                    assert layer(x).isnan().all(1).tolist() == broken == layer(x).isnan().any(1).tolist()
    finally:
        torch.set_num_threads(threads)


def test_the_build_is_cached_and_a_missing_compiler_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if native_kernel() is not None:
        native.library.cache_clear()
        try:
            assert native.library() is not None
            built = list((tmp_path / "gptforge" / "kernels").glob("decode_kernels-*.so"))
            assert len(built) == 1
            stamp = built[0].stat().st_mtime_ns
            native.library.cache_clear()
            assert native.library() is not None and built[0].stat().st_mtime_ns == stamp  # not rebuilt
        finally:
            native.library.cache_clear()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="did not build"):
            assert native.library() is None
        monkeypatch.setenv("GPTFORGE_NATIVE", "0")
        native.library.cache_clear()
        assert native.library() is None
    finally:
        native.library.cache_clear()


def float_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, threads: int) -> torch.Tensor:
    y = torch.empty(x.shape[0], weight.shape[0])
    float_kernels().float_linear(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(),
                                 None if bias is None else bias.data_ptr(), weight.shape[0], y.data_ptr(), threads)
    return y


@needs_kernel
@pytest.mark.parametrize("K, N", [(768, 300), (64, 64), (100, 37), (130, 257)])  # 100, 130: not multiples of 16
@pytest.mark.parametrize("bias", [True, False])
def test_the_float_kernel_is_torch_to_rounding_and_each_row_is_its_own(K, N, bias):
    g = torch.Generator().manual_seed(K * N)
    weight, b = torch.randn(N, K, generator=g) * 0.05, torch.randn(N, generator=g) if bias else None
    x = torch.randn(16, K, generator=g)
    alone = torch.cat([float_linear(x[m:m + 1], weight, b, 1) for m in range(16)])
    torch.testing.assert_close(alone, torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    for threads in (1, 2, 3):
        for M in (1, 2, 5, 8, 9, 16):  # 9 and 16: more rows than one pass holds
            assert torch.equal(float_linear(x[:M], weight, b, threads), alone[:M])


@needs_kernel
def test_linear_sends_decoding_rows_of_a_large_weight_to_the_float_kernel():
    g = torch.Generator().manual_seed(1)
    weight, b = torch.randn(512, 384, generator=g), torch.randn(512, generator=g)  # 2^17 + 2^16 elements
    x = torch.randn(FLOAT_ROWS, 1, 384, generator=g)
    with torch.no_grad():
        got = linear(x, weight, b)
    assert torch.equal(got.view(FLOAT_ROWS, 512), float_linear(x.view(FLOAT_ROWS, 384), weight, b, 1))
    with torch.enable_grad():  # training is torch's
        assert torch.equal(linear(x, weight, b), torch.nn.functional.linear(x, weight, b))


@needs_kernel
@pytest.mark.parametrize("K, N", [(256, 2000), (100, 37)])  # N: a last panel of 0 and of 5 rows; K: any
def test_the_float_kernel_on_panels_gives_each_row_its_own_numbers(K, N):
    """linear() with pack_for_batches' panels: F.linear's numbers to rounding, and a row's bits the
    same alone, among 1-16 other rows and on 1-3 threads."""
    from gptforge.model.cpu_decoding import float_panels

    g = torch.Generator().manual_seed(K + N)
    weight, bias = torch.randn(N, K, generator=g) * 0.05, torch.randn(N, generator=g)
    panels = float_panels(weight)
    x = torch.randn(16, K, generator=g)
    with torch.no_grad():
        alone = torch.cat([linear(x[m:m + 1], weight, bias, panels) for m in range(16)])
        torch.testing.assert_close(alone, torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
        threads = torch.get_num_threads()
        try:
            for t in (1, 3):
                torch.set_num_threads(t)
                for M in (2, 5, 8, 9, 16):
                    assert torch.equal(linear(x[:M], weight, bias, panels), alone[:M])
        finally:
            torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("head_dim,modern", [(64, False), (24, False), (24, True)])  # 24: lanes and a tail
def test_attend_last_stores_the_new_keys_and_attends_over_each_rows_own(head_dim, modern):
    """From each row's qkv projection: (modern: QK-norm and rotary at the row's position,) the key
    and value stored at the row's length, attention over the row's own keys as SDPA computes it."""
    from gptforge.config import GPTConfig
    from gptforge.model.gpt import KVCache
    from gptforge.model.layers import apply_rotary, rotary_angles

    from gptforge.model.layers import RMSNorm

    # 4 heads: a row alone on 2 threads has its heads split in two groups, the batch of 4 rows not
    config = GPTConfig(vocab_size=64, context_length=40, emb_dim=4 * head_dim, n_heads=4, n_layers=1)
    g = torch.Generator().manual_seed(head_dim)
    cache = KVCache(config, 4)
    cache.keys[0].normal_(generator=g), cache.values[0].normal_(generator=g)  # stale numbers past each row's end too
    lengths = [0, 3, 39, 9]
    qkv = torch.randn(4, 1, 3 * config.emb_dim, generator=g)
    q_norm, k_norm = (RMSNorm(head_dim, eps=1e-5) for _ in range(2))
    for norm in (q_norm, k_norm):
        norm.weight.data = torch.rand(head_dim, generator=g) + 0.5
    norms, rope = ((q_norm, k_norm), rotary_angles(torch.tensor(lengths)[:, None], head_dim, 10000.0)) if modern \
        else ((None, None), None)
    q, k, v = (t.transpose(1, 2) for t in qkv.view(4, 1, 12, head_dim).split(4, dim=2))  # (B, nh, 1, hs)
    if modern:  # (torch's own RMSNorm as the reference)
        q, k = (apply_rotary(F.rms_norm(t, (head_dim,), n.weight, 1e-5), *rope) for t, n in ((q, q_norm), (k, k_norm)))
    keys_before = cache.keys[0].clone()
    with torch.no_grad():
        y = cache.rows(0, 4, lengths).attend_last(0, qkv, float_kernels(), *norms, rope)  # (B, 1, C)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(cache.keys[0][b, :, n], k[b, :, 0], rtol=1e-5, atol=1e-6)
        assert torch.equal(cache.values[0][b, :, n], v[b, :, 0])
        assert torch.equal(cache.keys[0][b, :, n + 1:], keys_before[b, :, n + 1:])  # nothing else written
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[b:b + 1], cache.keys[0][b:b + 1, :, :n + 1], cache.values[0][b:b + 1, :, :n + 1])  # (1, nh, 1, hs)
        torch.testing.assert_close(y[b:b + 1], expected.transpose(1, 2).reshape(1, 1, -1), rtol=1e-5, atol=1e-5)
        row_rope = None if rope is None else tuple(t[b:b + 1] for t in rope)
        with torch.no_grad():
            alone = cache.rows(b, b + 1, [n]).attend_last(0, qkv[b:b + 1], float_kernels(), *norms, row_rope)
        assert torch.equal(alone, y[b:b + 1])  # the same bits as among the other rows
    threads = torch.get_num_threads()
    try:
        for t in (1, 3):  # and on any number of threads
            torch.set_num_threads(t)
            with torch.no_grad():
                assert torch.equal(cache.rows(0, 4, lengths).attend_last(0, qkv, float_kernels(), *norms, rope), y)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("overrides", [{"arch": "gpt2"}, {"arch": "modern"},
                                       {"arch": "modern", "mlp": "relu2", "norm": "layernorm", "bias": True}])
@pytest.mark.parametrize("layout", ["rows", "panels", "int8"])  # the weights as trained, pack_for_batches', int8
def test_decode_block_is_the_blocks_step_in_one_call_and_each_row_is_its_own(overrides, layout, monkeypatch):
    """A block's decoding step in one decode_block call computes what its modules compute (norms,
    linear layers, attend_last, activation, residual sums) to float rounding, stores the same keys
    and values, and gives each row the same bits alone, among other rows and on any thread count."""
    from gptforge.config import GPTConfig
    from gptforge.model import GPT, pack_for_batches, prepare_for_decoding
    from gptforge.model.gpt import Block
    from gptforge.model.layers import rotary_angles

    # head size 24: 16 lanes and a tail; a row alone on 2 threads splits its heads in two groups;
    # 384 wide: every weight at least 2^17 elements, so pack_for_batches packs them all
    config = GPTConfig(vocab_size=64, context_length=40, emb_dim=384, n_heads=16, n_layers=1, **overrides)
    g = torch.Generator().manual_seed(len(str(overrides)) + len(layout))
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # gains near 1, every other weight and bias random
            p.normal_(1.0 if p.dim() == 1 and "bias" not in name else 0.0, 0.3, generator=g)
    prepare_for_decoding(model, quantize="int8" if layout == "int8" else None)
    if layout == "panels":
        pack_for_batches(model)
    # 10 rows: more than one chunk of 8 (the row-major kernel takes any number of them too)
    block, lengths = model.blocks[0], [0, 3, 38, 9, 1, 20, 7, 30, 12, 5]
    B, every = len(lengths), list(range(len(lengths)))
    kind = {"rows": native.LINEAR_ROWS, "panels": native.LINEAR_PANELS, "int8": native.LINEAR_INT8}[layout]
    weights = block.decoding_weights()
    assert [w.kind for w in (weights.qkv, weights.out, weights.fc, weights.down)] == [kind] * 4
    x = torch.randn(B, 1, 384, generator=g) * 2
    positions = torch.tensor(lengths)[:, None]
    rope = rotary_angles(positions, 24, config.rope_theta) if config.positions == "rope" else None
    stale = [torch.randn(B, 16, 40, 24, generator=g) for _ in range(2)]

    def step(rows: list[int], fused: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's step for these rows, from a cache holding `stale` (output, keys, values)."""
        cache = model.new_cache(B)
        cache.keys[0].copy_(stale[0]), cache.values[0].copy_(stale[1])
        part = cache.rows(rows[0], rows[-1] + 1, [lengths[b] for b in rows])
        with torch.no_grad():
            y = block(x[rows], positions[rows], None if rope is None else tuple(t[rows] for t in rope), part, 0)
        assert (cache.plans[0][-1] is not None) == fused  # (the step took decode_block, or the modules)
        return y, cache.keys[0][rows], cache.values[0][rows]

    fused = step(every)
    with monkeypatch.context() as m:
        m.setattr(Block, "decoding_weights", lambda self: None)  # the modules, one call each
        by_modules = step(every, fused=False)
    scale = by_modules[0].abs().max().item()  # (outputs up to ~10: float rounding through two residual sums)
    torch.testing.assert_close(fused[0], by_modules[0], rtol=1e-5, atol=1e-5 * scale)
    for got, expected, before in zip(fused[1:], by_modules[1:], stale):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # the same keys and values stored,
        for b, n in enumerate(lengths):  # at each row's length and nowhere else
            assert not torch.equal(got[b, :, n], before[b, :, n])
            assert torch.equal(torch.cat((got[b, :, :n], got[b, :, n + 1:]), 1), torch.cat((before[b, :, :n], before[b, :, n + 1:]), 1))
    for b in every:
        assert torch.equal(step([b])[0], fused[0][b:b + 1])  # a row alone: the same bits
    threads = torch.get_num_threads()
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            assert torch.equal(step(every)[0], fused[0])
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("kind", ["gelu", "swiglu", "relu2"])
def test_the_activation_kernel_is_torchs_formula_to_rounding(kind):
    """decode_block's MLP activation (`activate`, called alone) against torch's formula: 16
    elements at a time with a masked tail (70 columns; SwiGLU's 35), exponentials far out in both
    tails, infinities, and a NaN that stays a NaN."""
    h = torch.randn(5, 70, generator=torch.Generator().manual_seed(0)) * 4
    h[0, :6] = torch.tensor([0.0, -0.0, 30.0, -30.0, 95.0, -95.0])
    h[2, :4] = torch.tensor([1e38, -1e38, float("inf"), float("-inf")])
    h[1, 3] = float("nan")
    gate, up = h.chunk(2, dim=-1)
    expected = {"gelu": F.gelu(h, approximate="tanh"), "swiglu": F.silu(gate) * up, "relu2": F.relu(h).square()}[kind]
    got = torch.empty_like(expected)
    assert float_kernels().activate(native.ACTIVATIONS[kind], h.data_ptr(), 5, 70, got.data_ptr(), 2) == 0
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=1e-6, equal_nan=True)  # inf and NaN where torch's are
    assert got[1].isnan().tolist() == [i == 3 for i in range(got.shape[1])]  # that column alone
