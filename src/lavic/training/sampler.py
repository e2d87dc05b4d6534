"""Data order for training and evaluation: each process's shard, resumable mid-epoch.

Lightning's distributed sampler is switched off (``use_distributed_sampler=False``): the
:class:`ShardSampler` shards by rank itself, resolved when iterated (after DDP has started), and
can finish an interrupted epoch with exactly the samples it had not seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """This process's share of the indices, resolved when iterated (after DDP has started).

    Training (``shuffle=True, pad=True``): a seeded permutation per epoch, padded by
    repetition so every rank runs the same number of steps. The epoch is set by
    the stage's LightningModule (:class:`lavic.training.module.LoRAModule`) from its own
    epoch counter (deliberately not named ``set_epoch``:
    Lightning's value for it is off by one after a mid-epoch resume, which would change the
    order of every later epoch).
    Evaluation (``shuffle=False, pad=False``): disjoint, unpadded shards, so a split-wide sum
    over ranks counts every sample exactly once.

    ``views`` > 1: the dataset holds ``views`` blocks of ``num_samples`` rows, the same samples
    rendered differently (a curriculum: fewer candidates first); epoch ``e`` reads block
    ``min(e, views - 1)``, in that epoch's permutation. An epoch is ``num_samples`` long either way.
    """

    def __init__(
        self, num_samples: int, *, shuffle: bool, pad: bool, seed: int = 0, views: int = 1
    ):
        if views < 1:
            raise ValueError(f"views must be at least 1, got {views}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.pad = pad
        self.seed = seed
        self.views = views
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Make the next iteration continue ``epoch`` after its first ``consumed`` indices.

        Used when training resumes from a mid-epoch checkpoint, so the interrupted epoch
        finishes with exactly the samples it had not seen (the length stays the full epoch's:
        Lightning counts the batches already done).
        """
        self._resume = (epoch, consumed)

    def resume_from_checkpoint(self, epoch: int, epoch_samples: int) -> None:
        """Resume after a checkpoint taken ``epoch_samples`` samples into ``epoch``.

        A mid-epoch checkpoint finishes that epoch with the samples it had not seen; one saved
        at an epoch's end starts the next afresh. Called from ``on_load_checkpoint`` because the
        first iterator may be created (and workers may prefetch) before any epoch hook runs.
        """
        if epoch_samples <= 0:
            return
        if epoch_samples < len(self):
            self.resume_at(epoch, epoch_samples)
        else:
            self.resume_at(epoch + 1, 0)

    def _indices(self) -> list[int]:
        rank, world = _dist_rank_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        offset = min(self.epoch, self.views - 1) * self.num_samples  # this epoch's block
        order = [offset + i for i in order]
        if self.pad and world > 1 and order:
            total = math.ceil(len(order) / world) * world
            order = (order * math.ceil(total / len(order)))[:total]
        return order[rank::world]

    def __iter__(self):
        skip = 0
        if self._resume is not None:
            (self.epoch, skip), self._resume = self._resume, None
        return iter(self._indices()[skip:])

    def __len__(self) -> int:
        return len(self._indices())


def make_loader(
    dataset: Dataset,
    collator: Callable,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int = 0,
    views: int = 1,
) -> DataLoader:
    """A DataLoader whose collator runs in the workers (``num_workers > 0``); ``views``: the
    dataset's blocks, one per curriculum stage (:class:`ShardSampler`)."""
    if len(dataset) % views:
        raise ValueError(f"{len(dataset)} rows do not split into {views} equal views")
    sampler = ShardSampler(
        len(dataset) // views, shuffle=shuffle, pad=shuffle, seed=seed, views=views
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


__all__ = ["ShardSampler", "make_loader"]
