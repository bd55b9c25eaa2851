"""Tiny source trees in six languages, a tiny benchmark folder, and a build helper, all in tmp_path."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from pairdata.sources import SourceCache, SourceSpec

PYTHON_MODULE = '''
def area(width, height):
    """Compute the area of a rectangle from its sides.

    Args:
        width: the width.
    """
    result = width * height
    return result


def tiny(x):
    """Too short to keep."""
    return x


def undocumented(x):
    y = x + 1
    return y


def test_something():
    """Check that something works as expected."""
    assert True
    return None


class Shape:
    def __init__(self, sides):
        """Create a shape with the given sides."""
        self.sides = sides
        self.name = "shape"

    def perimeter(self, scale=1):
        """Return the perimeter of the shape scaled by a factor.

        More detail here.
        """
        total = sum(self.sides)
        return total * scale

    def ok(self):
        """Ok."""
        first = 1
        return first
'''

JAVA_CLASS = """
package demo;

public class Stack {
    /**
     * Pushes an item onto the top of this {@code Stack} instance.
     *
     * @param item the item
     */
    public void push(int item) {
        items[size] = item;
        size = size + 1;
    }

    /** Creates an empty stack of the default size. */
    public Stack() {
        items = new int[10];
        size = 0;
    }

    /** Returns a string form of the stack contents. */
    public String toString() {
        String s = "";
        return s;
    }
}
"""

GO_FILE = """package demo

// Reverse returns its argument string reversed rune-wise
// from left to right.
func Reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}
"""

JS_FILE = """/**
 * Clamps a number between a lower and an upper bound.
 */
function clamp(value, lower, upper) {
  const low = Math.max(value, lower);
  return Math.min(low, upper);
}
"""

PHP_FILE = """<?php
/**
 * Formats a user name for display in page headers.
 */
function formatUserName($name) {
    $trimmed = trim($name);
    return ucfirst($trimmed);
}
"""

RUBY_FILE = """module Demo
  # Returns the sum of all elements of the array
  # passed in.
  def self.total(list)
    sum = 0
    list.each { |x| sum += x }
    sum
  end
end
"""

DOC = {
    "python": ("py", PYTHON_MODULE),
    "java": ("java", JAVA_CLASS),
    "go": ("go", GO_FILE),
    "javascript": ("js", JS_FILE),
    "php": ("php", PHP_FILE),
    "ruby": ("rb", RUBY_FILE),
}


def variant(text: str, index: int) -> str:
    """The same file with identifiers renamed, so near-dedup keeps each copy (distinct tokens)."""
    replacements = {
        "area": "area",
        "width": "w",
        "height": "h",
        "result": "r",
        "perimeter": "perim",
        "total": "t",
        "push": "push",
        "item": "it",
        "size": "sz",
        "Reverse": "Rev",
        "clamp": "clamp",
        "value": "v",
        "formatUserName": "fmtName",
        "trimmed": "tr",
        "sum": "acc",
        "list": "xs",
        "lower": "lo",
        "upper": "up",
    }
    for old, new in replacements.items():
        text = text.replace(old, f"{new}{index}q{index}")
    text = text.replace("$name", f"$nm{index}")
    return re.sub(r"\b([a-z])\b", rf"\1v{index}", text)


def write_repos(root: Path, language: str, repos: int = 6) -> list[Path]:
    """``repos`` folders, each one source file (identifiers renamed per repo) plus a test file."""
    extension, text = DOC[language]
    folders = []
    for index in range(repos):
        folder = root / f"{language}-repo{index}"
        (folder / "src").mkdir(parents=True)
        (folder / "src" / f"main.{extension}").write_text(variant(text, index))
        (folder / "tests").mkdir()
        (folder / "tests" / f"more.{extension}").write_text(variant(text, index + 100))
        folders.append(folder)
    return folders


def folder_specs(folders: list[Path]) -> list[SourceSpec]:
    return [SourceSpec(name=folder.name, kind="folder", package=str(folder), group_depth=0) for folder in folders]


@pytest.fixture
def cache(tmp_path: Path) -> SourceCache:
    return SourceCache(tmp_path / "cache", offline=True)


BENCHMARK_SENTENCE = "the quiet harbour town welcomed every weary sailor with warm bread and stories"
BENCHMARK_QUERY = "why do lighthouse keepers paint their towers in bright stripes"


@pytest.fixture
def benchmark_dir(tmp_path: Path) -> Path:
    """A folder in shared/data's layout holding a few benchmark texts."""
    root = tmp_path / "benchmarks"
    (root / "senteval" / "MR").mkdir(parents=True)
    (root / "senteval" / "MR" / "rt-polarity.pos").write_text(f"{BENCHMARK_SENTENCE} .\na fine film\n")
    (root / "senteval" / "TREC").mkdir(parents=True)
    (root / "senteval" / "TREC" / "TREC_10.label").write_text("DESC:reason Why is the sky blue ?\n")
    (root / "beir" / "arguana" / "qrels").mkdir(parents=True)
    with gzip.open(root / "beir" / "arguana" / "queries.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"_id": "q1", "text": BENCHMARK_QUERY}) + "\n")
    with gzip.open(root / "beir" / "arguana" / "corpus.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"_id": "d1", "title": "Stripes", "text": "Paint helps ships see towers."}) + "\n")
    (root / "beir" / "arguana" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (root / "dbpedia14").mkdir()
    (root / "dbpedia14" / "dbpedia_samples.jsonl").write_text(
        json.dumps({"text": "Morada Limited is a textile company based in Altham.", "category": "Company"}) + "\n"
    )
    return root
