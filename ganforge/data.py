"""Data for training and evaluation: a dataset from the registry, and the batch sources that feed
the loop (by index from memory, or through a DataLoader for data that does not fit)."""
from __future__ import annotations

import os

import torch

from ganforge import contracts
from ganforge.errors import UsageError
from ganforge.interfaces import Data, StreamingData, to_float
from ganforge.plugins import get_registry


def load_data(dataset: str, root: str | None = None, image_size: int | None = None, download: bool = True,
              options: dict | None = None, path: str = "auto", registry=None):
    """Dataset ``dataset`` as Data (in memory) or StreamingData; ``path`` (``memory``, ``stream`` or
    ``auto``) forces one of the two."""
    registry = registry or get_registry()
    entry = registry.get("datasets", dataset)
    data = contracts.call_dataset(entry, lambda: registry.create("datasets", dataset, root, image_size, download,
                                                                 **(options or {})))
    contracts.check_data(data, entry)
    if path == "stream" and isinstance(data, Data):
        data = StreamingData(InMemory(data), data.shape, data.num_classes)
    if path == "memory" and isinstance(data, StreamingData):
        raise UsageError(f"dataset '{dataset}' is too large to hold in memory; drop --data-path memory")
    return data


def batches(data, batch_size: int, seed: int, device, rank: int = 0, world: int = 1) -> "BatchStream":
    """The training batches of ``data``: drawn by index from memory on ``device``, or read through a
    DataLoader for StreamingData. Both give the same batches."""
    if isinstance(data, Data):
        return BatchStream(data.to(device), batch_size, seed, rank, world)
    return LoaderStream(data, batch_size, seed, rank, world, device)


class InMemory(torch.utils.data.Dataset):
    """In-memory Data served item by item (``--data-path stream`` on data that would fit)."""

    def __init__(self, data: Data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        label = -1 if self.data.labels is None else int(self.data.labels[i])
        return self.data.x[i], label


class BatchStream:
    """Batches drawn by index from the in-memory data, one shard per process.

    Each epoch is a fresh permutation seeded by (seed, epoch), so the batches depend only on
    how many were drawn (``drawn``): a resumed run continues with exactly the batches it would have had."""

    def __init__(self, data: Data, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        shard = len(data) // world
        if batch_size > shard:
            raise UsageError(f"batch size {batch_size} is larger than the dataset ({shard} samples"
                             f"{' per process' if world > 1 else ''}); lower --batch-size")
        self.per_epoch, self.drawn, self._epoch, self._perm = shard // batch_size, 0, -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=g)[self.rank::self.world]

    def next(self):
        epoch, pos = divmod(self.drawn, self.per_epoch)
        if epoch != self._epoch:
            self._perm, self._epoch = self.permutation(epoch).to(self.data.x.device), epoch
        self.drawn += 1
        return self.data.batch(self._perm[pos * self.batch_size:(pos + 1) * self.batch_size])


class LoaderStream(BatchStream):
    """The same batches as BatchStream, read through a DataLoader with worker processes and pinned
    memory: for StreamingData, which does not fit in memory."""

    def __init__(self, data: StreamingData, batch_size: int, seed: int, rank: int, world: int, device):
        super().__init__(data, batch_size, seed, rank, world)
        self.device, self._iter = device, None
        self.workers = min(4, (os.cpu_count() or 1) - 1)

    def next(self):
        epoch, pos = divmod(self.drawn, self.per_epoch)
        if epoch != self._epoch or self._iter is None:  # resume mid-epoch: start at the right batch
            order = self.permutation(epoch)[pos * self.batch_size:self.per_epoch * self.batch_size].tolist()
            loader = torch.utils.data.DataLoader(
                self.data.dataset, self.batch_size, sampler=order, drop_last=True, num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(epoch))  # its worker seeds must not draw from the global RNG
            self._iter, self._epoch = iter(loader), epoch
        x, labels = next(self._iter)
        self.drawn += 1
        x = to_float(x.to(self.device, non_blocking=True))
        return x, labels.to(self.device, non_blocking=True) if self.data.num_classes else None
