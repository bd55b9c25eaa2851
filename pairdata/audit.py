"""Contamination audit: how much of every benchmark text set a checkpoint's training data contains.

``python -m pairdata audit CHECKPOINT_OR_RUN`` reads the checkpoint's training sets back from its
``train_config.yaml`` (:mod:`pairdata.provenance`), streams every training text (``x``, ``y`` and
each negative) once, and counts, per benchmark file under ``../shared/data`` and per built code
test split:

Counts are over each file's distinct texts (normalised; fields without a letter, such as scores
and ids, are not texts):

* ``exact``: benchmark texts whose normalised form (:func:`pairdata.textnorm.normalize`) equals a
  training text, and training texts equal to one of them;
* ``ngram``: benchmark texts sharing a 13-word sequence with a training text (GPT-3's contamination
  test, Brown et al. 2020, appendix C), and training texts containing one.

The benchmark side is indexed in memory (its n-gram hashes, sorted); training texts are only
streamed, so the audit's memory follows the benchmarks, not the training data. A training set that
cannot be read (files gone, a hub set offline, no manifest) is listed with ``status: "unknown"``
and the report says ``complete: false``: unknown never reads as zero. The result is
``contamination.json`` beside the checkpoint, written atomically; ``serve.export`` copies it into
the export and its model card.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairdata.leakage import gram_hashes, iter_benchmark_texts
from pairdata.progress import progress
from pairdata.provenance import TrainingSet, checkpoint_folder, read_train_config, training_sets
from pairdata.store import write_text_atomic
from pairdata.textnorm import sha256_file, stable_hash, words

logger = logging.getLogger(__name__)

REPORT = "contamination.json"
FORMAT_VERSION = 1
TEXT_BATCH = 1024


@dataclass
class BenchmarkSet:
    """One benchmark file (or code test split): its texts' full hashes and their n-gram hashes."""

    name: str
    path: str
    kind: str
    texts: int = 0
    full: list[int] = field(default_factory=list)
    grams: list[np.ndarray] = field(default_factory=list)  # per text, empty when shorter than n words
    seen: set[int] = field(default_factory=set)


class OverlapIndex:
    """Every benchmark set's text and n-gram hashes, with hit marks filled by :meth:`scan`.

    Args:
        sets: the benchmark sets, each already filled.
        ngram: the n-gram length the sets were hashed with.
    """

    def __init__(self, sets: Sequence[BenchmarkSet], ngram: int) -> None:
        self.sets = list(sets)
        self.ngram = ngram
        owners: dict[int, set[int]] = {}
        for number, benchmark in enumerate(self.sets):
            for full in benchmark.full:
                owners.setdefault(full, set()).add(number)
        self.full_owners = owners
        self.full_hit: set[int] = set()
        per_set = [np.unique(np.concatenate([np.zeros(0, np.uint64), *b.grams])) for b in self.sets]
        all_hashes = np.concatenate([np.zeros(0, np.uint64), *per_set])
        owner_ids = (np.full(h.size, n, np.int32) for n, h in enumerate(per_set))
        all_sets = np.concatenate([np.zeros(0, np.int32), *owner_ids])
        order = np.argsort(all_hashes, kind="stable")
        all_hashes, all_sets = all_hashes[order], all_sets[order]
        self.grams, starts = np.unique(all_hashes, return_index=True)  # sorted unique n-gram hashes
        self.gram_owner_start = np.append(starts, all_hashes.size)
        self.gram_owners = all_sets
        self.gram_hit = np.zeros(self.grams.size, bool)
        self.training_exact = np.zeros(len(self.sets), np.int64)
        self.training_ngram = np.zeros(len(self.sets), np.int64)

    def scan(self, text: str) -> None:
        """Count one training text against every set and mark the benchmark hashes it contains."""
        text_words = words(text)
        if not text_words:
            return
        full = stable_hash(" ".join(text_words))
        owners = self.full_owners.get(full)
        if owners:
            self.full_hit.add(full)
            self.training_exact[list(owners)] += 1
        if self.grams.size and len(text_words) >= self.ngram:
            hashes = gram_hashes(text_words, self.ngram)
            positions = np.searchsorted(self.grams, hashes)
            positions[positions >= self.grams.size] = 0
            matched = positions[self.grams[positions] == hashes]
            if matched.size:
                self.gram_hit[matched] = True
                sets = {int(s) for p in np.unique(matched)
                        for s in self.gram_owners[self.gram_owner_start[p] : self.gram_owner_start[p + 1]]}  # fmt: skip
                self.training_ngram[list(sets)] += 1

    def benchmark_counts(self) -> list[dict[str, Any]]:
        """Per set: texts, how many are in the training data (exact) or share an n-gram with it."""
        rows = []
        for number, benchmark in enumerate(self.sets):
            exact = sum(1 for full in benchmark.full if full in self.full_hit)
            dirty = 0
            for grams in benchmark.grams:
                if grams.size:
                    positions = np.searchsorted(self.grams, grams)
                    dirty += bool(self.gram_hit[positions].any())
            rows.append(
                {
                    "set": benchmark.name,
                    "path": benchmark.path,
                    "kind": benchmark.kind,
                    "texts": benchmark.texts,
                    "exact": exact,
                    "ngram": dirty,
                    "exact_fraction": round(exact / benchmark.texts, 6) if benchmark.texts else None,
                    "ngram_fraction": round(dirty / benchmark.texts, 6) if benchmark.texts else None,
                    "training_texts_exact": int(self.training_exact[number]),
                    "training_texts_ngram": int(self.training_ngram[number]),
                }
            )
        return rows


