"""Token shards read back as one stream."""

from __future__ import annotations

import numpy as np
import pytest

from gptforge.data.shards import ShardedTokens, open_tokens

from helpers import shard_files


def test_sharded_tokens_index_like_one_array(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=1000).astype(np.uint16)
    st = shard_files(tmp_path, tokens, [1, 299, 1, 0, 400, 299])
    assert isinstance(st, ShardedTokens) and len(st) == 1000 and st.shape == (1000,) and st.ndim == 1
    assert st.dtype == np.uint16 and len(st.arrays) == 5  # the empty shard is dropped
    for a, b in [(0, 1000), (0, 1), (299, 302), (1, 999), (500, 500), (-5, None), (None, 10), (700, 2000)]:
        assert np.array_equal(st[a:b], tokens[a:b]), (a, b)
    assert np.array_equal(st[3:900:7], tokens[3:900:7])
    index = np.random.default_rng(1).integers(0, 1000, size=(8, 33))
    assert st[index].shape == (8, 33) and np.array_equal(st[index], tokens[index])
    assert st[5] == tokens[5] and st[-1] == tokens[-1] and st[300] == tokens[300]
    assert np.array_equal(np.asarray(st), tokens) and st.astype(np.int64).dtype == np.int64
    assert np.array_equal(st.astype(np.int64), tokens.astype(np.int64))
    with pytest.raises(IndexError):
        st[1000]
    with pytest.raises(IndexError):
        st[np.array([[0, 1000]])]
    one = open_tokens([tmp_path / "s4.bin"], [400])
    assert isinstance(one, np.memmap)  # a single shard is a plain memmap
