"""BEIR datasets by name: download from a local HTTP server, verify, unzip atomically, evaluate; clear errors.

No test reaches the internet: a ``http.server`` on 127.0.0.1 serves tiny zips in BEIR's layout
(``<name>/corpus.jsonl``, ``<name>/queries.jsonl``, ``<name>/qrels/test.tsv``), and the URL base
is overridden through the benchmark's ``download_url`` or ``$CPT_BEIR_URL``.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import compose, write_beir

from eval.benchmarks import Context
from eval.benchmarks.beir import BeirBenchmark
from eval.data import BEIR_URL_BASE, DatasetDownloadError, beir_url, download_beir

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "felines such as cats purr and chase mice"},
    {"_id": "d2", "title": "Rockets", "text": "rockets burn fuel to reach orbit around the earth"},
    {"_id": "d3", "title": "Bread", "text": "bread is baked from flour water and yeast"},
]
QUERIES = [
    {"_id": "q1", "text": "do cats purr"},
    {"_id": "q2", "text": "how do rockets reach orbit"},
]
QRELS = [("q1", "d1", 1), ("q2", "d2", 1)]


class _Server:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1; paths in ``truncate`` stop after half their bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/beir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    yield served
    served.close()


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other tests in the process may have set HF_HUB_OFFLINE (a source loading a local model does).
    for name in ("CPT_OFFLINE", "HF_HUB_OFFLINE", "CPT_BEIR_URL"):
        monkeypatch.delenv(name, raising=False)


def _beir_zip(tmp_path: Path, name: str) -> bytes:
    """A zip laid out as BEIR's: one top-level ``<name>/`` folder."""
    source = write_beir(tmp_path / "src" / name, CORPUS, QUERIES, QRELS)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(source.rglob("*")):
            bundle.write(path, path.relative_to(source.parent).as_posix())
    return archive.read_bytes()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir()) if root.is_dir() else []


class _WordSource:
    """A dense stand-in: bag of hashed words, so a query finds the document sharing its words."""

    def fingerprint(self) -> str:
        return "words"

    def encode(self, texts, role):
        vectors = np.zeros((len(texts), 4096), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 4096] += 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_named_dataset_is_downloaded_verified_unzipped_and_evaluated(tmp_path: Path, server: _Server) -> None:
    data = _beir_zip(tmp_path, "scifact")
    server.files["/beir/scifact.zip"] = data
    root = tmp_path / "beir"
    bench = BeirBenchmark(
        str(root),
        ["scifact"],
        download_url=server.url,
        checksums={"scifact": _md5(data)},  # our tiny zip, not BEIR's published scifact.zip
        show_progress=False,
    )
    output = bench.run(Context.for_source(_WordSource(), "words", None, False))
    assert server.requests == ["/beir/scifact.zip"]
    assert _leftovers(root) == ["scifact"]  # no zip, no hidden temporary folder left behind
    assert sorted(p.name for p in (root / "scifact").iterdir()) == ["corpus.jsonl.gz", "qrels", "queries.jsonl"]
    scores = {score.key: score.value for score in output.scores}
    assert scores["beir/scifact/ndcg@10"] == pytest.approx(100.0)
    assert output.details["scifact"]["documents"] == 3
    # A second run finds the folder and does not download again.
    bench.run(Context.for_source(_WordSource(), "words", None, False))
    assert len(server.requests) == 1