def _add_text(benchmark: BenchmarkSet, text: str, ngram: int) -> None:
    """Index a distinct text of the set; fields without a letter (scores, ids, years) are not texts."""
    text_words = words(text)
    if not text_words or not any(character.isalpha() for character in text):
        return
    full = stable_hash(" ".join(text_words))
    if full in benchmark.seen:
        return
    benchmark.seen.add(full)
    benchmark.texts += 1
    benchmark.full.append(full)
    benchmark.grams.append(gram_hashes(text_words, ngram) if len(text_words) >= ngram else np.zeros(0, np.uint64))


def benchmark_sets(benchmark_dir: Path | None, pairdata_dir: Path | None, ngram: int) -> list[BenchmarkSet]:
    """One set per benchmark file under ``benchmark_dir`` and per built ``code-*/test`` split."""
    sets: dict[Path, BenchmarkSet] = {}
    if benchmark_dir is not None:
        for path, text in iter_benchmark_texts(benchmark_dir):
            if path not in sets:
                relative = path.relative_to(benchmark_dir)
                sets[path] = BenchmarkSet(str(relative.parent), str(relative), "benchmark")
            _add_text(sets[path], text, ngram)
    found = list(sets.values())
    for test_file in sorted(pairdata_dir.glob("code-*/test.jsonl.gz")) if pairdata_dir is not None else []:
        from pairdata.pairs import iter_jsonl

        code_set = BenchmarkSet(f"pairdata/{test_file.parent.name}/test", str(test_file), "code test split")
        for _, record in iter_jsonl(test_file):
            for key in ("docstring_summary", "code"):
                _add_text(code_set, record.get(key) or "", ngram)
        found.append(code_set)
    return found


def iter_training_texts(dataset: Any) -> Iterator[str]:
    """Every ``x``, ``y`` and negative of a loaded training set, in batches (streams stay streams)."""
    names = [name for name in ("x", "y", "negatives") if name in (dataset.column_names or ())]
    for batch in dataset.iter(batch_size=TEXT_BATCH) if names else ():
        for name in names:
            for value in batch[name]:
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    yield from (item for item in value if isinstance(item, str))


