"""From training sets to each process's tokenized micro-batches, off the training step.

The loop receives, per optimizer step, this process's micro-batches as tensors only:
``input_ids`` / ``attention_mask`` (2B + M, T) (the B x-rows, the B y-rows, then the rows' M hard
negatives, delimited as :func:`models.tokenization.encode_delimited` does for inference and
serving) and ``x_keys`` / ``y_keys`` (B,) int64 hashes of the texts, with which the loss leaves
repeated texts of a batch out of each other's negatives. With ``trainer.num_negatives`` > 0 also
``negative_keys`` (M,), ``negative_counts`` (B,) and ``negatives_dropped`` (how many of the rows'
negatives were their own positive's text).

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
from train.batching import HeldOut, MixtureBatcher, StepBatcher, apportion, local_slices

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

    def micro_batch(
        self,
        xs: Sequence[str],
        ys: Sequence[str],
        negatives: Sequence[Sequence[str]] | None = None,
        dropped: Sequence[int] = (),
    ) -> MicroBatch:
        """Rows ``xs``, then ``ys``, then every row's ``negatives`` (encoded as the y side); ``dropped``:
        how many of each row's negatives :meth:`NegativeChoice.pick` left out for being its positive."""
        flat = [] if negatives is None else [text for row in negatives for text in row]
        sides = [self.x_side] * len(xs) + [self.y_side] * (len(ys) + len(flat))
        batch = encode_delimited(self.tokenizer, [*xs, *ys, *flat], sides, self.max_length, self.padding_side)
        batch["x_keys"] = text_keys(xs)
        batch["y_keys"] = text_keys(ys)
        if negatives is not None:
            batch["negative_keys"] = text_keys(flat)
            batch["negative_counts"] = torch.tensor([len(row) for row in negatives], dtype=torch.int64)
            batch["negatives_dropped"] = torch.tensor(sum(dropped))
        return batch


@dataclass(frozen=True)
class NegativeChoice:
    """Which of a row's hard negatives a step uses: at most ``count``, never the row's own positive.

    A row with more than ``count`` gives a sample of ``count`` of them drawn with a generator seeded by
    (``seed``, the step's key), so every epoch may see others and a resume sees the same; a row with
    fewer gives all it has (the loss handles any number per row, nothing is padded with text).
    """

    count: int
    seed: int

    def pick(
        self, ys: Sequence[str], negatives: Sequence[Sequence[str] | None], key: int
    ) -> tuple[list[list[str]], list[int]]:
        """(chosen negatives per row, how many of each row's were dropped for being its own positive)."""
        rng = np.random.default_rng([self.seed, key])
        chosen, dropped = [], []
        for y, row in zip(ys, negatives, strict=True):
            kept = [text for text in row or () if text != y]
            dropped.append(len(row or ()) - len(kept))
            if len(kept) > self.count:
                kept = [kept[i] for i in sorted(rng.choice(len(kept), self.count, replace=False).tolist())]
            chosen.append(kept)
        return chosen, dropped


