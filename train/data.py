"""From training sets to each process's tokenized micro-batches, off the training step.

The loop receives, per optimizer step, this process's micro-batches as tensors only:
``input_ids`` / ``attention_mask`` (2B, T) (the B x-rows, then the B y-rows, delimited as
:func:`models.tokenization.encode_delimited` does for inference and serving) and ``x_keys`` /
``y_keys`` (B,) int64 hashes of the texts, with which the loss leaves repeated texts of a batch
out of each other's negatives.

* A map-style set (``datasets.Dataset``, memory-mapped) or a :class:`~pairdata.trainsets.Mixture`
  of them goes through a ``torch.utils.data.DataLoader`` whose items are *steps*: item ``s`` is a
  pure function of (seed, s) (:mod:`train.batching`), so workers and prefetching change nothing
  about which rows a step sees, and a resume at step ``s`` is exact and immediate.
* A streamed set (``datasets.IterableDataset``) is split across processes by shards
  (``split_dataset_by_node``), read in order by a prefetching thread, and resumed from the
  ``state_dict()`` saved with each checkpoint: exact when the stream is not shuffled with a
  buffer (the buffer's contents are not saved; see docs/data.md).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.sides import Side
from models.tokenization import encode_delimited
from pairdata.trainsets import Mixture, check_row, is_streaming
from train.batching import HeldOut, MixtureBatcher, StepBatcher, local_slices

logger = logging.getLogger(__name__)

MicroBatch = dict[str, torch.Tensor]


def text_keys(texts: Sequence[str]) -> torch.Tensor:
    """(N,) int64 hashes of texts, equal on every process (unlike Python's salted ``hash``)."""
    import xxhash

    return torch.tensor(
        [xxhash.xxh64_intdigest(text.encode("utf-8", "surrogatepass")) - (1 << 63) for text in texts], dtype=torch.int64
    )


@dataclass(frozen=True)
class Tokenization:
    """How pairs become model inputs: the tokenizer, the two sides and the length cut (picklable)."""

    tokenizer: Any
    x_side: Side
    y_side: Side
    max_length: int
    padding_side: str

    def micro_batch(self, xs: Sequence[str], ys: Sequence[str]) -> MicroBatch:
        sides = [self.x_side] * len(xs) + [self.y_side] * len(ys)
        batch = encode_delimited(self.tokenizer, [*xs, *ys], sides, self.max_length, self.padding_side)
        batch["x_keys"] = text_keys(xs)
        batch["y_keys"] = text_keys(ys)
        return batch


@dataclass
class Source:
    """One training set with the rows held out of it for validation."""

    name: str
    dataset: Any
    held_out: HeldOut

    def read(self, positions: np.ndarray) -> dict[str, list]:
        """The ``x``/``y`` texts at training positions, in the order given."""
        rows = self.held_out.train_rows(positions).tolist()
        batch = self.dataset[rows]
        return {"x": batch["x"], "y": batch["y"]}


class StepDataset(torch.utils.data.Dataset):
    """Item ``s``: this process's tokenized micro-batches of optimizer step ``s``."""

    def __init__(
        self,
        sources: Sequence[Source],
        batcher: StepBatcher | MixtureBatcher,
        tokenization: Tokenization,
        steps: int,
        rank: int,
        world_size: int,
        accum_steps: int,
    ) -> None:
        self.sources = list(sources)
        self.batcher = batcher
        self.tokenization = tokenization
        self.steps = steps
        self.slices = local_slices(batcher.global_batch_size, rank, world_size, accum_steps)

    def __len__(self) -> int:
        return self.steps

    def texts(self, step: int) -> tuple[list[str], list[str]]:
        """The global batch of ``step`` as (xs, ys), in batch order."""
        chosen = self.batcher.global_batch(step)
        xs: list[str | None] = [None] * len(chosen.rows)
        ys: list[str | None] = [None] * len(chosen.rows)
        for index, source in enumerate(self.sources):
            where = np.flatnonzero(chosen.sources == index)
            if not len(where):
                continue
            texts = source.read(chosen.rows[where])
            for position, x, y in zip(where.tolist(), texts["x"], texts["y"], strict=True):
                xs[position], ys[position] = x, y
        return xs, ys  # type: ignore[return-value]

    def __getitem__(self, step: int) -> list[MicroBatch]:
        xs, ys = self.texts(step)
        return [self.tokenization.micro_batch(xs[part], ys[part]) for part in self.slices]


class StreamSteps:
    """Steps from a streamed set: this process's shard of rows, in stream order, epoch after epoch.

    Each yielded item is ``(micro_batches, state)``: ``state`` is the stream's position after the
    rows of that step (``state_dict()`` plus the epoch), which a checkpoint saves and
    :meth:`resume` restores.
    """

    def __init__(
        self,
        dataset: Any,
        label: str,
        tokenization: Tokenization,
        local_batch: int,
        accum_steps: int,
        rank: int,
        world_size: int,
        prefetch: int = 2,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size) if world_size > 1 else dataset
        self.label = label
        self.tokenization = tokenization
        self.local_batch = local_batch
        self.accum_steps = accum_steps
        self.prefetch = max(1, prefetch)
        self.epoch = 0
        self.rows_read = 0

    def resume(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.rows_read = int(state["rows_read"])
        self.dataset.set_epoch(self.epoch)
        self.dataset.load_state_dict(state["dataset"])

    def _rows(self) -> Iterator[dict[str, Any]]:
        while True:
            self.dataset.set_epoch(self.epoch)
            empty = True
            for row in self.dataset:
                empty = False
                check_row(row, self.label, self.rows_read)
                self.rows_read += 1
                yield row
            if empty:
                raise ValueError(f"{self.label}: the stream gave this process no rows (too few shards or rows?)")
            self.epoch += 1

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            rows = self._rows()
            while not stop.is_set():
                micro = []
                for _ in range(self.accum_steps):
                    chunk = [next(rows) for _ in range(self.local_batch)]
                    micro.append(self.tokenization.micro_batch([r["x"] for r in chunk], [r["y"] for r in chunk]))
                state = {"epoch": self.epoch, "rows_read": self.rows_read, "dataset": self.dataset.state_dict()}
                out.put((micro, state))
        except BaseException as error:  # surfaced in the training process's thread
            out.put(error)

    def __iter__(self) -> Iterator[tuple[list[MicroBatch], dict[str, Any]]]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(out, stop), daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)


@dataclass
class TrainingData:
    """Everything the loop asks of the data: the steps, validation pairs and bookkeeping.

    Attributes:
        train_rows: training rows over all sources (``None`` for a stream).
        validation: held-out ``(xs, ys)``.
        names: the sources' names.
    """

    train_rows: int | None
    validation: tuple[list[str], list[str]]
    names: list[str]
    global_batch: int
    _steps: StepDataset | None = None
    _stream: StreamSteps | None = None
    _loader_options: dict[str, Any] = field(default_factory=dict)
    last_state: dict[str, Any] | None = None

    def epoch_of(self, step: int) -> float | None:
        return None if self.train_rows is None else step * self.global_batch / self.train_rows

    def steps(self, start: int, stop: int) -> Iterator[list[MicroBatch]]:
        """This process's micro-batches of steps ``start..stop-1``, in order."""
        if self._stream is not None:
            stream = iter(self._stream)
            try:
                for _, (micro, state) in zip(range(start, stop), stream, strict=False):
                    self.last_state = state
                    yield micro
            finally:
                stream.close()  # stops the reader thread now, not at interpreter exit (inside Arrow's C++)
            return
        assert self._steps is not None
        loader = torch.utils.data.DataLoader(
            self._steps,
            batch_size=None,
            sampler=range(start, stop),
            generator=torch.Generator(),  # its seed draw must not advance the global RNG (dropout, exact resume)
            **self._loader_options,
        )
        yield from loader

    def resume(self, state: Mapping[str, Any] | None) -> None:
        """Continue a stream from a checkpoint's saved position (map-style sets need nothing)."""
        if self._stream is None:
            return
        if state is None:
            raise FileNotFoundError("the checkpoint holds no stream position for this process (data_state)")
        self._stream.resume(state)

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint must hold to continue: the stream's position after the last step read."""
        return self.last_state if self._stream is not None else None


def build_training_data(
    data: Any,
    tokenization: Tokenization,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    accum_steps: int,
    rank: int,
    world_size: int,
    val_pairs: int,
    num_workers: int,
    prefetch_factor: int,
    pin_memory: bool,
) -> TrainingData:
    """Sources, held-out pairs, the batch schedule and the loader for a run.

    Args:
        data: what ``configs/data`` instantiates: a ``Dataset``, an ``IterableDataset``, a
            :class:`~pairdata.trainsets.Mixture`, or a list of :class:`~pairdata.pairs.Pair`.
    """
    global_batch = batch_size * world_size * accum_steps
    if isinstance(data, list):  # a plain list of pairs (e.g. from a custom data target)
        from pairdata.trainsets import from_pairs

        data = from_pairs(data)
    if is_streaming(data):
        if val_pairs:
            raise ValueError(
                "trainer.val_pairs needs the dataset's length, which a streamed set (data.streaming=true) "
                "does not have: set trainer.val_pairs=0"
            )
        stream = StreamSteps(
            data, _label(data), tokenization, batch_size, accum_steps, rank, world_size, prefetch=prefetch_factor
        )
        return TrainingData(None, ([], []), [_label(data)], global_batch, _stream=stream)

    mixture = data if isinstance(data, Mixture) else Mixture({"data": data})
    streaming = [name for name, ds in mixture.datasets.items() if is_streaming(ds)]
    if streaming:
        raise ValueError(f"data=mixture with streamed sets {streaming} is not supported: load them memory-mapped")
    sizes = [len(ds) for ds in mixture.datasets.values()]
    counts = _split_count(val_pairs, sizes)
    sources = [
        Source(name, ds, HeldOut(len(ds), count, seed if index == 0 else seed + 1000003 * index))
        for index, ((name, ds), count) in enumerate(zip(mixture.datasets.items(), counts, strict=True))
    ]
    val_x: list[str] = []
    val_y: list[str] = []
    for source in sources:
        if len(source.held_out.held):
            held = source.dataset[source.held_out.held.tolist()]
            val_x += held["x"]
            val_y += held["y"]
    if len(sources) == 1:
        batcher: StepBatcher | MixtureBatcher = StepBatcher(sources[0].held_out.train_size, global_batch, seed)
    else:
        batcher = MixtureBatcher(
            [s.held_out.train_size for s in sources],
            mixture.resolved_weights(),
            global_batch,
            seed,
            mixture.same_source_batches,
        )
    step_dataset = StepDataset(sources, batcher, tokenization, steps, rank, world_size, accum_steps)
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the tokenizer ran
        options.update(prefetch_factor=prefetch_factor, worker_init_fn=_one_thread, persistent_workers=False)
    return TrainingData(
        sum(s.held_out.train_size for s in sources),
        (val_x, val_y),
        [s.name for s in sources],
        global_batch,
        _steps=step_dataset,
        _loader_options=options,
    )


def _split_count(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` held-out rows shared among sources in proportion to their sizes (largest remainder)."""
    if len(sizes) == 1 or total == 0:
        return [total] + [0] * (len(sizes) - 1)
    exact = np.asarray(sizes, dtype=np.float64) * total / sum(sizes)
    counts = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - counts))[: total - counts.sum()]:
        counts[index] += 1
    return counts.tolist()


def _label(dataset: Any) -> str:
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) or "streamed dataset"


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker tokenizes; torch's threads would only compete with the step
