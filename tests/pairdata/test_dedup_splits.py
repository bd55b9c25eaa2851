"""Exact and near-duplicate detection, and the group-level split."""

from __future__ import annotations

import pytest

from pairdata.dedup import DuplicateFilter
from pairdata.splits import assign_splits


def test_exact_and_near_duplicates() -> None:
    dedup = DuplicateFilter(threshold=0.8)
    base = [f"tok{i}" for i in range(40)]
    assert dedup.check(base) is None
    assert dedup.check(list(base)) == "exact"
    near = base[:-2] + ["other1", "other2"]  # Jaccard 38/42 = 0.90
    assert dedup.check(near) == "near"
    far = base[:20] + [f"new{i}" for i in range(20)]  # Jaccard 20/60
    assert dedup.check(far) is None
    assert (dedup.exact_duplicates, dedup.near_duplicates) == (1, 1)


def test_tiny_items_only_match_exactly() -> None:
    dedup = DuplicateFilter(min_tokens=5)
    assert dedup.check(["a", "b"]) is None
    assert dedup.check(["a", "b", "b"]) is None


def test_splits_keep_groups_whole_and_follow_fractions() -> None:
    sizes = {f"repo{i}": 10 + (i % 7) for i in range(200)}
    assignment = assign_splits(sizes, {"train": 0.8, "valid": 0.1, "test": 0.1})
    assert set(assignment) == set(sizes)
    totals = {split: sum(sizes[g] for g, s in assignment.items() if s == split) for split in ("train", "valid", "test")}
    share = {split: count / sum(sizes.values()) for split, count in totals.items()}
    assert share["train"] == pytest.approx(0.8, abs=0.02)
    assert share["test"] == pytest.approx(0.1, abs=0.02)
    assert assign_splits(sizes) == assignment  # deterministic
    assert assign_splits(sizes, seed="other") != assignment


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits({"a": 1}, {"train": 0.5, "test": 0.1})
