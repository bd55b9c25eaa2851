"""Benchmarks: each takes a ``Context`` (the model source and run settings) and returns scores.

A benchmark is a class built by Hydra from ``configs/benchmark/<name>.yaml`` whose keys are its
constructor arguments; ``run(context)`` returns a ``BenchmarkOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eval.cache import Encoder
from eval.distributed import Shards
from eval.report import Score
from eval.sources import DenseSource, LexicalSource

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Context:
    """What a benchmark may use: the source (dense through ``encoder``, or lexical) and settings."""

    model_name: str
    encoder: Encoder | None = None
    lexical: LexicalSource | None = None
    show_progress: bool = True
    shards: Shards = field(default_factory=Shards)

    @classmethod
    def for_source(
        cls,
        source: DenseSource | LexicalSource,
        model_name: str,
        cache_dir: str | Path | None,
        show_progress: bool,
        shards: Shards | None = None,
        work_dir: str | Path | None = None,
    ) -> Context:
        """``work_dir``: where uncached corpus embeddings go (the same folder on every process)."""
        shards = shards or Shards()
        if isinstance(source, LexicalSource) and not isinstance(source, DenseSource):
            return cls(model_name=model_name, lexical=source, show_progress=show_progress, shards=shards)
        encoder = Encoder(source, model_name, cache_dir, shards=shards, work_dir=work_dir)
        return cls(model_name=model_name, encoder=encoder, show_progress=show_progress, shards=shards)

    def require_dense(self, benchmark: str) -> Encoder:
        if self.encoder is None:
            raise ValueError(f"benchmark {benchmark!r} needs a dense source (embeddings); {self.model_name} is lexical")
        return self.encoder


@dataclass
class BenchmarkOutput:
    """Scores (x100), the data files read (hashed into the results), and free-form details."""

    scores: list[Score]
    data_files: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Benchmark(Protocol):
    name: str

    def run(self, context: Context) -> BenchmarkOutput: ...


def resolve_data_path(path: str | Path) -> Path:
    """A relative path is taken from the working directory if it exists there, else from the project root.

    So the default ``../shared/data/...`` works from the project root and from anywhere else.
    """
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path