def test_download_dir_and_env_url_through_the_config(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    from eval.run import run

    data = _beir_zip(tmp_path, "tinybeir")  # a name without a published md5: only the CRCs are checked
    server.files["/beir/tinybeir.zip"] = data
    monkeypatch.setenv("CPT_BEIR_URL", server.url)
    read_only_root = tmp_path / "shared-beir"  # nothing is written here: downloads go to download_dir
    cfg = compose(
        [
            "source=bm25",
            "benchmark=beir",
            "benchmark.datasets=[tinybeir]",
            f"benchmark.data_root={read_only_root}",
            f"benchmark.download_dir={tmp_path / 'downloads'}",
            "show_progress=false",
            "plot=false",
            f"output_dir={tmp_path / 'out'}",
        ]
    )
    assert cfg.benchmark.download_url == server.url
    record = run(cfg)
    assert record["scores"]["beir/tinybeir/recall@100"] == pytest.approx(100.0)
    assert record["data_files"]["tinybeir/corpus"] == str(tmp_path / "downloads" / "tinybeir" / "corpus.jsonl.gz")
    assert not read_only_root.exists()


def test_published_md5_mismatch_writes_nothing(tmp_path: Path, server: _Server) -> None:
    server.files["/beir/scifact.zip"] = _beir_zip(tmp_path, "scifact")  # not BEIR's bytes
    root = tmp_path / "beir"
    with pytest.raises(DatasetDownloadError, match=r"md5 [0-9a-f]{32} differs from the published 5f7d1de6"):
        download_beir("scifact", root, url_base=server.url, show_progress=False)
    assert _leftovers(root) == []


def test_truncated_download_is_a_clear_error_and_writes_nothing(tmp_path: Path, server: _Server) -> None:
    data = _beir_zip(tmp_path, "tinybeir")
    server.files["/beir/tinybeir.zip"] = data
    server.truncate.add("/beir/tinybeir.zip")
    root = tmp_path / "beir"
    with pytest.raises(DatasetDownloadError, match="truncated") as error:
        download_beir("tinybeir", root, url_base=server.url, show_progress=False)
    assert f"create the folder {root / 'tinybeir'}" in str(error.value)
    assert _leftovers(root) == []


def test_corrupt_zip_is_a_clear_error_and_writes_nothing(tmp_path: Path, server: _Server) -> None:
    data = bytearray(_beir_zip(tmp_path, "tinybeir"))
    start = data.index(b"corpus.jsonl.gz") + 40  # inside the first member's compressed bytes
    data[start : start + 16] = bytes(16)
    server.files["/beir/tinybeir.zip"] = bytes(data)
    root = tmp_path / "beir"
    with pytest.raises(DatasetDownloadError, match="corrupt zip|not a valid zip"):
        download_beir("tinybeir", root, url_base=server.url, md5=_md5(bytes(data)), show_progress=False)
    assert _leftovers(root) == []
    server.files["/beir/tinybeir.zip"] = b"PK\x03\x04 this is not a zip"
    with pytest.raises(DatasetDownloadError, match="not a valid zip"):
        download_beir("tinybeir", root, url_base=server.url, show_progress=False)
    assert _leftovers(root) == []


def test_zip_without_a_beir_folder_or_escaping_members_is_refused(tmp_path: Path, server: _Server) -> None:
    root = tmp_path / "beir"
    for members, message in (
        ({"tinybeir/readme.txt": "no corpus here"}, "holds no BEIR dataset"),
        ({"../evil.txt": "outside"}, "escapes its folder"),
    ):
        archive = tmp_path / "odd.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for member, text in members.items():
                bundle.writestr(member, text)
        server.files["/beir/tinybeir.zip"] = archive.read_bytes()
        with pytest.raises(DatasetDownloadError, match=message):
            download_beir("tinybeir", root, url_base=server.url, show_progress=False)
        assert _leftovers(root) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("variable", ["CPT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_error_names_the_folder_and_the_url(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "1")
    root = tmp_path / "beir"
    bench = BeirBenchmark(str(root), ["scifact"], show_progress=False)
    with pytest.raises(DatasetDownloadError) as error:
        bench.run(Context.for_source(_WordSource(), "words", None, False))
    message = str(error.value)
    assert f"{variable}=1 is set" in message
    assert f"create the folder {root / 'scifact'}" in message
    assert f"{BEIR_URL_BASE}/scifact.zip" in message
    assert server.requests == [] and not root.exists()
    monkeypatch.setenv(variable, "0")  # explicitly on again
    assert beir_url("scifact", server.url) == f"{server.url}/scifact.zip"


def test_unreachable_server_and_missing_dataset_are_clear_errors(tmp_path: Path, server: _Server) -> None:
    root = tmp_path / "beir"
    with pytest.raises(DatasetDownloadError, match=r"HTTP 404") as error:
        download_beir("nosuchset", root, url_base=server.url, show_progress=False)
    assert f"{server.url}/nosuchset.zip" in str(error.value)
    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now: "no network"
    with pytest.raises(DatasetDownloadError, match=r"could not be fetched .*create the folder"):
        download_beir("scifact", root, url_base=f"http://127.0.0.1:{port}", show_progress=False)
    assert not root.exists()  # nothing is created before the server answers


def test_download_off_or_a_path_keeps_the_plain_missing_folder_error(tmp_path: Path, server: _Server) -> None:
    from pairdata.errors import DataFormatError

    bench = BeirBenchmark(str(tmp_path), ["scifact"], download=False, download_url=server.url)
    with pytest.raises(DataFormatError, match=r"folder not found.*scifact\.zip"):
        bench.run(Context.for_source(_WordSource(), "words", None, False))
    bench = BeirBenchmark(str(tmp_path), [str(tmp_path / "elsewhere" / "scifact")], download_url=server.url)
    with pytest.raises(DataFormatError, match="folder not found"):
        bench.run(Context.for_source(_WordSource(), "words", None, False))
    assert server.requests == []
