"""Progress bars (tqdm on stderr) that tests and ``--quiet`` runs can switch off."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, enabled: bool, desc: str, unit: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, unit=unit, total=total, mininterval=2.0, dynamic_ncols=True)
