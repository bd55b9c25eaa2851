"""Checks on the real full build (``python -m pairdata build all``), when it exists: integration only."""

from __future__ import annotations

import itertools

import pytest

from pairdata.code.languages import LANGUAGES
from pairdata.leakage import benchmark_index
from pairdata.loading import default_data_dir, read_pairs, split_path
from pairdata.store import is_complete, read_manifest
from pairdata.textnorm import normalize
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.integration


def built(name: str) -> bool:
    return is_complete(default_data_dir(), name)


@pytest.mark.parametrize("language", LANGUAGES)
def test_code_train_never_contains_test_split_text(language: str) -> None:
    name = f"code-{language}"
    if not built(name):
        pytest.skip(f"{name} not built: python -m pairdata build code --language {language}")
    test_pairs = read_pairs(split_path(name, "test"))
    test_texts = {normalize(text) for pair in test_pairs for text in (pair.x, pair.y)}
    for split in ("train", "valid"):
        for pair in read_pairs(split_path(name, split)):
            assert normalize(pair.x) not in test_texts and normalize(pair.y) not in test_texts
    manifest = read_manifest(default_data_dir(), name)
    assert manifest["counts"]["splits"]["test"] == len(test_pairs)


@pytest.mark.parametrize("name", ["text-neighbors", "text-search", "code-python", "code-java"])
def test_training_pairs_hold_no_benchmark_text(name: str) -> None:
    if not built(name) or not SHARED_DATA.is_dir():
        pytest.skip(f"{name} not built or {SHARED_DATA} missing")
    index = benchmark_index(SHARED_DATA)
    pairs = read_pairs(split_path(name, "train"))
    for pair in itertools.islice(pairs, 0, None, max(1, len(pairs) // 5000)):  # ~5000 evenly spread
        assert not index.leaks(pair.x) and not index.leaks(pair.y)
