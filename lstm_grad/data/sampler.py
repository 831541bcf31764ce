"""The training sampler: a shuffle that depends on ``(seed, epoch)`` only, so a resumed run sees the same order."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffle(Sampler[int]):
    """Shuffle the training windows anew each epoch, as a function of ``(seed, epoch)`` only.

    ``RandomSampler`` draws its seed from the global generator when the epoch's first batch is
    fetched, after draws that differ between a resumed and an uninterrupted run (every DataLoader
    iterator draws a base seed, ``torch/utils/data/dataloader.py`` ``_BaseDataLoaderIter.__init__``,
    and Lightning creates the train iterator before ``on_train_epoch_start`` in the first epoch of a
    ``fit`` call but after it later, ``loops/training_epoch_loop.py`` ``on_run_start``). Lightning calls
    ``set_epoch`` before every training epoch (``loops/fit_loop.py`` ``on_advance_start``), as for
    ``DistributedSampler``.

    >>> sampler = EpochShuffle(5, seed=0); sampler.set_epoch(1); sorted(sampler) == [0, 1, 2, 3, 4]
    True
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return iter(torch.randperm(self.n, generator=generator).tolist())
