"""Readers (reST, man pages, Wikipedia XML, Markdown), chunk pairs and search pairs."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

from pairdata.text.build import build_text, chunk_pairs, folder_text_source, search_pairs
from pairdata.text.readers import Document, read_man, read_plain, read_rst, read_wikipedia_xml

RST = """
:mod:`json` --- JSON encoder
============================

.. module:: json
   :synopsis: Encode and decode the JSON format.

Use :func:`dumps` to serialise an object (see :ref:`the table <py-to-json>`) into a ``str``.

Basic usage of the module
-------------------------

.. function:: dumps(obj, *, skipkeys=False,
                    indent=None)

   Serialize *obj* to a JSON formatted :class:`str`.

Example::

    >>> import json
    x = 1

.. code-block:: python

   print("hidden")

After the example the text goes on.
"""

MAN = r""".\" comment
.TH LS 1
.SH NAME
ls \- list directory contents
.SH SYNOPSIS
.B ls
[\fIOPTION\fR]...
.SH DESCRIPTION
List information about the FILEs (the current directory by default).
.PP
Sort entries alphabetically if none of
.BR \-cftuvSUX " nor " \-\-sort
is specified.
.SH SEE ALSO
dir(1)
"""

WIKI = """<mediawiki><page><title>Anarchism</title><revision><text>
'''Anarchism''' is a [[political philosophy|philosophy]] that rejects {{nowrap|all}} \
hierarchy.&lt;ref&gt;cite&lt;/ref&gt;

== History ==
The history of anarchism goes back to [[prehistory]].
* a list item
</text></revision></page>
<page><title>AccessibleComputing</title><revision>
<text>#REDIRECT [[Computer accessibility]]</text></revision></page>
</mediawiki>"""


def test_rst_reader_strips_markup_and_code() -> None:
    (doc,) = read_rst("library/json.rst.txt", RST.encode())
    assert doc.title == "json --- JSON encoder"
    headings = [heading for heading, _ in doc.sections]
    assert headings == ["json --- JSON encoder", "Basic usage of the module"]
    intro, usage = doc.sections[0][1], doc.sections[1][1]
    assert "Use dumps to serialise an object (see the table) into a str." in intro
    assert "Serialize obj to a JSON formatted str." in usage
    assert "hidden" not in doc.text and ">>>" not in doc.text and "indent=None" not in doc.text
    assert "After the example the text goes on." in usage


def test_man_reader_name_query_and_description() -> None:
    (doc,) = read_man("man1/ls.1.gz", gzip.compress(MAN.encode()))
    assert doc.query == "list directory contents"
    assert doc.title == "ls - list directory contents"
    description = dict(doc.sections)["DESCRIPTION"]
    assert description.startswith("List information about the FILEs")
    assert "-cftuvSUX nor --sort" in description
    assert "SEE ALSO" not in dict(doc.sections)
    assert read_man("man3/alias.3", b".so man3/other.3\n") == []


def test_wikipedia_reader_cleans_wikitext_and_skips_redirects() -> None:
    docs = read_wikipedia_xml("enwiki.xml.bz2", bz2.compress(WIKI.encode()))
    assert [doc.title for doc in docs] == ["Anarchism"]
    lead = docs[0].sections[0][1]
    assert lead == "Anarchism is a philosophy that rejects hierarchy."
    assert dict(docs[0].sections)["History"] == "The history of anarchism goes back to prehistory."


def test_chunk_pairs_are_adjacent_disjoint_and_drop_short_tails() -> None:
    doc = Document("d", "t", [("", " ".join(f"w{i}" for i in range(100)))])
    pairs = list(chunk_pairs(doc, chunk_tokens=20, min_chunk_tokens=10))
    assert len(pairs) == 2
    assert pairs[0][0].split()[0] == "w0" and pairs[0][1].split()[0] == "w20"
    assert pairs[1][0].split()[0] == "w40" and pairs[1][1].split()[-1] == "w79"  # w80..99 has no partner


def test_search_pairs_heading_to_section() -> None:
    (doc,) = read_plain(
        "guide.md",
        b"# Guide\n\nIntro words " * 1
        + b"here " * 20
        + b"\n\n## Installing the package offline\n\n"
        + b"body " * 30
        + b"\n```\ncode\n```\n",
    )
    pairs = list(search_pairs(doc, max_doc_tokens=25, min_doc_tokens=5))
    assert ("title_body", "Guide", "Intro words " + " ".join(["here"] * 20)) == pairs[0]
    kind, query, body = pairs[1]
    assert (kind, query) == ("heading_section", "Installing the package offline")
    assert len(body.split()) == 25 and "code" not in body


def test_build_text_from_a_folder(tmp_path: Path, cache) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for number in range(20):
        # letters only (a mostly-digit chunk counts as boilerplate): digits spelled as a..j
        words = " ".join(
            "word" + f"{number}x{i}".translate(str.maketrans("0123456789", "abcdefghij")) for i in range(300)
        )
        (docs / f"note{number}.txt").write_text(words)
    (docs / "broken.txt").write_bytes(b"\xff\xfe not utf-8 \xff")
    manifest = build_text(
        "neighbors",
        data_dir=tmp_path / "data",
        cache=cache,
        leakage=None,
        sources=[folder_text_source(str(docs))],
        chunk_tokens=64,
        min_chunk_tokens=16,
        show_progress=False,
    )
    assert manifest["counts"]["splits"]["train"] + manifest["counts"]["splits"]["valid"] == 20 * 2
    assert manifest["sources"][0]["stats"]["unparsable_UnicodeDecodeError"] == 1
    with gzip.open(tmp_path / "data" / "text-neighbors" / "train.jsonl.gz", "rt") as handle:
        record = json.loads(handle.readline())
    assert len(record["x"].split()) == 64 and record["kind"] == "neighbors"


def test_build_search_from_a_local_hugging_face_dataset(tmp_path: Path) -> None:
    from pairdata.cli import main

    folder = tmp_path / "hf"
    folder.mkdir()
    rows = [
        {"title": f"Lighthouse number {n}", "text": "The keeper trimmed the wick at dusk. " * 10 + str(n)}
        for n in range(6)
    ]
    rows.append({"title": "empty", "text": None})
    (folder / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    argv = [
        "build",
        "search",
        f"--hf-dataset={folder}",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-benchmark-check",
        "--quiet",
        "--near-threshold",
        "1.0",
        "--fractions",
        "train=1.0",
    ]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "data" / "text-search" / "manifest.json").read_text())
    assert manifest["counts"]["splits"] == {"train": 6}
    assert manifest["sources"][0]["stats"]["unparsable_row"] == 1
    with gzip.open(tmp_path / "data" / "text-search" / "train.jsonl.gz", "rt") as handle:
        assert json.loads(handle.readline())["x"].startswith("Lighthouse number")
