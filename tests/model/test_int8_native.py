"""The compiled int8 kernel (model/int8_linear.c): the same numbers as Int8Linear's torch path, bit
for bit, for every row count, width (tails included), bias and thread count, NaN rows included; built once into the
cache; and a machine without a compiler falls back to torch with one warning."""

from __future__ import annotations

import pytest
import torch

from gptforge.model import int8_native
from gptforge.model.quantize import NATIVE_ROWS, Int8Linear, native_kernel

needs_kernel = pytest.mark.skipif(native_kernel() is None, reason="no C compiler here to build the int8 kernel")


@needs_kernel
@pytest.mark.parametrize("K, N", [(768, 2304), (64, 64), (100, 37), (130, 257)])  # 100, 130: not multiples of 64
@pytest.mark.parametrize("bias, column_major", [(True, False), (False, True)])  # column-major: as decoding stores them
def test_the_kernel_computes_what_torch_computes(K, N, bias, column_major):
    g = torch.Generator().manual_seed(K + N)
    weight = torch.randn(K, N, generator=g).t() if column_major else torch.randn(N, K, generator=g)
    layer = Int8Linear(weight * 0.02, torch.randn(N, generator=g) if bias else None).eval()
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            for M in (1, 2, 5, 8, 9, NATIVE_ROWS):
                x = torch.randn(M, K, generator=g) * 3
                x[0, :7] = 0.0  # exact zeros, and a row of them: the scale's floor
                if M > 1:
                    x[1] = 0.0
                if M > 2:
                    x[2, 5] = float("nan")  # a broken row: NaN everywhere in it, as in torch; the others untouched
                with torch.no_grad():
                    torch.testing.assert_close(layer(x), layer.forward_torch(x), rtol=0, atol=0, equal_nan=True)
                    if M > 2:
                        assert layer(x)[2].isnan().all() and not layer(x)[3:].isnan().any()
    finally:
        torch.set_num_threads(threads)


def test_the_build_is_cached_and_a_missing_compiler_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if native_kernel() is not None:
        int8_native.kernel.cache_clear()
        try:
            assert int8_native.kernel() is not None
            built = list((tmp_path / "gptforge" / "kernels").glob("int8_linear-*.so"))
            assert len(built) == 1
            stamp = built[0].stat().st_mtime_ns
            int8_native.kernel.cache_clear()
            assert int8_native.kernel() is not None and built[0].stat().st_mtime_ns == stamp  # not rebuilt
        finally:
            int8_native.kernel.cache_clear()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    int8_native.kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="did not build"):
            assert int8_native.kernel() is None
        monkeypatch.setenv("GPTFORGE_NATIVE", "0")
        int8_native.kernel.cache_clear()
        assert int8_native.kernel() is None
    finally:
        int8_native.kernel.cache_clear()
