"""Fine-tuning batches: padded to the longest example, masked, reproducible, split across ranks."""

import numpy as np
import pytest
import torch

from gptforge.data.example_batches import GROUP, IGNORE, ExampleBatches, fit_to_context


def examples(n=300, seed=0):
    """Examples of 3 to 60 tokens; the first third of each is prompt (no loss)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 61))
        ids = rng.integers(0, 1000, length)
        loss = np.arange(length) >= length // 3
        out.append((ids, loss))
    return out


def test_a_batch_is_padded_to_its_longest_example_and_masked():
    ex = [(np.array([5, 6, 7, 8]), np.array([False, False, True, True])),
          (np.array([9, 10]), np.array([False, True]))]
    inputs, targets, real = ExampleBatches(ex, 2, pad_id=99).collate(np.array([0, 1]))
    assert inputs.tolist() == [[5, 6, 7], [9, 99, 99]]
    assert targets.tolist() == [[IGNORE, 7, 8], [10, IGNORE, IGNORE]]
    assert real == 4


def test_every_example_once_per_epoch_reproducibly_and_resumable():
    ex = examples()
    loader = ExampleBatches(ex, 8, seed=3)
    plan = loader.plan(0)
    seen = np.concatenate(plan)
    assert len(plan) == loader.num_batches == 300 // 8
    assert len(set(seen.tolist())) == len(seen) == 8 * (300 // 8)
    assert all(len(b) == 8 for b in plan)
    assert all(np.array_equal(a, b) for a, b in zip(plan, ExampleBatches(ex, 8, seed=3).plan(0)))
    assert not all(np.array_equal(a, b) for a, b in zip(plan, loader.plan(1)))
    full = list(loader.batches(0))
    resumed = list(loader.batches(0, start=5))
    assert len(resumed) == len(full) - 5
    for (a, b, n), (c, d, m) in zip(full[5:], resumed):
        assert torch.equal(a, c) and torch.equal(b, d) and n == m


def test_two_ranks_share_out_the_one_process_batches():
    ex = examples()
    one = list(ExampleBatches(ex, 4, seed=1).batches(2))
    r0 = list(ExampleBatches(ex, 4, seed=1, rank=0, world_size=2).batches(2))
    r1 = list(ExampleBatches(ex, 4, seed=1, rank=1, world_size=2).batches(2))
    assert len(r0) == len(r1) == len(one) // 2
    for k in range(len(r0)):
        assert torch.equal(one[2 * k][0], r0[k][0]) and torch.equal(one[2 * k + 1][1], r1[k][1])


def test_grouping_by_length_wastes_far_less_than_random_batches():
    ex = examples(64 * GROUP)
    lengths = np.array([len(ids) for ids, _ in ex])

    def padding(plan):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in plan) / lengths.sum()

    grouped = padding(ExampleBatches(ex, 8, seed=0).plan(0))
    shuffled = padding(np.random.default_rng(0).permutation(len(ex)).reshape(-1, 8))
    assert grouped < 0.05 < 0.4 < shuffled


def test_validation_batches_keep_everything_in_order():
    ex = examples(10)
    plan = ExampleBatches(ex, 4, shuffle=False, drop_last=False).plan(0)
    assert [b.tolist() for b in plan] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert ExampleBatches(ex[:3], 4).num_batches == 0 and ExampleBatches(ex[:3], 4).plan(0) == []


def test_fit_to_context_cuts_and_drops_what_has_nothing_left_to_learn():
    ids, loss = np.arange(10), np.arange(10) >= 6
    cut = fit_to_context(ids, loss, 7)
    assert cut[0].tolist() == list(range(8)) and cut[1].tolist() == [False] * 6 + [True] * 2
    assert fit_to_context(ids, loss, 5) is None  # the answer starts after the context
    same = fit_to_context(ids, loss, 20)
    assert same[0].tolist() == ids.tolist()


@pytest.mark.parametrize("n", [7, 8])
def test_a_short_last_batch_is_dropped_for_training_only(n):
    ex = examples(n)
    assert ExampleBatches(ex, 4).num_batches == n // 4
    assert ExampleBatches(ex, 4, shuffle=False, drop_last=False).num_batches == 2
