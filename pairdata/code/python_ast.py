"""Python functions with docstrings, found with the standard library's ``ast`` module.

``code`` is the function's source from its ``def`` line with the docstring's lines removed and
the block dedented; ``code_tokens`` come from ``tokenize`` without comments or layout tokens.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
import warnings

from pairdata.code.docstrings import Function
from pairdata.textnorm import TOKEN_RE

_SKIP_TOKENS = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
    tokenize.ENCODING,
}


def python_code_tokens(code: str) -> list[str]:
    """Tokens of ``code`` as Python's tokenizer sees them (strings stay one token)."""
    try:
        return [
            tok.string
            for tok in tokenize.generate_tokens(io.StringIO(code).readline)
            if tok.type not in _SKIP_TOKENS and tok.string
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return TOKEN_RE.findall(code)


class _Visitor(ast.NodeVisitor):
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.scope: list[str] = []
        self.functions: list[Function] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._extract(node)
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _extract(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        docstring = ast.get_docstring(node, clean=True)
        if not docstring or node.end_lineno is None:
            return
        doc_node = node.body[0]
        if doc_node.lineno <= node.lineno or doc_node.end_lineno is None:
            return  # docstring on the def line: cannot remove it by lines
        start, end = node.lineno, node.end_lineno
        original = textwrap.dedent("\n".join(self.lines[start - 1 : end]))
        kept = self.lines[start - 1 : doc_node.lineno - 1] + self.lines[doc_node.end_lineno : end]
        code = textwrap.dedent("\n".join(kept))
        self.functions.append(
            Function(
                name=node.name,
                qualified_name=".".join([*self.scope, node.name]),
                original_string=original,
                code=code,
                code_tokens=python_code_tokens(code),
                docstring=docstring,
                start_line=start,
                end_line=end,
            )
        )


def extract_python(text: str) -> list[Function]:
    """All functions and methods of a module that have a docstring.

    Raises:
        SyntaxError: the module does not parse (e.g. Python 2 code); the caller counts and skips it.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old code are not our concern
        tree = ast.parse(text)
    visitor = _Visitor(text.split("\n"))
    visitor.visit(tree)
    return visitor.functions