@dataclass
class Source:
    """One training set with the rows held out of it for validation."""

    name: str
    dataset: Any
    held_out: HeldOut
    _views: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    def read(self, positions: np.ndarray, negatives: bool = False) -> dict[str, list]:
        """The ``x``/``y`` texts (and, if asked, each row's ``negatives``) at training positions, in order."""
        rows = self.held_out.train_rows(positions).tolist()
        names = ("x", "y", "negatives") if negatives and "negatives" in self.dataset.column_names else ("x", "y")
        batch = self._view(names)[rows]
        out = {"x": batch["x"], "y": batch["y"]}
        if negatives:
            out["negatives"] = batch.get("negatives") or [[] for _ in rows]
        return out

    def _view(self, names: tuple[str, ...]) -> Any:
        """The set with only ``names`` (other columns, e.g. unused negatives, are not read)."""
        if names not in self._views:
            whole = tuple(self.dataset.column_names) == names
            self._views[names] = self.dataset if whole else self.dataset.select_columns(list(names))
        return self._views[names]


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
        negatives: NegativeChoice | None = None,
    ) -> None:
        self.sources = list(sources)
        self.batcher = batcher
        self.tokenization = tokenization
        self.steps = steps
        self.slices = local_slices(batcher.global_batch_size, rank, world_size, accum_steps)
        self.negatives = negatives

    def __len__(self) -> int:
        return self.steps

    def texts(self, step: int) -> tuple[list[str], list[str], list[list[str]] | None]:
        """The global batch of ``step`` as (xs, ys, each row's negatives or None), in batch order."""
        chosen = self.batcher.global_batch(step)
        size = len(chosen.rows)
        xs: list[str | None] = [None] * size
        ys: list[str | None] = [None] * size
        negatives: list[list[str]] = [[] for _ in range(size)]
        for index, source in enumerate(self.sources):
            where = np.flatnonzero(chosen.sources == index)
            if not len(where):
                continue
            texts = source.read(chosen.rows[where], negatives=self.negatives is not None)
            for position, x, y in zip(where.tolist(), texts["x"], texts["y"], strict=True):
                xs[position], ys[position] = x, y
            for position, row in zip(where.tolist(), texts.get("negatives", ()), strict=False):
                negatives[position] = row
        return xs, ys, (negatives if self.negatives is not None else None)  # type: ignore[return-value]

    def __getitem__(self, step: int) -> list[MicroBatch]:
        xs, ys, negatives = self.texts(step)
        if negatives is None:
            return [self.tokenization.micro_batch(xs[part], ys[part]) for part in self.slices]
        assert self.negatives is not None
        chosen, dropped = self.negatives.pick(ys, negatives, step)  # over the global batch: any process count
        return [self.tokenization.micro_batch(xs[part], ys[part], chosen[part], dropped[part]) for part in self.slices]


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
        negatives: NegativeChoice | None = None,
    ) -> None:
        self.dataset = split_stream(dataset, label, rank, world_size)
        self.label = label
        self.tokenization = tokenization
        self.local_batch = local_batch
        self.accum_steps = accum_steps
        self.prefetch = max(1, prefetch)
        self.negatives = negatives
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
                    key = self.rows_read
                    chunk = [next(rows) for _ in range(self.local_batch)]
                    xs, ys = [r["x"] for r in chunk], [r["y"] for r in chunk]
                    if self.negatives is None:
                        micro.append(self.tokenization.micro_batch(xs, ys))
                        continue
                    chosen, dropped = self.negatives.pick(ys, [r.get("negatives") for r in chunk], key)
                    micro.append(self.tokenization.micro_batch(xs, ys, chosen, dropped))
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


def split_stream(dataset: Any, label: str, rank: int, world_size: int) -> Any:
    """This process's shards of a stream: shard ``rank``, ``rank + world_size``, ... so every row is read by
    one process per pass, whatever the shard count (a count that is not a multiple of the processes
    leaves some with one shard more). Fewer shards than processes is refused with the fix.

    (``datasets``' default for such counts has every process read every row and keep 1 in N.)
    """
    if world_size == 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    if dataset.num_shards < world_size:
        raise ValueError(
            f"{label}: the stream has {dataset.num_shards} shard(s) for {world_size} processes, so some process "
            "would read nothing (or all would read every row). Give it at least one shard per process: more "
            "files (e.g. split a JSON Lines file with `split -n l/N`), Parquet files with smaller row groups "
            "(data.reshard=true reads one shard per row group), or fewer processes"
        )
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size, strategy="shards")


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
    num_negatives: int = 0
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

    def mixture_rows(self, steps_done: int) -> dict[str, int]:
        """``{"rows/NAME": n}``: the training rows each source of a mixture gave in steps ``0..steps_done-1``
        (O(sources); empty for a single source or a stream), for ``metrics.jsonl`` to audit the weights."""
        if self._steps is None or not isinstance(self._steps.batcher, MixtureBatcher):
            return {}
        rows = self._steps.batcher.rows_before(steps_done)
        return {f"rows/{name}": int(count) for name, count in zip(self.names, rows, strict=True)}

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
    num_negatives: int = 0,
) -> TrainingData:
    """Sources, held-out pairs, the batch schedule and the loader for a run.

    Args:
        data: what ``configs/data`` instantiates: a ``Dataset``, an ``IterableDataset``, a
            :class:`~pairdata.trainsets.Mixture`, or a list of :class:`~pairdata.pairs.Pair`.
        num_negatives: hard negatives per row at most (``trainer.num_negatives``); 0 = in-batch only.
    """
    if num_negatives < 0:
        raise ValueError(f"trainer.num_negatives must be >= 0, got {num_negatives}")
    negatives = NegativeChoice(num_negatives, seed) if num_negatives else None
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
            data, _label(data), tokenization, batch_size, accum_steps, rank, world_size, prefetch=prefetch_factor,
            negatives=negatives,
        )  # fmt: skip
        return TrainingData(None, ([], []), [_label(data)], global_batch, num_negatives, _stream=stream)

    mixture = data if isinstance(data, Mixture) else Mixture({"data": data})
    sources = held_out_sources(mixture, val_pairs, seed)
    if negatives is not None:
        report_negative_counts(sources, num_negatives)
    step_dataset = StepDataset(
        sources, batcher_of(sources, mixture, global_batch, seed), tokenization, steps, rank, world_size,
        accum_steps, negatives,
    )  # fmt: skip
    return TrainingData(
        sum(s.held_out.train_size for s in sources),
        validation_pairs(sources),
        [s.name for s in sources],
        global_batch,
        num_negatives,
        _steps=step_dataset,
        _loader_options=_loader_options(num_workers, prefetch_factor, pin_memory),
    )


