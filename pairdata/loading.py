"""Load built datasets as :class:`~pairdata.pairs.Pair` lists (evaluation reads test splits this way).

Training reads the same sets as memory-mapped ``datasets`` through :func:`pairdata.trainsets.built`.
Code datasets give ``x`` = the docstring's first paragraph and ``y`` = the code without its
docstring; text datasets give ``x``/``y`` as built (first/next chunk, query/document). Official
CodeSearchNet ``*.jsonl.gz`` files read the same way (``x`` falls back to ``docstring_tokens``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pairdata.errors import DataFormatError
from pairdata.pairs import Pair, iter_jsonl
from pairdata.store import dataset_dir, is_complete, read_manifest

DEFAULT_DATA_DIR = "~/.cache/cpt-embeddings/pairdata"


def default_data_dir() -> Path:
    """``$CPT_PAIRDATA_DIR`` or ``~/.cache/cpt-embeddings/pairdata``."""
    return Path(os.environ.get("CPT_PAIRDATA_DIR", DEFAULT_DATA_DIR)).expanduser()


def build_command(name: str) -> str:
    """The command that builds dataset ``name``."""
    if name.startswith("code-"):
        return f"python -m pairdata build code --language {name.removeprefix('code-')}"
    if name in {"text-neighbors", "text-search"}:
        return f"python -m pairdata build {name.removeprefix('text-').replace('neighbors', 'text')}"
    return f"python -m pairdata build ... --name {name}"


def split_path(name: str, split: str, data_dir: str | Path | None = None) -> Path:
    """The ``SPLIT.jsonl.gz`` file of a complete dataset.

    Raises:
        FileNotFoundError: the dataset was not built (the message names the command that builds it),
            or it has no such split (the message lists the splits it has).
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not is_complete(root, name):
        raise FileNotFoundError(
            f"dataset {name!r} is not built in {root} (no {dataset_dir(root, name) / 'manifest.json'}). "
            f"Build it with: {build_command(name)} --data-dir {root}"
        )
    path = dataset_dir(root, name) / f"{split}.jsonl.gz"
    if not path.is_file():
        splits = sorted(read_manifest(root, name)["counts"]["splits"])
        raise FileNotFoundError(f"dataset {name!r} has no split {split!r}; it has {splits}")
    return path


def load_built_pairs(
    name: str, split: str = "train", data_dir: str | None = None, limit: int | None = None
) -> list[Pair]:
    """The pairs of one split of a built dataset.

    Args:
        name: dataset name (``code-python``, ``code-java``, ..., ``text-neighbors``, ``text-search``).
        split: ``train``, ``valid`` or ``test`` (text datasets have ``train`` and ``valid``).
        data_dir: where datasets were built (``~`` is expanded); default ``$CPT_PAIRDATA_DIR``.
        limit: keep only the first ``limit`` pairs (short CPU runs); ``None`` keeps all.

    Raises:
        FileNotFoundError: not built; the message names the ``python -m pairdata build`` command.
        DataFormatError: a record lacks its text fields.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    path = split_path(name, split, data_dir)
    return read_pairs(path, limit=limit)


def read_pairs(path: str | Path, limit: int | None = None) -> list[Pair]:
    """Pairs from a pairdata or CodeSearchNet jsonl(.gz) file."""
    pairs: list[Pair] = []
    for number, record in iter_jsonl(path):
        if "code" in record:
            x = record.get("docstring_summary") or " ".join(record.get("docstring_tokens") or [])
            y = record.get("code")
        else:
            x, y = record.get("x"), record.get("y")
        if not isinstance(x, str) or not x.strip() or not isinstance(y, str) or not y.strip():
            raise DataFormatError(path, "record lacks non-empty x/y (or docstring/code) text", line=number)
        pairs.append(Pair(x, y))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise DataFormatError(path, "holds no pairs")
    return pairs
