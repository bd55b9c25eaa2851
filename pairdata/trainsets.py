"""Training sets as Hugging Face ``datasets``: loading, the column map, checks, and mixtures.

Every training set reaches the trainer as a ``datasets.Dataset`` (Arrow, memory-mapped from disk)
or, with ``streaming=True``, a ``datasets.IterableDataset``, with the columns

* ``x`` and ``y``: the two texts of a positive pair (non-empty strings);
* ``source`` (optional): which dataset a row came from;
* ``negatives`` (optional): a list of strings, hard negatives for ``y``'s side.

These are the targets of ``configs/data/*.yaml``: :func:`load_hf` (``data=hf``: a hub name or a
local folder), :func:`load_files` (``data=files``: JSONL / JSONL.gz / Parquet / CSV / Arrow files
or globs), :func:`built` (a ``python -m pairdata build`` dataset by name), :func:`from_pairs`
(any list of :class:`~pairdata.pairs.Pair`, e.g. SentEval's paraphrase pairs) and
:class:`Mixture` (``data=mixture``: several of these with weights).

Rows are checked once, when a set is loaded, by a scan that reads the Arrow files in record
batches (never the whole table at once); a bad row fails with the dataset, the row and the column.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairdata.errors import DataFormatError
from pairdata.filesets import FileSet, expand_files, first_columns, format_of
from pairdata.pairs import Pair
from pairdata.rowcheck import Locate, check_row, check_rows

__all__ = ["Mixture", "built", "check_row", "check_rows", "expand_files", "from_pairs", "load_files", "load_hf"]

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("x", "y")
OPTIONAL_COLUMNS = ("source", "negatives")
COLUMNS = (*TEXT_COLUMNS, *OPTIONAL_COLUMNS)


@dataclass(frozen=True)
class Mixture:
    """Several training sets drawn with weights (``data=mixture``).

    Args:
        datasets: name -> dataset (each already loaded by one of this module's loaders).
        weights: name -> sampling weight; ``None`` weighs each set by its row count, which draws
            rows as a concatenation of the sets would. Streaming sets need explicit weights.
        same_source_batches: draw every global batch from one set (GritLM, FlagEmbedding), so
            in-batch negatives stay in one domain or language.
    """

    datasets: Mapping[str, Any]
    weights: Mapping[str, float] | None = None
    same_source_batches: bool = False

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("data.datasets must name at least one dataset")
        if self.weights is not None:
            missing = sorted(set(self.datasets) - set(self.weights))
            extra = sorted(set(self.weights) - set(self.datasets))
            if missing or extra:
                raise ValueError(f"data.weights must give one weight per dataset: missing {missing}, unknown {extra}")
            bad = {name: w for name, w in self.weights.items() if not float(w) > 0}
            if bad:
                raise ValueError(f"data.weights must be > 0, got {bad}")

    @property
    def names(self) -> list[str]:
        return list(self.datasets)

    def resolved_weights(self) -> list[float]:
        """One weight per dataset, in :attr:`names` order, summing to 1."""
        if self.weights is None:
            streaming = [name for name, ds in self.datasets.items() if is_streaming(ds)]
            if streaming:
                raise ValueError(f"streaming datasets {streaming} have no length to weigh them by: give data.weights")
            raw = [float(len(self.datasets[name])) for name in self.names]
        else:
            raw = [float(self.weights[name]) for name in self.names]
        total = sum(raw)
        return [w / total for w in raw]


def is_streaming(dataset: Any) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


# ---- loaders (the targets of configs/data/*.yaml) ------------------------------------------------


def load_hf(
    name: str,
    split: str = "train",
    subset: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    streaming: bool = False,
    revision: str | None = None,
    limit: int | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    reshard: bool = True,
) -> datasets.Dataset | datasets.IterableDataset:
    """A hub dataset by name, or a local folder (``save_to_disk`` output, or a hub snapshot of files).

    Args:
        name: ``owner/name`` on the hub, or a local folder.
        split: the split to read.
        subset: the hub set's configuration (``name`` argument of ``load_dataset``).
        columns: our column -> the set's column, e.g. ``{x: anchor, y: positive}``.
        streaming: read the split as a stream instead of downloading it whole.
        revision: a hub revision (branch, tag or commit).
        limit: keep only the first ``limit`` rows.
        shuffle_buffer: with ``streaming``, shuffle shards and rows through a buffer of this many rows
            (seeded with ``seed``); 0 keeps the stream's order. Memory-mapped sets are shuffled by
            the trainer's batch order instead.
        seed: the shuffle buffer's seed.
        reshard: with ``streaming``, one stream shard per Parquet row group instead of per file
            (``IterableDataset.reshard``). Arrow otherwise decodes ahead through a whole file (a
            10M-row file held 1.6 GB); it also lets processes split a set of few large files.
            Reading every file's footer costs one request per file at start: false skips it.

    Raises:
        FileNotFoundError: a hub name while the hub cannot be reached, naming what to download and
            where to put it.
    """
    import datasets

    label = name if subset is None else f"{name} ({subset})"
    local = Path(name).expanduser()
    if local.exists():
        if (
            (local / "dataset_info.json").is_file()
            or (local / "state.json").is_file()
            or (local / "dataset_dict.json").is_file()
        ):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _pick_split(loaded, split, label)
            if streaming:
                loaded = loaded.to_iterable_dataset()
        else:
            loaded = datasets.load_dataset(str(local), subset, split=split, streaming=streaming)
    else:
        if "/" not in name:
            raise FileNotFoundError(f"data.name={name!r}: no such folder, and not a hub name (owner/name)")
        advice = (
            f"Offline, download it where a network exists, e.g. `huggingface-cli download --repo-type dataset "
            f"{name} --local-dir DIR` (or `datasets.load_dataset({name!r}).save_to_disk(DIR)`), copy DIR here "
            "and pass data.name=DIR"
        )
        if not _hub_offline() and not _hub_reachable():  # fail now, not after datasets' minute of retries
            raise FileNotFoundError(
                f"data.name={name!r}: the hub cannot be reached from here. {advice}; "
                "or set HF_HUB_OFFLINE=1 to read a copy already in the datasets cache"
            )
        try:
            loaded = datasets.load_dataset(name, subset, split=split, streaming=streaming, revision=revision)
        except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
            raise FileNotFoundError(
                f"data.name={name!r}: the hub dataset could not be loaded and is not in the local cache "
                f"({type(error).__name__}: {str(error)[:200]}). {advice}"
            ) from None
    return prepare(_stream_order(loaded, shuffle_buffer, seed, reshard), label, columns, limit)


def load_files(
    path: str | Sequence[str],
    columns: Mapping[str, str | None] | None = None,
    format: str | None = None,  # noqa: A002  (the config key users write)
    streaming: bool = False,
    limit: int | None = None,
    cache_dir: str | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    reshard: bool = True,
) -> datasets.Dataset | datasets.IterableDataset:
    """Pairs from JSONL / JSONL.gz / Parquet / CSV / Arrow files, folders or globs (:mod:`pairdata.filesets`).

    Only the mapped columns are read. They are converted once into one Arrow file (under
    ``cache_dir``, default the ``datasets`` cache), a Parquet row group at a time, and memory-mapped
    from there; a folder stands for every file of a known format inside it.

    Args:
        path: one path, folder or glob, or a list of them.
        columns: our column -> the file's column, e.g. ``{x: query, y: positive}``.
        format: ``json``, ``parquet``, ``csv`` or ``arrow``; default from the file extensions.
        streaming: read the files as a stream (no conversion), one shard per Parquet row group or file.
        limit: keep only the first ``limit`` rows.
        cache_dir: where the Arrow copy is written (default: the ``datasets`` cache).
        shuffle_buffer: as in :func:`load_hf`.
        seed: as in :func:`load_hf`.
        reshard: with ``streaming``, one shard per Parquet row group (else one per file).

    Raises:
        DataFormatError: a file cannot be read, lacks a mapped column, or holds a bad value, naming the
            file, the row (and line, for JSON Lines) and the column.
    """
    files = expand_files(path)
    kind = format or format_of(files)
    label = files[0] if len(files) == 1 else f"{len(files)} {kind} files ({files[0]}, ...)"
    first = first_columns(files, kind)
    roles, required = _file_roles(columns, first[1], label)
    fileset = FileSet.open(files, kind, roles, required, label, first=first)
    if streaming:
        stream = fileset.stream(by_row_group=reshard)
        return prepare(_stream_order(stream, shuffle_buffer, seed, reshard=False), label, columns, limit)
    dataset, counts = fileset.convert(cache_dir)
    return prepare(dataset, label, columns, limit, locate=lambda row: fileset.origin(row, counts))


def _file_roles(
    columns: Mapping[str, str | None] | None, available: Mapping[str, Any], label: str
) -> tuple[dict[str, str], list[str]]:
    """The files' columns to read with the role of each (x, y, source, negatives, negative), and those
    that must exist (the texts, and any column the map names)."""
    mapping = resolve_columns(columns)
    roles = {mapping["x"]: "x", mapping["y"]: "y"}
    required = [mapping["x"], mapping["y"]]
    if "source" in mapping:
        roles.setdefault(mapping["source"], "source")
        if columns_named(columns, "source"):
            required.append(mapping["source"])
    if columns_named(columns, "negatives"):
        names = negative_columns(list(available), columns["negatives"], label)  # type: ignore[index]
        for name in names:
            alone_list = len(names) == 1 and _is_list_type(available.get(name))
            roles.setdefault(name, "negatives" if alone_list else "negative")
        required += names
    elif "negatives" in mapping:
        roles.setdefault(mapping["negatives"], "negatives")
    return roles, required


def _is_list_type(dtype: Any) -> bool:
    import pyarrow as pa

    return dtype is not None and (pa.types.is_list(dtype) or pa.types.is_large_list(dtype))


def _stream_order(dataset: Any, shuffle_buffer: int, seed: int, reshard: bool) -> Any:
    """A stream resharded by row group (before any shuffle, as ``datasets`` requires), then shuffled."""
    if shuffle_buffer < 0:
        raise ValueError(f"data.shuffle_buffer must be >= 0, got {shuffle_buffer}")
    if not is_streaming(dataset):
        return dataset
    if reshard:
        dataset = dataset.reshard()
    return dataset.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else dataset


def built(name: str, split: str = "train", data_dir: str | None = None, limit: int | None = None) -> datasets.Dataset:
    """A dataset built by ``python -m pairdata build`` (``code-python``, ``text-search``, ...) by name.

    Code sets give ``x`` = the docstring's first paragraph and ``y`` = the code without its docstring.
    The split's ``jsonl.gz`` is converted once into Arrow files beside it (``arrow/SPLIT/``), memory-mapped.
    """
    import datasets

    from pairdata.loading import split_path

    source = split_path(name, split, data_dir)
    arrow_dir = source.parent / "arrow" / split
    if not (arrow_dir / "state.json").is_file():
        from pairdata.loading import read_pairs

        staging = arrow_dir.with_name(f".{split}.tmp-{os.getpid()}")
        pairs = read_pairs(source)  # the builder's own reader (code records -> docstring summary, code)
        table = datasets.Dataset.from_dict({"x": [p.x for p in pairs], "y": [p.y for p in pairs]})
        table.save_to_disk(str(staging))
        arrow_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, arrow_dir)
        except OSError:  # another process converted it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    loaded = datasets.load_from_disk(str(arrow_dir))
    return prepare(loaded, f"{name}/{split}", None, limit, check=False)  # read_pairs checked every row


def from_pairs(pairs: Sequence[Pair], name: str = "pairs") -> datasets.Dataset:
    """A list of :class:`Pair` (e.g. ``senteval_paraphrase_pairs``) as an in-memory Arrow dataset."""
    import datasets

    table = datasets.Dataset.from_dict({"x": [p.x for p in pairs], "y": [p.y for p in pairs]})
    return prepare(table, name, None, None)


def mixture(
    datasets: Mapping[str, Any], weights: Mapping[str, float] | None = None, same_source_batches: bool = False
) -> Mixture:
    """``data=mixture``: see :class:`Mixture` (Hydra instantiates each dataset first)."""
    return Mixture(dict(datasets), None if weights is None else dict(weights), same_source_batches)


TRAINING_OPTIONS = ("num_negatives",)  # trainer keys that configs/data held before (trainer.num_negatives now)


def split_data_config(data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cfg.data`` as (what Hydra instantiates, the trainer's options such as ``num_negatives``): for the
    ``train_config.yaml`` of runs written when the data configs still held ``num_negatives``.

    A mixture's members come from the same config files, so their copies of these keys are dropped:
    the top-level value applies to every member.
    """
    from omegaconf import OmegaConf

    loader = OmegaConf.to_container(data, resolve=True) if not isinstance(data, dict) else dict(data)
    options = {key: loader.pop(key) for key in TRAINING_OPTIONS if key in loader}
    for member in (loader.get("datasets") or {}).values():
        if isinstance(member, dict):
            for key in TRAINING_OPTIONS:
                member.pop(key, None)
    return loader, options


# ---- the column map and the checks ---------------------------------------------------------------


def prepare(
    dataset: Any,
    label: str,
    columns: Mapping[str, str | None] | None,
    limit: int | None,
    check: bool = True,
    locate: Locate | None = None,
) -> Any:
    """Map the set's columns to ours, keep only ours, cut to ``limit`` and check every row (once per
    set: :func:`pairdata.rowcheck.check_rows`); ``locate`` names a bad row's file and row.

    Raises:
        DataFormatError: a column the map names is missing, a required column is absent, or a row's
            text is empty or not a string (naming the dataset, the row and the column).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"data.limit must be a positive integer or null, got {limit}")
    if is_streaming(dataset):
        dataset.info.dataset_name = label  # what the trainer's stream errors name
    columns = dict(columns or {})
    if columns_named(columns, "negatives") and dataset.column_names is not None:
        dataset, columns["negatives"] = pack_negatives(dataset, label, columns["negatives"])
    mapping = resolve_columns(columns)
    available = dataset.column_names  # None for some streamed sets (unknown until read)
    if available is not None:
        for ours, theirs in mapping.items():
            if theirs not in available and (ours in TEXT_COLUMNS or columns_named(columns, ours)):
                raise DataFormatError(
                    label,
                    f"has no column {theirs!r} (for {ours!r}); its columns are {list(available)}. "
                    f"Map them with data.columns.{ours}=NAME",
                )
        mapping = {ours: theirs for ours, theirs in mapping.items() if theirs in available}
    if limit is not None:
        dataset = dataset.take(limit) if is_streaming(dataset) else dataset.select(range(min(limit, len(dataset))))
    if not is_streaming(dataset):
        if len(dataset) == 0:
            raise DataFormatError(label, "holds no rows")
        if check:
            check_rows(dataset, label, mapping, locate)
    if available is not None and list(available) != list(mapping.values()):
        dataset = dataset.select_columns(list(mapping.values()))
    renames = {theirs: ours for ours, theirs in mapping.items() if theirs != ours}
    if renames:
        dataset = dataset.rename_columns(renames)
    return dataset


def pack_negatives(dataset: Any, label: str, spec: str | Sequence[str]) -> tuple[Any, str]:
    """The hard negatives named by ``data.columns.negatives`` as one list column; returns (set, its name).

    ``spec`` is a column of string lists (used as it is), a column of strings (one negative a row),
    a list of columns or a pattern such as ``negative_*`` (the one-column-per-negative layout of hub
    triplet sets, in the columns' natural order). A null cell is a missing negative: that row has
    fewer (the trainer counts them); an empty string is an error, as for any negative.
    """
    import datasets

    available = list(dataset.column_names)
    names = negative_columns(available, spec, label)
    features = getattr(dataset, "features", None) or {}
    is_list = [isinstance(features.get(name), (datasets.List, datasets.LargeList)) for name in names]
    if len(names) == 1 and is_list[0]:
        return dataset, names[0]  # a list column (its items are checked with the rows)
    for name, listed in zip(names, is_list, strict=True):
        if listed or getattr(features.get(name), "dtype", "string") not in ("string", "large_string"):
            raise DataFormatError(
                label, f"column {name!r} (for 'negatives') must hold strings (one negative each) or, alone, lists of "
                f"strings; it holds {features[name]}",
            )  # fmt: skip

    def pack(batch: dict[str, list]) -> dict[str, list]:
        rows = zip(*(batch[name] for name in names), strict=True)
        return {"negatives": [[text for text in row if text is not None] for row in rows]}

    keep = [name for name in available if name not in names]
    options: dict[str, Any] = {"desc": "negatives"}
    if is_streaming(dataset):  # a stream forgets its columns after a map unless told them
        options = {}
        if features:
            options["features"] = datasets.Features(
                {**{name: features[name] for name in keep}, "negatives": datasets.List(datasets.Value("string"))}
            )
    packed = dataset.map(pack, batched=True, remove_columns=names, **options)
    return (packed.select_columns([*keep, "negatives"]) if keep else packed), "negatives"


def negative_columns(available: Sequence[str], spec: str | Sequence[str], label: str) -> list[str]:
    """The columns ``data.columns.negatives`` names: one, a list, or a pattern (natural order)."""
    import fnmatch
    import re

    available = list(available)
    if isinstance(spec, str) and any(ch in spec for ch in "*?["):
        names = sorted(
            fnmatch.filter(available, spec), key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
        )
        if not names:
            raise DataFormatError(
                label, f"no column matches data.columns.negatives={spec!r}; its columns are {available}"
            )
    else:
        names = [spec] if isinstance(spec, str) else [str(name) for name in spec]
    missing = [name for name in names if name not in available]
    if missing:
        raise DataFormatError(
            label, f"has no column {missing[0]!r} (for 'negatives'); its columns are {available}. "
            "Map them with data.columns.negatives=NAME, a list of names, or a pattern such as 'negative_*'",
        )  # fmt: skip
    return names


def resolve_columns(columns: Mapping[str, str | None] | None) -> dict[str, str]:
    """Our column -> the set's column, defaulting to the same names; ``None`` drops an optional one."""
    given = dict(columns or {})
    unknown = sorted(set(given) - set(COLUMNS))
    if unknown:
        raise ValueError(f"data.columns has unknown key(s) {unknown}; valid keys are {list(COLUMNS)}")
    out = {}
    for ours in COLUMNS:
        theirs = given.get(ours, ours)
        if theirs is None:
            if ours in TEXT_COLUMNS:
                raise ValueError(f"data.columns.{ours} cannot be null: every row needs its {ours!r} text")
            continue
        out[ours] = str(theirs)
    return out


def columns_named(columns: Mapping[str, str | None] | None, ours: str) -> bool:
    """Whether the column map names a column of the set for ``ours`` (then it must exist); mapping an
    optional column to its own name (``negatives: negatives``, the configs' default) means "if present"."""
    return bool(columns) and columns.get(ours) is not None and columns.get(ours) != ours


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _pick_split(loaded: Any, split: str, label: str) -> Any:
    if split not in loaded:
        raise FileNotFoundError(f"{label} has no split {split!r}; it has {sorted(loaded)}")
    return loaded[split]
