"""Hard-negative mining: a pair set in, the same pairs with ``negatives`` out (``python -m pairdata mine``).

1. The candidate pool is every distinct ``y`` of the set (or the texts of another corpus), minus
   every text that contains a benchmark text (:mod:`pairdata.leakage`): a negative is trained on
   as much as a positive is.
2. Every ``x`` and every pool text is embedded once by the mining model into float16 ``.npy`` files
   on disk (memory-mapped, so corpora larger than RAM work) and resumed where an interrupted run
   stopped.
3. Exact top-k search by inner product, query block against pool block, never holding the score
   matrix of more than one pair of blocks.
4. Filters, as sentence-transformers' ``mine_hard_negatives`` names them: candidates equal to a
   positive of the same ``x`` (or to ``x``) are dropped; ranks below ``range_min`` are skipped and
   only the top ``range_max`` considered; ``absolute_margin`` keeps a candidate only if its score is
   at most the positive's minus the margin, ``relative_margin`` at most the positive's times
   (1 - margin), ``max_score`` at most that score; then ``num_negatives`` are taken from the top
   (``sampling=top``) or drawn at random from what is left (``sampling=random``, seeded per row).
5. Output: ``OUT/parts/part-NNNNN.parquet`` (``x``, ``y``, ``negatives``, ``positive_score``,
   ``negative_scores``), one per query block, each written atomically with its counts in
   ``OUT/stats/``, so a rerun resumes; then
   ``OUT/manifest.json`` with the model, the filters, the counts and score histograms.

Train on the result with ``data=mined data.path=OUT data.num_negatives=K``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pairdata.errors import DataFormatError
from pairdata.progress import progress
from pairdata.store import write_text_atomic
from pairdata.vectors import embed_to_disk, top_candidates

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCORE_BINS = np.linspace(-1.0, 1.0, 41)
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


# ---- the set, its pool, and the rows' positives ---------------------------------------------------


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    import xxhash

    return np.fromiter(
        (xxhash.xxh64_intdigest(t.encode("utf-8", "surrogatepass")) for t in texts), np.uint64, len(texts)
    )


def column_hashes(dataset: Any, column: str, show_progress: bool) -> np.ndarray:
    """(rows,) uint64 hashes of a column's texts, read in batches."""
    out = np.empty(len(dataset), dtype=np.uint64)
    starts = range(0, len(dataset), 65_536)
    for start in progress(starts, enabled=show_progress, desc=f"hash {column}", unit="batch", total=len(starts)):
        out[start : start + 65_536] = text_hashes(dataset[start : start + 65_536][column])
    return out


@dataclass
class Pool:
    """The candidate texts: ``rows`` index ``source[column]``; ``keys`` are their hashes."""

    source: Any
    column: str
    rows: np.ndarray
    keys: np.ndarray
    leaked: int

    def texts(self, positions: Sequence[int]) -> list[str]:
        return self.source[self.rows[np.asarray(positions, dtype=np.int64)].tolist()][self.column]


def build_pool(source: Any, column: str, keys: np.ndarray, leakage: Any, show_progress: bool) -> Pool:
    """Distinct texts of ``source[column]`` (first occurrence), less those that contain a benchmark text."""
    _, first = np.unique(keys, return_index=True)
    rows = np.sort(first)
    leaked = 0
    if leakage is not None:
        keep = np.ones(len(rows), dtype=bool)
        starts = range(0, len(rows), 4096)
        for start in progress(starts, enabled=show_progress, desc="leakage check", unit="batch", total=len(starts)):
            texts = source[rows[start : start + 4096].tolist()][column]
            keep[start : start + len(texts)] = [not leakage.leaks(text) for text in texts]
        leaked = int((~keep).sum())
        rows = rows[keep]
    return Pool(source, column, rows, keys[rows], leaked)


class Positives:
    """For each row, the hashes of every ``y`` paired with the same ``x`` (and of ``x`` itself)."""

    def __init__(self, x_keys: np.ndarray, y_keys: np.ndarray) -> None:
        order = np.lexsort((y_keys, x_keys))
        self.x_sorted, self.y_sorted = x_keys[order], y_keys[order]
        self.x_keys = x_keys
        _, counts = np.unique(self.x_sorted, return_counts=True)
        self.largest_group = int(counts.max()) if len(counts) else 0

    def of(self, row: int) -> np.ndarray:
        key = self.x_keys[row]
        low, high = np.searchsorted(self.x_sorted, key, "left"), np.searchsorted(self.x_sorted, key, "right")
        return np.append(self.y_sorted[low:high], key)


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


