"""Build one language's CodeSearchNet-style dataset: extract, filter, dedup, split, de-leak, publish.

Output (``DATA_DIR/code-LANGUAGE/``): ``train.jsonl.gz``, ``valid.jsonl.gz``, ``test.jsonl.gz`` in
CodeSearchNet's jsonl schema (plus ``docstring_summary``, ``source``, ``group``) and
``manifest.json``. Per-source extractions are kept in the partial folder until the build is
published, so an interrupted build resumes from the first unfinished source.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from pairdata.code.docstrings import CSN_FIELDS, is_test_path, reject_reason, to_record
from pairdata.code.languages import DEFAULT_CODE_SOURCES, LanguageInfo, language_info
from pairdata.dedup import DuplicateFilter
from pairdata.leakage import LeakageIndex
from pairdata.manifest import base_manifest, timing_summary
from pairdata.progress import progress
from pairdata.sources import Source, SourceCache, SourceSpec, iter_files, resolve
from pairdata.splits import DEFAULT_FRACTIONS, assign_splits
from pairdata.store import partial_dir, publish, read_jsonl_gz, write_jsonl_gz

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MAX_FILE_BYTES = 1_000_000  # larger files are generated bundles (three.module.js) or data tables


def _keep_file(info: LanguageInfo):
    def keep(relpath: str) -> bool:
        name = relpath.rsplit("/", 1)[-1]
        if not name.endswith(info.extensions) or ".min." in name:
            return False
        return not is_test_path(relpath)

    return keep


def extract_source(
    source: Source, info: LanguageInfo, *, limit_files: int | None = None, show_progress: bool = False
) -> tuple[list[dict], dict]:
    """Extract the filtered pair records of one source.

    Returns:
        ``(records, stats)``; ``stats`` counts files read and skipped (``unreadable``,
        ``undecodable``, ``unparsable``, ``too_large``), files with syntax errors that were still
        used (``partial_parse``), functions found, and each filter's rejections.
    """
    started = time.perf_counter()
    stats: Counter = Counter()
    records: list[dict] = []
    repo = source.spec.package or source.name
    files = iter_files(source, _keep_file(info), max_bytes=MAX_FILE_BYTES, limit=limit_files)
    for relpath, content in progress(files, enabled=show_progress, desc=f"{info.language}:{source.name}", unit="file"):
        stats["files_read"] += 1
        try:
            functions, had_errors = info.extract(content)
        except UnicodeDecodeError:
            stats["undecodable"] += 1
            continue
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            stats["unparsable"] += 1
            continue
        if had_errors:
            stats["partial_parse"] += 1
        for function in functions:
            stats["functions_with_doc"] += 1
            reason = reject_reason(function, info.excluded_names, info.dunder_excluded)
            if reason:
                stats[f"filtered_{reason}"] += 1
                continue
            records.append(
                to_record(
                    function,
                    repo=repo,
                    path=relpath,
                    language=info.language,
                    sha=source.version,
                    uri=source.uri,
                    source=source.name,
                    group=source.group_of(relpath),
                )
            )
    stats.update(source.stats)
    stats["pairs"] = len(records)
    seconds = time.perf_counter() - started
    entry = source.manifest_entry()
    entry["stats"] = dict(stats)
    entry["extract_seconds"] = round(seconds, 2)
    return records, entry


def build_code(
    language: str,
    *,
    data_dir: str | Path,
    cache: SourceCache,
    leakage: LeakageIndex | None,
    sources: Sequence[SourceSpec] | None = None,
    name: str | None = None,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: str = "pairdata",
    near_threshold: float = 0.8,
    limit_files: int | None = None,
    show_progress: bool = True,
    command: str | None = None,
) -> dict:
    """Build ``DATA_DIR/NAME`` (default ``code-LANGUAGE``) and return its manifest.

    Args:
        language: one of ``pairdata.code.languages.LANGUAGES``.
        data_dir: where datasets are written.
        cache: fetches registry sources.
        leakage: benchmark texts to keep out of train/valid (``None`` skips the benchmark check;
            the code test split is always removed from train/valid).
        sources: inputs; defaults to the pinned offline sources of ``language``.
        name: dataset name.
        fractions: split shares by pair count; groups (repositories/packages) never straddle splits.
        seed: split seed.
        near_threshold: Jaccard threshold of the near-duplicate filter.
        limit_files: read at most this many files per source (quick runs).
        show_progress: tqdm bars.
        command: the command line, recorded in the manifest.
    """
    started = time.perf_counter()
    info = language_info(language)
    name = name or f"code-{language}"
    specs = list(sources) if sources is not None else DEFAULT_CODE_SOURCES[language]
    work = partial_dir(data_dir, name)
    extract_dir = work / "extract"
    extract_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = json.dumps(
        {"language": language, "sources": [vars(spec) for spec in specs], "limit_files": limit_files},
        sort_keys=True,
    )

    records: list[dict] = []
    source_entries: list[dict] = []
    for spec in specs:
        done = extract_dir / f"{spec.name}.json"
        data = extract_dir / f"{spec.name}.jsonl.gz"
        if done.is_file() and data.is_file():
            entry = json.loads(done.read_text())
            if entry.get("fingerprint") == fingerprint:
                log.info("resuming: %s already extracted", spec.name)
                records.extend(read_jsonl_gz(data))
                source_entries.append(entry)
                continue
        source = resolve(spec, cache)
        found, entry = extract_source(source, info, limit_files=limit_files, show_progress=show_progress)
        entry["fingerprint"] = fingerprint
        write_jsonl_gz(data, found)
        done.write_text(json.dumps(entry))
        records.extend(found)
        source_entries.append(entry)
    extracted = len(records)

    # exact + near duplicates over code tokens, first occurrence kept (CSN's dedup)
    dedup = DuplicateFilter(threshold=near_threshold)
    unique = [
        record
        for record in progress(records, enabled=show_progress, desc=f"{language}:dedup", unit="fn")
        if dedup.check(record["code_tokens"]) is None
    ]

    group_sizes = Counter(record["group"] for record in unique)
    assignment = assign_splits(group_sizes, fractions, seed=seed)
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for record in unique:
        split = assignment[record["group"]]
        record["partition"] = split
        by_split.setdefault(split, []).append(record)

    # nothing of the test split, nor of a benchmark, may be trained on
    test_index = LeakageIndex()
    for record in by_split.get("test", []):
        test_index.add_exact(record["docstring_summary"], by_sentence=False)
        test_index.add_exact(record["code"], by_sentence=False)
    dropped: Counter = Counter()
    for split in ("train", "valid"):
        kept = []
        for record in by_split.get(split, []):
            x, y = record["docstring_summary"], record["code"]
            if test_index.leaks(x) or test_index.leaks(y):
                dropped[f"{split}_code_test_split"] += 1
            elif leakage is not None and (leakage.leaks(x) or leakage.leaks(y)):
                dropped[f"{split}_benchmark"] += 1
            else:
                kept.append(record)
        by_split[split] = kept

    counts = {}
    for split, split_records in by_split.items():
        counts[split] = write_jsonl_gz(work / f"{split}.jsonl.gz", split_records)
    seconds = time.perf_counter() - started
    files_read = sum(entry["stats"].get("files_read", 0) for entry in source_entries)
    extract_seconds = sum(entry["extract_seconds"] for entry in source_entries)
    manifest = base_manifest(
        name,
        "code",
        {
            "language": language,
            "fractions": dict(fractions),
            "seed": seed,
            "near_threshold": near_threshold,
            "limit_files": limit_files,
        },
        command=command,
    )
    manifest.update(
        {
            "language": language,
            "fields": [*CSN_FIELDS, "docstring_summary", "source", "group"],
            "pair_fields": {"x": "docstring_summary", "y": "code"},
            "sources": source_entries,
            "counts": {
                "extracted_pairs": extracted,
                "exact_duplicates": dedup.exact_duplicates,
                "near_duplicates": dedup.near_duplicates,
                "after_dedup": len(unique),
                "leakage_dropped": dict(dropped),
                "splits": counts,
                "groups": {split: sum(1 for value in assignment.values() if value == split) for split in SPLITS},
            },
            "leakage": leakage.summary() if leakage is not None else None,
            "timing": timing_summary(seconds, extract_seconds, files_read, sum(counts.values())),
        }
    )
    publish(data_dir, name, manifest)
    return manifest