def load_training_set(training_set: TrainingSet) -> Any:
    """The training set as its loader gives it (``num_negatives`` and other trainer keys removed)."""
    from hydra.utils import instantiate

    from pairdata.trainsets import TRAINING_OPTIONS

    config = {key: value for key, value in training_set.config.items() if key not in TRAINING_OPTIONS}
    return instantiate(config, _convert_="all")


def audit(
    checkpoint: str | Path,
    benchmark_dir: Path | None,
    pairdata_dir: Path | None,
    ngram: int = 13,
    show_progress: bool = True,
    command: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Audit ``checkpoint`` (or a run's newest checkpoint); write and return ``contamination.json``."""
    folder = checkpoint_folder(checkpoint)
    sets = training_sets(read_train_config(folder))
    benchmarks = benchmark_sets(benchmark_dir, pairdata_dir, ngram)
    index = OverlapIndex(benchmarks, ngram)
    logger.info("%d benchmark sets, %d texts, %d distinct %d-grams", len(benchmarks),
                sum(b.texts for b in benchmarks), index.grams.size, ngram)  # fmt: skip
    audited = []
    for training_set in sets:
        entry = training_set.to_dict()
        entry.pop("config")
        try:
            dataset = load_training_set(training_set)
        except Exception as error:  # any loader failure: files moved, hub offline, a bad config
            entry.update(status="unknown", reason=f"could not load: {type(error).__name__}: {error}")
            logger.warning("training set %s: %s", training_set.name, entry["reason"])
            audited.append(entry)
            continue
        texts = 0
        for text in progress(iter_training_texts(dataset), enabled=show_progress, desc=training_set.name, unit="text"):
            index.scan(text)
            texts += 1
        entry.update(status="audited", texts_scanned=texts)
        audited.append(entry)
    report = {
        "format_version": FORMAT_VERSION,
        "checkpoint": str(folder.resolve()),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "ngram": ngram,
        "normalisation": "NFKC, lower-cased, word characters only (pairdata.textnorm.normalize)",
        "benchmark_dir": None if benchmark_dir is None else str(benchmark_dir),
        "benchmark_files_sha256": {
            b.path: sha256_file(Path(benchmark_dir, b.path))
            for b in benchmarks
            if b.kind == "benchmark" and benchmark_dir is not None
        },  # fmt: skip
        "complete": all(entry["status"] == "audited" for entry in audited) and bool(benchmarks),
        "training_sets": audited,
        "benchmarks": index.benchmark_counts(),
        "not_audited": "the base model's pretraining data (not known to this repository)",
    }
    if not benchmarks:
        report["reason"] = "no benchmark texts found: pass --benchmark-dir (the shared/data folder)"
    path = folder / REPORT
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    return path, report


def markdown_table(report: Mapping[str, Any]) -> str:
    """The audit as Markdown (for the model card and the CLI): one row per benchmark set."""
    lines = [
        f"Overlap of the training data with benchmark texts (exact: normalised text equal; "
        f"{report['ngram']}-gram: a shared {report['ngram']}-word sequence).",
        "",
        "| benchmark file | texts | exact | exact % | 13-gram | 13-gram % |".replace("13", str(report["ngram"])),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["benchmarks"]:
        exact = "–" if row["exact_fraction"] is None else f"{100 * row['exact_fraction']:.2f}"
        ngram = "–" if row["ngram_fraction"] is None else f"{100 * row['ngram_fraction']:.2f}"
        label = row["path"] if row["kind"] == "benchmark" else row["set"]
        lines.append(f"| {label} | {row['texts']} | {row['exact']} | {exact} | {row['ngram']} | {ngram} |")
    unknown = [entry["name"] for entry in report["training_sets"] if entry["status"] != "audited"]
    if unknown:
        lines += ["", f"**Incomplete**: training sets not audited (unknown): {', '.join(unknown)}."]
    return "\n".join(lines)
