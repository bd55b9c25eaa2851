"""Doc-comment cleaning, the CodeSearchNet record schema, and CSN's function filters.

Reference: Husain et al., "CodeSearchNet Challenge: Evaluating the State of Semantic Code Search",
arXiv:1909.09436, section 2 (the summary is the docstring's first paragraph; pairs with a summary
under 3 tokens, functions under 3 lines, test code, constructors and standard extension methods
such as ``__str__`` and ``toString`` are dropped).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from pairdata.textnorm import tokenize_text

CSN_FIELDS = (
    "repo",
    "path",
    "func_name",
    "original_string",
    "language",
    "code",
    "code_tokens",
    "docstring",
    "docstring_tokens",
    "sha",
    "url",
    "partition",
)
"""CodeSearchNet's jsonl fields in its order; records add ``docstring_summary``, ``source``, ``group``."""

MIN_DOCSTRING_TOKENS = 3
MIN_CODE_LINES = 3

_SECTION_START = re.compile(
    r"^\s*(?:[:@]\w|\.\. |>>>|(?:Args|Arguments|Parameters|Params|Returns?|Raises|Yields|Examples?|Notes?"
    r"|See Also|Attributes|Throws|Usage)\s*:?\s*$)",
    re.IGNORECASE,
)
_INLINE_TAG = re.compile(r"\{@(\w+)\s*([^}]*)\}")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEST_DIRS = {
    "test",
    "tests",
    "testing",
    "__tests__",
    "spec",
    "specs",
    "testdata",
    "test_data",
    "fixtures",
    "idle_test",
    "unittests",
}
_TEST_FILE = re.compile(r"(^test_|_test\.|\.test\.|\.spec\.|_spec\.rb$|Tests?\.java$|^test\.)", re.IGNORECASE)


def _inline_tag(match: re.Match) -> str:
    """``{@code x}`` -> ``x``; ``{@link Type#member label}`` -> ``label`` (else ``Type.member``)."""
    tag, content = match.group(1), match.group(2).strip()
    if tag in {"link", "linkplain", "see"}:
        reference, _, label = content.partition(" ")
        return label.strip() or reference.strip("#").replace("#", ".")
    return content


def clean_block_comment(comment: str) -> str:
    """The text of a ``/** ... */`` comment (Javadoc, JSDoc, PHPDoc), leading ``*`` removed."""
    body = comment.strip()
    body = re.sub(r"^/\*+!?", "", body)
    body = re.sub(r"\*+/$", "", body)
    lines = [re.sub(r"^\s*\*? ?", "", line) for line in body.split("\n")]
    text = "\n".join(lines)
    text = _INLINE_TAG.sub(_inline_tag, text)
    text = _HTML_TAG.sub(" ", text)
    return html.unescape(text).strip()


def clean_line_comments(comments: list[str], marker: str) -> str:
    """The text of consecutive line comments (``//`` in Go, ``#`` in Ruby)."""
    lines = []
    for comment in comments:
        for line in comment.split("\n"):
            line = line.strip()
            if line.startswith(marker):
                line = line[len(marker) :]
                line = line[1:] if line.startswith(" ") else line
            lines.append(line.rstrip())
    if lines and lines[0].strip().lower().startswith("call-seq:"):  # Ruby RDoc signature block
        while lines and lines[0].strip():
            lines.pop(0)
    return "\n".join(lines).strip()


def summary(docstring: str) -> str:
    """The docstring's first paragraph, stopped at a tag or section line, whitespace collapsed."""
    kept = []
    for line in docstring.strip().split("\n"):
        if not line.strip():
            if kept:
                break
            continue
        if _SECTION_START.match(line):
            break
        kept.append(line.strip())
    return " ".join(" ".join(kept).split())


def is_test_path(path: str) -> bool:
    """True for files CSN would treat as tests (test folders, ``test_*.py``, ``*_test.go``, ...)."""
    parts = PurePosixPath(path).parts
    return any(part.lower() in _TEST_DIRS for part in parts[:-1]) or bool(_TEST_FILE.search(parts[-1]))


@dataclass(frozen=True)
class Function:
    """A function with its doc comment, as found by an extractor (before filtering)."""

    name: str
    qualified_name: str
    original_string: str
    code: str
    code_tokens: list[str]
    docstring: str
    start_line: int
    end_line: int


def reject_reason(function: Function, excluded_names: frozenset[str], dunder_excluded: bool) -> str | None:
    """Why CSN's filters drop ``function`` (a counter key), or ``None`` when it is kept."""
    name = function.name
    if "test" in name.lower():
        return "test_function"
    if name in excluded_names or (dunder_excluded and name.startswith("__") and name.endswith("__")):
        return "constructor_or_override"
    if len(tokenize_text(summary(function.docstring))) < MIN_DOCSTRING_TOKENS:
        return "short_docstring"
    if len([line for line in function.code.split("\n") if line.strip()]) < MIN_CODE_LINES:
        return "short_function"
    return None


def to_record(
    function: Function, *, repo: str, path: str, language: str, sha: str, uri: str, source: str, group: str
) -> dict:
    """The CodeSearchNet jsonl record of a kept function (``partition`` is filled in by the split)."""
    short = summary(function.docstring)
    return {
        "repo": repo,
        "path": path,
        "func_name": function.qualified_name,
        "original_string": function.original_string,
        "language": language,
        "code": function.code,
        "code_tokens": function.code_tokens,
        "docstring": function.docstring,
        "docstring_tokens": tokenize_text(short),
        "sha": sha,
        "url": f"{uri}/{path}#L{function.start_line}-L{function.end_line}",
        "partition": None,
        "docstring_summary": short,
        "source": source,
        "group": group,
    }
