"""Saving figures: atomically, at a fixed resolution, without pyplot's global state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

DEFAULT_DPI = 110


def save_figure(figure: Figure, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``figure`` to ``path`` (format from the suffix, PNG if none) via a temporary file and ``os.replace``.

    A reader never sees a half-written image, and a failed save leaves no temporary file behind.

    Args:
        figure: the figure to save.
        path: the destination; its folder is created if needed.
        dpi: resolution in dots per inch.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp.{fmt}")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=dpi, format=fmt)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; a figure is for everyone to read
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
