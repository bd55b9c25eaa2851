"""Hard-negative mining: a pair set in, the same pairs with ``negatives`` out (``python -m eval.mine``).

1. The candidate pool is every distinct ``y`` of the set (or the texts of another corpus), minus
   every text that contains a benchmark text (:func:`pairdata.mining.build_pool`): a negative is
   trained on as much as a positive is.
2. Every ``x`` and every pool text is embedded once by the mining model into float16 ``.npy`` files
   on disk (memory-mapped, so corpora larger than RAM work) and resumed where an interrupted run
   stopped (:func:`pairdata.vectors.embed_to_disk`).
3. Exact top-k search by inner product, query block against pool block, never holding the score
   matrix of more than one pair of blocks (:func:`eval.search.top_candidates`).
4. Filters, as sentence-transformers' ``mine_hard_negatives`` names them: candidates equal to a
   positive of the same ``x`` (or to ``x``) are dropped; ranks below ``range_min`` are skipped and
   only the top ``range_max`` considered; ``absolute_margin`` keeps a candidate only if its score is
   at most the positive's minus the margin, ``relative_margin`` at most the positive's times
   (1 - margin), ``max_score`` at most that score; then ``num_negatives`` are taken from the top
   (``sampling=top``) or drawn at random from what is left (``sampling=random``, seeded per row).
5. Output (:func:`pairdata.mining.write_part`): ``OUT/parts/part-NNNNN.parquet`` (``x``, ``y``,
   ``negatives``, ``positive_score``, ``negative_scores``), one per query block, each written
   atomically with its counts in ``OUT/stats/``, so a rerun resumes; then ``OUT/manifest.json``
   with the model, the filters, the counts and score histograms.

Train on the result with ``data=mined data.path=OUT trainer.num_negatives=K``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.search import top_candidates
from pairdata.errors import DataFormatError
from pairdata.mining import SCORE_BINS, Pool, Positives, build_pool, column_hashes, merge_stats, write_part
from pairdata.progress import progress
from pairdata.store import write_text_atomic
from pairdata.vectors import embed_to_disk

REPO_ROOT = Path(__file__).resolve().parents[1]
DROP_REASONS = ("positive", "range_min", "absolute_margin", "relative_margin", "max_score")


@dataclass(frozen=True)
class MiningFilters:
    """Which candidates become a row's negatives (see the module docstring)."""

    num_negatives: int = 7
    range_min: int = 0
    range_max: int = 100
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    sampling: str = "top"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"--num-negatives must be >= 1, got {self.num_negatives}")
        if not 0 <= self.range_min < self.range_max:
            raise ValueError(f"need 0 <= --range-min < --range-max, got {self.range_min} and {self.range_max}")
        if self.sampling not in ("top", "random"):
            raise ValueError(f"--sampling must be top or random, got {self.sampling!r}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"--relative-margin must be in [0, 1), got {self.relative_margin}")


# ---- the mining model ----------------------------------------------------------------------------


class Encoder:
    """Embeds ``x`` texts and pool texts (L2-normalised float32 rows) with the mining model.

    ``precision="bf16"`` runs the forward passes under ``torch.autocast`` (GPUs, CPUs with native
    bf16); the rows come back float32 either way.
    """

    description: dict[str, Any]
    precision: str = "fp32"

    def encode(self, texts: Sequence[str], role: str) -> np.ndarray:  # role: "x" or "y"
        with self._autocast():
            return self._encode(texts, role)

    def _encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        raise NotImplementedError

    def _autocast(self) -> Any:
        from models.precision import inference_autocast

        if self.precision == "fp32":
            return inference_autocast("fp32")
        return inference_autocast(self.precision, next(self.model.parameters()).device)  # type: ignore[attr-defined]


class EmbedderEncoder(Encoder):
    """One of our checkpoints (or an untrained decoder with a tower's delimiters), by side."""

    def __init__(self, model: Any, sides: tuple[str, str], max_length: int, batch_size: int, label: str) -> None:
        self.model, self.sides, self.max_length, self.batch_size = model, sides, max_length, batch_size
        self.description = {"model": label, "kind": "cpt-embedder", "sides": list(sides), "max_length": max_length}

    def _encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        side = self.sides[0] if role == "x" else self.sides[1]
        return self.model.encode(list(texts), side, batch_size=self.batch_size, max_length=self.max_length).numpy()


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers folder: ``encode_query`` for ``x``, ``encode_document`` for the pool."""

    def __init__(self, model: Any, batch_size: int, label: str) -> None:
        self.model, self.batch_size = model, batch_size
        self.description = {"model": label, "kind": "sentence-transformers", "max_length": model.max_seq_length}

    def _encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        encode = self.model.encode_query if role == "x" else self.model.encode_document
        return encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)


def load_encoder(
    model: str,
    tower: str | None,
    sides: Sequence[str] | None,
    max_length: int,
    batch_size: int,
    precision: str = "fp32",
) -> Encoder:
    """The mining model: one of our checkpoints or exports, a sentence-transformers folder, or (with
    ``tower``) a pretrained decoder name or folder given that tower's delimiters, untrained."""
    from models.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be fp32 or bf16, got {precision!r}")
    encoder = _load_encoder(model, tower, sides, max_length, batch_size)
    encoder.precision = precision
    if precision != "fp32":  # fp32 manifests stay as they were, so their unfinished runs still resume
        encoder.description["precision"] = precision
    return encoder


def _load_encoder(
    model: str, tower: str | None, sides: Sequence[str] | None, max_length: int, batch_size: int
) -> Encoder:
    from models.embedder import CONFIG_NAME, DecoderEmbedder, resolve_checkpoint_dir

    folder = Path(model).expanduser()
    if tower is not None:
        from omegaconf import OmegaConf

        tower_file = REPO_ROOT / "configs" / "tower" / f"{tower}.yaml"
        if not tower_file.is_file():
            raise FileNotFoundError(f"--tower {tower}: no {tower_file}")
        tower_cfg = OmegaConf.to_container(OmegaConf.load(tower_file), resolve=True)
        embedder = DecoderEmbedder.build(pretrained=model, sides=tower_cfg["sides"], seed=0)
        chosen = tuple(sides or tower_cfg["pair_sides"])
        return EmbedderEncoder(embedder, _two(chosen), max_length, batch_size, f"{model} (untrained, tower {tower})")
    if folder.is_dir() and (resolve_checkpoint_dir(folder) / CONFIG_NAME).is_file():
        embedder = DecoderEmbedder.from_pretrained(folder)
        chosen = tuple(sides or embedder.side_names[:2])
        return EmbedderEncoder(embedder, _two(chosen), max_length, batch_size, str(folder))
    if (folder / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        return SentenceTransformerEncoder(SentenceTransformer(str(folder), device="cpu"), batch_size, str(folder))
    raise FileNotFoundError(
        f"--model {model}: not an embedder checkpoint, an export or a sentence-transformers folder; "
        "for an untrained decoder give its name or folder with --tower NAME"
    )


def _two(sides: tuple[str, ...]) -> tuple[str, str]:
    return (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])


# ---- search and filters --------------------------------------------------------------------------


def choose_negatives(
    scores: np.ndarray, candidates: np.ndarray, candidate_keys: np.ndarray, positive_score: float,
    excluded: np.ndarray, filters: MiningFilters, rng: np.random.Generator, drops: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One row's negatives among its ranked candidates: (pool positions, scores), counting each drop."""
    is_positive = np.isin(candidate_keys, excluded)
    drops["positive"] += int(is_positive[: filters.range_max].sum())
    scores, candidates = scores[~is_positive][: filters.range_max], candidates[~is_positive][: filters.range_max]
    keep = np.ones(len(scores), dtype=bool)
    keep[: filters.range_min] = False
    drops["range_min"] += min(filters.range_min, len(scores))
    absolute, relative = filters.absolute_margin, filters.relative_margin
    for reason, limit in (
        ("absolute_margin", None if absolute is None else positive_score - absolute),
        ("relative_margin", None if relative is None else positive_score * (1 - relative)),
        ("max_score", filters.max_score),
    ):
        if limit is not None:
            over = keep & (scores > limit)
            drops[reason] += int(over.sum())
            keep &= ~over
    chosen = np.flatnonzero(keep)
    if filters.sampling == "random" and len(chosen) > filters.num_negatives:
        chosen = np.sort(rng.choice(chosen, filters.num_negatives, replace=False))
    chosen = chosen[: filters.num_negatives]
    return candidates[chosen], scores[chosen]


@dataclass
class Embedded:
    """The run's vectors: the pool's, each row's ``x`` and each row's positive ``y`` (float16 on disk)."""

    pool: np.ndarray
    x: np.ndarray
    y: Any
    seconds: float


def mine(
    dataset: Any,
    encoder: Encoder,
    out_dir: Path,
    filters: MiningFilters,
    *,
    corpus: Any = None,
    corpus_column: str = "text",
    leakage: Any = None,
    query_block: int = 4096,
    pool_chunk: int = 65_536,
    encode_chunk: int = 4096,
    show_progress: bool = True,
    command: str | None = None,
    source_label: str = "",
) -> dict[str, Any]:
    """Mine negatives for every row of ``dataset`` (columns ``x``, ``y``) into ``out_dir``; returns the manifest."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"filters": asdict(filters), "encoder": encoder.description, "source": source_label,
                "corpus": None if corpus is None else f"{len(corpus)} rows, column {corpus_column}",
                "rows": len(dataset), "query_block": query_block, "benchmark_check": leakage is not None}  # fmt: skip
    settings_file = out_dir / "mining.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise FileExistsError(
            f"{out_dir} holds a mining run with other settings ({settings_file}); use another --out or delete it"
        )
    write_text_atomic(settings_file, json.dumps(settings, indent=2, sort_keys=True))

    x_keys = column_hashes(dataset, "x", show_progress)
    y_keys = column_hashes(dataset, "y", show_progress)
    pool = _pool(dataset, y_keys, corpus, corpus_column, leakage, show_progress, source_label)
    positives = Positives(x_keys, y_keys)
    vectors = _embed(dataset, pool, y_keys, encoder, out_dir / "embeddings", encode_chunk, show_progress)
    search_started = time.perf_counter()
    _search_and_write(dataset, pool, positives, vectors, filters, out_dir, query_block, pool_chunk, show_progress)
    manifest = {
        "kind": "mined-negatives",
        "command": command,
        **settings,
        "counts": merge_stats(sorted((out_dir / "stats").glob("part-*.json")), filters.num_negatives, DROP_REASONS),
        "pool": {"texts": len(pool.rows), "leaked_removed": pool.leaked},
        "score_bins": SCORE_BINS.round(3).tolist(),
        "seconds": {
            "embed": round(vectors.seconds, 1),
            "search_and_write": round(time.perf_counter() - search_started, 1),
            "total_this_run": round(time.perf_counter() - started, 1),
        },  # fmt: skip
    }
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _pool(
    dataset: Any, y_keys: np.ndarray, corpus: Any, corpus_column: str, leakage: Any, show_progress: bool, label: str
) -> Pool:
    """The candidates: the set's distinct ``y`` texts, or a corpus column's, less benchmark texts."""
    if corpus is None:
        pool = build_pool(dataset, "y", y_keys, leakage, show_progress)
    else:
        if corpus_column not in corpus.column_names:
            raise DataFormatError("--corpus", f"has no column {corpus_column!r}; its columns are {corpus.column_names}")
        keys = column_hashes(corpus, corpus_column, show_progress)
        pool = build_pool(corpus, corpus_column, keys, leakage, show_progress)
    if len(pool.rows) == 0:
        raise DataFormatError(label or "data", "leaves no candidate texts after the benchmark check")
    return pool


def _embed(
    dataset: Any, pool: Pool, y_keys: np.ndarray, encoder: Encoder, folder: Path, chunk: int, show_progress: bool
) -> Embedded:
    started = time.perf_counter()
    folder.mkdir(exist_ok=True)
    encode = encoder.encode
    pool_vectors = embed_to_disk(folder / "pool.npy", len(pool.rows), lambda a, b: pool.texts(range(a, b)),
                                 lambda t: encode(t, "y"), chunk, show_progress, "embed pool")  # fmt: skip
    x_vectors = embed_to_disk(folder / "x.npy", len(dataset), lambda a, b: dataset[a:b]["x"],
                              lambda t: encode(t, "x"), chunk, show_progress, "embed x")  # fmt: skip
    y_vectors = _positive_vectors(dataset, pool, y_keys, pool_vectors, folder, encode, chunk, show_progress)
    return Embedded(pool_vectors, x_vectors, y_vectors, time.perf_counter() - started)


def _search_and_write(
    dataset: Any, pool: Pool, positives: Positives, vectors: Embedded, filters: MiningFilters, out_dir: Path,
    query_block: int, pool_chunk: int, show_progress: bool,
) -> None:  # fmt: skip
    """Every query block not written yet: its top candidates, filtered, as one part and its stats."""
    parts, stats_dir = out_dir / "parts", out_dir / "stats"
    parts.mkdir(exist_ok=True)
    stats_dir.mkdir(exist_ok=True)
    depth = filters.range_max + positives.largest_group + 1
    blocks = range(0, len(dataset), query_block)
    for number, start in enumerate(
        progress(blocks, enabled=show_progress, desc="search", unit="block", total=len(blocks))
    ):
        part, stats_file = parts / f"part-{number:05d}.parquet", stats_dir / f"part-{number:05d}.json"
        if part.is_file() and stats_file.is_file():
            continue
        end = min(len(dataset), start + query_block)
        scores, index = top_candidates(vectors.x[start:end], vectors.pool, depth, pool_chunk)
        queries = np.asarray(vectors.x[start:end], dtype=np.float32)
        positive_scores = (queries * np.asarray(vectors.y[start:end], dtype=np.float32)).sum(axis=1)
        drops = dict.fromkeys(DROP_REASONS, 0)
        chosen = []
        for offset, row in enumerate(range(start, end)):
            rng = np.random.default_rng([filters.seed, row])
            candidates = index[offset]
            positive = float(positive_scores[offset])
            chosen.append(choose_negatives(scores[offset], candidates, pool.keys[candidates], positive,
                                           positives.of(row), filters, rng, drops))  # fmt: skip
        flat = sorted({int(p) for positions, _ in chosen for p in positions})
        text_of = dict(zip(flat, pool.texts(flat), strict=True)) if flat else {}
        negatives = [[text_of[int(p)] for p in positions] for positions, _ in chosen]
        negative_scores = [[round(float(s), 5) for s in values] for _, values in chosen]
        write_part(part, stats_file, dataset[start:end], negatives, positive_scores, negative_scores,
                   filters.num_negatives, drops)  # fmt: skip


def _positive_vectors(
    dataset: Any, pool: Pool, y_keys: np.ndarray, pool_vectors: np.ndarray, folder: Path,
    encode: Callable[[list[str], str], np.ndarray], chunk: int, show_progress: bool,
) -> Any:  # fmt: skip
    """Each row's ``y`` embedding: from the pool when its text is there, else encoded on its own."""
    if pool.source is dataset and pool.column == "y" and pool.leaked == 0:
        order = np.argsort(pool.keys)
        return _Gathered(pool_vectors, order[np.searchsorted(pool.keys[order], y_keys)])
    return embed_to_disk(folder / "y.npy", len(dataset), lambda a, b: dataset[a:b]["y"],
                         lambda t: encode(t, "y"), chunk, show_progress, "embed y")  # fmt: skip


class _Gathered:
    """Rows of ``vectors`` at ``positions``, sliced lazily (a view of the pool as each row's ``y``)."""

    def __init__(self, vectors: np.ndarray, positions: np.ndarray) -> None:
        self.vectors, self.positions = vectors, positions

    def __getitem__(self, item: slice) -> np.ndarray:
        return np.asarray(self.vectors[self.positions[item]])