def validation_pairs(sources: Sequence[Source]) -> tuple[list[str], list[str]]:
    """The held-out ``(xs, ys)`` of every source, in source order."""
    val_x: list[str] = []
    val_y: list[str] = []
    for source in sources:
        if len(source.held_out.held):
            held = source.dataset[source.held_out.held.tolist()]
            val_x += held["x"]
            val_y += held["y"]
    return val_x, val_y


def batcher_of(
    sources: Sequence[Source], mixture: Mixture, global_batch: int, seed: int
) -> StepBatcher | MixtureBatcher:
    """One source: the plain seeded epochs; several: the mixture's blocks (:mod:`train.batching`)."""
    if len(sources) == 1:
        return StepBatcher(sources[0].held_out.train_size, global_batch, seed)
    sizes = [s.held_out.train_size for s in sources]
    return MixtureBatcher(sizes, mixture.resolved_weights(), global_batch, seed, mixture.same_source_batches)


def held_out_sources(mixture: Mixture, val_pairs: int, seed: int) -> list[Source]:
    """Each memory-mapped set of a mixture (or the one set) with its share of the ``val_pairs`` held out."""
    streaming = [name for name, ds in mixture.datasets.items() if is_streaming(ds)]
    if streaming:
        raise ValueError(f"data=mixture with streamed sets {streaming} is not supported: load them memory-mapped")
    sizes = [len(ds) for ds in mixture.datasets.values()]
    counts = apportion(val_pairs, sizes).tolist()  # held-out rows in proportion to size
    return [
        Source(name, ds, HeldOut(len(ds), count, seed if index == 0 else seed + 1000003 * index))
        for index, ((name, ds), count) in enumerate(zip(mixture.datasets.items(), counts, strict=True))
    ]


def _loader_options(num_workers: int, prefetch_factor: int, pin_memory: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the tokenizer ran
        options.update(prefetch_factor=prefetch_factor, worker_init_fn=_one_thread, persistent_workers=False)
    return options


def negative_counts(dataset: Any) -> np.ndarray:
    """(rows,) how many hard negatives each row of a memory-mapped set carries (0 without the column).

    Reads only the list offsets of the ``negatives`` column, not its text.
    """
    import pyarrow.compute as pc

    if "negatives" not in dataset.column_names:
        return np.zeros(len(dataset), dtype=np.int64)
    if dataset._indices is None:
        column = dataset.data.column("negatives")
    else:
        column = dataset.select_columns(["negatives"]).with_format("arrow")[:]["negatives"]
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)


def report_negative_counts(sources: Sequence[Source], cap: int) -> dict[str, dict[int, int]]:
    """Log, per source, how many rows carry 0, 1, ... ``cap`` or more hard negatives; rows with fewer
    than ``cap`` train with what they have (counted here, never dropped)."""
    report = {}
    for source in sources:
        counts = np.minimum(negative_counts(source.dataset), cap)
        histogram = np.bincount(counts, minlength=cap + 1)
        report[source.name] = {k: int(n) for k, n in enumerate(histogram) if n}
        short = int(histogram[:cap].sum())
        logger.info(
            "%s: hard negatives per row (capped at %d) %s; %d of %d rows have fewer than %d",
            source.name, cap, report[source.name], short, len(counts), cap,
        )  # fmt: skip
        if short == len(counts):
            logger.warning("%s: no row has %d hard negatives (see data.columns.negatives)", source.name, cap)
    return report


def _label(dataset: Any) -> str:
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) or "streamed dataset"


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker tokenizes; torch's threads would only compete with the step
