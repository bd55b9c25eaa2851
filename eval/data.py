"""Benchmark data readers owned by the harness: BEIR-layout folders, and file hashing for provenance.

SentEval-layout files (STS-B, SICK, MR, ..., MRPC) are read by ``pairdata.senteval``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pairdata.errors import DataFormatError
from pairdata.pairs import iter_jsonl

logger = logging.getLogger(__name__)

BEIR_DOWNLOAD_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class BeirDataset:
    """One BEIR dataset split: texts by id, graded qrels, and the files they came from."""

    name: str
    corpus: dict[str, dict[str, str]]  # doc id -> {"title": ..., "text": ...}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance
    files: dict[str, Path] = field(default_factory=dict)
    missing_qrel_docs: int = 0  # qrels rows whose doc id is not in the corpus
    missing_qrel_queries: int = 0  # qrels query ids with no query text

    def document_text(self, doc_id: str) -> str:
        """Title and text joined by a space, exactly as MTEB joins them (BEIR's convention)."""
        doc = self.corpus[doc_id]
        return f"{doc['title']} {doc['text']}".strip() if doc["title"] else doc["text"]


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"):
        if candidate.is_file():
            return candidate
    raise DataFormatError(folder / f"{stem}.jsonl", f"file not found (nor {stem}.jsonl.gz) in the BEIR folder")


def _read_texts(path: Path, need_title: bool) -> dict[str, dict[str, str]]:
    records: dict[str, dict[str, str]] = {}
    duplicates = 0
    for number, record in iter_jsonl(path):
        doc_id = record.get("_id")
        if isinstance(doc_id, int):
            doc_id = str(doc_id)
        if not isinstance(doc_id, str) or not doc_id:
            raise DataFormatError(path, f"'_id' must be a non-empty string, got {doc_id!r:.80}", number)
        text = record.get("text")
        if not isinstance(text, str):
            raise DataFormatError(path, f"'text' must be a string, got {text!r:.80}", number)
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise DataFormatError(path, f"'title' must be a string, got {title!r:.80}", number)
        if doc_id in records:
            duplicates += 1
            continue
        records[doc_id] = {"title": title if need_title else "", "text": text}
    if duplicates:
        logger.warning("%s: %d duplicate ids; the first record of each was kept", path, duplicates)
    if not records:
        raise DataFormatError(path, "holds no records")
    return records


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (``query-id<TAB>corpus-id<TAB>score`` with a header row)."""
    if not path.is_file():
        raise DataFormatError(path, "file not found (BEIR keeps qrels in <dataset>/qrels/<split>.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not "".join(row).strip():
                continue
            if number == 1 and row[0] == "query-id":
                continue
            if len(row) != 3:
                raise DataFormatError(path, f"expected 3 tab-separated columns, got {len(row)}", number)
            try:
                score = int(row[2])
            except ValueError:
                raise DataFormatError(path, f"score must be an integer, got {row[2]!r}", number) from None
            qrels.setdefault(row[0], {})[row[1]] = score
    if not qrels:
        raise DataFormatError(path, "holds no qrels")
    return qrels


def load_beir(folder: str | Path, split: str = "test", name: str | None = None) -> BeirDataset:
    """Read a BEIR-layout folder: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``.

    Only queries that have qrels are kept. Qrels rows whose doc id is not in the corpus are kept (they
    count as relevant but unretrievable, as upstream) and counted with a warning (ArguAna has 5).

    Raises:
        DataFormatError: a missing folder or file, or a malformed line (naming file and line).
    """
    folder = Path(folder)
    name = name or folder.name
    if not folder.is_dir():
        raise DataFormatError(
            folder,
            f"BEIR dataset folder not found; offline, download {BEIR_DOWNLOAD_URL.format(name=name)} "
            "elsewhere and unzip it there (or set benchmark.data_root)",
        )
    corpus_path, queries_path = _find(folder, "corpus"), _find(folder, "queries")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path)
    corpus = _read_texts(corpus_path, need_title=True)
    all_queries = _read_texts(queries_path, need_title=False)
    queries = {qid: all_queries[qid]["text"] for qid in qrels if qid in all_queries}
    missing_queries = len(qrels) - len(queries)
    if missing_queries:
        logger.warning("%s: %d query ids in qrels have no query text; they are skipped", qrels_path, missing_queries)
        qrels = {qid: docs for qid, docs in qrels.items() if qid in queries}
    missing_docs = sum(1 for docs in qrels.values() for doc_id in docs if doc_id not in corpus)
    if missing_docs:
        logger.warning(
            "%s: %d qrels rows name doc ids absent from %s (kept as relevant but unretrievable, as upstream)",
            qrels_path,
            missing_docs,
            corpus_path,
        )
    return BeirDataset(
        name=name,
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        files={"corpus": corpus_path, "queries": queries_path, "qrels": qrels_path},
        missing_qrel_docs=missing_docs,
        missing_qrel_queries=missing_queries,
    )
