"""Functions with doc comments in Java, Go, JavaScript, PHP and Ruby, found with tree-sitter.

One walker serves every language; a :class:`TreeSitterSpec` says which node types are functions,
which enclose them (for ``Class.method`` names), how a doc comment looks (a ``/** */`` block, or
consecutive ``//``/``#`` lines), and which names are constructors or standard overrides. Grammars
come from the PyPI grammar wheels (``tree-sitter-java``, ...), loaded lazily.
"""

from __future__ import annotations

import importlib
import textwrap
from dataclasses import dataclass
from functools import cache

from pairdata.code.docstrings import Function, clean_block_comment, clean_line_comments

_STRING_TYPES = (
    "string",
    "string_literal",
    "template_string",
    "interpreted_string_literal",
    "raw_string_literal",
    "encapsed_string",
    "heredoc",
    "nowdoc",
    "character_literal",
)


@dataclass(frozen=True)
class TreeSitterSpec:
    """How to find documented functions in one language's syntax tree.

    Args:
        language: CodeSearchNet's language name.
        module: the grammar wheel's module; ``function`` its language function.
        function_types: node types that are functions.
        expression_function_types: anonymous function nodes, kept only when bound to a name
            (``var f = function ...``, ``a.b = () => ...``, ``{key: function ...}``).
        container_types: node types whose ``name`` child prefixes the function name.
        wrapper_types: statement nodes around a function that its doc comment precedes.
        doc_style: ``block`` (the last ``/** */`` comment) or ``line`` (adjacent line comments).
        line_marker: the line-comment marker for ``line`` style.
        excluded_names: constructors and standard overrides.
        dunder_excluded: drop every ``__name__``-style method (PHP magic methods).
    """

    language: str
    module: str
    function: str
    function_types: frozenset[str]
    container_types: frozenset[str]
    doc_style: str
    excluded_names: frozenset[str]
    expression_function_types: frozenset[str] = frozenset()
    wrapper_types: frozenset[str] = frozenset()
    line_marker: str = "//"
    dunder_excluded: bool = False


@cache
def _parser(module: str, function: str):
    import tree_sitter

    grammar = importlib.import_module(module)
    return tree_sitter.Parser(tree_sitter.Language(getattr(grammar, function)()))


def _code_tokens(node) -> list[str]:
    tokens: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if "comment" in current.type:
            continue
        if current.child_count == 0 or current.type in _STRING_TYPES:
            text = current.text.decode("utf-8", "replace")
            if text.strip():
                tokens.append(text)
            continue
        stack.extend(reversed(current.children))
    return tokens


def _name_text(node) -> str | None:
    name = node.child_by_field_name("name")
    return name.text.decode("utf-8", "replace") if name is not None else None


def _go_receiver(node) -> str | None:
    receiver = node.child_by_field_name("receiver")
    if receiver is None:
        return None
    stack = [receiver]
    while stack:
        current = stack.pop()
        if current.type == "type_identifier":
            return current.text.decode("utf-8", "replace")
        stack.extend(reversed(current.children))
    return None


class TreeSitterExtractor:
    """Extracts :class:`Function` objects from source text of one language."""

    def __init__(self, spec: TreeSitterSpec) -> None:
        self.spec = spec

    def parse(self, source: bytes):
        return _parser(self.spec.module, self.spec.function).parse(source)

    def extract(self, source: bytes) -> tuple[list[Function], bool]:
        """Return the documented functions and whether the file had syntax errors.

        A function whose own subtree has an error is skipped; the rest of the file is still used.
        """
        tree = self.parse(source)
        root = tree.root_node
        functions: list[Function] = []
        stack: list[tuple[object, tuple[str, ...]]] = [(root, ())]
        spec = self.spec
        while stack:
            node, scope = stack.pop()
            kind = node.type
            child_scope = scope
            if kind in spec.container_types:
                name = _name_text(node)
                if name:
                    child_scope = (*scope, name)
            elif kind in spec.function_types or kind in spec.expression_function_types:
                found = self._function(node, scope)
                if found is not None:
                    functions.append(found)
            stack.extend((child, child_scope) for child in reversed(node.children))
        functions.sort(key=lambda function: function.start_line)
        return functions, root.has_error

    def _bound_name(self, node) -> tuple[str | None, object]:
        """Name and statement anchor of a function expression bound to a name, else (None, node)."""
        parent = node.parent
        if parent is None:
            return None, node
        if parent.type == "variable_declarator":
            return _name_text(parent), parent
        if parent.type == "assignment_expression":
            left = parent.child_by_field_name("left")
            return (left.text.decode("utf-8", "replace").split(".")[-1] if left else None), parent
        if parent.type == "pair":
            key = parent.child_by_field_name("key")
            return (key.text.decode("utf-8", "replace").strip("'\"") if key else None), parent
        return None, node

    def _function(self, node, scope: tuple[str, ...]) -> Function | None:
        spec = self.spec
        if node.type in spec.expression_function_types:
            name, anchor = self._bound_name(node)
        else:
            name, anchor = _name_text(node), node
        if not name or node.has_error:
            return None
        while anchor.parent is not None and anchor.parent.type in spec.wrapper_types:
            anchor = anchor.parent
        docstring = self._doc_comment(anchor)
        if not docstring:
            return None
        qualified = name
        if spec.language == "go":
            receiver = _go_receiver(node)
            qualified = f"{receiver}.{name}" if receiver else name
        elif scope:
            qualified = ".".join([*scope, name])
        text = anchor.text.decode("utf-8", "replace")
        indent = anchor.start_point[1]
        code = " " * indent + text if indent else text
        code = textwrap.dedent(code)
        return Function(
            name=name,
            qualified_name=qualified,
            original_string=code,
            code=code,
            code_tokens=_code_tokens(anchor),
            docstring=docstring,
            start_line=anchor.start_point[0] + 1,
            end_line=anchor.end_point[0] + 1,
        )

    def _doc_comment(self, anchor) -> str | None:
        spec = self.spec
        # a first statement's comment may sit before the enclosing body node (Ruby's body_statement)
        while (
            anchor.prev_named_sibling is None
            and anchor.parent is not None
            and anchor.parent.start_point == anchor.start_point
        ):
            anchor = anchor.parent
        previous = anchor.prev_named_sibling
        if previous is None or "comment" not in previous.type:
            return None
        if anchor.start_point[0] - previous.end_point[0] > 1:
            return None  # a blank line separates the comment from the function
        if spec.doc_style == "block":
            text = previous.text.decode("utf-8", "replace")
            return clean_block_comment(text) if text.startswith("/**") else None
        comments = []
        current, next_start = previous, anchor.start_point[0]
        while current is not None and "comment" in current.type and next_start - current.end_point[0] <= 1:
            text = current.text.decode("utf-8", "replace")
            if not text.startswith(spec.line_marker):
                break
            comments.append(text)
            next_start = current.start_point[0]
            current = current.prev_named_sibling
        return clean_line_comments(list(reversed(comments)), spec.line_marker) if comments else None
