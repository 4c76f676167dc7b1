"""The training DataLoader: with ``prefetch_across_epochs``, its workers keep building batches
across epoch ends.

A plain DataLoader starts each epoch by resetting its workers, which sit idle from the end of the
previous epoch (and through validation) until then; the first batch of the new epoch then waits
for one worker to build it whole, ``batch_size`` × the CPU time of a sample. On a GPU that wait
was the largest share of the loader's cost (docs/scaling.md: ~2 s of every epoch at batch 64). Here one
stream of batches feeds every epoch instead: the batch sampler's passes follow one another
without end, so the workers start on the next epoch's batches as soon as their queue has room
(``prefetch_factor`` × ``num_workers`` batches ahead) and the new epoch's first batches are
waiting when it starts.

An epoch is still ``len(loader)`` batches, each pass a new shuffle (a ``DistributedSampler``'s
pass k gets epoch ``first + k``, so every rank draws the same permutation and its own shard).
When an epoch is left before its end (``limit_train_batches``, ``overfit_batches``, a stopped
run), the next one restarts the stream from a fresh pass, as a plain DataLoader would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader


class ChainedPasses:
    """``batches`` (a batch sampler, or a sampler), pass after pass without end. Its length is one
    pass, which is what the DataLoader, and Lightning, call an epoch."""

    def __init__(self, batches: Iterable[Any]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self.batches, "sampler", self.batches)
        set_epoch = getattr(sampler, "set_epoch", None)
        epoch = getattr(sampler, "epoch", 0)  # what Lightning set for the epoch this stream starts in
        while True:
            if set_epoch is not None:
                set_epoch(epoch)
            empty = True
            for batch in self.batches:
                empty = False
                yield batch
            if empty:  # nothing to chain: end instead of spinning
                return
            epoch += 1


class _Epoch:
    """``length`` batches taken from ``stream``; counts what it has handed out."""

    def __init__(self, stream: Iterator[Any], length: int):
        self.stream, self.length, self.taken = stream, length, 0

    def __iter__(self) -> _Epoch:
        return self

    def __len__(self) -> int:
        return self.length

    def __next__(self) -> Any:
        if self.taken >= self.length:
            raise StopIteration
        batch = next(self.stream)
        self.taken += 1
        return batch

    @property
    def left_early(self) -> bool:
        return 0 < self.taken < self.length


class TrainLoader(DataLoader):
    """A DataLoader; with ``prefetch_across_epochs=True`` and persistent workers, one worker stream
    feeds every epoch (see the module's docstring). Without workers it is a plain DataLoader."""

    def __init__(self, *args: Any, prefetch_across_epochs: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prefetch_across_epochs = bool(prefetch_across_epochs)
        self._epoch: _Epoch | None = None

    @property
    def streams(self) -> bool:
        """Whether this loader feeds its epochs from one stream."""
        return self.prefetch_across_epochs and self.num_workers > 0 and self.persistent_workers

    @property
    def _index_sampler(self):  # noqa: ANN202 - DataLoader's own attribute, chained when streaming
        index_sampler = super()._index_sampler
        return ChainedPasses(index_sampler) if self.streams else index_sampler

    def __iter__(self):  # noqa: ANN204 - DataLoader's own
        if not self.streams:
            return super().__iter__()
        previous = self._epoch
        if self._iterator is None or previous is None or previous.left_early:
            stream = super().__iter__()  # start the workers' stream, or restart it from a fresh pass
        else:
            stream = self._iterator  # carry on: the workers are already on this epoch's batches
        self._epoch = _Epoch(stream, len(self))
        return self._epoch

    def close_workers(self) -> None:
        """Stops persistent workers now rather than when the loader is collected, so that a second
        loader timed after this one (the benchmarks) does not share the CPU with them."""
        iterator, self._iterator, self._epoch = self._iterator, None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
