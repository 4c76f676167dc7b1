"""The training DataLoader that keeps its workers busy across epoch ends (ocr/data/loader.py)."""

import os
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from ocr.config import compose_config
from ocr.data.loader import TrainLoader
from ocr.factory import build_datamodule


class MarkedItems(Dataset):
    """Item i is tensor([i]); each one built leaves a file in ``marks`` (the workers are processes)."""

    def __init__(self, size: int, marks: Path):
        self.size, self.marks = size, marks

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        (self.marks / f"{os.getpid()}-{time.monotonic_ns()}-{index}").touch()
        return torch.tensor([index])

    def built(self) -> int:
        return len(list(self.marks.iterdir()))


def loader(dataset, prefetch_across_epochs: bool, **options) -> TrainLoader:
    options = {"batch_size": 3, "num_workers": 1, "persistent_workers": True, **options}
    return TrainLoader(dataset, prefetch_across_epochs=prefetch_across_epochs, **options)


def epoch_items(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch.flatten()]


def wait_until(condition, timeout_s: float = 20.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("prefetch_across_epochs", [True, False])
def test_the_workers_build_the_next_epochs_batches_before_it_starts_only_when_asked(tmp_path, prefetch_across_epochs):
    dataset = MarkedItems(12, tmp_path)  # 4 batches of 3 an epoch; the worker holds at most 2 (prefetch_factor)
    torch.manual_seed(0)
    train = loader(dataset, prefetch_across_epochs, shuffle=True)
    first = epoch_items(train)
    assert sorted(first) == list(range(12)) and len(train) == 4
    if prefetch_across_epochs:  # with the epoch over and the next not yet asked for, the worker goes on
        waited = wait_until(lambda: dataset.built() >= 12 + 6)
    else:  # a plain DataLoader's worker idles until the next epoch resets it
        time.sleep(0.5)
        waited = None
    built_before_the_next_epoch = dataset.built()
    second = epoch_items(train)
    assert sorted(second) == list(range(12)) and second != first  # a whole epoch again, newly shuffled
    assert len(train) == 4
    if prefetch_across_epochs:
        assert built_before_the_next_epoch == 18, waited  # two batches ahead, not more
    else:
        assert built_before_the_next_epoch == 12


@pytest.mark.parametrize("prefetch_across_epochs", [True, False])
def test_close_workers_ends_the_worker_processes_and_the_next_epoch_starts_new_ones(tmp_path, prefetch_across_epochs):
    dataset = MarkedItems(6, tmp_path)
    train = loader(dataset, prefetch_across_epochs)
    assert epoch_items(train) == list(range(6))
    workers = list(train._iterator._workers)
    assert workers and all(worker.is_alive() for worker in workers)
    train.close_workers()
    assert train._iterator is None and not any(worker.is_alive() for worker in workers)
    pids = {name.name.split("-")[0] for name in tmp_path.iterdir()}
    assert epoch_items(train) == list(range(6))  # a whole epoch again, from new workers
    assert {name.name.split("-")[0] for name in tmp_path.iterdir()} - pids
    train.close_workers()
    train.close_workers()  # twice, or with none running: nothing to do


def test_a_distributed_samplers_passes_are_its_epochs_on_every_rank():
    """Each rank's stream draws the shard a plain DataLoader would after ``set_epoch(e)``: the same
    permutation on every rank, so the shards stay disjoint and cover the data every epoch."""
    data = list(range(12))
    streams = {}
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(3)  # as Lightning sets it before the first epoch of a resumed run
        train = loader(data, True, batch_size=2, sampler=sampler)
        streams[rank] = [epoch_items(train) for _ in range(3)]
    for offset in range(3):
        expected = {}
        for rank in (0, 1):
            sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7)
            sampler.set_epoch(3 + offset)
            expected[rank] = epoch_items(DataLoader(data, batch_size=2, sampler=sampler))
            assert streams[rank][offset] == expected[rank]
        assert sorted(expected[0] + expected[1]) == data
    assert streams[0][0] != streams[0][1]


class Recorder(L.LightningModule):
    def __init__(self, train: DataLoader):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.loader, self.seen = train, []

    def train_dataloader(self) -> DataLoader:
        return self.loader

    def training_step(self, batch, batch_index):
        self.seen.append((self.current_epoch, epoch_items([batch])))
        return (self.weight * batch.float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(train: DataLoader, **trainer_options) -> dict[int, list[list[int]]]:
    module = Recorder(train)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    L.Trainer(accelerator="cpu", max_epochs=3, **options, **trainer_options).fit(module)
    epochs: dict[int, list[list[int]]] = {}
    for epoch, items in module.seen:
        epochs.setdefault(epoch, []).append(items)
    return epochs


def test_under_lightning_each_epoch_is_one_whole_shuffle_and_short_epochs_restart_the_stream(tmp_path, monkeypatch):
    resets = []  # True: the workers' first start; False: a restart, whose in-flight batches are thrown away
    reset = _MultiProcessingDataLoaderIter._reset

    def counted_reset(self, loader, first_iter=False):
        resets.append(first_iter)
        return reset(self, loader, first_iter)

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_reset", counted_reset)
    L.seed_everything(0)
    whole = fit(loader(MarkedItems(9, tmp_path), True, shuffle=True))
    assert resets == [True]  # Lightning's epochs did not restart the stream
    assert sorted(whole) == [0, 1, 2]
    assert all(sorted(sum(batches, [])) == list(range(9)) for batches in whole.values())
    assert whole[0] != whole[1] != whole[2]

    # overfit_batches: Lightning swaps in a sequential sampler; the first batch every epoch
    overfit = fit(loader(MarkedItems(9, tmp_path), True, shuffle=True), overfit_batches=1)
    assert overfit == {0: [[0, 1, 2]], 1: [[0, 1, 2]], 2: [[0, 1, 2]]}

    # an epoch cut short starts the next one from a fresh pass: 2 distinct batches every epoch
    resets.clear()
    limited = fit(loader(MarkedItems(9, tmp_path), True, shuffle=True), limit_train_batches=2)
    assert resets.count(False) >= 2  # before epochs 1 and 2 at least
    assert all(len(batches) == 2 and len(set(sum(batches, []))) == 6 for batches in limited.values())


def test_the_configs_stream_on_a_gpu_only_and_the_setting_reaches_the_training_loader():
    cfg = compose_config("train", ["preset=example", "datasets.num_workers=1"])
    assert cfg.datasets.prefetch_across_epochs is torch.cuda.is_available()
    for setting in (True, False):
        cfg = compose_config("train", ["preset=example", "datasets.num_workers=1", f"datasets.prefetch_across_epochs={setting}"])
        datamodule = build_datamodule(cfg)
        datamodule.datasets["train"] = list(range(8))
        train = datamodule.train_dataloader()
        assert isinstance(train, TrainLoader) and train.streams is setting
