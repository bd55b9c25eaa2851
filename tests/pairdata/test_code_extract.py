"""Function extraction and CodeSearchNet's filters, per language, on tiny in-memory sources."""

from __future__ import annotations

import pytest

from pairdata.code.docstrings import clean_block_comment, is_test_path, reject_reason, summary
from pairdata.code.languages import LANGUAGES, language_info
from tests.pairdata.conftest import DOC


def kept(language: str, text: str) -> dict[str, str]:
    info = language_info(language)
    functions, had_errors = info.extract(text.encode())
    assert not had_errors
    return {
        f.qualified_name: summary(f.docstring)
        for f in functions
        if reject_reason(f, info.excluded_names, info.dunder_excluded) is None
    }


def test_python_keeps_documented_functions_and_applies_filters() -> None:
    found = kept("python", DOC["python"][1])
    # tiny (short docstring + short body), undocumented, test_*, __init__ and a 1-token docstring are dropped
    assert found == {
        "area": "Compute the area of a rectangle from its sides.",
        "Shape.perimeter": "Return the perimeter of the shape scaled by a factor.",
    }


def test_python_code_has_docstring_removed() -> None:
    info = language_info("python")
    functions, _ = info.extract(DOC["python"][1].encode())
    area = next(f for f in functions if f.name == "area")
    assert '"""' not in area.code and '"""' in area.original_string
    assert area.code.startswith("def area(width, height):")
    assert area.code_tokens[:3] == ["def", "area", "("]


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("java", {"Stack.push": "Pushes an item onto the top of this Stack instance."}),
        ("go", {"Reverse": "Reverse returns its argument string reversed rune-wise from left to right."}),
        ("javascript", {"clamp": "Clamps a number between a lower and an upper bound."}),
        ("php", {"formatUserName": "Formats a user name for display in page headers."}),
        ("ruby", {"Demo.total": "Returns the sum of all elements of the array passed in."}),
    ],
)
def test_tree_sitter_languages(language: str, expected: dict[str, str]) -> None:
    # Java's constructor and toString are dropped; the doc comment is cleaned of tags and markup
    assert kept(language, DOC[language][1]) == expected


def test_javascript_bound_function_expressions_and_methods() -> None:
    source = """
/** Multiplies the two given values together. */
Calc.prototype.mul = function (a, b) {
  const c = a * b;
  return c;
};
export class Vec {
  /** Squared length of this vector instance. */
  lengthSq() {
    const x = this.x;
    return x * x;
  }
}
"""
    assert kept("javascript", source) == {
        "mul": "Multiplies the two given values together.",
        "Vec.lengthSq": "Squared length of this vector instance.",
    }


def test_comment_separated_by_blank_line_is_not_a_docstring() -> None:
    source = "package a\n\n// Orphan comment that is not attached here.\n\nfunc F() int {\n\tx := 1\n\treturn x\n}\n"
    assert kept("go", source) == {}


def test_file_with_syntax_error_still_yields_its_good_functions() -> None:
    info = language_info("java")
    source = DOC["java"][1] + "\nclass Broken { void f( { }\n"
    functions, had_errors = info.extract(source.encode())
    assert had_errors
    assert "Stack.push" in {f.qualified_name for f in functions}


def test_python_syntax_error_raises_for_the_builder_to_count() -> None:
    with pytest.raises(SyntaxError):
        language_info("python").extract(b"def broken(:\n    pass\n")


def test_clean_block_comment_and_summary() -> None:
    text = clean_block_comment("/**\n * Returns the <b>first</b> {@link List#get element}.\n *\n * @return x\n */")
    assert summary(text) == "Returns the first element."
    assert summary("Line one\ncontinues.\n:param x: no") == "Line one continues."


@pytest.mark.parametrize(
    ("path", "is_test"),
    [
        ("pkg/tests/helpers.py", True),
        ("pkg/test_core.py", True),
        ("net/http/server_test.go", True),
        ("src/FooTest.java", True),
        ("lib/thing.spec.js", True),
        ("pkg/core.py", False),
        ("unittest/case.py", False),
        ("src/contest.js", False),
    ],
)
def test_test_paths(path: str, is_test: bool) -> None:
    assert is_test_path(path) is is_test


def test_unknown_language_names_the_choices() -> None:
    with pytest.raises(ValueError, match="python, java, go, php, ruby, javascript"):
        language_info("cobol")
    assert set(LANGUAGES) == set(DOC)
