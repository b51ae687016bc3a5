"""Fine-tuning batches: whole examples, padded to the longest one in each batch, with the loss
masked where the example says there is nothing to learn.

An example is (ids, loss): its token ids and, for each, whether predicting it is trained (the
assistant's words, yes; the prompt, no). A batch of B examples is (inputs, targets, real):
inputs (B, L) the ids without their last one, padded to the batch's longest L; targets (B, L) the
ids shifted by one, IGNORE (-100, what F.cross_entropy skips) wherever there is no loss or only
padding; real the number of input positions that are not padding (for tokens/s).

Examples of similar length are batched together, to waste little compute on padding: each
epoch the examples are shuffled (from the seed and the epoch alone, so batch k of an epoch can be
rebuilt when resuming), cut into groups of GROUP batches, each group sorted by length and cut
into batches, and the batches shuffled. The batches of an epoch do not depend on the number of
processes: rank r of W takes batches r, r + W, r + 2W, ..., so two processes with batch B see
what one process sees with batch B and two accumulation steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import UserError

IGNORE = -100  # F.cross_entropy's default ignore_index
GROUP = 32  # batches per length-sorted group


def fit_to_context(ids: np.ndarray, loss: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray] | None:
    """An example cut to context_length + 1 tokens (inputs plus the last target), or None when
    the cut leaves nothing to learn."""
    ids, loss = ids[:context_length + 1], loss[:context_length + 1]
    return (ids, loss) if loss[1:].any() else None


def pad_examples(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(inputs, targets, real) of (ids, loss) examples, padded to the longest (see above)."""
    L = max(len(ids) for ids, _ in rows) - 1
    inputs = torch.full((len(rows), L), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), L), IGNORE, dtype=torch.long)
    for j, (ids, loss) in enumerate(rows):
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        inputs[j, :len(t) - 1] = t[:-1]
        targets[j, :len(t) - 1] = torch.where(torch.from_numpy(np.asarray(loss[1:], dtype=bool)), t[1:], IGNORE)
    return inputs, targets, sum(len(ids) - 1 for ids, _ in rows)


class ExampleBatches:
    """The batches of a list of (ids, loss) examples, reproducible and resumable by index."""

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1,
                 pad_id: int = 0):
        self.examples, self.batch_size, self.seed, self.shuffle = examples, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size, self.pad_id = drop_last, rank, world_size, pad_id
        self.lengths = np.array([self.length(e) for e in examples])
        n_batches = len(examples) // batch_size if drop_last else -(-len(examples) // batch_size)
        self.num_batches = n_batches // world_size  # per rank

    def steps_per_epoch(self, grad_accum: int, world_size: int = 1) -> int:
        """Optimizer steps of grad_accum batches per epoch; UserError when there is not one."""
        if self.num_batches < grad_accum:
            raise UserError(f"{len(self.examples)} training example(s) cannot fill one step of {grad_accum} x "
                            f"{self.batch_size} per process (x {world_size} processes); lower --batch-size")
        return self.num_batches // grad_accum

    @staticmethod
    def length(example) -> int:
        """What batches are sorted by (an example's token count)."""
        return len(example[0])

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Every batch of the epoch (all ranks'), as arrays of example indices."""
        B, n = self.batch_size, len(self.examples)
        if not self.shuffle:
            return [np.arange(i, min(i + B, n)) for i in range(0, n, B) if i + B <= n or not self.drop_last]
        rng = np.random.default_rng([self.seed, epoch])
        order = self.draw(rng)
        batches = []
        for g in range(0, n, B * GROUP):
            group = order[g:g + B * GROUP]
            group = group[np.argsort(self.lengths[group], kind="stable")]
            batches += [group[i:i + B] for i in range(0, len(group), B)]
        if self.drop_last and batches and len(batches[-1]) < B:
            batches.pop()
        return [batches[i] for i in rng.permutation(len(batches))]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The example indices of a shuffled epoch, before grouping by length: a permutation."""
        return rng.permutation(len(self.examples))

    def collate(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(inputs, targets, real) of the examples `indices`, padded to the longest (see above)."""
        return pad_examples([self.examples[i] for i in indices], self.pad_id)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """This rank's batches of `epoch`, from its batch `start` on."""
        plan = self.plan(epoch)
        for i in range(start, self.num_batches):
            yield self.collate(plan[i * self.world_size + self.rank])


class PairTargets:
    """A preference batch's targets: (2B, L) ids, IGNORE off the answers (the B chosen answers, then
    the B rejected ones), and the reference model's (2B,) log-probabilities of those answers when
    they were computed beforehand (None: the step computes them). `.to` moves both, as the
    training step moves a batch's targets."""

    def __init__(self, ids: torch.Tensor, reference: torch.Tensor | None):
        self.ids, self.reference = ids, reference

    def to(self, device, non_blocking: bool = False) -> "PairTargets":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PairTargets(move(self.ids), move(self.reference))


class PairBatches(ExampleBatches):
    """Batches of preference pairs ((chosen ids, loss), (rejected ids, loss)), each batch of B pairs
    one (inputs, PairTargets, real) of 2B rows: chosen first, then rejected, padded together.
    `reference`: the (N, 2) reference log-probabilities of every pair (chosen, rejected), or None."""

    def __init__(self, pairs: list, batch_size: int, reference: torch.Tensor | None = None, **kwargs):
        super().__init__(pairs, batch_size, **kwargs)
        self.reference = reference

    @staticmethod
    def length(example) -> int:
        return max(len(example[0][0]), len(example[1][0]))

    def collate(self, indices: np.ndarray) -> tuple[torch.Tensor, PairTargets, int]:
        rows = [self.examples[i][0] for i in indices] + [self.examples[i][1] for i in indices]
        inputs, targets, real = pad_examples(rows, self.pad_id)
        reference = None
        if self.reference is not None:
            picked = self.reference[torch.from_numpy(np.asarray(indices, dtype=np.int64))]  # (B, 2)
            reference = torch.cat([picked[:, 0], picked[:, 1]])
        return inputs, PairTargets(targets, reference), real