# ---- the command ---------------------------------------------------------------------------------


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
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    if corpus is None:
        pool = build_pool(dataset, "y", y_keys, leakage, show_progress)
    else:
        if corpus_column not in corpus.column_names:
            raise DataFormatError("--corpus", f"has no column {corpus_column!r}; its columns are {corpus.column_names}")
        pool = build_pool(
            corpus, corpus_column, column_hashes(corpus, corpus_column, show_progress), leakage, show_progress
        )
    if len(pool.rows) == 0:
        raise DataFormatError(source_label or "data", "leaves no candidate texts after the benchmark check")
    positives = Positives(x_keys, y_keys)
    embed_started = time.perf_counter()
    folder = out_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    encode = encoder.encode
    pool_vectors = embed_to_disk(folder / "pool.npy", len(pool.rows), lambda a, b: pool.texts(range(a, b)),
                                 lambda t: encode(t, "y"), encode_chunk, show_progress, "embed pool")  # fmt: skip
    x_vectors = embed_to_disk(folder / "x.npy", len(dataset), lambda a, b: dataset[a:b]["x"],
                              lambda t: encode(t, "x"), encode_chunk, show_progress, "embed x")  # fmt: skip
    y_vectors = _positive_vectors(dataset, pool, y_keys, pool_vectors, folder, encode, encode_chunk, show_progress)
    embed_seconds = time.perf_counter() - embed_started

    search_started = time.perf_counter()
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
        scores, index = top_candidates(x_vectors[start:end], pool_vectors, depth, pool_chunk)
        queries = np.asarray(x_vectors[start:end], dtype=np.float32)
        positive_scores = (queries * np.asarray(y_vectors[start:end], dtype=np.float32)).sum(axis=1)
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
        rows = dataset[start:end]
        negatives = [[text_of[int(p)] for p in positions] for positions, _ in chosen]
        negative_scores = [[round(float(s), 5) for s in values] for _, values in chosen]
        table = pa.table({
            "x": rows["x"], "y": rows["y"], "negatives": negatives,
            "positive_score": positive_scores.astype(np.float32), "negative_scores": negative_scores,
        })  # fmt: skip
        stats = _block_stats(positive_scores, negative_scores, filters.num_negatives, drops)
        write_text_atomic(stats_file, json.dumps(stats))
        temporary = part.with_name(f".{part.name}.tmp")
        pq.write_table(table, temporary)
        os.replace(temporary, part)
    search_seconds = time.perf_counter() - search_started

    manifest = {
        "kind": "mined-negatives",
        "command": command,
        **settings,
        "counts": _merge_stats(sorted(stats_dir.glob("part-*.json")), filters.num_negatives),
        "pool": {"texts": len(pool.rows), "leaked_removed": pool.leaked},
        "score_bins": SCORE_BINS.round(3).tolist(),
        "seconds": {
            "embed": round(embed_seconds, 1),
            "search_and_write": round(search_seconds, 1),
            "total_this_run": round(time.perf_counter() - started, 1),
        },  # fmt: skip
    }
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _positive_vectors(
    dataset: Any, pool: Pool, y_keys: np.ndarray, pool_vectors: np.ndarray, folder: Path,
    encode: Callable[[list[str], str], np.ndarray], chunk: int, show_progress: bool,
) -> np.ndarray:  # fmt: skip
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


def _block_stats(positive: np.ndarray, negative_scores: list[list[float]], cap: int, drops: dict[str, int]) -> dict:
    counts = np.bincount([len(s) for s in negative_scores], minlength=cap + 1)
    flat = np.asarray([s for row in negative_scores for s in row], dtype=np.float64)
    margins = np.asarray([p - s for p, row in zip(positive, negative_scores, strict=True) for s in row])
    return {
        "rows": len(positive),
        "rows_by_negatives": counts.tolist(),
        "dropped": drops,
        "positive_scores": np.histogram(positive, SCORE_BINS)[0].tolist(),
        "negative_scores": np.histogram(flat, SCORE_BINS)[0].tolist(),
        "margins": np.histogram(margins, SCORE_BINS)[0].tolist(),
    }


def _merge_stats(files: Sequence[Path], cap: int) -> dict:
    total: dict[str, Any] = {"rows": 0, "rows_by_negatives": [0] * (cap + 1), "dropped": dict.fromkeys(DROP_REASONS, 0)}
    for name in ("positive_scores", "negative_scores", "margins"):
        total[name] = [0] * (len(SCORE_BINS) - 1)
    for path in files:
        stats = json.loads(path.read_text())
        total["rows"] += stats["rows"]
        for key in ("rows_by_negatives", "positive_scores", "negative_scores", "margins"):
            total[key] = [a + b for a, b in zip(total[key], stats[key], strict=True)]
        for reason, count in stats["dropped"].items():
            total["dropped"][reason] += count
    total["negatives"] = sum(k * n for k, n in enumerate(total["rows_by_negatives"]))
    total["rows_short"] = sum(total["rows_by_negatives"][:cap])
    return total


def load_corpus(path: str, column: str) -> Any:
    """Candidate texts from files (``--corpus``): the ``column`` of every row, memory-mapped."""
    import datasets

    from pairdata.trainsets import expand_files, format_of

    files = expand_files(path)
    corpus = datasets.load_dataset(format_of(files), data_files=files, split="train")
    if column not in corpus.column_names:
        raise DataFormatError(
            path, f"has no column {column!r} (--corpus-column); its columns are {corpus.column_names}"
        )
    return corpus.select_columns([column])


def load_mined(path: str, limit: int | None = None, streaming: bool = False) -> Any:
    """``data=mined``: the pairs and negatives a finished ``python -m pairdata mine --out PATH`` wrote."""
    from pairdata.trainsets import load_files

    folder = Path(path).expanduser()
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(
            f"data.path={path}: no finished mining run there (manifest.json is written last; rerun the same "
            "`python -m pairdata mine` command to finish it)"
        )
    return load_files(str(folder / "parts"), format="parquet", limit=limit, streaming=streaming)
