"""Benchmark data readers owned by the harness: BEIR-layout folders, and file hashing for provenance.

BEIR datasets can also be fetched by name (:func:`download_beir`): BEIR's public zip, checked
against its published md5 and the zip's CRCs, unzipped into a hidden temporary folder and renamed
into place, so a failed or interrupted download never leaves a half-written dataset folder.

SentEval-layout files (STS-B, SICK, MR, ..., MRPC) are read by ``pairdata.senteval``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairdata.errors import DataFormatError
from pairdata.pairs import iter_jsonl

logger = logging.getLogger(__name__)

BEIR_URL_BASE = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
BEIR_DOWNLOAD_URL = BEIR_URL_BASE + "/{name}.zip"
BEIR_URL_ENV = "CPT_BEIR_URL"  # replaces BEIR_URL_BASE (a mirror, or a local server in tests)
OFFLINE_ENVS = ("CPT_OFFLINE", "HF_HUB_OFFLINE")  # either set (to anything but 0/false/no/off): no downloads

# md5 of each public zip, as published in BEIR's README ("Available Datasets").
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class DatasetDownloadError(DataFormatError):
    """A BEIR dataset is absent and could not be fetched (offline, unreachable, corrupt or wrong zip).

    The message names the folder to create and the URL to fetch it from.
    """


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def join_document(title: str, text: str) -> str:
    """Title and text joined by a space, exactly as MTEB joins them (BEIR's convention)."""
    return f"{title} {text}".strip() if title else text


@dataclass
class CorpusIndex:
    """A BEIR corpus file scanned once and read back in row ranges, never held in memory whole.

    ``ids`` are in file order with duplicate ids dropped (the first record wins, as
    :func:`load_beir`); ``digest`` is the sha256 of the document texts in that order (the key of
    their embeddings); ``rows`` maps the ids asked for at scan time (qrels docs, query ids) to rows.
    """

    path: Path
    ids: list[str]
    digest: str
    rows: dict[str, int]
    lines: np.ndarray | None = None  # the file's line number of each row (None: every line but duplicates)
    duplicate_lines: frozenset[int] = frozenset()
    _cursor: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def scan(
        cls, path: Path, watch: set[str] | frozenset[str] = frozenset(), keep: set[str] | None = None
    ) -> CorpusIndex:
        """Index ``path``; ``watch``: ids whose rows to remember; ``keep``: index only these ids (a sample)."""
        ids: list[str] = []
        seen: set[str] = set()  # the ids' own strings: the list and the set share them
        duplicates: set[int] = set()
        lines: list[int] = []
        rows: dict[str, int] = {}
        digest = hashlib.sha256()
        for number, doc_id, title, text in iter_documents(path, need_title=True):
            if doc_id in seen:
                duplicates.add(number)
                continue
            seen.add(doc_id)
            if keep is not None:
                if doc_id not in keep:
                    continue
                lines.append(number)
            if doc_id in watch:
                rows[doc_id] = len(ids)
            ids.append(doc_id)
            digest.update(join_document(title, text).encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        if duplicates:
            logger.warning("%s: %d duplicate ids; the first record of each was kept", path, len(duplicates))
        if not ids:
            raise DataFormatError(path, "holds no records" if keep is None else "holds none of the sampled ids")
        chosen = None if keep is None else np.array(lines, dtype=np.int64)
        return cls(path, ids, digest.hexdigest(), rows, chosen, frozenset(duplicates))

    def texts(self, start: int, end: int) -> list[str]:
        """The document texts of rows ``[start, end)``; reading forward from the last call is one pass."""
        if self._cursor is None or self._cursor[0] > start:
            self._cursor = (0, self._documents())
        position, documents = self._cursor
        out = []
        while position < end:
            text = next(documents)
            if position >= start:
                out.append(text)
            position += 1
        self._cursor = (position, documents)
        return out

    def _documents(self) -> Iterator[str]:
        position = 0
        for number, _, title, text in iter_documents(self.path, need_title=True):
            if self.lines is None:
                if number not in self.duplicate_lines:
                    yield join_document(title, text)
            elif position < len(self.lines) and number == self.lines[position]:
                position += 1
                yield join_document(title, text)


@dataclass
class BeirDataset:
    """One BEIR dataset split: texts by id, graded qrels, and the files they came from.

    Loaded with ``corpus=False``, ``corpus`` is empty and ``corpus_index`` streams the documents.
    """

    name: str
    corpus: dict[str, dict[str, str]]  # doc id -> {"title": ..., "text": ...}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance
    files: dict[str, Path] = field(default_factory=dict)
    missing_qrel_docs: int = 0  # qrels rows whose doc id is not in the corpus
    missing_qrel_queries: int = 0  # qrels query ids with no query text
    corpus_index: CorpusIndex | None = None

    def document_text(self, doc_id: str) -> str:
        """Title and text joined by a space, exactly as MTEB joins them (BEIR's convention)."""
        doc = self.corpus[doc_id]
        return join_document(doc["title"], doc["text"])

    @property
    def documents(self) -> int:
        return len(self.corpus_index) if self.corpus_index is not None else len(self.corpus)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"):
        if candidate.is_file():
            return candidate
    raise DataFormatError(folder / f"{stem}.jsonl", f"file not found (nor {stem}.jsonl.gz) in the BEIR folder")


def iter_documents(path: Path, need_title: bool) -> Iterator[tuple[int, str, str, str]]:
    """``(line number, id, title, text)`` of every record of a BEIR ``corpus``/``queries`` file, checked."""
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
        yield number, doc_id, title if need_title else "", text


def _read_texts(path: Path, need_title: bool) -> dict[str, dict[str, str]]:
    records: dict[str, dict[str, str]] = {}
    duplicates = 0
    for _, doc_id, title, text in iter_documents(path, need_title):
        if doc_id in records:
            duplicates += 1
            continue
        records[doc_id] = {"title": title, "text": text}
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


def load_beir(
    folder: str | Path,
    split: str = "test",
    name: str | None = None,
    corpus: bool = True,
    max_queries: int | None = None,
    max_documents: int | None = None,
    sample_seed: int = 0,
) -> BeirDataset:
    """Read a BEIR-layout folder: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``.

    ``corpus=False`` keeps the documents on disk: only their ids are read (``corpus_index``), for
    corpora that should not sit in memory (HotpotQA, FEVER, MS MARCO: millions of passages).

    ``max_queries`` / ``max_documents`` give a fixed sample (``sample_seed``) for cheap estimates
    (evaluation during training): that many queries, and their relevant documents plus random
    others up to ``max_documents``. A sampled dataset is named ``NAME-qQ-dD`` so its scores are
    never mistaken for the full benchmark's.

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
            "elsewhere and unzip it there (or set benchmark.data_root); with a network, a dataset given by "
            "name is fetched by itself (benchmark.download=true)",
        )
    corpus_path, queries_path = _find(folder, "corpus"), _find(folder, "queries")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path)
    all_queries = _read_texts(queries_path, need_title=False)
    queries = {qid: all_queries[qid]["text"] for qid in qrels if qid in all_queries}
    missing_queries = len(qrels) - len(queries)
    if missing_queries:
        logger.warning("%s: %d query ids in qrels have no query text; they are skipped", qrels_path, missing_queries)
        qrels = {qid: docs for qid, docs in qrels.items() if qid in queries}
    rng = np.random.default_rng(sample_seed)
    if max_queries is not None and max_queries < len(queries):
        chosen = sorted(rng.choice(sorted(queries), size=max_queries, replace=False).tolist())
        queries = {qid: queries[qid] for qid in chosen}
        qrels = {qid: qrels[qid] for qid in chosen}
    watch = {d for docs in qrels.values() for d in docs} | set(queries)
    index = None
    if corpus:
        documents = _read_texts(corpus_path, need_title=True)
        present: Any = documents
        if max_documents is not None and max_documents < len(documents):
            keep = _document_sample(list(documents), watch, max_documents, rng)
            documents = {doc_id: doc for doc_id, doc in documents.items() if doc_id in keep}
    else:
        documents = {}
        index = CorpusIndex.scan(corpus_path, watch)
        present = index.rows
        if max_documents is not None and max_documents < len(index):
            index = CorpusIndex.scan(corpus_path, watch, keep=_document_sample(index.ids, watch, max_documents, rng))
    if max_queries is not None or max_documents is not None:
        name = f"{name}-q{len(queries)}-d{len(documents) if corpus else len(index)}"
    missing_docs = sum(1 for docs in qrels.values() for doc_id in docs if doc_id not in present)
    if missing_docs:
        logger.warning(
            "%s: %d qrels rows name doc ids absent from %s (kept as relevant but unretrievable, as upstream)",
            qrels_path,
            missing_docs,
            corpus_path,
        )
    return BeirDataset(
        name=name,
        corpus=documents,
        queries=queries,
        qrels=qrels,
        files={"corpus": corpus_path, "queries": queries_path, "qrels": qrels_path},
        missing_qrel_docs=missing_docs,
        missing_qrel_queries=missing_queries,
        corpus_index=index,
    )


def _document_sample(ids: list[str], relevant: set[str], size: int, rng: np.random.Generator) -> set[str]:
    """The relevant documents present, plus random others up to ``size`` in all."""
    keep = {doc_id for doc_id in ids if doc_id in relevant}
    others = [doc_id for doc_id in ids if doc_id not in keep]
    extra = max(0, min(size - len(keep), len(others)))
    if len(keep) > size:
        logger.info("the sampled queries' %d relevant documents exceed max_documents=%d; all are kept", len(keep), size)
    return keep | set(rng.choice(others, size=extra, replace=False).tolist() if extra else [])


# ---- fetching BEIR datasets by name ---------------------------------------------------------------


def offline_reason() -> str | None:
    """``"CPT_OFFLINE=1 is set"`` (or ``HF_HUB_OFFLINE``) when downloads are switched off, else ``None``."""
    for name in OFFLINE_ENVS:
        value = os.environ.get(name, "").strip().lower()
        if value and value not in ("0", "false", "no", "off"):
            return f"{name}={os.environ[name]} is set"
    return None


def beir_url(name: str, url_base: str | None = None) -> str:
    """The zip URL of dataset ``name``: ``url_base``, else ``$CPT_BEIR_URL``, else BEIR's public server."""
    base = url_base or os.environ.get(BEIR_URL_ENV) or BEIR_URL_BASE
    return f"{base.rstrip('/')}/{name}.zip"


def _how_to_get(name: str, folder: Path, url: str) -> str:
    return (
        f"create the folder {folder}: fetch {url} on a machine with network, unzip it and move its "
        f"{name}/ folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) to {folder}; "
        "or point benchmark.data_root at a folder that holds it"
    )


def download_beir(
    name: str,
    root: str | Path,
    url_base: str | None = None,
    md5: str | None = None,
    show_progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """Fetch BEIR dataset ``name`` into ``root/name`` and return that folder.

    Steps: refuse when offline (``$CPT_OFFLINE`` / ``$HF_HUB_OFFLINE``); connect (an unreachable
    server is reported as offline, before anything is written); stream the zip into a hidden
    temporary folder under ``root`` with a progress bar; check its size against Content-Length,
    its md5 against ``md5`` (default: BEIR's published md5 when the name has one) and every
    member's CRC; unzip there (members escaping it are refused); check the BEIR layout; rename the
    dataset folder to ``root/name``. Any failure removes the temporary folder, so ``root/name`` is
    either complete or absent.

    Raises:
        DatasetDownloadError: offline, unreachable, HTTP error, truncated or corrupt zip, checksum
            mismatch, or a zip without a BEIR dataset inside; the message says how to get it by hand.
    """
    if not _DATASET_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a BEIR dataset name (letters, digits, '.', '_', '-')")
    root = Path(root)
    target = root / name
    shown = target.absolute()
    url = beir_url(name, url_base)
    how = _how_to_get(name, shown, url)
    reason = offline_reason()
    if reason is not None:
        raise DatasetDownloadError(shown, f"BEIR dataset {name!r} not found, and downloads are off ({reason}); {how}")
    expected_md5 = md5 if md5 is not None else BEIR_MD5.get(name)
    with _open(url, timeout_s, shown, how) as response:
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.download-"))
        except OSError as error:
            raise DatasetDownloadError(
                shown, f"cannot write the download under {root} ({error}); set benchmark.download_dir, or {how}"
            ) from None
        try:
            archive = work / f"{name}.zip"
            digest = _stream(response, archive, show_progress, url, shown, how)
            if expected_md5 is not None and digest != expected_md5.lower():
                raise DatasetDownloadError(
                    shown, f"{url}: md5 {digest} differs from the published {expected_md5}; nothing was written; {how}"
                )
            extracted = work / "unzipped"
            _unzip(archive, extracted, url, shown, how)
            archive.unlink()
            folder = _dataset_folder(extracted, name)
            if folder is None:
                raise DatasetDownloadError(
                    shown, f"{url} holds no BEIR dataset (corpus.jsonl, queries.jsonl, qrels/); nothing was written"
                )
            try:
                os.rename(folder, target)
            except OSError:
                if not target.is_dir():  # another process may have finished the same download first
                    raise
                logger.info("%s appeared meanwhile; keeping it", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("BEIR dataset %s downloaded from %s into %s", name, url, target)
    return target


def _open(url: str, timeout_s: float, target: Path, how: str) -> Any:
    """``urlopen(url)``; an HTTP error or an unreachable server becomes a ``DatasetDownloadError``."""
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        raise DatasetDownloadError(target, f"{url}: HTTP {error.code} {error.reason}; {how}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DatasetDownloadError(
            target, f"BEIR dataset not found, and {url} could not be fetched ({reason}); {how}"
        ) from None


def _stream(response: Any, path: Path, show_progress: bool, url: str, target: Path, how: str) -> str:
    """Copy the response body into ``path`` with a progress bar; return its md5. Checks the length."""
    import http.client

    from tqdm.auto import tqdm

    digest = hashlib.md5()
    received = 0
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    try:
        with (
            path.open("wb") as handle,
            tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name, disable=not show_progress
            ) as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                handle.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    except http.client.IncompleteRead as error:
        received += len(error.partial)
    except OSError as error:  # the connection dropped mid-way
        raise DatasetDownloadError(target, f"{url}: download failed ({error}); nothing was written; {how}") from None
    if total is not None and received != total:
        raise DatasetDownloadError(
            target, f"{url}: download truncated ({received} of {total} bytes); nothing was written; {how}"
        )
    return digest.hexdigest()


def _unzip(archive: Path, destination: Path, url: str, target: Path, how: str) -> None:
    """Extract after checking every member's CRC and that no member escapes ``destination``."""
    destination.mkdir()
    try:
        with zipfile.ZipFile(archive) as bundle:
            bad = bundle.testzip()
            if bad is not None:
                raise DatasetDownloadError(
                    target, f"{url}: corrupt zip (CRC error in {bad}); nothing was written; {how}"
                )
            base = destination.resolve()
            for member in bundle.namelist():
                resolved = (destination / member).resolve()
                if resolved != base and base not in resolved.parents:
                    raise DatasetDownloadError(target, f"{url}: zip member {member!r} escapes its folder; refused")
            bundle.extractall(destination)
    except (zipfile.BadZipFile, EOFError) as error:
        raise DatasetDownloadError(target, f"{url}: not a valid zip ({error}); nothing was written; {how}") from None


def _is_beir_folder(folder: Path) -> bool:
    def has(stem: str) -> bool:
        return (folder / f"{stem}.jsonl").is_file() or (folder / f"{stem}.jsonl.gz").is_file()

    return has("corpus") and has("queries") and (folder / "qrels").is_dir()


def _dataset_folder(extracted: Path, name: str) -> Path | None:
    """The BEIR folder inside an unzipped archive: ``<name>/`` (BEIR's zips), the sole folder, or the root."""
    candidates = [extracted / name]
    folders = [path for path in extracted.iterdir() if path.is_dir() and not path.name.startswith("__MACOSX")]
    if len(folders) == 1:
        candidates.append(folders[0])
    candidates.append(extracted)
    return next((folder for folder in candidates if _is_beir_folder(folder)), None)
